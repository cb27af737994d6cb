"""Importance-weighted NLL (Burda et al. 2015) and the posterior-collapse diagnostics."""

import math

import pytest
import torch
from torch import nn

from vaezoo.metrics import LatentActivity
from vaezoo.models import VAE


def _batch(n: int = 6) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.rand(n, 1, 28, 28) < 0.2).float()


def test_iw_equals_log_px_when_the_posterior_is_exact() -> None:
    # Encoder outputs N(0, I) = the prior and the decoder ignores z: then every weight is
    # p(x | z) p(z) / q(z | x) = p(x), so L_k = ELBO = log p(x) exactly, for every k.
    model = VAE(latent_dim=3)
    encoder_out, decoder_out = model.net.encoder[-1], model.net.decoder[-2]
    for layer in (encoder_out, decoder_out):
        nn.init.zeros_(layer.weight)
    nn.init.zeros_(encoder_out.bias)
    nn.init.normal_(decoder_out.bias, generator=torch.Generator().manual_seed(1))
    x = _batch()
    logits = decoder_out.bias.view(1, 1, 28, 28)
    log_px = -nn.functional.binary_cross_entropy_with_logits(logits.expand_as(x), x, reduction="none").sum((1, 2, 3))
    for k in (1, 7, 100):
        torch.testing.assert_close(model.importance_log_likelihood(x, k), log_px)
    torch.testing.assert_close(model(x).elbo, log_px)


def test_iw_with_one_sample_is_the_elbo_in_expectation() -> None:
    model = VAE(latent_dim=4)
    x = _batch(4).repeat(2000, 1, 1, 1)  # 2,000 independent draws of each of 4 images, as one batch
    with torch.no_grad():
        elbo = model(x).elbo.view(2000, 4).mean(0)  # analytic KL: a low-variance reference
    draws = model.importance_log_likelihood(x, 1).view(2000, 4)
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - elbo).abs() < 4 * stderr + 0.05).all()


def test_iw_bound_tightens_as_k_grows() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4)
    x = _batch(4)
    x = x.repeat(100, 1, 1, 1)  # 100 independent estimates per image
    means = {k: model.importance_log_likelihood(x, k).view(100, 4).mean(0) for k in (1, 10, 100)}
    assert (means[1] < means[10]).all() and (means[10] < means[100]).all()


def test_iw_chunks_give_the_same_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaezoo.models.base as base

    model = VAE(latent_dim=4)
    x = _batch(4)
    torch.manual_seed(5)
    whole = model.importance_log_likelihood(x, 50)
    monkeypatch.setattr(base, "_IW_IMAGES_PER_CHUNK", 12)  # 3 samples of 4 images per chunk
    torch.manual_seed(5)
    torch.testing.assert_close(model.importance_log_likelihood(x, 50), whole)


def test_iw_logsumexp_is_fp32_under_bf16_autocast() -> None:
    model = VAE(latent_dim=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = model.importance_log_likelihood(_batch(2), 20)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()


def test_active_units_count_dimensions_whose_mean_varies() -> None:
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01])  # variances 1, .25, .04, .0025, .0001
    means = torch.randn(4000, 5) * scales + 3.0
    kl = torch.rand(4000, 5)
    metric = LatentActivity(latent_dim=5)
    for chunk_m, chunk_k in zip(means.split(700), kl.split(700)):
        metric.update(chunk_m, chunk_k)
    stats = metric.compute()
    assert stats["active_units"] == 3
    torch.testing.assert_close(stats["activity"], means.double().var(0, unbiased=False).float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["kl_per_dim"], kl.mean(0))
