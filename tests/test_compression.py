"""vaezoo.compression: bit-exact round trips, rates against independent computations, every bad input.

The models are small and untrained: bits-back coding is exact for any model, and its rate is the
model's own -ELBO whatever the model, so neither needs training.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import constriction
import numpy as np
import pytest
import torch
from PIL import Image

from vaezoo.compression import compress, decompress, register_pixel_coder
from vaezoo.compression.command import main as command
from vaezoo.compression.latent import Buckets, PriorCoder
from vaezoo.compression.pixels import BernoulliPixels
from vaezoo.errors import VAEZooError
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, Likelihood
from vaezoo.models.base import VAE
from vaezoo.nets import MLPNet
from vaezoo.priors.mog import MixturePrior
from vaezoo.priors.normal import NormalPrior
from vaezoo.priors.vamp import VampPrior


def small(likelihood: Likelihood | None = None, prior: torch.nn.Module | None = None, shape: tuple[int, int, int] = (1, 8, 8),
          seed: int = 0, latent_dim: int = 6) -> VAE:
    torch.manual_seed(seed)
    return VAE(net=partial(MLPNet, hidden_dims=[32]), latent_dim=latent_dim, likelihood=likelihood or Bernoulli(),
               prior=prior or NormalPrior(), image_shape=shape, iw_samples=None).eval()


def binary(n: int, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) < torch.linspace(0.1, 0.9, math.prod(shape)).reshape(shape)).float()


def eight_bit(n: int, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


def mean_elbo_bits(model: VAE, x: torch.Tensor, samples: int = 64) -> float:
    """-ELBO in bits per image, averaged over many single-sample estimates (an independent computation)."""
    torch.manual_seed(0)
    with torch.no_grad():
        return -torch.stack([model(x).elbo for _ in range(samples)]).mean().item() / math.log(2)


CASES = {
    "bernoulli": (lambda: small(Bernoulli()), binary),
    "logistic": (lambda: small(DiscretizedLogistic(), shape=(3, 8, 8)), eight_bit),
    "dequantized gaussian": (lambda: small(Gaussian(sigma=0.2, dequantize=True), shape=(3, 8, 8)), eight_bit),
    "mog prior": (lambda: small(Bernoulli(), MixturePrior(components=3)), binary),
    "vamp prior": (lambda: small(Bernoulli(), VampPrior(pseudo_inputs=5)), binary),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lossless_round_trip_is_bit_exact(case: str) -> None:
    make_model, make_images = CASES[case]
    model = make_model()
    x = make_images(70)
    packed = compress(model, x, chunk=16)  # several chunk sizes: the ramp from one image, then 16
    back, header = decompress(packed.data, model)
    assert torch.equal(back, x)
    assert len({size for size, _ in header["chunks"]}) > 2


@pytest.mark.parametrize("case", ["bernoulli", "logistic", "vamp prior"])
def test_rate_is_within_two_percent_of_the_negative_elbo(case: str) -> None:
    """Bits-back's rate is the -ELBO: without the bits back it would exceed it by about H(q) per image."""
    make_model, make_images = CASES[case]
    model = make_model()
    x = make_images(256)
    report = compress(model, x, latent_precision=10).report
    coded_bits = report["bits"] / len(x)
    elbo_bits = mean_elbo_bits(model, x)
    assert coded_bits == pytest.approx(elbo_bits, rel=0.02)
    popped = model.latent.code_dim * 10  # what the z of each image would cost with nothing taken back
    assert coded_bits < elbo_bits + 0.5 * popped


def test_chunks_do_not_change_the_images_and_barely_the_rate() -> None:
    model, x = small(), binary(64)
    one = compress(model, x, chunk=1)
    many = compress(model, x, chunk=64)
    assert torch.equal(decompress(one.data, model)[0], decompress(many.data, model)[0])
    assert one.report["bits"] == pytest.approx(many.report["bits"], rel=0.02)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_one_image_at_a_time_costs_the_elbo(scale: float) -> None:
    """Each pop reads the bits the previous push left; unshuffled, it drew codes coupled to the previous image's
    and cost +3.7% (scale 1) and +10% (scale 2) over the -ELBO here (vaezoo.compression.latent, "Whitening")."""
    model, x = small(), binary(256)
    report = compress(model, x, chunk=1, latent_scale=scale).report
    assert (report["bits"] - report["clean_bits"]) / len(x) == pytest.approx(mean_elbo_bits(model, x), rel=0.01)


