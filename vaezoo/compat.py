"""Every place where vaezoo relies on what jsonargparse or Lightning do not publish, with why.

Checked against jsonargparse 4.53.0 and lightning 2.6.6. ``tests/test_compat.py`` runs each against the
installed versions and fails when one changes underneath, naming this module.

1. Registry names as class names (``--model beta``, ``net: conv``). jsonargparse resolves a bare class
   name by the ``__name__`` of the imported subclasses of the expected type, in the private
   ``jsonargparse._typehints.resolve_class_path_by_name``, and has no public hook for aliases.
2. "Save now" and "both triggers" for a ModelCheckpoint. Lightning saves only from its hooks; the
   latest state on SIGTERM needs the three private methods its ``on_train_batch_end`` calls, and
   saving on steps and epochs at once needs the private ``_every_n_epochs`` set after its argument check.
3. The text of jsonargparse's parse errors. They are strings only (no error type or field names the
   offending option), so the short messages of :mod:`vaezoo.parser` read them with these patterns.
4. What a ``jsonargparse.lazy_instance`` was made of. The VAE's defaults (``likelihood``, ``prior``) are
   lazy instances, and a model built in Python stores its hyperparameters as class paths
   (:mod:`vaezoo.models.hparams`); jsonargparse keeps the class and arguments in private attributes only.
5. Not a private name but an unpublished contract: :class:`vaezoo.data.loader.TensorBatchLoader` is not a
   torch DataLoader, and Lightning's shuffle check reads ``batch_sampler`` on anything that has a ``sampler``,
   so the loader declares ``batch_sampler = None``. Every test that fits through it fails if that changes.
6. The logging step under ``steps_per_call > 1``. Lightning writes logged values at the step
   ``fit_loop.epoch_loop._batches_that_stepped`` (private), which counts training steps, not optimiser
   steps; with several per training step, every row would land at another step than with one.
   :func:`logging_step` reads it and :func:`count_batches` advances it; neither has a public equivalent.
7. The loops' progress in a checkpoint, when ``steps_per_call`` changes between a run and its resumption.
   ``global_step`` is read from the automatic optimisation's step count or the manual one's, whichever the
   module uses, and a checkpoint holds both: :func:`sync_step_counts` makes them agree, so that a run saved
   with k = 1 resumes at its step with k > 1 and back; :func:`sync_live_step_counts` does the same in a
   trainer, so that ``global_step`` stays when a module goes back to automatic optimisation after a fit.
   :func:`mid_epoch` reads whether it was saved inside an epoch (its batch progress counts training steps,
   groups with k > 1, so k must not change there).
8. Counting an optimiser step taken past Lightning's wrappers. Under manual optimisation ``global_step`` counts
   ``LightningOptimizer.step`` calls through the private ``_on_before_step`` / ``_on_after_step`` the manual
   loop sets on it. With k > 1 and nothing that Lightning's wrappers would call (no hook overridden, plain
   precision, one device, no profiler), vaezoo steps the torch optimiser itself, about 0.3 ms a step faster,
   and :func:`counted_step` keeps the count.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from jsonargparse import _typehints
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

# ----- 1. registry names ----------------------------------------------------------------------------


def use_registry_names(resolve_name: Callable[[str, tuple[type, ...]], str | None],
                       unknown_name_message: Callable[[str, tuple[type, ...]], str | None]) -> None:
    """Let jsonargparse take registry names wherever it takes a class name (idempotent).

    The wrapper answers only for bare names that ``resolve_name`` knows for the expected base classes, and
    turns an unknown bare name into ``unknown_name_message``'s list of the known ones.
    """
    original: Callable[..., str] = _typehints.resolve_class_path_by_name
    if getattr(original, "_vaezoo", False):
        return

    def resolve(cls: type | tuple[type, ...], name: str) -> str:
        if not isinstance(name, str) or "." in name:
            return original(cls, name)
        bases = tuple(t for t in (cls if isinstance(cls, tuple) else (cls,)) if inspect.isclass(t))
        path = resolve_name(name, bases) or original(cls, name)
        if "." not in path and (message := unknown_name_message(name, bases)):
            raise ValueError(message)
        return path

    resolve._vaezoo = True  # type: ignore[attr-defined]
    _typehints.resolve_class_path_by_name = resolve


# ----- 2. ModelCheckpoint ---------------------------------------------------------------------------


def save_on_epochs_too(callback: ModelCheckpoint) -> None:
    """Make a step-triggered ModelCheckpoint save at every epoch's end as well: its ``__init__`` refuses both
    triggers, but its hooks honour both."""
    callback._every_n_epochs = 1


def save_checkpoint_now(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Save as ``on_train_batch_end`` would when a trigger fires: the top-k file, then ``last``. Nothing when
    this step is already saved. Call it on every process (it holds collectives)."""
    if callback._last_global_step_saved != trainer.global_step or not callback.best_model_path:
        candidates = callback._monitor_candidates(trainer)
        callback._save_topk_checkpoint(trainer, candidates)
        callback._save_last_checkpoint(trainer, candidates)


