"""The ELBO machinery every variant inherits.

For an image x with D pixels and a latent code z, with encoder q(z | x), prior p(z) and decoder
p(x | z), the evidence lower bound (Kingma & Welling 2014) is

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x)

One forward pass, ``model(x, k)``, runs the parts in order, and needs no Trainer:

    h = net.encoder(x)              # (B, 2D)
    s = latent(h, k)                # k codes (k, B, D), the KL, log q(z | x) and log p(z) where they exist
    params = net.decoder(s.z)       # the likelihood's parameters for each code
    log_px = likelihood(params, x)  # (k, B); recon = -mean_k log_px

- The latent (:mod:`vaezoo.latents`) is one Gaussian layer with a prior that is a part
  (:mod:`vaezoo.priors`: N(0, I) with its analytic KL, KL_l = (mu_l^2 + exp(logvar_l) - 1 - logvar_l) / 2,
  or a learned prior whose KL is estimated by sampling), or a variant's own (several layers, a codebook).
- Reparameterisation: z = mu + exp(logvar / 2) * eps with eps ~ N(0, I), so gradients reach the
  encoder through the sample. One sample per image estimates E_q[log p(x | z)] in training, unless
  the variant's objective wants k (``train_samples``).
- The objective (:meth:`VAE.objective`) turns the pass into per-image terms; the base minimises -ELBO.

Units: every term is summed over pixels and latent dimensions and averaged over the batch, so all
figures are in nats per image. Where the likelihood is a mass function over discrete pixels,
bits/dim = -ELBO / (D ln 2) is an upper bound on the data's bits per dimension.

Importance-weighted bound (Burda et al. 2015), for the test NLL: with k samples z_i ~ q(z | x),

    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)
    log p(x) >= L_k = E[ logsumexp_i(log w_i) - log k ]

L_1 is the ELBO (with the KL estimated by sampling instead of analytically), L_k never decreases
with k and tends to log p(x), so -L_k for a large k (1,000 by default) is the test NLL a paper
reports. The log-weights and their log-sum-exp run in fp32. A latent without log q(z | x) (VQ-VAE's
point mass) has no such bound, and says why (``latent.iw_reason``).

What is logged, under ``train/``, ``val/`` and ``test/``: ``loss`` (the minimised objective),
``elbo`` (nats per image, higher is better, the true ELBO for every variant), ``recon`` and ``kl``
(``kl_mc`` where estimated by sampling; nats per image), ``bpd`` (bits per dimension) where the
likelihood is discrete, and the variant's and the latent's own terms. Under ``val/`` and ``test/``
also ``mse`` and ``psnr`` (dB) of the reconstructions on [0, 1] pixels, ``active_units`` (latent
units whose posterior mean varies over the data, Burda et al.), and, where importance samples are
asked for, ``nll`` (nats per image) and ``nll_bpd``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio

from vaezoo import compat
from vaezoo.errors import VAEZooError
from vaezoo.latents.base import Latent, LatentSample
from vaezoo.latents.gaussian import DiagonalGaussian, GaussianLatent
from vaezoo.models import fused, groups, hparams
from vaezoo.models import importance
from vaezoo.models import running_sums
from vaezoo.models import nonfinite
from vaezoo.models.nonfinite import NonFiniteGuard
from vaezoo.models.running_sums import RunningSums
from vaezoo.likelihoods import Bernoulli, Likelihood
from vaezoo.metrics import LatentActivity
from vaezoo.nets.base import ImageShape, Net, NetFactory
from vaezoo.nets.mlp import MLPNet
from vaezoo.priors.base import Prior
from vaezoo.priors.normal import NormalPrior
from vaezoo.registry import register_variant

_EVAL_STAGES = ("val", "test")


@dataclass
class VAEOutput:
    """What one forward pass computes for k >= 1 codes per image. Terms are per image, in nats.

    Attributes:
        latent: The latent's sample and terms (codes ``(k, B, D)``, KL, log q and log p where they exist).
        params: The likelihood's parameters ``(k * B, P * C, H, W)``, sample-major.
        log_px: log p(x | z) of each code ``(k, B)``.
    """

    latent: LatentSample
    params: Tensor
    log_px: Tensor

    @property
    def k(self) -> int:
        return self.log_px.shape[0]

    @cached_property  # computed once per pass: the step reads it several times
    def _mean_log_px(self) -> Tensor:
        """E_q[log p(x | z)], ``(B,)``: the k codes' mean (a view for k = 1: no kernel forward or backward)."""
        return self.log_px.squeeze(0) if self.log_px.shape[0] == 1 else self.log_px.mean(0)

    @cached_property
    def recon(self) -> Tensor:
        """-E_q[log p(x | z)], ``(B,)``: the k codes' mean."""
        return -self._mean_log_px

    @property
    def kl(self) -> Tensor:
        """KL(q(z | x) || p(z)), ``(B,)`` nats per image (analytic or estimated: ``latent.kl_analytic``)."""
        return self.latent.kl

    @cached_property
    def elbo(self) -> Tensor:
        """The evidence lower bound, ``(B,)`` nats per image: E_q[log p(x | z)] - KL, bit for bit -(recon + KL)."""
        return self._mean_log_px - self.kl

    @property
    def kl_per_dim(self) -> Tensor | None:
        """The KL per latent unit ``(B, A)`` where analytic, else None."""
        return self.latent.kl_per_dim

    @property
    def z(self) -> Tensor:
        """The first code of each image ``(B, D)``."""
        return self.latent.z[0]

    @property
    def posterior(self) -> DiagonalGaussian | None:
        """q(z | x) of a one-layer Gaussian latent; None for other latents."""
        post = self.latent.posterior
        return DiagonalGaussian(post["mean"], post["logvar"]) if {"mean", "logvar"} <= post.keys() else None

    def log_weights(self) -> Tensor:
        """log w = log p(x | z) + log p(z) - log q(z | x), ``(k, B)`` fp32: the importance weights of IWAE."""
        if self.latent.log_q is None or self.latent.log_p is None:
            raise VAEZooError("this latent has no log q(z | x) (its posterior is a point mass): no importance weights.")
        return self.log_px.float() + self.latent.log_p - self.latent.log_q