def test_buckets_have_equal_mass_under_the_standard_normal() -> None:
    buckets = Buckets(4)
    masses = buckets.masses(torch.zeros(1), torch.ones(1))[0]
    assert torch.allclose(masses, torch.full((16,), 1 / 16, dtype=torch.float64), atol=1e-12)
    below = torch.special.ndtr(buckets.centres)  # each centre splits its bucket's mass in two
    assert torch.allclose(below, (torch.arange(16, dtype=torch.float64) + 0.5) / 16, atol=1e-12)


def test_mixture_prior_code_length_is_the_joint_bucket_mass() -> None:
    """The dimension-by-dimension code of a mixture equals -log2 of the joint mass, computed here by brute force."""
    torch.manual_seed(0)
    prior = MixturePrior(components=3)
    prior.bind(2, (1, 2, 2), lambda x: (x, x))
    buckets = Buckets(3)
    coder_of_prior = PriorCoder(prior, buckets)
    means, logvars, log_w = (t.detach().double() for t in prior.as_mixture())
    per_dim = buckets.masses(means, torch.exp(0.5 * logvars))  # (K, L, n)
    joint = torch.einsum("k,ki,kj->ij", log_w.exp(), per_dim[:, 0], per_dim[:, 1])  # P(j0, j1), (n, n)
    rng = np.random.default_rng(0)
    indices = rng.integers(0, buckets.n, (4000, 2), dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder_of_prior.push(coder, indices)
    expected = -np.log2(joint[indices[:, 0], indices[:, 1]].numpy()).sum()
    assert coder.num_valid_bits() == pytest.approx(expected, rel=0.002)
    assert np.array_equal(coder_of_prior.pop(coder, 4000), indices)
    assert coder.is_empty()


def test_lossy_decodes_the_dequantised_posterior_mean() -> None:
    model, x = small(DiscretizedLogistic(), shape=(3, 8, 8)), eight_bit(40)
    packed = compress(model, x, lossy_mode=True, quality=2.0)
    back, header = decompress(packed.data, model)
    psnr = (10 * torch.log10(1 / ((back - x) ** 2).flatten(1).mean(1))).mean().item()
    assert packed.report["psnr_db"] == pytest.approx(psnr, abs=1e-4)
    s = header["lossy"]
    with torch.no_grad():  # the same reconstruction, computed here from the posterior means and the stored grid
        q = model.latent.posterior(model.net.encoder(x))
        centre, step = torch.tensor(s["centre"]), torch.tensor(s["step"])
        z = centre + torch.round((q.mean - centre) / step) * step
        expected = torch.round(model.likelihood.mean(model.decode(z)) * 255) / 255
    assert torch.allclose(back, expected, atol=1 / 255 + 1e-6)
    assert (back != expected).float().mean() < 0.01


def test_lossy_rate_grows_with_quality() -> None:
    model, x = small(DiscretizedLogistic(), shape=(3, 8, 8)), eight_bit(100)
    bits = [compress(model, x, lossy_mode=True, quality=q).report["bits"] for q in (2.0, 32.0, 512.0)]
    assert bits[0] < bits[1] < bits[2]


# ----- bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_file() -> tuple[VAE, bytes, torch.Tensor]:
    model, x = small(), binary(30)
    return model, compress(model, x).data, x


def test_another_models_file_is_refused(packed_file: tuple[VAE, bytes, torch.Tensor]) -> None:
    _, data, _ = packed_file
    with pytest.raises(VAEZooError, match=r"compressed with another model.*--ckpt_path"):
        decompress(data, small(seed=1))


@pytest.mark.parametrize("where", [20, -100, -5])  # header, payload, checksum
def test_a_flipped_byte_is_caught(packed_file: tuple[VAE, bytes, torch.Tensor], where: int) -> None:
    model, data, _ = packed_file
    damaged = bytearray(data)
    damaged[where] ^= 0x01
    with pytest.raises(VAEZooError, match="damaged"):
        decompress(bytes(damaged), model)


@pytest.mark.parametrize("keep", [4, 30, -1, -40])
def test_a_truncated_file_is_caught(packed_file: tuple[VAE, bytes, torch.Tensor], keep: int) -> None:
    model, data, _ = packed_file
    with pytest.raises(VAEZooError, match="cut off|not a vaezoo compressed file"):
        decompress(data[:keep], model)


def test_a_model_computing_differently_is_detected(packed_file: tuple[VAE, bytes, torch.Tensor]) -> None:
    """Same weights, other numbers (another CPU, BLAS or thread count): refused before decoding, not decoded wrong."""
    model, data, _ = packed_file
    decoder = model.net.decoder
    original = decoder.forward
    decoder.forward = lambda z: original(z) * (1 + 1e-6)  # the last bits of the decoder's output change
    try:
        with pytest.raises(VAEZooError, match="computes the model differently"):
            decompress(data, model)
    finally:
        del decoder.forward
    assert torch.equal(decompress(data, model)[0], packed_file[2])


def test_the_coding_thread_count_is_recorded_and_used_whatever_the_callers() -> None:
    model, x = small(), binary(20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        packed = compress(model, x, coding_threads=1)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        back, header = decompress(packed.data, model)
        assert header["threads"] == 1 and torch.equal(back, x) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(VAEZooError, match="threads must be >= 1"):
        compress(model, x, coding_threads=0)


def test_models_without_one_gaussian_layer_are_refused() -> None:
    from vaezoo.models.hierarchical import HVAE
    from vaezoo.models.vqvae import VQVAE

    vq = VQVAE(net=partial(MLPNet, hidden_dims=[16]), latent_dim=4, image_shape=(1, 8, 8))
    with pytest.raises(VAEZooError, match="no continuous latent.*does not support"):
        compress(vq, binary(4))
    hvae = HVAE(latent_dims=[4, 2], hidden_dims=[8], net=partial(MLPNet, hidden_dims=[16]), image_shape=(1, 8, 8))
    with pytest.raises(VAEZooError, match="Bit-Swap"):
        compress(hvae, binary(4))
    with pytest.raises(VAEZooError, match="Bit-Swap"):
        compress(hvae, binary(4), lossy_mode=True)


@pytest.mark.parametrize(("images", "message"), [
    (torch.zeros(0, 1, 8, 8), "nothing to compress"),
    (torch.zeros(3, 1, 9, 9), r"the images are \(1, 9, 9\).*the model takes \(1, 8, 8\)"),
    (torch.full((3, 1, 8, 8), 0.5), "binary.*Binarise"),
])
def test_bad_images_are_refused(images: torch.Tensor, message: str) -> None:
    with pytest.raises(VAEZooError, match=message):
        compress(small(), images)


@pytest.mark.parametrize(("option", "message"), [
    ({"chunk": 0}, "chunk must be >= 1"), ({"latent_precision": 1}, "latent_precision must be between 2 and 16"),
    ({"lossy_mode": True, "quality": 0.0}, "quality must be > 0"),
])
def test_bad_settings_are_refused(option: dict, message: str) -> None:
    with pytest.raises(VAEZooError, match=message):
        compress(small(), binary(3), **option)


def test_non_8_bit_images_are_refused_by_a_logistic_model() -> None:
    x = eight_bit(3) + 0.001
    with pytest.raises(VAEZooError, match="8-bit"):
        compress(small(DiscretizedLogistic(), shape=(3, 8, 8)), x)


def test_a_density_likelihood_has_no_lossless_code_but_a_lossy_one() -> None:
    model, x = small(Gaussian(sigma=0.1), shape=(3, 8, 8)), eight_bit(5)
    with pytest.raises(VAEZooError, match="dequantize.*--lossy"):
        compress(model, x)
    assert decompress(compress(model, x, lossy_mode=True).data, model)[0].shape == x.shape


def test_plugin_likelihoods_register_a_pixel_coder() -> None:
    class Sharper(Bernoulli):  # a subclass: its base's coder serves it
        pass

    model, x = small(Sharper()), binary(20)
    assert torch.equal(decompress(compress(model, x).data, model)[0], x)

    class Other(Likelihood):
        def _log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return -torch.nn.functional.binary_cross_entropy_with_logits(params, x, reduction="none")

    with pytest.raises(VAEZooError, match="has no pixel coder.*register_pixel_coder"):
        compress(small(Other()), x)
    register_pixel_coder(Other)(BernoulliPixels)
    assert torch.equal(decompress(compress(small(Other()), x).data, small(Other()))[0], x)


# ----- the commands -------------------------------------------------------------------------------------


def _checkpoint(tmp_path: Path, model: VAE) -> Path:
    import lightning as L

    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_commands_round_trip_a_folder_of_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = small(DiscretizedLogistic(), shape=(3, 8, 8))
    ckpt = _checkpoint(tmp_path, model)
    folder = tmp_path / "images"
    (folder / "cats").mkdir(parents=True)
    pixels = (eight_bit(5) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    names = ["a.png", "cats/b.png", "cats/c.png", "d.png", "e.png"]
    for name, image in zip(names, pixels, strict=True):
        Image.fromarray(image).save(folder / name)
    vzc = tmp_path / "out.vzc"
    assert command(["compress", "--ckpt_path", str(ckpt), str(folder), "-o", str(vzc)]) == 0
    assert "bits/dim" in capsys.readouterr().out
    assert command(["decompress", str(vzc), "-o", str(tmp_path / "back")]) == 0
    for name, image in zip(names, pixels, strict=True):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "back" / name)), image)
    # Nothing is overwritten, and nothing is lost: the same commands again are refused.
    assert command(["compress", "--ckpt_path", str(ckpt), str(folder), "-o", str(vzc)]) == 1
    assert "exists" in capsys.readouterr().err
    assert command(["decompress", str(vzc), "-o", str(tmp_path / "back")]) == 1
    assert "already holds 5" in capsys.readouterr().err