# ----- 3. jsonargparse's error text -----------------------------------------------------------------

# Lines of its messages that describe its attempts (the alternatives of a Union it tried), not the problem.
NOISE = re.compile(
    r"^\s*(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:$|Given value type: |Given value: "
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid)"
)
CLASS_PATH = re.compile(r"class_path[ =]'([\w.]+)'")  # the class whose option was refused
OPTION = re.compile(r"Option '([\w.]+)' is not accepted")  # an init argument the class does not take
SUBCOMMAND_OPTION = re.compile(r"does not accept option '([\w.]+)'")  # a config key the subcommand lacks
SECTION_CONFIG = re.compile(r"Parser key \"([\w.]+)\":\s*Unable to load config '(.*?)'\n")  # --trainer VALUE
REQUIRED = re.compile(r"the following arguments are required: ([\w., ]+)$")  # argparse's own wording
UNRECOGNIZED = re.compile(r"unrecognized arguments: (--[\w.]+)")  # argparse's own wording
PARSER_KEY = re.compile(r'Parser key "([\w.]+)": ')
PROBLEM_CLASS = re.compile(r"Problem with given class_path '([\w.]+)': ")


# ----- 4. lazy_instance -----------------------------------------------------------------------------


def lazy_instance_parts(value: object) -> tuple[type, dict[str, Any]] | None:
    """The class and keyword arguments of a ``jsonargparse.lazy_instance``; None for anything else."""
    if not hasattr(value, "_lazy_class_type"):
        return None
    return value._lazy_class_type, dict(value._lazy_kwargs)  # type: ignore[attr-defined]


# ----- 6. the logging step ----------------------------------------------------------------------------


def logging_step(trainer: Trainer) -> int:
    """The step Lightning writes logged values at: the training batches done (skipped ones too), over epochs."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def count_batches(trainer: Trainer, extra: int) -> None:
    """Count ``extra`` more training batches for logging: a training step that took ``1 + extra`` batches, after
    which Lightning adds its one, leaves the logging step where one batch per training step leaves it."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += extra


def every_n_train_steps(callback: Any) -> int:
    """A ModelCheckpoint's ``every_n_train_steps`` (0: none), which it keeps in a private attribute only."""
    return int(getattr(callback, "_every_n_train_steps", 0) or 0)


# ----- 7. the loops' progress in a checkpoint -----------------------------------------------------------

_AUTOMATIC = "epoch_loop.automatic_optimization.optim_progress"
_MANUAL = "epoch_loop.manual_optimization.optim_step_progress"


def sync_step_counts(checkpoint: dict[str, Any]) -> None:
    """Set the automatic and the manual optimiser step counts of ``checkpoint`` (in place) to the larger of the
    two, so ``global_step`` resumes right with either kind of optimisation. Counts only grow, and a run uses one
    kind at a time, so the larger is the run's."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    if _AUTOMATIC in fit_loop and _MANUAL in fit_loop:
        _sync(fit_loop[_AUTOMATIC]["optimizer"]["step"], fit_loop[_MANUAL])


def sync_live_step_counts(trainer: Trainer) -> None:
    """The same as :func:`sync_step_counts`, in ``trainer``'s fit loop (through the progress objects' own
    ``state_dict`` / ``load_state_dict``, the form the checkpoint holds)."""
    loop = trainer.fit_loop.epoch_loop
    automatic, manual = loop.automatic_optimization.optim_progress.optimizer.step, loop.manual_optimization.optim_step_progress
    states = automatic.state_dict(), manual.state_dict()
    _sync(*states)
    automatic.load_state_dict(states[0])
    manual.load_state_dict(states[1])


def _sync(automatic: dict[str, Any], manual: dict[str, Any]) -> None:
    """Both step-progress states (``{"total": {"ready", "completed"}, "current": ...}``) to the larger count."""
    for part in ("total", "current"):
        for field in ("ready", "completed"):
            automatic[part][field] = manual[part][field] = max(automatic[part][field], manual[part][field])


def mid_epoch(checkpoint: dict[str, Any]) -> tuple[int, int] | None:
    """``(epoch, training steps done in it)`` when ``checkpoint`` was saved inside an epoch; None at its end."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = fit_loop.get("epoch_loop.batch_progress")
    # A checkpoint saved from on_train_batch_end: its step is processed, not yet completed.
    if not progress or progress.get("is_last_batch") or not progress["current"]["processed"]:
        return None
    return int(checkpoint.get("epoch", 0)), int(progress["current"]["processed"])


# ----- 8. counting an optimiser step taken past Lightning's wrappers ---------------------------------------


def counted_step(optimizer: Any) -> None:
    """Step the torch optimiser inside a ``LightningOptimizer`` and count the step as its ``step()`` does (without
    the precision plugin's closure and hooks, which the caller has ruled out)."""
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()
