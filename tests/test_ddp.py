"""Multi-process DDP on the CPU (gloo), through the real `vaezoo` command in subprocesses.

Every run uses configs/trainer/ddp_cpu.yaml (2 processes) or one process, on tiny MNIST files whose
training label is the image's index, so a recorded batch of labels names exactly the images a
process trained on. What is checked:

- default suite: a 2-process fit of the mnist_mlp recipe finishes, and, read from what each process
  actually trained on, the ranks' shares of an epoch are disjoint, of equal length, cover the
  epoch's images minus the dropped remainder, and are reshuffled the next epoch;
- slow: 2 processes x batch 8 train the same model as 1 process x batch 16 (same 16 images per step,
  averaged gradients), and validation metrics are synced over the whole val set (1 and 2 processes
  give the same numbers on the same checkpoint, with ranks holding 25 and 24 images).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.data_files import write_idx, write_mnist_idx
from vaezoo.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "mnist_mlp.yaml"
DDP_CPU = REPO / "configs" / "trainer" / "ddp_cpu.yaml"
TIMEOUT_S = 300  # per run; a 2-process run takes ~20 s on an idle 2-core machine, mostly imports

N_TRAIN, VAL_SIZE = 250, 64
N_FIT = N_TRAIN - VAL_SIZE  # 186 training images: 11 global batches of 16, 10 dropped per epoch
GLOBAL_BATCH = 16
BATCHES_PER_EPOCH = N_FIT // GLOBAL_BATCH
EPOCHS = 2
COMMON = [
    "--config", str(RECIPE), "--data.val_size", str(VAL_SIZE), "--trainer.max_epochs", str(EPOCHS),
    "--model.iw_samples", "4", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.callbacks+=ddp_probe.RecordBatches",
]

# Imported by the subprocesses from PYTHONPATH: nothing here is part of vaezoo.
PROBE = '''
"""A batch recorder and a VAE whose noise does not depend on which process holds an image."""

import json
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from vaezoo.latents.gaussian import DiagonalGaussian, GaussianLatent
from vaezoo.models.base import VAE


class RecordBatches(L.Callback):
    """Writes the labels of every batch this process trained and validated on (not the sanity check)
    to batches/<stage>-rank<r>.json as {"world_size": W, "train": [[epoch, labels]], "val": [...]}."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = {"train": [], "val": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"].append([trainer.current_epoch, batch[1].tolist()])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.seen["val"].append([trainer.current_epoch, batch[1].tolist()])

    def teardown(self, trainer, pl_module, stage):
        path = Path("batches") / f"{getattr(stage, 'value', stage)}-rank{trainer.global_rank}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"world_size": trainer.world_size, **self.seen}))


class KeyedGaussian(DiagonalGaussian):
    """q(z | x) whose eps for image i comes from a generator seeded by (step, key_i)."""

    def __init__(self, mean: Tensor, logvar: Tensor, keys: Tensor, step: int) -> None:
        super().__init__(mean, logvar)
        self.keys, self.step = keys, step  # (B,) int64 on the CPU, the global step

    def rsample(self, k=None, generator=None):
        n, latent = 1 if k is None else k, self.mean.shape[1]
        eps = torch.stack([
            torch.randn(n, latent, generator=torch.Generator().manual_seed(self.step * 1_000_003 + key))
            for key in self.keys.tolist()
        ], dim=1).to(self.mean.device, self.mean.dtype)  # (n, B, L)
        return self.mean + torch.exp(0.5 * self.logvar) * (eps[0] if k is None else eps)


class KeyedLatent(GaussianLatent):
    """The Gaussian latent, with the keyed posterior while a batch's keys are set."""

    keys = None
    step = 0

    def posterior(self, h):
        q = super().posterior(h)
        return q if self.keys is None else KeyedGaussian(q.mean, q.logvar, self.keys, self.step)


class KeyedNoiseVAE(VAE):
    """The vanilla VAE, but an image's eps ~ N(0, I) is drawn from its label (here its index) and the
    step, not from the process's RNG stream: the same draw whichever process and batch slot hold it."""

    def build_latent(self, latent_dim, prior):
        return KeyedLatent(latent_dim, prior)

    def _step(self, batch, stage):  # each optimiser step's batch, also inside a group (steps_per_call > 1)
        self.latent.keys, self.latent.step = batch[1].cpu(), self.global_step
        try:
            return super()._step(batch, stage)
        finally:
            self.latent.keys = None
