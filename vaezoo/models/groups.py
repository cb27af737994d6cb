"""Several optimiser steps per Lightning training step (``--model.steps_per_call``): which k, and what refuses it.

Lightning pays about 1 ms of Python per training step whatever the model. With k optimiser steps per training
step (manual optimisation over k batches the DataModule hands over as one, as Keras' ``steps_per_execution``)
that cost is paid once per k steps. A group of k must not change what any setting means, so:

- every step interval (``log_every_n_steps``, a checkpoint's ``every_n_train_steps``, ``max_steps``) must be a
  multiple of k: logging and checkpoints then fall where they fall with k = 1;
- some settings have no exact meaning with groups (:func:`obstacles`): ``auto`` then takes k = 1, and an
  explicit k > 1 is refused with the reason.

``auto`` (the default) takes the largest k <= :data:`AUTO_MAX` that divides every interval and keeps a group
under :data:`GROUP_SECONDS` (one step's time estimated at the start, :func:`step_seconds`), and 1 where any
obstacle stands. Groups only pay where a step is short: on small nets (the MNIST MLPs: k = 25 with the
recipes' intervals of 50 and 200 steps), not on a conv net's 0.1-1 s CPU step, where a group would only
make the progress bar and Ctrl-C answer later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from vaezoo import compat
from vaezoo.errors import VAEZooError

if TYPE_CHECKING:
    from vaezoo.models.base import VAE

StepsPerCall = int | Literal["auto"]

# The largest k that ``auto`` takes. Lightning's ~1 ms per training step is then under 1% of even a 4 ms MLP
# step; more would only hold more batches at once (k x a batch's memory) for no measurable gain.
AUTO_MAX = 25
# The longest group ``auto`` makes, in seconds: the progress bar, Ctrl-C and SIGTERM answer at a group's end.
GROUP_SECONDS = 0.25

# Hooks that run once per training step. With groups they would run once per k optimiser steps.
STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad")

# Callbacks whose per-step hooks keep their meaning with groups: the progress bars (only a display: vaezoo's counts
# optimiser steps, Lightning's training steps), ModelCheckpoint (it reads global_step, which counts optimiser
# steps) and vaezoo's own.
GROUP_SAFE: tuple[type[Callback], ...] = (ProgressBar, ModelCheckpoint)
# The attribute by which a callback of one's own says that its per-step hooks handle groups (they read
# ``pl_module.group_size``, the k of this fit, or count with ``trainer.global_step``): ``auto`` then groups with it.
AWARE = "steps_per_call_aware"


def intervals(trainer: L.Trainer) -> dict[str, int]:
    """The step intervals that a group of k must not step over, by the option that sets each."""
    found = {"--trainer.log_every_n_steps": trainer.log_every_n_steps}
    for callback in trainer.checkpoint_callbacks:
        if every := compat.every_n_train_steps(callback):
            found[f"{type(callback).__name__}(every_n_train_steps)"] = every
    if trainer.max_steps > 0:
        found["--trainer.max_steps"] = trainer.max_steps
    return {name: n for name, n in found.items() if n}


def largest_fit(steps: dict[str, int], up_to: int) -> int:
    """The largest k <= ``up_to`` that divides every interval of ``steps`` (1 always does)."""
    return max(d for d in range(1, up_to + 1) if all(n % d == 0 for n in steps.values()))


def group_size(trainer: L.Trainer) -> int:
    """Optimiser steps per training step in ``trainer``'s fit (``VAE.group_size``; 1 for other modules)."""
    return int(getattr(trainer.lightning_module, "group_size", 1))


def epoch_batches(trainer: L.Trainer) -> int | float:
    """The training batches, that is optimiser steps, of an epoch. Lightning counts training steps, which are
    groups with k > 1; those run only whole epochs of vaezoo's loader (:func:`obstacles`), which counts batches."""
    if group_size(trainer) > 1:
        return trainer.train_dataloader.sampler.batches  # type: ignore[union-attr]
    return trainer.num_training_batches


def _group_safe(callback: Callback) -> bool:
    if isinstance(callback, GROUP_SAFE) or type(callback).__module__.split(".")[0] == "vaezoo":
        return True
    if getattr(callback, AWARE, False) is True:
        return True
    return not any(is_overridden(hook, callback, parent=Callback) for hook in STEP_HOOKS)


