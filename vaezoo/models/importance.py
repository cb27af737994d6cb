"""The importance-weighted bound L_k of Burda et al. (2015): the test NLL. The math is in ``base.py``.

Its cost is inherent: k decoder passes per image, so ``vaezoo test`` on MNIST's 10,000 test images
at k = 1,000 decodes 10^7 codes. What this module keeps from adding to it:

- The decoder sees the k samples in chunks of whole samples ``(c * B, L)``. On a CPU a chunk is
  sized so that the decoder's widest activation stays near the caches (~4 MB): a 25 MB chunk of
  logits, or a 100 MB conv feature map, is written to fresh pages and read back from memory at
  every op, which made the MLP's chunks up to 1.3x and the conv net's 2x slower. Elsewhere (GPUs)
  the chunk is as large as memory allows, 8,192 decoder inputs.
- The Bernoulli log-probability is computed broadcast over the samples, without copying the images
  k times, and without ``log1p`` (``binary_cross_entropy_with_logits`` and ``softplus`` call it, and
  on CPUs PyTorch runs it one element at a time, ~10 ns each, slower than the decoder's matmuls).
- The log-weights go into one preallocated ``(k, B)`` fp32 tensor, reduced by one logsumexp.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaezoo.likelihoods import Bernoulli, Likelihood

MAX_ROWS_PER_CHUNK = 8192  # decoder inputs per chunk at most: bounds memory
CPU_ACTIVATION_BUDGET = 2**20  # elements of the decoder's widest activation per chunk on a CPU (4 MB fp32)

_widest: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def log_likelihood(
    draw: Callable[[int], tuple[Tensor, Tensor]],
    decode: Callable[[Tensor], Tensor],
    likelihood: Likelihood,
    x: Tensor,
    k: int,
    rows_per_chunk: int = MAX_ROWS_PER_CHUNK,
) -> Tensor:
    """L_k, the importance-weighted estimate of log p(x): ``(B,)`` nats per image, fp32.

    Args:
        draw: ``c`` -> c codes per image from q(z | x) ``(c, B, D)`` and their log p(z) - log q(z | x) ``(c, B)``
            (the latent's, :meth:`vaezoo.latents.base.Latent.forward` with ``log_weights``).
        decode: Codes ``(N, D)`` -> the likelihood's parameters ``(N, P * C, H, W)``.
        likelihood: p(x | z).
        x: Images ``(B, C, H, W)`` in [0, 1].
        k: Number of importance samples per image.
        rows_per_chunk: Codes decoded at once (at least one sample of every image), e.g. from
            :func:`chunk_rows`.
    """
    b = x.shape[0]
    samples_per_chunk = max(1, rows_per_chunk // b)
    log_w = torch.empty(k, b, dtype=torch.float32, device=x.device)  # the weights span hundreds of nats
    for start in range(0, k, samples_per_chunk):
        c = min(samples_per_chunk, k - start)
        z, log_p_minus_q = draw(c)  # (c, B, D), (c, B)
        params = decode(z.flatten(0, 1))  # (c * B, P * C, H, W)
        log_px = log_prob_samples(likelihood, params.unflatten(0, (c, b)), x)  # (c, B)
        log_w[start : start + c] = log_px + log_p_minus_q
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.logsumexp(log_w, dim=0) - math.log(k)


def chunk_rows(decoder: nn.Module, z: Tensor, probe: bool = True) -> int:
    """How many codes the decoder takes at once: ``MAX_ROWS_PER_CHUNK``, or on a CPU as many as
    keep its widest activation within ``CPU_ACTIVATION_BUDGET`` elements.

    Args:
        decoder: The decoder.
        z: Codes ``(B, L)`` of the right dtype and device; one of them is decoded to probe.
        probe: Whether the decoder may be probed: a pass on one code with forward hooks, once per
            decoder. False for a compiled decoder, which the hooks would make recompile.
    """
    if z.device.type != "cpu" or not probe:
        return MAX_ROWS_PER_CHUNK
    if decoder not in _widest:
        _widest[decoder] = _widest_activation(decoder, z[:1])
    return max(1, min(MAX_ROWS_PER_CHUNK, CPU_ACTIVATION_BUDGET // _widest[decoder]))


def _widest_activation(decoder: nn.Module, z: Tensor) -> int:
    """Elements per code of the largest tensor any submodule of ``decoder`` outputs for codes ``z``."""
    widest = 1

    def record(module: nn.Module, args: object, output: object) -> None:
        nonlocal widest
        if isinstance(output, Tensor):
            widest = max(widest, output.numel() // max(1, len(z)))

    modes = {m: m.training for m in decoder.modules()}
    handles = [m.register_forward_hook(record) for m in decoder.modules()]
    decoder.eval()  # the probe must not move batch-norm statistics or draw dropout noise
    try:
        decoder(z)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return widest


def log_prob_samples(likelihood: Likelihood, params: Tensor, x: Tensor) -> Tensor:
    """log p(x | z_i), ``(k, B)`` nats, for k codes per image: params ``(k, B, P * C, H, W)``, x ``(B, C, H, W)``.

    A :class:`Bernoulli` that keeps its math (also the CLI's default, a lazily built subclass) gets the
    broadcast closed form of :func:`bernoulli_log_prob`; any other likelihood its own ``log_prob``, on
    ``x`` repeated k times.
    """
    cls = type(likelihood)
    bernoulli_math = (cls.log_prob, cls._log_prob) == (Likelihood.log_prob, Bernoulli._log_prob)
    if isinstance(likelihood, Bernoulli) and bernoulli_math:
        return bernoulli_log_prob(params, x)
    k, b = params.shape[:2]
    return likelihood.log_prob(params.flatten(0, 1), x.expand(k, *x.shape).flatten(0, 1)).view(k, b)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """Bernoulli log p(x | logits l) summed over pixels, fp32, for gradient-free evaluation.

    ``x l - softplus(l)``, as ``binary_cross_entropy_with_logits`` computes it, written as
    ``(x - 1/2) l - |l| / 2 + log sigmoid(|l|)`` to avoid ``log1p`` (see the module's docstring):
    sigmoid(|l|) lies in [1/2, 1], so its log is exact to fp32's rounding, ~1e-7 nats per pixel, no
    more than fp32's own rounding of a sum over pixels.

    Args:
        logits: ``(..., B, C, H, W)``, e.g. k samples per image.
        x: Pixels ``(B, C, H, W)`` in [0, 1], broadcast against ``logits``.

    Returns:
        ``(..., B)`` nats per image.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits, x = logits.float().flatten(-3), x.float().flatten(-3)  # (..., B, D), (B, D)
        magnitude = logits.abs()
        linear = ((x - 0.5) * logits).sum(-1) - 0.5 * magnitude.sum(-1)
        return linear + magnitude.sigmoid_().log_().sum(-1)  # log sigmoid(|l|) = -log(1 + exp(-|l|))
