"""W&B with no account: offline by default, never a prompt; run names and a flat config."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaezoo import tracking
from vaezoo.errors import VAEZooError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No W&B variables, HOME (and so ~/.netrc) in tmp_path, W&B's folders in tmp_path.

    choose_mode() sets WANDB_MODE itself: setting it here first makes monkeypatch remove it again.
    """
    import wandb

    monkeypatch.setenv("WANDB_MODE", "")
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    yield tmp_path
    wandb.teardown()  # W&B keeps its settings (folders included) in a process-wide singleton


def test_no_key_and_no_mode_means_offline(no_wandb_env) -> None:
    assert not tracking.has_api_key()
    assert tracking.choose_mode() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"


@pytest.mark.parametrize("mode", ["offline", "disabled", "online"])
def test_the_users_mode_wins(mode: str, no_wandb_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.choose_mode() == mode
    assert os.environ["WANDB_MODE"] == mode


def test_online_without_a_key_is_a_clear_error(no_wandb_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(VAEZooError, match="wandb login"):
        tracking.choose_mode()


def test_a_netrc_key_means_online(no_wandb_env: Path) -> None:
    netrc = no_wandb_env / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert tracking.has_api_key()
    assert tracking.choose_mode() == "online"


CONFIG = {
    "seed_everything": 0,
    "model": {
        "class_path": "vaezoo.models.beta.BetaVAE",
        "init_args": {
            "beta": 4.0,
            "latent_dim": 10,
            "net": {"class_path": "vaezoo.ConvNet", "init_args": {"channels": [32, 64]}},
            "likelihood": {"class_path": "vaezoo.likelihoods.Bernoulli"},
        },
    },
    "data": {"class_path": "vaezoo.data.MNISTDataModule", "init_args": {"batch_size": 128}},
    "trainer": {"max_epochs": 3, "callbacks": [{"class_path": "x.Checkpoint", "init_args": {"monitor": "val/elbo"}}]},
}


def test_run_identity_comes_from_the_recipe() -> None:
    assert tracking.run_identity(CONFIG) == {
        "name": "beta-conv-mnist-z10-b4",
        "group": "mnist-beta",
        "tags": ["beta", "conv", "mnist", "bernoulli"],
    }


def test_flat_config_has_one_column_per_hyperparameter() -> None:
    assert tracking.flatten_config(CONFIG) == {
        "seed_everything": 0,
        "model": "vaezoo.models.beta.BetaVAE",
        "model.beta": 4.0,
        "model.latent_dim": 10,
        "model.net": "vaezoo.ConvNet",
        "model.net.channels": [32, 64],
        "model.likelihood": "vaezoo.likelihoods.Bernoulli",
        "data": "vaezoo.data.MNISTDataModule",
        "data.batch_size": 128,
        "trainer.max_epochs": 3,
        "trainer.callbacks.0": "x.Checkpoint",
        "trainer.callbacks.0.monitor": "val/elbo",
    }


def test_wandb_logger_by_name_on_the_command_line(capsys) -> None:
    from vaezoo.introspect import import_object

    from tests.test_cli import run_cli

    code, out, err = run_cli("fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--trainer.logger", "wandb",
                             "--print_config", capsys=capsys)
    assert code == 0, err
    import yaml

    from lightning.pytorch.loggers import WandbLogger

    assert import_object(yaml.safe_load(out)["trainer"]["logger"]["class_path"]) is WandbLogger


def test_new_user_fit_logs_offline_without_prompting(tiny_mnist, no_wandb_env: Path) -> None:
    """A new user with no account: stdin closed, no TTY; the run finishes offline and says how to sync."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_MODE")}
    env["PYTHONPATH"] = str(REPO)
    args = ["--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--config", str(REPO / "configs" / "logger" / "wandb.yaml"),
            "--data.root", str(tiny_mnist[0]), "--data.val_size", "16", "--data.batch_size", "8",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--model.iw_samples", "4"]
    done = subprocess.run([sys.executable, "-m", "vaezoo", "fit", *args], cwd=no_wandb_env, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((no_wandb_env / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = runs[0].relative_to(no_wandb_env)
    assert f"W&B logged offline (no API key) to {run}; upload it with: wandb sync {run}" in done.stdout
    media = {p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "images" / "val" / "images").glob("*.png")}
    assert {"reconstructions", "samples", "interpolations", "traversals"} <= media


def test_wandb_runs_keep_their_own_config_file_and_a_csv_record(tiny_mnist, no_wandb_env: Path, monkeypatch, capsys) -> None:
    from tests.test_cli import run_cli

    monkeypatch.chdir(no_wandb_env)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--config", str(REPO / "configs" / "logger" / "wandb.yaml"),
            "--data.root", str(tiny_mnist[0]), "--data.val_size", "16", "--data.batch_size", "8",
            "--trainer.max_epochs", "1", "--model.iw_samples", "4", "--images.every_n_epochs", "0"]
    for latent in ("3", "5"):
        code, _, err = run_cli("fit", *args, "--model.latent_dim", latent, capsys=capsys)
        assert code == 0, err
    import yaml

    configs = sorted((no_wandb_env / "runs" / "vaezoo").glob("*/config.yaml"))
    assert sorted(yaml.safe_load(c.read_text())["model"]["init_args"]["latent_dim"] for c in configs) == [3, 5]
    assert not (no_wandb_env / "runs" / "config.yaml").exists()
    for run in (c.parent for c in configs):  # each W&B run folder also holds the run's local CSV record ...
        val = [row for row in csv.DictReader((run / "metrics.csv").open()) if row.get("val/elbo")]
        assert [row["epoch"] for row in val] == ["0"]
        # ... of the same run, which W&B logged as before, offline: its log is named by the same run id.
        (log,) = (no_wandb_env / "runs" / "wandb").glob(f"offline-run-*-{run.name}/run-{run.name}.wandb")
        assert log.stat().st_size > 0


def test_under_wandb_last_never_resumes_another_recipe(tiny_mnist, no_wandb_env: Path, monkeypatch, capsys) -> None:
    """Every recipe logs to runs/vaezoo/<run id> under W&B: `last` must pick a run of this recipe only."""
    from tests.test_cli import run_cli

    monkeypatch.chdir(no_wandb_env)
    monkeypatch.setenv("WANDB_MODE", "offline")
    common = ["--config", str(REPO / "configs" / "logger" / "wandb.yaml"), "--data.root", str(tiny_mnist[0]),
              "--data.val_size", "16", "--data.batch_size", "8", "--model.iw_samples", "4", "--images.every_n_epochs", "0",
              "--trainer.enable_progress_bar", "false"]
    mlp = ["fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), *common]
    beta = ["fit", "--config", str(REPO / "configs" / "mnist_beta.yaml"), *common]
    code, _, err = run_cli(*mlp, "--trainer.max_epochs", "1", capsys=capsys)
    assert code == 0, err
    (mlp_run,) = (no_wandb_env / "runs" / "vaezoo").glob("*/checkpoints/last.ckpt")
    code, out, err = run_cli(*beta, "--trainer.max_epochs", "1", "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert "no checkpoint of a run with these settings yet, training from the start" in out
    assert str(mlp_run.parent) not in out.split("vaezoo: fit done")[-1]  # the beta run did not resume it
    # ... and the mlp recipe resumes its own run, not the newer beta one.
    code, out, err = run_cli(*mlp, "--trainer.max_epochs", "2", "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert f"vaezoo: --ckpt_path last: {mlp_run.parent.resolve()}" in out
