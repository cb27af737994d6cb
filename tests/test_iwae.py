"""IWAE (Burda et al. 2015) and its DReG gradient (Tucker et al. 2019), against computations written out here."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.test_bad_input import QUICK, fails
from tests.test_cli import REPO
from vaezoo.data import MNISTDataModule
from vaezoo.errors import VAEZooError
from vaezoo.latents.hierarchical import HierarchicalLatent
from vaezoo.models import IWAE, VAE
from vaezoo.models.base import Context
from vaezoo.nets.mlp import MLPNet
from vaezoo.priors.base import Prior

_LOG_2PI = math.log(2 * math.pi)


def log_normal(z: Tensor, mean: Tensor | float, logvar: Tensor | float) -> Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension, written out."""
    logvar = torch.as_tensor(logvar)
    return (-0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + _LOG_2PI)).sum(-1)


def log_bernoulli(logits: Tensor, x: Tensor) -> Tensor:
    """sum over pixels of x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), written out."""
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(-3).sum(-1)


def log_weights_by_hand(model: VAE, x: Tensor, eps: Tensor, stop_q: bool = False) -> Tensor:
    """log w_i = log p(x | z_i) + log N(z_i; 0, I) - log q(z_i | x), ``(k, B)``, with z_i = mean + std * eps_i;
    ``stop_q`` evaluates log q with detached mean and logvar (DReG's surrogate)."""
    mean, logvar = model.net.encoder(x).chunk(2, dim=-1)  # (B, L) each
    z = mean + (0.5 * logvar).exp() * eps  # (k, B, L)
    logits = model.net.decoder(z.flatten(0, 1)).unflatten(0, eps.shape[:2])  # (k, B, 1, H, W)
    q_mean, q_logvar = (mean.detach(), logvar.detach()) if stop_q else (mean, logvar)
    return log_bernoulli(logits, x) + log_normal(z, 0.0, 0.0) - log_normal(z, q_mean, q_logvar)


def pair(k: int, latent_dim: int = 4, **kwargs) -> tuple[IWAE, IWAE]:
    """An IWAE with the default gradient and one with DReG, with the same weights."""
    torch.manual_seed(0)
    iwae, dreg = IWAE(k=k, latent_dim=latent_dim, **kwargs), IWAE(k=k, gradient="dreg", latent_dim=latent_dim, **kwargs)
    dreg.load_state_dict(iwae.state_dict())
    return iwae, dreg


