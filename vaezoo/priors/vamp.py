"""The VampPrior of Tomczak & Welling (2018), "VAE with a VampPrior": a mixture of the posteriors of K
learned pseudo-inputs, p(z) = (1/K) sum_k q(z | u_k)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.priors.base import Prior
from vaezoo.priors.mog import mixture_log_prob, mixture_sample
from vaezoo.registry import register_prior


@register_prior("vamp")
class VampPrior(Prior):
    """The VampPrior of Tomczak & Welling (2018): the mixture of the encoder's posteriors of K learned pseudo-inputs.

    p(z) = (1/K) sum_k q(z | u_k), with the pseudo-inputs u_k images learned with the model (500 on
    MNIST in the paper). The KL from the
    posterior has no closed form: it is estimated by sampling. Every training step encodes the K
    pseudo-inputs once.

    Pseudo-inputs are kept in [0, 1] by a hard tanh, as in the paper, and start near ``init_mean``
    (the paper's 0.05 +- 0.01).

    Args:
        pseudo_inputs: K, the number of pseudo-inputs (at most the number of training images).
        init_mean: Mean of the pseudo-inputs' initial pixels.
        init_std: Their standard deviation.
    """

    def __init__(self, pseudo_inputs: int = 500, init_mean: float = 0.05, init_std: float = 0.01) -> None:
        super().__init__()
        if pseudo_inputs <= 0:
            raise VAEZooError(f"vamp prior needs pseudo_inputs >= 1, got {pseudo_inputs}; e.g. --model.prior.pseudo_inputs 500.")
        self.pseudo_inputs = pseudo_inputs
        self.init_mean = init_mean
        self.init_std = init_std
        self._encode: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
        self._fixed: tuple[Tensor, Tensor] | None = None  # the components, inside fixed()

    def bind(self, latent_dim, image_shape, encode) -> None:  # noqa: ANN001 (see Prior.bind)
        super().bind(latent_dim, image_shape, encode)
        self.u = nn.Parameter(self.init_mean + self.init_std * torch.randn(self.pseudo_inputs, *image_shape))
        self._encode = encode  # a plain attribute: the encoder is the model's, not a second copy

    def components(self) -> tuple[Tensor, Tensor]:
        """The K posteriors of the pseudo-inputs: means and log-variances, ``(K, L)`` each."""
        assert self._encode is not None, "VampPrior.bind() was not called (the model does it)"
        if self._fixed is not None:
            return self._fixed
        return self._encode(nn.functional.hardtanh(self.u, 0.0, 1.0))

    @contextlib.contextmanager
    def fixed(self) -> Iterator[None]:
        """Encode the K pseudo-inputs once for the whole context (the test NLL calls log_prob once per chunk
        of samples: K encoder passes each time otherwise). Only without gradients: nothing trains inside."""
        if torch.is_grad_enabled() or self._fixed is not None:
            yield
            return
        self._fixed = self.components()
        try:
            yield
        finally:
            self._fixed = None

    def log_prob(self, z: Tensor) -> Tensor:
        means, logvars = self.components()
        return mixture_log_prob(z, means, logvars, self._uniform(means.device))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        means, logvars = self.components()
        return mixture_sample(n, means, logvars, self._uniform(means.device), generator)

    def as_mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        means, logvars = self.components()
        return means.float(), logvars.float(), self._uniform(means.device)

    def _uniform(self, device: torch.device) -> Tensor:
        """The mixture's log-weights ``(K,)``: log(1/K) each."""
        return torch.full((self.pseudo_inputs,), -math.log(self.pseudo_inputs), device=device)

    def check_data(self, train_images: int) -> None:
        """Refuse more pseudo-inputs than the training set holds images: the best a VampPrior can be is the
        mixture of the training images' own posteriors (the aggregate posterior), so more add only cost."""
        if self.pseudo_inputs > train_images:
            raise VAEZooError(
                f"the vamp prior has {self.pseudo_inputs} pseudo-inputs, more than the {train_images} training images: "
                f"pass --model.prior.pseudo_inputs {max(1, min(500, train_images))} or fewer."
            )
