"""The latent code between encoder and decoder: what the posterior is, how it is sampled, and its KL.

The net contract stays as it is (``vaezoo.nets.base``): the encoder maps images to ``features``
numbers per image, ``2 * code_dim`` for every latent here, and the decoder maps a code of
``code_dim`` numbers to the likelihood's parameters. A :class:`Latent` sits between them:

    h = encoder(x)                       # (B, features)
    s = latent(h, k)                     # k codes per image, (k, B, code_dim), and the KL terms
    params = decoder(s.z.flatten(0, 1))  # (k * B, P * C, H, W)

Three kinds share this one interface, so the model, its objectives, pictures, predict and the
importance-weighted NLL need no case for any of them:

- one Gaussian layer with a prior that is a part (``normal``, ``mog``, ``vamp``): ``latents/gaussian.py``;
- several stochastic layers, the decoder's own first (hierarchical VAEs, bottom-up inference): ``latents/hierarchical.py``;
- a discrete code of codebook indices (VQ-VAE): ``latents/vq.py``. Its posterior is a point mass, so
  ``log q`` does not exist and the importance-weighted NLL does not apply (:attr:`Latent.iw_reason`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

ImageShape = tuple[int, int, int]


@dataclass
class LatentSample:
    """k codes per image and the latent's terms, per image, in nats.

    Attributes:
        z: The codes the decoder sees, ``(k, B, code_dim)``.
        kl: KL(q(z | x) || p(z)) ``(B,)``: analytic where the pair has a closed form, else the
            Monte-Carlo estimate ``mean_k [log q(z | x) - log p(z)]``.
        kl_analytic: Which of the two ``kl`` is.
        log_q: log q(z | x) of the samples ``(k, B)``, fp32; None where q has no density (a point mass).
        log_p: log p(z) of the samples ``(k, B)``, fp32; None where ``log_q`` is None.
        point: The code of a reconstruction ``(B, code_dim)``: the posterior's mean, or the quantised code.
        activity: What "active units" measures, ``(B, A)``: the posterior means of every stochastic unit.
        kl_per_dim: The KL split over those units ``(B, A)`` where analytic, else None.
        extra: Further per-image losses ``(B,)`` the latent adds to the objective (VQ's codebook and
            commitment terms), logged under their names.
        stats: Per-batch figures to log (VQ's perplexity and used codes), scalars.
        posterior: What ``predict``'s encode task writes, ``{name: (B, ...)}`` (e.g. mean and logvar).
        finite_parts: The tensors the non-finite guard names when the loss goes NaN, ``{name: tensor}``.
    """

    z: Tensor
    kl: Tensor
    kl_analytic: bool
    log_q: Tensor | None
    log_p: Tensor | None
    point: Tensor
    activity: Tensor
    kl_per_dim: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    posterior: dict[str, Tensor] = field(default_factory=dict)
    finite_parts: dict[str, Tensor] = field(default_factory=dict)


class Latent(nn.Module):
    """The interface of a latent code; see the module docstring.

    Attributes:
        code_dim: Numbers per code, what the decoder takes.
        features: Numbers per image the encoder gives, ``2 * code_dim``.
        activity_dim: Stochastic units per image that ``activity`` reports.
        iw_reason: None where the importance-weighted bound applies (``log_q`` exists); else why not, for
            ``vaezoo test`` to report.
        terms: The names of ``extra`` and ``stats``, logged as ``<stage>/<name>``.
    """

    code_dim: int
    activity_dim: int
    iw_reason: str | None = None
    terms: tuple[str, ...] = ()  # the names of ``extra`` and ``stats``, logged under stage/<name>

    @property
    def features(self) -> int:
        return 2 * self.code_dim

    def bind(self, image_shape: ImageShape, encode: Callable[[Tensor], Tensor]) -> None:
        """Called once by the model with the image shape and its encoder ``x (N, C, H, W) -> h (N, features)``."""

    def forward(self, h: Tensor, k: int = 1, log_weights: bool = False) -> LatentSample:
        """k codes per image from the encoder's output ``h`` ``(B, features)``, with their terms.

        Args:
            h: The encoder's output.
            k: Codes per image.
            log_weights: Fill ``log_q`` and ``log_p`` even where the KL does not need them (IWAE, the
                importance-weighted NLL); latents without ``log_q`` ignore it.
        """
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``(n, code_dim)`` from the prior (what ``VAE.sample`` decodes).

        Args:
            n: How many.
            generator: A CPU generator, for the same codes every time (the pictures' fixed samples).
        """
        raise NotImplementedError

    def point(self, h: Tensor) -> Tensor:
        """The code of a reconstruction ``(B, code_dim)`` from ``h`` ``(B, features)``, with no sampling."""
        raise NotImplementedError

    @property
    def kl_analytic(self) -> bool:
        """Whether the KL is computed in closed form (logged as ``kl``) or estimated by sampling (``kl_mc``)."""
        return True

    def fixed(self) -> contextlib.AbstractContextManager[None]:
        """A context in which nothing trains (the test NLL's many draws): parts may compute shared terms once."""
        return contextlib.nullcontext()

    def check(self) -> None:
        """Fail at start-up when a part breaks its contract (a prior plugin's shapes); nothing by default."""

    def check_data(self, train_images: int) -> None:
        """Refuse a training set this latent cannot be fitted to (see :meth:`Prior.check_data`); nothing by default."""

    def describe(self) -> dict[str, Any]:
        """What the docs and ``vaezoo test`` say about this latent's kind: no entries by default."""
        return {}
