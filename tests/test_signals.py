"""SIGTERM and Ctrl+C during `vaezoo fit`: the latest state saved, the command that resumes printed,
exit status 143 or 130, and that command resuming exactly where the run stopped.

What is checked:

- a real ``python -m vaezoo fit`` in a subprocess, sent SIGTERM (or SIGINT) in the middle of an
  epoch, stops at the end of the step it was in, exits 143 (130), writes ``latest-epoch=E-step=S.ckpt``
  at exactly that step with ``last.ckpt`` linked to it, and prints the command with ``--ckpt_path
  last``; running that command trains exactly the steps and images the stopped run had not reached;
- ``LatestCheckpoint.save_now``, which calls private ModelCheckpoint methods (checked against
  Lightning 2.6.6): it fails here if Lightning changes them;
- a second Ctrl+C stops at once; SIGTERM outside training (Lightning's own ``SIGTERMException``,
  here in ``validate``) exits 143, not 0; the handlers are put back after fit;
- slow: the same under DDP on the CPU (2 processes): both stop at the same step, rank 0 writes the
  checkpoint, both exit 143.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.data_files import write_mnist_idx
from tests.test_resume import clean_env, complete_lines
from vaezoo.callbacks import LatestCheckpoint, StopOnSignal
from vaezoo.callbacks.signals import resume_command
from vaezoo.data import MNISTDataModule
from vaezoo.models.base import VAE

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "mnist_mlp.yaml"
DDP_CPU = REPO / "configs" / "trainer" / "ddp_cpu.yaml"
TIMEOUT_S = 300

N_TRAIN, VAL_SIZE, BATCH, EPOCHS = 300, 100, 10, 3
STEPS_PER_EPOCH = (N_TRAIN - VAL_SIZE) // BATCH  # 20
SIGNAL_AT = STEPS_PER_EPOCH + 5  # the middle of epoch 1, away from the epoch-end checkpoints


class SlowStepLog(L.Callback):
    """Appends ``[global_step, fingerprints]`` to ``<path>`` (``<path>.rank<r>`` under DDP) as each
    training step starts, and sleeps, so that a signal lands in the middle of an epoch.

    A fingerprint is an image's first 8 grey levels packed into one integer (``--data.binarize none``).

    Args:
        path: The file, relative to the working directory.
        sleep_s: Seconds to wait in each step.
    """

    def __init__(self, path: str = "steps.jsonl", sleep_s: float = 0.05) -> None:
        super().__init__()
        self.path = path
        self.sleep_s = sleep_s

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        pixels = (batch[0].flatten(1)[:, :8] * 255).round().to(torch.uint8).cpu()  # (B, 8)
        fingerprints = [int.from_bytes(bytes(row.tolist()), "little") for row in pixels]
        path = Path(self.path + (f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""))
        with path.open("a") as f:
            f.write(json.dumps([trainer.global_step, fingerprints]) + "\n")
        time.sleep(self.sleep_s)


def fit_args(data: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(RECIPE), *extra, "--data.root", str(data), "--data.val_size", str(VAL_SIZE),
        "--data.batch_size", str(BATCH), "--data.binarize", "none", "--trainer.max_epochs", str(EPOCHS),
        "--model.iw_samples", "4", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.callbacks+=tests.test_signals.SlowStepLog",
    ]


def steps_of(path: Path) -> list[tuple[int, list[int]]]:
    return [tuple(json.loads(line)) for line in complete_lines(path)]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    # Its own session: a hang in the test kills every DDP process, not only rank 0.
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"still running after {TIMEOUT_S} s:\n{out[-4000:]}")
    return out


def signal_mid_epoch(proc: subprocess.Popen, log: Path, signum: int) -> None:
    """Send ``signum`` to ``proc`` once ``log`` shows step SIGNAL_AT started."""
    deadline = time.monotonic() + TIMEOUT_S
    while not any(step >= SIGNAL_AT for step, _ in steps_of(log)):
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before step {SIGNAL_AT}:\n{proc.communicate()[0][-4000:]}")
        assert time.monotonic() < deadline, f"step {SIGNAL_AT} not reached within {TIMEOUT_S} s"
        time.sleep(0.01)
    os.kill(proc.pid, signum)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_reached_and_the_printed_command_resumes(signum: int, status: int,
                                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_mnist_idx(data, n_train=N_TRAIN, n_test=16)
    run = tmp_path / "run"
    run.mkdir()
    stopped = start(["-m", "vaezoo", *fit_args(data)], run)
    signal_mid_epoch(stopped, run / "steps.jsonl", signum)
    out = finish(stopped)
    assert stopped.returncode == status, out[-4000:]

    # It stopped at the end of the step the signal arrived in: no step started after it.
    before = steps_of(run / "steps.jsonl")
    reached = before[-1][0] + 1
    assert [step for step, _ in before] == list(range(reached)) and reached > SIGNAL_AT
    folder = run / "runs" / "mnist_mlp" / "version_0" / "checkpoints"
    saved = folder / f"latest-epoch={reached // STEPS_PER_EPOCH}-step={reached}.ckpt"
    assert (folder / "last.ckpt").resolve() == saved.resolve()
    assert torch.load(saved, weights_only=True)["global_step"] == reached
    name = signal.Signals(signum).name
    (notice,) = [line for line in out.splitlines() if line.startswith(f"vaezoo: stopped by {name}")]
    assert notice == (f"vaezoo: stopped by {name} at step {reached} (epoch {reached // STEPS_PER_EPOCH}): the latest "
                      f"state is saved in {Path('runs/mnist_mlp/version_0/checkpoints') / saved.name}. Resume with:")
    command = out.splitlines()[out.splitlines().index(notice) + 1].strip()
    assert command == f"python -m vaezoo {shlex.join(fit_args(data))} --ckpt_path last"

    # The printed command resumes there and trains exactly what the stopped run had not reached.
    program, module, *args = shlex.split(command)
    assert (program, module) == ("python", "-m")
    resumed = start([module, *args], run)
    out = finish(resumed)
    assert resumed.returncode == 0, out[-4000:]
    assert f"vaezoo: --ckpt_path last: {saved.resolve()}" in out
    after = steps_of(run / "steps.jsonl")[len(before):]
    assert [step for step, _ in after] == list(range(reached, EPOCHS * STEPS_PER_EPOCH))
    epoch = reached // STEPS_PER_EPOCH
    images = [f for step, prints in before + after if step // STEPS_PER_EPOCH == epoch for f in prints]
    assert len(images) == len(set(images)) == STEPS_PER_EPOCH * BATCH  # none repeated, none skipped


def test_the_resume_command_replaces_the_checkpoint_argument() -> None:
    args = ["fit", "--config", "a b.yaml", "--ckpt_path", "x.ckpt", "--ckpt_path=y.ckpt", "--trainer.max_epochs", "3"]
    assert resume_command(args, "vaezoo") == "vaezoo fit --config 'a b.yaml' --trainer.max_epochs 3 --ckpt_path last"


class SaveAt(L.Callback):
    """Calls ``LatestCheckpoint.save_now`` at the end of training step ``step``."""

    def __init__(self, latest: LatestCheckpoint, step: int) -> None:
        self.latest, self.step, self.saved = latest, step, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.saved = self.latest.save_now(trainer)


def test_save_now_writes_the_latest_state_and_links_last(tiny_mnist, tmp_path: Path) -> None:
    """save_now calls ModelCheckpoint's private _monitor_candidates, _save_topk_checkpoint and
    _save_last_checkpoint (Lightning 2.6.6): this fails when they change."""
    folder = tmp_path / "ckpt"
    latest = LatestCheckpoint(every_n_train_steps=2, dirpath=str(folder))
    probe = SaveAt(latest, step=3)
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe, latest])
    trainer.fit(VAE(latent_dim=4, iw_samples=None), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8))
    assert probe.saved == str(folder / "latest-epoch=0-step=3.ckpt")
    # Step 4's trigger then replaced it, as it replaces its own files.
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "latest-epoch=0-step=4.ckpt"]
    assert (folder / "last.ckpt").resolve() == (folder / "latest-epoch=0-step=4.ckpt").resolve()


def test_handlers_are_restored_after_fit(tiny_mnist, tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[StopOnSignal()])
    trainer.fit(VAE(latent_dim=4, iw_samples=None), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8))
    assert {s: signal.getsignal(s) for s in before} == before


def test_ctrl_c_twice_stops_at_once() -> None:
    stop = StopOnSignal()
    stop._install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        stop._restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class SigtermAtBatch(L.Callback):
    """Sends this process SIGTERM as evaluation batch 1 starts (Lightning's handler is installed then)."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_outside_training_exits_143(tiny_mnist, tmp_path: Path, capsys) -> None:
    """Lightning's own SIGTERMException (here in `validate`) carries no status: the process would exit 0."""
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[SigtermAtBatch(), StopOnSignal()])
    with pytest.raises(SystemExit) as stop:
        trainer.validate(VAE(latent_dim=4, iw_samples=None),
                         MNISTDataModule(str(tiny_mnist[0]), val_size=48, batch_size=8))
    assert stop.value.code == 143
    assert "vaezoo: stopped by SIGTERM." in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_processes_stop_together_and_rank_zero_saves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_mnist_idx(data, n_train=N_TRAIN, n_test=16)
    run = tmp_path / "run"
    run.mkdir()
    # Batch 5 per process keeps the global batch of 10: the same 20 steps per epoch.
    args = fit_args(data, "--config", str(DDP_CPU))
    args[args.index("--data.batch_size") + 1] = str(BATCH // 2)
    stopped = start(["-m", "vaezoo", *args], run)
    signal_mid_epoch(stopped, run / "steps.jsonl.rank0", signal.SIGTERM)  # rank 0 only, as `kill <pid>` does
    out = finish(stopped)
    assert stopped.returncode == 143, out[-4000:]
    deadline = time.monotonic() + 60
    while (rank1 := [p for p in Path("/proc").glob("[0-9]*") if _runs_in(p, run)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not rank1, "rank 1 still running"
    ranks = [steps_of(run / f"steps.jsonl.rank{r}") for r in (0, 1)]
    assert [s for s, _ in ranks[0]] == [s for s, _ in ranks[1]]  # the same steps: stopped together
    reached = ranks[0][-1][0] + 1
    saved = run / "runs" / "mnist_mlp" / "version_0" / "checkpoints" / f"latest-epoch=1-step={reached}.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == reached
    assert out.count("vaezoo: stopped by SIGTERM") == 1  # rank 0 says it


def _runs_in(proc: Path, folder: Path) -> bool:
    """Whether process ``/proc/<pid>`` runs in ``folder`` (a DDP process of the test's run)."""
    try:
        return Path(os.readlink(proc / "cwd")) == folder
    except OSError:
        return False
