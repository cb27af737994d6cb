"""The CLI's default progress bar: Lightning's TQDM bar, redrawn every N batches or every second, counting
optimiser steps (also when a training step makes several, ``steps_per_call``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm

from vaezoo.models import groups


class TimedProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, redrawn every ``refresh_rate`` batches or once ``refresh_seconds`` have
    passed since it was last drawn, whichever comes first.

    Redrawing only every 10 batches keeps the bar's cost off a small net's millisecond training steps.
    But a slow loop then shows nothing, not even an ETA, for its first 10 batches: ``vaezoo test``
    with 1,000 importance samples per image takes about a second per batch of 100 MNIST images with
    the MLP, and ten or more with the conv net; so can a validation with ``val_iw_samples``.

    Args:
        refresh_rate: Redraw at least every this many batches; 0 hides the bars.
        refresh_seconds: Redraw when this long has passed since the bar was last drawn, checked at the
            end of every batch.
        process_position: Lines to offset the bars by, as Lightning's.
        leave: Keep a finished epoch's bar on the screen, as Lightning's.

    With ``steps_per_call`` k > 1 the training bar still counts optimiser steps (batches), not training
    steps: it moves by k at each training step, up to the epoch's batches.
    """

    def __init__(
        self, refresh_rate: int = 10, refresh_seconds: float = 1.0, process_position: int = 0, leave: bool = False
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.refresh_seconds = refresh_seconds
        self._drawn_at = time.monotonic()

    def _catch_up(self, bar: tqdm, n: int, postfix: Callable[[], dict[str, Any]] | None = None) -> None:
        """Draw ``bar`` at ``n`` batches if the parent did not just do so and it is due by the clock.
        ``postfix`` gives the metrics shown after the bar, read only when it is drawn."""
        if not self.is_enabled or bar.disable:
            return
        now = time.monotonic()
        if bar.n != n and now - self._drawn_at >= self.refresh_seconds:
            bar.n = n
            if postfix is not None:
                bar.set_postfix(postfix(), refresh=False)
            bar.refresh()  # tqdm's ETA: the batches left at the mean rate so far
        if bar.n == n:  # drawn, here or by the parent's every-N rule
            self._drawn_at = now

    @property
    def total_train_batches(self) -> int | float:
        """The epoch's optimiser steps: its batches, also when a training step takes a group of them."""
        return groups.epoch_batches(self.trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        k = groups.group_size(trainer)
        # The parent draws at n = batch_idx + 1: give it the optimiser steps done, as one step per batch would.
        n = batch_idx + 1 if k == 1 else min((batch_idx + 1) * k, int(self.train_progress_bar.total or 0))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, n - 1)
        self._catch_up(self.train_progress_bar, n, lambda: self.get_metrics(trainer, pl_module))

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._catch_up(self.val_progress_bar, batch_idx + 1)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._catch_up(self.test_progress_bar, batch_idx + 1)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._catch_up(self.predict_progress_bar, batch_idx + 1)
