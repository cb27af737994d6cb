"""beta-TCVAE (Chen et al. 2018): the MWS decomposition against formulas written out here, and N from the data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.test_bad_input import QUICK, fails
from tests.test_cli import REPO, run_cli
from vaezoo.errors import VAEZooError
from vaezoo.models import BetaTCVAE
from vaezoo.models.base import Context

RECIPE = str(REPO / "configs" / "mnist_betatc.yaml")
_LOG_2PI = math.log(2 * math.pi)


def log_normal_1d(z: float, mean: float, logvar: float) -> float:
    return -0.5 * ((z - mean) ** 2 / math.exp(logvar) + logvar + _LOG_2PI)


def mws_by_hand(z: Tensor, mean: Tensor, logvar: Tensor, n: int) -> tuple[list[float], list[float]]:
    """The MWS estimates of Chen et al. (section 4.1), one image i at a time, in float64 Python:
    log q(z_i) = log( 1/(N M) sum_m prod_j q(z_ij | x_m) ) and sum_j log( 1/(N M) sum_m q(z_ij | x_m) )."""
    m_count, dims = mean.shape
    z, mean, logvar = z.double().tolist(), mean.double().tolist(), logvar.double().tolist()
    log_qz, log_prod = [], []
    for i in range(m_count):
        joint = [sum(log_normal_1d(z[i][j], mean[m][j], logvar[m][j]) for j in range(dims)) for m in range(m_count)]
        log_qz.append(math.log(sum(math.exp(v) for v in joint) / (n * m_count)))
        marginals = [sum(math.exp(log_normal_1d(z[i][j], mean[m][j], logvar[m][j])) for m in range(m_count))
                     for j in range(dims)]  # sum_m q(z_ij | x_m), dimension by dimension
        log_prod.append(sum(math.log(v / (n * m_count)) for v in marginals))
    return log_qz, log_prod


def images(n: int, seed: int = 1) -> Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).bernoulli()


def model_and_pass(seed: int = 7, **kwargs) -> tuple[BetaTCVAE, Tensor, object, Tensor]:
    """A small beta-TCVAE, a batch, its forward pass with the codes drawn from ``seed``, and those codes."""
    torch.manual_seed(0)
    model = BetaTCVAE(latent_dim=3, **kwargs)
    with torch.no_grad():  # spread the posteriors, so that the batch's images do not all score alike
        model.net.encoder[-1].weight.mul_(10)
        model.net.encoder[-1].bias.copy_(torch.tensor([0.5, -1.0, 0.0, -1.0, -0.5, -2.0]))
    x = images(6)
    torch.manual_seed(seed)
    out = model(x)
    return model, x, out, out.z


def test_each_term_matches_the_mws_estimates_written_out() -> None:
    model, x, out, z = model_and_pass()
    terms = model.objective(x, out, Context(dataset_size=1000))
    mean, logvar = model.net.encoder(x).chunk(2, dim=-1)
    log_qz, log_prod = (torch.tensor(v, dtype=torch.float64) for v in mws_by_hand(z, mean, logvar, 1000))
    log_qz_x = torch.tensor([
        sum(log_normal_1d(z[i, j].item(), mean[i, j].item(), logvar[i, j].item()) for j in range(3)) for i in range(6)
    ], dtype=torch.float64)
    log_pz = torch.tensor([sum(log_normal_1d(v, 0.0, 0.0) for v in row) for row in z.tolist()], dtype=torch.float64)
    expected = {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod, "dwkl": log_prod - log_pz}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=0, atol=1e-4, msg=name)
    recon = -out.log_px[0]
    weighted = recon + 1.0 * expected["mi"] + 6.0 * expected["tc"] + 1.0 * expected["dwkl"]  # the defaults
    torch.testing.assert_close(terms["loss"].double(), weighted, rtol=0, atol=1e-3)
    assert bool((expected["tc"] != 0).all())  # the test means something: the terms differ from 0 and each other


def test_the_three_terms_sum_to_the_sampled_kl_for_any_n() -> None:
    """mi + tc + dwkl telescopes to log q(z_i | x_i) - log p(z_i): the MWS log q(z) and log prod_j q(z_j) cancel,
    so the sum is the same for every N while the terms move with it."""
    model, x, out, z = model_and_pass()
    mean, logvar = model.net.encoder(x).chunk(2, dim=-1)
    sampled_kl = (-0.5 * ((z - mean) ** 2 / logvar.exp() + logvar)).sum(-1) + 0.5 * (z**2).sum(-1)  # log q - log p
    sums, mis = [], []
    for n in (10, 60_000):
        terms = model.objective(x, out, Context(dataset_size=n))
        sums.append(terms["mi"] + terms["tc"] + terms["dwkl"])
        mis.append(terms["mi"])
        torch.testing.assert_close(sums[-1], sampled_kl, rtol=0, atol=1e-4)
    # log(N M) enters log q(z) once: mi moves by exactly log(60000 / 10).
    torch.testing.assert_close(mis[1] - mis[0], torch.full((6,), math.log(6000.0)), rtol=0, atol=1e-4)


def test_unit_weights_are_the_negative_elbo_in_expectation() -> None:
    """With alpha = beta = gamma = 1, loss - (-elbo) = log q(z | x) - log p(z) - KL(q || p) per draw (the
    reconstructions are the same code's), which has mean 0 under q. Over many draws its average must lie within
    4 standard errors of 0 (estimated from the draws themselves)."""
    torch.manual_seed(0)
    model = BetaTCVAE(alpha=1.0, beta=1.0, gamma=1.0, latent_dim=3, dataset_size=500)
    x = images(8).repeat(500, 1, 1, 1)  # 500 draws of each of 8 images
    with torch.no_grad():
        out = model(x)
        diff = model.objective(x, out, Context())["loss"] + out.elbo  # (4000,)
    per_image = diff.view(500, 8)
    se = (per_image.var(0) / 500).sum().sqrt() / 8
    assert abs(diff.mean().item()) < 4 * se.item(), (diff.mean().item(), se.item())
    assert diff.std() > 0.1  # per draw the two differ: only the expectation agrees
    # A beta above 1 weighs the total correlation (> 0 on average for an MWS estimate) more: a larger loss.
    heavier = BetaTCVAE(beta=6.0, latent_dim=3, dataset_size=500)
    heavier.load_state_dict(model.state_dict())
    assert heavier.objective(x, out, Context())["loss"].mean() > diff.mean() - out.elbo.mean()


# ----- the dataset size N --------------------------------------------------------------------------


def test_without_a_dataset_size_the_error_says_how_to_give_it() -> None:
    model, x, out, _ = model_and_pass()
    with pytest.raises(VAEZooError, match=r"--model.dataset_size 60000 \(BetaTCVAE\(dataset_size=60000\)") as err:
        model.objective(x, out, Context())
    assert "\n" not in str(err.value)


def test_dataset_size_argument_overrides_the_datamodules() -> None:
    model, x, out, _ = model_and_pass(dataset_size=100)
    given = model.objective(x, out, Context(dataset_size=5000))
    reference, *_ = model_and_pass()
    expected = reference.objective(x, out, Context(dataset_size=100))
    for name in ("mi", "tc", "dwkl"):
        torch.testing.assert_close(given[name], expected[name])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.dataset_size", "0"], "dataset_size must be the number of training images (>= 1)"),
        (["--model.beta", "-1"], "beta must be >= 0"),
        (["--model.prior", "mog"], "needs a factorised prior on one Gaussian layer"),
    ],
)
def test_bad_values_through_the_cli(args: list[str], expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK, *args)
    assert expected in err


def test_fit_takes_n_from_the_datamodule_and_test_from_the_checkpoint(data: Path, capsys) -> None:
    """The DataModule's whole training split is N in training; `vaezoo test`, whose DataModule loads only the
    test split, takes the N the fit used from the checkpoint."""
    common = ["--config", RECIPE, "--data.root", str(data), *QUICK, "--model.latent_dim", "3",
              "--model.net.init_args.channels", "[8, 8]"]
    code, _, err = run_cli("fit", *common, "--trainer.limit_train_batches", "2", capsys=capsys)
    assert code == 0, err
    ckpt = Path("runs/mnist_betatc/version_0/checkpoints/last.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["betatc_dataset_size"] == 64 - 16  # the tiny MNIST's 64 training images less val_size 16
    code, out, err = run_cli("test", *common, "--ckpt_path", str(ckpt), capsys=capsys)
    assert code == 0, err
    for name in ("mi", "tc", "dwkl"):  # the three terms, in their unit
        assert any(line.split()[:1] == [f"test/{name}"] and "nats per image" in line for line in out.splitlines()), out
