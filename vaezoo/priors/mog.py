"""A mixture of Gaussians with learned means, variances and weights: a simple learned prior."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.priors.base import Prior
from vaezoo.registry import register_prior

_LOG_2PI = math.log(2 * math.pi)


def mixture_log_prob(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor) -> Tensor:
    """log sum_k w_k N(z; m_k, diag(exp(v_k))): ``z (..., L)``, ``means, logvars (K, L)``,
    ``log_weights (K,)`` (normalised) -> ``(...)``, fp32.

    The squared distances sum_l (z_l - m_kl)^2 / s_kl^2 are expanded into three matrix products,
    z^2 (1/s^2)^T - 2 z (m/s^2)^T + sum_l m^2/s^2, so that no ``(..., K, L)`` tensor is made: the test NLL
    scores thousands of codes per chunk against the VampPrior's 500 components.
    """
    z = z.float()
    means, logvars = means.float(), logvars.float()
    precision = torch.exp(-logvars)  # (K, L)
    squared = z.pow(2) @ precision.T - 2 * (z @ (means * precision).T) + (means.pow(2) * precision).sum(-1)
    log_n = -0.5 * (squared + logvars.sum(-1) + means.shape[-1] * _LOG_2PI)  # (..., K)
    return torch.logsumexp(log_n + log_weights.float(), dim=-1)


def mixture_sample(n: int, means: Tensor, logvars: Tensor, log_weights: Tensor,
                   generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws ``(n, L)`` of the mixture: a component by its weight, then its Gaussian (drawn on the CPU
    from ``generator`` when one is given)."""
    device = means.device
    weights = log_weights.float().exp()
    if generator is not None:
        k = torch.multinomial(weights.cpu(), n, replacement=True, generator=generator).to(device)  # (n,)
        eps = torch.randn(n, means.shape[-1], generator=generator).to(device)
    else:
        k = torch.multinomial(weights, n, replacement=True)
        eps = torch.randn(n, means.shape[-1], device=device)
    return means[k].float() + torch.exp(0.5 * logvars[k].float()) * eps


@register_prior("mog")
class MixturePrior(Prior):
    """A mixture of K Gaussians with learned means, variances and weights: p(z) = sum_k w_k N(m_k, diag(s_k^2)).

    The means, variances and (optionally) weights are learned with the model. The KL from the
    posterior has no closed form: it is estimated by sampling (logged as ``kl_mc``).

    Args:
        components: K, the number of mixture components.
        learn_weights: Learn the mixture weights (else uniform, 1/K each).
        init_scale: Standard deviation of the components' initial means around 0.
    """

    def __init__(self, components: int = 10, learn_weights: bool = True, init_scale: float = 1.0) -> None:
        super().__init__()
        if components <= 0:
            raise VAEZooError(f"mog prior needs components >= 1, got {components}; e.g. --model.prior.components 10.")
        self.components = components
        self.learn_weights = learn_weights
        self.init_scale = init_scale

    def bind(self, latent_dim, image_shape, encode) -> None:  # noqa: ANN001 (see Prior.bind)
        super().bind(latent_dim, image_shape, encode)
        self.means = nn.Parameter(self.init_scale * torch.randn(self.components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(self.components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(self.components), requires_grad=self.learn_weights)

    def log_prob(self, z: Tensor) -> Tensor:
        return mixture_log_prob(z, self.means, self.logvars, torch.log_softmax(self.logits.float(), 0))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return mixture_sample(n, self.means, self.logvars, torch.log_softmax(self.logits.float(), 0), generator)

    def as_mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.means.float(), self.logvars.float(), torch.log_softmax(self.logits.float(), 0)
