"""The one exception type vaezoo raises for bad input.

The CLI prints a :class:`VAEZooError` as a single message (no traceback): every such message names
the problem and the fix, so it is written for the user, not for a debugger.
"""


class VAEZooError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""
