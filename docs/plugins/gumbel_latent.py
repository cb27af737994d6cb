"""A new kind of latent in one file: M categorical variables of K classes, relaxed by the Gumbel-softmax
(Jang et al. 2017, Maddison et al. 2017), for --model gumbel."""

import math
from typing import Any

import torch
from torch import Tensor, nn

from vaezoo.latents.base import Latent, LatentSample
from vaezoo.models import VAE
from vaezoo.priors import Prior
from vaezoo.registry import register_variant


class GumbelSoftmaxLatent(Latent):
    """A code of M one-hot vectors of K classes (code_dim = M * K) under a uniform prior.

    q(c_m | x) = Categorical(softmax(logits_m)); in training the decoder sees the relaxed sample
    softmax((logits + Gumbel noise) / tau), elsewhere the most likely one-hot code. KL(q || uniform) =
    sum_m [log K - H(q_m)] is exact (analytic). There is no density of the relaxed code: no IW-NLL.
    """

    iw_reason = "a relaxed categorical code has no density q(z | x) to weight by"

    def __init__(self, variables: int, classes: int, temperature: float) -> None:
        super().__init__()
        self.m, self.k, self.tau = variables, classes, temperature
        self.code_dim = self.activity_dim = variables * classes
        self.to_logits = nn.Linear(2 * self.code_dim, self.code_dim)  # encoder features -> logits

    def _logits(self, h: Tensor) -> Tensor:  # (B, M, K)
        return self.to_logits(h).unflatten(-1, (self.m, self.k)).float()

    def forward(self, h: Tensor, k: int = 1, log_weights: bool = False) -> LatentSample:
        logits = self._logits(h)
        log_q = torch.log_softmax(logits, -1)  # (B, M, K)
        kl = (log_q.exp() * (log_q + math.log(self.k))).sum((-1, -2))  # (B,)
        gumbel = -torch.log(-torch.log(torch.rand(k, *logits.shape, device=h.device).clamp_min(1e-20)))
        z = torch.softmax((logits + gumbel) / self.tau, -1) if self.training else self._one_hot(logits).expand(k, -1, -1, -1)
        probs = log_q.exp().flatten(1)
        return LatentSample(z=z.flatten(-2).to(h.dtype), kl=kl, kl_analytic=True, log_q=None, log_p=None,
                            point=self._one_hot(logits).flatten(1).to(h.dtype), activity=probs,
                            posterior={"probs": probs}, finite_parts={"logits": logits})

    def _one_hot(self, logits: Tensor) -> Tensor:
        return nn.functional.one_hot(logits.argmax(-1), self.k).float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:  # uniform classes
        classes = torch.randint(self.k, (n, self.m), generator=generator).to(self.to_logits.weight.device)
        return nn.functional.one_hot(classes, self.k).flatten(1).float()

    def point(self, h: Tensor) -> Tensor:
        return self._one_hot(self._logits(h)).flatten(1).to(h.dtype)


@register_variant("gumbel")
class GumbelVAE(VAE):
    """A VAE with a Gumbel-softmax categorical code: latent_dim = variables * classes.

    Args:
        classes: K, classes per variable (latent_dim must be a multiple of it).
        temperature: tau of the relaxation.
        **kwargs: Everything VAE takes.
    """

    def __init__(self, classes: int = 10, temperature: float = 0.5, **kwargs: Any) -> None:
        self.classes, self.temperature = classes, temperature  # read by build_latent, inside VAE.__init__
        super().__init__(**kwargs)

    def build_latent(self, latent_dim: int, prior: Prior) -> Latent:
        return GumbelSoftmaxLatent(latent_dim // self.classes, self.classes, self.temperature)
