"""The FID callback: known values, input handling, the Trainer wiring, checkpoints, offline errors.

Everything but the last test uses a small fixed feature network, so nothing downloads.
"""

import importlib.util
import json
import re
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from torch import Tensor, nn

import vaezoo
from vaezoo.callbacks import fid as fid_module
from vaezoo.callbacks.fid import FID, WEIGHTS_FILE, WEIGHTS_URL, cached_weights_path
from vaezoo.data.mnist import MNISTDataModule
from vaezoo.errors import VAEZooError
from tests.test_cli import run_cli

# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates (vaezoo.cli filters it too).
pytestmark = pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")

REPO = Path(__file__).resolve().parents[1]
# Inception features need torch-fidelity, an optional dependency of torchmetrics.
needs_fidelity = pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None, reason="needs torch-fidelity")


class SmallNet(nn.Module):
    """(N, 3, H, W) -> 4x4 average pool -> fixed random projection -> (N, 16) features.

    ``padding`` is a large unused buffer: a checkpoint holding the extractor shows in its size.
    ``images`` counts the images it has seen.
    """

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(48, 16, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("padding", torch.zeros(padding))
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj  # (N, 48) @ (48, 16)


class Recorder(nn.Module):
    """Records every input; features are the per-channel means, (N, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.clone())
        return x.mean((2, 3))


def make_trainer(tmp_path: Path, *callbacks: lightning.Callback, **kwargs: object) -> lightning.Trainer:
    options = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=list(callbacks),
    )
    return lightning.Trainer(**{**options, **kwargs})


@needs_fidelity
def test_weights_url_is_torch_fidelitys() -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert WEIGHTS_URL == URL_INCEPTION_V3 and URL_INCEPTION_V3.endswith("/" + WEIGHTS_FILE)


@pytest.mark.parametrize(
    "bad", [{"num_samples": 1}, {"batch_size": 0}, {"every_n_val_epochs": -1}, {"feature": 100}, {"feature": "2048"}]
)
def test_bad_arguments_are_refused(bad: dict) -> None:
    with pytest.raises(VAEZooError, match=next(iter(bad))):
        FID(**bad)


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_gives_the_mean_distance() -> None:
    fid = FID(feature=SmallNet(), batch_size=16)
    fid.build_metric((3, 8, 8))
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5  # (64, 3, 8, 8) in [0, 0.5]
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert abs(fid.compute().item()) < 1e-3
    # A constant shift moves the mean and keeps the covariance: FID = ||mu_r - mu_g||^2 exactly.
    fid.update(x, real=True)
    fid.update(x + 0.3, real=False)
    expected = (torch.full((1, 48), 0.3, dtype=torch.float64) @ SmallNet().proj.double()).square().sum()
    assert fid.compute().item() == pytest.approx(expected.item(), rel=1e-3)
    assert expected > 1.0


def test_grey_is_repeated_to_rgb_values_clamped_and_batches_chunked() -> None:
    recorder = Recorder()
    fid = FID(feature=recorder, batch_size=2)
    fid.build_metric((1, 4, 4))
    probe = recorder.seen.pop()  # torchmetrics finds the feature size with one dummy image
    assert probe.shape == (1, 3, 4, 4) and probe.dtype == torch.float32 and 0 <= probe.min() <= probe.max() <= 1
    grey = torch.linspace(-0.5, 1.5, 5 * 16).reshape(5, 1, 4, 4)  # (5, 1, 4, 4), below 0 and above 1
    fid.update(grey, real=True)
    assert [len(x) for x in recorder.seen] == [2, 2, 1]
    seen = torch.cat(recorder.seen)  # (5, 3, 4, 4)
    assert seen.max() == 1.0 and seen.min() == 0.0  # clamped, not wrapped around
    torch.testing.assert_close(seen, grey.clamp(0, 1).expand(-1, 3, -1, -1), rtol=0, atol=0)


def test_test_run_logs_fid_and_checkpoints_hold_no_extractor(tiny_mnist, tmp_path: Path, capsys) -> None:
    net = SmallNet(padding=1_000_000)  # 4 MB of extractor buffers
    fid = FID(feature=net, num_samples=16)
    torch.manual_seed(0)
    model, dm = vaezoo.VAE(latent_dim=4), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = make_trainer(tmp_path, fid)
    torch.manual_seed(1)
    trainer.test(model, datamodule=dm)
    rng_after = torch.random.get_rng_state()
    first = trainer.callback_metrics["test/fid"].item()
    assert first > 0 and torch.isfinite(torch.tensor(first))
    assert "test/fid" in capsys.readouterr().out  # in the printed results table
    seen = net.images
    trainer.test(model, datamodule=dm)  # the same z (seed) and the kept real statistics: the same FID
    assert trainer.callback_metrics["test/fid"].item() == pytest.approx(first, rel=1e-6)
    assert net.images - seen == 16  # only the generated images: the real ones were extracted once
    trainer.test(model, datamodule=MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8))
    assert net.images - seen == 16 + 32  # another DataModule: its real images are extracted afresh
    assert trainer.callback_metrics["test/fid"].item() == pytest.approx(first, rel=1e-6)
    torch.manual_seed(1)
    make_trainer(tmp_path).test(model, datamodule=dm)  # the same run without FID
    assert torch.equal(torch.random.get_rng_state(), rng_after)  # FID's seeded z left the global RNG alone

    trainer.save_checkpoint(tmp_path / "model.ckpt")
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    assert ckpt["callbacks"][fid.state_key] == {"val_runs": 0}
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert (tmp_path / "model.ckpt").stat().st_size < model_bytes + 1_000_000


def test_val_fid_every_n_validation_runs(tiny_mnist, tmp_path: Path) -> None:
    fid = FID(feature=SmallNet(), num_samples=16, every_n_val_epochs=2)
    computed = []
    compute = fid.compute
    fid.compute = lambda **kw: computed.append(compute(**kw)) or computed[-1]  # type: ignore[method-assign]
    model, dm = vaezoo.VAE(latent_dim=4), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8)
    trainer = make_trainer(tmp_path, fid, max_epochs=3, limit_train_batches=1)
    trainer.fit(model, datamodule=dm)
    assert fid.val_runs == 3 and len(computed) == 1  # at the 2nd of 3 validations; sanity check not counted
    restored = FID(feature=SmallNet(), num_samples=16, every_n_val_epochs=2)
    restored.load_state_dict(fid.state_dict())
    assert restored.val_runs == 3


def test_fit_without_val_fid_builds_nothing(tiny_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights: building Inception would fail
    fid = FID(num_samples=16)
    model, dm = vaezoo.VAE(latent_dim=4), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8)
    make_trainer(tmp_path, fid, max_epochs=1, limit_train_batches=1).fit(model, datamodule=dm)
    assert fid.metric is None


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """An empty ``$TORCH_HOME``, and torch.hub's own ``urlopen`` failing; returns the URLs it was asked for."""
    asked: list[str] = []

    def offline(request: object, *args: object, **kwargs: object) -> None:
        asked.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return asked


@needs_fidelity
@pytest.mark.parametrize("offline_var", [None, "1"], ids=["download-fails", "HF_HUB_OFFLINE"])
def test_missing_weights_offline_say_where_to_put_them(
    tiny_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_hub: list[str], offline_var: str | None
) -> None:
    if offline_var:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_var)
    model, dm = vaezoo.VAE(latent_dim=4), MNISTDataModule(str(tiny_mnist[0]), val_size=16, batch_size=8)
    with pytest.raises(VAEZooError) as caught:
        make_trainer(tmp_path, FID(feature=64, num_samples=16)).test(model, datamodule=dm)
    message = str(caught.value)
    cache = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    assert cached_weights_path() == cache
    for part in (WEIGHTS_FILE, WEIGHTS_URL, str(cache), "$TORCH_HOME", "feature_extractor_weights_path"):
        assert part in message
    error = caught.value  # no urllib traceback chained behind it (`from None`)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert offline_hub == ([] if offline_var else [WEIGHTS_URL])  # HF_HUB_OFFLINE: not even tried
    assert not cache.exists()


