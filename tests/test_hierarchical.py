"""The hierarchical VAE (``hvae``): its ELBO against densities written out here, one layer is vanilla, the
importance-weighted bound, top-down sampling, and the recipe and bad input through the CLI."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from tests.test_bad_input import fails
from tests.test_cli import REPO, SMALL, run_cli
from vaezoo.errors import VAEZooError
from vaezoo.models import VAE, HVAE
from vaezoo.nets import MLPNet
from vaezoo.priors import MixturePrior

NET = partial(MLPNet, hidden_dims=[32], activation="tanh")
RECIPE = str(REPO / "configs" / "mnist_hvae.yaml")


def _batch(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).bernoulli()


def _gaussian(params: torch.Tensor) -> Normal:
    """The Normal whose mean and log-variance lie side by side in the last dimension."""
    mean, logvar = params.chunk(2, -1)
    return Normal(mean, (0.5 * logvar).exp())


def test_two_layer_elbo_and_log_weights_match_the_densities_written_out() -> None:
    torch.manual_seed(0)
    model = HVAE(latent_dims=[6, 4], hidden_dims=[16], net=NET)
    x, k = _batch(), 3
    torch.manual_seed(1)
    out = model(x, k)

    # The same draws by hand: eps_1 for z_1 ~ q(z_1 | x), then eps_2 for z_2 ~ q(z_2 | z_1).
    torch.manual_seed(1)
    q1 = _gaussian(model.net.encoder(x))  # (B, 6)
    z1 = q1.mean + q1.stddev * torch.randn(k, 5, 6)
    q2 = _gaussian(model.latent.up[0].net(z1))  # (k, B, 4), given each chain's z_1
    z2 = q2.mean + q2.stddev * torch.randn(k, 5, 4)
    p1 = _gaussian(model.latent.down[0].net(z2))  # p(z_1 | z_2)
    log_px = Bernoulli(logits=model.net.decoder(z1.flatten(0, 1))).log_prob(x.repeat(k, 1, 1, 1)).flatten(1).sum(1)
    log_px = log_px.view(k, 5)
    log_q1, log_q2 = q1.log_prob(z1).sum(-1), q2.log_prob(z2).sum(-1)  # (k, B)
    log_p1, log_p2 = p1.log_prob(z1).sum(-1), Normal(0.0, 1.0).log_prob(z2).sum(-1)

    torch.testing.assert_close(out.latent.z, z1)
    torch.testing.assert_close(out.log_px, log_px)
    torch.testing.assert_close(out.latent.log_q, log_q1 + log_q2)
    torch.testing.assert_close(out.latent.log_p, log_p1 + log_p2)
    torch.testing.assert_close(out.log_weights(), log_px + log_p1 + log_p2 - log_q1 - log_q2)
    # The KL: z_1's part sampled, z_2's analytic given each chain's z_1, averaged over the k chains.
    kl_z1 = (log_q1 - log_p1).mean(0)
    kl_z2 = kl_divergence(q2, Normal(0.0, 1.0)).sum(-1).mean(0)
    torch.testing.assert_close(out.latent.stats["kl_z1"], kl_z1)
    torch.testing.assert_close(out.latent.stats["kl_z2"], kl_z2)
    torch.testing.assert_close(out.kl, kl_z1 + kl_z2)
    torch.testing.assert_close(out.elbo, log_px.mean(0) - kl_z1 - kl_z2)
    assert out.latent.kl_analytic is False and out.kl_per_dim is None and model._kl_key == "kl_mc"
    # activity: q(z_1 | x)'s mean, then E[z_2 | x] estimated by the chains' conditional means.
    torch.testing.assert_close(out.latent.activity, torch.cat([q1.mean, q2.mean.mean(0)], -1))

    # Every part of the model learns from the ELBO.
    model.loss(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_the_analytic_top_layer_has_the_expectation_of_the_sampled_one() -> None:
    """E_{z_1}[KL(q(z_2 | z_1) || N(0, I))] = E_q[log q(z_2 | z_1) - log p(z_2)]: the analytic term is unbiased."""
    torch.manual_seed(0)
    model = HVAE(latent_dims=[6, 4], hidden_dims=[16], net=NET)
    with torch.no_grad():
        out = model(_batch(2), 20_000)
    sampled = out.latent.log_q - out.latent.log_p  # (k, B): both layers sampled
    kl_z1 = out.latent.stats["kl_z1"]
    estimate, error = sampled.mean(0), sampled.std(0) / 20_000**0.5
    assert ((out.kl - estimate).abs() < 4 * error).all(), (out.kl, estimate, error)
    assert (out.kl - kl_z1 > 0).all()  # the top layer's KL, analytic: positive


def test_a_learned_top_prior_makes_every_layer_sampled() -> None:
    torch.manual_seed(0)
    model = HVAE(latent_dims=[6, 4], hidden_dims=[16], net=NET, prior=MixturePrior(components=3))
    out = model(_batch(), 4)
    torch.testing.assert_close(out.kl, (out.latent.log_q - out.latent.log_p).mean(0))
    assert model.latent.describe()["kl"] == "sampled"


def test_one_layer_is_vanilla_exactly() -> None:
    torch.manual_seed(0)
    vanilla = VAE(latent_dim=8, net=NET)
    hvae = HVAE(latent_dims=[8], net=NET)
    hvae.load_state_dict(vanilla.state_dict())  # strict: the same parameters, nothing more
    x = _batch(6)
    for k in (1, 4):
        outs = []
        for model in (vanilla, hvae):
            torch.manual_seed(3)
            outs.append(model(x, k))
        v, h = outs
        assert torch.equal(h.latent.z, v.latent.z) and torch.equal(h.log_px, v.log_px)
        assert torch.equal(h.kl, v.kl) and torch.equal(h.kl_per_dim, v.kl_per_dim) and torch.equal(h.elbo, v.elbo)
        assert h.latent.kl_analytic and h.latent.log_q is None and h.latent.stats == {}
    assert hvae._kl_key == vanilla._kl_key == "kl" and hvae.train_sums.names == vanilla.train_sums.names
    nll = []
    for model in (vanilla, hvae):
        torch.manual_seed(5)
        nll.append(model.importance_log_likelihood(x, 7))
    assert torch.equal(nll[0], nll[1])
    codes = [m.sample_codes(4, torch.Generator().manual_seed(2)) for m in (vanilla, hvae)]
    assert torch.equal(codes[0], codes[1])
    assert torch.equal(hvae.encode(x).mean, vanilla.encode(x).mean)


def test_the_importance_weighted_bound_is_above_the_elbo_and_grows_with_k() -> None:
    torch.manual_seed(0)
    model = HVAE(latent_dims=[6, 4], hidden_dims=[16], net=NET)
    x = _batch(8)
    with torch.no_grad():
        elbo = model(x, 2000).elbo.mean()  # its expectation to within ~0.1 nats
        # L_k over 10 repeats: standard errors ~0.15 nats (k = 10) and ~0.07 (k = 100); the gaps are ~5 and ~1.
        bounds = {k: torch.stack([model.importance_log_likelihood(x, k) for _ in range(10)]).mean() for k in (10, 100)}
    assert elbo < bounds[10] - 2 and bounds[10] < bounds[100] - 0.4, (elbo, bounds)


def test_sample_draws_top_down_from_the_generative_model() -> None:
    torch.manual_seed(0)
    model = HVAE(latent_dims=[6, 4, 3], hidden_dims=[16], net=NET)
    codes = model.sample_codes(5, torch.Generator().manual_seed(7))
    assert codes.shape == (5, 6)
    assert torch.equal(codes, model.sample_codes(5, torch.Generator().manual_seed(7)))
    # By hand, from the same generator: z_3 ~ N(0, I), then z_2 ~ p(z_2 | z_3), then z_1 ~ p(z_1 | z_2).
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(5, 3, generator=gen)
    with torch.no_grad():
        for down in (model.latent.down[1], model.latent.down[0]):
            p = _gaussian(down.net(z))
            z = p.mean + p.stddev * torch.randn(p.mean.shape, generator=gen)
    torch.testing.assert_close(codes, z)
    assert not torch.allclose(codes, p.mean)  # a draw, not the mean
    assert model.sample(4).shape == (4, 1, 28, 28)
    assert model.reconstruct(_batch(3)).shape == (3, 1, 28, 28)
    assert model.code(_batch(3)).shape == model.encode(_batch(3)).mean.shape == (3, 6)
    out = model(_batch(3))
    assert out.latent.activity.shape == (3, 13) and set(out.latent.stats) == {"kl_z1", "kl_z2", "kl_z3"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dims": []}, "latent_dims must list one or more positive layer sizes"),
        ({"latent_dims": [8, 0]}, "latent_dims must list one or more positive layer sizes"),
        ({"hidden_dims": [16, -1]}, "hidden_dims must be positive widths"),
        ({"latent_dims": [8, 4], "latent_dim": 5}, "hvae takes latent_dim from latent_dims[0] = 8"),
    ],
)
def test_bad_layers_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(VAEZooError, match=message.replace("[", r"\[").replace("]", r"\]")):
        HVAE(net=NET, **kwargs)
    assert HVAE(latent_dims=[8, 4], latent_dim=8, net=NET).latent_dim == 8  # the same value is fine


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.latent_dims", "[]"], "latent_dims must list one or more positive layer sizes"),
        (["--model.latent_dims", "[100, 0]"], "latent_dims must list one or more positive layer sizes"),
        (["--model.latent_dim", "32"], "hvae takes latent_dim from latent_dims[0] = 100 (the bottom layer)"),
        (["--model.prior", "vamp"], "use --model.prior normal or mog"),
    ],
)
def test_bad_input_through_the_cli(args: list[str], message: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *SMALL, *args)
    assert message in err


def test_fit_then_test_reports_the_importance_weighted_nll(data: Path, capsys) -> None:
    common = ["--config", RECIPE, "--data.root", str(data), *SMALL, "--model.latent_dims", "[8, 4]",
              "--model.hidden_dims", "[16]", "--model.net.hidden_dims", "[32]", "--model.iw_samples", "5",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    code, _, err = run_cli("fit", *common, "--trainer.max_epochs", "1", capsys=capsys)
    assert code == 0, err
    # The saved config holds latent_dim: null (derived): the checkpoint must still load.
    code, out, err = run_cli("test", *common, "--ckpt_path", "runs/mnist_hvae/version_0/checkpoints/last.ckpt",
                             capsys=capsys)
    assert code == 0, err
    for key in ("test/elbo", "test/nll (k=5)", "test/kl_mc", "test/kl_z1", "test/kl_z2", "test/active_units"):
        assert key in out, out
    # A model of other layers, built in Python, refuses the checkpoint by name (the CLI builds the checkpoint's).
    checkpoint = torch.load("runs/mnist_hvae/version_0/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["latent_dim"] is None
    HVAE(latent_dims=[8, 4], hidden_dims=[16], net=NET).on_load_checkpoint(checkpoint)
    with pytest.raises(VAEZooError, match=r"latent_dims \[8, 4\] \(checkpoint\) vs \[8, 3\] \(config\)"):
        HVAE(latent_dims=[8, 3], hidden_dims=[16], net=NET).on_load_checkpoint(checkpoint)
