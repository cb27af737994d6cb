"""What a NaN or Inf training loss does: stop, naming the step and the term, or skip the batch.

Deciding whether a loss is finite means reading a number from the device. On the CPU that costs
nothing, so every step is checked before its update. On a GPU a read every step would stall the
queue of kernels, so ``stop`` records the first non-finite step on the device, and reads it only when
Lightning logs (every ``log_every_n_steps`` steps), before every checkpoint, and at each epoch's end.
A checkpoint is therefore never written after a non-finite step. ``skip`` must decide every step, so
it reads every step anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from vaezoo.errors import VAEZooError

Mode = Literal["stop", "skip", "off"]
# What can go non-finite, in the order of blame: bad pixels are the data's fault, not the model's.
PARTS = ("pixels", "recon", "kl", "posterior mean", "posterior logvar")


def sync_is_free(device: torch.device) -> bool:
    """Whether reading a value of ``device`` costs no stall (the CPU)."""
    return device.type == "cpu"


def _nonfinite(parts: tuple[Tensor, ...]) -> Tensor:
    """``(len(parts),)`` bool: which of the tensors hold a NaN or an Inf. No sync."""
    return torch.stack([~torch.isfinite(p).all() for p in parts])


class NonFiniteGuard:
    """Watches the training loss for NaN and Inf.

    Args:
        mode: ``stop``, ``skip`` or ``off`` (see :class:`vaezoo.models.VAE`).
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.skipped = 0
        # Deferred (accelerators, stop): the first non-finite step (-1: none yet) and what went bad there.
        self._first_step: Tensor | None = None
        self._first_parts: Tensor | None = None
        self._first_loss: Tensor | None = None
        self._first_epoch: Tensor | None = None

    def admit(self, step: int, epoch: int, loss: Tensor, parts: tuple[Tensor, ...]) -> bool:
        """Whether to train on this batch; raises for ``stop`` when the check is immediate.

        Args:
            step: The global step of this batch.
            epoch: Its epoch.
            loss: The scalar loss.
            parts: The tensors of :data:`PARTS`, in that order.
        """
        if self.mode == "off":
            return True
        if self.mode == "skip" or sync_is_free(loss.device):
            if torch.isfinite(loss):
                return True
            if self.mode == "skip":
                self.skipped += 1
                return False
            raise VAEZooError(_message(step, epoch, _nonfinite(parts).tolist(), loss.item(), found_at=None))
        with torch.no_grad():
            bad = _nonfinite(parts)
            if self._first_step is None:
                self._first_step = torch.full((), -1, dtype=torch.long, device=loss.device)
                self._first_parts = torch.zeros_like(bad)
                self._first_loss = torch.zeros((), device=loss.device)
                self._first_epoch = torch.zeros((), dtype=torch.long, device=loss.device)
            new = (self._first_step < 0) & ~torch.isfinite(loss)
            self._first_step = torch.where(new, step, self._first_step)
            self._first_epoch = torch.where(new, epoch, self._first_epoch)
            self._first_parts = torch.where(new, bad, self._first_parts)
            self._first_loss = torch.where(new, loss.detach().float(), self._first_loss)
        return True

    def check(self, step: int, reduce: Callable[..., Tensor] | None = None) -> None:
        """Raise if a deferred non-finite step was recorded. Reads the device once.

        Args:
            step: The current global step, for the message.
            reduce: Reduces a tensor over processes (``strategy.reduce``); with DDP every process then
                stops, not only the one whose batch went non-finite. Every process must call ``check``.
        """
        if self.mode != "stop" or self._first_step is None:
            return
        first = self._first_step
        if reduce is not None:
            first = reduce(first.clamp(min=-1).float() + 1, reduce_op="max").long() - 1
        first_step = int(first)
        if first_step < 0:
            return
        own = int(self._first_step) == first_step
        parts = self._first_parts.tolist() if own else []
        loss = self._first_loss.item() if own else float("nan")
        epoch = int(self._first_epoch) if own else None
        raise VAEZooError(_message(first_step, epoch, parts, loss, found_at=step))


def _message(step: int, epoch: int | None, bad: list[bool], loss: float, found_at: int | None) -> str:
    where = f"at step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
    if bad and bad[0]:
        return (
            f"the training batch {where} holds NaN or Inf pixels, so the loss became {loss}. Fix the dataset: "
            "images must be finite numbers in [0, 1] (vaezoo's own DataModules store uint8 and cannot produce this)."
        )
    names = [name for name, is_bad in zip(PARTS, bad) if is_bad] or ["the loss"]
    culprit = f"{' and '.join(names)} went non-finite" if bad else "on another process"
    if found_at is None:
        when = "Training stopped before this step's update"
    else:
        when = (f"Found at step {found_at}: on a GPU the check runs when metrics are logged and before every "
                "checkpoint, and no checkpoint was written since")
    return (
        f"the training loss became {loss} {where}: {culprit}. {when}, so the last checkpoint holds finite "
        "weights. Fixes: lower the learning rate (--model.optimizer.lr), clip gradients "
        "(--trainer.gradient_clip_val 1.0), train in 32-true precision, check the data, or pass "
        "--model.nonfinite skip to skip such batches."
    )
