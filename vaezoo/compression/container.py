"""The ``.vzc`` file: a versioned header, the coded words, and a checksum of the whole file.

Layout (little-endian)::

    b"VAEZOO-C"          8 bytes, the magic
    version              uint16 (this module's FORMAT_VERSION)
    header length        uint32
    header               zlib-compressed JSON: image shape and count, the mode and its settings,
                         the model (class path, weights SHA-256, settings, checkpoint path),
                         the machine probe, and the decoded images' SHA-256
    payload length       uint64, in bytes
    payload              the coder's uint32 words
    SHA-256              32 bytes, of everything above: a flipped byte anywhere is caught

:func:`read` checks the magic, the version, the lengths (a cut-off file) and the checksum before
anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from vaezoo.errors import VAEZooError
from vaezoo.io import atomic_write

MAGIC = b"VAEZOO-C"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<HI")  # version, header length
_PAYLOAD = struct.Struct("<Q")
_DIGEST = 32


def digest(symbols: np.ndarray) -> str:
    """SHA-256 of integer symbols (pixels, codes) as little-endian int32: what the header's checksums hold."""
    return hashlib.sha256(np.ascontiguousarray(symbols, dtype="<i4").tobytes()).hexdigest()


def pack(header: dict[str, Any], words: np.ndarray) -> bytes:
    """The file's bytes for ``header`` and the coded ``words`` (uint32)."""
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    payload = words.astype("<u4").tobytes()
    body = MAGIC + _FIXED.pack(FORMAT_VERSION, len(head)) + head + _PAYLOAD.pack(len(payload)) + payload
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, name: str = "the file") -> tuple[dict[str, Any], np.ndarray]:
    """The header and words of a file's bytes, after every check.

    Raises:
        VAEZooError: not a vaezoo file, a newer format, cut off, or damaged.
    """
    if not data.startswith(MAGIC):
        raise VAEZooError(f"{name} is not a vaezoo compressed file (it does not start with {MAGIC!r}); "
                          "give a file written by vaezoo compress.")
    fixed_end = len(MAGIC) + _FIXED.size
    if len(data) < fixed_end:
        raise _truncated(name, len(data), fixed_end)
    version, head_len = _FIXED.unpack_from(data, len(MAGIC))
    if version > FORMAT_VERSION:
        raise VAEZooError(f"{name} is in format version {version}, newer than this vaezoo reads ({FORMAT_VERSION}); "
                          "upgrade vaezoo (pip install -U vaezoo) to decompress it.")
    payload_at = fixed_end + head_len + _PAYLOAD.size
    if len(data) < payload_at:
        raise _truncated(name, len(data), payload_at + _DIGEST)
    (payload_len,) = _PAYLOAD.unpack_from(data, payload_at - _PAYLOAD.size)
    expected = payload_at + payload_len + _DIGEST
    if len(data) != expected:
        if len(data) < expected:
            raise _truncated(name, len(data), expected)
        raise VAEZooError(f"{name} has {len(data) - expected} bytes after its end ({expected} bytes): it was appended "
                          "to or is not one vaezoo file. Use the file vaezoo compress wrote.")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise VAEZooError(f"{name} is damaged: its SHA-256 checksum does not match its contents (a changed byte: a "
                          "faulty disk, transfer or edit). Nothing was decoded; use an intact copy.")
    try:
        header = json.loads(zlib.decompress(data[fixed_end:fixed_end + head_len]))
    except (zlib.error, ValueError) as err:  # the checksum matched, so the writer itself was broken
        raise VAEZooError(f"{name}'s header cannot be read ({err}); the file was not written by vaezoo compress.") from None
    words = np.frombuffer(data, dtype="<u4", count=payload_len // 4, offset=payload_at).astype(np.uint32)
    return header, words


def _truncated(name: str, size: int, expected: int) -> VAEZooError:
    return VAEZooError(f"{name} is cut off: {size} bytes of the {expected} or more it needs (a copy or download that "
                       "did not finish). Nothing was decoded; copy it again.")


def write(path: str | os.PathLike[str], data: bytes, force: bool = False) -> None:
    """Write a file atomically; refuse to replace an existing one unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise VAEZooError(f"{path} exists; vaezoo compress does not overwrite files. Choose another -o, or pass --force.")
    if not path.parent.is_dir():
        raise VAEZooError(f"the folder of {path} does not exist; create it first (mkdir -p {path.parent}).")
    atomic_write(path, lambda f: f.write(data))


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`unpack` of a file."""
    path = Path(path)
    if not path.is_file():
        raise VAEZooError(f"{path} does not exist or is not a file; give a .vzc file written by vaezoo compress.")
    return unpack(path.read_bytes(), str(path))

