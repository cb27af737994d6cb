"""Hyperparameters as plain data, so that every checkpoint loads with ``weights_only=True``.

``vaezoo fit`` stores a model's hyperparameters as its config: ``{"_class_path": ..., "net":
{"class_path": ..., "init_args": {...}}, ...}`` plus the instantiator that rebuilds the model from
them (LightningCLI does this). A model built in Python would instead store the objects it was
given (``net=MLPNet``, ``optimizer=torch.optim.Adam``), which unpickling can only restore by
importing and calling code, so ``weights_only`` loading refuses them. :func:`as_config` turns such
objects into the CLI's form, and ``VAE.load_from_checkpoint`` rebuilds the same model from it.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

from torch import nn

from vaezoo import compat
from vaezoo.introspect import init_parameters

# Lightning's own instantiator for LightningCLI checkpoints: parses the config with jsonargparse.
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_PLAIN = (str, int, float, bool, type(None))


class Unrepresentable(ValueError):
    """A value with no config form: a lambda, a local class, an object without its init arguments."""


def class_path(cls: type) -> str:
    """``module.QualName`` of a class that can be imported by that path."""
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise Unrepresentable(f"{cls.__qualname__} is not importable (defined in a function or in __main__)")
    return f"{cls.__module__}.{cls.__qualname__}"


def as_config(value: Any) -> Any:
    """``value`` as config data: plain values as they are, classes, partials and modules as class paths.

    Raises:
        Unrepresentable: for a value that has no such form.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(as_config(v) for v in value)
    if isinstance(value, dict):
        return {k: as_config(v) for k, v in value.items()}
    if inspect.isclass(value):
        return {"class_path": class_path(value)}
    if isinstance(value, functools.partial):
        # partial(SomeClass, **kw), or jsonargparse's own form of a callable type such as
        # OptimizerCallable: partial(<helper>, <instantiator>, SomeClass, **kw).
        cls = value.func if not value.args else value.args[-1]
        helpers_only = all(callable(a) and not inspect.isclass(a) for a in (value.func, *value.args[:-1]))
        if inspect.isclass(cls) and (cls is value.func or helpers_only):
            return {"class_path": class_path(cls), "init_args": as_config(value.keywords)}
    if (lazy := compat.lazy_instance_parts(value)) is not None:  # jsonargparse's lazy_instance (the VAE's defaults)
        return {"class_path": class_path(lazy[0]), "init_args": as_config(lazy[1])}
    if isinstance(value, nn.Module):
        # A module whose init arguments are kept as attributes of the same name (the likelihoods).
        names = init_parameters(type(value))
        missing = [n for n in names if not hasattr(value, n)]
        if missing:
            raise Unrepresentable(f"{type(value).__name__} does not keep its init argument(s) {missing}")
        return {"class_path": class_path(type(value)), "init_args": {n: as_config(getattr(value, n)) for n in names}}
    raise Unrepresentable(f"{type(value).__name__} {value!r} has no config form")


def portable(hparams: dict[str, Any], cls: type) -> dict[str, Any]:
    """The hyperparameters of a model of class ``cls`` built in Python, in the CLI's form.

    A value with no config form is left out, with a warning: the checkpoint still loads, and
    ``load_from_checkpoint`` takes that argument again as a keyword.
    """
    config: dict[str, Any] = {"_class_path": class_path(cls)}
    for key, value in hparams.items():
        try:
            config[key] = as_config(value)
        except Unrepresentable as err:
            warnings.warn(
                f"{cls.__name__}({key}=...) is not saved with the checkpoint: {err}. The checkpoint still loads; "
                f"pass it again to {cls.__name__}.load_from_checkpoint(path, {key}=...), or give a class or "
                "functools.partial of a class instead.",
                stacklevel=4,
            )
    config["_instantiator"] = INSTANTIATOR
    return config
