"""Lossy compression: the posterior means, quantised, entropy-coded, and decoded to the decoder's mean.

Each image's code is its posterior mean ``m(x)``; dimension l is quantised on a grid of step

    step_l = mean over the images of the posterior's standard deviation in l, divided by ``quality``,

so ``quality = 1`` keeps each code to about the precision the model itself holds it to, and higher
qualities spend more bits for codes closer to ``m(x)``. Dimensions the model does not use (the
posterior equals the prior: mean 0, deviation 1) quantise to one value and cost almost nothing.

The integers are coded under a Gaussian per dimension fitted to this file's codes (its centre,
step and spread are stored in the header as float32: a learned entropy model, 12 bytes a dimension),
with constriction's quantised Gaussian. The reconstruction is the likelihood's mean at the
dequantised code, rounded to 8 bits. The rate is reported in bits per pixel (per image pixel, as
image codecs report it, not per sub-pixel).
"""

from __future__ import annotations

from typing import Any

import constriction
import numpy as np
import torch
from torch import Tensor

from vaezoo.compression.container import digest
from vaezoo.compression.latent import Coder
from vaezoo.errors import VAEZooError
from vaezoo.models.base import VAE

_BATCH = 500  # images per network pass; lossy decoding needs no fixed batching (its tables come from the header)


def _model(span: int) -> constriction.stream.model.QuantizedGaussian:
    return constriction.stream.model.QuantizedGaussian(-span, span)


def encode(model: VAE, images: Tensor, quality: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Code images ``(N, C, H, W)`` in [0, 1] at ``quality`` (> 0); returns the words and the header's settings."""
    if not quality > 0:
        raise VAEZooError(f"--quality must be > 0, got {quality}: the quantisation step is the posterior's deviation / quality.")
    means, stds = [], []
    with torch.inference_mode():
        for start in range(0, images.shape[0], _BATCH):
            q = model.latent.posterior(model.net.encoder(images[start:start + _BATCH]))
            means.append(q.mean.float())
            stds.append(torch.exp(0.5 * q.logvar.float()))
    mean = torch.cat(means).numpy()  # (N, L)
    centre = mean.mean(0).astype(np.float32)
    step = (torch.cat(stds).numpy().mean(0) / quality).astype(np.float32)
    codes = np.rint((mean - centre) / step).astype(np.int32)  # (N, L)
    span = max(1, int(np.abs(codes).max()))
    spread = np.maximum(codes.std(0), 0.1).astype(np.float32)  # constriction needs std > 0; 0.1: one value, ~0 bits
    coder = Coder()
    coder.encode_reverse(codes.ravel(), _model(span), np.zeros(codes.size), np.tile(spread.astype(np.float64), len(codes)))
    settings = {"quality": quality, "span": span, "centre": centre.tolist(), "step": step.tolist(),
                "spread": spread.tolist(), "codes_sha256": digest(codes)}
    return coder.get_compressed(), settings


def decode(model: VAE, words: np.ndarray, settings: dict[str, Any], count: int) -> Tensor:
    """The reconstructions ``(count, C, H, W)`` in [0, 1], 8-bit levels, of :func:`encode`'s output."""
    centre, step, spread = (np.asarray(settings[k], dtype=np.float32) for k in ("centre", "step", "spread"))
    coder = Coder(words)
    codes = coder.decode(_model(settings["span"]), np.zeros(count * len(spread)),
                         np.tile(spread.astype(np.float64), count)).reshape(count, -1)
    if digest(codes) != settings["codes_sha256"]:
        raise VAEZooError("the decoded codes do not match the file's checksum of them: the file is damaged or was "
                          "written by another vaezoo version. No images were written.")
    z = torch.from_numpy(centre + codes.astype(np.float32) * step)  # float32, as the encoder's grid
    out = []
    with torch.inference_mode():
        for start in range(0, count, _BATCH):
            out.append(model.likelihood.mean(model.decode(z[start:start + _BATCH])).float())
    return torch.round(torch.cat(out).clamp(0, 1) * 255) / 255

