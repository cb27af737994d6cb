"""Lossless compression by bits-back coding with ANS (BB-ANS; Townsend, Bird & Barber, ICLR 2019).

A VAE's -ELBO is a code length. To code an image x on a stack of bits (ANS is last-in, first-out):

    pop   z ~ q(z | x)      # decode z from the bits already there: gets back -log q(z | x) bits
    push  x under p(x | z)  # costs -log p(x | z)
    push  z under p(z)      # costs -log p(z)

so each image adds ``-log p(x | z) - log p(z) + log q(z | x)`` bits: the -ELBO, in expectation over
the z it popped. The decoder runs the three steps backwards: pop z under p(z), pop x under p(x | z),
and push z under q(z | x), which returns the bits the encoder popped.

Batched: the steps act on a chunk of images at once (their codes are one symbol of a bigger latent),
so each network runs once per chunk. The decoder must see the same chunks, so their sizes go in the
file; the networks then see the same batches on both sides, and give the same numbers.

The first chunk pops from an empty stack, so the stack starts with "clean bits": seeded random
words (as the paper's experiments). Chunks grow from one image as the stack grows, so the clean bits
are one image's worth, and are reported apart from the steady-state rate. After decoding, the stack
must be those words again: a check of the whole file for free.

Hierarchical latents fit the same loop as a sequence of (pop, push) steps per layer, which is
Bit-Swap's recursion (Kingma et al. 2019); only one Gaussian layer is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vaezoo.compression.latent import Buckets, Coder, PriorCoder, categorical, posterior_tables
from vaezoo.compression.pixels import PixelCoder, pixel_coder
from vaezoo.errors import VAEZooError
from vaezoo.latents.gaussian import GaussianLatent
from vaezoo.models.base import VAE

CLEAN_SEED = 20190506  # the seed of the clean bits: any fixed number; stored in every file


def check_codable(model: VAE) -> None:
    """Refuse a model whose latent vaezoo cannot code: one Gaussian layer q(z | x) is needed (bits-back takes bits
    back from its density; lossy mode quantises its mean)."""
    latent = model.latent
    if isinstance(latent, GaussianLatent):
        return
    name = type(model).__name__
    if latent.iw_reason is not None:  # VQ-VAE: a point-mass posterior
        raise VAEZooError(
            f"{name} has no continuous latent ({type(latent).__name__}: {latent.iw_reason}); bits-back coding needs "
            "a posterior density q(z | x) to take bits back from, and lossy mode quantises a Gaussian posterior's "
            "mean, so vaezoo compress does not support it. Use a model "
            "with a Gaussian latent (vanilla, beta, iwae, betatc, or any of them with the mog or vamp prior)."
        )
    raise VAEZooError(
        f"{name} has a {type(latent).__name__} (several stochastic layers). vaezoo compress codes one Gaussian "
        "layer; Bit-Swap's recursion for hierarchies (Kingma et al. 2019) is not built yet. Use a one-layer model."
    )


@dataclass
class Chunks:
    """The sizes of the chunks, in order, run-length coded: ``[[size, repeats], ...]`` (what the file stores)."""

    runs: list[list[int]]

    @classmethod
    def of(cls, sizes: list[int]) -> Chunks:
        runs: list[list[int]] = []
        for size in sizes:
            if runs and runs[-1][0] == size:
                runs[-1][1] += 1
            else:
                runs.append([size, 1])
        return cls(runs)

    def sizes(self) -> list[int]:
        return [size for size, repeats in self.runs for _ in range(repeats)]

    def spans(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of every chunk, in encoding order."""
        start = 0
        for size in self.sizes():
            yield start, start + size
            start += size


