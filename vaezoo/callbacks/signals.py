"""Stopping on SIGTERM and Ctrl+C: the latest state saved, the command that resumes printed, a non-zero exit.

A scheduler (SLURM, Kubernetes, a spot instance's reclaim) sends SIGTERM and kills the job a grace
period later; it reads exit status 0 as "completed". Ctrl+C sends SIGINT. Left to Lightning 2.6:

- SIGTERM sets a flag that the loops read at several points (a step's end, an epoch's end, every
  validation batch) and raise ``SIGTERMException``, a ``SystemExit`` without a code: the process
  exits 0 and nothing is saved. Under DDP each process reads its own flag at its own point, so one
  process can leave while the others wait for it in the next step's all-reduce (Lightning issue
  #20806).
- SIGINT raises ``KeyboardInterrupt`` wherever the code is, half-way through an optimiser step
  perhaps, and Lightning exits 1.

:class:`StopOnSignal` owns both signals while training runs. The handler only records the signal.
At the end of a training step, after the optimiser step and where ``LatestCheckpoint`` saves
anyway, the processes agree (one all-reduce under DDP, none with one process) and, if any of them
received a signal, all raise ``SIGTERMException`` at that same step, with exit status 143 (SIGTERM)
or 130 (SIGINT): 128 plus the signal's number, as shells report a process killed by it. In
``on_exception`` every process then saves the latest state together (rank 0 writes the file): the
config's ``LatestCheckpoint`` writes it and links ``last.ckpt`` to it (without one, a file in the
first ModelCheckpoint's folder), and rank 0 prints where it is and the command that resumes.

A second Ctrl+C before the step ends stops at once, without saving: a ``KeyboardInterrupt``, which
Lightning handles (exit 1, and DDP's other processes killed); one while the checkpoint is written is
ignored, since it would cut the file short. SIGUSR1 stays Lightning's: under SLURM with
auto-requeue, it saves ``hpc_ckpt_<N>.ckpt`` and requeues the job, whose SIGTERM then ends here.
Outside training (setup, the sanity check, ``validate``, ``test``) Lightning's own SIGTERM handling
applies; only its exit status is changed, to 143. Of Lightning, this module uses public parts only
(``Callback`` hooks, ``SIGTERMException``, ``trainer.received_sigterm``, ``strategy.reduce``); the save
goes through ``LatestCheckpoint.save_now``, which needs private ones (see :mod:`vaezoo.callbacks.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaezoo.callbacks.checkpoint import LatestCheckpoint

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The status a shell reports for a process ended by signal ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


def resume_command(args: list[str], program: str | None = None) -> str:
    """The command line ``program args`` with its ``--ckpt_path`` replaced by ``--ckpt_path last``.

    Args:
        args: The arguments after the program (``fit --config ...``).
        program: How the command was started; None guesses ``python -m vaezoo`` or ``vaezoo`` from ``sys.argv[0]``.
    """
    if program is None:
        program = "python -m vaezoo" if sys.argv[0].endswith("__main__.py") else "vaezoo"
    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg == "--ckpt_path":
            skip_next = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return f"{program} {shlex.join([*kept, '--ckpt_path', 'last'])}"


class StopOnSignal(Callback):
    """On SIGTERM or SIGINT during training: stop at the end of the step, on every process; save the
    latest state; print the command that resumes; exit 143 (SIGTERM) or 130 (SIGINT).

    The ``vaezoo`` command attaches it to every run.

    Args:
        args: The command's arguments (``fit --config ...``), for the resume line; None (from Python)
            prints the checkpoint's path only.
    """

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__()
        self.args = args
        self.received = 0  # the signal number, 0: none (SIGTERM wins over SIGINT: it is the scheduler's)
        self._stopped = False  # whether this callback raised the stop
        self._replaced: dict[int, Any] = {}  # signal -> the handler it replaced

    # ----- the handlers: they only record -----------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received:  # Ctrl+C again: at once, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.received = max(self.received, signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # signal.signal works there only
            return
        for signum in _SIGNALS:
            self._replaced.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._replaced.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._replaced = {}

    # ----- Lightning hooks ---------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A SIGTERM during the sanity check may have set Lightning's flag, which its loop would act on at the
        # first step's end, after this callback's check: take it over.
        self.received = int(signal.SIGTERM) if trainer.received_sigterm else 0
        self._stopped = False
        self._install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        received = self.received
        if trainer.world_size > 1:  # every process stops at this step, or none: no one waits in a collective
            # Lightning 2.6 already broadcasts and reads its own SIGTERM flag every step under DDP, so this read
            # adds no stall of its own, only one more tiny collective.
            flag = torch.tensor(float(received), device=pl_module.device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if received:
            self.received, self._stopped = received, True
            raise SIGTERMException(exit_status(received))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()  # a signal after the last step's check: training is complete, the exit is normal

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            self._report(trainer, exception)
        finally:
            self._restore()

    def _report(self, trainer: L.Trainer, exception: BaseException) -> None:
        """For a stop by a signal: set the exit status, save the latest state, print how to resume."""
        if not isinstance(exception, SIGTERMException):
            return
        if exception.code is None:  # Lightning's own, outside training: a SIGTERM, whose status is 143
            exception.code = exit_status(signal.SIGTERM)
        signum = exception.code - 128 if isinstance(exception.code, int) and exception.code > 128 else signal.SIGTERM
        name = signal.Signals(signum).name
        if trainer.state.fn != "fit":
            if trainer.is_global_zero:
                print(f"vaezoo: stopped by {name}.", file=sys.stderr, flush=True)
            return
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        saved = None
        if not self._stopped:  # Lightning's stop, before the first step ended: nothing new to save
            state = "no training step had ended, so there is no new state to save"
        else:
            with _ignoring(signal.SIGINT):  # Ctrl+C again now would cut the file short
                saved = _save_latest(trainer)
            state = (f"the latest state is saved in {saved}" if saved else
                     "checkpointing is off (or fast_dev_run), so the state is not saved")
        if not trainer.is_global_zero:
            return
        if self.args is not None:
            how = f" Resume with:\n  {resume_command(self.args)}"
        elif saved:
            how = f" Resume with trainer.fit(model, datamodule, ckpt_path={str(saved)!r})."
        else:
            how = ""
        bar = "\n" if trainer.progress_bar_callback is not None else ""  # off the progress bar's line
        print(f"{bar}vaezoo: stopped by {name} {where}: {state}.{how}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    """Ignore ``signum`` inside the block (in the main thread, the only one that may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def _save_latest(trainer: L.Trainer) -> str | None:
    """Save the latest state on every process (rank 0 writes); returns the file, None when nothing is saved.

    The config's LatestCheckpoint writes it (``last.ckpt`` then links to it). Without one, it goes to the
    folder of the first ModelCheckpoint, where ``--ckpt_path last`` looks too.
    """
    callbacks = trainer.checkpoint_callbacks
    if trainer.fast_dev_run or not callbacks:
        return None
    latest = next((cb for cb in callbacks if isinstance(cb, LatestCheckpoint)), None)
    if latest is not None:
        return latest.save_now(trainer)
    folder = next((cb.dirpath for cb in callbacks if getattr(cb, "dirpath", None)), None)
    if folder is None:
        return None
    path = os.path.join(folder, f"interrupted-epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt")
    trainer.save_checkpoint(path)
    return path
