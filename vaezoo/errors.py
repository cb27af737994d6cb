"""The one exception type vaezoo raises for bad input.

The CLI prints a :class:`VAEZooError` as a single message (no traceback): every such message names
the problem and the fix, so it is written for the user, not for a debugger.
"""

from __future__ import annotations

import traceback
from types import FrameType


class VAEZooError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def error_reason(err: BaseException) -> str:
    """The last line of a library's error, which for download and file errors is the cause."""
    return _last_line(err) or type(err).__name__


def describe_error(err: BaseException) -> str:
    """``Type: last line`` of an error, for quoting it inside a VAEZooError message."""
    line = _last_line(err)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


# The code that calls the classes a config names: the frame after its last one is their __init__.
_BUILDERS = ("jsonargparse", "lightning.pytorch.cli")


def refused_arguments(err: BaseException) -> VAEZooError | None:
    """A ``ValueError`` raised by the ``__init__`` of a class that the config names, as a VAEZooError.

    A plugin checks its arguments the Python way, ``raise ValueError(...)``; jsonargparse wraps that
    into a 70-line traceback. ``err``'s traceback tells whether it is such a refusal: the frame right
    after the last one of jsonargparse (or LightningCLI's instantiator) is an ``__init__``, whose
    ``self`` names the class. Any other ValueError (a bug) gives None and keeps its traceback.
    """
    if not isinstance(err, ValueError):
        return None
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    builders = [i for i, frame in enumerate(frames) if _module(frame).startswith(_BUILDERS)]
    if not builders or builders[-1] + 1 == len(frames):
        return None
    called = frames[builders[-1] + 1]
    instance = called.f_locals.get("self")
    if called.f_code.co_name != "__init__" or instance is None:
        return None
    cls = type(instance)
    from vaezoo.registry import REGISTRIES  # here: vaezoo.registry imports this module

    what = f"{cls.__module__}.{cls.__qualname__}"
    entry = next(((r.kind, e) for r in REGISTRIES for e in r if e.cls is cls), None)
    if entry is not None:
        what = f"{entry[0]} {entry[1].name!r} ({what}, from {entry[1].source})"
    reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300] or type(err).__name__
    return VAEZooError(
        f"{what} refused its arguments: {reason.rstrip('.')}. Change that value in the config or on the command "
        "line (`vaezoo fit --help` lists every argument with its type and default)."
    )


def _module(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else ""