class BitsBack:
    """The BB-ANS coder of one model (a one-layer Gaussian latent, a likelihood with a pixel coder).

    Args:
        model: The trained model (put in eval mode, on the CPU, in float32).
        latent_precision: Bits per latent dimension (``2**latent_precision`` buckets).
        latent_scale: The buckets have equal mass under N(0, latent_scale^2) (:mod:`vaezoo.compression.latent`).
    """

    def __init__(self, model: VAE, latent_precision: int = 8, latent_scale: float = 2.0) -> None:
        check_codable(model)
        self.model = model
        self.buckets = Buckets(latent_precision, latent_scale)
        self.pixels: PixelCoder = pixel_coder(model.likelihood)
        with torch.inference_mode():
            self.prior = PriorCoder(model.latent.prior, self.buckets)
        self.latent_dim = model.latent.code_dim
        self.dims = math.prod(model.image_shape)

    @property
    def image_bound(self) -> int:
        """The bits one image's pop of z may take: L dimensions of ``latent_precision`` bits, a posterior no
        wider than the prior (what sizes the clean bits and the chunks)."""
        return self.latent_dim * self.buckets.precision

    def clean_words(self) -> np.ndarray:
        """The clean bits the stack starts with: one image's bound, in seeded random 32-bit words."""
        words = math.ceil(self.image_bound / 32) + 2
        return np.random.default_rng(CLEAN_SEED).integers(0, 2**32, words, dtype=np.uint32)

    # ----- the networks, one chunk at a time -------------------------------------------------------

    def _posterior(self, symbols: np.ndarray) -> np.ndarray:
        """q(z | x) tables ``(B * L, n)`` of pixels ``(B, D)``."""
        x = self.to_images(symbols)
        q = self.model.latent.posterior(self.model.net.encoder(x))
        return posterior_tables(self.buckets, q.mean, q.logvar)

    def _likelihood_params(self, indices: np.ndarray) -> torch.Tensor:
        """The decoder's parameters for bucket indices ``(B, L)``."""
        return self.model.decode(self.buckets.codes(indices))

    def to_images(self, symbols: np.ndarray) -> torch.Tensor:
        """Pixels as symbols ``(B, D)`` -> images ``(B, C, H, W)`` in [0, 1], float32."""
        levels = self.pixels.levels
        return (torch.from_numpy(symbols).float() / (levels - 1)).reshape(-1, *self.model.image_shape)

    # ----- the codec ------------------------------------------------------------------------------

    def encode(self, symbols: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, Chunks]:
        """Code images given as pixel symbols ``(N, D)`` int32.

        Returns:
            The compressed words (uint32) and the chunk sizes the decoder needs.
        """
        if chunk < 1:
            raise VAEZooError(f"chunk must be >= 1 image per network pass, got {chunk}; the default is 256.")
        coder = Coder(self.clean_words())
        sizes: list[int] = []
        start = 0
        with torch.inference_mode():
            while start < symbols.shape[0]:
                # As many images as the stack holds bits to pop their codes from (one at first), up to `chunk`.
                fits = max(1, coder.num_valid_bits() // self.image_bound)
                size = min(chunk, fits, symbols.shape[0] - start)
                x = symbols[start:start + size]
                indices = coder.decode(categorical(), self._posterior(x)).reshape(size, -1)  # pop z ~ q(z | x)
                self.pixels.push(coder, x, self._likelihood_params(indices))                  # push x under p(x | z)
                self.prior.push(coder, indices)                                                # push z under p(z)
                sizes.append(size)
                start += size
        return coder.get_compressed(), Chunks.of(sizes)

    def decode(self, words: np.ndarray, chunks: Chunks) -> np.ndarray:
        """The pixel symbols ``(N, D)`` int32 of :meth:`encode`'s output.

        Raises:
            VAEZooError: when the stack does not end as it began (the clean bits): a damaged file or another model.
        """
        coder = Coder(words)
        spans = list(chunks.spans())
        out = np.empty((spans[-1][1] if spans else 0, self.dims), dtype=np.int32)
        with torch.inference_mode():
            for start, stop in reversed(spans):  # a stack: the last chunk first
                indices = self.prior.pop(coder, stop - start)                        # pop z under p(z)
                x = self.pixels.pop(coder, self._likelihood_params(indices))          # pop x under p(x | z)
                coder.encode_reverse(indices.ravel(), categorical(), self._posterior(x))  # push z under q(z | x)
                out[start:stop] = x
        if not np.array_equal(coder.get_compressed(), self.clean_words()):
            raise VAEZooError(
                "the decoded stream did not return to its initial bits: the file was not written by this model, or "
                "this machine computes the model differently from the one that compressed it. No images were written."
            )
        return out
