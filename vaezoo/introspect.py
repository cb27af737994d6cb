"""Classes by dotted path and the keyword arguments they take, without importing torch or the model stack.

What the CLI's error messages and the registry need to read about a class: light enough that
``vaezoo --help``, a bad option's close match and ``vaezoo compare`` import nothing heavy for it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def import_object(path: str) -> Any:
    """The object at a dotted path, ``package.module.Name`` (nested names such as ``module.Outer.Inner`` too).

    Raises:
        ImportError: no module on the path imports.
        AttributeError: the module has no such name.
        ValueError: ``path`` has no dot.
    """
    if "." not in path:
        raise ValueError(f"{path!r} is not a dotted path such as package.module.Name")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module of {path!r} can be imported")


def init_parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, through ``**kwargs`` passed on to base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))
