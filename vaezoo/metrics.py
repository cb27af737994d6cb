"""Posterior-collapse diagnostics as torchmetrics, so they sync across DDP processes by themselves."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class LatentActivity(Metric):
    """Per-dimension activity Cov_x(E_q[z_l | x]) and KL, over a whole split.

    A latent dimension is *active* when the variance over the data of its posterior mean exceeds
    ``threshold`` (Burda et al. 2015 use 0.01): an inactive dimension carries no information about
    x, its posterior has collapsed to the prior.

    :meth:`compute` returns a dict: ``active_units`` (count), ``activity`` ``(L,)`` (the variances)
    and, where the KL splits over dimensions in closed form (the N(0, I) prior), ``kl_per_dim`` ``(L,)``
    (mean KL of each dimension, nats per image).

    Args:
        latent_dim: Size of the latent code, L.
        threshold: Activity above which a dimension counts as active.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 0.01) -> None:
        super().__init__()
        self.threshold = threshold
        # Sums in float64: a variance from sums of squares loses digits in float32 over 10^4 images.
        for name in ("mean_sum", "mean_sq_sum", "kl_sum"):
            self.add_state(name, torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kl_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mean: Tensor, kl_per_dim: Tensor | None) -> None:
        """Add a batch: posterior means ``(B, L)`` and KL per dimension ``(B, L)`` (None where it has no split)."""
        mean = mean.detach().double()
        self.mean_sum += mean.sum(0)
        self.mean_sq_sum += mean.pow(2).sum(0)
        self.count += mean.shape[0]
        if kl_per_dim is not None:
            self.kl_sum += kl_per_dim.detach().double().sum(0)
            self.kl_count += mean.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        activity = (self.mean_sq_sum / n - (self.mean_sum / n).pow(2)).clamp(min=0)
        stats = {"active_units": (activity > self.threshold).sum().float(), "activity": activity.float()}
        if self.kl_count > 0:
            stats["kl_per_dim"] = (self.kl_sum / self.kl_count.clamp(min=1)).float()
        return stats
