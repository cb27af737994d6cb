"""The latent code as symbols: BB-ANS's discretisation (Townsend et al. 2019, section 2.5.1), widened.

The real line is cut into ``n = 2**precision`` buckets of equal mass under N(0, s^2); a code
dimension is the index of its bucket, and the decoder sees the bucket's centre (the quantile at the
bucket's middle mass). The paper's grid is s = 1, equal mass under the N(0, 1) prior, so that every
bucket costs exactly ``precision`` bits; but its buckets are wide in the tails (at 8 bits, 0.22 at
z = 2.5, 1.8 at z = 4), and a model whose posteriors reach there pays for the decoder seeing a code
far from its own: measured, 6.7% over the -ELBO for the CIFAR-10 recipe, 0.2% with s = 2, the default
(docs/compression.md). With s != 1 the prior's bucket masses are no longer equal and are coded as
computed. The same grid serves every prior: each bucket's mass under a mixture of diagonal
Gaussians (``normal``, ``mog``, ``vamp``) has a closed form, dimension by dimension, with the
components' weights updated by the dimensions already coded (:class:`PriorCoder`), which keeps the
code exact for priors that do not factorise.

Whitening. ANS pops a symbol by reading the low bits of its state, and the previous pushes put the
last code's own bucket index there: the next pop would then read the quantile of the previous image's
code and draw a code coupled to it, not a sample of q(z | x), and the rate drifts from the -ELBO
(measured on a small untrained model coded one image at a time: +3.7% over it with the N(0, 1) grid,
+10% with the N(0, 4) one; +0.07% and +0.02% with the shuffle). So the indices are pushed through a
fixed pseudo-random permutation of the n buckets (:data:`SHUFFLE_SEED`): the same code length, with
the coupling broken.

Every table here is computed in float64 from the networks' float32 outputs, by one function used by
both the encoder and the decoder, so the two sides build bit-identical tables.
"""

from __future__ import annotations

from collections.abc import Callable

import constriction
import numpy as np
import torch
from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.priors.base import Prior

Coder = constriction.stream.stack.AnsCoder
SHUFFLE_SEED = 1_000_003  # the fixed shuffle of bucket indices; part of the format (a new seed is a new version)


def categorical() -> constriction.stream.model.Categorical:
    """constriction's categorical family with the tables given per symbol (``perfect=False``: the
    fast quantisation, the same on both sides)."""
    return constriction.stream.model.Categorical(perfect=False)


class Buckets:
    """The equal-mass buckets of N(0, scale^2) and their centres.

    Args:
        precision: Bits per code dimension: ``2**precision`` buckets. The paper's trade-off: more
            buckets bring the rate closer to the continuous -ELBO, and cost more initial bits.
        scale: The grid's standard deviation (the paper: 1, the prior's).
    """

    def __init__(self, precision: int, scale: float = 1.0) -> None:
        if not 2 <= precision <= 16:
            raise VAEZooError(f"latent_precision must be between 2 and 16 bits, got {precision}; the paper's choice is 8-12.")
        if not scale > 0:
            raise VAEZooError(f"latent_scale must be > 0, got {scale}; the default is 2.")
        self.precision = precision
        self.scale = scale
        self.n = 1 << precision
        mass = torch.arange(self.n + 1, dtype=torch.float64) / self.n
        self.edges = scale * torch.special.ndtri(mass)  # (n + 1,), -inf ... +inf
        self.centres = scale * torch.special.ndtri((torch.arange(self.n, dtype=torch.float64) + 0.5) / self.n)  # (n,)

    def masses(self, mean: Tensor, std: Tensor) -> Tensor:
        """Each bucket's mass under N(mean, std^2), float64: ``(...,)`` each -> ``(..., n)``."""
        cdf = torch.special.ndtr((self.edges - mean.double().unsqueeze(-1)) / std.double().unsqueeze(-1))  # (..., n + 1)
        return cdf[..., 1:] - cdf[..., :-1]

    def codes(self, indices: np.ndarray) -> Tensor:
        """The codes the decoder sees: bucket centres, float32, of indices ``(B, L)``."""
        return self.centres[torch.from_numpy(indices).long()].float()


