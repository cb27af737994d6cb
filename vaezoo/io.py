"""File writing that a crash cannot leave half done."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Write a file so that readers see the old file or the whole new one, never a part.

    ``write`` fills a temporary file in the same folder (``.<name>.<random>.tmp``), which is then
    renamed over ``path`` with ``os.replace`` (atomic on one filesystem). On any error the temporary
    file is removed and the error re-raised; an existing ``path`` is left as it was.

    Args:
        path: The file to (over)write.
        write: Writes the contents to the open binary file it is given.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 keeps the usual umask-based permissions (tempfile would give 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
