"""Priors as parts: their densities against mixtures written out here, their samples, the KL (analytic or
sampled), and bad priors named at start-up."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.test_bad_input import fails
from tests.test_checkpoints import FAST, RECIPE
from tests.test_cli import run_cli
from vaezoo import VAE
from vaezoo.errors import VAEZooError
from vaezoo.priors import MixturePrior, NormalPrior, Prior, VampPrior
from vaezoo.registry import PRIORS

FIT = ["fit", "--config", str(RECIPE), *FAST, "--trainer.max_epochs", "1"]


def normal_pdf(z: float, mean: float, var: float) -> float:
    return math.exp(-((z - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def mixture_density(z: list[float], means: Tensor, logvars: Tensor, weights: Tensor) -> float:
    """sum_k w_k prod_l N(z_l; m_kl, exp(v_kl)), one scalar at a time."""
    total = 0.0
    for k in range(len(weights)):
        product = 1.0
        for l, z_l in enumerate(z):
            product *= normal_pdf(z_l, float(means[k, l]), math.exp(float(logvars[k, l])))
        total += float(weights[k]) * product
    return total


def test_the_registry_lists_the_three_priors() -> None:
    assert {"normal", "mog", "vamp"} <= set(PRIORS.names())


def test_kl_of_the_standard_normal_to_itself_is_zero_and_matches_torch() -> None:
    prior = NormalPrior()
    prior.bind(3, (1, 2, 2), lambda x: (x, x))
    assert torch.equal(prior.kl_per_dim(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(prior.kl_per_dim(mean, logvar), expected)
    z = torch.randn(5, 4, 3)
    torch.testing.assert_close(prior.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_mixture_log_prob_is_the_mixture_density() -> None:
    torch.manual_seed(0)
    prior = MixturePrior(components=3)
    prior.bind(2, (1, 2, 2), lambda x: (x, x))
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        prior.logvars.copy_(torch.randn(3, 2) * 0.3)
    z = torch.randn(4, 2)
    weights = torch.softmax(prior.logits.detach(), 0)
    for i in range(4):
        expected = math.log(mixture_density(z[i].tolist(), prior.means.detach(), prior.logvars.detach(), weights))
        assert float(prior.log_prob(z[i])) == pytest.approx(expected, rel=1e-5)


def test_mixture_samples_come_from_the_mixture() -> None:
    prior = MixturePrior(components=2, learn_weights=False)
    prior.bind(1, (1, 2, 2), lambda x: (x, x))
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-10.0], [10.0]]))
        prior.logvars.copy_(torch.tensor([[0.0], [math.log(4.0)]]))
    z = prior.sample(20_000, torch.Generator().manual_seed(0))[:, 0]
    left, right = z[z < 0], z[z > 0]
    assert len(left) / len(z) == pytest.approx(0.5, abs=0.02)  # uniform weights
    assert float(left.mean()) == pytest.approx(-10, abs=0.05) and float(left.std()) == pytest.approx(1, abs=0.05)
    assert float(right.mean()) == pytest.approx(10, abs=0.1) and float(right.std()) == pytest.approx(2, abs=0.1)
    again = prior.sample(20_000, torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(z, again)  # a generator gives the same codes


def test_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=2, prior=VampPrior(pseudo_inputs=3), iw_samples=None).double()
    prior = model.latent.prior
    u = torch.nn.functional.hardtanh(prior.u.detach(), 0.0, 1.0)  # (3, 1, 28, 28)
    mean, logvar = model.net.encoder(u).chunk(2, dim=1)  # the encoder's posteriors, written out
    z = torch.randn(5, 2, dtype=torch.float64)
    for i in range(5):
        expected = math.log(mixture_density(z[i].tolist(), mean.detach(), logvar.detach(), torch.full((3,), 1 / 3)))
        assert float(prior.log_prob(z[i])) == pytest.approx(expected, rel=1e-6)
    # Its samples follow the mixture: the mixture's mean and variance, within sampling error.
    draws = prior.sample(40_000, torch.Generator().manual_seed(1)).double()
    mix_mean = mean.mean(0)
    mix_var = (logvar.exp() + mean.pow(2)).mean(0) - mix_mean.pow(2)
    torch.testing.assert_close(draws.mean(0), mix_mean.detach(), atol=4 * float(mix_var.max().sqrt()) / 200, rtol=0)
    torch.testing.assert_close(draws.var(0), mix_var.detach(), rtol=0.05, atol=0)


def test_vamp_prior_gradients_reach_the_pseudo_inputs_and_the_encoder() -> None:
    model = VAE(latent_dim=2, prior=VampPrior(pseudo_inputs=4), iw_samples=None)
    out = model(torch.rand(3, 1, 28, 28))
    assert not out.latent.kl_analytic
    (-out.elbo.mean()).backward()
    assert model.latent.prior.u.grad is not None and model.latent.prior.u.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.net.encoder.parameters())


def test_a_sampled_kl_estimates_the_analytic_one() -> None:
    # A one-component mixture fixed at N(0, I) is the standard normal: the sampled KL's mean is the closed form.
    torch.manual_seed(0)
    prior = MixturePrior(components=1, learn_weights=False, init_scale=0.0)
    model = VAE(latent_dim=3, prior=prior, iw_samples=None)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        analytic = VAE(latent_dim=3, iw_samples=None)
        analytic.net.load_state_dict(model.net.state_dict())
        exact = analytic(x).kl
        sampled = model(x, 20_000).kl  # the mean of 20,000 single-sample estimates
    torch.testing.assert_close(sampled, exact, rtol=0.02, atol=0.02)
    assert model._kl_key == "kl_mc" and analytic._kl_key == "kl"


def test_everything_that_draws_goes_through_the_prior() -> None:
    model = VAE(latent_dim=2, prior=MixturePrior(components=1, learn_weights=False), iw_samples=None)
    with torch.no_grad():
        model.latent.prior.means.fill_(50.0)  # far from N(0, I): a draw from N(0, I) would show
        model.latent.prior.logvars.fill_(-20.0)
    codes = model.sample_codes(7, torch.Generator().manual_seed(0))
    torch.testing.assert_close(codes, torch.full((7, 2), 50.0), atol=1e-3, rtol=0)
    seen: list[Tensor] = []
    decode = model.decode
    model.decode = lambda z: seen.append(z) or decode(z)  # type: ignore[method-assign]
    model.sample(3)
    from vaezoo.callbacks import ImageLogger

    ImageLogger(num_images=4).sample_grid(model)
    assert len(seen) == 2 and all(float(z.mean()) == pytest.approx(50.0, abs=1e-2) for z in seen)


class WrongShapePrior(Prior):
    """A broken plugin: log_prob keeps the code dimension."""

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * z.pow(2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)


def test_a_prior_with_the_wrong_shapes_is_named_when_the_model_is_built(capsys, data: Path) -> None:
    with pytest.raises(VAEZooError, match=r"prior WrongShapePrior.log_prob\(z\) returned shape \(2, 3, 4\)"):
        VAE(latent_dim=4, prior=WrongShapePrior())
    err = fails(capsys, *FIT, "--data.root", str(data), "--model.prior", "tests.test_priors.WrongShapePrior")
    assert "prior WrongShapePrior.log_prob(z) returned shape" in err and "must sum over the last dimension" in err


def test_a_vamp_prior_with_more_pseudo_inputs_than_images_is_refused(capsys, data: Path) -> None:
    err = fails(capsys, *FIT, "--data.root", str(data), "--model.prior", "vamp", "--model.prior.pseudo_inputs", "100")
    assert "the vamp prior has 100 pseudo-inputs, more than the 48 training images" in err
    assert "--model.prior.pseudo_inputs 48 or fewer" in err
    assert not list(Path.cwd().rglob("*.ckpt"))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_learned_priors_train_through_the_cli_and_log_a_sampled_kl(prior: str, capsys, data: Path) -> None:
    extra = ["--model.prior.pseudo_inputs", "8"] if prior == "vamp" else []
    code, _, err = run_cli(*FIT, "--data.root", str(data), "--model.prior", prior, *extra, capsys=capsys)
    assert code == 0, err
    header = Path("runs/mnist_mlp/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/kl_mc" in header and "val/kl" not in header
    state = torch.load("runs/mnist_mlp/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert any(key.startswith("latent.prior.") for key in state)  # learned: its parameters travel


def test_the_test_nll_encodes_the_vamp_pseudo_inputs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from vaezoo.models import importance

    torch.manual_seed(0)
    model = VAE(latent_dim=2, prior=VampPrior(pseudo_inputs=5), iw_samples=None).eval()
    prior = model.latent.prior
    calls = []
    encode = prior._encode
    prior._encode = lambda u: calls.append(len(u)) or encode(u)
    monkeypatch.setattr(importance, "chunk_rows", lambda *args, **kwargs: 6)  # 2 samples of 3 images per chunk
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    cached = model.importance_log_likelihood(x, 20)
    assert calls == [5]  # once, not once per chunk (10 chunks)
    monkeypatch.setattr(prior, "fixed", contextlib.nullcontext)
    torch.manual_seed(1)
    torch.testing.assert_close(model.importance_log_likelihood(x, 20), cached)
    assert len(calls) == 1 + 10
