"""Resuming after a crash, refusing checkpoints that would run code, and bit-for-bit repeatable runs.

What is checked:

- slow: a ``vaezoo fit`` killed with SIGKILL in the middle of an epoch resumes with
  ``--ckpt_path last``, loses fewer steps than the checkpoint interval, trains exactly the batches
  the killed run had not reached (none repeated, none skipped: the DataModule's sampler restores its
  position), and ends at the same ``global_step`` and ``epoch`` as an uninterrupted run;
- a ``.ckpt`` whose pickle would create a file when unpickled with ``weights_only=False`` is refused
  by ``vaezoo test`` and its code never runs, even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` set;
  checkpoints written by ``vaezoo fit`` (every shipped recipe) load with ``weights_only=True``;
- slow: two runs with the same ``--seed_everything`` and ``--trainer.deterministic true`` end with
  bit-identical weights, optimizer state and metrics.csv; the train/val split depends only on the
  DataModule's ``seed``, not on the run, ``seed_everything``, the rank or the number of processes.

How ``--ckpt_path last`` resolves: Lightning alone looks in *this* run's new, empty checkpoint folder
and trains from step 0. vaezoo (``vaezoo/checkpoints.py``) looks over every run of the config's
logger, ``<save_dir>/<name>/*/checkpoints``, and resumes the newest checkpoint; the recipes'
``LatestCheckpoint`` writes one every N steps and at every epoch's end. The resumed run logs into a
new version folder, so the killed run's files stay as they were.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from tests.data_files import patch_cifar10_md5s, write_cifar10_batches, write_mnist_idx
from tests.test_celeba import patch_celeba_md5s, write_celeba
from tests.test_cli import tiny_data_args
from vaezoo.cli import main
from vaezoo.data.mnist import MNISTDataModule

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "mnist_mlp.yaml"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TIMEOUT_S = 600  # per subprocess run; a 150-step run takes ~1.5 min on a busy 2-core machine


# ----- shared helpers ------------------------------------------------------------------------------


def run_in_process(*args: str) -> tuple[int, str]:
    """Run ``vaezoo ARGS`` in this process; returns (exit code, what the user would read on stderr).

    An exception that escapes ``main`` ends as the interpreter would end it: its traceback on
    stderr, exit code 1.
    """
    stderr = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
            mp.setattr(sys, "argv", ["vaezoo"])  # args come from the call, as from Python
            main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 (what escapes main is exactly what is checked)
        code = 1
        stderr.write(traceback.format_exc())
    return code, stderr.getvalue()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus any launcher's variables, with this checkout importable."""
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"  # two runs at once share the cores
    return {**env, **extra}


def newest_last_checkpoint(folder: Path) -> Path:
    """The ``last*.ckpt`` that Lightning's ``ckpt_path="last"`` would pick: the newest one."""
    candidates = list(folder.glob("last*.ckpt"))
    assert candidates, f"no last*.ckpt in {folder}: {sorted(p.name for p in folder.iterdir())}"
    return max(candidates, key=lambda p: p.stat().st_mtime)


# ----- kill -9 mid-epoch, then resume --------------------------------------------------------------

N_TRAIN, VAL_SIZE, BATCH = 600, 100, 10
STEPS_PER_EPOCH = (N_TRAIN - VAL_SIZE) // BATCH  # 50
EPOCHS = 3
EVERY = 10  # the step checkpoint's interval: a kill loses at most this many steps


class TrainBatchLog(L.Callback):
    """Appends ``[global_step, fingerprints]`` to a JSON-lines file as each training step starts.

    A fingerprint is an image's first 8 pixels packed into one integer: with ``--data.binarize
    none`` the batch holds the file's grey levels / 255, and 8 random pixels tell the test's 600
    random images apart. Written and closed line by line, so a SIGKILL keeps the lines of every step
    that started.

    Args:
        path: The file, relative to the working directory.
    """

    def __init__(self, path: str = "train_batches.jsonl") -> None:
        super().__init__()
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        pixels = (batch[0].flatten(1)[:, :8] * 255).round().to(torch.uint8).cpu()  # (B, 8)
        fingerprints = [int.from_bytes(bytes(row.tolist()), "little") for row in pixels]
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.global_step, fingerprints]) + "\n")


