"""The prior p(z) over a Gaussian latent code: a part of the model, with ``log_prob`` and ``sample``.

A prior is an ``nn.Module``, so it may hold learned parameters (a mixture's means, the VampPrior's
pseudo-inputs) that train with the model and travel in its checkpoints. It is told the code size
(and given the encoder, which the VampPrior needs) by :meth:`Prior.bind` when the model is built.

The KL term of the ELBO, KL(q(z | x) || p(z)) for the diagonal-Gaussian posterior q, is analytic
where the pair has a closed form (:meth:`Prior.kl_per_dim`, the standard normal), and otherwise
estimated from the posterior's own samples, ``log q(z | x) - log p(z)`` (Monte Carlo, unbiased):
:func:`kl` returns which, and the model logs ``kl`` either way (and says which in ``kl_analytic``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError


class Prior(nn.Module):
    """p(z) over codes of ``latent_dim`` numbers.

    Subclasses implement :meth:`log_prob` and :meth:`sample`, and :meth:`kl_per_dim` where the KL
    from a diagonal Gaussian has a closed form.
    """

    latent_dim: int
    analytic_kl: bool = False  # whether kl_per_dim has a closed form

    def bind(self, latent_dim: int, image_shape: tuple[int, int, int],
             encode: Callable[[Tensor], tuple[Tensor, Tensor]]) -> None:
        """Called once by the model: the code size, the image shape, and the encoder as ``x -> (mean, logvar)``.

        Args:
            latent_dim: Numbers per code.
            image_shape: (C, H, W) of the images.
            encode: The model's encoder, images ``(N, C, H, W)`` -> posterior ``(mean, logvar)``, each
                ``(N, L)``. Only priors defined through the encoder (the VampPrior) keep it.
        """
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) in nats, summed over the code: ``(..., L)`` -> ``(...)``, fp32."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``(n, L)`` drawn from p(z), fp32, on the device of the prior's parameters (the model's).

        Args:
            n: How many.
            generator: A CPU generator: the draws are then made on the CPU from it and moved, so that the same
                generator gives the same codes on any device (the pictures' fixed samples).
        """
        raise NotImplementedError

    def kl_per_dim(self, mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mean, exp(logvar)) || p) per code dimension ``(B, L)`` in nats, for priors with
        ``analytic_kl``; the others' KL is estimated by sampling."""
        raise NotImplementedError

    def as_mixture(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """p(z) as a mixture of K diagonal Gaussians, or None where it is not one.

        What compression codes the latent under (:mod:`vaezoo.compression`): a mixture's mass in each
        of the latent's buckets has a closed form, dimension by dimension.

        Returns:
            ``(means, logvars, log_weights)``: ``(K, L)``, ``(K, L)`` and ``(K,)``, fp32.
        """
        return None

    def fixed(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the prior's parameters do not change (evaluation under ``no_grad``): a prior that
        computes its density from other parts (the VampPrior, from the encoder) may compute that once."""
        return contextlib.nullcontext()

    def check_data(self, train_images: int) -> None:
        """Refuse a prior that cannot be fitted to a training set of ``train_images`` images (the VampPrior
        with more pseudo-inputs than images). Called when training starts; nothing by default."""

    def check(self) -> None:
        """Fail at start-up, naming the prior, when ``log_prob`` or ``sample`` returns the wrong shape.

        Raises:
            VAEZooError: for a prior (a plugin's, typically) that breaks the contract above.
        """
        name = type(self).__name__
        with torch.no_grad():
            z = self.sample(3, torch.Generator().manual_seed(0))  # its own generator: training's draws stay as they were
            if tuple(z.shape) != (3, self.latent_dim):
                raise VAEZooError(
                    f"prior {name}.sample(3) returned shape {tuple(z.shape)}, not (3, {self.latent_dim}) = (n, latent_dim). "
                    "Fix the prior's sample(n), or choose another with --model.prior normal|mog|vamp."
                )
            log_p = self.log_prob(z.unsqueeze(0).expand(2, 3, self.latent_dim))
            if tuple(log_p.shape) != (2, 3):
                raise VAEZooError(
                    f"prior {name}.log_prob(z) returned shape {tuple(log_p.shape)} for z of shape (2, 3, "
                    f"{self.latent_dim}): it must sum over the last dimension, (..., latent_dim) -> (...), here (2, 3). "
                    "Fix the prior's log_prob, or choose another with --model.prior normal|mog|vamp."
                )
            if not torch.isfinite(log_p).all():
                raise VAEZooError(f"prior {name}.log_prob is not finite on its own samples: {log_p.tolist()}.")


def kl(prior: Prior, mean: Tensor, logvar: Tensor, log_q: Tensor | None = None,
       log_p: Tensor | None = None) -> tuple[Tensor, Tensor | None, bool]:
    """KL(q(z | x) || p(z)) per image, ``(B,)`` nats, fp32: analytic where the prior has a closed form.

    Args:
        prior: p(z).
        mean: The posterior's mean ``(B, L)``.
        logvar: Its log-variance ``(B, L)``.
        log_q: log q(z | x) of k posterior samples ``(k, B)``: needed only where the KL is estimated.
        log_p: log p(z) of the same samples ``(k, B)``: likewise.

    Returns:
        The KL ``(B,)``, its split over dimensions ``(B, L)`` (None when estimated), and whether it is
        analytic. The estimate, mean_k [log q(z_k | x) - log p(z_k)], is unbiased.
    """
    if prior.analytic_kl:
        per_dim = prior.kl_per_dim(mean.float(), logvar.float())
        return per_dim.sum(-1), per_dim, True
    assert log_q is not None and log_p is not None, "a sampled KL needs log q(z | x) and log p(z)"
    return (log_q - log_p).mean(0), None, False
