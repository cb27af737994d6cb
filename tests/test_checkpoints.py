"""The recipes' checkpoints, and ``--ckpt_path last`` / ``best`` across runs."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.test_cli import run_cli
from vaezoo.callbacks import LatestCheckpoint
from vaezoo.data.mnist import MNISTDataModule
from vaezoo.models import VAE

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "mnist_mlp.yaml"
# 64 training images - 16 for validation = 6 steps of 8 per epoch
FAST = ["--data.val_size", "16", "--data.batch_size", "8", "--model.iw_samples", "2", "--images.every_n_epochs", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]



def test_latest_checkpoint_saves_every_n_steps_and_at_every_epoch_end(tiny_mnist, tmp_path: Path) -> None:
    saved: list[int] = []

    class Spy(L.Callback):
        """Lightning calls every callback's hook with each checkpoint it writes."""

        def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
            saved.append(checkpoint["global_step"])

    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)  # 6 steps per epoch
    trainer = L.Trainer(max_epochs=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[LatestCheckpoint(every_n_train_steps=4, dirpath=str(tmp_path / "ckpt")), Spy()])
    trainer.fit(VAE(latent_dim=4, iw_samples=None), dm)
    assert saved == [4, 6, 8, 12]  # steps 4 and 8, and the ends of epochs 0 and 1 (steps 6 and 12)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["last.ckpt", "latest-epoch=1-step=12.ckpt"]  # one state kept, and the link to it
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 12


def test_fit_with_ckpt_path_last_resumes_the_newest_run(data: Path, capsys) -> None:
    code, _, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                           "--trainer.max_epochs", "1", "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    first = Path("runs/mnist_mlp/version_0/checkpoints")
    assert sorted(p.name for p in first.iterdir()) == ["best-epoch=0-step=6.ckpt", "last.ckpt",
                                                       "latest-epoch=0-step=6.ckpt"]
    code, out, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                             "--trainer.max_epochs", "2", "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert f"vaezoo: --ckpt_path last: {(first / 'latest-epoch=0-step=6.ckpt').resolve()}" in out
    final = torch.load("runs/mnist_mlp/version_1/checkpoints/last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 12)  # one more epoch, not two


def test_first_fit_with_ckpt_path_last_starts_from_scratch_and_says_so(data: Path, capsys) -> None:
    code, out, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                             "--trainer.max_epochs", "1", "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert "vaezoo: --ckpt_path last: no checkpoint of a run with these settings yet, training from the start" in out


@pytest.mark.parametrize("keyword", ["last", "best"])
def test_evaluating_last_or_best_before_any_fit_is_a_clear_error(keyword: str, data: Path, capsys) -> None:
    code, _, err = run_cli("test", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                           "--ckpt_path", keyword, capsys=capsys)
    assert code == 2
    expected = {"last": "there is no checkpoint of a run with these model and data settings in",
                "best": "no best checkpoint of a run with these model and data settings is recorded in"}[keyword]
    assert f"vaezoo: error: --ckpt_path {keyword}: {expected} runs/mnist_mlp/*/checkpoints" in err
    assert "Traceback" not in err


def test_test_with_ckpt_path_best_finds_the_best_of_the_newest_run(data: Path, capsys) -> None:
    code, _, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                           "--trainer.max_epochs", "2", capsys=capsys)
    assert code == 0, err
    last = torch.load("runs/mnist_mlp/version_0/checkpoints/last.ckpt", weights_only=True)
    (best,) = [s["best_model_path"] for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")
               and s["monitor"] == "val/elbo"]
    code, out, err = run_cli("test", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                             "--ckpt_path", "best", capsys=capsys)
    assert code == 0, err
    assert f"vaezoo: --ckpt_path best: {best}" in out and "test/elbo" in out
    saved = yaml.safe_load(Path("runs/mnist_mlp/version_1/config.yaml").read_text())
    assert saved["ckpt_path"] == best  # so that `vaezoo compare` ties the test run to its fit
    assert os.path.basename(best).startswith("best-epoch=")


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (lambda: __import__("vaezoo").BetaVAE(latent_dim=4, beta=4.0, iw_samples=None),
         r"variant vaezoo.models.base.VAE \(checkpoint\) vs vaezoo.models.beta.BetaVAE \(config\)"),
        (lambda: VAE(latent_dim=6, iw_samples=None), r"latent_dim 4 \(checkpoint\) vs 6 \(config\)"),
    ],
    ids=["variant", "latent_dim"],
)
def test_checkpoint_of_another_variant_or_shape_is_named(other, expected: str, tiny_mnist, tmp_path: Path) -> None:
    from vaezoo.errors import VAEZooError

    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    kwargs = dict(max_steps=1, limit_val_batches=0, limit_test_batches=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = L.Trainer(**kwargs)
    trainer.fit(VAE(latent_dim=4, iw_samples=None), dm)
    trainer.save_checkpoint(tmp_path / "vanilla.ckpt")
    with pytest.raises(VAEZooError, match=r"the checkpoint does not fit the model of this config: " + expected):
        L.Trainer(**kwargs).test(other(), dm, ckpt_path=tmp_path / "vanilla.ckpt", weights_only=True)
