"""One layer of Gaussian codes: q(z | x) = N(mean(x), diag(exp(logvar(x)))) under a prior that is a part.

Reparameterisation (Kingma & Welling 2014): z = mean + exp(logvar / 2) * eps with eps ~ N(0, I), so
gradients reach the encoder through the sample. The KL to the prior is analytic for ``normal``,
KL_l = (mean_l^2 + exp(logvar_l) - 1 - logvar_l) / 2 summed over l, and estimated from the samples
for the learned priors (``mog``, ``vamp``), whose pair with a Gaussian has no closed form.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaezoo.latents.base import ImageShape, Latent, LatentSample
from vaezoo.priors.base import Prior, kl

_LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))) of a batch, a distribution object.

    Args:
        mean: ``(B, L)``.
        logvar: ``(B, L)``.
    """

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean = mean
        self.logvar = logvar

    def rsample(self, k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """A reparameterised sample z = mean + exp(logvar / 2) * eps: ``(B, L)``, or ``(k, B, L)``."""
        shape = self.mean.shape if k is None else (k, *self.mean.shape)
        eps = torch.randn(shape, device=self.mean.device, generator=generator)
        return self.mean + torch.exp(0.5 * self.logvar) * eps.to(self.mean.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z | x) summed over the latent dimensions, fp32: ``(..., B, L)`` -> ``(..., B)``."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return (-0.5 * ((z.float() - mean) ** 2 / logvar.exp() + logvar + _LOG_2PI)).sum(-1)

    def kl_per_dim(self) -> Tensor:
        """KL(q || N(0, I)) per latent dimension, ``(B, L)`` in nats, computed in fp32."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


class GaussianLatent(Latent):
    """``code_dim`` Gaussian units with the prior ``prior`` (see the module docstring).

    Args:
        code_dim: Size of the code z.
        prior: p(z), e.g. :class:`vaezoo.priors.NormalPrior`.
    """

    def __init__(self, code_dim: int, prior: Prior) -> None:
        super().__init__()
        self.code_dim = self.activity_dim = code_dim
        self.prior = prior

    def bind(self, image_shape: ImageShape, encode: Callable[[Tensor], Tensor]) -> None:
        def posterior_of(x: Tensor) -> tuple[Tensor, Tensor]:
            q = self.posterior(encode(x))
            return q.mean, q.logvar

        self.prior.bind(self.code_dim, image_shape, posterior_of)

    def posterior(self, h: Tensor) -> DiagonalGaussian:
        """q(z | x) from the encoder's output ``h`` ``(B, 2L)``: the mean and log-variance side by side."""
        mean, logvar = h.chunk(2, dim=-1)  # (B, L) each
        return DiagonalGaussian(mean, logvar)

    def forward(self, h: Tensor, k: int = 1, log_weights: bool = False) -> LatentSample:
        q = self.posterior(h)
        z = q.rsample(k)  # (k, B, L)
        log_q = log_p = None
        if log_weights or not self.prior.analytic_kl:  # (k, B) each; the vanilla path skips them
            log_q, log_p = q.log_prob(z), self.prior.log_prob(z)
        kl_total, kl_per_dim, analytic = kl(self.prior, q.mean, q.logvar, log_q, log_p)
        return LatentSample(
            z=z, kl=kl_total, kl_analytic=analytic, log_q=log_q, log_p=log_p, point=q.mean, activity=q.mean,
            kl_per_dim=kl_per_dim, posterior={"mean": q.mean, "logvar": q.logvar},
            finite_parts={"posterior mean": q.mean, "posterior logvar": q.logvar},
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.prior.sample(n, generator)

    def point(self, h: Tensor) -> Tensor:
        return self.posterior(h).mean

    @property
    def kl_analytic(self) -> bool:
        return self.prior.analytic_kl

    def fixed(self) -> contextlib.AbstractContextManager[None]:
        return self.prior.fixed()

    def check(self) -> None:
        self.prior.check()

    def check_data(self, train_images: int) -> None:
        self.prior.check_data(train_images)