def obstacles(trainer: L.Trainer, module: VAE) -> list[str]:
    """The settings of this fit under which k > 1 would not train exactly as k = 1, each with its option."""
    from vaezoo.data.base import ImageDataModule  # the data package imports the models' registry
    from vaezoo.models.base import VAE

    found = []
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, ImageDataModule):
        found.append(f"the DataModule {type(datamodule).__name__} is not one of vaezoo's (they hand over k batches as one)")
    if trainer.accumulate_grad_batches != 1:
        found.append(f"--trainer.accumulate_grad_batches {trainer.accumulate_grad_batches} (gradient accumulation)")
    if trainer.gradient_clip_val and getattr(trainer.precision_plugin, "scaler", None) is not None:
        found.append(f"--trainer.gradient_clip_val with --trainer.precision {trainer.precision} (clipping needs the "
                     "loss scaler's unscaled gradients, which only automatic optimisation takes)")
    for name, value in (("limit_train_batches", trainer.limit_train_batches),
                        ("val_check_interval", trainer.val_check_interval)):
        if value != 1.0:  # batch counts would count groups, and fractions of groups round to other steps
            found.append(f"--trainer.{name} {value} (it would count groups of k batches, not batches)")
    if any(config.reduce_on_plateau for config in trainer.lr_scheduler_configs):
        found.append("a ReduceLROnPlateau scheduler (it steps on a monitored metric, which groups do not log per step)")
    if len(trainer.optimizers) != 1:
        found.append(f"{len(trainer.optimizers)} optimisers (groups step exactly one)")
    for hook in ("training_step", "optimizer_step", "optimizer_zero_grad", *STEP_HOOKS):
        if getattr(type(module), hook) is not getattr(VAE, hook):
            found.append(f"{type(module).__name__}.{hook}, which the variant overrides (it would run once per group)")
    return found


def unsafe_callbacks(trainer: L.Trainer) -> list[str]:
    """Callbacks whose per-step hooks would run once per group of k steps instead of once per step."""
    return [type(c).__name__ for c in trainer.callbacks if not _group_safe(c)]  # type: ignore[attr-defined]


# Where a checkpoint records the k it was saved with.
CHECKPOINT_KEY = "vaezoo_steps_per_call"


def resumed_mid_epoch(k: int, saved: tuple[int, int, int]) -> str:
    """The error for resuming with k a checkpoint saved inside an epoch with another k."""
    g, epoch, steps = saved
    return (f"the checkpoint was saved {steps} training steps into epoch {epoch} with steps_per_call {g} (groups of {g} "
            f"batches), and steps_per_call {k} would count that epoch's steps differently. Resume it with "
            f"--model.steps_per_call {g} (auto does), or from a checkpoint saved at an epoch's end, where any k works.")


def step_seconds(module: VAE, batch_size: int, trainer: L.Trainer) -> float:
    """About how long one training step of ``module`` takes, in seconds: 4 x its forward pass on one batch of random
    images (the backward pass costs about two forwards, the optimiser step about one on small nets), the best of 3
    timings, without gradients, in eval mode (no BatchNorm statistics move) and with the random state restored,
    so training is as if it never ran."""
    device = module.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    training, best = module.training, float("inf")
    module.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                trainer.precision_plugin.forward_context():
            x = torch.rand(batch_size, *module.image_shape, device=device)
            if module.dtype in (torch.float16, torch.bfloat16, torch.float64):  # a true-precision run's inputs
                x = x.to(module.dtype)
            for _ in range(3):  # the first also creates the kernels
                sync()
                start = time.perf_counter()
                module.decode(module.latent(module.net.encoder(x), 1).point)  # predict's path, for any variant
                sync()
                best = min(best, time.perf_counter() - start)
    finally:
        module.train(training)
    return 4 * best


