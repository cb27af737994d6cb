"""The latest training state, every N steps, at every epoch's end and when a signal stops training:
what ``--ckpt_path last`` resumes.

Lightning has no public "save now" for a ModelCheckpoint, nor both triggers at once: both go through
:mod:`vaezoo.compat`, which holds every private use of a library, with why.
"""

from __future__ import annotations

from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from vaezoo import compat


class LatestCheckpoint(ModelCheckpoint):
    """Keeps one checkpoint of the latest state, linked as ``last.ckpt``, written every N training
    steps, at the end of every epoch, and when SIGTERM or Ctrl+C stops training
    (:class:`vaezoo.callbacks.StopOnSignal`).

    Lightning's ``ModelCheckpoint`` takes one trigger (steps or epochs), and with ``save_last`` and a
    monitored metric writes ``last.ckpt`` only when the metric improves. A run killed mid-epoch then
    resumes from wherever the metric last improved. This one saves on both triggers, keeps only the
    newest file (``latest-epoch=E-step=S.ckpt``) and links ``last.ckpt`` to it, so a crash loses at
    most ``every_n_train_steps`` steps, and a stop by a signal none.

    Args:
        every_n_train_steps: Save every this many optimiser steps (0: only at epoch ends).
        dirpath: Folder of the checkpoints; None puts them in the logger's run folder, as Lightning does.
        filename: Name pattern of the checkpoint file, in ModelCheckpoint's format.
    """

    def __init__(
        self,
        every_n_train_steps: int = 200,
        dirpath: str | None = None,
        filename: str = "latest-{epoch}-{step}",
    ) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 (0: only at epoch ends), got {every_n_train_steps}.")
        super().__init__(
            dirpath=dirpath, filename=filename, every_n_train_steps=every_n_train_steps, save_top_k=1, save_last="link"
        )
        compat.save_on_epochs_too(self)  # tests/test_resume.py checks that both triggers fire

    def save_now(self, trainer: Trainer) -> str:
        """Write the latest state now, whatever the triggers say, and link ``last.ckpt`` to it; returns its path.

        Call it on every process, at a point where all are (it holds collectives); rank 0 writes. Meant for
        the end of a training step, where the step and epoch triggers save too, so that the file resumes
        exactly as theirs do. Nothing is written when this step's state is already saved.
        """
        compat.save_checkpoint_now(self, trainer)  # no monitor: the newest replaces the previous; last.ckpt -> it
        return self.best_model_path
