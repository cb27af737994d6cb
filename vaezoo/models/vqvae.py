"""The VQ-VAE of van den Oord et al. (2017): a discrete code, a codebook learnt by moving averages."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.latents.base import Latent
from vaezoo.latents.vq import VQLatent
from vaezoo.models.base import VAE, Context, VAEOutput
from vaezoo.priors.base import Prior
from vaezoo.priors.normal import NormalPrior
from vaezoo.registry import register_variant


@register_variant("vqvae")
class VQVAE(VAE):
    """The VQ-VAE of van den Oord et al. (2017), "Neural Discrete Representation Learning", with an EMA codebook.

    The code of ``latent_dim`` numbers is ``latent_dim / code_size`` = M vectors, each replaced by its
    nearest of ``codes`` = K codebook vectors (straight-through gradient; :mod:`vaezoo.latents.vq`).

    Training loss, per image: ``recon + commitment``, with commitment = beta * ||z_e - sg(e)||^2 summed
    over the code (squared code units); the codebook follows the encoder by exponential moving averages
    (the paper's appendix), and codes nothing chooses are restarted on encoder outputs.

    The logged ``elbo`` = -(recon + M log K) nats per image is a true bound: the posterior is a point
    mass and the prior is uniform over codes for now, so KL = M log K exactly. There is no
    importance-weighted NLL (a point mass has no density): ``vaezoo test`` reports ``test/nll`` as not
    applicable, and ``iw_samples`` and ``val_iw_samples`` must stay null.

    Args:
        codes: Codebook size K (512 in the paper).
        code_size: Numbers per codebook vector, d; must divide ``latent_dim``. The default, 2, divides every
            even ``latent_dim``, so ``--model vqvae`` runs on each shipped recipe (latent_dim 10, 32, 50, 128);
            the mnist_vqvae recipe takes 4 (8 vectors of its 32 numbers: 8 log2 512 = 72 bits per image).
            vaezoo's nets give one flat code, so d must leave enough vectors M to carry the image; the paper
            instead quantises d = 64 vectors at every position of a spatial feature map.
        commitment: beta, the commitment loss weight (0.25 in the paper).
        decay: The codebook's EMA decay in [0, 1) (0.99 in the paper's appendix).
        dead_code_threshold: Codes whose EMA cluster size (vectors per global batch choosing them, averaged
            over about 1 / (1 - decay) steps) falls below this are restarted on random encoder outputs of
            the batch: 0.05, codes chosen less than once in 20 batches. 0 turns restarts off.
        iw_samples: Must stay null: a point-mass posterior has no importance-weighted NLL.
        val_iw_samples: Likewise.
        **kwargs: Everything :class:`vaezoo.models.base.VAE` takes (net, latent_dim, likelihood, ...), but
            ``prior``: the prior of a VQ-VAE is over codes (uniform), not a Gaussian prior.
    """

    kl_warmup_refused = "its KL is a constant, log K of the codebook size K, with no gradient"

    def __init__(
        self,
        codes: int = 512,
        code_size: int = 2,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 0.05,
        iw_samples: int | None = None,
        val_iw_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, k in (("iw_samples", iw_samples), ("val_iw_samples", val_iw_samples)):
            if k is not None:
                raise VAEZooError(
                    f"vqvae has no importance-weighted NLL, but {name} is {k}: its posterior is a point mass, so "
                    f"log q(z | x) has no density to weight; -elbo = recon + M log K is its bound. Drop --model.{name} "
                    f"(or set it to null)."
                )
        prior = kwargs.get("prior")
        if prior is not None and not isinstance(prior, NormalPrior):
            raise VAEZooError(
                f"vqvae's prior is over codes (uniform over the {codes} codebook vectors), not over a Gaussian code: "
                f"the prior {type(prior).__name__} does not apply. Drop --model.prior."
            )
        # Read by build_latent, which VAE.__init__ calls: plain values, so they may be set before it.
        self._vq_settings = {"codes": codes, "code_size": code_size, "commitment": commitment, "decay": decay,
                             "dead_code_threshold": dead_code_threshold}
        super().__init__(iw_samples=None, val_iw_samples=None, **kwargs)

    def build_latent(self, latent_dim: int, prior: Prior) -> Latent:
        """The quantiser of ``latent_dim`` numbers; ``prior`` (the default N(0, I)) does not apply."""
        return VQLatent(latent_dim, **self._vq_settings)

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        """``recon`` per image (the latent adds the commitment): the KL, M log K, is a constant with no gradient."""
        return {"loss": out.recon}
