"""Faults during training: a non-finite loss stops with the step and the term, or is skipped on request."""

from pathlib import Path

import lightning as L
import pytest
import torch

from vaezoo import VAE
from vaezoo.data import MNISTDataModule
from vaezoo.errors import VAEZooError


class PoisonedVAE(VAE):
    """Turns the KL of the training batch at ``poison_step`` into NaN."""

    def __init__(self, poison_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_step = poison_step

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        if self.training and self.global_step == self.poison_step:
            out.kl_per_dim = out.kl_per_dim * float("nan")
        return out


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


def test_nan_loss_stops_naming_the_step_and_the_term(tiny_mnist, tmp_path: Path) -> None:
    model = PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    with pytest.raises(VAEZooError, match=r"became nan at step 3 \(epoch 0\): kl went non-finite.*--model.nonfinite skip"):
        _trainer(tmp_path).fit(model, dm)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the update


def test_nan_batches_can_be_skipped_and_are_counted(tiny_mnist, tmp_path: Path) -> None:
    model = PoisonedVAE(poison_step=2, latent_dim=4, iw_samples=None, nonfinite="skip")
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = _trainer(tmp_path)
    trainer.fit(model, dm)
    assert model.nonfinite_guard.skipped >= 1
    assert trainer.callback_metrics["train/skipped_batches"] >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


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


@pytest.mark.parametrize(
    ("other", "expected"),
    [({"latent_dim": 6}, r"latent_dim 4 \(checkpoint\) vs 6 \(config\)"),
     ({"latent_dim": 4, "beta": 2.0}, r"variant .*VAE \(checkpoint\) vs vaezoo.models.beta.BetaVAE \(config\)")],
)
def test_a_checkpoint_of_another_model_is_named(other: dict, expected: str, tiny_mnist, tmp_path: Path) -> None:
    from vaezoo import BetaVAE

    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = _trainer(tmp_path)
    trainer.fit(VAE(latent_dim=4, iw_samples=None), dm)
    ckpt = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["_class_path"] = "vaezoo.models.base.VAE"  # as the CLI records it
    torch.save(checkpoint, ckpt)
    model = (BetaVAE if "beta" in other else VAE)(iw_samples=None, **other)
    with pytest.raises(VAEZooError, match=expected):
        _trainer(tmp_path).test(model, dm, ckpt_path=str(ckpt), weights_only=False)


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
                        lambda self, step, reduce=None: (reads.append(step), original(self, step, reduce))[1])
    model = PoisonedVAE(poison_step=3, latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)  # 6 steps per epoch
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False, log_every_n_steps=50,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[LatestCheckpoint(every_n_train_steps=2, dirpath=str(tmp_path / "ckpt"))])
    with pytest.raises(VAEZooError, match=r"became nan at step 3 \(epoch 0\): kl went non-finite. Found at step 4"):
        trainer.fit(model, dm)
    assert reads == [2, 4]  # read at the checkpoints only (no logging step yet), not every step
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt", "latest-epoch=0-step=2.ckpt"]
