"""The one exception type vaezoo raises for bad input.

The CLI prints a :class:`VAEZooError` as a single message (no traceback): every such message names
the problem and the fix, so it is written for the user, not for a debugger.
"""


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
