"""Decoder likelihoods p(x | z) over images with pixels in [0, 1].

A likelihood turns the decoder's output ``params`` of shape ``(B, P * C, H, W)`` (P parameters per
channel) into a log-probability of the images ``x`` of shape ``(B, C, H, W)``, summed over pixels:
one number per image, in nats.

Which ones make bits/dim a true bound: a bound on ``-log P(x)`` of the 8-bit (or binary) data is
only possible with a probability mass function over the discrete pixel values. ``Bernoulli`` (on
binarised data) and ``DiscretizedLogistic`` are such mass functions; ``Gaussian`` is a density, and
becomes a bound only with ``dequantize=True`` (Theis et al. 2016), which adds uniform noise to the
pixels and accounts for the bin width. ``Likelihood.discrete`` says which case holds.

Everything here runs in fp32 even under autocast: log-probabilities summed over 3,072 pixels lose
whole nats in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.registry import register_likelihood


class Likelihood(nn.Module):
    """Base class: p(x | z) from decoder parameters. Subclasses set ``params_per_channel``."""

    params_per_channel: int = 1

    @property
    def discrete(self) -> bool:
        """Whether :meth:`log_prob` is a log-probability of discrete pixels (so bits/dim is a bound)."""
        return True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | z), summed over pixels: ``(B,)`` in nats per image, fp32 even under autocast."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._log_prob(params.float(), x.float()).flatten(1).sum(1)

    def _log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Per-pixel log-probabilities ``(B, C, H, W)`` in fp32."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The expected image E[x | z], ``(B, C, H, W)`` in [0, 1]."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """A draw x ~ p(x | z), ``(B, C, H, W)`` in [0, 1]."""
        raise NotImplementedError


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder: for binarised MNIST.

    ``log p(x | z) = sum_i x_i log s(l_i) + (1 - x_i) log(1 - s(l_i))`` with ``s`` the sigmoid and
    ``l`` the logits. A true log-probability only when the data is binary (binarised in the
    DataModule); on grey levels it is the usual cross-entropy objective, not a likelihood.
    """

    def _log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none")

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params.float()))


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """Independent Gaussian pixels with a learned mean and a fixed standard deviation ``sigma``.

    ``log p(x | z) = sum_i log N(x_i; mu_i, sigma^2)``. With ``sigma`` fixed, this is the MSE
    objective scaled by ``1 / (2 sigma^2)`` plus a constant, the objective many users expect.

    With ``dequantize=True`` (for 8-bit data in [0, 1] as k / 255), each pixel is moved to
    ``y = (k + u) / 256`` with ``u ~ U(0, 1)`` and the log-density of ``y`` is offset by
    ``-log 256`` per pixel: by Jensen, its expectation lower-bounds the log-probability of the 8-bit
    image, so bits/dim is a true bound (Theis et al. 2016).

    Args:
        sigma: Standard deviation of every pixel, in [0, 1] pixel units. Must be > 0.
        dequantize: Add uniform noise to 8-bit pixels and count the bin width, making bits/dim a bound.
    """

    def __init__(self, sigma: float = 0.1, dequantize: bool = False) -> None:
        super().__init__()
        if not sigma > 0:
            raise VAEZooError(f"Gaussian likelihood needs sigma > 0, got {sigma}; try sigma: 0.1.")
        self.sigma = sigma
        self.dequantize = dequantize

    @property
    def discrete(self) -> bool:
        return self.dequantize

    def _log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        if self.dequantize:
            x = (x * 255 + torch.rand_like(x)) / 256  # (k + u) / 256, k in 0..255
        log_density = -0.5 * ((x - params) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        return log_density - math.log(256) if self.dequantize else log_density

    def mean(self, params: Tensor) -> Tensor:
        return params.clamp(0, 1)

    def sample(self, params: Tensor) -> Tensor:
        return (params + self.sigma * torch.randn_like(params)).clamp(0, 1)


@register_likelihood("logistic")
class DiscretizedLogistic(Likelihood):
    """A logistic distribution per sub-pixel, discretised to 256 bins: for 8-bit colour images.

    As in PixelCNN++ (Salimans et al. 2017) with one mixture component. Pixels are mapped to
    ``[-1, 1]``; bin ``k`` covers ``x +- 1/255`` and its mass is
    ``P(k) = s((x + 1/255 - mu) / s) - s((x - 1/255 - mu) / s)`` with the sigmoid ``s`` as the
    logistic CDF, with the edge bins ``k = 0`` and ``k = 255`` extended to -inf and +inf, so the 256
    masses sum to 1 and bits/dim is a true bound. The decoder gives ``mu`` and ``log s`` per
    channel (2 parameters per channel).

    Args:
        min_log_scale: Lower clamp on the log-scale; keeps the masses finite early in training.
    """

    params_per_channel = 2

    def __init__(self, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.min_log_scale = min_log_scale

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_scale = params.chunk(2, dim=1)  # (B, C, H, W) each
        return mu, log_scale.clamp(min=self.min_log_scale)

    def _log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_scale = self._split(params)
        x = 2 * x - 1  # [0, 1] -> [-1, 1]; bin centres at -1 + 2k / 255
        inv_scale = torch.exp(-log_scale)
        plus = inv_scale * (x - mu + 1 / 255)
        minus = inv_scale * (x - mu - 1 / 255)
        log_cdf_plus = plus - F.softplus(plus)  # log s(plus), for the k = 0 edge bin
        log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - s(minus)), for the k = 255 edge bin
        mass = torch.sigmoid(plus) - torch.sigmoid(minus)
        # Where the mass underflows, use the density at the bin centre times the bin width (2/255).
        mid = inv_scale * (x - mu)
        log_mass_approx = mid - log_scale - 2 * F.softplus(mid) + math.log(2 / 255)
        log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_mass_approx)
        return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mass))

    def mean(self, params: Tensor) -> Tensor:
        mu, _ = self._split(params)
        return ((mu + 1) / 2).clamp(0, 1)

    def sample(self, params: Tensor) -> Tensor:
        mu, log_scale = self._split(params.float())
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        x = mu + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))  # inverse logistic CDF
        return torch.round((x.clamp(-1, 1) + 1) / 2 * 255) / 255
