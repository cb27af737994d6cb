"""A new objective in one file: the KL weight warmed up from 0 to 1 over the first steps (Bowman et al.
2016, Sønderby et al. 2016), for --model kl_warmup."""

from typing import Any

from torch import Tensor

from vaezoo.models import VAE
from vaezoo.models.base import Context, VAEOutput
from vaezoo.registry import register_variant


@register_variant("kl_warmup")
class KLWarmupVAE(VAE):
    """loss = recon + min(1, step / warmup_steps) * KL, nats per image; the logged elbo stays the true ELBO.

    Args:
        warmup_steps: Optimiser steps over which the KL weight grows from 0 to 1.
        **kwargs: Everything VAE takes.
    """

    objective_terms = ("kl_weight",)  # logged as train/kl_weight, val/kl_weight, ...

    def __init__(self, warmup_steps: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmup_steps = warmup_steps

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        weight = min(1.0, context.step / self.warmup_steps) if context.stage == "train" else 1.0
        return {"loss": out.recon + weight * out.kl, "kl_weight": out.kl.new_full(out.kl.shape, weight)}
