"""The ELBO machinery: known values, beta = 1 is vanilla, and every variant x net x image shape."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal, kl_divergence

from vaezoo.errors import VAEZooError
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic
from vaezoo.models import VAE, BetaVAE, DiagonalGaussian
from vaezoo.models.base import Context
from vaezoo.registry import NETS, VARIANTS

SHAPES = [(1, 28, 28), (3, 32, 32)]


def test_kl_of_standard_normal_to_itself_is_zero() -> None:
    q = DiagonalGaussian(torch.zeros(4, 8), torch.zeros(4, 8))
    assert torch.equal(q.kl_per_dim(), torch.zeros(4, 8))


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, logvar = torch.randn(6, 5), torch.randn(6, 5)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl_per_dim(), expected)


def test_rsample_has_the_posterior_moments() -> None:
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.tensor([[1.5, -2.0]]).expand(200_000, 2), torch.tensor([[0.0, math.log(4.0)]]).expand(200_000, 2))
    z = q.rsample()
    torch.testing.assert_close(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)


def test_elbo_matches_an_independent_computation() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4)
    x = torch.rand(8, 1, 28, 28).bernoulli()
    torch.manual_seed(1)
    out = model(x)
    mean, logvar = model.net.encoder(x).chunk(2, 1)
    torch.manual_seed(1)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    log_px = TorchBernoulli(logits=model.net.decoder(z)).log_prob(x).flatten(1).sum(1)
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(out.elbo, log_px - kl)
    torch.testing.assert_close(model.loss(out), -(log_px - kl).mean())


def test_beta_one_equals_the_vanilla_elbo() -> None:
    torch.manual_seed(0)
    vanilla, beta = VAE(latent_dim=8), BetaVAE(beta=1.0, latent_dim=8)
    beta.load_state_dict(vanilla.state_dict())
    x = torch.rand(16, 1, 28, 28).bernoulli()
    torch.manual_seed(3)
    loss_v = vanilla.objective(x, vanilla(x), Context())["loss"]
    torch.manual_seed(3)
    out = beta(x)
    loss_b = beta.objective(x, out, Context())["loss"]
    torch.testing.assert_close(loss_b, loss_v)
    torch.testing.assert_close(loss_b, out.recon + out.kl)  # -ELBO, written out
    assert (BetaVAE(beta=4.0, latent_dim=8).objective(x, out, Context())["loss"] > loss_b).all()  # KL weighs more


def test_controlled_capacity_anneals_c_linearly(monkeypatch: pytest.MonkeyPatch) -> None:
    model = BetaVAE(beta=100.0, capacity=20.0, capacity_steps=1000, latent_dim=4)
    torch.manual_seed(0)
    out = model(torch.rand(4, 1, 28, 28).bernoulli())
    for step, target in [(0, 0.0), (250, 5.0), (1000, 20.0), (5000, 20.0)]:
        monkeypatch.setattr(BetaVAE, "global_step", property(lambda self, s=step: s))
        assert model.capacity_target() == pytest.approx(target)
        expected = out.recon.mean() + 100.0 * (out.kl.mean() - target).abs()
        torch.testing.assert_close(model.objective(None, out, Context())["loss"].mean(), expected)


@pytest.mark.parametrize("bad", [{"beta": -1.0}, {"capacity": -1.0}, {"capacity": 5.0, "capacity_steps": 0}])
def test_beta_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(VAEZooError):
        BetaVAE(**bad)


def test_latent_dim_must_be_positive() -> None:
    with pytest.raises(VAEZooError, match="latent_dim"):
        VAE(latent_dim=0)


def test_conv_net_pads_sizes_its_layers_do_not_divide() -> None:
    # 28 is not divisible by 2**3: padded to 32 inside the net, cropped back to 28 (tests/test_nets.py).
    model = VAE(net=partial(NETS.get("conv"), channels=[8, 8, 8]), image_shape=(1, 28, 28))
    assert model.sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("net", NETS.names())
@pytest.mark.parametrize("variant", VARIANTS.names())
def test_every_variant_with_every_net(variant: str, net: str, shape: tuple[int, int, int]) -> None:
    """Without a Trainer: the forward pass, the objective, gradients and every way of drawing, for any latent."""
    torch.manual_seed(0)
    likelihood = Bernoulli() if shape[0] == 1 else DiscretizedLogistic()
    model = VARIANTS.get(variant)(net=NETS.get(net), likelihood=likelihood, image_shape=shape, iw_samples=None)
    d = model.latent.code_dim
    x = torch.randint(0, 256, (3, *shape)).float() / 255
    if shape[0] == 1:
        x = x.bernoulli()
    out = model(x, model.train_samples)
    terms = model.objective(x, out, Context(dataset_size=1000))
    loss = (terms["loss"] + sum(out.latent.extra.values())).mean()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert out.elbo.shape == (3,) and out.latent.z.shape == (model.train_samples, 3, d)
    assert out.kl_per_dim is None or out.kl_per_dim.shape == (3, model.latent.activity_dim)
    assert set(model.objective_terms) <= set(terms) and set(model.latent.terms) <= {*out.latent.extra, *out.latent.stats}
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained if p.grad is not None)
    assert all(p.grad is not None for p in model.net.parameters())
    assert model.sample(5).shape == (5, *shape)
    assert model.reconstruct(x).shape == x.shape
    assert model.code(x).shape == (3, d)
    assert model.decode(torch.zeros(2, d)).shape == (2, shape[0] * likelihood.params_per_channel, *shape[1:])
    if model.latent.iw_reason is None:
        log_px = model.importance_log_likelihood(x, 4)  # the decoder probed, samples chunked, the likelihood broadcast
        assert log_px.shape == (3,) and torch.isfinite(log_px).all()
    else:
        with pytest.raises(VAEZooError, match="no importance-weighted NLL"):
            model.importance_log_likelihood(x, 4)


def test_a_few_steps_of_adam_raise_the_elbo() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=8)
    x = (torch.rand(64, 1, 28, 28) < 0.1).float()  # sparse pixels: ~255 nats is reachable
    opt = model.configure_optimizers()
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(model(x))
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first - 50  # from ~545 nats (uniform logits) down


def test_conv_net_runs_channels_last_inside_and_hands_out_nchw() -> None:
    torch.manual_seed(0)
    net = NETS.get("conv")((3, 32, 32), 4, 6)
    plain = NETS.get("conv")((3, 32, 32), 4, 6)
    plain.to(memory_format=torch.contiguous_format)
    plain.load_state_dict(net.state_dict())  # the same names and values in either layout
    assert net.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(5, 3, 32, 32)
    out = net.decoder(net.encoder(x)[:, :4])
    assert out.is_contiguous() and out.shape == (5, 6, 32, 32)
    with torch.no_grad():  # the same layers in new containers, without the nets' layout hooks: NCHW throughout
        reference = nn.Sequential(*plain.decoder)(nn.Sequential(*plain.encoder)(x)[:, :4])
    assert not reference.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
