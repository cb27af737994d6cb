"""Compression with a trained VAE: lossless by bits-back coding (BB-ANS), lossy by quantised codes.

- :func:`compress` / :func:`decompress`: image tensors to a ``.vzc`` file's bytes and back;
- ``vaezoo compress`` / ``vaezoo decompress``: the same on image files, folders or a DataModule split;
- :func:`register_pixel_coder`: make a plugin likelihood compressible.

The parts: :mod:`~vaezoo.compression.latent` (the latent's buckets, the prior's code),
:mod:`~vaezoo.compression.pixels` (each likelihood's code), :mod:`~vaezoo.compression.bitsback`
(the lossless codec), :mod:`~vaezoo.compression.lossy`, :mod:`~vaezoo.compression.container` (the
file format) and :mod:`~vaezoo.compression.identity` (which model, which machine). See
docs/compression.md.
"""

from vaezoo.compression.api import Compressed, compress, decompress
from vaezoo.compression.pixels import PixelCoder, register_pixel_coder

__all__ = ["Compressed", "PixelCoder", "compress", "decompress", "register_pixel_coder"]
