"""beta-VAE, with the controlled-capacity objective of Burgess et al. (2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.models.base import VAE, Context, VAEOutput
from vaezoo.registry import register_variant


@register_variant("beta")
class BetaVAE(VAE):
    """The beta-VAE of Higgins et al. (2017): recon + beta * KL, optionally with a KL capacity target.

    Plain form (``capacity: null``): ``loss = recon + beta * KL``. ``beta = 1`` is the vanilla ELBO;
    ``beta > 1`` trades reconstruction for a more factorised code.

    Controlled capacity (Burgess et al. 2018, "Understanding disentangling in beta-VAE"): the KL is
    pulled towards a target C that grows linearly from 0 to ``capacity`` nats over
    ``capacity_steps`` training steps, ``loss = recon + beta * |KL - C|``, with KL averaged over the
    batch. The paper uses a large beta here (e.g. 1000) and C up to about 25 nats.

    The logged ``elbo`` is always the true ELBO, so runs with different beta compare directly. A KL warm-up
    (``kl_warmup_steps``) scales beta by its weight; with a capacity target, the target is the schedule and a
    warm-up is refused.

    Args:
        beta: Weight of the KL term (or of |KL - C|). Must be >= 0.
        capacity: Final KL target C in nats per image, or null for the plain beta-VAE.
        capacity_steps: Training steps over which C grows linearly from 0 to ``capacity``.
        **kwargs: Everything :class:`vaezoo.models.base.VAE` takes (net, latent_dim, likelihood, ...).
    """

    def __init__(
        self, beta: float = 4.0, capacity: float | None = None, capacity_steps: int = 100_000, **kwargs: Any
    ) -> None:
        if beta < 0:
            raise VAEZooError(f"beta must be >= 0, got {beta}; beta = 1 is the vanilla VAE, e.g. --model.beta 4.")
        if capacity is not None and (capacity < 0 or capacity_steps <= 0):
            raise VAEZooError(
                f"capacity must be >= 0 nats and capacity_steps > 0, got {capacity} and {capacity_steps}."
            )
        if capacity is not None and kwargs.get("kl_warmup_steps"):
            raise VAEZooError("beta with a capacity target already schedules its KL (capacity_steps): drop "
                              "--model.kl_warmup_steps, or set --model.capacity null for a warmed-up beta-VAE.")
        super().__init__(**kwargs)
        self.beta = beta
        self.capacity = capacity
        self.capacity_steps = capacity_steps

    def capacity_target(self) -> float:
        """The KL target C at the current training step, in nats per image."""
        assert self.capacity is not None
        return self.capacity * min(1.0, self.global_step / self.capacity_steps)

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        if self.capacity is None:
            return {"loss": out.recon + context.kl_weight * self.beta * out.kl}
        # |KL - C| of the batch's mean KL, the same for every image of the batch: (B,)
        return {"loss": out.recon + self.beta * (out.kl.mean() - self.capacity_target()).abs()}
