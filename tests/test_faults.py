"""Faults during training: a non-finite loss stops with the step and the term, or is skipped on request.

What is checked besides: ``skip`` stops as ``stop`` does once more than ``max_skipped_fraction`` of
an epoch's batches are skipped; no checkpoint is written while the metric a ModelCheckpoint monitors
is NaN; and every message says what is true of the run's checkpoints (the newest, or none yet).
"""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.test_cli import REPO, run_cli
from vaezoo import VAE
from vaezoo.data import MNISTDataModule
from vaezoo.errors import VAEZooError


class PoisonedVAE(VAE):
    """Turns the KL into NaN for training batch number ``poison_step`` (counted from 0 over the fit: the
    global step), or for every training batch from there on.

    Args:
        poison_step: The first poisoned training batch; -1: none.
        poison_every: Poison every training batch from ``poison_step`` on, not only that one.
        poison_eval: Poison every validation and test batch too.
    """

    def __init__(self, poison_step: int = -1, poison_every: bool = False, poison_eval: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_step = poison_step
        self.poison_every = poison_every
        self.poison_eval = poison_eval
        self.train_batches = 0

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        if self.training:
            n, self.train_batches = self.train_batches, self.train_batches + 1
            poisoned = 0 <= self.poison_step == n or (self.poison_every and 0 <= self.poison_step <= n)
        else:
            poisoned = self.poison_eval
        if poisoned:
            out.latent.kl = out.latent.kl * float("nan")
        return out


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    settings = dict(max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    return L.Trainer(**{**settings, **kwargs})


def _dm(tiny_mnist) -> MNISTDataModule:
    return MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)  # 6 training batches per epoch


def test_nan_loss_stops_naming_the_step_and_the_term(tiny_mnist, tmp_path: Path) -> None:
    model = PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None)
    with pytest.raises(VAEZooError, match=r"became nan at step 3 \(epoch 0\): kl went non-finite.*--model.nonfinite skip"):
        _trainer(tmp_path).fit(model, _dm(tiny_mnist))
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the update


def test_the_stop_message_says_that_no_checkpoint_exists_yet(tiny_mnist, tmp_path: Path) -> None:
    """It used to say "the last checkpoint holds finite weights" before any checkpoint was written."""
    folder = tmp_path / "ckpt"
    trainer = _trainer(tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=folder)])  # epoch ends
    with pytest.raises(VAEZooError) as err:
        trainer.fit(PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None), _dm(tiny_mnist))
    message = str(err.value)
    assert f"No checkpoint has been written in {folder} yet" in message
    assert "holds finite weights" not in message
    assert not list(folder.glob("*.ckpt"))


def test_the_stop_message_names_the_newest_checkpoint(tiny_mnist, tmp_path: Path) -> None:
    from vaezoo.callbacks import LatestCheckpoint

    folder = tmp_path / "ckpt"
    trainer = _trainer(tmp_path, enable_checkpointing=True,
                       callbacks=[LatestCheckpoint(every_n_train_steps=2, dirpath=str(folder))])
    with pytest.raises(VAEZooError) as err:
        trainer.fit(PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None), _dm(tiny_mnist))
    newest = (folder / "latest-epoch=0-step=2.ckpt").resolve()
    assert f"The newest checkpoint, {newest}, was written before this and holds finite weights" in str(err.value)
    assert torch.load(newest, weights_only=True)["global_step"] == 2


