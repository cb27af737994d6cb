"""`vaezoo predict` outputs: samples, restorations, codes and decodings, checked against independent computations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from tests.data_files import write_mnist_idx
from vaezoo import VAE, VAEZooError
from vaezoo.callbacks.predict import PredictionWriter, decode, generate, in_dataset_order, mask_box
from vaezoo.cli import main
from vaezoo.io import atomic_write
from vaezoo.data.mnist import MNISTDataModule

REPO = Path(__file__).resolve().parents[1]
LATENT, SAMPLES, GRID = 4, 20, 10  # GRID < SAMPLES, so a grid that ignores grid_images is too tall
TILE = 28 + 2  # a grid tile: the image and make_grid's 2-pixel padding


def datamodule(root: Path) -> MNISTDataModule:
    # Grey levels (no binarisation), so the clean images are exactly the written uint8 / 255;
    # 5 per batch: the 16 test images arrive as 5 + 5 + 5 + 1.
    return MNISTDataModule(root=str(root), val_size=16, batch_size=8, eval_batch_size=5, binarize="none")


def make_model(latent_dim: int = LATENT) -> VAE:
    """An untrained VAE, sharpened so that a wrong code or order shows in its outputs.

    At its initialisation the posterior means of noise images barely differ (sd ~0.02) and every
    image decodes to about 0.5; scaling the encoder's last layer by 30 spreads the means to sd
    ~0.7, and doubling the decoder's weights makes its images vary with the code (0.01 to 0.99).
    """
    torch.manual_seed(0)
    model = VAE(latent_dim=latent_dim)
    with torch.no_grad():
        model.net.encoder[-1].weight.mul_(30)
        model.net.encoder[-1].bias.mul_(30)
        for param in model.net.decoder.parameters():
            param.mul_(2)
    return model


def trainer(*callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks),
    )


def predict(root: Path, model: VAE, **writer: object) -> Path:
    """Run trainer.predict with a PredictionWriter; returns its output folder."""
    callback = PredictionWriter(num_samples=SAMPLES, grid_images=GRID, **writer)
    trainer(callback).predict(model, datamodule=datamodule(root), return_predictions=False)
    return callback.output_dir


def clean_images(written: tuple[np.ndarray, np.ndarray]) -> Tensor:
    """The test images as the model sees them: ``(16, 1, 28, 28)`` float in [0, 1]."""
    return torch.from_numpy(written[0]).float().div(255).unsqueeze(1)


def png(path: Path) -> np.ndarray:
    """A grid PNG as ``(H, W)`` uint8 (the grey grids are saved as three equal channels)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert (image == image[..., :1]).all()
    return image[..., 0]


def tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 28x28 image at (row, col) of a grid."""
    return grid[2 + row * TILE : row * TILE + TILE, 2 + col * TILE : col * TILE + TILE]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[np.ndarray, np.ndarray]]:
    """Tiny MNIST (64 train / 16 test images, as the tiny_mnist fixture), shared by the module."""
    root = tmp_path_factory.mktemp("mnist")
    return root, write_mnist_idx(root, n_train=64, n_test=16)["test"]


@pytest.fixture(scope="module")
def default_run(mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """generate + reconstruct (corruption none) + encode with an untrained VAE(latent_dim=4)."""
    out = tmp_path_factory.mktemp("run") / "out"
    return predict(mnist[0], make_model(), output_dir=str(out), seed=7)


# ----- generate --------------------------------------------------------------------------------------------


def test_generate_decodes_seeded_prior_draws(default_run: Path) -> None:
    samples = torch.load(default_run / "samples.pt")
    assert samples.shape == (SAMPLES, 1, 28, 28) and samples.dtype == torch.float32
    z = torch.randn(SAMPLES, LATENT, generator=torch.Generator().manual_seed(7))
    model = make_model()
    with torch.no_grad():
        expected = torch.sigmoid(model.decode(z))  # Bernoulli mean
    torch.testing.assert_close(samples, expected)
    torch.testing.assert_close(generate(model, SAMPLES, seed=7), samples)  # the same, from Python with no Trainer
    # 10 of 20 samples at 8 per row: 2 rows.
    assert png(default_run / "samples.png").shape == (2 * TILE + 2, 8 * TILE + 2)


# ----- encode ----------------------------------------------------------------------------------------------


def test_codes_hold_posterior_of_every_test_image_in_order(default_run: Path, mnist) -> None:
    _, written = mnist
    with np.load(default_run / "codes.npz") as codes:
        assert codes["mean"].shape == codes["logvar"].shape == (16, LATENT)
        assert codes["mean"].dtype == codes["logvar"].dtype == np.float32
        assert codes["label"].dtype == np.int64
        np.testing.assert_array_equal(codes["label"], written[1])
        assert codes["image_shape"].tolist() == [1, 28, 28] and int(codes["latent_dim"]) == LATENT
        assert str(codes["checkpoint"]) == ""  # no checkpoint was loaded
        with torch.no_grad():
            posterior = make_model().encode(clean_images(written))
        np.testing.assert_allclose(codes["mean"], posterior.mean.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(codes["logvar"], posterior.logvar.numpy(), rtol=1e-5, atol=1e-5)


def test_compression_report_counts_bytes(default_run: Path) -> None:
    report = json.loads((default_run / "compression.json").read_text())
    assert report["raw_bytes_per_image"] == 784  # 1 x 28 x 28 8-bit pixels
    assert report["code_bytes_per_image_float32"] == 4 * LATENT
    assert report["code_bytes_per_image_float16"] == 2 * LATENT
    assert report["ratio_float32"] == 784 / 16 and report["ratio_float16"] == 784 / 8
    assert report["images"] == 16


# ----- reconstruct -----------------------------------------------------------------------------------------


def test_restore_metrics_match_an_independent_computation(default_run: Path, mnist) -> None:
    clean = clean_images(mnist[1])
    recon = torch.load(default_run / "reconstructions.pt")
    assert recon.shape == (16, 1, 28, 28) and recon.dtype == torch.float16
    torch.testing.assert_close(recon.float(), make_model().reconstruct(clean), atol=1e-3, rtol=0)
    metrics = json.loads((default_run / "restore_metrics.json").read_text())
    mse = (recon.double() - clean.double()).pow(2).mean().item()
    assert metrics["mse_reconstructed"] == pytest.approx(mse, rel=1e-3)
    assert metrics["psnr_reconstructed"] == pytest.approx(10 * math.log10(1 / mse), abs=5e-3)
    assert metrics["corruption"] == "none" and metrics["images"] == 16
    assert metrics["mse_corrupted"] == 0 and metrics["psnr_corrupted"] is None  # infinite PSNR


def test_reconstruction_grid_rows_are_clean_corrupted_reconstructed(default_run: Path, mnist) -> None:
    grid = png(default_run / "reconstructions.png")
    # 10 images, 8 per row, three rows per group: 2 groups = 6 rows.
    assert grid.shape == (6 * TILE + 2, 8 * TILE + 2)
    images, recon = mnist[1][0], torch.load(default_run / "reconstructions.pt").float()
    for i in range(GRID):
        group, col = divmod(i, 8)
        np.testing.assert_array_equal(tile(grid, 3 * group, col), images[i])
        np.testing.assert_array_equal(tile(grid, 3 * group + 1, col), images[i])  # corruption none
        expected = (recon[i, 0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        assert np.abs(tile(grid, 3 * group + 2, col).astype(int) - expected).max() <= 1
    assert not tile(grid, 3, 2).any()  # image 10 is past grid_images: a blank tile


def test_mask_blanks_the_documented_centred_box(mnist, tmp_path: Path, capsys) -> None:
    root, written = mnist
    out = predict(root, make_model(), output_dir=str(tmp_path), tasks=["reconstruct"], corruption="mask",
                  mask_fraction=0.25)
    # A quarter of the area: each side halved, 14x14 at rows and columns 7..20.
    inside = np.zeros((28, 28), dtype=bool)
    inside[7:21, 7:21] = True
    grid = png(out / "reconstructions.png")
    for i in range(8):
        corrupted = tile(grid, 1, i)
        assert not corrupted[inside].any()
        np.testing.assert_array_equal(corrupted[~inside], written[0][i][~inside])
    metrics = json.loads((out / "restore_metrics.json").read_text())
    masked_energy = clean_images(written)[..., 7:21, 7:21].double().pow(2).sum().item()
    assert metrics["mse_corrupted"] == pytest.approx(masked_energy / (16 * 784), rel=1e-9)
    assert "reconstruct (mask, 16 images)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("height", "width", "fraction", "rows", "cols"),
    [(28, 28, 0.5, (4, 24), (4, 24)), (32, 32, 0.25, (8, 24), (8, 24)), (28, 28, 1.0, (0, 28), (0, 28)),
     (20, 40, 0.25, (5, 15), (10, 30)), (30, 30, 0.5, (4, 25), (4, 25)),
     (20, 20, 1 / 64, (8, 11), (8, 11))],  # a side of 2.5 rounds up to 3
)
def test_mask_box(height: int, width: int, fraction: float, rows: tuple, cols: tuple) -> None:
    r, c = mask_box(height, width, fraction)
    assert (r.start, r.stop) == rows and (c.start, c.stop) == cols


def test_noise_corrupts_by_about_the_clamped_noise_variance(mnist, tmp_path: Path, capsys) -> None:
    root, written = mnist
    first = predict(root, make_model(), output_dir=str(tmp_path / "a"), tasks=["reconstruct"], corruption="noise")
    again = predict(root, make_model(), output_dir=str(tmp_path / "b"), tasks=["reconstruct"], corruption="noise")
    metrics = json.loads((first / "restore_metrics.json").read_text())
    # E[(clamp(x + 0.3 e) - x)^2] over these pixels, by Monte Carlo with other draws: below 0.09,
    # since clamping can only move a pixel back towards x.
    x = clean_images(written)
    noise = torch.randn((32, *x.shape), generator=torch.Generator().manual_seed(123))
    expected = ((x + 0.3 * noise).clamp(0, 1) - x).pow(2).mean().item()
    assert metrics["mse_corrupted"] == pytest.approx(expected, rel=0.1)
    assert metrics["mse_corrupted"] < 0.09
    assert metrics["psnr_corrupted"] == pytest.approx(10 * math.log10(1 / metrics["mse_corrupted"]))
    # Seeded: the same noise, so the same reconstructions, on a second run.
    assert torch.equal(torch.load(first / "reconstructions.pt"), torch.load(again / "reconstructions.pt"))
    line = capsys.readouterr().out
    assert "reconstruct (noise, 16 images)" in line and "restore" in line


# ----- decode ----------------------------------------------------------------------------------------------


def test_decoding_the_codes_reproduces_the_reconstructions(default_run: Path, mnist, tmp_path: Path) -> None:
    out = predict(mnist[0], make_model(), output_dir=str(tmp_path), tasks=["decode"],
                  codes_path=str(default_run / "codes.npz"))
    decoded = torch.load(out / "decoded.pt")
    assert decoded.shape == (16, 1, 28, 28) and decoded.dtype == torch.float16
    # Same means, same decoder: equal up to float16 rounding.
    torch.testing.assert_close(decoded, torch.load(default_run / "reconstructions.pt"), atol=1e-3, rtol=0)
    with np.load(default_run / "codes.npz") as codes:  # the same, from Python with no Trainer
        torch.testing.assert_close(decode(make_model(), torch.from_numpy(codes["mean"])).half(), decoded)
    assert png(out / "decoded.png").shape == (2 * TILE + 2, 8 * TILE + 2)


def test_decode_with_another_latent_dim_names_both(default_run: Path, mnist, tmp_path: Path) -> None:
    with pytest.raises(VAEZooError, match=r"latent_dim 4 .* latent_dim 3") as err:
        predict(mnist[0], make_model(latent_dim=3), output_dir=str(tmp_path), tasks=["decode"],
                codes_path=str(default_run / "codes.npz"))
    assert str(default_run / "codes.npz") in str(err.value)
    assert not (tmp_path / "decoded.pt").exists()


@pytest.mark.parametrize("codes", [None, "missing.npz", "garbage.npz", "no_mean.npz", "array.npy"])
def test_decode_without_usable_codes_says_how_to_make_them(codes: str | None, mnist, tmp_path: Path) -> None:
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive")
    np.savez(tmp_path / "no_mean.npz", latent_dim=np.int64(LATENT))
    np.save(tmp_path / "array.npy", np.zeros((3, LATENT)))
    codes_path = None if codes is None else str(tmp_path / codes)
    with pytest.raises(VAEZooError, match=r"--predict_writer\.tasks \"\[encode\]\"") as err:
        predict(mnist[0], make_model(), output_dir=str(tmp_path / "out"), tasks=["decode"], codes_path=codes_path)
    assert "--predict_writer.codes_path" in str(err.value)


# ----- what is written ---------------------------------------------------------------------------------------


class Negative(VAE):
    """A variant whose prediction is the negative of the base's reconstruction."""

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        prediction = super().predict_step(batch, batch_idx)
        return {**prediction, "reconstruction": 1 - prediction["reconstruction"]}


