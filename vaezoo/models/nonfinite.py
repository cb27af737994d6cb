"""What a NaN or Inf training loss does: stop, naming the step and the term, or skip the batch.

Deciding whether a loss is finite means reading a number from the device. On the CPU that costs
nothing, so every step is checked before its update. On a GPU a read every step would stall the
queue of kernels, so ``stop`` records the first non-finite step on the device, and reads it only when
Lightning logs (every ``log_every_n_steps`` steps), before every checkpoint, and at each epoch's end.
A checkpoint is therefore never written after a non-finite step. ``skip`` must decide every step, so
it reads every step anywhere; it stops as ``stop`` does once more than ``max_skipped_fraction`` of an
epoch's batches were skipped, since a run whose every batch is non-finite trains nothing.

Nor is a checkpoint written while a metric that a ModelCheckpoint monitors is NaN or Inf
(:func:`check_monitored`): Lightning scores a NaN ``val/elbo`` as -inf and keeps the first such
checkpoint as the "best".

Every message says what is true of the run's checkpoints (:func:`checkpoints_note`): the newest one
and that it holds finite weights, or that there is none yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vaezoo.errors import VAEZooError

Mode = Literal["stop", "skip", "off"]
# What can go non-finite, in the order of blame: bad pixels are the data's fault, not the model's.
PARTS = ("pixels", "recon", "kl")  # then the latent's own parts (LatentSample.finite_parts), e.g. the posterior mean
_FIXES = ("Fixes: lower the learning rate (--model.optimizer.lr), clip gradients (--trainer.gradient_clip_val 1.0), "
          "train in 32-true precision, check the data")


def sync_is_free(device: torch.device) -> bool:
    """Whether reading a value of ``device`` costs no stall (the CPU)."""
    return device.type == "cpu"


# The most rows the deferred check keeps between two checks before it folds them (on the device, no sync).
_FOLD_EVERY = 1024


def _nonfinite(parts: dict[str, Tensor]) -> Tensor:
    """``(len(parts),)`` bool: which of the tensors hold a NaN or an Inf. No sync."""
    return torch.stack([~torch.isfinite(p).all() for p in parts.values()])


def _no_note() -> str:
    return ""


class NonFiniteGuard:
    """Watches the training loss for NaN and Inf.

    Args:
        mode: ``stop``, ``skip`` or ``off`` (see :class:`vaezoo.models.VAE`).
        max_skipped_fraction: With ``skip``, the largest fraction of an epoch's batches that may be
            skipped; one more stops the run as ``stop`` would.
    """

    def __init__(self, mode: Mode, max_skipped_fraction: float = 0.1) -> None:
        self.mode = mode
        self.max_skipped_fraction = max_skipped_fraction
        self.skipped = 0  # over the whole fit
        self.skipped_in_epoch = 0
        self.batches_in_epoch = 0  # seen so far
        self.epoch_size = math.inf  # the epoch's training batches, from start_epoch
        # Deferred (accelerators, stop): one row per step since the last fold, (1 + P,) fp64 on the device (the loss,
        # then each part's sum), with its (step, epoch) on the host; and, folded from them, the first non-finite step
        # (-1: none yet) and what went bad there.
        self._rows: list[Tensor] = []
        self._row_at: list[tuple[int, int]] = []
        self._first_step: Tensor | None = None
        self._first_parts: Tensor | None = None
        self._part_names: list[str] = []
        self._first_loss: Tensor | None = None
        self._first_epoch: Tensor | None = None

    def start_epoch(self, batches: float) -> None:
        """Start counting an epoch of ``batches`` training batches (``trainer.num_training_batches``)."""
        self.skipped_in_epoch = self.batches_in_epoch = 0
        self.epoch_size = batches

    def admit(self, step: int, epoch: int, loss: Tensor, parts: dict[str, Tensor],
              checkpoints: Callable[[], str] = _no_note) -> bool:
        """Whether to train on this batch; raises for ``stop`` when the check is immediate, and for
        ``skip`` past ``max_skipped_fraction``.

        Args:
            step: The global step of this batch.
            epoch: Its epoch.
            loss: The scalar loss.
            parts: What can go non-finite, by name, in the order of blame: :data:`PARTS` first (bad pixels
                are the data's fault, not the model's), then the latent's parts.
            checkpoints: Says what is true of the run's checkpoints (:func:`checkpoints_note`); called
                only to write an error.
        """
        if self.mode == "off":
            return True
        self.batches_in_epoch += 1
        if self.mode == "skip" or sync_is_free(loss.device):
            if math.isfinite(loss.item()):  # one read; torch.isfinite would be four kernels and then the read
                return True
            if self.mode == "stop":
                raise VAEZooError(_message(step, epoch, _blamed(parts), loss.item(), None, checkpoints()))
            self.skipped += 1
            self.skipped_in_epoch += 1
            if self.skipped_in_epoch > self.max_skipped_fraction * self.epoch_size:
                too_many = (f"{self.skipped_in_epoch} of the {self.batches_in_epoch} training batches of epoch {epoch} "
                            f"so far had a non-finite loss and were skipped, more than --model.max_skipped_fraction "
                            f"{self.max_skipped_fraction:g} of the epoch's {self.epoch_size} allows. The last one: ")
                raise VAEZooError(_message(step, epoch, _blamed(parts), loss.item(), None, checkpoints(),
                                           too_many=too_many))
            return False
        with torch.no_grad():
            # 2 + P ops and no sync: the check needs only whether each of these held a NaN or an Inf, and a sum in
            # fp64 is non-finite exactly when a value is (any number of fp32 values sums far below fp64's range).
            self._rows.append(torch.stack([loss.detach().double(), *(p.detach().sum(dtype=torch.float64)
                                                                     for p in parts.values())]))
        self._row_at.append((step, epoch))
        self._part_names = list(parts)
        if len(self._rows) >= _FOLD_EVERY:  # bounded memory between checks
            self._fold()
        return True

    def _fold(self) -> None:
        """Fold the rows since the last fold into the record of the first non-finite step, on the device."""
        if not self._rows:
            return
        with torch.no_grad():
            rows = torch.stack(self._rows)  # (n, 1 + P)
            bad = ~torch.isfinite(rows)
            at = torch.tensor(self._row_at, device=rows.device)  # (n, 2): step, epoch
            i = bad[:, 0].int().argmax()  # the window's first non-finite loss (0 where there is none)
            if self._first_step is None:
                self._first_step = torch.full((), -1, dtype=torch.long, device=rows.device)
                self._first_parts = torch.zeros_like(bad[0, 1:])
                self._first_loss = torch.zeros((), device=rows.device)
                self._first_epoch = torch.zeros((), dtype=torch.long, device=rows.device)
            new = (self._first_step < 0) & bad[i, 0]
            self._first_step = torch.where(new, at[i, 0], self._first_step)
            self._first_epoch = torch.where(new, at[i, 1], self._first_epoch)
            self._first_parts = torch.where(new, bad[i, 1:], self._first_parts)
            self._first_loss = torch.where(new, rows[i, 0].float(), self._first_loss)
        self._rows, self._row_at = [], []

    def check(self, step: int, reduce: Callable[..., Tensor] | None = None,
              checkpoints: Callable[[], str] = _no_note) -> None:
        """Raise if a deferred non-finite step was recorded. Reads the device once.

        Args:
            step: The current global step, for the message.
            reduce: Reduces a tensor over processes (``strategy.reduce``); with DDP every process then
                stops, not only the one whose batch went non-finite. Every process must call ``check``.
            checkpoints: Says what is true of the run's checkpoints; called only to write an error.
        """
        if self.mode != "stop":
            return
        self._fold()
        if self._first_step is None:
            return
        first = self._first_step
        if reduce is not None:
            first = reduce(first.clamp(min=-1).float() + 1, reduce_op="max").long() - 1
        first_step = int(first)
        if first_step < 0:
            return
        own = int(self._first_step) == first_step
        parts = [name for name, is_bad in zip(self._part_names, self._first_parts.tolist()) if is_bad] if own else None
        loss = self._first_loss.item() if own else float("nan")
        epoch = int(self._first_epoch) if own else None
        raise VAEZooError(_message(first_step, epoch, parts, loss, step, checkpoints()))


def _blamed(parts: dict[str, Tensor]) -> list[str]:
    """The names of the parts that hold a NaN or an Inf (reads the device)."""
    return [name for name, is_bad in zip(parts, _nonfinite(parts).tolist()) if is_bad]


def _message(step: int, epoch: int | None, bad: list[str] | None, loss: float, found_at: int | None, checkpoints: str,
             too_many: str = "") -> str:
    """``bad``: the names of the non-finite parts, or None when another process found them."""
    where = f"at step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
    note = f" {checkpoints}" if checkpoints else ""
    if bad and bad[0] == "pixels":
        return (
            f"{too_many}the training batch {where} holds NaN or Inf pixels, so the loss became {loss}.{note} Fix the "
            "dataset: images must be finite numbers in [0, 1] (vaezoo's own DataModules store uint8 and cannot "
            "produce this)."
        )
    names = bad or ["the loss"]
    culprit = f"{' and '.join(names)} went non-finite" if bad is not None else "on another process"
    if too_many:
        when = "Skipped batches make no update, so the weights are finite."
        last_fix = ", or allow more skipped batches with --model.max_skipped_fraction (1: never stop)."
    elif found_at is None:
        when = "Training stopped before this step's update."
        last_fix = ", or pass --model.nonfinite skip to skip such batches."
    else:
        when = (f"Found at step {found_at}: on a GPU the check runs when metrics are logged and before every "
                "checkpoint, and no checkpoint was written since.")
        last_fix = ", or pass --model.nonfinite skip to skip such batches."
    return f"{too_many}the training loss became {loss} {where}: {culprit}. {when}{note} {_FIXES}{last_fix}"


def checkpoints_note(trainer: Any) -> str:
    """One sentence on the checkpoints of ``trainer``'s checkpoint callbacks: the newest file in their
    folders, which was written before any non-finite step and so holds finite weights, or that there is none.

    Args:
        trainer: The Trainer (None outside one: no sentence).
    """
    if trainer is None:
        return ""
    callbacks = trainer.checkpoint_callbacks
    if not callbacks:
        resumed = f" This run resumed from {trainer.ckpt_path}." if trainer.ckpt_path else ""
        return f"Checkpointing is off (--trainer.enable_checkpointing false), so no checkpoint was written.{resumed}"
    folders = list(dict.fromkeys(Path(cb.dirpath) for cb in callbacks if getattr(cb, "dirpath", None)))
    # The folders, not the callbacks' recorded paths: a callback records a path before the file is
    # written, and forgets the previous one, so a save that this error stops would hide the one that exists.
    files = {p.resolve() for folder in folders for p in folder.glob("*.ckpt") if p.exists()}
    if files:
        newest = max(files, key=lambda p: p.stat().st_mtime)
        return (f"The newest checkpoint, {newest}, was written before this and holds finite weights (to resume from "
                "it, pass its path as --ckpt_path).")
    resumed = f" (this run resumed from {trainer.ckpt_path})" if trainer.ckpt_path else ""
    where = " or ".join(str(f) for f in folders) or "the run folder"
    return f"No checkpoint has been written in {where} yet{resumed}, so there is none of this run to go back to."


def check_monitored(trainer: Any) -> None:
    """Refuse to write a checkpoint while a metric that a ModelCheckpoint monitors is NaN or Inf.

    Lightning's ModelCheckpoint turns a NaN monitored value into -inf (for ``mode: max``) and still
    keeps the first such checkpoint as the best, so ``--ckpt_path best`` would pick a broken model.
    Call it on every process: the monitored metrics are synced, so every process stops alike.

    Raises:
        VAEZooError: naming the metric and its value.
    """
    metrics = trainer.callback_metrics
    for callback in trainer.checkpoint_callbacks:
        monitor = getattr(callback, "monitor", None)
        value = metrics.get(monitor) if monitor else None
        if value is None or bool(torch.isfinite(torch.as_tensor(value)).all()):
            continue
        value = float(value)
        raise VAEZooError(
            f"{monitor} became {value} at step {trainer.global_step} (epoch {trainer.current_epoch}), so training "
            f"stopped before the checkpoint that monitors it: Lightning would keep that model as the best, scored "
            f"{'-' if getattr(callback, 'mode', 'max') == 'max' else ''}inf. {checkpoints_note(trainer)} The model "
            f"gives non-finite values on the validation data. {_FIXES}, and check the validation images."
        )