def test_nan_batches_can_be_skipped_and_are_counted(tiny_mnist, tmp_path: Path) -> None:
    # One batch of 6: within a max_skipped_fraction of 0.2 (1.2 batches), not within the default 0.1.
    model = PoisonedVAE(poison_step=2, latent_dim=4, iw_samples=None, nonfinite="skip", max_skipped_fraction=0.2)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _dm(tiny_mnist))
    assert model.nonfinite_guard.skipped == 1
    assert trainer.callback_metrics["train/skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipping_more_than_the_fraction_stops_as_stop_does(tiny_mnist, tmp_path: Path, capsys) -> None:
    """`skip` with every batch non-finite used to end with exit 0, a NaN val/elbo and a "best"
    checkpoint scored -inf (mnist_mlp's ModelCheckpoint monitors val/elbo)."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        code, _, err = run_cli(
            "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(tiny_mnist[0]),
            "--data.val_size", "16", "--data.batch_size", "8", "--trainer.max_epochs", "2", "--model.iw_samples", "4",
            "--model", "tests.test_faults.PoisonedVAE", "--model.poison_step", "0", "--model.poison_every", "true",
            "--model.nonfinite", "skip", "--model.max_skipped_fraction", "0.3", "--images.every_n_epochs", "0",
            capsys=capsys,
        )
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("vaezoo: error:")]
    # 0.3 of 6 batches allows 1; the second stops the run, before any checkpoint.
    assert line.startswith("vaezoo: error: 2 of the 2 training batches of epoch 0 so far had a non-finite loss and "
                           "were skipped, more than --model.max_skipped_fraction 0.3 of the epoch's 6 allows. The last "
                           "one: the training loss became nan at step 1 (epoch 0): kl went non-finite."), line
    assert "No checkpoint has been written in" in line and "--model.max_skipped_fraction (1: never stop)" in line
    assert not list(run.rglob("*.ckpt"))


def test_no_checkpoint_is_written_while_the_monitored_metric_is_nan(tiny_mnist, tmp_path: Path) -> None:
    """Lightning's ModelCheckpoint scores a NaN val/elbo as -inf and keeps the first one as the best."""
    folder = tmp_path / "ckpt"
    best = ModelCheckpoint(dirpath=folder, monitor="val/elbo", mode="max", filename="best-{epoch}-{step}")
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[best])
    model = PoisonedVAE(poison_eval=True, latent_dim=4, iw_samples=None)  # training stays finite
    with pytest.raises(VAEZooError, match=r"^val/elbo became nan at step 6 \(epoch 0\), so training stopped before "
                                          r"the checkpoint that monitors it: Lightning would keep that model as the "
                                          r"best, scored -inf. No checkpoint has been written"):
        trainer.fit(model, _dm(tiny_mnist))
    assert not list(folder.glob("*.ckpt"))


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_true_precisions_get_batches_in_the_weights_dtype(precision: str, tiny_mnist, tmp_path: Path) -> None:
    model = VAE(latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1, logger=False,
                        precision=precision,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])


def test_deferred_check_stops_before_any_checkpoint_after_the_bad_step(tiny_mnist, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, `stop` records the first non-finite step on the device and reads it only when metrics
    are logged, before each checkpoint and at epoch ends: the same error, and no checkpoint after it."""
    from vaezoo.callbacks import LatestCheckpoint
    from vaezoo.models import nonfinite

    reads: list[int] = []
    monkeypatch.setattr(nonfinite, "sync_is_free", lambda device: False)  # the CPU standing in for a GPU
    original = nonfinite.NonFiniteGuard.check
    monkeypatch.setattr(nonfinite.NonFiniteGuard, "check",
                        lambda self, step, *args: (reads.append(step), original(self, step, *args))[1])
    model = PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)  # 6 steps per epoch
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False, log_every_n_steps=50,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[LatestCheckpoint(every_n_train_steps=2, dirpath=str(tmp_path / "ckpt"))])
    expected = r"became nan at step 3 \(epoch 0\): kl went non-finite. Found at step 4"
    with pytest.raises(VAEZooError, match=expected) as err:
        trainer.fit(model, dm)
    assert reads == [2, 4]  # read at the checkpoints only (no logging step yet), not every step
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt", "latest-epoch=0-step=2.ckpt"]
    # The callback had already recorded the step-4 file it was about to write: the message names the real one.
    assert f"The newest checkpoint, {(tmp_path / 'ckpt' / 'latest-epoch=0-step=2.ckpt').resolve()}," in str(err.value)


@pytest.mark.parametrize("fold_every", [1024, 3])
def test_the_deferred_record_names_the_first_bad_step_its_parts_and_loss(monkeypatch: pytest.MonkeyPatch,
                                                                       fold_every: int) -> None:
    """The deferred check keeps one row per step and folds them on the device (at a check, or every
    ``_FOLD_EVERY`` steps): the first step whose loss is non-finite is named, with the parts that were."""
    from vaezoo.models import nonfinite

    monkeypatch.setattr(nonfinite, "sync_is_free", lambda device: False)  # the CPU standing in for a GPU
    monkeypatch.setattr(nonfinite, "_FOLD_EVERY", fold_every)
    guard = nonfinite.NonFiniteGuard("stop")
    ok = {"pixels": torch.rand(2, 1, 4, 4), "recon": torch.ones(2), "kl": torch.ones(2)}
    for step in range(8):
        parts = dict(ok)
        if step == 2:  # a part goes non-finite while the loss stays finite (masked out): not a bad step
            parts["recon"] = torch.tensor([1.0, float("inf")])
        if step in (4, 6):  # the first bad loss, then a later one that must not replace it
            parts["kl"] = torch.tensor([float("nan"), 1.0]) if step == 4 else torch.tensor([1.0, float("inf")])
        loss = torch.tensor(float("nan") if step == 4 else (float("inf") if step == 6 else 1.0))
        assert guard.admit(step, 1, loss, parts) is True  # deferred: never raises inside a step
        assert len(guard._rows) < fold_every
    with pytest.raises(VAEZooError, match=r"became nan at step 4 \(epoch 1\): kl went non-finite. Found at step 8"):
        guard.check(8)