def fit_args(data: Path, batch_log: str, recipe: Path) -> list[str]:
    return [
        "fit", "--config", str(recipe), "--data.root", str(data), "--data.val_size", str(VAL_SIZE),
        "--data.batch_size", str(BATCH), "--data.binarize", "none", "--trainer.max_epochs", str(EPOCHS),
        "--model.iw_samples", "4", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.callbacks+=tests.test_resume.TrainBatchLog", "--trainer.callbacks.path", batch_log,
    ]


def recipe_saving_every(steps: int, folder: Path) -> Path:
    """The mnist_mlp recipe as shipped, but with its LatestCheckpoint every ``steps`` steps."""
    config = yaml.safe_load(RECIPE.read_text())
    (latest,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("LatestCheckpoint")]
    latest["init_args"]["every_n_train_steps"] = steps
    path = folder / "mnist_mlp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vaezoo", *args], cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen, log: Path) -> None:
    """Wait for ``proc``; fail the test with its output unless it exits 0."""
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running after {TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{log.read_text()[-4000:]}"


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` that end in a newline: a line being written, or cut by a kill, is left out."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


def batch_log(path: Path) -> dict[int, list[int]]:
    """{global_step: fingerprints of the images it trained on} from a TrainBatchLog file."""
    steps: dict[int, list[int]] = {}
    for line in complete_lines(path):
        step, fingerprints = json.loads(line)
        assert step not in steps, f"{path.name}: step {step} trained twice"
        steps[step] = fingerprints
    return steps


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_from_last(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_mnist_idx(data, n_train=N_TRAIN, n_test=32)
    baseline_dir, crash_dir = tmp_path / "baseline", tmp_path / "crash"
    baseline_dir.mkdir()
    crash_dir.mkdir()

    # The uninterrupted run, alongside the run that gets killed.
    recipe = recipe_saving_every(EVERY, tmp_path)
    baseline = start(fit_args(data, "batches.jsonl", recipe), baseline_dir, tmp_path / "baseline.log")
    crash = start(fit_args(data, "killed.jsonl", recipe), crash_dir, tmp_path / "killed.log")
    try:
        # Kill in the middle of epoch 1 or 2, at least half-way from a step checkpoint that is not at
        # an epoch's end to the next: that checkpoint is complete (it is written at the end of its
        # step, before the next step starts) and the next one not begun.
        deadline = time.monotonic() + TIMEOUT_S
        killed_log = crash_dir / "killed.jsonl"
        while True:
            assert crash.poll() is None, f"finished before the kill:\n{(tmp_path / 'killed.log').read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"not past step {STEPS_PER_EPOCH + EVERY} within {TIMEOUT_S} s"
            lines = complete_lines(killed_log)
            step = json.loads(lines[-1])[0] if lines else -1
            checkpointed = step - step % EVERY
            if checkpointed > STEPS_PER_EPOCH and checkpointed % STEPS_PER_EPOCH and step % EVERY >= EVERY // 2:
                break
            time.sleep(0.01)
        os.kill(crash.pid, signal.SIGKILL)
        crash.wait(timeout=60)
    finally:
        if crash.poll() is None:
            crash.kill()
    assert crash.returncode == -signal.SIGKILL
    killed = batch_log(killed_log)
    kill_step = max(killed)  # the step in progress (or just done) at the kill

    # The same command plus --ckpt_path last: a new run (version_1) that finds version_0's checkpoint.
    resumed_run = start([*fit_args(data, "resumed.jsonl", recipe), "--ckpt_path", "last"], crash_dir,
                        tmp_path / "resumed.log")
    finish(resumed_run, tmp_path / "resumed.log")
    finish(baseline, tmp_path / "baseline.log")
    assert "vaezoo: --ckpt_path last: " + str(crash_dir / "runs" / "mnist_mlp" / "version_0" / "checkpoints") in (
        tmp_path / "resumed.log").read_text()

    # It resumed mid-epoch, from a checkpoint at most EVERY steps before the kill.
    resumed = batch_log(crash_dir / "resumed.jsonl")
    resumed_from = min(resumed)
    assert resumed_from % STEPS_PER_EPOCH != 0, f"resumed from step {resumed_from}, an epoch boundary"
    assert kill_step + 1 - EVERY <= resumed_from <= kill_step + 1, (resumed_from, kill_step)

    # The same batches, step for step, as the uninterrupted run: none repeated, none skipped.
    expected = batch_log(baseline_dir / "batches.jsonl")
    assert sorted(expected) == list(range(EPOCHS * STEPS_PER_EPOCH))
    assert sorted(resumed) == list(range(resumed_from, EPOCHS * STEPS_PER_EPOCH))
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        trained = killed[step] if step < resumed_from else resumed[step]
        assert trained == expected[step], f"step {step} trained other images than the uninterrupted run"

    # The same end point.
    runs = Path("runs") / "mnist_mlp"
    final = torch.load(newest_last_checkpoint(crash_dir / runs / "version_1" / "checkpoints"), weights_only=True)
    reference = torch.load(newest_last_checkpoint(baseline_dir / runs / "version_0" / "checkpoints"), weights_only=True)
    assert (final["global_step"], final["epoch"]) == (reference["global_step"], reference["epoch"])
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert final["epoch"] == EPOCHS - 1


# ----- checkpoints that would run code are refused -------------------------------------------------

SMALL = ["--data.val_size", "16", "--data.batch_size", "8"]  # write_mnist_idx's default 64 / 16 images


class OpensAFile:
    """Unpickles as ``open(path, "w")``: with ``weights_only=False`` loading creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny MNIST root, a last.ckpt written by one epoch of `vaezoo fit` of the mnist_mlp recipe)."""
    tmp = tmp_path_factory.mktemp("fitted")
    write_mnist_idx(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        code, err = run_in_process("fit", "--config", str(RECIPE), "--data.root", str(tmp / "data"), *SMALL,
                                   "--trainer.max_epochs", "1", "--images.every_n_epochs", "0",
                                   "--trainer.enable_progress_bar", "false")
    assert code == 0, err
    return tmp / "data", tmp / "runs" / "mnist_mlp" / "version_0" / "checkpoints" / "last.ckpt"


def write_malicious_checkpoint(normal: Path, path: Path, marker: Path) -> Path:
    """A copy of a real checkpoint with a payload that creates ``marker`` among its callback states."""
    checkpoint = torch.load(normal, weights_only=True)
    checkpoint["callbacks"]["ImageLogger"] = {"state": OpensAFile(marker)}
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def malicious(fitted: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """evil.ckpt in the working directory, and the file its payload would create."""
    monkeypatch.chdir(tmp_path)
    # First show that the payload is live: a plain unpickling runs it.
    control = tmp_path / "CONTROL"
    torch.load(write_malicious_checkpoint(fitted[1], tmp_path / "control.ckpt", control), weights_only=False)
    assert control.exists()
    marker = tmp_path / "MARKER"
    return {"data": fitted[0], "ckpt": write_malicious_checkpoint(fitted[1], tmp_path / "evil.ckpt", marker),
            "marker": marker}


@pytest.mark.parametrize("force_no_weights_only", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_malicious_checkpoint_never_runs_its_code(
    force_no_weights_only: bool, malicious: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch.load's default to weights_only=False wherever
    # a caller does not pass weights_only: the refusal must not rest on that default.
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, _ = run_in_process("test", "--config", str(RECIPE), "--data.root", str(malicious["data"]), *SMALL,
                             "--model.iw_samples", "4", "--ckpt_path", "evil.ckpt")
    assert code != 0
    assert not malicious["marker"].exists(), "loading the checkpoint ran its pickled code"


def test_malicious_checkpoint_is_never_unpickled_by_the_trainer(
    malicious: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer's own load refuses it too, not only LightningCLI's read of the hyperparameters.

    LightningCLI reads ``hyper_parameters`` with ``torch.load(weights_only=True)`` before anything
    else, which refuses the file first; this takes that read away to reach the Trainer's load.
    Lightning leaves that load to torch's default unless ``weights_only`` is given, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns the default off: vaezoo passes ``True``.
    """
    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self: None)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, _ = run_in_process("test", "--config", str(RECIPE), "--data.root", str(malicious["data"]), *SMALL,
                             "--model.iw_samples", "4", "--trainer.logger", "false", "--ckpt_path", "evil.ckpt")
    assert code != 0
    assert not malicious["marker"].exists(), "the Trainer unpickled the checkpoint with weights_only=False"


def test_malicious_checkpoint_is_refused_with_one_message(malicious: dict[str, Path]) -> None:
    code, err = run_in_process("test", "--config", str(RECIPE), "--data.root", str(malicious["data"]), *SMALL,
                               "--ckpt_path", "evil.ckpt")
    assert code == 2, err
    assert "vaezoo: error:" in err and "Traceback" not in err, err
    assert not malicious["marker"].exists()


def test_fit_checkpoint_holds_nothing_unsafe(fitted: tuple[Path, Path]) -> None:
    checkpoint = torch.load(fitted[1], weights_only=True)  # raises UnpicklingError naming any unsafe global
    assert checkpoint["state_dict"] and checkpoint["optimizer_states"]
    assert checkpoint["hyper_parameters"]["latent_dim"] == 50


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_recipe_writes_checkpoints_that_load_with_weights_only(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist_idx(tmp_path)
    write_mnist_idx(tmp_path, folder="FashionMNIST")
    patch_cifar10_md5s(monkeypatch, write_cifar10_batches(tmp_path, n_per_batch=8))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # CelebA's decoded splits
    patch_celeba_md5s(monkeypatch, write_celeba(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(
        "fit", "--config", str(config), "--data.root", str(tmp_path), *tiny_data_args(config),
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.callbacks", "ModelCheckpoint", "--trainer.callbacks.dirpath", "ckpts",
        "--trainer.callbacks.save_last", "true",
    )
    assert code == 0, err
    torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("build", ["defaults", "partials"])
def test_python_api_checkpoint_loads_with_weights_only_and_rebuilds_the_model(build: str, tmp_path: Path) -> None:
    """A VAE built in Python stores class paths, not the classes it was given (``net=MLPNet``,
    ``optimizer=torch.optim.Adam``, a likelihood instance): its checkpoint loads with
    ``weights_only=True`` and ``VAE.load_from_checkpoint`` rebuilds the same model from it."""
    import functools

    from vaezoo import VAE
    from vaezoo.likelihoods import Gaussian
    from vaezoo.nets import ConvNet

    kwargs = {} if build == "defaults" else {
        "net": functools.partial(ConvNet, channels=[4, 8]), "likelihood": Gaussian(sigma=0.3),
        "optimizer": functools.partial(torch.optim.SGD, lr=0.05), "latent_dim": 3,
    }
    write_mnist_idx(tmp_path)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    model = VAE(iw_samples=None, **kwargs)
    trainer.fit(model, MNISTDataModule(str(tmp_path), batch_size=8, val_size=16))
    trainer.save_checkpoint(tmp_path / "api.ckpt")
    torch.load(tmp_path / "api.ckpt", weights_only=True)

    loaded = VAE.load_from_checkpoint(tmp_path / "api.ckpt", weights_only=True)
    assert type(loaded.net) is type(model.net) and isinstance(model.likelihood, type(loaded.likelihood))
    assert vars(loaded.likelihood).get("sigma") == vars(model.likelihood).get("sigma")
    for key in ("net", "likelihood", "optimizer"):  # the loaded model's own hparams are plain data too
        assert loaded.hparams[key]["class_path"] == model.hparams[key]["class_path"]
    torch.save(dict(loaded.hparams), tmp_path / "resaved.pt")
    torch.load(tmp_path / "resaved.pt", weights_only=True)
    assert tensors_equal(loaded.state_dict(), model.state_dict()) == []
    assert type(loaded.configure_optimizers()) is type(model.configure_optimizers())


def test_an_argument_without_a_config_form_is_named_and_left_out(tmp_path: Path) -> None:
    from vaezoo import VAE

    with pytest.warns(UserWarning, match=r"VAE\(optimizer=...\) is not saved.*load_from_checkpoint\(path, optimizer="):
        model = VAE(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    assert "optimizer" not in model.hparams
    torch.save(dict(model.hparams), tmp_path / "h.pt")
    torch.load(tmp_path / "h.pt", weights_only=True)


# ----- repeatability ---------------------------------------------------------------------------------

REPEAT_TRAIN, REPEAT_VAL, REPEAT_EPOCHS = 600, 100, 3  # 50 steps of 10 images per epoch, 150 in all


class RecordRun(L.Callback):
    """Saves the DataModule's split to ``split.pt`` when fitting starts, and ``final.ckpt`` at its end.

    The recipe's ``last.ckpt`` is not the final state: Lightning 2.6 writes a monitoring
    ModelCheckpoint's ``last.ckpt`` only when it also saves a top-k checkpoint, i.e. when val/elbo
    improved.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        torch.save({"train": dm.train_indices, "val": dm.val_indices}, "split.pt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint("final.ckpt")


@pytest.fixture
def restore_global_state(monkeypatch: pytest.MonkeyPatch):
    """`--trainer.deterministic true` and `--seed_everything` change process-wide state: undo it."""
    for name in ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "")  # records the original value (or its absence) for the undo
        monkeypatch.delenv(name)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def tensors_equal(a: object, b: object, where: str = "") -> list[str]:
    """Where two nested checkpoint structures differ: bit for bit for tensors, == for the rest."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in tensors_equal(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tensors_equal(x, y, f"{where}/{i}")]
    return [] if a == b else [where]


@pytest.mark.slow
def test_same_seed_gives_bit_identical_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            restore_global_state: None) -> None:
    data = tmp_path / "data"
    write_mnist_idx(data, n_train=REPEAT_TRAIN, n_test=16)
    runs = []
    for name in ("first", "second"):
        run = tmp_path / name
        run.mkdir()
        monkeypatch.chdir(run)
        code, err = run_in_process(
            "fit", "--config", str(RECIPE), "--data.root", str(data), "--data.val_size", str(REPEAT_VAL),
            "--data.batch_size", "10", "--trainer.max_epochs", str(REPEAT_EPOCHS), "--seed_everything", "7",
            "--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1", "--model.iw_samples", "4",
            "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=tests.test_resume.RecordRun",
        )
        assert code == 0, err
        runs.append(run)

    first, second = (torch.load(run / "final.ckpt", weights_only=True) for run in runs)
    assert first["global_step"] == REPEAT_EPOCHS * (REPEAT_TRAIN - REPEAT_VAL) // 10
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for key in first["state_dict"]:
        assert torch.equal(first["state_dict"][key], second["state_dict"][key]), key
    assert tensors_equal(first["optimizer_states"], second["optimizer_states"]) == []

    metrics = [(run / "runs" / "mnist_mlp" / "version_0" / "metrics.csv").read_text() for run in runs]
    assert metrics[0].count("\n") > first["global_step"]  # a row per step, and the validation rows
    assert "val/elbo" in metrics[0].splitlines()[0] and "train/loss_step" in metrics[0].splitlines()[0]
    assert metrics[0] == metrics[1]

    # The split of both runs is the DataModule's own (its seed 0), whatever seed_everything says.
    dm = MNISTDataModule(str(data), val_size=REPEAT_VAL)
    dm.setup("fit")
    for run in runs:
        split = torch.load(run / "split.pt", weights_only=True)
        assert torch.equal(split["train"], dm.train_indices) and torch.equal(split["val"], dm.val_indices)


def simulate_process(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int) -> None:
    """Make ``torch.distributed`` answer as process ``rank`` of ``world_size`` would after DDP starts."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world_size)


def test_split_does_not_depend_on_rank_or_world_size(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, n_train=200, n_test=16)
    splits = {}
    for rank, world_size in ((0, 1), (0, 2), (1, 2), (3, 4)):
        with pytest.MonkeyPatch.context() as mp:
            simulate_process(mp, rank, world_size)
            dm = MNISTDataModule(str(tmp_path), batch_size=8, val_size=40, seed=3)
            dm.setup("fit")
            # The simulation reaches the data pipeline: the training batches are this rank's share.
            assert dm.train_dataloader().sampler.rank_world() == (rank, world_size)
        splits[rank, world_size] = (dm.train_indices, dm.val_indices)
    train, val = splits[0, 1]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(200)) and len(val) == 40
    for key, (other_train, other_val) in splits.items():
        assert torch.equal(other_train, train) and torch.equal(other_val, val), key
    # ...and the seed does matter.
    other = MNISTDataModule(str(tmp_path), val_size=40, seed=4)
    other.setup("fit")
    assert not torch.equal(other.val_indices, val)
