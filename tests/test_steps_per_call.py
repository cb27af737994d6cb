"""``--model.steps_per_call k``: k optimiser steps per training step give what k training steps give.

Each test trains the same recipe twice from the same seed, with k = 1 and k > 1, and compares what a user
sees: the weights, ``global_step``, the checkpoints' steps, every logged row (step column included) and the
LR schedule. Binarisation is static: dynamic binarisation draws a group's pixels in one call, before its
steps' reparameterisation draws, so the random numbers come in another order (the same distribution).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def fit(root: Path, out: Path, k: int | str, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root),
        "--data.batch_size", "8", "--data.val_size", "16", "--data.binarize", "static", "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "2", "--trainer.logger.init_args.save_dir", str(out), "--images.every_n_epochs", "0",
        "--model.iw_samples", "null", "--trainer.enable_progress_bar", "false", "--model.steps_per_call", str(k),
        *extra, capsys=capsys,
    )
    assert code == 0, err
    return out / "mnist_mlp" / "version_0"


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def final_state(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt


def test_k_steps_per_call_trains_exactly_as_k_training_steps(tiny_mnist, tmp_path: Path, capsys) -> None:
    root, _ = tiny_mnist
    scheduler = ["--model.lr_scheduler.class_path", "torch.optim.lr_scheduler.StepLR",
                 "--model.lr_scheduler.init_args.step_size", "1", "--model.lr_scheduler.init_args.gamma", "0.5"]
    one = fit(root, tmp_path / "k1", 1, capsys, *scheduler)
    two = fit(root, tmp_path / "k2", 2, capsys, *scheduler)
    a, b = final_state(one), final_state(two)
    assert a["global_step"] == b["global_step"] == 12  # 48 training images, batches of 8, 2 epochs
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"] == 0.00025
    assert rows(one) == rows(two)  # every logged value at the same step: train steps, epoch means, validation
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == sorted(p.name for p in (two / "checkpoints").iterdir())


def test_bf16_mixed_k_steps_per_call_trains_as_k_training_steps(tiny_mnist, tmp_path: Path, capsys) -> None:
    """Under autocast too: each optimiser step runs the same bf16 ops on the same batch."""
    root, _ = tiny_mnist
    one = fit(root, tmp_path / "k1", 1, capsys, "--trainer.precision", "bf16-mixed")
    two = fit(root, tmp_path / "k2", 2, capsys, "--trainer.precision", "bf16-mixed")
    a, b = final_state(one), final_state(two)
    assert a["global_step"] == b["global_step"] == 12
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert rows(one) == rows(two)


def test_a_group_that_steps_over_an_interval_is_refused(tiny_mnist, tmp_path: Path, capsys) -> None:
    root, _ = tiny_mnist
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root), "--data.batch_size", "8",
        "--data.val_size", "16", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "5",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.steps_per_call", "2", capsys=capsys,
    )
    assert code != 0
    assert "steps_per_call 2 does not divide --trainer.log_every_n_steps = 5" in err and "steps_per_call 1" in err


@pytest.mark.parametrize(("option", "message"), [
    (["--trainer.limit_train_batches", "4"], "--trainer.limit_train_batches 4 (it would count groups"),
    (["--trainer.limit_train_batches", "0.5"], "--trainer.limit_train_batches 0.5 (it would count groups"),
    (["--trainer.accumulate_grad_batches", "2"], "--trainer.accumulate_grad_batches 2 (gradient accumulation)"),
])
def test_settings_whose_meaning_would_change_are_refused(tiny_mnist, tmp_path: Path, capsys, option, message) -> None:
    root, _ = tiny_mnist
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root), "--data.batch_size", "8",
        "--data.val_size", "16", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.steps_per_call", "2", *option, capsys=capsys,
    )
    assert code != 0
    assert message in err and "--model.steps_per_call 1" in err, err


def test_gradient_clipping_clips_each_step_of_a_group_as_k_1(tiny_mnist, tmp_path: Path, capsys) -> None:
    """Lightning clips only under automatic optimisation; groups clip each step where it would, before the step."""
    root, _ = tiny_mnist
    clip = ["--trainer.gradient_clip_val", "0.05"]
    one, two = fit(root, tmp_path / "k1", 1, capsys, *clip), fit(root, tmp_path / "k2", 2, capsys, *clip)
    free = fit(root, tmp_path / "free", 2, capsys)
    a, b, c = final_state(one), final_state(two), final_state(free)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert any(not torch.equal(t, c["state_dict"][n]) for n, t in a["state_dict"].items())  # it clipped
    assert rows(one) == rows(two)


def test_auto_takes_the_largest_k_that_fits_every_interval(tiny_mnist, tmp_path: Path, capsys) -> None:
    """auto: log every 4 steps and checkpoints every 200 (the recipe's): k = 4, trained exactly as k = 1."""
    root, _ = tiny_mnist
    one = fit(root, tmp_path / "k1", 1, capsys, "--trainer.log_every_n_steps", "4")
    auto = fit(root, tmp_path / "auto", "auto", capsys, "--trainer.log_every_n_steps", "4")
    a, b = final_state(one), final_state(auto)
    assert (a["vaezoo_steps_per_call"], b["vaezoo_steps_per_call"]) == (1, 4)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert rows(one) == rows(auto)


class CountSteps(L.Callback):
    """A user's callback that counts optimiser steps in a per-step hook (it would count groups with k > 1)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        pass


class CountGroups(CountSteps):
    """The same hook, in a callback that says it handles groups (it would read ``pl_module.group_size``)."""

    steps_per_call_aware = True


@pytest.mark.parametrize("option", [
    ["--trainer.callbacks+=tests.test_steps_per_call.CountSteps"],
    ["--trainer.accumulate_grad_batches", "2"],
    ["--trainer.limit_train_batches", "4"],
    ["--trainer.log_every_n_steps", "7"],  # 1 is the only k that divides 7 and 200
])
def test_auto_takes_one_where_groups_would_change_a_meaning(tiny_mnist, tmp_path: Path, capsys, option) -> None:
    root, _ = tiny_mnist
    assert final_state(fit(root, tmp_path, "auto", capsys, *option))["vaezoo_steps_per_call"] == 1


def test_auto_groups_with_a_callback_that_says_it_handles_groups(tiny_mnist, tmp_path: Path, capsys, recwarn) -> None:
    root, _ = tiny_mnist
    run = fit(root, tmp_path, "auto", capsys, "--trainer.callbacks+=tests.test_steps_per_call.CountGroups")
    assert final_state(run)["vaezoo_steps_per_call"] == 2  # the largest k dividing log_every_n_steps 2
    assert not [w for w in recwarn if "per-step hooks" in str(w.message)]


def test_an_explicit_k_warns_of_a_callback_with_per_step_hooks(tiny_mnist, tmp_path: Path, capsys) -> None:
    root, _ = tiny_mnist
    with pytest.warns(UserWarning, match="the per-step hooks of CountSteps run once per group of 2"):
        run = fit(root, tmp_path, 2, capsys, "--trainer.callbacks+=tests.test_steps_per_call.CountSteps")
    assert final_state(run)["vaezoo_steps_per_call"] == 2


def test_an_epoch_end_checkpoint_resumes_with_another_k_at_its_step(tiny_mnist, tmp_path: Path, capsys) -> None:
    """global_step is read from the automatic or the manual step count: both are kept in step (compat 7)."""
    root, _ = tiny_mnist
    first = fit(root, tmp_path / "k1", 1, capsys, "--trainer.max_epochs", "1")
    assert final_state(first)["global_step"] == 6
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root),
        "--data.batch_size", "8", "--data.val_size", "16", "--data.binarize", "static", "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "k2"),
        "--images.every_n_epochs", "0", "--model.iw_samples", "null", "--trainer.enable_progress_bar", "false",
        "--model.steps_per_call", "2", "--ckpt_path", str(first / "checkpoints" / "last.ckpt"), capsys=capsys,
    )
    assert code == 0, err
    resumed = tmp_path / "k2" / "mnist_mlp" / "version_0"
    state = final_state(resumed)
    assert (state["global_step"], state["epoch"], state["vaezoo_steps_per_call"]) == (12, 1, 2)
    steps = sorted({int(r["step"]) for r in rows(resumed) if r.get("train/loss_step")})
    assert steps == [7, 9, 11]  # the second epoch's logging steps (every 2), as a run never stopped logs them


class KillAtStep(L.Callback):
    """SIGKILLs its own process before the optimiser step that would make ``global_step`` 6: in the middle of the
    third group of k = 2, one step after the checkpoint at step 4."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:  # noqa: ANN001
        if trainer.global_step == 5:  # the group of steps 5 and 6 is half done; the last checkpoint is at step 4
            os.kill(os.getpid(), signal.SIGKILL)


class RecordGroups(L.Callback):
    """Appends ``[global_step, sum of the group's pixels]`` to ./groups.jsonl as each training step starts."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:  # noqa: ANN001
        with open("groups.jsonl", "a") as f:
            f.write(json.dumps([trainer.global_step, int(batch[0].long().sum())]) + "\n")


def groups(folder: Path) -> dict[int, int]:
    return {step: pixels for step, pixels in (json.loads(line) for line in (folder / "groups.jsonl").read_text().splitlines())}


def test_a_run_killed_in_the_middle_of_a_group_resumes_exactly(tiny_mnist, tmp_path: Path) -> None:
    """Checkpoints fall only at the ends of groups (k divides every interval): a run killed inside a group resumes
    from the last one and trains the same images at every step as the run never killed, as with k = 1
    (tests/test_resume.py: the same batches and end point; the noise draws after a resume are new ones)."""
    root, _ = tiny_mnist
    recipe = yaml.safe_load((REPO / "configs" / "mnist_mlp.yaml").read_text())
    for callback in recipe["trainer"]["callbacks"]:
        if callback["class_path"].endswith("LatestCheckpoint"):
            callback["init_args"]["every_n_train_steps"] = 2
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    args = ["fit", "--config", str(config), "--data.root", str(root), "--data.batch_size", "8", "--data.val_size", "16",
            "--data.binarize", "static",
            "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "2", "--images.every_n_epochs", "0",
            "--model.iw_samples", "null", "--trainer.enable_progress_bar", "false", "--model.steps_per_call", "2",
            "--trainer.callbacks+=tests.test_steps_per_call.RecordGroups"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "vaezoo", *args], cwd=whole, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    crash = subprocess.run([sys.executable, "-m", "vaezoo", *args, "--trainer.callbacks+=tests.test_steps_per_call.KillAtStep"],
                           cwd=killed, env=env, capture_output=True, text=True)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    before = groups(killed)
    (killed / "groups.jsonl").unlink()
    other_k = subprocess.run([sys.executable, "-m", "vaezoo", *args, "--ckpt_path", "last", "--model.steps_per_call", "1"],
                             cwd=killed, env=env, capture_output=True, text=True)
    assert other_k.returncode != 0 and "Resume it with --model.steps_per_call 2" in other_k.stderr, other_k.stderr[-3000:]
    assert not (killed / "groups.jsonl").exists()  # refused before its first step
    # auto resumes with the checkpoint's k inside an epoch, although with RecordGroups' hooks it would take 1.
    resumed = subprocess.run([sys.executable, "-m", "vaezoo", *args, "--ckpt_path", "last", "--model.steps_per_call",
                              "auto"], cwd=killed, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after, expected = groups(killed), groups(whole)
    assert sorted(expected) == list(range(0, 12, 2))  # six groups of two steps: 48 images in batches of 8, 2 epochs
    assert max(before) == 4 and min(after) == 4  # killed inside the group at step 4; resumed from its start
    assert {**before, **after} == expected  # every group the same images at the same step
    a = torch.load(whole / "runs" / "mnist_mlp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "runs" / "mnist_mlp" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"]) == (12, 1)


def test_the_progress_bar_counts_optimiser_steps(tiny_mnist, tmp_path: Path, capsys) -> None:
    """With k = 2 an epoch of 6 batches is 3 training steps; the bar still reads 6 steps of 6."""
    root, _ = tiny_mnist
    code, out, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(root),
        "--data.batch_size", "8", "--data.val_size", "16", "--data.binarize", "static", "--trainer.max_epochs", "1",
        "--trainer.log_every_n_steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--images.every_n_epochs", "0", "--model.iw_samples", "null", "--model.steps_per_call", "2", capsys=capsys,
    )
    assert code == 0, err
    bars = [line for line in (out + err).replace("\r", "\n").splitlines() if line.startswith("Epoch 0")]
    assert bars and all("/6 " in line for line in bars), bars
    assert any(" 6/6 " in line for line in bars) and not any("/3 " in line for line in bars), bars


class CountOptimizerSteps(L.Callback):
    """Counts ``on_before_optimizer_step`` calls (a hook Lightning's wrappers call) and records whether the groups
    stepped past them."""

    calls = 0
    direct: list[bool] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:  # noqa: ANN001
        CountOptimizerSteps.calls += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        CountOptimizerSteps.direct.append(pl_module._direct)


class RecordDirect(L.Callback):
    direct: list[bool] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RecordDirect.direct.append(pl_module._direct)


def test_groups_step_past_lightnings_wrappers_only_where_nothing_hooks_them(tiny_mnist, tmp_path: Path, capsys) -> None:
    """Without a hook of theirs, groups call backward() and the optimiser's step() directly (the equality tests
    above run that path); a callback with on_before_optimizer_step gets it at every optimiser step."""
    root, _ = tiny_mnist
    fit(root, tmp_path / "plain", 2, capsys, "--trainer.callbacks+=tests.test_steps_per_call.RecordDirect")
    assert RecordDirect.direct == [True]
    CountOptimizerSteps.calls, CountOptimizerSteps.direct = 0, []
    run = fit(root, tmp_path / "hooked", 2, capsys, "--trainer.callbacks+=tests.test_steps_per_call.CountOptimizerSteps")
    assert CountOptimizerSteps.direct == [False]
    assert CountOptimizerSteps.calls == final_state(run)["global_step"] == 12


@pytest.mark.parametrize(("seconds", "k"), [(0.001, 25), (0.05, 5), (0.3, 1)])
def test_auto_keeps_a_group_under_a_quarter_second(tiny_mnist, tmp_path: Path, capsys, monkeypatch, seconds, k) -> None:
    """Groups pay only where a step is short: with the recipe's intervals (50 and 200), a 50 ms step gives
    k = 5 (5 x 50 ms = 0.25 s), and a conv net's 300 ms CPU step k = 1."""
    from vaezoo.models import groups as groups_module

    monkeypatch.setattr(groups_module, "step_seconds", lambda module, batch_size, trainer: seconds)
    root, _ = tiny_mnist
    run = fit(root, tmp_path, "auto", capsys, "--trainer.log_every_n_steps", "50")
    assert final_state(run)["vaezoo_steps_per_call"] == k


def test_the_step_estimate_leaves_no_trace(tiny_mnist) -> None:
    """step_seconds runs the net without changing the random stream, the weights, BatchNorm's statistics or the mode."""
    from functools import partial

    from vaezoo.models import VAE
    from vaezoo.models import groups as groups_module
    from vaezoo.nets.conv import ConvNet

    model = VAE(net=partial(ConvNet), latent_dim=4)
    model.train()
    state = {name: t.clone() for name, t in model.state_dict().items()}

    class Trainer:
        precision_plugin = L.Trainer(logger=False, enable_progress_bar=False).precision_plugin

    torch.manual_seed(3)
    seconds = groups_module.step_seconds(model, 8, Trainer())
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4)) and seconds > 0 and model.training
    assert all(torch.equal(t, state[name]) for name, t in model.state_dict().items())


def test_a_mid_epoch_checkpoint_of_another_k_scores_after_a_fit(tiny_mnist, tmp_path: Path) -> None:
    """Only a fit resumes: after a k = 1 fit, the same module tests a checkpoint saved inside an epoch with k = 2."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vaezoo import VAE
    from vaezoo.data import MNISTDataModule

    def trainer(k_dir: str, **kwargs) -> L.Trainer:  # noqa: ANN003
        return L.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path / k_dir, log_every_n_steps=2, **kwargs)

    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8, binarize="static")  # 6 steps an epoch
    saver = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1, dirpath=str(tmp_path / "ckpt"))
    trainer("k2", callbacks=[saver]).fit(VAE(latent_dim=4, iw_samples=None, steps_per_call=2), dm)
    mid = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    assert torch.load(mid, weights_only=False)["vaezoo_steps_per_call"] == 2
    model = VAE(latent_dim=4, iw_samples=None, steps_per_call=1)
    trainer("k1", enable_checkpointing=False).fit(model, dm)
    results = trainer("k1", enable_checkpointing=False).test(model, dm, ckpt_path=mid)
    assert results and "test/elbo" in results[0]