'''


def write_indexed_mnist(root: Path) -> None:
    """Official-format MNIST files whose training label is the image's index (0..249, fits uint8).

    Training image i is white over its first (131 i mod 785) pixels in row-major order and black
    after: all different, already binary (so any binarisation keeps them), and with per-image ELBO and
    MSE far apart, so that a metric averaged over the wrong images shows.
    """
    write_mnist_idx(root, n_train=N_TRAIN, n_test=32)
    raw = root / "MNIST" / "raw"
    fill = np.arange(N_TRAIN) * 131 % 785
    images = np.where(np.arange(784) < fill[:, None], 255, 0).reshape(N_TRAIN, 28, 28)
    write_idx(raw / "train-images-idx3-ubyte", images.astype(np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(N_TRAIN, dtype=np.uint8))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the indexed MNIST under data/ and the probe module under probe/."""
    root = tmp_path_factory.mktemp("ddp")
    write_indexed_mnist(root / "data")
    (root / "probe").mkdir()
    (root / "probe" / "ddp_probe.py").write_text(textwrap.dedent(PROBE))
    return root


def _env(workspace: Path) -> dict[str, str]:
    """This environment minus any launcher's variables (a CI job under torchrun or SLURM would
    otherwise make Lightning join that job), one thread per process (2 processes share 2 cores; it
    also fixes the CPU kernels' summation order), and the probe and this checkout importable."""
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(workspace / "probe"), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"
    return env


def vaezoo(workspace: Path, name: str, *args: str) -> Path:
    """Run `python -m vaezoo ARGS` in workspace/<name>; fail the test with its output unless it exits 0.

    The command runs in its own session so that a hang kills both DDP processes, not only rank 0.

    Returns:
        The run's folder (its log lands in runs/mnist_mlp/version_0, its batch records in batches/).
    """
    cwd = workspace / name
    cwd.mkdir()
    cmd = [sys.executable, "-m", "vaezoo", *args, "--data.root", str(workspace / "data")]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(workspace), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`vaezoo {' '.join(args)}` still running after {TIMEOUT_S} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"`vaezoo {' '.join(args)}` exited {proc.returncode}:\n{out[-4000:]}"
    return cwd


def val_metrics(run: Path, key: str = "val/elbo") -> dict[int, dict[str, float]]:
    """{epoch: {"val/elbo": ..., ...}} from the run's metrics.csv (the rows that hold ``key``, and
    their values under the same prefix: ``train/elbo_epoch`` gives the train epoch means)."""
    prefix = key.split("/")[0] + "/"
    with open(run / "runs" / "mnist_mlp" / "version_0" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(key)]
    return {int(row["epoch"]): {k: float(v) for k, v in row.items() if k.startswith(prefix) and v} for row in rows}


def batches(run: Path, stage: str, split: str, world_size: int) -> list[dict[int, list[list[int]]]]:
    """Per rank: {epoch: [labels of each batch, in order]} that the process recorded."""
    per_rank = []
    for rank in range(world_size):
        record = json.loads((run / "batches" / f"{stage}-rank{rank}.json").read_text())
        assert record["world_size"] == world_size
        epochs: dict[int, list[list[int]]] = {}
        for epoch, labels in record[split]:
            epochs.setdefault(epoch, []).append(labels)
        per_rank.append(epochs)
    return per_rank


def assert_every_image_once(shares: list[list[list[int]]], expected: set[int]) -> None:
    """The ranks' batches hold every image of ``expected`` exactly once between them."""
    seen = [label for share in shares for batch in share for label in batch]
    assert len(seen) == len(set(seen)), "an image was seen twice"
    assert set(seen) == expected


# ----- default suite: the trainer fragments compose, and one 2-process fit of the recipe --------------------------------------------------


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("ddp_cpu.yaml", {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}),
        ("gpus.yaml", {"accelerator": "gpu", "devices": -1, "strategy": "ddp", "precision": "16-mixed"}),
    ],
)
def test_trainer_fragment_composes_with_a_recipe(fragment: str, expected: dict, capsys) -> None:
    """The fragment changes only the trainer's hardware keys; the recipe keeps everything else."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["vaezoo"])
        with pytest.raises(SystemExit) as exit_info:  # --print_config exits 0 after printing
            main(["fit", "--config", str(RECIPE), "--config", str(REPO / "configs" / "trainer" / fragment),
                  "--print_config"])
    assert exit_info.value.code in (0, None)
    composed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load(RECIPE.read_text())
    assert {k: composed["trainer"][k] for k in expected} == expected
    assert composed["trainer"]["max_epochs"] == recipe["trainer"]["max_epochs"]
    assert composed["data"]["init_args"]["batch_size"] == recipe["data"]["init_args"]["batch_size"]
    assert set(yaml.safe_load((REPO / "configs" / "trainer" / fragment).read_text())) == {"trainer"}


def test_ddp_fit_gives_each_process_a_disjoint_reshuffled_share(workspace: Path) -> None:
    run = vaezoo(workspace, "fit_ddp", "fit", *COMMON, "--config", str(DDP_CPU), "--data.batch_size", "8")

    # The recipe ran to the end, logged once (rank 0 only: one version folder) and synced val metrics.
    log_dirs = sorted(p.name for p in (run / "runs" / "mnist_mlp").iterdir())
    assert log_dirs == ["version_0"]
    assert (run / "runs" / "mnist_mlp" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    metrics = val_metrics(run)
    assert sorted(metrics) == list(range(EPOCHS))
    assert all(math.isfinite(m["val/elbo"]) for m in metrics.values())

    # Validation: the ranks split the val set, every val image once; the rest is the training set.
    val = batches(run, "fit", "val", 2)
    val_set = {label for rank in val for batch in rank[0] for label in batch}
    assert_every_image_once([rank[0] for rank in val], val_set)
    assert len(val_set) == VAL_SIZE
    train_set = set(range(N_TRAIN)) - val_set

    train = batches(run, "fit", "train", 2)
    for epoch in range(EPOCHS):
        shares = [rank[epoch] for rank in train]
        # The same number of full batches on both ranks: no rank waits on an all-reduce for ever.
        assert [len(share) for share in shares] == [BATCHES_PER_EPOCH] * 2
        assert all(len(batch) == 8 for share in shares for batch in share)
        # Disjoint shares (assert_every_image_once) covering the epoch minus a remainder < one global batch.
        seen = {label for share in shares for batch in share for label in batch}
        assert_every_image_once(shares, seen)
        assert seen <= train_set
        assert len(train_set - seen) == N_FIT % GLOBAL_BATCH
    # A fresh permutation every epoch, on each rank.
    for r, rank in enumerate(train):
        assert rank[0] != rank[1], f"rank {r} trained on epoch 1 in epoch 0's order"


# ----- slow: the same model as one process, and metrics synced over the whole val set -----------------

KEYED = ["--model", "ddp_probe.KeyedNoiseVAE", "--data.binarize", "static"]


@pytest.fixture(scope="module")
def keyed_ddp_fit(workspace: Path) -> Path:
    """2 processes x batch 8, noise keyed by image and step."""
    return vaezoo(workspace, "keyed_ddp", "fit", *COMMON, *KEYED, "--config", str(DDP_CPU), "--data.batch_size", "8")


@pytest.mark.slow
def test_ddp_fit_matches_one_process_on_the_same_global_batch(workspace: Path, keyed_ddp_fit: Path) -> None:
    """2 x 8 and 1 x 16 train the same model: same images per step, DDP averages the two gradients.

    Why the tolerance can be tight: the only randomness of this training is then seeded identically
    (weights by seed_everything, static binarisation by data.seed, eps by image and step), so the runs
    differ only by the summation order of the two half-batch gradients (and of 8- vs 16-row matrix
    products). Measured: |delta val/elbo| <= 1e-4 nats after 22 steps; a wrong global batch (1 x 8)
    moves it by 0.6 nats at the first epoch. With the recipe's own noise (eps from each process's RNG
    stream), the runs agree only in distribution, which no tolerance tighter than the metric's
    sampling noise could check.
    """
    single = vaezoo(workspace, "keyed_single", "fit", *COMMON, *KEYED, "--data.batch_size", "16")

    # The premise: rank 0 and rank 1's k-th batches make up the 1-process k-th batch, every step.
    ddp, one = batches(keyed_ddp_fit, "fit", "train", 2), batches(single, "fit", "train", 1)[0]
    for epoch in range(EPOCHS):
        assert len(one[epoch]) == BATCHES_PER_EPOCH
        for k, batch in enumerate(one[epoch]):
            assert sorted(ddp[0][epoch][k] + ddp[1][epoch][k]) == sorted(batch), f"epoch {epoch}, batch {k}"

    ddp_metrics, one_metrics = val_metrics(keyed_ddp_fit), val_metrics(single)
    assert sorted(ddp_metrics) == sorted(one_metrics) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        a, b = ddp_metrics[epoch], one_metrics[epoch]
        assert a["val/elbo"] == pytest.approx(b["val/elbo"], abs=1e-3), f"epoch {epoch}"  # nats per image
        assert a["val/mse"] == pytest.approx(b["val/mse"], abs=1e-5), f"epoch {epoch}"
    # And training did move the model, so agreement is not that of two untrained nets.
    assert ddp_metrics[1]["val/elbo"] > ddp_metrics[0]["val/elbo"] + 10
    # The train epoch means: each process sums its own half on its device, all-reduced once per epoch.
    ddp_train, one_train = val_metrics(keyed_ddp_fit, "train/elbo_epoch"), val_metrics(single, "train/elbo_epoch")
    assert sorted(ddp_train) == sorted(one_train) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        for term in ("elbo", "recon", "kl", "loss"):
            a, b = ddp_train[epoch][f"train/{term}_epoch"], one_train[epoch][f"train/{term}_epoch"]
            assert a == pytest.approx(b, abs=1e-3), f"train/{term}_epoch, epoch {epoch}"


@pytest.mark.slow
def test_ddp_validation_metrics_cover_the_whole_val_set(workspace: Path, keyed_ddp_fit: Path) -> None:
    """One checkpoint validated by 1 and 2 processes gives the same val metrics (torchmetrics sync).

    49 val images in batches of 8: rank 0 holds 25 (4 batches), rank 1 24 (3 batches), so the ranks
    also run different numbers of validation steps. Every term is deterministic given the checkpoint
    (mse and psnr use posterior means, the ELBO's eps is keyed by image), so they must agree to float
    rounding (relative 1e-5); a mean over one rank's share, or a mean of the two ranks' means, would not.
    """
    ckpt = keyed_ddp_fit / "runs" / "mnist_mlp" / "version_0" / "checkpoints" / "last.ckpt"
    args = ["validate", *COMMON, *KEYED, "--data.val_size", "49", "--data.batch_size", "8", "--ckpt_path", str(ckpt)]
    two = vaezoo(workspace, "validate_ddp", *args, "--config", str(DDP_CPU))
    one = vaezoo(workspace, "validate_single", *args)

    shares = [rank[0] for rank in batches(two, "validate", "val", 2)]
    assert [sum(map(len, share)) for share in shares] == [25, 24]
    val_set = {label for batch in batches(one, "validate", "val", 1)[0][0] for label in batch}
    assert len(val_set) == 49
    assert_every_image_once(shares, val_set)

    a, b = val_metrics(two)[0], val_metrics(one)[0]
    assert set(a) == set(b) >= {"val/elbo", "val/recon", "val/kl", "val/mse", "val/psnr", "val/active_units"}
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_ddp_with_several_steps_per_call_trains_as_one(workspace: Path, keyed_ddp_fit: Path) -> None:
    """--model.steps_per_call 2 under 2-process DDP: each optimiser step all-reduces its own gradients, so the
    model, its steps and its logged metrics are those of steps_per_call 1 (noise keyed by image and step)."""
    grouped = vaezoo(workspace, "keyed_ddp_k2", "fit", *COMMON, *KEYED, "--config", str(DDP_CPU),
                     "--data.batch_size", "8", "--model.steps_per_call", "2")
    last = Path("runs") / "mnist_mlp" / "version_0" / "checkpoints" / "last.ckpt"
    a = torch.load(keyed_ddp_fit / last, map_location="cpu", weights_only=True)
    b = torch.load(grouped / last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == EPOCHS * BATCHES_PER_EPOCH
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert val_metrics(keyed_ddp_fit) == val_metrics(grouped)
    assert val_metrics(keyed_ddp_fit, "train/elbo_epoch") == val_metrics(grouped, "train/elbo_epoch")
