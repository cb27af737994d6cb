"""Which model a file needs, and whether this machine computes it as the compressing one did.

Bits-back decoding is exact only if the decoder rebuilds every table the encoder used, bit for bit.
Three checks guard that, each before any image is written:

- the weights' SHA-256 (and class path): the file names the model it needs;
- :func:`probe`: a hash of the tables the coder sees for fixed inputs through the encoder, decoder
  and prior, on every chunk size the file uses. Another CPU kind, BLAS or torch version can change
  the networks' last bits; this catches it before decoding, naming both machines. (The thread count
  can too; files record theirs, and decompression uses it: :func:`vaezoo.compression.api.threads`.);
- the decoded images' SHA-256 (in :mod:`vaezoo.compression.api`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

import numpy as np
import torch

from vaezoo.models.base import VAE


def class_path(model: VAE) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def weights_sha256(model: VAE) -> str:
    """SHA-256 of the model's state dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_record(model: VAE, checkpoint: str | None) -> dict[str, Any]:
    """What a file stores of its model: class, weights hash, settings, and where the checkpoint was."""
    hparams = {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")}
    return {
        "class_path": class_path(model),
        "weights_sha256": weights_sha256(model),
        "hparams": json.loads(json.dumps(hparams, default=str)),
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
    }


def machine() -> dict[str, Any]:
    """What can change a network's last bits besides the thread count (which files record): torch's version and the CPU."""
    return {"torch": torch.__version__, "platform": platform.platform(), "processor": platform.machine()}


def probe(codec: Any, sizes: list[int]) -> str:
    """SHA-256 of the tables the bits-back coder ``codec`` sees for seeded inputs, at every chunk size in ``sizes``.

    The inputs are random pixels through the encoder and random buckets through the decoder: the same
    networks, batch sizes and table code as decoding, with no image of the file needed.
    """
    digest = hashlib.sha256(codec.prior.fingerprint())
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for size in sorted(set(sizes)):
            pixels = rng.integers(0, codec.pixels.levels, (size, codec.dims), dtype=np.int32)
            digest.update(codec._posterior(pixels).tobytes())
            indices = rng.integers(0, codec.buckets.n, (size, codec.latent_dim), dtype=np.int32)
            digest.update(codec.pixels.fingerprint(codec._likelihood_params(indices)))
    return digest.hexdigest()
