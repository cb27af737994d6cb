"""The training terms: exact epoch means from on-device sums, step values only on logging steps,
and the running sums carried through a mid-epoch checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from vaezoo.data.mnist import MNISTDataModule
from vaezoo.models import VAE, VAEOutput
from vaezoo.models.base import Context

TERMS = ("loss", "elbo", "recon", "kl")


class RecordingVAE(VAE):
    """Keeps every training batch's per-image terms, to recompute the epoch means independently."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seen: list[dict[str, Tensor]] = []

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        terms = super().objective(x, out, context)  # loss (B,): -ELBO per image
        if context.stage == "train":
            record = {"loss": terms["loss"], "elbo": out.elbo, "recon": out.recon, "kl": out.kl}
            self.seen.append({name: value.detach().double().clone() for name, value in record.items()})
        return terms


def _means(records: list[dict[str, Tensor]]) -> dict[str, float]:
    return {name: torch.cat([r[name] for r in records]).mean().item() for name in TERMS}


def _trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    defaults = dict(max_epochs=1, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                    logger=CSVLogger(tmp_path, name="run", version=0), default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kwargs})


def _rows(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_epoch_means_equal_the_mean_over_every_image(tiny_mnist, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RecordingVAE(latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False)
    trainer.fit(model, dm)
    assert len(model.seen) == 2 * 6  # 48 training images, batch 8, two epochs
    expected = _means(model.seen[6:])  # the last epoch's
    for name in TERMS:
        assert trainer.callback_metrics[f"train/{name}_epoch"].item() == pytest.approx(expected[name], rel=1e-6)
    logged = [float(r["train/elbo_epoch"]) for r in _rows(tmp_path) if r.get("train/elbo_epoch")]
    assert logged == pytest.approx([_means(model.seen[:6])["elbo"], expected["elbo"]], rel=1e-6)


@pytest.mark.parametrize("every", [2, 4])
def test_step_values_are_logged_only_on_logging_steps(every: int, tiny_mnist, tmp_path: Path) -> None:
    model = RecordingVAE(latent_dim=4, iw_samples=None)
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    _trainer(tmp_path, log_every_n_steps=every, enable_checkpointing=False).fit(model, dm)
    steps = [int(r["step"]) for r in _rows(tmp_path) if r.get("train/loss_step")]
    assert steps == list(range(every - 1, 6, every))
    # Each logged step value is that batch's own mean.
    logged = [float(r["train/recon_step"]) for r in _rows(tmp_path) if r.get("train/recon_step")]
    assert logged == pytest.approx([model.seen[s]["recon"].mean().item() for s in steps], rel=1e-6)


def test_a_resumed_epoch_mean_covers_the_batches_before_the_checkpoint(tiny_mnist, tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8)
    first = RecordingVAE(latent_dim=4, iw_samples=None)
    every3 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    _trainer(tmp_path / "a", max_steps=4, callbacks=[every3]).fit(first, dm)  # "killed" after step 4
    saved = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)
    assert saved["vaezoo_train_sums"]["sums"][-1].item() == 3 * 8  # images seen when it was written

    second = RecordingVAE(latent_dim=4, iw_samples=None)
    trainer = _trainer(tmp_path / "b", enable_checkpointing=False)
    trainer.fit(second, dm, ckpt_path=tmp_path / "ckpt" / "step=3.ckpt")
    assert len(second.seen) == 3  # the rest of the epoch only
    expected = _means(first.seen[:3] + second.seen)  # the lost step 4 is not in the epoch
    for name in TERMS:
        assert trainer.callback_metrics[f"train/{name}_epoch"].item() == pytest.approx(expected[name], rel=1e-6)


@pytest.mark.parametrize("odd_shape", [False, True])
def test_running_sums_are_the_fp64_sums_of_every_image(odd_shape: bool) -> None:
    """Per-image terms are summed, a scalar (a batch mean) counts once per image, in fp64; a term of another shape
    takes the general path. The checkpoint state holds the sums and the count; another rank restores zeros."""
    from vaezoo.models.running_sums import RunningSums

    torch.manual_seed(0)
    names = ["loss", "elbo", "grid"] if odd_shape else ["loss", "elbo", "kl"]
    sums = RunningSums(names)
    batches = []
    for b in (5, 3):
        terms = {"loss": torch.rand(()), "elbo": -100 * torch.rand(b),
                 ("grid" if odd_shape else "kl"): torch.rand(b, 2) if odd_shape else torch.rand(b)}
        batches.append((terms, b))
        sums.add(terms, b, epoch=0)
    expected = [sum((t[n].double() * b if t[n].dim() == 0 else t[n].double()).sum().item() for t, b in batches)
                for n in names]
    state = sums.state(torch.device("cpu"), 0)
    assert state["sums"].dtype == torch.float64 and state["sums"][-1].item() == 8
    torch.testing.assert_close(state["sums"][:-1], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    means = sums.means(torch.device("cpu"), 0)
    assert means["elbo"].item() == pytest.approx(expected[1] / 8, rel=1e-6)
    other = RunningSums(names)
    other.restore(state, rank=1)
    assert other.total(torch.device("cpu"), 0).abs().sum().item() == 0  # only rank 0 carries them
    again = RunningSums(names)
    again.restore(state, rank=0)
    assert torch.equal(again.total(torch.device("cpu"), 0), state["sums"])