@needs_fidelity
def test_missing_weights_hint_names_an_option_the_cli_takes(
    monkeypatch: pytest.MonkeyPatch, offline_hub: list[str], capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VAEZooError) as caught:
        FID(feature=64).build_metric()
    option = re.search(rf"(--\S+) /path/to/{re.escape(WEIGHTS_FILE)}", str(caught.value)).group(1)
    code, out, err = run_cli("fit", option, "/w/weights.pth", "--print_config", capsys=capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["fid"]["feature_extractor_weights_path"] == "/w/weights.pth"


@needs_fidelity
def test_missing_weights_path_is_named(offline_hub: list[str]) -> None:
    with pytest.raises(VAEZooError, match=r"feature_extractor_weights_path=/no/such/w\.pth does not exist"):
        FID(feature=64, feature_extractor_weights_path="/no/such/w.pth").build_metric()
    assert offline_hub == []


@needs_fidelity
def test_corrupt_cached_weights_say_delete_them(offline_hub: list[str]) -> None:
    cache = cached_weights_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(VAEZooError, match=rf"Could not load the Inception weights {cache} .*Delete it"):
        FID(feature=64).build_metric()
    assert offline_hub == []


@needs_fidelity
def test_inception_path_loads_the_given_file_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int-feature path end to end, with random Inception weights (nothing read or downloaded)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(b"")
    loaded = []
    with monkeypatch.context() as patch:  # only while building: record the path torch-fidelity loads
        patch.setattr(torch, "load", lambda path, **kwargs: loaded.append(path))
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        fid = FID(feature=64, feature_extractor_weights_path=str(weights))
        fid.build_metric((1, 28, 28))
    assert loaded == [str(weights)]
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # grey, float: Inception needs uint8 RGB
    fid.update(x, real=True)
    fid.update(x.flip(0), real=False)  # the same set, reordered
    same = fid.compute().item()
    fid.update(x, real=True)
    fid.update(x * 0.5, real=False)
    assert abs(same) < 1e-3 < fid.compute().item()


def test_missing_torch_fidelity_says_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid_module, "_has_torch_fidelity", lambda: False)
    with pytest.raises(VAEZooError, match=r"pip install torch-fidelity .*or pass an nn.Module"):
        FID(feature=2048).build_metric()