@dataclass(frozen=True)
class Context:
    """What an objective may need besides the batch: given by the Trainer, or by hand without one.

    Attributes:
        dataset_size: Training images over all processes (the whole split, not one process's share);
            None when unknown (a model used without a DataModule).
        step: The optimiser step (``global_step``).
        world_size: Training processes.
        stage: ``train``, ``val`` or ``test``.
        kl_weight: The KL's weight in the training loss under a KL warm-up (``kl_warmup_steps``): grows
            from 0 to 1 over the warm-up in training, 1 after it and in evaluation.
    """

    dataset_size: int | None = None
    step: int = 0
    world_size: int = 1
    stage: str = "train"
    kl_weight: float = 1.0


def _checkpoint_mismatch(detail: str) -> str:
    return (
        f"the checkpoint does not fit the model of this config: {detail}. Use the config it was trained "
        "with (its run folder holds config.yaml: --config runs/<recipe>/version_<N>/config.yaml), or set "
        "--model to match it."
    )


@register_variant("vanilla")
class VAE(L.LightningModule):
    """The VAE of Kingma & Welling (2014): minimise -ELBO = recon + KL, in nats per image.

    The base class of every variant: it holds the encoder and decoder (the net), the latent with its
    prior and KL, the likelihood, and the ELBO. A variant overrides :meth:`objective` (or its short
    form :meth:`loss`) and may choose another latent (:meth:`build_latent`); it adds its own
    hyperparameters.

    Args:
        net: The encoder-decoder pair, by name (``mlp``, ``conv``, or a plugin's) or class path, with
            its own arguments under ``init_args``.
        latent_dim: Size of the latent code z (number of latent dimensions).
        likelihood: The decoder's distribution p(x | z): ``Bernoulli`` for binarised images,
            ``DiscretizedLogistic`` for 8-bit colour (bits/dim is a bound), ``Gaussian`` for an MSE-style
            objective.
        prior: The prior p(z) of a Gaussian latent: ``normal`` (N(0, I), analytic KL), ``mog`` (a learned
            mixture of Gaussians) or ``vamp`` (the VampPrior of Tomczak & Welling 2018), or a plugin's;
            learned priors' KL is estimated by sampling. Variants with other latents (``vqvae``) ignore it.
        kl_warmup_steps: Optimiser steps over which the KL's weight in the training loss grows linearly from
            0 to 1 (a KL warm-up: Bowman et al. 2016, Sonderby et al. 2016; what the VampPrior and ladder
            papers train with), so that the code carries information before the KL can switch it off.
            0: off. The logged ``elbo`` stays the true ELBO; the weight is logged as ``kl_weight``.
        image_shape: (channels, height, width). Linked from the DataModule by the CLI; set it only
            when using the model on its own.
        iw_samples: Importance samples k per test image for ``test/nll`` (Burda et al.); null turns
            the test NLL off. Costs k decoder passes per image.
        val_iw_samples: The same for ``val/nll`` at every validation; null (the default) turns it off.
        nonfinite: What a NaN or Inf training loss does: ``stop`` (an error naming the step and the term
            that went non-finite; no checkpoint is written after it, so the last one holds finite weights;
            on a GPU the check is read when metrics are logged, not every step), ``skip`` (the batch is
            skipped, counted in ``train/skipped_batches``; reads one number from the device per step) or
            ``off`` (no check). With ``stop`` and ``skip``, a NaN or Inf metric that a ModelCheckpoint
            monitors (``val/elbo``) also stops the run, before that checkpoint is written.
        max_skipped_fraction: With ``nonfinite: skip``, the largest fraction of an epoch's training
            batches that may be skipped (0.1: 50 of 500); one more stops the run with ``stop``'s error,
            since a run whose every batch is non-finite trains nothing. 1 never stops.
        steps_per_call: Optimiser steps per Lightning training step, k, or ``auto`` (the default). The
            DataModule hands over k batches as one and the model steps through them (manual optimisation),
            so Lightning's fixed cost per step (about 1 ms of Python) is paid once per k optimiser steps:
            what makes small models fast. With the same seed and data, k steps train exactly as k = 1:
            ``global_step`` counts optimiser steps, and logging, checkpoints, LR schedules, gradient
            clipping, the KL warm-up, the non-finite guard and the epoch means keep their meaning. ``auto``
            takes the largest k <= 25 that divides ``log_every_n_steps``, the checkpoints' step intervals
            and ``max_steps`` and keeps a group under 0.25 s (25 for the MLP recipes), and 1 where groups
            would change a meaning: gradient accumulation, ``limit_train_batches`` or
            ``val_check_interval`` other than 1.0, a plateau scheduler, another DataModule, clipping under
            16-mixed, or a callback with per-step hooks vaezoo does not know (docs/performance.md). An
            explicit k > 1 is refused in those cases.
        compile: Compile the net with ``torch.compile`` when training starts (opt-in: compiling costs
            tens of seconds up front and pays off on long runs, mostly on GPUs).
        optimizer: The optimiser, e.g. ``{class_path: torch.optim.Adam, init_args: {lr: 0.001}}``. Adam and AdamW
            step with torch's fused kernel (the same update, about 3x faster) unless ``init_args`` set ``fused``,
            ``foreach``, ``capturable`` or ``differentiable``, or a gradient scaler or a strategy other than one
            device or DDP stands in the way (:mod:`vaezoo.models.fused`).
        lr_scheduler: An optional learning-rate scheduler, stepped every epoch.
    """

    def __init__(
        self,
        net: NetFactory = MLPNet,
        latent_dim: int = 32,
        likelihood: Likelihood = lazy_instance(Bernoulli),
        prior: Prior = lazy_instance(NormalPrior),
        kl_warmup_steps: int = 0,
        image_shape: ImageShape = (1, 28, 28),
        iw_samples: int | None = 1000,
        val_iw_samples: int | None = None,
        nonfinite: Literal["stop", "skip", "off"] = "stop",
        max_skipped_fraction: float = 0.1,
        steps_per_call: groups.StepsPerCall = "auto",
        compile: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise VAEZooError(f"latent_dim must be a positive integer, got {latent_dim}; e.g. --model.latent_dim 32.")
        for name, k in (("iw_samples", iw_samples), ("val_iw_samples", val_iw_samples)):
            if k is not None and k <= 0:
                raise VAEZooError(f"{name} must be a positive number of importance samples or null (off), got {k}.")
        with warnings.catch_warnings():  # the likelihood is made plain data just below
            warnings.filterwarnings("ignore", message="Attribute '(likelihood|prior)' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if "_instantiator" not in self.hparams:  # built in Python, not from a config: store class paths
            config = hparams.portable(dict(self.hparams), type(self))
            self.hparams.clear()
            self.hparams.update(config)
            self._hparams_initial = copy.deepcopy(self._hparams)
        self.latent_dim = latent_dim
        self.image_shape: ImageShape = tuple(image_shape)  # type: ignore[assignment]
        self.likelihood = likelihood
        self.net: Net = net(self.image_shape, latent_dim, image_shape[0] * likelihood.params_per_channel)
        # The code between encoder and decoder (Gaussian with the prior, or a variant's own: hierarchical, VQ).
        self.latent: Latent = self.build_latent(latent_dim, prior)
        self.latent.bind(self.image_shape, self.net.encoder)
        self.latent.check()  # a prior plugin with the wrong shapes fails here, at start-up, by name
        self.iw_samples = {"val": val_iw_samples, "test": iw_samples}
        self.compile_net = compile
        self.nonfinite = nonfinite
        if not 0 <= max_skipped_fraction <= 1:
            raise VAEZooError(f"max_skipped_fraction must lie in [0, 1] (a fraction of an epoch's batches), got "
                              f"{max_skipped_fraction}; e.g. --model.max_skipped_fraction 0.1.")
        self.nonfinite_guard = NonFiniteGuard(nonfinite, max_skipped_fraction)
        self.steps_per_call = groups.check_request(steps_per_call)
        # The k of this fit, chosen in on_fit_start (after Lightning's checks of automatic optimisation, which
        # clipping passes; clipping is then done here). 1, and automatic optimisation, until then.
        self.group_size = 1
        self._resumed_group: tuple[int, int, int] | None = None  # (k, epoch, steps) of a checkpoint saved mid-epoch
        self._fit_started = False
        self._direct = False  # with k > 1: backward and step without Lightning's wrappers (groups.direct_steps)
        self._sub_batch: int | None = None  # with k > 1: images per optimiser step (the DataModule's batch size)
        self._logging_step: int | None = None  # with k > 1: the step Lightning would log this optimiser step at
        self.kl_warmup_steps = self._check_kl_warmup(kl_warmup_steps)
        self._bpd_per_elbo = -1 / (math.prod(self.image_shape) * math.log(2))  # ELBO (nats per image) -> -ELBO in bits/dim
        # The terms every step computes (see _step); evaluation adds the importance-weighted NLL.
        # The KL is logged as "kl" where it is analytic and as "kl_mc" where it is estimated by sampling.
        self._kl_key = "kl" if self.latent.kl_analytic else "kl_mc"
        step_terms = ["loss", "elbo", "recon", self._kl_key] + (["bpd"] if likelihood.discrete else [])
        step_terms += [t for t in (*self.objective_terms, *self.latent.terms) if t not in step_terms]
        step_terms += ["kl_weight"] if kl_warmup_steps else []
        # Running sums of the training terms in this epoch, see _accumulate_train_terms.
        self.train_sums = RunningSums(step_terms)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        # Epoch means of every logged term, exact across batches of unequal size and across DDP ranks.
        terms = [*step_terms, "nll"] + (["nll_bpd"] if likelihood.discrete else [])
        self.eval_means = nn.ModuleDict(
            {stage: nn.ModuleDict({t: MeanMetric() for t in terms}) for stage in _EVAL_STAGES}
        )
        self.eval_mse = nn.ModuleDict({stage: MeanSquaredError() for stage in _EVAL_STAGES})
        self.eval_psnr = nn.ModuleDict({stage: PeakSignalNoiseRatio(data_range=1.0) for stage in _EVAL_STAGES})
        self.latent_activity = nn.ModuleDict(
            {stage: LatentActivity(self.latent.activity_dim) for stage in _EVAL_STAGES}
        )
        # The last computed per-dimension statistics of each stage (activity, kl_per_dim), for plots.
        self.latent_stats: dict[str, dict[str, Tensor]] = {}

    # ----- the parts: what variants choose ----------------------------------------------------------

    # Names of the further per-image terms ``objective`` returns (besides ``loss``), logged under them.
    objective_terms: tuple[str, ...] = ()
    # Whether ``objective`` needs log q(z | x) and log p(z) of the samples (``out.log_weights()``).
    needs_log_weights: bool = False
    # Codes per image in a training step: the k of a k-sample objective (IWAE).
    train_samples: int = 1
    # Why the variant's objective cannot take a KL warm-up (``kl_warmup_steps``), or None where it can:
    # its ``objective`` then weighs its KL terms by ``context.kl_weight``.
    kl_warmup_refused: str | None = None

    def build_latent(self, latent_dim: int, prior: Prior) -> Latent:
        """The latent code: one Gaussian layer of ``latent_dim`` units under ``prior``. Variants with another kind
        of latent (several layers, a codebook) override this."""
        return GaussianLatent(latent_dim, prior)

    # ----- the user-facing API ---------------------------------------------------------------------

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior q(z | x) of images ``x`` ``(B, C, H, W)`` in [0, 1], for a one-layer Gaussian latent.

        Other latents: :meth:`code` gives the code of a reconstruction for every kind.
        """
        if not isinstance(self.latent, GaussianLatent):
            raise VAEZooError(f"{type(self).__name__} has a {type(self.latent).__name__}, not one Gaussian layer: "
                              "use model.code(x) for its codes, or model(x).latent for the whole posterior.")
        return self.latent.posterior(self.net.encoder(x))

    def code(self, x: Tensor) -> Tensor:
        """The code ``(B, D)`` of images ``x`` ``(B, C, H, W)`` with no sampling: the posterior mean (a
        Gaussian latent) or the quantised code (VQ). What reconstructions, interpolations and traversals use."""
        return self.latent.point(self.net.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters ``(B, P * C, H, W)`` for codes ``z`` ``(B, D)``."""
        return self.net.decoder(z)

    def forward(self, x: Tensor, k: int = 1) -> VAEOutput:
        """Encode, draw k codes per image, decode and score ``x`` ``(B, C, H, W)``: every term of the objective,
        with no Trainer needed.

        Args:
            x: Images in [0, 1].
            k: Codes per image (1: the ELBO's single-sample estimate; k > 1: what IWAE needs).
        """
        latent = self.latent(self.net.encoder(x), k, log_weights=self.needs_log_weights)
        params = self.decode(latent.z.flatten(0, 1))  # (k * B, P * C, H, W)
        if k == 1:
            log_px = self.likelihood.log_prob(params, x).unsqueeze(0)  # (1, B)
        else:
            log_px = importance.log_prob_samples(self.likelihood, params.unflatten(0, (k, x.shape[0])), x)
        return VAEOutput(latent, params, log_px)

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``(n, D)`` from the prior: the one way anything draws from the model (samples,
        pictures, predict's generate, FID).

        Args:
            n: How many.
            generator: A CPU generator, for the same codes every time (the pictures' fixed samples).
        """
        return self.latent.sample(n, generator).to(self.dtype if self.dtype.is_floating_point else torch.float32)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1] decoded from codes of the prior (:meth:`sample_codes`).

        Args:
            n: How many images.
            mean: Return E[x | z] (smooth images) instead of a draw from p(x | z).
            generator: A CPU generator for the codes, for the same images every time.
        """
        params = self.decode(self.sample_codes(n, generator))
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = the code of x] for images ``x`` ``(B, C, H, W)``: the model's reconstruction."""
        return self.likelihood.mean(self.decode(self.code(x)))

    @torch.no_grad()
    def importance_log_likelihood(self, x: Tensor, k: int) -> Tensor:
        """The importance-weighted estimate L_k of log p(x), ``(B,)`` nats per image, fp32.

        The k samples go through the decoder in chunks (see :mod:`vaezoo.models.importance`).

        Args:
            x: Images ``(B, C, H, W)`` in [0, 1].
            k: Number of importance samples per image.

        Raises:
            VAEZooError: for a latent without log q(z | x) (VQ-VAE's point-mass posterior).
        """
        if self.latent.iw_reason is not None:
            raise VAEZooError(f"{type(self).__name__} has no importance-weighted NLL: {self.latent.iw_reason}")
        h = self.net.encoder(x)
        # A compiled decoder is not probed for its activation sizes: hooks would make it recompile.
        rows = importance.chunk_rows(self.net.decoder, self.latent.point(h), probe=not self.compile_net)

        def draw(c: int) -> tuple[Tensor, Tensor]:  # c codes per image and their log p(z) - log q(z | x)
            s = self.latent(h, c, log_weights=True)
            return s.z, s.log_p - s.log_q

        with self.latent.fixed():  # e.g. the VampPrior's K pseudo-inputs encoded once, not once per chunk
            return importance.log_likelihood(draw, self.decode, self.likelihood, x, k, rows)

    def bits_per_dim(self, nats: Tensor) -> Tensor:
        """Converts nats per image to bits per dimension (divide by D ln 2, D = C * H * W)."""
        return nats / (math.prod(self.image_shape) * math.log(2))

    # ----- the objective: what variants override ---------------------------------------------------

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        """The terms of the minimised objective, per image: ``loss`` ``(B,)`` is minimised (its batch mean),
        the others (named in ``objective_terms``) are logged. The base: -ELBO, nats per image.

        Args:
            x: The batch ``(B, C, H, W)``.
            out: The forward pass, with ``train_samples`` codes per image in training.
            context: Dataset size, step and processes (:class:`Context`).
        """
        if context.kl_weight == 1.0:
            return {"loss": -out.elbo}
        return {"loss": out.recon + context.kl_weight * out.kl}  # under a KL warm-up

    def loss(self, out: VAEOutput) -> Tensor:
        """A short form of :meth:`objective` for variants that need neither the batch nor the context: the
        minimised objective as a scalar (nats per image). The base: the objective's ``loss`` averaged over the
        batch, with no batch (x is None) and a default context (no warm-up): -ELBO for ``vanilla``."""
        return self.objective(None, out, Context())["loss"].mean()  # type: ignore[arg-type] (no batch here)

    @property
    def attached_trainer(self) -> L.Trainer | None:
        """The Trainer running this model, or None when it is used on its own (``self.trainer`` raises then)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def context(self, stage: str) -> Context:
        """The :class:`Context` of this step (from the Trainer and its DataModule, where attached)."""
        trainer = self.attached_trainer
        if trainer is None:
            return Context(stage=stage)
        datamodule = getattr(trainer, "datamodule", None)
        size = getattr(datamodule, "train_size", None) if datamodule is not None else None
        weight = min(1.0, self.global_step / self.kl_warmup_steps) if self.kl_warmup_steps and stage == "train" else 1.0
        return Context(dataset_size=size, step=self.global_step, world_size=trainer.world_size, stage=stage,
                       kl_weight=weight)

    def _check_kl_warmup(self, steps: int) -> int:
        """``kl_warmup_steps``, refused where the variant's objective would not use it (no silent no-op)."""
        name = type(self).__name__
        if steps < 0:
            raise VAEZooError(f"kl_warmup_steps must be >= 0 optimiser steps (0: no warm-up), got {steps}; "
                              "e.g. --model.kl_warmup_steps 5000.")
        if steps and self.kl_warmup_refused is not None:
            raise VAEZooError(f"{name} takes no KL warm-up: {self.kl_warmup_refused}. Drop --model.kl_warmup_steps.")
        if steps and type(self).loss is not VAE.loss:
            raise VAEZooError(
                f"{name} defines the short form loss(out), which cannot see the KL warm-up's weight: define "
                "objective(x, out, context) instead and weigh the KL by context.kl_weight, or drop "
                "--model.kl_warmup_steps."
            )
        return steps

    # ----- Lightning ---------------------------------------------------------------------------------

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor | None:
        x, _ = batch  # (B, C, H, W) float in [0, 1], already on the device
        k = self.train_samples if stage == "train" else 1
        out = self(x, k) if k > 1 else self(x)
        context = self.context(stage)
        if type(self).loss is not VAE.loss:  # a variant written with the short form
            terms = {"loss": self.loss(out)}
        else:
            terms = self.objective(x, out, context)
        if self.kl_warmup_steps:
            terms["kl_weight"] = out.kl.new_full(out.kl.shape, context.kl_weight)
        # The latent's own losses (VQ's commitment) join the objective; every variant's elbo is the true ELBO.
        loss = (terms["loss"] + sum(out.latent.extra.values())).mean() if out.latent.extra else terms["loss"].mean()
        terms = {**terms, "loss": loss, "elbo": out.elbo, "recon": out.recon, self._kl_key: out.kl,
                 **out.latent.extra, **out.latent.stats}
        if self.likelihood.discrete:
            terms["bpd"] = out.elbo * self._bpd_per_elbo  # bits_per_dim(-elbo) in one kernel
        if stage == "train":
            parts = {"pixels": x, "recon": out.recon, "kl": out.kl, **out.latent.finite_parts}  # order of blame
            admitted = self.nonfinite_guard.admit(self.global_step, self.current_epoch, loss, parts, self._checkpoints_note)
            if not admitted:
                self.log("train/skipped_batches", float(self.nonfinite_guard.skipped), on_step=True, on_epoch=False)
                return None  # skip: no backward pass, so no update (Lightning still counts the step)
            self._accumulate_train_terms(terms, x.shape[0])
        else:
            self._evaluate(x, out, terms, stage)
        return loss

    def _accumulate_train_terms(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """Add the batch to the epoch's sums on the device; log step values on logging steps only."""
        self.train_sums.add(terms, batch_size, self.current_epoch)
        every = self.trainer.log_every_n_steps
        if self._logging_step is not None:  # one of several optimiser steps in this training step
            if every and (self._logging_step + 1) % every == 0:  # where one step per training step logs
                values = {f"train/{name}_step": value.detach().float().mean() for name, value in terms.items()}
                self.log("train/loss_step", values["train/loss_step"], prog_bar=True, logger=False)
                if self.trainer.is_global_zero:  # what Lightning's logging does: rank 0 writes, at that step
                    row = {**{k: v.item() for k, v in values.items()}, "epoch": self.current_epoch}
                    for logger in self.loggers:
                        logger.log_metrics(row, step=self._logging_step)
            return
        if every and (self.global_step + 1) % every == 0:  # when Lightning writes to the loggers
            # Per process (no collective per step): the epoch means cover every process.
            for name, value in terms.items():
                self.log(f"train/{name}_step", value.detach().mean(), prog_bar=name == "loss")

    def _reduce(self) -> Callable[..., Tensor] | None:
        """``strategy.reduce`` with several processes (a collective: every rank calls it), else None."""
        return self.trainer.strategy.reduce if self.trainer.world_size > 1 else None

    def _check_nonfinite(self) -> None:
        """Raise for a non-finite step recorded on the device (a collective: call it on every rank)."""
        self.nonfinite_guard.check(self.global_step, self._reduce(), self._checkpoints_note)

    def _checkpoints_note(self) -> str:
        """What is true of this run's checkpoints, for the guard's errors."""
        return nonfinite.checkpoints_note(self.attached_trainer)

    def on_train_epoch_start(self) -> None:
        self.train_sums.start_epoch(self.current_epoch)
        self.nonfinite_guard.start_epoch(groups.epoch_batches(self.trainer))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.trainer.log_every_n_steps
        # With k > 1 this is a group's end; k divides log_every_n_steps, so the same logging steps come by.
        if every and self.global_step % every == 0:  # metrics are read anyway
            self._check_nonfinite()

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite()
        means = self.train_sums.means(self.device, self.current_epoch, self._reduce())  # one all-reduce
        if means:
            # The means are already equal on every rank; sync_dist only keeps Lightning from warning.
            self.log_dict({f"train/{n}_epoch": m for n, m in means.items()}, on_epoch=True, sync_dist=True)
        if self.group_size > 1:  # Lightning steps the schedulers itself only with automatic optimisation
            self._step_schedulers("epoch", self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning dumps a checkpoint on every rank, so collectives are safe here.
        if self.attached_trainer is not None and self.trainer.state.fn == "fit":
            self._check_nonfinite()  # never a checkpoint after a non-finite step
            if self.nonfinite != "off":  # nor one that a ModelCheckpoint would score -inf
                nonfinite.check_monitored(self.trainer)
            checkpoint[running_sums.CHECKPOINT_KEY] = self.train_sums.state(
                self.device, self.current_epoch, self._reduce()
            )
            checkpoint[groups.CHECKPOINT_KEY] = self.group_size

    def _evaluate(self, x: Tensor, out: VAEOutput, terms: dict[str, Tensor], stage: str) -> None:
        """Update and log the validation or test metrics of one batch."""
        k = self.iw_samples[stage]
        if k is not None and self.latent.iw_reason is None:
            terms["nll"] = -self.importance_log_likelihood(x, k)
            if self.likelihood.discrete:
                terms["nll_bpd"] = self.bits_per_dim(terms["nll"])
        for name, value in terms.items():
            metric = self.eval_means[stage][name]
            metric.update(value.detach() if value.dim() else value.detach().expand(x.shape[0]))
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "elbo")
        recon = self.likelihood.mean(self.decode(out.latent.point))  # (B, C, H, W) in [0, 1]
        for name, metric in (("mse", self.eval_mse[stage]), ("psnr", self.eval_psnr[stage])):
            metric.update(recon.float(), x.float())
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        self.latent_activity[stage].update(out.latent.activity, out.kl_per_dim)

    def _log_latent_activity(self, stage: str) -> None:
        metric = self.latent_activity[stage]
        if not metric.update_called:
            return
        self.latent_stats[stage] = stats = metric.compute()  # synced across processes
        metric.reset()
        self.log(f"{stage}/active_units", stats["active_units"], sync_dist=True)  # same on every rank

    def setup(self, stage: str) -> None:
        if stage == "fit":  # the DataModule is set up: its training set size is known
            size = self.context("train").dataset_size
            if size is not None:
                self.latent.check_data(size)
            self._fit_started = False  # k is chosen again at each fit's start

    def teardown(self, stage: str) -> None:
        if stage != "fit":
            return
        self._fit_started = False  # a checkpoint read by a later test or predict is not resumed
        if self.group_size > 1:  # back to one step per training step, for whatever runs next
            compat.sync_live_step_counts(self.trainer)  # global_step reads the automatic count from now on
            self.group_size, self.automatic_optimization = 1, True

    # ----- several optimiser steps per training step (steps_per_call, vaezoo.models.groups) -------------

    def on_fit_start(self) -> None:
        # The optimisers and schedulers are set up and the checkpoint is not yet restored: choose k now.
        self.group_size = k = groups.choose(self.steps_per_call, self.trainer, self, self._resumed_group, rank_zero_info)
        self.automatic_optimization = k == 1
        self._fit_started = True

        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "steps_per_call"):
            datamodule.steps_per_call = k  # 1 resets a DataModule that an earlier fit grouped
        if k > 1:
            self._sub_batch = datamodule.hparams.batch_size
            self._direct = groups.direct_steps(self.trainer, self)  # past Lightning's wrappers where they add nothing
            if unsafe := groups.unsafe_callbacks(self.trainer):
                rank_zero_warn(f"steps_per_call {k}: the per-step hooks of {', '.join(unsafe)} run once per group "
                               f"of {k} optimiser steps. Use --model.steps_per_call auto (1 with them) if they count "
                               "steps.")
            # Lightning 2.6 warns that a step checkpoint under manual optimisation holds the weights after the
            # optimiser step; so do those of automatic optimisation, and the checkpoint at step s holds s steps.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

    def _train_group(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """k optimiser steps on the k batches of ``batch`` (concatenated), as k training steps would make them."""
        x, y = batch
        optimizer = self.optimizers()
        first = compat.logging_step(self.trainer)
        parts = list(zip(x.split(self._sub_batch), y.split(self._sub_batch), strict=True))
        for i, part in enumerate(parts):
            self._logging_step = first + i
            loss = self._step(part, "train")
            optimizer.zero_grad()
            if loss is not None:  # None: the non-finite guard skipped it, as a training step returning None
                if self._direct:
                    loss.backward()
                else:
                    self.manual_backward(loss)
                if self.trainer.gradient_clip_val:  # where automatic optimisation clips: before the step
                    self.configure_gradient_clipping(optimizer, self.trainer.gradient_clip_val,
                                                     self.trainer.gradient_clip_algorithm)
            # Also after a skipped batch, as automatic optimisation does: no gradients, so no update, and
            # global_step and the step schedulers count it.
            if self._direct:
                compat.counted_step(optimizer)
            else:
                optimizer.step()
            self._step_schedulers("step", batch_idx * self.group_size + i)
        self._logging_step = None
        compat.count_batches(self.trainer, len(parts) - 1)  # Lightning counts the training step as one

    def _step_schedulers(self, interval: str, index: int) -> None:
        """Step the schedulers of ``interval`` as Lightning's automatic optimisation does (``index``: the batch in the
        epoch for "step", the epoch for "epoch"; each steps when ``index + 1`` is a multiple of its frequency)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (index + 1) % config.frequency == 0:
                config.scheduler.step()

    def on_train_start(self) -> None:
        # seed_everything leaves every DDP process with the same random state, so each would draw the
        # same eps (and binarisation noise) for its different images: give each process its own stream.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_validation_epoch_end(self) -> None:
        self._log_latent_activity("val")

    def on_test_epoch_end(self) -> None:
        self._log_latent_activity("test")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if self.group_size > 1:
            return self._train_group(batch, batch_idx)
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The prediction of images ``x`` ``(B, C, H, W)`` in [0, 1] with labels ``y`` ``(B,)``: what ``vaezoo predict``
        writes (:class:`~vaezoo.callbacks.PredictionWriter`, which adds each image's dataset index).

        Returns:
            The latent's ``posterior`` (``mean`` and ``logvar`` ``(B, L)`` for a Gaussian, ``indices`` for VQ),
            ``reconstruction`` ``(B, C, H, W)``: E[x | z = the code of x] as :meth:`reconstruct`, and ``label``.
        """
        x, y = batch
        latent = self.latent(self.net.encoder(x), 1)
        return {**latent.posterior, "reconstruction": self.likelihood.mean(self.decode(latent.point)), "label": y}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint of another variant or shape fails later as a wall of missing keys: name it now.
        saved = checkpoint.get("hyper_parameters") or {}
        mine = {"latent_dim": self.latent_dim, "image_shape": self.image_shape}
        clash = [
            f"{key} {tuple(saved[key]) if key == 'image_shape' else saved[key]} (checkpoint) vs {value} (config)"
            for key, value in mine.items()
            if key in saved and (tuple(saved[key]) if key == "image_shape" else saved[key]) != value
        ]
        path = saved.get("_class_path")
        if path and path.rsplit(".", 1)[-1] != type(self).__name__:
            clash.insert(0, f"variant {path} (checkpoint) vs {type(self).__module__}.{type(self).__name__} (config)")
        if clash:
            raise VAEZooError(_checkpoint_mismatch("; ".join(clash)))
        if running_sums.CHECKPOINT_KEY in checkpoint:
            self.train_sums.restore(checkpoint[running_sums.CHECKPOINT_KEY], self.global_rank)
        compat.sync_step_counts(checkpoint)  # saved with another steps_per_call: global_step stays
        inside = compat.mid_epoch(checkpoint)
        self._resumed_group = None if inside is None else (int(checkpoint.get(groups.CHECKPOINT_KEY, 1)), *inside)
        if self._fit_started and self._resumed_group and self._resumed_group[0] != self.group_size:
            # Strategies that restore after setup: k was chosen before this checkpoint was read.
            raise VAEZooError(groups.resumed_mid_epoch(self.group_size, self._resumed_group))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # noqa: ANN201
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            first = str(err).splitlines()
            raise VAEZooError(_checkpoint_mismatch(" ".join(line.strip() for line in first[:3])[:500])) from None

    def configure_model(self) -> None:
        # In place (nn.Module.compile), so state_dict keys and checkpoints stay those of the plain net.
        if self.compile_net and not getattr(self, "_compiled", False):
            self.net.encoder.compile()
            self.net.decoder.compile()
            self._compiled = True

    def configure_optimizers(self):  # noqa: ANN201 (Lightning accepts several return types)
        try:
            optimizer = self.optimizer(self.parameters())
        except ValueError as err:  # torch.optim checks its arguments: "Invalid learning rate: -1.0"
            raise VAEZooError(
                f"the optimizer refused its arguments: {err}. Use values in range, e.g. "
                "--model.optimizer.lr 0.001 (the learning rate must be > 0)."
            ) from None
        if any(float(group["lr"]) <= 0 for group in optimizer.param_groups):  # torch takes 0: nothing would train
            lr = optimizer.param_groups[0]["lr"]
            raise VAEZooError(f"the learning rate must be > 0, got {lr}; e.g. --model.optimizer.lr 0.001.")
        built, optimizer = optimizer, fused.prefer_fused(optimizer, self.attached_trainer)
        if optimizer is not built and self.attached_trainer is not None:
            rank_zero_info(f"optimizer: {type(optimizer).__name__} with torch's fused kernel (the same update in one "
                           "kernel; set the optimizer's fused or foreach to choose: vaezoo.models.fused)")
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
