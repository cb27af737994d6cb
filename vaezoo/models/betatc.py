"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders").

The KL term averaged over the data splits into three (n the index of an image, q(z) = E_n q(z | n) the
aggregate posterior, p(z) = prod_j p(z_j) a factorised prior):

    E_n KL(q(z | n) || p(z)) = I_q(z; n)                              index-code mutual information (mi)
                             + KL(q(z) || prod_j q(z_j))              total correlation             (tc)
                             + sum_j KL(q(z_j) || p(z_j))             dimension-wise KL             (dwkl)

and beta-TCVAE weighs them apart: loss = recon + alpha * mi + beta * tc + gamma * dwkl.

q(z) and q(z_j) depend on the whole training set; minibatch-weighted sampling (MWS, the paper's section
4.1) estimates them from the batch: with M images x_1..x_M in the batch, one code z_i ~ q(z | x_i) each,
and N images in the training set,

    log q(z_i)   ~ logsumexp_m log q(z_i | x_m)            - log(N M)
    log q(z_ij)  ~ logsumexp_m log q(z_ij | x_m)  (dim j)  - log(N M)

and, per image i (nats),

    mi_i   = log q(z_i | x_i)        - log q(z_i)
    tc_i   = log q(z_i)              - sum_j log q(z_ij)
    dwkl_i = sum_j log q(z_ij)       - log p(z_i)

The three telescope: mi_i + tc_i + dwkl_i = log q(z_i | x_i) - log p(z_i) exactly, whatever the MWS
estimates are, the one-sample estimate of KL(q(z | x_i) || p(z)). So alpha = beta = gamma = 1 is the
VAE's -ELBO in expectation (with a sampled instead of an analytic KL).

N is the whole training split, over all processes (``Context.dataset_size``); the minibatch of the
estimate is each process's own batch (under DDP, M is the per-process batch size): a process's codes
are scored against its own batch's posteriors, with no gather across processes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.latents.gaussian import GaussianLatent
from vaezoo.models.base import VAE, Context, VAEOutput
from vaezoo.priors.normal import NormalPrior
from vaezoo.registry import register_variant

_LOG_2PI = math.log(2 * math.pi)
_CHECKPOINT_KEY = "betatc_dataset_size"


@register_variant("betatc")
class BetaTCVAE(VAE):
    """beta-TCVAE (Chen et al. 2018): loss = recon + alpha * mi + beta * tc + gamma * dwkl, nats per image.

    The KL splits into index-code mutual information (``mi``), total correlation (``tc``) and dimension-wise
    KL (``dwkl``), estimated by minibatch-weighted sampling over the batch with the training set's size N
    (see the module docstring); all three are logged. The paper keeps alpha = gamma = 1 and raises beta,
    penalising only the total correlation; ``alpha = beta = gamma = 1`` is the vanilla -ELBO in expectation.
    The logged ``elbo`` stays the true ELBO (analytic KL), so runs compare directly with other variants.

    Needs the ``normal`` prior (the dimension-wise KL assumes a factorised p(z)) and the one-layer
    Gaussian latent.

    Args:
        alpha: Weight of the index-code mutual information, >= 0.
        beta: Weight of the total correlation, >= 0. Locatello et al. (2019) sweep it from 1 to 10; a
            larger beta pushes towards a factorised aggregate posterior.
        gamma: Weight of the dimension-wise KL, >= 0.
        dataset_size: N, the training images the estimates weigh the batch against; null (the default)
            takes the DataModule's whole training split (``train_size``, over all processes). Set it when
            using the model without a DataModule.
        **kwargs: Everything :class:`vaezoo.models.base.VAE` takes (net, latent_dim, likelihood, ...).

    Raises:
        VAEZooError: for a negative weight, a dataset_size below 1, or a prior or latent the decomposition
            does not hold for.
    """

    objective_terms = ("mi", "tc", "dwkl")

    def __init__(
        self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, dataset_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if value < 0:
                raise VAEZooError(f"{name} must be >= 0, got {value}; alpha = beta = gamma = 1 is the vanilla VAE, "
                                  f"e.g. --model.{name} 1.")
        if dataset_size is not None and dataset_size < 1:
            raise VAEZooError(f"dataset_size must be the number of training images (>= 1) or null (the DataModule's), "
                              f"got {dataset_size}; e.g. --model.dataset_size 60000.")
        super().__init__(**kwargs)
        if not isinstance(self.latent, GaussianLatent) or not isinstance(self.latent.prior, NormalPrior):
            prior = type(getattr(self.latent, "prior", None)).__name__
            raise VAEZooError(f"betatc's dimension-wise KL needs a factorised prior on one Gaussian layer, not "
                              f"{type(self.latent).__name__} with {prior}; use --model.prior normal.")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.dataset_size = dataset_size
        self._trained_size: int | None = None  # N of the fit, kept in checkpoints for `vaezoo test`

    def training_set_size(self, context: Context) -> int:
        """N of the estimates: ``dataset_size``, else the DataModule's training split, else the fit's N.

        Raises:
            VAEZooError: when none is known (a model used without a DataModule or a checkpoint).
        """
        n = self.dataset_size or context.dataset_size or self._trained_size
        if n is None:
            raise VAEZooError("betatc needs the training set's size N for its minibatch-weighted estimates: train "
                              "with a DataModule, or give it, e.g. --model.dataset_size 60000 "
                              "(BetaTCVAE(dataset_size=60000) in Python).")
        if context.stage == "train":
            self._trained_size = n
        return n

    def decompose(self, out: VAEOutput, dataset_size: int) -> dict[str, Tensor]:
        """The MWS estimates of ``mi``, ``tc`` and ``dwkl``, ``(B,)`` nats each, of the first code per image.

        Args:
            out: The forward pass (its posterior and codes).
            dataset_size: N.
        """
        q = out.posterior
        assert q is not None, "checked at construction: one Gaussian layer"
        mean, logvar = q.mean.float(), q.logvar.float()  # (M, L)
        z = out.z.float()  # (M, L): image i's code
        # log q(z_i,j | x_m) for every pair (i, m) and dimension j: (M, M, L), the batch scored against itself.
        log_qzm = -0.5 * ((z.unsqueeze(1) - mean) ** 2 / logvar.exp() + logvar + _LOG_2PI)
        log_nm = math.log(dataset_size * z.shape[0])
        log_qz = torch.logsumexp(log_qzm.sum(-1), dim=1) - log_nm  # (M,) log q(z_i)
        log_prod_qzj = (torch.logsumexp(log_qzm, dim=1) - log_nm).sum(-1)  # (M,) sum_j log q(z_ij)
        log_qz_x = log_qzm.diagonal(dim1=0, dim2=1).sum(0)  # (M,) log q(z_i | x_i): the pairs m = i
        log_pz = self.latent.prior.log_prob(z)  # (M,)
        return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzj, "dwkl": log_prod_qzj - log_pz}

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        parts = self.decompose(out, self.training_set_size(context))
        # Under a KL warm-up the three parts of the KL share its weight.
        kl = self.alpha * parts["mi"] + self.beta * parts["tc"] + self.gamma * parts["dwkl"]
        loss = out.recon + context.kl_weight * kl
        return {"loss": loss, **parts}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[_CHECKPOINT_KEY] = self._trained_size

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._trained_size = checkpoint.get(_CHECKPOINT_KEY)