@pytest.mark.slow  # 128 images through Inception: about a minute on 2 CPU cores
@needs_fidelity
@pytest.mark.skipif(not cached_weights_path().is_file(), reason=f"{WEIGHTS_FILE} not in the torch hub cache")
def test_real_inception_fid() -> None:
    fid = FID(feature=2048, batch_size=64)
    fid.build_metric((3, 32, 32))
    generator = torch.Generator().manual_seed(0)
    fid.update(torch.rand(64, 3, 32, 32, generator=generator) * 0.6, real=True)
    fid.update(torch.rand(64, 3, 32, 32, generator=generator) * 0.6 + 0.4, real=False)
    assert type(fid.metric.inception).__name__ == "NoTrainInceptionV3"
    assert 0 < fid.compute().item() < float("inf")


DDP_SCRIPT = """
import json, sys
import lightning, torch
import vaezoo
from vaezoo.callbacks.fid import FID
from vaezoo.data.mnist import MNISTDataModule
from tests.test_fid import SmallNet

class Counting(FID):
    counts = {True: 0, False: 0}  # this process's real and generated images

    def update(self, images, real):
        self.counts[real] += len(images)
        super().update(images, real)

    def compute(self, **kwargs):
        value = super().compute(**kwargs).item()
        print("RESULT " + json.dumps({"counts": [self.counts[True], self.counts[False]], "fid": value}), flush=True)
        return torch.tensor(value)

torch.manual_seed(0)
trainer = lightning.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
    enable_model_summary=False, enable_checkpointing=False, callbacks=[Counting(feature=SmallNet(), num_samples=11)],
)
trainer.test(vaezoo.VAE(latent_dim=4), datamodule=MNISTDataModule(sys.argv[1], val_size=16, eval_batch_size=3))
"""


@pytest.mark.slow
def test_ddp_ranks_share_the_images_and_agree(tiny_mnist, tmp_path: Path) -> None:
    script = tmp_path / "ddp_fid.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(script), str(tiny_mnist[0])], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    # Both processes share stdout: another process's text may land on the same line, so match the records.
    results = [json.loads(record) for record in re.findall(r"RESULT (\{[^{}]*\})", run.stdout)]
    assert len(results) == 2
    assert sorted(r["counts"] for r in results) == [[5, 5], [6, 6]]  # 11 real and 11 generated in all
    assert results[0]["fid"] == results[1]["fid"] > 0
