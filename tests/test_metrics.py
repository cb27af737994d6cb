"""Importance-weighted NLL (Burda et al. 2015) and the posterior-collapse diagnostics."""

import math
import time
from functools import partial

import pytest
import torch
from torch import nn

from vaezoo.likelihoods import Bernoulli, Gaussian
from vaezoo.metrics import LatentActivity
from vaezoo.models import VAE, importance
from vaezoo.nets.conv import ConvNet
from vaezoo.nets.mlp import MLPNet


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
    model = VAE(latent_dim=4)
    x = _batch(4)
    torch.manual_seed(5)
    whole = model.importance_log_likelihood(x, 50)
    monkeypatch.setattr(importance, "MAX_ROWS_PER_CHUNK", 12)  # 3 samples of 4 images per chunk
    torch.manual_seed(5)
    torch.testing.assert_close(model.importance_log_likelihood(x, 50), whole)


def _reference_log_likelihood(model: VAE, x: torch.Tensor, eps: torch.Tensor, log_px) -> torch.Tensor:
    """L_k written out image by image and sample by sample, in float64, from the noise ``eps`` (k, B, L)."""
    k = len(eps)
    values = []
    for b in range(len(x)):
        with torch.no_grad():
            mean, logvar = (t.double() for t in model.net.encoder(x[b : b + 1])[0].chunk(2))
        std = (0.5 * logvar).exp()
        log_w = []
        for i in range(k):
            z = mean + std * eps[i, b].double()
            with torch.no_grad():
                params = model.net.decoder(z.float()[None])[0].double()
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
            log_qz = torch.distributions.Normal(mean, std).log_prob(z).sum()
            log_w.append(log_px(params, x[b].double()) + log_pz - log_qz)
        values.append(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    return torch.stack(values)


def _bernoulli(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x * nn.functional.logsigmoid(params) + (1 - x) * nn.functional.logsigmoid(-params)).sum()


def _gaussian(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(params, 0.3).log_prob(x).sum()


@pytest.mark.parametrize("rows", [None, 8], ids=["one chunk", "chunks of 2 samples"])
@pytest.mark.parametrize(
    ("likelihood", "log_px", "grey"),
    [(Bernoulli(), _bernoulli, False), (Bernoulli(), _bernoulli, True), (Gaussian(sigma=0.3), _gaussian, True)],
    ids=["bernoulli", "bernoulli on grey levels", "gaussian"],
)
def test_iw_equals_a_direct_computation_of_l_k(rows, likelihood, log_px, grey, monkeypatch) -> None:
    # The chunked, broadcast estimator against L_k computed one weight at a time from the same noise:
    # log w_i = log p(x | z_i) + log N(z_i; 0, I) - log N(z_i; mu, sigma), z_i = mu + sigma * eps_i.
    if rows is not None:
        monkeypatch.setattr(importance, "MAX_ROWS_PER_CHUNK", rows)
    torch.manual_seed(3)
    model = VAE(net=partial(MLPNet, hidden_dims=[16], activation="tanh"), latent_dim=4, likelihood=likelihood)
    x = torch.rand(4, 1, 28, 28) if grey else _batch(4)
    k = 6
    torch.manual_seed(11)
    estimate = model.importance_log_likelihood(x, k)
    torch.manual_seed(11)
    eps = torch.randn(k, 4, 4)  # the same draws: (k, B, L), consumed in sample order
    torch.testing.assert_close(estimate.double(), _reference_log_likelihood(model, x, eps, log_px), rtol=0, atol=2e-3)


class _TemperedBernoulli(Bernoulli):
    """A subclass that changes the math: it must not get the plain Bernoulli's closed form."""

    def _log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super()._log_prob(params / 2, x)


@pytest.mark.parametrize(
    ("likelihood", "closed_form"),
    [(None, True), (Bernoulli(), True), (_TemperedBernoulli(), False), (Gaussian(), False)],
    ids=["default (lazy) bernoulli", "bernoulli", "bernoulli subclass with its own math", "gaussian"],
)
def test_iw_takes_the_broadcast_bernoulli_form_only_for_bernoulli_math(likelihood, closed_form, monkeypatch) -> None:
    # The CLI's default likelihood is a lazily built subclass of Bernoulli: it must get the fast form too.
    calls = []
    original = importance.bernoulli_log_prob
    monkeypatch.setattr(importance, "bernoulli_log_prob", lambda *args: calls.append(1) or original(*args))
    model = VAE(latent_dim=4) if likelihood is None else VAE(latent_dim=4, likelihood=likelihood)
    x = _batch(3)
    value = model.importance_log_likelihood(x, 5)
    assert bool(calls) == closed_form and torch.isfinite(value).all()


def test_iw_chunks_keep_a_conv_decoders_activations_near_the_cpu_caches(monkeypatch) -> None:
    # A conv decoder's widest activation is 32 x 28 x 28 floats per code: 8,192 codes at once is 800 MB
    # per layer, written to fresh pages at every op, which made the test NLL twice as slow as chunks of
    # a few MB. On a CPU a chunk holds CPU_ACTIVATION_BUDGET elements, but at least one sample per image.
    model = VAE(net=partial(ConvNet, channels=[16, 32]), latent_dim=4)
    x = _batch(6)
    model.importance_log_likelihood(x, 1)  # the first call probes the decoder's activations
    rows_seen = []
    model.net.decoder.register_forward_pre_hook(lambda module, args: rows_seen.append(len(args[0])))
    model.importance_log_likelihood(x, 100)
    widest = 16 * 28 * 28  # the last transposed conv's output per code, (16, 28, 28)
    assert max(rows_seen) * widest <= max(importance.CPU_ACTIVATION_BUDGET, 6 * widest)
    assert sum(rows_seen) == 100 * 6  # every sample of every image decoded once


@pytest.fixture
def two_threads():
    """torch at 2 threads (the machines this concerns have several cores), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy", [True, False], ids=["busy cores: one thread", "idle cores: all threads"])
def test_thread_choice_runs_the_chunks_with_the_faster_thread_count(busy: bool, two_threads) -> None:
    # On busy cores, threads that wait for each other at every op made the MNIST test NLL take 8 minutes
    # instead of 1.5; one thread keeps its speed. The chunk here is faster with one thread iff busy.
    seen: list[tuple[int, int]] = []

    def chunk(i: int) -> None:
        threads = torch.get_num_threads()
        seen.append((i, threads))
        time.sleep(0.05 if (threads > 1) == busy else 0.001)

    choice = importance.ThreadChoice()
    choice.run(8, chunk)
    faster = 1 if busy else 2
    assert [i for i, _ in seen] == list(range(8))  # every chunk once, in order
    assert [t for _, t in seen[1:5]] == [1, 2, 1, 2]  # the timed chunks
    assert [t for _, t in seen[5:]] == [faster] * 3 and torch.get_num_threads() == 2
    seen.clear()
    choice.run(2, chunk)  # within recheck_seconds: no new measurement
    assert seen == [(0, faster), (1, faster)] and torch.get_num_threads() == 2


def test_iw_with_one_thread_gives_the_same_estimate_and_restores_the_threads(two_threads, monkeypatch) -> None:
    model = VAE(latent_dim=4)
    x = _batch(4)
    monkeypatch.setattr(importance, "MAX_ROWS_PER_CHUNK", 8)  # 2 samples per chunk, 25 chunks
    monkeypatch.setattr(importance, "THREADS", importance.ThreadChoice(recheck_seconds=math.inf))
    importance.THREADS.single, importance.THREADS.measured_at = False, time.monotonic()  # as if measured
    torch.manual_seed(5)
    many = model.importance_log_likelihood(x, 50)
    importance.THREADS.single = True
    threads_seen = []
    model.net.decoder.register_forward_pre_hook(lambda module, args: threads_seen.append(torch.get_num_threads()))
    torch.manual_seed(5)
    torch.testing.assert_close(model.importance_log_likelihood(x, 50), many)
    assert set(threads_seen) == {1} and torch.get_num_threads() == 2


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