def posterior_tables(buckets: Buckets, mean: Tensor, logvar: Tensor) -> np.ndarray:
    """q(z | x) on the buckets, one row per code dimension: ``(B, L)`` each -> ``(B * L, n)``, float64."""
    return buckets.masses(mean.flatten(), torch.exp(0.5 * logvar.double()).flatten()).numpy()


class PriorCoder:
    """p(z) on the buckets: pushes and pops the bucket indices ``(B, L)`` of a chunk of codes.

    Args:
        prior: The model's prior; :meth:`Prior.as_mixture` must describe it.
        buckets: The discretisation.
    """

    def __init__(self, prior: Prior, buckets: Buckets) -> None:
        mixture = prior.as_mixture()
        if mixture is None:
            raise VAEZooError(
                f"the prior {type(prior).__name__} cannot be coded: compression needs p(z) as a mixture of diagonal "
                "Gaussians. Implement its as_mixture() (see vaezoo.priors.base.Prior.as_mixture), or compress a model "
                "with the normal, mog or vamp prior."
            )
        means, logvars, log_weights = (t.detach().double().cpu() for t in mixture)
        self.buckets = buckets
        # A fixed shuffle of the bucket indices before they are pushed (see the module docstring, "Whitening").
        self.shuffle = np.random.default_rng(SHUFFLE_SEED).permutation(buckets.n).astype(np.int32)
        self.unshuffle = np.argsort(self.shuffle).astype(np.int32)
        self.latent_dim = means.shape[1]
        # N(0, I): every bucket has mass 1 / n, exactly (the grid's definition); constriction's uniform model.
        self.uniform = means.shape[0] == 1 and not means.any() and not logvars.any() and buckets.scale == 1.0
        if not self.uniform:
            # mass[l, k, j]: component k's mass in bucket j of dimension l, (L, K, n), computed once per file.
            self.mass = buckets.masses(means.T, torch.exp(0.5 * logvars.T))
            self.log_mass = torch.log(self.mass.clamp(min=1e-300))
            self.log_weights = log_weights

    def fingerprint(self) -> bytes:
        """The numbers the coder sees, for :func:`vaezoo.compression.identity.probe`."""
        return b"uniform" if self.uniform else self.mass.numpy().tobytes()

    def _conditionals(self, rows: int, symbols_of: Callable[[int, np.ndarray], np.ndarray]) -> None:
        """p(z_l | z_<l) for l = 0 .. L-1: ``symbols_of(l, table (rows, n))`` gives dimension l's symbols."""
        log_w = self.log_weights.expand(rows, -1)  # (rows, K)
        for dim in range(self.latent_dim):
            table = torch.softmax(log_w, -1) @ self.mass[dim]  # (rows, n)
            chosen = torch.from_numpy(symbols_of(dim, table.numpy())).long()
            log_w = log_w + self.log_mass[dim][:, chosen].T  # the components' weights given z_<=l

    def push(self, coder: Coder, indices: np.ndarray) -> None:
        """Push the bucket indices ``(B, L)`` int32 so that :meth:`pop` gives them back."""
        if self.uniform:
            coder.encode_reverse(self.shuffle[indices.ravel()], constriction.stream.model.Uniform(self.buckets.n))
            return
        tables: list[np.ndarray] = []

        def known(dim: int, table: np.ndarray) -> np.ndarray:
            tables.append(table)
            return indices[:, dim]

        self._conditionals(indices.shape[0], known)
        for dim in reversed(range(self.latent_dim)):  # a stack: the last dimension first
            shuffled = np.ascontiguousarray(tables[dim][:, self.unshuffle])  # shuffled[:, shuffle[j]] = table[:, j]
            coder.encode_reverse(self.shuffle[indices[:, dim]], categorical(), shuffled)

    def pop(self, coder: Coder, rows: int) -> np.ndarray:
        """Pop the bucket indices ``(rows, L)`` int32 of a chunk."""
        if self.uniform:
            popped = coder.decode(constriction.stream.model.Uniform(self.buckets.n), rows * self.latent_dim)
            return self.unshuffle[popped].reshape(rows, -1)
        out = np.empty((rows, self.latent_dim), dtype=np.int32)

        def popped(dim: int, table: np.ndarray) -> np.ndarray:
            out[:, dim] = self.unshuffle[coder.decode(categorical(), np.ascontiguousarray(table[:, self.unshuffle]))]
            return out[:, dim]

        self._conditionals(rows, popped)
        return out
