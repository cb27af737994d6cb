"""The three one-file plugins of docs/extending.md (docs/plugins/) work as the docs say: a new prior, a new
objective and a new kind of latent, each trained, validated and tested through the real CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.test_checkpoints import FAST, RECIPE
from tests.test_cli import REPO, run_cli

PLUGINS = REPO / "docs" / "plugins"


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.mark.parametrize(
    ("args", "logged"),
    [
        (["--model.prior", "student_t_prior.StudentTPrior", "--model.prior.nu", "4"], "val/kl_mc"),
        (["--model", "free_bits.FreeBitsVAE", "--model.free_nats", "0.5", "--model.latent_dim", "8",
          "--model.net", "mlp", "--model.likelihood", "bernoulli"], "train/free_kl_epoch"),
        (["--model", "gumbel_latent.GumbelVAE", "--model.classes", "4", "--model.latent_dim", "12",
          "--model.iw_samples", "null", "--model.net", "mlp", "--model.likelihood", "bernoulli"], "val/kl"),
    ],
    ids=["prior", "objective", "latent"],
)
def test_each_plugin_fits_validates_and_tests(args: list[str], logged: str, data: Path, capsys) -> None:
    code, _, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST, "--trainer.max_epochs", "2",
                           *args, capsys=capsys)
    assert code == 0, err
    metrics = Path("runs/mnist_mlp/version_0/metrics.csv").read_text()
    assert logged in metrics.splitlines()[0].split(","), metrics.splitlines()[0]
    rows = [line for line in metrics.splitlines()[1:] if line]
    assert rows and "nan" not in metrics
    code, out, err = run_cli("test", "--config", "runs/mnist_mlp/version_0/config.yaml", "--ckpt_path", "last",
                             capsys=capsys)
    assert code == 0, err
    assert "test/elbo" in out
    assert list(Path("runs/mnist_mlp/version_0/images").glob("val_images_samples_*.png"))


def test_the_free_bits_objective_charges_at_least_lambda_per_unit() -> None:
    import free_bits

    torch.manual_seed(0)
    model = free_bits.FreeBitsVAE(latent_dim=4, iw_samples=None)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    from vaezoo.models.base import Context

    mean, logvar = out.posterior.mean, out.posterior.logvar
    per_unit = (0.5 * (mean**2 + logvar.exp() - 1 - logvar)).mean(0)  # (L,), written out
    model.free_nats = lam = per_unit.sort().values[1:3].mean().item()  # two units below lambda, two above
    expected = out.recon + torch.where(per_unit > lam, per_unit, torch.full_like(per_unit, lam)).sum()
    torch.testing.assert_close(model.objective(x, out, Context())["loss"], expected)
    # lambda = 0 is the ELBO (on the batch mean); under a KL warm-up the free KL is weighed too
    model.free_nats = 0.0
    torch.testing.assert_close(model.objective(x, out, Context())["loss"].mean(), -out.elbo.mean())
    warm = model.objective(x, out, Context(kl_weight=0.5))["loss"]
    torch.testing.assert_close(warm, out.recon + 0.5 * per_unit.sum())


def test_the_gumbel_latents_kl_is_the_categorical_kl_to_uniform() -> None:
    import gumbel_latent

    torch.manual_seed(0)
    model = gumbel_latent.GumbelVAE(classes=3, latent_dim=6, iw_samples=None)
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    logits = model.latent._logits(model.net.encoder(x))  # (B, 2, 3)
    p = torch.softmax(logits, -1)
    expected = (p * (p.log() - math.log(1 / 3))).sum((-1, -2))
    torch.testing.assert_close(out.kl, expected)
    codes = model.sample_codes(5)
    assert codes.shape == (5, 6) and torch.equal(codes.unflatten(1, (2, 3)).sum(-1), torch.ones(5, 2))


def test_the_docs_state_each_plugins_line_count() -> None:
    text = (REPO / "docs" / "extending.md").read_text()
    for name in ("student_t_prior.py", "free_bits.py", "gumbel_latent.py"):
        lines = len((PLUGINS / name).read_text().splitlines())
        assert f"docs/plugins/{name}` ({lines} lines)" in text, name