def loss_and_grads(model: VAE, x: Tensor, k: int, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The batch-mean loss of ``model.objective`` on k codes drawn from ``seed``, and every parameter's gradient."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model.objective(x, model(x, k), Context())["loss"].mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def images(n: int, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 1) -> Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)).bernoulli()


# ----- the bound -----------------------------------------------------------------------------------


def test_k_one_is_the_vanilla_vae_exactly() -> None:
    torch.manual_seed(0)
    vanilla, iwae = VAE(latent_dim=8), IWAE(k=1, latent_dim=8)
    iwae.load_state_dict(vanilla.state_dict())
    assert iwae.train_samples == 1 and iwae.needs_log_weights
    x = images(16)
    loss_v, grads_v = loss_and_grads(vanilla, x, 1, seed=3)
    loss_i, grads_i = loss_and_grads(iwae, x, 1, seed=3)
    assert torch.equal(loss_i, loss_v)
    for name, grad in grads_v.items():
        assert torch.equal(grads_i[name], grad), name


def test_bound_is_the_log_mean_weight_of_explicit_densities() -> None:
    torch.manual_seed(0)
    model, k = IWAE(k=7, latent_dim=4), 7
    x = images(5)
    torch.manual_seed(11)
    out = model(x, k)
    terms = model.objective(x, out, Context())
    torch.manual_seed(11)
    eps = torch.randn(k, 5, 4)  # what the latent drew: the same stream, the same shape
    log_w = log_weights_by_hand(model, x, eps)
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(terms["iw_bound"], expected, rtol=0, atol=2e-4)
    torch.testing.assert_close(terms["loss"], -expected, rtol=0, atol=2e-4)
    # The logged elbo stays the ELBO: the k codes' mean of log p(x | z) minus the analytic KL. Each z_i ~ q,
    # so the mean is unbiased for E_q log p(x | z), and it is no importance-weighted bound.
    mean, logvar = model.net.encoder(x).chunk(2, dim=-1)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
    z = mean + (0.5 * logvar).exp() * eps
    log_px = log_bernoulli(model.net.decoder(z.flatten(0, 1)).unflatten(0, (k, 5)), x)
    torch.testing.assert_close(out.elbo, log_px.mean(0) - kl, rtol=0, atol=2e-4)
    assert bool((terms["iw_bound"] > out.elbo - 1).all())  # untrained: L_7 well above the ELBO's estimate


def test_bound_grows_with_k_on_average() -> None:
    torch.manual_seed(0)
    model = IWAE(k=1, latent_dim=4)
    draws = 256
    x = images(4).repeat(draws, 1, 1, 1)  # 256 draws of each of 4 images
    means = []
    with torch.no_grad():
        for k in (1, 5, 50):
            bound = model.objective(x, model(x, k), Context())["loss"].neg().view(draws, 4)  # L_k per draw
            # The images are the same for every k: only the draws' spread within an image is noise.
            means.append((bound.mean().item(), (bound.var(0) / draws).sum().sqrt().item() / 4))
    for (low, se_low), (high, se_high) in zip(means, means[1:]):
        assert high - low > 4 * math.hypot(se_low, se_high), means  # beyond the draws' noise


# ----- DReG ----------------------------------------------------------------------------------------


def test_dreg_encoder_gradient_is_the_weighted_path_gradient_and_decoder_gradient_iwae_s() -> None:
    k, seed = 6, 5
    iwae, dreg = pair(k)
    x = images(5)
    loss_i, grads_i = loss_and_grads(iwae, x, k, seed)
    loss_d, grads_d = loss_and_grads(dreg, x, k, seed)
    torch.testing.assert_close(loss_d, loss_i)  # the same bound; only its gradient differs
    # The encoder's DReG gradient, computed here: the surrogate sum_i sg(w~_i^2) log w_i, log q with stopped
    # mean and logvar, so the encoder is reached through z only.
    torch.manual_seed(seed)
    eps = torch.randn(k, 5, 4)
    log_w = log_weights_by_hand(dreg, x, eps, stop_q=True)  # (k, B)
    w_tilde = torch.softmax(log_w.detach(), 0)
    surrogate = -(w_tilde**2 * log_w).sum(0).mean()
    encoder = dict(dreg.net.encoder.named_parameters())
    expected = torch.autograd.grad(surrogate, list(encoder.values()))
    for (name, _), grad in zip(encoder.items(), expected):
        torch.testing.assert_close(grads_d[f"net.encoder.{name}"], grad, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(grads_d[f"net.encoder.{name}"], grads_i[f"net.encoder.{name}"])
    decoder = [n for n in grads_i if n.startswith("net.decoder.")]
    assert decoder
    for name in decoder:
        torch.testing.assert_close(grads_d[name], grads_i[name])


def test_dreg_and_iwae_encoder_gradients_agree_on_average() -> None:
    """DReG is unbiased: over many draws its encoder gradient has IWAE's mean. Paired over the same draws, the
    difference's mean is within a few standard errors of 0 for every weight."""
    k, groups, draws = 5, 24, 4000
    iwae, dreg = pair(k, latent_dim=2, net=partial(MLPNet, hidden_dims=[8]), image_shape=(1, 4, 4))
    x = images(1, (1, 4, 4)).expand(draws, 1, 4, 4)  # one image, `draws` independent codes per group
    diffs = []
    for g in range(groups):
        grads_i = loss_and_grads(iwae, x, k, seed=100 + g)[1]
        grads_d = loss_and_grads(dreg, x, k, seed=100 + g)[1]
        diffs.append(torch.cat([(grads_d[n] - grads_i[n]).flatten() for n in grads_i if n.startswith("net.encoder.")]))
    diff = torch.stack(diffs)  # (groups, encoder weights)
    diff = diff[:, diff.abs().amax(0) > 0]  # first-layer weights of the image's 0 pixels get no gradient at all
    t = diff.mean(0) / (diff.std(0) / math.sqrt(groups))
    assert t.abs().max() < 5, t  # 23 dof: |t| > 5 has p ~ 1e-4 per weight
    assert diff.abs().mean() > 1e-4  # the two estimators do differ draw by draw


# ----- bad input and the recipe --------------------------------------------------------------------


def test_k_below_one_is_refused() -> None:
    with pytest.raises(VAEZooError, match="k must be at least 1"):
        IWAE(k=0)


def test_k_zero_through_the_cli(data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", str(REPO / "configs" / "mnist_iwae.yaml"), "--data.root", str(data),
                *QUICK, "--model.k", "0")
    assert "k must be at least 1" in err and "--model.k 5" in err


class HierarchicalIWAE(IWAE):
    """IWAE on two stochastic layers: importance weights, but no one reparameterised Gaussian posterior."""

    def build_latent(self, latent_dim: int, prior: Prior) -> HierarchicalLatent:
        return HierarchicalLatent([latent_dim, 2], prior, [8], "tanh")


def test_dreg_refuses_a_latent_without_a_reparameterised_gaussian_posterior() -> None:
    HierarchicalIWAE(latent_dim=4)  # the default estimator only needs the importance weights
    with pytest.raises(VAEZooError, match="gradient 'dreg' needs a reparameterised Gaussian posterior"):
        HierarchicalIWAE(latent_dim=4, gradient="dreg")


@pytest.mark.parametrize("gradient", ["iwae", "dreg"])
def test_training_logs_the_bound_under_its_own_name(gradient: str, data: Path) -> None:
    dm = MNISTDataModule(root=str(data), val_size=16, batch_size=8)
    model = IWAE(k=3, gradient=gradient, latent_dim=4, net=partial(MLPNet, hidden_dims=[16]), iw_samples=None)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, logger=False, accelerator="cpu")
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    bound, elbo = metrics["train/iw_bound_epoch"], metrics["train/elbo_epoch"]
    torch.testing.assert_close(metrics["train/loss_epoch"], -bound)
    assert torch.isfinite(bound) and bound > elbo - 1  # L_3 and the ELBO from the same codes
    assert "val/iw_bound" not in metrics and torch.isfinite(metrics["val/elbo"])  # one code per image there
