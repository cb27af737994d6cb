"""Exact epoch means of the training terms, summed on the device with no host sync.

``self.log`` of every term at every step costs ~0.5 ms per call on a CPU, because Lightning moves
and checks each value. On a small net that is most of a step. Instead, the terms of each batch are
added to one fp64 tensor ``(T,)`` on the device, in one stack and one reduction whatever T (on a GPU,
where a step's time is mostly the launching of small kernels, the count matters), and the images are
counted on the host. The sums and the count ``(T + 1,)`` meet Lightning once per epoch, all-reduced over
the processes. They travel in checkpoints, so the
mean of an epoch resumed after a crash still covers the batches before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

CHECKPOINT_KEY = "vaezoo_train_sums"


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no fp64


class RunningSums:
    """Per-image sums of named terms over one epoch.

    Args:
        names: The terms, in a fixed order (``loss``, ``elbo``, ...).
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._sums: Tensor | None = None  # (T,): the term sums
        self._images = 0  # images added to them (on the host: the batch size is known there)
        self._epoch = -1

    def add(self, terms: dict[str, Tensor], batch_size: int, epoch: int) -> None:
        """Add one batch: per-image terms ``(B,)`` are summed, scalars (a batch mean) count once per image."""
        with torch.no_grad():
            dtype = _dtype(terms[self.names[0]].device)
            rows = [terms[n] if terms[n].dim() else terms[n].expand(batch_size) for n in self.names]
            if all(row.shape == (batch_size,) for row in rows):  # every term per image: one stack, one reduction
                batch = torch.stack(rows).sum(1, dtype=dtype)  # (T,)
            else:
                batch = torch.stack([row.sum(dtype=dtype) for row in rows])
            sums = self._on(batch.device, epoch)
            sums += batch
        self._images += batch_size

    def _on(self, device: torch.device, epoch: int) -> Tensor:
        if self._sums is None:
            self._sums = torch.zeros(len(self.names), dtype=_dtype(device), device=device)
            self._images = 0
            self._epoch = epoch
        elif self._sums.device != device:  # restored from a checkpoint, on the CPU
            self._sums = self._sums.to(device)
        return self._sums

    def start_epoch(self, epoch: int) -> None:
        """Forget sums restored from a checkpoint of an epoch that was already finished."""
        if self._epoch != epoch:
            self._sums = None

    def total(self, device: torch.device, epoch: int, reduce: Callable[..., Tensor] | None = None) -> Tensor:
        """The sums and the image count ``(T + 1,)`` of every process (``reduce``: ``strategy.reduce``, a collective)."""
        sums = self._on(device, epoch)
        sums = torch.cat([sums, sums.new_full((1,), self._images)])
        return reduce(sums, reduce_op="sum") if reduce is not None else sums

    def means(self, device: torch.device, epoch: int, reduce: Callable[..., Tensor] | None = None) -> dict[str, Tensor]:
        """The epoch's means over every image and process, then a fresh start; empty if no image."""
        sums = self.total(device, epoch, reduce)
        self._sums = None
        if sums[-1] <= 0:
            return {}
        return dict(zip(self.names, (sums[:-1] / sums[-1]).float()))

    def state(self, device: torch.device, epoch: int, reduce: Callable[..., Tensor] | None = None) -> dict[str, Any]:
        """What a checkpoint keeps: the sums of every process so far in ``epoch``."""
        return {"epoch": epoch, "sums": self.total(device, epoch, reduce).cpu()}

    def restore(self, state: dict[str, Any], rank: int) -> None:
        """Resume from :meth:`state`: rank 0 carries the sums, the others start at zero, so the
        all-reduced total is exact for any number of processes."""
        sums = state["sums"]
        if sums.numel() != len(self.names) + 1:
            return  # another model's terms
        self._sums = sums[:-1].clone() if rank == 0 else torch.zeros_like(sums[:-1])
        self._images = int(sums[-1]) if rank == 0 else 0
        self._epoch = state["epoch"]
