"""ImageLogger and log_image: which pictures, at which sizes, when, and where each logger gets them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from PIL import Image
from torchvision.utils import make_grid

import vaezoo
import vaezoo.callbacks.images as images_module
from vaezoo.callbacks.images import (
    ImageLogger,
    latent_kl_figure,
    latent_scatter,
    most_active_dims,
    principal_components,
)
from vaezoo.callbacks.log_media import image_path, log_figure, log_image
from vaezoo.data.mnist import MNISTDataModule
from vaezoo.errors import VAEZooError

TILE = (1, 28, 28)
# Small pictures, so a tiny run stays fast: val and test hold 16 images each.
SMALL = dict(num_images=16, num_interpolations=3, interpolation_steps=4, num_traversal_dims=3, traversal_steps=5,
             manifold_steps=4)


def grid_hw(tiles: int, nrow: int) -> tuple[int, int]:
    """(H, W) of make_grid over ``tiles`` MNIST tiles, ``nrow`` per row: what each PNG must measure."""
    return tuple(make_grid(torch.zeros(tiles, *TILE), nrow=nrow).shape[1:])


def read_png(path: Path) -> torch.Tensor:
    """The PNG's pixels as uint8 ``(3, H, W)``: every picture is saved as RGB."""
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def png_hw(path: Path) -> tuple[int, int]:
    return tuple(read_png(path).shape[1:])


