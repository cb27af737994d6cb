"""The standard normal prior N(0, I) of Kingma & Welling (2014): the KL from a diagonal Gaussian is analytic."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaezoo.priors.base import Prior
from vaezoo.registry import register_prior

_LOG_2PI = math.log(2 * math.pi)


@register_prior("normal")
class NormalPrior(Prior):
    """p(z) = N(0, I), with no parameters. KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2 per dimension."""

    analytic_kl = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)  # follows the model's device

    def log_prob(self, z: Tensor) -> Tensor:
        return (-0.5 * (z.float().pow(2) + _LOG_2PI)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = self._device_probe.device
        if generator is not None:
            return torch.randn(n, self.latent_dim, generator=generator).to(device)
        return torch.randn(n, self.latent_dim, device=device)

    def as_mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        zeros = torch.zeros(1, self.latent_dim, device=self._device_probe.device)
        return zeros, zeros, torch.zeros(1, device=zeros.device)  # one component, N(0, I)

    def kl_per_dim(self, mean: Tensor, logvar: Tensor) -> Tensor:
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
