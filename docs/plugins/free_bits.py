"""A new objective in one file: the ELBO with "free bits" (Kingma et al. 2016, "Improved Variational Inference
with Inverse Autoregressive Flow", appendix C.8), for --model free_bits."""

from typing import Any

from torch import Tensor

from vaezoo.models import VAE
from vaezoo.models.base import Context, VAEOutput
from vaezoo.registry import register_variant


@register_variant("free_bits")
class FreeBitsVAE(VAE):
    """loss = recon + sum_j max(free_nats, batch mean of KL_j), nats per image: a latent unit whose KL is below
    ``free_nats`` costs nothing more, so the KL cannot switch units off early. The logged elbo stays the true ELBO.

    Args:
        free_nats: lambda, in nats per latent unit (per whole code where the KL is estimated by sampling).
        **kwargs: Everything VAE takes.
    """

    objective_terms = ("free_kl",)  # logged as train/free_kl, val/free_kl, ...

    def __init__(self, free_nats: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.free_nats = free_nats

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        # KL per unit (B, L) where analytic, else the whole code's estimate (B, 1)
        kl = out.kl_per_dim if out.kl_per_dim is not None else out.kl.unsqueeze(-1)
        free_kl = kl.mean(0).clamp(min=self.free_nats).sum()  # a batch statistic, nats per image
        return {"loss": out.recon + context.kl_weight * free_kl, "free_kl": free_kl.expand_as(out.recon)}