def choose(request: StepsPerCall, trainer: L.Trainer, module: VAE, saved: tuple[int, int, int] | None = None,
           note: Callable[[str], None] = lambda line: None) -> int:
    """The k for this fit: ``request`` checked, or ``auto`` resolved (see the module's docstring).

    Args:
        saved: ``(k, epoch, steps)`` of a checkpoint being resumed that was saved inside an epoch: k must stay.
        note: Takes the line that says what ``auto`` took and why.
    """
    steps = intervals(trainer)
    if saved is not None:
        if request not in ("auto", saved[0]):
            raise VAEZooError(resumed_mid_epoch(request, saved))  # type: ignore[arg-type]
        request = saved[0]
    if request == "auto":
        k, line = auto(trainer, module, steps)
        note(line)
        return k
    k = request
    if k == 1:
        return 1
    if found := obstacles(trainer, module):
        raise VAEZooError(f"steps_per_call {k} cannot keep the meaning of {found[0]}. Use --model.steps_per_call 1 "
                          "(or auto, which takes 1 here), or drop that setting.")
    if bad := {name: n for name, n in steps.items() if n % k}:
        name, n = next(iter(bad.items()))
        fits = largest_fit(steps, k)
        raise VAEZooError(f"steps_per_call {k} does not divide {name} = {n}: a group of {k} optimiser steps would "
                          f"step over it. Use --model.steps_per_call {fits} (divides every interval), or auto, or "
                          "change the interval.")
    return k


# What Lightning's manual_backward and LightningOptimizer.step call besides backward() and step().
WRAPPER_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def direct_steps(trainer: L.Trainer, module: VAE) -> bool:
    """Whether a group may call ``loss.backward()`` and the torch optimiser's ``step()`` itself: true when Lightning's
    wrappers around them would add nothing but their cost (about 0.3 ms a step): no hook of theirs overridden by a
    callback or the variant, full or bf16-mixed precision (no loss scaler), one device, no profiler. Called with
    k > 1 only, so :func:`obstacles` has already ruled out a variant's own hooks (:data:`STEP_HOOKS` holds
    :data:`WRAPPER_HOOKS`); its ``backward`` hook is left to check."""
    from vaezoo.models.base import VAE

    precision = trainer.precision_plugin
    plain = type(precision) is Precision or (type(precision) is MixedPrecision and precision.scaler is None)
    hooks = any(is_overridden(hook, callback, parent=Callback) for callback in trainer.callbacks  # type: ignore[attr-defined]
                for hook in WRAPPER_HOOKS)
    return (plain and type(trainer.strategy) is SingleDeviceStrategy and isinstance(trainer.profiler, PassThroughProfiler)
            and not hooks and type(module).backward is VAE.backward)


def auto(trainer: L.Trainer, module: VAE, steps: dict[str, int]) -> tuple[int, str]:
    """``auto``'s k for this fit, and a line for the log that says why."""
    if why := obstacles(trainer, module) + [f"callback {name}, which has per-step hooks" for name in unsafe_callbacks(trainer)]:
        return 1, f"steps_per_call auto: 1 optimiser step per training step, because of {why[0]}."
    longest, timing = AUTO_MAX, ""
    if not module.compile_net:  # a compiled net's first pass compiles: no estimate, and compiled steps are short
        seconds = step_seconds(module, trainer.datamodule.hparams.batch_size, trainer)  # type: ignore[attr-defined]
        seconds = float(trainer.strategy.broadcast(seconds))  # rank 0's: every process must take the same k
        longest = max(1, min(AUTO_MAX, int(GROUP_SECONDS / max(seconds, 1e-9))))
        timing = f"a step takes about {seconds * 1e3:.3g} ms, a group at most {GROUP_SECONDS:g} s"
    k = largest_fit(steps, longest)
    fits = f"the largest that divides {', '.join(f'{n} = {v}' for n, v in steps.items())}"
    return k, f"steps_per_call auto: {k} optimiser step(s) per training step ({'; '.join(filter(None, [timing, fits]))})."


def check_request(request: Any) -> StepsPerCall:
    """``request`` as a ``steps_per_call`` setting, or a VAEZooError naming the accepted values."""
    if request == "auto" or (isinstance(request, int) and not isinstance(request, bool) and request >= 1):
        return request
    raise VAEZooError(f"steps_per_call must be auto or a whole number of optimiser steps >= 1 per training step, got "
                      f"{request!r}; e.g. --model.steps_per_call auto.")
