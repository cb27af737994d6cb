"""Each likelihood's log-probability against torch.distributions, on random inputs."""

import math

import pytest
import torch
from torch.distributions import Normal

from vaezoo.errors import VAEZooError
from vaezoo.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_bernoulli_matches_torch_distributions() -> None:
    logits = torch.randn(5, 1, 6, 7) * 3
    x = torch.rand(5, 1, 6, 7).bernoulli()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)


def test_gaussian_matches_torch_distributions() -> None:
    mu, x = torch.randn(4, 3, 5, 5), torch.rand(4, 3, 5, 5)
    expected = Normal(mu, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Gaussian(sigma=0.3).log_prob(mu, x), expected)


def test_dequantized_gaussian_is_density_of_noisy_pixels_minus_bin_width() -> None:
    mu = torch.rand(4, 3, 5, 5)
    x = torch.randint(0, 256, (4, 3, 5, 5)).float() / 255
    torch.manual_seed(1)
    got = Gaussian(sigma=0.1, dequantize=True).log_prob(mu, x)
    torch.manual_seed(1)
    y = (x * 255 + torch.rand_like(x)) / 256
    expected = Normal(mu, 0.1).log_prob(y).flatten(1).sum(1) - 75 * math.log(256)
    torch.testing.assert_close(got, expected)
    assert Gaussian(dequantize=True).discrete and not Gaussian().discrete


def test_gaussian_rejects_non_positive_sigma() -> None:
    with pytest.raises(VAEZooError, match="sigma > 0"):
        Gaussian(sigma=0.0)


def test_discretized_logistic_matches_logistic_cdf_differences() -> None:
    # Independent computation: the bin mass as a plain difference of logistic CDFs in float64
    # (torch.distributions clips its sigmoid at float64's tiny, which zeroes far-tail masses).
    b, c, h, w = 3, 3, 4, 4
    mu = torch.rand(b, c, h, w, dtype=torch.float64) * 2 - 1
    log_scale = torch.rand(b, c, h, w, dtype=torch.float64) * 3 - 4  # scales in [e^-4, e^-1]
    k = torch.randint(0, 256, (b, c, h, w))
    k[0, 0, 0, 0], k[0, 0, 0, 1] = 0, 255  # both edge bins
    x = k.double() / 255
    xs, s = 2 * x - 1, log_scale.exp()

    def cdf(v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((v - mu) / s)

    def sf(v: torch.Tensor) -> torch.Tensor:  # 1 - cdf, without cancellation
        return torch.sigmoid((mu - v) / s)

    upper, lower = xs + 1 / 255, xs - 1 / 255
    below = torch.where(k == 0, cdf(upper), cdf(upper) - cdf(lower))
    above = torch.where(k == 255, sf(lower), sf(lower) - sf(upper))
    expected = torch.log(torch.where(xs <= mu, below, above)).flatten(1).sum(1)
    params = torch.cat([mu, log_scale], dim=1).float()
    got = DiscretizedLogistic().log_prob(params, x.float())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-2)


def test_discretized_logistic_masses_sum_to_one() -> None:
    # All 256 values of one sub-pixel, for a few (mu, log s): the masses are a distribution.
    x = (torch.arange(256).float() / 255).view(256, 1, 1, 1)
    for mu, log_s in [(0.0, -2.0), (0.7, -4.0), (-0.95, -1.0), (0.2, -6.5)]:
        params = torch.tensor([mu, log_s]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        total = DiscretizedLogistic().log_prob(params, x).double().exp().sum()
        assert total == pytest.approx(1.0, abs=1e-3)


def test_log_prob_is_fp32_under_autocast() -> None:
    logits, x = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4).bernoulli()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Bernoulli().log_prob(logits.bfloat16(), x)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("likelihood", [Bernoulli(), Gaussian(), DiscretizedLogistic()])
def test_mean_and_sample_are_images_in_unit_range(likelihood) -> None:
    params = torch.randn(2, 3 * likelihood.params_per_channel, 4, 4)
    for img in (likelihood.mean(params), likelihood.sample(params)):
        assert img.shape == (2, 3, 4, 4) and img.min() >= 0 and img.max() <= 1
