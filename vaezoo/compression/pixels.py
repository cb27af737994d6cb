"""The images as symbols: each likelihood's p(x | z) as an entropy model over discrete pixel values.

A :class:`PixelCoder` pushes and pops the pixels of a chunk of images under the decoder's
parameters. One is registered per likelihood class, as ``torch.distributions`` registers its KL
pairs, so a plugin's likelihood becomes compressible with a few lines in its own package::

    from vaezoo.compression import PixelCoder, register_pixel_coder

    @register_pixel_coder(MyLikelihood)
    class MyPixels(PixelCoder):
        levels = 256
        def entropy_model(self, params): ...

The built-in ones: :class:`~vaezoo.likelihoods.Bernoulli` on binary images (2 levels),
:class:`~vaezoo.likelihoods.DiscretizedLogistic` on 8-bit images (256 levels: its exact bin masses),
and :class:`~vaezoo.likelihoods.Gaussian` with ``dequantize=True`` (each 8-bit level the Gaussian's
mass on its bin of width 1/256, the bound it trains on). A Gaussian without ``dequantize`` is a
density over continuous pixels: it has no lossless code, only the lossy one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import constriction
import numpy as np
import torch
from torch import Tensor

from vaezoo.compression.latent import Coder, categorical
from vaezoo.errors import VAEZooError
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, Likelihood

# Rows of a 256-level table coded per call: 16,384 x 256 float64 = 32 MiB, whatever the chunk's size.
_ROWS_PER_CALL = 16_384


class PixelCoder:
    """An entropy model over a likelihood's discrete pixel values.

    Subclasses set :attr:`levels` and implement :meth:`entropy_model`.

    Attributes:
        levels: Discrete values per sub-pixel: symbol ``k`` is the pixel ``k / (levels - 1)`` in [0, 1].
    """

    levels: ClassVar[int]

    def __init__(self, likelihood: Likelihood) -> None:
        self.likelihood = likelihood

    def entropy_model(self, rows: Tensor) -> tuple[Any, list[np.ndarray]]:
        """constriction's model family and its per-symbol parameters for sub-pixels whose decoder
        parameters are ``rows`` ``(m, P)`` float64 (P per channel, the likelihood's ``params_per_channel``)."""
        raise NotImplementedError

    def rows(self, params: Tensor) -> Tensor:
        """The decoder's output ``(B, P * C, H, W)`` as one row of P parameters per sub-pixel, in
        ``(B, C, H, W)`` order: ``(B * C * H * W, P)`` float64."""
        per = self.likelihood.params_per_channel
        return params.detach().double().cpu().unflatten(1, (per, -1)).movedim(1, -1).reshape(-1, per)

    def _pieces(self, params: Tensor, backwards: bool = False) -> Iterator[tuple[int, Any, list[np.ndarray]]]:
        """``(start, family, args)`` of each piece of ``_ROWS_PER_CALL`` sub-pixels, built one at a time: a
        256-level table is 32 MiB a piece, where a whole chunk's would be gigabytes."""
        rows = self.rows(params)
        starts = range(0, rows.shape[0], _ROWS_PER_CALL)
        for start in reversed(starts) if backwards else starts:
            yield start, *self.entropy_model(rows[start:start + _ROWS_PER_CALL])

    def push(self, coder: Coder, symbols: np.ndarray, params: Tensor) -> None:
        """Push the pixels ``symbols`` ``(B, D)`` int32 under p(x | z) so that :meth:`pop` gives them back."""
        flat = symbols.ravel()
        # A stack: the last piece first, so that pop reads them in order.
        for start, family, args in self._pieces(params, backwards=True):
            coder.encode_reverse(flat[start:start + _ROWS_PER_CALL], family, *args)

    def pop(self, coder: Coder, params: Tensor) -> np.ndarray:
        """Pop the pixels ``(B, D)`` int32 of a chunk under p(x | z)."""
        out = [coder.decode(family, *args) for _, family, args in self._pieces(params)]
        return np.concatenate(out).reshape(params.shape[0], -1)

    def fingerprint(self, params: Tensor) -> bytes:
        """The numbers the coder would see for ``params``, for :func:`vaezoo.compression.identity.probe`."""
        return b"".join(np.ascontiguousarray(a).tobytes() for _, _, args in self._pieces(params) for a in args)


_CODERS: dict[type[Likelihood], type[PixelCoder]] = {}


def register_pixel_coder(likelihood: type[Likelihood]) -> Callable[[type[PixelCoder]], type[PixelCoder]]:
    """Class decorator: ``cls`` codes the pixels of models with the likelihood class ``likelihood`` (and its subclasses)."""

    def add(cls: type[PixelCoder]) -> type[PixelCoder]:
        _CODERS[likelihood] = cls
        return cls

    return add


def pixel_coder(likelihood: Likelihood) -> PixelCoder:
    """The pixel coder of a likelihood: the one registered for its class or nearest base class.

    Raises:
        VAEZooError: where none is registered, or the likelihood's settings make it a density.
    """
    for cls in type(likelihood).__mro__:
        if cls in _CODERS:
            return _CODERS[cls](likelihood)
    raise VAEZooError(
        f"lossless compression needs a probability over discrete pixel values, and the likelihood "
        f"{type(likelihood).__name__} has no pixel coder. Register one with vaezoo.compression.register_pixel_coder, "
        "use a model with the bernoulli or logistic likelihood, or compress with --lossy."
    )


@register_pixel_coder(Bernoulli)
class BernoulliPixels(PixelCoder):
    """Binary pixels: P(x = 1) = sigmoid(logit), the Bernoulli's own probabilities."""

    levels = 2

    def entropy_model(self, rows: Tensor) -> tuple[Any, list[np.ndarray]]:
        return constriction.stream.model.Bernoulli(perfect=False), [torch.sigmoid(rows[:, 0]).numpy()]


@register_pixel_coder(DiscretizedLogistic)
class LogisticPixels(PixelCoder):
    """8-bit pixels: the 256 bin masses of the discretised logistic, edge bins to +-infinity (as ``log_prob``)."""

    levels = 256

    def entropy_model(self, rows: Tensor) -> tuple[Any, list[np.ndarray]]:
        mu, log_scale = rows[:, :1], rows[:, 1:].clamp(min=self.likelihood.min_log_scale)  # (m, 1) each, as log_prob
        inner = -1 + (2 * torch.arange(255, dtype=torch.float64) + 1) / 255  # the 255 bin edges in [-1, 1]
        cdf = torch.sigmoid((inner - mu) * torch.exp(-log_scale))
        cdf = torch.nn.functional.pad(cdf, (1, 0), value=0.0)  # (D, 256): P(x < bin k)
        masses = torch.diff(cdf, dim=1, append=torch.ones(cdf.shape[0], 1, dtype=torch.float64))
        return categorical(), [masses.numpy()]


@register_pixel_coder(Gaussian)
class DequantizedGaussianPixels(PixelCoder):
    """8-bit pixels under a dequantised Gaussian: level k has the density's mass on [k / 256, (k + 1) / 256)."""

    levels = 256

    def __init__(self, likelihood: Likelihood) -> None:
        if not getattr(likelihood, "dequantize", False):
            raise VAEZooError(
                "the model's gaussian likelihood is a density over continuous pixels (dequantize: false), so it has no "
                "lossless code. Compress with --lossy, or train with --model.likelihood.init_args.dequantize true."
            )
        super().__init__(likelihood)

    def entropy_model(self, rows: Tensor) -> tuple[Any, list[np.ndarray]]:
        # In units of 1/256, the bin of level k is [k, k + 1): a Gaussian quantised to unit bins around k + 1/2.
        mean = (rows[:, 0] * 256 - 0.5).numpy()
        std = np.full_like(mean, self.likelihood.sigma * 256)
        return constriction.stream.model.QuantizedGaussian(0, 255), [mean, std]