def test_command_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = small()
    ckpt = _checkpoint(tmp_path, model)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(big)
    assert command(["compress", "--ckpt_path", str(ckpt), str(big), "-o", str(tmp_path / "x.vzc")]) == 1
    assert "9x9 and the model takes 8x8" in capsys.readouterr().err
    assert not (tmp_path / "x.vzc").exists()
    assert command(["compress", "--ckpt_path", str(tmp_path / "nope.ckpt"), str(big), "-o", str(tmp_path / "x.vzc")]) == 1
    assert "does not exist" in capsys.readouterr().err
    vzc = tmp_path / "ok.vzc"
    (tmp_path / "ok.vzc").write_bytes(compress(model, binary(3), checkpoint=str(tmp_path / "moved.ckpt")).data)
    assert command(["decompress", str(vzc), "-o", str(tmp_path / "back")]) == 1
    assert "moved.ckpt, which is not there: pass --ckpt_path" in capsys.readouterr().err
    assert command(["decompress", str(vzc), "-o", str(tmp_path / "back"), "--ckpt_path", str(ckpt)]) == 0
    assert len(list((tmp_path / "back").glob("*.png"))) == 3


def test_compress_reads_a_datamodule_split(tiny_mnist: tuple[Path, dict], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import lightning as L

    from vaezoo.data import MNISTDataModule

    root, _ = tiny_mnist
    datamodule = MNISTDataModule(root=str(root), batch_size=8, val_size=16, download=False, binarize="dynamic")
    model = small(shape=(1, 28, 28))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    assert command(["compress", "--ckpt_path", str(ckpt), "--split", "test", "-o", str(tmp_path / "no.vzc")]) == 1
    assert "does not record its DataModule's class" in capsys.readouterr().err
    # What vaezoo fit records (LightningCLI adds the class path to the DataModule's saved settings).
    saved = torch.load(ckpt, weights_only=True)
    saved["datamodule_hyper_parameters"]["_class_path"] = "vaezoo.data.mnist.MNISTDataModule"
    torch.save(saved, ckpt)
    vzc = tmp_path / "test.vzc"
    assert command(["compress", "--ckpt_path", str(ckpt), "--split", "test", "-o", str(vzc)]) == 0
    datamodule.setup("test")
    expected = torch.cat([datamodule.on_after_batch_transfer(b, 0)[0] for b in datamodule.test_dataloader()])
    assert torch.equal(decompress(vzc.read_bytes(), VAE.load_from_checkpoint(ckpt, map_location="cpu"))[0], expected)


@pytest.mark.parametrize(("sub", "option"), [("compress", "--latent_precision"), ("decompress", "--ckpt_path")])
def test_the_vaezoo_command_routes_compress_and_decompress(sub: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vaezoo.command import main as vaezoo

    with pytest.raises(SystemExit) as exited:
        vaezoo([sub, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert f"usage: vaezoo {sub}" in shown and option in shown
