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
- On a CPU, the chunks run with torch's threads or with one thread, whichever timed chunks say is
  faster right now (:class:`ThreadChoice`). Every op of a chunk ends at a barrier where the
  threads wait for each other; while other processes keep the cores busy, a waiting thread spins
  through the time slice its partner needs, and an op of a millisecond takes tens: ``vaezoo test``
  on a busy 2-core machine took 8 minutes where idle cores take under 2. One thread never waits,
  so it keeps its own speed however busy the machine is; on idle cores the threads are faster. The
  choice does not change the result (bit for bit with the MLP and conv nets on the CPU tested).
"""

from __future__ import annotations

import math
import time
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
    starts = range(0, k, samples_per_chunk)
    log_w = torch.empty(k, b, dtype=torch.float32, device=x.device)  # the weights span hundreds of nats

    def chunk(i: int) -> None:  # called in order, so the draws do not depend on the threads
        start = starts[i]
        c = min(samples_per_chunk, k - start)
        z, log_p_minus_q = draw(c)  # (c, B, D), (c, B)
        params = decode(z.flatten(0, 1))  # (c * B, P * C, H, W)
        log_px = log_prob_samples(likelihood, params.unflatten(0, (c, b)), x)  # (c, B)
        log_w[start : start + c] = log_px + log_p_minus_q

    if x.device.type == "cpu":
        THREADS.run(len(starts), chunk)
    else:
        for i in range(len(starts)):
            chunk(i)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.logsumexp(log_w, dim=0) - math.log(k)


class ThreadChoice:
    """Runs equal chunks of CPU work with torch's thread count or with one thread, whichever is
    faster right now (see the module's docstring).

    A measurement times two chunks with one thread and two with all of them, alternately, after an
    untimed chunk that warms the caches up, and keeps the faster count (by the best of each). It is
    made in the first call of at least 6 chunks, and again once the last one is ``recheck_seconds``
    old, as the machine's load changes. torch's thread count is restored after every call.

    Args:
        recheck_seconds: How long a measurement holds.
    """

    def __init__(self, recheck_seconds: float = 10.0) -> None:
        self.recheck_seconds = recheck_seconds
        self.single = False  # whether one thread was the faster at the last measurement
        self.measured_at = -math.inf

    def run(self, n: int, chunk: Callable[[int], None]) -> None:
        """Call ``chunk(0)``, ..., ``chunk(n - 1)``, in order."""
        most = torch.get_num_threads()
        first = 0
        try:
            if most > 1 and n >= 6 and time.monotonic() - self.measured_at > self.recheck_seconds:
                chunk(0)
                times: dict[int, list[float]] = {1: [], most: []}
                for i, threads in enumerate((1, most, 1, most), start=1):
                    times[threads].append(self._time(threads, chunk, i))
                self.single, self.measured_at, first = min(times[1]) < min(times[most]), time.monotonic(), 5
            torch.set_num_threads(1 if self.single else most)
            for i in range(first, n):
                chunk(i)
        finally:
            torch.set_num_threads(most)

    @staticmethod
    def _time(threads: int, chunk: Callable[[int], None], i: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        chunk(i)
        return time.perf_counter() - start


THREADS = ThreadChoice()  # one per process: what it measures is the machine's load


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
    broadcast closed form of :func:`bernoulli_log_prob` where no gradient is needed; any other likelihood, and
    any pass that needs gradients, its own ``log_prob``, on ``x`` repeated k times.
    """
    cls = type(likelihood)
    bernoulli_math = (cls.log_prob, cls._log_prob) == (Likelihood.log_prob, Bernoulli._log_prob)
    # The closed form works in place, so it has no backward: a k-sample training step (IWAE) takes
    # the likelihood's own log_prob, the same math as a one-sample step.
    differentiable = torch.is_grad_enabled() and params.requires_grad
    if isinstance(likelihood, Bernoulli) and bernoulli_math and not differentiable:
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