def test_the_model_s_predict_step_is_what_is_written(mnist, tmp_path: Path, recwarn) -> None:
    torch.manual_seed(0)
    model = Negative(latent_dim=LATENT)
    out = predict(mnist[0], model, output_dir=str(tmp_path), tasks=["reconstruct"])
    expected = 1 - model.reconstruct(clean_images(mnist[1]))
    torch.testing.assert_close(torch.load(out / "reconstructions.pt").float(), expected, atol=1e-3, rtol=0)
    assert not [w for w in recwarn if "batch indices" in str(w.message)]  # vaezoo's loader is counted, not warned about


# ----- the output folder, other stages, file writing -----------------------------------------------------


class BatchCounter(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_predict_batch_end(self, *args: object, **kwargs: object) -> None:
        self.batches += 1


def test_unwritable_output_dir_fails_before_the_first_batch(mnist, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("a file, so no folder can be made under it")
    out = tmp_path / "file.txt" / "out"
    counter = BatchCounter()
    with pytest.raises(VAEZooError, match="--predict_writer.output_dir") as err:
        trainer(PredictionWriter(output_dir=str(out)), counter).predict(make_model(), datamodule=datamodule(mnist[0]))
    assert str(out) in str(err.value)
    assert counter.batches == 0


def test_nothing_is_written_during_fit_and_test(mnist, tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    run = L.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[PredictionWriter(output_dir=str(out))],
        default_root_dir=str(tmp_path / "root"),
    )
    model, dm = make_model(), datamodule(mnist[0])
    run.fit(model, datamodule=dm)
    run.test(model, datamodule=dm, verbose=False)
    assert not out.exists()
    run.predict(model, datamodule=dm, return_predictions=False)  # the same callback does write in predict
    assert (out / "codes.npz").is_file()


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write(target, lambda f: f.write(b"old"))
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"

    def fail_halfway(file) -> None:
        file.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    (tmp_path / "plain").write_bytes(b"")  # the usual permissions, not tempfile's 0o600
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_rows_merge_in_dataset_order_each_index_once() -> None:
    # 5 images over 2 processes: rank 0 held 0, 2, 4 and rank 1 held 1, 3 and a DistributedSampler's pad, 0 again.
    rows = in_dataset_order({"index": torch.tensor([0, 2, 4, 1, 3, 0]), "row": torch.tensor([[0], [2], [4], [1], [3], [0]])})
    assert rows["index"].tolist() == [0, 1, 2, 3, 4] and rows["row"].flatten().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs",
    [{"tasks": ["generate", "denoise"]}, {"tasks": []}, {"num_samples": 0}, {"grid_images": 0},
     {"noise_std": -0.1}, {"mask_fraction": 0.0}, {"mask_fraction": 1.5}, {"corruption": "blur"}],
)
def test_bad_settings_are_named(kwargs: dict) -> None:
    with pytest.raises(VAEZooError, match=next(iter(kwargs))):
        PredictionWriter(**kwargs)


# ----- the CLI ---------------------------------------------------------------------------------------------


def test_cli_writes_only_in_predict(mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vaezoo"])
    common = ["--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(mnist[0]),
              "--data.val_size", "16", "--data.batch_size", "8", "--predict_writer.output_dir", "out",
              "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_epochs", "1", "--images.every_n_epochs", "0"])
    assert not Path("out").exists()
    ckpt = "runs/mnist_mlp/version_0/checkpoints/last.ckpt"
    main(["predict", *common, "--ckpt_path", ckpt, "--predict_writer.tasks", "[encode]"])
    with np.load("out/codes.npz") as codes:
        assert codes["mean"].shape == (16, 50)  # latent_dim from the config
        assert str(codes["checkpoint"]).endswith("last.ckpt")


# ----- DDP -------------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import sys
import torch, lightning as L
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from vaezoo import VAE
from vaezoo.callbacks.predict import PredictionWriter
from vaezoo.data.mnist import MNISTDataModule

class TorchLoaderMNIST(MNISTDataModule):  # a DistributedSampler, which pads 13 images to 14 (rank 1 ends with 0)
    def predict_dataloader(self):
        test = super().predict_dataloader()
        data = TensorDataset(test.images, test.labels)
        return DataLoader(data, batch_size=3, sampler=DistributedSampler(data, shuffle=False))

root, out = sys.argv[1:]
torch.manual_seed(0)
model = VAE(latent_dim=4)
writer = PredictionWriter(output_dir=out, tasks=["reconstruct", "encode"], grid_images=10, corruption="mask")
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[writer])
for dm_class, folder in ((MNISTDataModule, "vaezoo_loader"), (TorchLoaderMNIST, "torch_loader")):
    writer.output_dir = writer.output_dir.parent / folder
    dm = dm_class(root=root, val_size=16, batch_size=8, eval_batch_size=3, binarize="none")
    trainer.predict(model, datamodule=dm, return_predictions=False)
