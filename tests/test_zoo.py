"""Every registered variant x every registered net x every dataset shape: one training step, a validation
with its figures, and the pictures, with no list kept by hand (as timm tests every registered model).

The 64x64 and 128x128 shapes come from CelebA's reader at two ``image_size``s, with a Gaussian likelihood
(one decoder output per channel, half the logistic's) to keep the bigger images cheap."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tests.data_files import patch_cifar10_md5s, write_cifar10_batches, write_mnist_idx
from tests.test_celeba import patch_celeba_md5s, write_celeba
from vaezoo.callbacks import ImageLogger
from vaezoo.data import CelebADataModule, CIFAR10DataModule, ImageDataModule, MNISTDataModule
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, Likelihood
from vaezoo.registry import NETS, VARIANTS

# The image shapes the nets must handle: grey 28x28 (binarised MNIST), colour 32x32 (8-bit CIFAR-10), and
# colour 64x64 and 128x128 (CelebA at two sizes).
SHAPES: dict[str, type[Likelihood]] = {
    "1x28x28": Bernoulli, "3x32x32": DiscretizedLogistic, "3x64x64": Gaussian, "3x128x128": Gaussian,
}
# The default suite runs every variant x net at 28x28 and 32x32, and every net at 64x64 and 128x128 under the
# vanilla variant; the other variants at 64x64 and 128x128 carry the slow marker (CI's second pass). A net's
# padding and stages do not depend on the variant (all meet at the encoder's (B, features) output), and those
# 30 cases would more than double this file's time on two cores.
BIG = ("3x64x64", "3x128x128")
CASES = [
    pytest.param(v, n, s, id=f"{v}-{n}-{s}", marks=[pytest.mark.slow] if s in BIG and v != "vanilla" else [])
    for v in VARIANTS.names() for n in NETS.names() for s in SHAPES
]
# Narrow settings for the built-in nets, so the bigger images stay cheap: the cases test that every net trains
# on every shape (padding, cropping, stage counts), not its default width. A plugin's net runs with its defaults.
CHEAP: dict[str, dict[str, Any]] = {
    "mlp": {"hidden_dims": [64]},
    "conv": {"channels": [8, 16]},
    "resnet": {"width": 8, "max_width": 16, "blocks": 1},
}


def tiny_data(shape: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> ImageDataModule:
    """A DataModule of a few images of ``shape``, written in its dataset's official format under ``root``."""
    if shape == "1x28x28":
        write_mnist_idx(root, n_train=48, n_test=16)
        return MNISTDataModule(root=str(root), val_size=16, batch_size=8)
    if shape == "3x32x32":
        patch_cifar10_md5s(monkeypatch, write_cifar10_batches(root, n_per_batch=8))
        return CIFAR10DataModule(root=str(root), val_size=16, batch_size=8)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    patch_celeba_md5s(monkeypatch, write_celeba(root, n_train=8, n_val=4, n_test=4))
    return CelebADataModule(root=str(root), batch_size=4, image_size=int(shape.split("x")[-1]), download=False)


@pytest.mark.parametrize(("variant", "net", "shape"), CASES)
def test_every_variant_trains_validates_and_draws_on_every_net_and_shape(
    variant: str, net: str, shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    likelihood = SHAPES[shape]
    dm = tiny_data(shape, tmp_path, monkeypatch)
    net_factory = partial(NETS.get(net), **CHEAP.get(net, {}))
    model = VARIANTS.get(variant)(net=net_factory, likelihood=likelihood(), image_shape=dm.image_shape, iw_samples=None)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    images = ImageLogger(num_images=4, num_interpolations=1, interpolation_steps=3, num_traversal_dims=2,
                         traversal_steps=3, manifold_steps=3, scatter_images=16)
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