def fit(
    root: Path, log_dir: Path, latent_dim: int, callback: ImageLogger, max_epochs: int
) -> tuple[L.Trainer, vaezoo.VAE, MNISTDataModule]:
    """A real fit on the tiny MNIST: 2 training steps per epoch, 16 validation images.

    A later ``trainer.test`` runs one batch: the model's test step (importance-sampled NLL) is slow.
    """
    datamodule = MNISTDataModule(root=str(root), val_size=16, batch_size=8)
    model = vaezoo.VAE(latent_dim=latent_dim)
    trainer = L.Trainer(
        max_epochs=max_epochs, limit_train_batches=2, limit_test_batches=1, logger=CSVLogger(log_dir),
        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(model, datamodule)
    return trainer, model, datamodule


def pngs(trainer: L.Trainer) -> dict[str, Path]:
    return {p.name: p for p in (Path(trainer.logger.log_dir) / "images").glob("*.png")}


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_fit_and_test_write_every_picture_at_its_grid_size(latent_dim: int, tiny_mnist, tmp_path: Path) -> None:
    trainer, model, datamodule = fit(tiny_mnist[0], tmp_path / "logs", latent_dim, ImageLogger(**SMALL), max_epochs=1)
    trainer.test(model, datamodule, verbose=False)

    expected_hw = {
        "reconstructions": grid_hw(2 * 16, nrow=2 * 4),  # 16 (input, reconstruction) pairs, 4 pairs a row
        "samples": grid_hw(16, nrow=4),
        "interpolations": grid_hw(3 * 4, nrow=4),
        "traversals": grid_hw(min(3, latent_dim) * 5, nrow=5),  # never more rows than latent dims
    }
    expected_hw["latent_kl"] = (500, 500)  # bar charts of the KL and activity per dimension, 5 x 5 inches
    # The latent maps: none for a 1-D code; the prior's plane for 2-D, the codes' principal plane beyond.
    if latent_dim == 2:
        expected_hw["manifold"] = grid_hw(4 * 4, nrow=4)
    if latent_dim > 2:
        expected_hw["manifold_pca"] = grid_hw(4 * 4, nrow=4)
    if latent_dim >= 2:
        expected_hw["latent_scatter"] = (450, 500)  # 5 x 4.5 inches at 100 dpi
    # Validation after epoch 0 (step 2), none for the sanity check at step 0; the end of fit
    # repeats step 2, so adds nothing; the test run writes at epoch 1 (past the last one), step 2.
    when = [("val", 0, 2), ("test", 1, 2)]
    expected = {
        image_path(".", f"{stage}/images/{name}", epoch, step).name: hw
        for stage, epoch, step in when for name, hw in expected_hw.items()
    }
    written = pngs(trainer)
    assert sorted(written) == sorted(expected)
    for name, path in written.items():
        assert png_hw(path) == expected[name], name


def test_latent_kl_figure_shows_each_dimension() -> None:
    stats = {"kl_per_dim": torch.tensor([2.0, 0.0, 0.5]), "activity": torch.tensor([0.5, 0.0, 0.02])}
    fig = latent_kl_figure(stats)
    top, bottom = fig.axes
    assert [bar.get_height() for bar in top.patches] == pytest.approx([2.0, 0.0, 0.5])
    assert top.get_title() == "2 of 3 latent dimensions active"
    assert bottom.get_yscale() == "log"


def test_every_n_epochs_the_end_of_fit_and_eval_mode(tiny_mnist, tmp_path: Path, monkeypatch) -> None:
    callback = ImageLogger(every_n_epochs=2, **SMALL)
    trainer, model, _ = fit(tiny_mnist[0], tmp_path / "logs", 3, callback, max_epochs=3)
    samples = sorted(name for name in pngs(trainer) if name.startswith("val_images_samples"))
    # Epochs 0, 1, 2 end at steps 2, 4, 6: validation pictures after the 2nd epoch only, then the end of fit.
    assert samples == ["val_images_samples_epoch001_step000004.png", "val_images_samples_epoch003_step000006.png"]

    # Pictures are drawn in eval mode without gradients, and the model's mode comes back.
    model.train()
    seen = []
    decode = model.decode

    def spy(z: torch.Tensor) -> torch.Tensor:
        seen.append((model.training, torch.is_grad_enabled()))
        return decode(z)

    monkeypatch.setattr(model, "decode", spy)
    callback.log_pictures(trainer, model, "val")
    assert seen and set(seen) == {(False, False)}
    assert model.training


def test_samples_decode_the_same_fixed_noise_every_time() -> None:
    model = vaezoo.VAE(latent_dim=4).eval()
    callback = ImageLogger(num_images=9, seed=3)
    first = callback.sample_grid(model)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.randn(100)
    assert torch.equal(callback.sample_grid(model), first)  # kept: the same codes every epoch
    assert torch.equal(ImageLogger(num_images=9, seed=3).sample_grid(model), first)  # from the seed: every run
    assert first.shape[1:] == grid_hw(9, nrow=3)
    assert not torch.equal(ImageLogger(num_images=9, seed=4).sample_grid(model), first)


def test_most_active_dims_orders_by_variance_of_the_posterior_means() -> None:
    scale = torch.tensor([1.0, 0.1, 5.0, 0.01, 2.0, 0.0])
    means = torch.randn(64, 6, generator=torch.Generator().manual_seed(0)) * scale + 7.0  # offsets don't count
    assert most_active_dims(means, 6).tolist() == [2, 4, 0, 1, 3, 5]
    assert most_active_dims(means, 2).tolist() == [2, 4]


def test_first_traversal_row_sweeps_the_most_active_dimension() -> None:
    model = vaezoo.VAE(latent_dim=6).eval()
    with torch.no_grad():
        model.net.encoder[-1].weight[3] *= 50  # output 3 is the posterior mean of dim 3 (means come first)
    x = torch.rand(16, *TILE, generator=torch.Generator().manual_seed(0))
    means = model.encode(x).mean.detach()  # (16, 6)
    callback = ImageLogger(num_traversal_dims=4, traversal_steps=7, traversal_range=2.5)
    codes = callback.traversal_codes(means)  # (4, 7, 6)
    assert codes.shape == (4, 7, 6)
    assert torch.allclose(codes[0, :, 3], torch.linspace(-2.5, 2.5, 7))
    others = [d for d in range(6) if d != 3]
    assert torch.equal(codes[0][:, others], means[0, others].expand(7, 5))  # the rest stays at image 0's code
    # Each later row sweeps the next most active dimension.
    for row, dim in enumerate(most_active_dims(means, 4).tolist()):
        assert torch.allclose(codes[row, :, dim], torch.linspace(-2.5, 2.5, 7))
    assert callback.traversal_grid(model, x).shape[1:] == grid_hw(4 * 7, nrow=7)


def test_interpolation_rows_end_at_the_two_reconstructions() -> None:
    model = vaezoo.VAE(latent_dim=3).eval()
    x = torch.rand(6, *TILE, generator=torch.Generator().manual_seed(1))
    grid = ImageLogger(num_interpolations=3, interpolation_steps=5).interpolation_grid(model, x)  # (3, H, W)
    recon = model.reconstruct(x)  # (6, 1, 28, 28)

    def tile(row: int, col: int) -> torch.Tensor:
        top, left = 2 + 30 * row, 2 + 30 * col  # make_grid: 2 pixels of padding around 28x28 tiles
        return grid[0, top : top + 28, left : left + 28]

    for row in range(3):
        assert torch.allclose(tile(row, 0), recon[2 * row, 0], atol=1e-6)
        assert torch.allclose(tile(row, 4), recon[2 * row + 1, 0], atol=1e-6)
    assert not torch.allclose(tile(0, 2), tile(0, 0))


def test_manifold_decodes_the_prior_quantiles_with_z2_up(monkeypatch) -> None:
    model = vaezoo.VAE(latent_dim=2).eval()
    codes = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: codes.append(z) or decode(z))
    ImageLogger(manifold_steps=3).manifold_grid(model)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    z = codes[0]  # (9, 2), in the grid's row-major order
    assert torch.allclose(z[0], torch.stack([q[0], q[2]]), atol=1e-6)  # top left: z1 low, z2 high
    assert torch.allclose(z[2], torch.stack([q[2], q[2]]), atol=1e-6)  # top right
    assert torch.allclose(z[8], torch.stack([q[2], q[0]]), atol=1e-6)  # bottom right: z2 low