"""


@pytest.mark.slow
def test_ddp_merges_every_image_once_in_dataset_order(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_mnist_idx(root, n_train=64, n_test=13)  # 13 over 2 processes: 7 + 6, uneven on purpose
    script = tmp_path / "ddp_predict.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(root), str(tmp_path / "ddp")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    torch.manual_seed(0)
    single = PredictionWriter(output_dir=str(tmp_path / "one"), tasks=["reconstruct", "encode"], grid_images=10,
                              corruption="mask")
    dm = MNISTDataModule(root=str(root), val_size=16, batch_size=8, eval_batch_size=3, binarize="none")
    trainer(single).predict(VAE(latent_dim=4), datamodule=dm, return_predictions=False)
    one = tmp_path / "one"
    for ddp in (tmp_path / "vaezoo_loader", tmp_path / "torch_loader"):
        with np.load(one / "codes.npz") as a, np.load(ddp / "codes.npz") as b:
            np.testing.assert_array_equal(a["label"], b["label"])
            np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.load(one / "reconstructions.pt"), torch.load(ddp / "reconstructions.pt"),
                                   atol=1e-3, rtol=0)
        metrics = [json.loads((d / "restore_metrics.json").read_text()) for d in (one, ddp)]
        assert metrics[1]["images"] == 13
        assert metrics[0]["mse_corrupted"] == pytest.approx(metrics[1]["mse_corrupted"], rel=1e-9)
        assert metrics[0]["mse_reconstructed"] == pytest.approx(metrics[1]["mse_reconstructed"], rel=1e-5)
        assert np.abs(png(one / "reconstructions.png").astype(int) - png(ddp / "reconstructions.png")).max() <= 1
        assert sorted(p.name for p in ddp.iterdir() if p.name.startswith(".")) == []  # the per-process files are gone
