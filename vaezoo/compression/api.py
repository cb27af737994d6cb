"""Compress and decompress image tensors with a trained model: what ``vaezoo compress`` runs.

    from vaezoo.compression import compress, decompress
    packed = compress(model, images)          # images (N, C, H, W) in [0, 1]; lossless (bits-back)
    packed.report["bits_per_dim"]             # the measured rate
    images_back = decompress(packed.data, model)
    packed = compress(model, images, lossy=True, quality=2.0)

Lossless mode needs binary images for a Bernoulli likelihood (pixels 0 or 1) and 8-bit images
(pixels k / 255) for the logistic and dequantised Gaussian ones; anything else is refused, not rounded.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaezoo.compression import container, lossy
from vaezoo.compression.bitsback import CLEAN_SEED, BitsBack, Chunks, check_codable
from vaezoo.compression.identity import class_path, machine, model_record, probe, weights_sha256
from vaezoo.errors import VAEZooError
from vaezoo.models.base import VAE


@dataclass
class Compressed:
    """A compressed file's bytes and what was measured.

    Attributes:
        data: The ``.vzc`` file's bytes.
        report: Images, dimensions and the rate: ``bits_per_dim`` (the coded words, clean bits included),
            ``steady_bits_per_dim`` (without the clean bits), ``file_bits_per_dim`` (the whole file, header
            included), ``bits_per_pixel`` (per image pixel, what image codecs report), and the seconds taken;
            lossy files also ``psnr_db`` (the mean over images, on [0, 1] pixels) and ``mse``, of the decoded file.
    """

    data: bytes
    report: dict[str, Any] = field(default_factory=dict)


def prepare(model: VAE) -> VAE:
    """The model as the codec runs it: on the CPU, in float32, in eval mode (moved in place)."""
    return model.to("cpu", torch.float32).eval()


def to_symbols(images: Tensor, levels: int, shape: tuple[int, ...]) -> np.ndarray:
    """Images ``(N, C, H, W)`` (float in [0, 1], or uint8 0-255) as pixel symbols ``(N, D)`` int32.

    Raises:
        VAEZooError: for no images, another shape, or pixels that are not on the likelihood's levels.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise VAEZooError(f"nothing to compress: expected images (N, C, H, W) with N >= 1, got shape {tuple(images.shape)}.")
    if tuple(images.shape[1:]) != tuple(shape):
        raise VAEZooError(f"the images are {tuple(images.shape[1:])} (C, H, W) but the model takes {tuple(shape)}: "
                          "resize them or use a model trained at that size.")
    x = images.float() / 255 if images.dtype == torch.uint8 else images.detach().float().cpu()
    symbols = torch.round(x * (levels - 1))
    if not (torch.allclose(symbols / (levels - 1), x, atol=1e-4) and symbols.min() >= 0 and symbols.max() <= levels - 1):
        kind = "binary (every pixel 0 or 1; 0 or 255 as uint8)" if levels == 2 else "8-bit (pixels k / 255 in [0, 1], or uint8)"
        raise VAEZooError(
            f"the model's likelihood codes {kind} images, and these are not: lossless compression would change them. "
            + ("Binarise them first (the way the model's data was), use a model with the logistic likelihood, "
               if levels == 2 else "Give 8-bit images, ") + "or compress with --lossy."
        )
    return symbols.to(torch.int32).reshape(images.shape[0], -1).numpy()


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` CPU threads inside the context. The networks' last bits can depend on the thread
    count (measured: an MLP's matrix products differ between 1 and 2 threads), so lossless files record the
    count they were coded at and are decoded at the same count, on any machine."""
    if count < 1:
        raise VAEZooError(f"threads must be >= 1, got {count}.")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compress(model: VAE, images: Tensor, *, lossy_mode: bool = False, quality: float = 1.0, latent_precision: int = 8,
             latent_scale: float = 2.0, chunk: int = 256, coding_threads: int = 1, checkpoint: str | None = None,
             names: list[str] | None = None) -> Compressed:
    """Compress images with a trained model.

    Args:
        model: The model (moved to the CPU, float32, eval mode).
        images: ``(N, C, H, W)``, float in [0, 1] or uint8.
        lossy_mode: Code the quantised posterior means (:mod:`vaezoo.compression.lossy`) instead of bits-back.
        quality: Lossy only: the quantisation step is the posterior's standard deviation divided by this.
        latent_precision: Lossless only: bits per latent dimension (``2**p`` buckets).
        latent_scale: Lossless only: the buckets have equal mass under N(0, latent_scale^2); 1 is the paper's grid.
        chunk: Lossless only: images per network pass once the stack has grown (the first chunks are smaller).
        coding_threads: Lossless only: CPU threads the networks run on, recorded in the file and used again to
            decompress (see :func:`threads`). 1, the default, decodes on any machine of the same CPU kind.
        checkpoint: The checkpoint's path, stored so that decompress finds the model by itself.
        names: One file name per image, stored so that decompress writes the same names.
    """
    model = prepare(model)
    started = time.perf_counter()
    header: dict[str, Any] = {
        "count": int(images.shape[0]) if images.ndim == 4 else 0, "shape": list(model.image_shape),
        "model": model_record(model, checkpoint), "machine": machine(), "names": names,
    }
    dims = math.prod(model.image_shape)
    if lossy_mode:
        check_codable(model)
        symbols = to_symbols(images, 256, model.image_shape)
        x = torch.from_numpy(symbols).float().div(255).reshape(-1, *model.image_shape)
        words, settings = lossy.encode(model, x, quality)
        header.update(mode="lossy", lossy=settings)
        clean_bits = 0
        # The distortion, from the file's own decoding: mean PSNR over images, in dB on [0, 1] pixels.
        back = lossy.decode(model, words, settings, len(x)).reshape(x.shape)
        mse = ((back - x) ** 2).flatten(1).mean(1).clamp(min=1e-10)
        distortion = {"psnr_db": (10 * torch.log10(1 / mse)).mean().item(), "mse": mse.mean().item()}
    else:
        codec = BitsBack(model, latent_precision, latent_scale)
        symbols = to_symbols(images, codec.pixels.levels, model.image_shape)
        with threads(coding_threads):
            words, chunks = codec.encode(symbols, chunk)
            fingerprint = probe(codec, chunks.sizes())
        clean_bits = 32 * len(codec.clean_words())
        header.update(mode="lossless", levels=codec.pixels.levels, latent_precision=latent_precision, latent_scale=latent_scale,
                      chunks=chunks.runs, clean_seed=CLEAN_SEED, threads=coding_threads, probe=fingerprint,
                      images_sha256=container.digest(symbols))
    data = container.pack(header, words)
    count, bits = len(symbols), 32 * len(words)
    pixels = count * model.image_shape[1] * model.image_shape[2]
    report = {
        "mode": header["mode"], "images": count, "dims_per_image": dims, "bits": bits, "clean_bits": clean_bits,
        "file_bytes": len(data), "bits_per_dim": bits / (count * dims),
        "steady_bits_per_dim": (bits - clean_bits) / (count * dims),
        "file_bits_per_dim": 8 * len(data) / (count * dims), "bits_per_pixel": bits / pixels,
        "seconds": time.perf_counter() - started,
    }
    if lossy_mode:
        report.update(distortion)
    return Compressed(data, report)


def check_model(header: dict[str, Any], model: VAE, name: str = "the file") -> None:
    """Refuse a model other than the file's (by its weights' SHA-256)."""
    wanted = header["model"]
    if weights_sha256(model) != wanted["weights_sha256"]:
        where = f" (it was compressed with {wanted['checkpoint']})" if wanted.get("checkpoint") else ""
        raise VAEZooError(
            f"{name} was compressed with another model: a {wanted['class_path'].rsplit('.', 1)[-1]} whose weights hash "
            f"to {wanted['weights_sha256'][:12]}...{where}, and this {class_path(model).rsplit('.', 1)[-1]}'s hash to "
            f"{weights_sha256(model)[:12]}.... Decompress with the checkpoint that compressed it (--ckpt_path)."
        )


def decompress(data: bytes, model: VAE, name: str = "the file") -> tuple[Tensor, dict[str, Any]]:
    """The images ``(N, C, H, W)`` in [0, 1] (float32) of a compressed file's bytes, and its header.

    Every check runs before an image is returned: the file's checksum, the model's identity, this
    machine's probe and (lossless) the decoded images' SHA-256.

    Raises:
        VAEZooError: naming the problem and the fix.
    """
    header, words = container.unpack(data, name)
    return decode(header, words, model, name), header


def decode(header: dict[str, Any], words: np.ndarray, model: VAE, name: str = "the file") -> Tensor:
    """The images of a file already read and checked by :func:`vaezoo.compression.container.unpack`
    (:func:`decompress` without the reading)."""
    model = prepare(model)
    check_model(header, model, name)
    count, shape = header["count"], tuple(header["shape"])
    if header["mode"] == "lossy":
        return lossy.decode(model, words, header["lossy"], count).reshape(count, *shape)
    codec = BitsBack(model, header["latent_precision"], header["latent_scale"])
    chunks = Chunks(header["chunks"])
    with threads(header["threads"]):  # the networks run as they ran when compressing
        if probe(codec, chunks.sizes()) != header["probe"]:
            then, now = header["machine"], machine()
            raise VAEZooError(
                f"this machine computes the model differently from the one that compressed {name}, so bits-back "
                f"decoding would not be exact (then: torch {then['torch']} on {then['platform']}, {then['processor']}; "
                f"now: torch {now['torch']} on {now['platform']}, {now['processor']}; both at {header['threads']} "
                "coding thread(s)). Nothing was decoded. Decompress on a machine like the compressing one: the same "
                "torch version and CPU kind."
            )
        symbols = codec.decode(words, chunks)
    if container.digest(symbols) != header["images_sha256"]:
        raise VAEZooError(f"the images decoded from {name} do not match its checksum: the model computed differently "
                          "from when it compressed. No images were written.")
    return codec.to_images(symbols)