# ----- the latent maps: scatter and manifold --------------------------------------------------------

# Phi^-1 of linspace(0.05, 0.95, 4) = 0.05, 0.35, 0.65, 0.95 (scipy.stats.norm.ppf), the 2-D manifold's axis for SMALL.
QUANTILES_4 = torch.tensor([-1.6448536269514729, -0.38532046640756773, 0.38532046640756773, 1.6448536269514729])


def scatter_points(fig) -> tuple[np.ndarray, np.ndarray]:
    """The scatter's points ``(N, 2)`` and the legend label of each ``(N,)``, class by class as drawn."""
    ax = fig.axes[0]
    texts = [int(t.get_text()) for t in ax.get_legend().get_texts()]
    points = [np.asarray(c.get_offsets()) for c in ax.collections]
    assert len(points) == len(texts)
    return np.concatenate(points), np.concatenate([[t] * len(p) for t, p in zip(texts, points)])


def val_images(datamodule: MNISTDataModule, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` validation images (as evaluation sees them) and labels."""
    batches = [datamodule.on_after_batch_transfer(batch, 0) for batch in datamodule.val_dataloader()]
    return torch.cat([x for x, _ in batches])[:n], torch.cat([y for _, y in batches])[:n]


def png_pixels(grid: torch.Tensor) -> torch.Tensor:
    """What save_image writes for a float grid: uint8, rounded."""
    return (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def numpy_pca(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top-2 directions (2, D) and their variances by an eigendecomposition of the covariance."""
    variances, vectors = np.linalg.eigh(np.cov(codes, rowvar=False))  # ascending
    return codes.mean(0), vectors[:, ::-1][:, :2].T, variances[::-1]


def test_scatter_of_a_2d_latent_shows_the_posterior_means_by_label() -> None:
    model = vaezoo.VAE(latent_dim=2).eval()
    x = torch.rand(30, *TILE, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 3
    with torch.no_grad():
        means = model.encode(x).mean  # (30, 2)
    fig = latent_scatter(model.code(x).detach(), labels)
    points, drawn = scatter_points(fig)
    assert drawn.tolist() == [0] * 10 + [1] * 10 + [2] * 10  # one legend entry per class
    for label in range(3):
        np.testing.assert_allclose(points[drawn == label], means[labels == label].numpy(), rtol=1e-6)
    assert fig.axes[0].get_xlabel() == "z1 (posterior mean)"
    assert fig.axes[0].get_title() == "posterior means of 30 images"


def test_principal_components_match_an_eigendecomposition_and_have_fixed_signs() -> None:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(200, 4, generator=gen, dtype=torch.float64) * torch.tensor([0.1, 3.0, 1.0, 0.3]) + 5.0
    codes = codes @ torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]  # rotated
    pca = principal_components(codes)
    mean, axes, variances = numpy_pca(codes.numpy())
    np.testing.assert_allclose(pca.mean.numpy(), mean)
    np.testing.assert_allclose(np.abs(pca.axes.numpy() @ axes.T), np.eye(2), atol=1e-9)  # the same two lines
    np.testing.assert_allclose(pca.std.numpy() ** 2, variances[:2])
    np.testing.assert_allclose(pca.explained.numpy(), variances[:2] / variances.sum())
    # Signs: the largest entry of each direction is positive, whatever the SVD returned.
    assert all(row[np.abs(row).argmax()] > 0 for row in pca.axes.numpy())
    assert torch.equal(principal_components(-codes).axes, pca.axes)


def test_manifold_pca_spans_the_codes_principal_plane_through_their_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randn(100, 3, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5, 0.1]) + 1.0
    pca = principal_components(codes)
    z = ImageLogger(manifold_steps=3, manifold_quantile=0.1).manifold_codes(pca)  # (9, 3)
    mean, _, variances = numpy_pca(codes.numpy())
    q = [-1.2815515655446004, 0.0, 1.2815515655446004]  # scipy.stats.norm.ppf([0.1, 0.5, 0.9])
    v1, v2 = pca.axes.numpy()  # their lines are checked against numpy above
    s1, s2 = np.sqrt(variances[:2])
    for row in range(3):
        for col in range(3):  # PC1 grows to the right, PC2 upwards
            expected = mean + q[col] * s1 * v1 + q[2 - row] * s2 * v2
            np.testing.assert_allclose(z[3 * row + col].numpy(), expected, atol=1e-12)


def keep_figures(monkeypatch) -> dict[str, object]:
    """The figures ImageLogger logs, by key (the first of each), still logged as before."""
    figures = {}
    log = images_module.log_figure

    def keep(trainer: L.Trainer, key: str, fig) -> list[Path]:
        figures.setdefault(key, fig)
        return log(trainer, key, fig)

    monkeypatch.setattr(images_module, "log_figure", keep)
    return figures


def test_2d_pictures_reach_the_logger_from_the_validation_codes(tiny_mnist, tmp_path: Path, monkeypatch) -> None:
    figures = keep_figures(monkeypatch)
    trainer, model, datamodule = fit(tiny_mnist[0], tmp_path / "logs", 2, ImageLogger(**SMALL, scatter_images=12), 1)
    model.eval()
    x, y = val_images(datamodule, 12)
    with torch.no_grad():
        means = model.encode(x).mean
        b, a = torch.meshgrid(QUANTILES_4.flip(0), QUANTILES_4, indexing="ij")  # z2 decreasing down the rows
        z = torch.stack([a, b], dim=-1).flatten(0, 1)  # (16, 2)
        expected = make_grid(model.likelihood.mean(model.decode(z)), nrow=4)

    points, drawn = scatter_points(figures["val/images/latent_scatter"])
    assert len(points) == 12
    for label in set(y.tolist()):
        np.testing.assert_allclose(points[drawn == label], means[y == label].numpy(), rtol=1e-5, atol=1e-6)
    written = pngs(trainer)
    assert "val_images_latent_scatter_epoch000_step000002.png" in written
    logged = read_png(written["val_images_manifold_epoch000_step000002.png"]).int()
    assert (logged - png_pixels(expected).int()).abs().max() <= 1  # the decodings of the quantile grid


def test_larger_latents_are_shown_on_their_principal_components(tiny_mnist, tmp_path: Path, monkeypatch) -> None:
    figures = keep_figures(monkeypatch)
    trainer, model, datamodule = fit(tiny_mnist[0], tmp_path / "logs", 5, ImageLogger(**SMALL, scatter_images=12), 1)
    model.eval()
    x, y = val_images(datamodule, 12)
    with torch.no_grad():
        means = model.encode(x).mean.double().numpy()  # (12, 5)
    mean, axes, variances = numpy_pca(means)
    fig = figures["val/images/latent_scatter"]
    points, drawn = scatter_points(fig)
    projected = (means - mean) @ axes.T  # (12, 2), up to each component's sign
    for label in set(y.tolist()):
        got, want = points[drawn == label], projected[y.numpy() == label]
        for k in range(2):
            assert np.allclose(np.abs(got[:, k]), np.abs(want[:, k]), rtol=1e-4, atol=1e-6)
    assert "first 2 principal" in fig.axes[0].get_title() and "5-D code" in fig.axes[0].get_title()
    assert fig.axes[0].get_xlabel() == f"PC1 ({100 * variances[0] / variances.sum():.0f}% of variance)"

    # The manifold: the decoded plane of the two components through the mean code, logged under its own key.
    axes = axes * np.sign(axes[[0, 1], np.abs(axes).argmax(1)])[:, None]  # the documented signs
    b, a = np.meshgrid(QUANTILES_4.numpy()[::-1], QUANTILES_4.numpy(), indexing="ij")  # PC2 decreasing down
    s1, s2 = np.sqrt(variances[:2])
    z = mean + (a.reshape(-1, 1) * s1) * axes[0] + (b.reshape(-1, 1) * s2) * axes[1]  # (16, 5)
    with torch.no_grad():
        expected = make_grid(model.likelihood.mean(model.decode(torch.from_numpy(z).float())), nrow=4)
    written = pngs(trainer)
    assert "val_images_manifold_epoch000_step000002.png" not in written
    logged = read_png(written["val_images_manifold_pca_epoch000_step000002.png"]).int()
    assert (logged - png_pixels(expected).int()).abs().max() <= 1


def test_the_2d_recipe_logs_both_latent_maps(tiny_mnist, tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.test_cli import REPO, run_cli

    monkeypatch.chdir(tmp_path)  # the recipe logs to ./runs/mnist_2d
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_2d.yaml"), "--data.root", str(tiny_mnist[0]),
        "--data.val_size", "16", "--data.batch_size", "8", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--images.manifold_steps", "4", capsys=capsys,
    )
    assert code == 0, err
    written = {p.name for p in (tmp_path / "runs" / "mnist_2d" / "version_0" / "images").glob("*.png")}
    assert {f"val_images_{name}_epoch000_step000002.png" for name in ("manifold", "latent_scatter")} <= written


def latent_kinds() -> dict[str, vaezoo.VAE]:
    from vaezoo.models.hierarchical import HVAE
    from vaezoo.models.vqvae import VQVAE
    from vaezoo.priors.mog import MixturePrior

    return {
        "normal": vaezoo.VAE(latent_dim=2),
        "mog": vaezoo.VAE(latent_dim=2, prior=MixturePrior(components=3)),
        "hvae1": HVAE(latent_dims=[2]),
        "hvae2": HVAE(latent_dims=[2, 2]),
        "vqvae": VQVAE(codes=8, code_size=2, latent_dim=2),
    }


@pytest.mark.parametrize(
    ("kind", "manifold", "what"),
    [
        ("normal", "manifold", "posterior mean"),  # the prior's quantiles span where N(0, I) codes lie
        ("mog", "manifold_pca", "posterior mean"),  # a learned prior: the codes' own plane
        ("hvae1", "manifold", "z1 posterior mean"),  # one layer under N(0, I): as vanilla
        ("hvae2", "manifold_pca", "z1 posterior mean"),  # z1's prior is a mixture over z2
        ("vqvae", "manifold_pca", "quantised code"),
    ],
)
def test_each_kind_of_latent_gets_the_manifold_that_fits_it(kind: str, manifold: str, what: str) -> None:
    model = latent_kinds()[kind].eval()
    x = torch.rand(12, *TILE, generator=torch.Generator().manual_seed(0))
    codes = model.code(x).detach()
    grids, scatter = ImageLogger(manifold_steps=3).latent_maps(model, codes, torch.arange(12) % 4)
    assert list(grids) == [manifold]
    assert grids[manifold].shape[1:] == grid_hw(9, nrow=3)
    points, _ = scatter_points(scatter)
    assert sorted(map(tuple, points.tolist())) == sorted(map(tuple, codes.numpy().astype(np.float32).tolist()))
    assert scatter.axes[0].get_title() == f"{what}s of 12 images"
    # Without codes (no DataModule, or scatter_images 0), only the prior's plane can be drawn.
    assert list(ImageLogger(manifold_steps=3).latent_maps(model, None, None)[0]) == [manifold][: manifold == "manifold"]


# ----- log_image: the dispatch ---------------------------------------------------------------------


def bare_trainer(tmp_path: Path, logger: Logger | bool) -> L.Trainer:
    return L.Trainer(logger=logger, default_root_dir=tmp_path / "root", enable_progress_bar=False)


def test_wandb_gets_one_uint8_image_in_a_list(tmp_path: Path, monkeypatch) -> None:
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "wandb").mkdir()
    logger = WandbLogger(save_dir=str(tmp_path / "wandb"))
    calls, sent = [], []
    original = logger.log_image

    def record(**kwargs: object) -> None:
        calls.append(kwargs)
        original(**kwargs)  # Lightning's own checks (a list, one caption per image) still run

    monkeypatch.setattr(logger, "log_image", record)
    monkeypatch.setattr(logger, "log_metrics", lambda metrics, step=None: sent.append(metrics))
    trainer = bare_trainer(tmp_path, logger)
    image = torch.linspace(0, 1, 10 * 12).reshape(1, 10, 12)
    assert log_image(trainer, "val/images/samples", image, caption="epoch 0") == []
    assert log_image(trainer, "val/images/samples", image.expand(3, -1, -1)) == []  # no caption: no caption list
    assert [c["key"] for c in calls] == ["val/images/samples"] * 2
    assert all(isinstance(c["images"], list) and len(c["images"]) == 1 for c in calls)
    assert [tuple(c["images"][0].shape) for c in calls] == [(1, 10, 12), (3, 10, 12)]
    assert calls[0]["caption"] == ["epoch 0"] and "caption" not in calls[1]
    pixels = np.asarray(sent[0]["val/images/samples"][0].image)  # what W&B would upload
    assert pixels.shape == (10, 12) and pixels.max() == 255  # not the all-black of a float image
    assert not (tmp_path / "root").exists()


class FakeTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger (for isinstance) whose experiment records add_image; needs no tensorboard."""

    def __init__(self) -> None:
        Logger.__init__(self)  # TensorBoardLogger's own __init__ insists on tensorboard being installed
        self.images: list[tuple[tuple, dict]] = []

    @property
    def experiment(self) -> FakeTensorBoardLogger:
        return self

    def add_image(self, *args: object, **kwargs: object) -> None:
        self.images.append((args, kwargs))


def test_tensorboard_gets_add_image_at_the_global_step(tmp_path: Path) -> None:
    logger = FakeTensorBoardLogger()
    trainer = bare_trainer(tmp_path, logger)
    assert log_image(trainer, "test/images/manifold", torch.rand(3, 8, 9)) == []
    [(args, kwargs)] = logger.images
    assert args[0] == "test/images/manifold" and args[1].shape == (3, 8, 9)
    assert kwargs == {"global_step": 0}
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("use_csv", [True, False], ids=["csv", "no_logger"])
def test_png_lands_in_the_log_dir_with_the_pixels(use_csv: bool, tmp_path: Path) -> None:
    trainer = bare_trainer(tmp_path, CSVLogger(tmp_path / "csv") if use_csv else False)
    image = torch.linspace(0, 1, 3 * 5 * 7).reshape(3, 5, 7)
    [path] = log_image(trainer, "val/images/reconstructions", image)
    folder = Path(trainer.logger.log_dir) if use_csv else tmp_path / "root"
    assert path == folder / "images" / "val_images_reconstructions_epoch000_step000000.png"
    assert torch.equal(read_png(path), image.mul(255).add(0.5).to(torch.uint8))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_failed_png_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def half_write(image: torch.Tensor, fp, **kwargs: object) -> None:  # fp: an open binary file
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr("torchvision.utils.save_image", half_write)
    trainer = bare_trainer(tmp_path, False)
    with pytest.raises(OSError, match="disk full"):
        log_image(trainer, "val/images/samples", torch.rand(3, 4, 4))
    assert list((tmp_path / "root" / "images").iterdir()) == []


def test_only_rank_zero_writes_and_shapes_are_checked(tmp_path: Path, monkeypatch) -> None:
    trainer = bare_trainer(tmp_path, False)
    with pytest.raises(VAEZooError, match=r"\(1 or 3, H, W\)"):
        log_image(trainer, "val/images/samples", torch.rand(2, 3, 4, 4))
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    assert log_image(trainer, "val/images/samples", torch.rand(3, 4, 4)) == []
    assert not (tmp_path / "root").exists()


def test_log_figure_renders_and_closes_the_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1.5), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    [path] = log_figure(bare_trainer(tmp_path, False), "val/images/plot", fig)
    assert png_hw(path) == (75, 100)
    assert not plt.get_fignums()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(VAEZooError, match="interpolation_steps must be >= 2"):
        ImageLogger(interpolation_steps=1)
    with pytest.raises(VAEZooError, match="traversal_range"):
        ImageLogger(traversal_range=0.0)
    with pytest.raises(VAEZooError, match="manifold_steps must be >= 2 tiles per side, or 0"):
        ImageLogger(manifold_steps=1)
    with pytest.raises(VAEZooError, match=r"manifold_quantile must be in \(0, 0.5\)"):
        ImageLogger(manifold_quantile=0.5)
