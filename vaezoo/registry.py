"""Name -> class registries for variants, nets, datasets, likelihoods, priors and loggers, fed by a decorator and by
plugins.

Built-in classes register themselves with a one-line decorator::

    @register_variant("beta")
    class BetaVAE(VAE): ...

Third-party packages add theirs with no edit to vaezoo, through entry points in their own
``pyproject.toml``::

    [project.entry-points."vaezoo.variants"]
    iwae = "vaezoo_iwae:IWAE"      # a class (registered under the entry-point name) or a module

The registered names work wherever jsonargparse takes a class: ``--model beta``,
``--model.net conv``, ``--data mnist``, ``--model.likelihood logistic``, ``--trainer.logger wandb`` and
``class_path: beta`` in config files.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from vaezoo.errors import VAEZooError

T = TypeVar("T", bound=type)

# Set while a plugin's entry point is being imported, so what it registers is credited to it.
_loading_source: ContextVar[str | None] = ContextVar("_loading_source", default=None)


@dataclass(frozen=True)
class Entry:
    """One registered class: its name, the class, a one-line description and where it came from."""

    name: str
    cls: type
    source: str

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


class Registry:
    """Names for one kind of class (``variant``, ``net``, ``dataset``, ``likelihood``, ``prior`` or ``logger``).

    Args:
        kind: What the names stand for, used in messages.
        group: The entry-point group plugins declare themselves in.
        builtins: The module whose import registers vaezoo's own classes of this kind.
    """

    def __init__(self, kind: str, group: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins
        self._registered: dict[str, Entry] = {}
        self._plugins_loaded = False
        self._builtins_loaded = False

    @property
    def _entries(self) -> dict[str, Entry]:
        # vaezoo's own classes register when their module is imported; `import vaezoo` imports
        # nothing heavy, so the first look-up imports them.
        if not self._builtins_loaded and self.builtins:
            self._builtins_loaded = True
            importlib.import_module(self.builtins)
        return self._registered

    def register(self, name: str) -> Callable[[T], T]:
        """A class decorator that registers the class under ``name``.

        Raises:
            VAEZooError: If ``name`` is already taken by another class.
        """

        def deco(cls: T) -> T:
            self.add(name, cls, _loading_source.get() or cls.__module__.split(".")[0])
            return cls

        return deco

    def add(self, name: str, cls: type, source: str) -> None:
        """Register ``cls`` (e.g. a class of another library) as ``name``, credited to ``source``.

        Raises:
            VAEZooError: If ``name`` is already taken by another class.
        """
        old = self._entries.get(name)  # vaezoo's own names first: a plugin cannot take them
        if old is not None:
            if old.class_path == f"{cls.__module__}.{cls.__qualname__}":
                return  # the same class imported again (a module reload): not a clash
            raise VAEZooError(
                f"{self.kind} name {name!r} is already registered by {old.class_path} (from {old.source}); "
                f"{cls.__module__}.{cls.__qualname__} cannot take it too. Register it under another name."
            )
        self._registered[name] = Entry(name, cls, source)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry | None:
        """The registration of ``name`` (class, class path, where it came from), or None."""
        return self._entries.get(name)

    def get(self, name: str) -> type:
        """The class registered as ``name``.

        Raises:
            VAEZooError: If no class has that name; the message lists the known ones.
        """
        if name not in self._entries:
            raise VAEZooError(self.unknown_message(name))
        return self._entries[name].cls

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}. "
            f"Run `vaezoo variants` to list them, or give a full class path such as 'my_pkg.module.MyClass'."
        )

    def load_plugins(self) -> None:
        """Import every entry point of ``self.group`` once.

        A plugin that fails to import (an exception, or ``sys.exit`` at import), names something
        other than a class or a module, or registers a name already taken is skipped with a warning
        naming it; everything else keeps working.
        """
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            source = f"plugin {dist} ({self.group}: {ep.name})"
            skipped = f"vaezoo {self.kind} plugin {ep.name!r} ({ep.value}, from {dist})"
            token = _loading_source.set(source)
            try:
                obj = ep.load()  # importing runs the plugin's own decorators, if it has any
                if inspect.isclass(obj):
                    if not any(e.cls is obj for e in self._entries.values()):
                        self.add(ep.name, obj, source)  # a bare class: register it under the entry-point name
                elif not inspect.ismodule(obj):  # a function or a constant: nothing vaezoo could build
                    warnings.warn(
                        f"{skipped} names an object of type {type(obj).__name__}, not a class or a module, and is "
                        "skipped. Point the entry point at a class ('module:MyClass') or at a module whose import "
                        "registers classes ('module').",
                        stacklevel=2,
                    )
            # SystemExit too: a plugin that calls sys.exit() at import would end `vaezoo` silently.
            except (Exception, SystemExit) as err:  # one broken plugin must not take the CLI down
                reason = f"{type(err).__name__}: {err}"
                if isinstance(err, SystemExit):
                    reason = f"it called sys.exit({err.code!r}) when imported"
                warnings.warn(f"{skipped} failed to load and is skipped: {reason}", stacklevel=2)
            finally:
                _loading_source.reset(token)


# kind, entry-point group, the vaezoo module that registers the built-in classes
VARIANTS = Registry("variant", "vaezoo.variants", "vaezoo.models")
NETS = Registry("net", "vaezoo.nets", "vaezoo.nets")
DATASETS = Registry("dataset", "vaezoo.datasets", "vaezoo.data")
LIKELIHOODS = Registry("likelihood", "vaezoo.likelihoods", "vaezoo.likelihoods")
PRIORS = Registry("prior", "vaezoo.priors", "vaezoo.priors")
LOGGERS = Registry("logger", "vaezoo.loggers", "vaezoo.tracking")
REGISTRIES = (VARIANTS, NETS, DATASETS, LIKELIHOODS, PRIORS, LOGGERS)

register_variant = VARIANTS.register
register_net = NETS.register
register_dataset = DATASETS.register
register_likelihood = LIKELIHOODS.register
register_prior = PRIORS.register


def load_plugins() -> None:
    """Discover the plugins of every registry (called when the CLI starts)."""
    for registry in REGISTRIES:
        registry.load_plugins()


def resolve_name(name: str, bases: tuple[type, ...]) -> str | None:
    """The class path registered as ``name`` for a class deriving from one of ``bases``, if any."""
    for registry in REGISTRIES:
        entry = registry.entry(name)
        if entry is not None and any(issubclass(entry.cls, b) for b in bases):
            return entry.class_path
    return None


def registered_name(class_path: str | None, registries: Iterable[Registry] = REGISTRIES) -> str | None:
    """The registry name of a class path (``vaezoo.models.beta.BetaVAE`` -> ``beta``), else its class name.

    A bare name (no dot) is returned as it is, as a hand-written config holds it.
    """
    if not class_path:
        return None
    if "." not in class_path:
        return class_path
    module, _, name = class_path.rpartition(".")
    try:  # importing the class also runs its module's @register decorators
        cls = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 (e.g. a plugin not installed here: show the class name)
        return name
    return next((e.name for registry in registries for e in registry if e.cls is cls), name)


def unknown_name_message(name: str, bases: tuple[type, ...]) -> str | None:
    """The "unknown name, known ones are ..." message for the registry serving ``bases``, if any."""
    for registry in REGISTRIES:
        if any(issubclass(e.cls, b) for e in registry for b in bases):
            return registry.unknown_message(name)
    return None


def format_table() -> str:
    """Every registered name with its description and source, one registry after another."""
    lines: list[str] = []
    for registry in REGISTRIES:
        entries = list(registry)
        lines.append(f"{registry.kind}s ({registry.group}):")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            lines.append(f"  {e.name:<{width}}  {e.description}  [{e.source}: {e.class_path}]")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
