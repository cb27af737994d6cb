"""Every registered variant x every registered net x every dataset shape: one training step, a validation
with its figures, and the pictures, with no list kept by hand (as timm tests every registered model)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tests.data_files import patch_cifar10_md5s, write_cifar10_batches, write_mnist_idx
from vaezoo.callbacks import ImageLogger
from vaezoo.data import CIFAR10DataModule, MNISTDataModule
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic
from vaezoo.registry import NETS, VARIANTS

# The dataset shapes vaezoo ships DataModules for: grey 28x28 (binarised) and colour 32x32 (8-bit).
SHAPES = {"1x28x28": (MNISTDataModule, Bernoulli), "3x32x32": (CIFAR10DataModule, DiscretizedLogistic)}
CASES = [(v, n, s) for v in VARIANTS.names() for n in NETS.names() for s in SHAPES]


@pytest.mark.parametrize(("variant", "net", "shape"), CASES, ids=["-".join(c) for c in CASES])
def test_every_variant_trains_validates_and_draws_on_every_net_and_shape(
    variant: str, net: str, shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datamodule_cls, likelihood = SHAPES[shape]
    if datamodule_cls is MNISTDataModule:
        write_mnist_idx(tmp_path, n_train=48, n_test=16)
    else:
        patch_cifar10_md5s(monkeypatch, write_cifar10_batches(tmp_path, n_per_batch=8))
    dm = datamodule_cls(root=str(tmp_path), val_size=16, batch_size=8)
    model = VARIANTS.get(variant)(net=NETS.get(net), likelihood=likelihood(), image_shape=dm.image_shape,
                                  iw_samples=None)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    images = ImageLogger(num_images=4, num_interpolations=1, interpolation_steps=3, num_traversal_dims=2,
                         traversal_steps=3, scatter_images=16)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[images],
                        logger=CSVLogger(tmp_path / "runs"), accelerator="cpu")
    trainer.fit(model, dm)
    assert trainer.global_step == 1
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("net.") for k in changed), "one step trained nothing"
    metrics = trainer.validate(model, dm, verbose=False)[0]
    assert math.isfinite(metrics["val/elbo"]) and metrics["val/elbo"] < 0
    assert any(k in metrics for k in ("val/kl", "val/kl_mc"))
    assert math.isfinite(metrics["val/loss"])
    pictures = {p.name.split("_epoch")[0] for p in (Path(trainer.log_dir) / "images").glob("*.png")}
    assert {"val_images_reconstructions", "val_images_samples"} <= pictures, pictures
    samples = model.sample(3)
    assert samples.shape == (3, *dm.image_shape) and bool(((samples >= 0) & (samples <= 1)).all())
