"""The KL warm-up (``--model.kl_warmup_steps``) and He initialisation (``init: he``): what the VampPrior and
the hierarchical VAE train with (docs/models.md, "Measured quality")."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from tests.test_checkpoints import FAST, RECIPE
from tests.test_cli import run_cli
from vaezoo.errors import VAEZooError
from vaezoo.models.base import VAE, Context
from vaezoo.models.beta import BetaVAE
from vaezoo.models.betatc import BetaTCVAE
from vaezoo.models.hierarchical import HVAE
from vaezoo.models.iwae import IWAE
from vaezoo.models.vqvae import VQVAE
from vaezoo.nets.mlp import MLPNet


def _batch(model: VAE) -> tuple[torch.Tensor, object]:
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    return x, model(x)


def test_the_base_objective_weighs_the_kl_and_is_the_elbo_at_weight_one() -> None:
    model = VAE(latent_dim=4, iw_samples=None, kl_warmup_steps=10)
    x, out = _batch(model)
    torch.testing.assert_close(model.objective(x, out, Context(kl_weight=0.25))["loss"], out.recon + 0.25 * out.kl)
    torch.testing.assert_close(model.objective(x, out, Context(kl_weight=1.0))["loss"], -out.elbo)
    torch.testing.assert_close(model.objective(x, out, Context(kl_weight=0.0))["loss"], out.recon)


def test_beta_and_betatc_weigh_their_kl_terms_by_the_warmup() -> None:
    beta = BetaVAE(beta=3.0, latent_dim=4, iw_samples=None, kl_warmup_steps=10)
    x, out = _batch(beta)
    torch.testing.assert_close(beta.objective(x, out, Context(kl_weight=0.5))["loss"], out.recon + 1.5 * out.kl)

    tc = BetaTCVAE(alpha=1.0, beta=6.0, gamma=2.0, latent_dim=4, iw_samples=None, kl_warmup_steps=10)
    x, out = _batch(tc)
    context = Context(dataset_size=1000, kl_weight=0.5)
    terms = tc.objective(x, out, context)
    expected = out.recon + 0.5 * (terms["mi"] + 6.0 * terms["tc"] + 2.0 * terms["dwkl"])
    torch.testing.assert_close(terms["loss"], expected)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VAE(kl_warmup_steps=-1), "kl_warmup_steps must be >= 0"),
        (lambda: IWAE(k=5, kl_warmup_steps=100), "IWAE takes no KL warm-up: its bound"),
        (lambda: VQVAE(kl_warmup_steps=100), "VQVAE takes no KL warm-up: its KL is a constant"),
        (lambda: BetaVAE(capacity=25.0, kl_warmup_steps=100), "already schedules its KL"),
    ],
    ids=["negative", "iwae", "vqvae", "beta-capacity"],
)
def test_a_warmup_that_would_do_nothing_or_harm_is_refused(build, message: str) -> None:
    with pytest.raises(VAEZooError, match=message):
        build()


class ShortForm(VAE):
    """A user's variant written with the short form ``loss(out)``."""

    def loss(self, out):  # noqa: ANN001, ANN201
        return -out.elbo.mean()


def test_a_short_form_variant_cannot_silently_ignore_the_warmup() -> None:
    with pytest.raises(VAEZooError, match="short form loss\\(out\\).*context.kl_weight"):
        ShortForm(kl_warmup_steps=10)
    ShortForm(kl_warmup_steps=0)  # without a warm-up the short form is fine


def test_fit_warms_the_kl_weight_up_by_the_step_and_logs_it(data: Path, capsys) -> None:
    # 64 - 16 = 48 training images in batches of 8: 6 steps an epoch, a warm-up over 12 steps
    code, _, err = run_cli("fit", "--config", str(RECIPE), "--data.root", str(data), *FAST, "--trainer.max_epochs", "3",
                           "--model.kl_warmup_steps", "12", "--trainer.log_every_n_steps", "1", capsys=capsys)
    assert code == 0, err
    rows = list(csv.DictReader(Path("runs/mnist_mlp/version_0/metrics.csv").open()))
    by_step = {int(r["step"]): float(r["train/kl_weight_step"]) for r in rows if r.get("train/kl_weight_step")}
    # logged after step s's update: the weight of the step's loss was s / 12 (global_step before the update)
    assert by_step, rows[0].keys()
    for step, weight in by_step.items():
        assert math.isclose(weight, min(1.0, step / 12), abs_tol=1e-6), (step, weight)
    epochs = [float(r["train/kl_weight_epoch"]) for r in rows if r.get("train/kl_weight_epoch")]
    assert epochs == sorted(epochs) and epochs[0] < 0.5 and epochs[-1] > 0.9, epochs
    vals = [float(r["val/kl_weight"]) for r in rows if r.get("val/kl_weight")]
    assert vals and all(v == 1.0 for v in vals)  # evaluation scores the true ELBO


def test_he_initialisation_has_variance_two_over_fan_in_and_zero_biases() -> None:
    torch.manual_seed(0)
    net = MLPNet((1, 28, 28), 50, 1, hidden_dims=[400, 400], activation="tanh", init="he")
    first = net.encoder[1]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert torch.count_nonzero(first.bias) == 0
    default = MLPNet((1, 28, 28), 50, 1, hidden_dims=[400, 400], activation="tanh")
    # PyTorch's default: uniform in +-1/sqrt(fan_in), standard deviation 1/sqrt(3 fan_in)
    assert default.encoder[1].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 784), rel=0.02)
    assert torch.count_nonzero(default.encoder[1].bias) > 0

    hvae = HVAE(latent_dims=[20, 10], hidden_dims=[300], init="he")
    layer = hvae.latent.up[0].net[0]
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 20), rel=0.1)
    assert torch.count_nonzero(layer.bias) == 0
