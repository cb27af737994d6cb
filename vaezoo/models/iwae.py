"""The importance-weighted autoencoder of Burda et al. (2015), with the DReG gradient of Tucker et al. (2019).

With k codes z_1..z_k ~ q(z | x) per image (all reparameterised, z_i = mean + exp(logvar / 2) * eps_i),

    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)                     (k, B), fp32
    L_k     = logsumexp_i(log w_i) - log k          <=  log p(x)               (B,) nats per image

is the training objective (``loss = -L_k``). L_1 is the ELBO, L_k never decreases with k and tends to
log p(x). Its gradient is sum_i w~_i grad log w_i with the normalised weights w~_i = softmax_i(log w_i).

DReG ("Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives", Tucker et al. 2019): the
encoder's part of that gradient holds a score term, grad_phi log q(z_i | x) at a fixed z_i, whose variance
grows with k and starves the encoder of signal (Rainforth et al. 2018). Reparameterising it a second time
gives an unbiased estimator without it:

    encoder phi:           sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi),  log q with stopped mean, logvar
    decoder, prior theta:  sum_i w~_i   grad_theta log w_i                     (IWAE's own)

The code: log w is computed with log q(z | x) of the *detached* posterior parameters, so the encoder is
reached through z only, and a gradient hook on z multiplies what reaches it by w~ (detached). The decoder
and the prior see the plain gradient of -L_k (w~ per sample); the encoder, behind z, sees w~^2.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.latents.gaussian import DiagonalGaussian, GaussianLatent
from vaezoo.models.base import VAE, Context, VAEOutput
from vaezoo.registry import register_variant


@register_variant("iwae")
class IWAE(VAE):
    """The importance-weighted autoencoder of Burda et al. (2015): maximise L_k with k codes per image.

    ``loss = -L_k``, L_k = logsumexp_i(log w_i) - log k with log w_i = log p(x | z_i) + log p(z_i) -
    log q(z_i | x), in nats per image; logged as ``iw_bound`` (L_k) in training. The logged ``elbo`` stays
    the true ELBO: the k codes' mean of log p(x | z) minus the KL (analytic for the ``normal`` prior), an
    unbiased estimate, so it compares directly with the other variants'. ``k = 1`` is exactly the vanilla
    VAE (L_1 is the ELBO, and the default estimator then uses the same analytic KL).

    Validation and test draw one code per image, as for every variant, so ``val/loss`` is -ELBO there and
    ``iw_bound`` is logged in training only; ``--model.val_iw_samples k`` gives L_k on the validation
    images as ``val/nll`` = -L_k.

    Args:
        k: Importance samples (codes) per training image; each costs a decoder pass. Burda et al. train
            with 1, 5 and 50.
        gradient: ``iwae``: the gradient of L_k as it stands (Burda et al.). ``dreg``: the doubly
            reparameterised gradient of Tucker et al. (2019), same expectation, lower variance for the
            encoder, which improves as k grows instead of degrading; needs a reparameterised Gaussian
            posterior (the one-layer Gaussian latent). At ``k = 1`` it is the path-only ("sticking the
            landing") gradient of Roeder et al. (2017).
        **kwargs: Everything :class:`vaezoo.models.base.VAE` takes (net, latent_dim, likelihood, prior, ...).

    Raises:
        VAEZooError: for k < 1, for a latent without log q(z | x), or for ``dreg`` with a latent other than
            one Gaussian layer.
    """

    objective_terms = ("iw_bound",)
    needs_log_weights = True
    kl_warmup_refused = "its bound, log mean_k w_k, has no KL term to weigh"

    def __init__(self, k: int = 5, gradient: Literal["iwae", "dreg"] = "iwae", **kwargs: Any) -> None:
        if k < 1:
            raise VAEZooError(f"k must be at least 1 importance sample per training image, got {k}; e.g. --model.k 5 "
                              "(k = 1 is the vanilla VAE).")
        if gradient not in ("iwae", "dreg"):
            raise VAEZooError(f"gradient must be 'iwae' or 'dreg', got {gradient!r}; e.g. --model.gradient dreg.")
        super().__init__(**kwargs)
        if self.latent.iw_reason is not None:
            raise VAEZooError(f"IWAE needs importance weights, and {type(self.latent).__name__} has none: "
                              f"{self.latent.iw_reason} Choose a latent with a density, or another variant.")
        if gradient == "dreg" and not isinstance(self.latent, GaussianLatent):
            raise VAEZooError(f"gradient 'dreg' needs a reparameterised Gaussian posterior (one Gaussian layer), not "
                              f"{type(self.latent).__name__}; use --model.gradient iwae.")
        self.k = self.train_samples = k
        self.gradient = gradient

    def objective(self, x: Tensor, out: VAEOutput, context: Context) -> dict[str, Tensor]:
        dreg = self.gradient == "dreg" and torch.is_grad_enabled() and out.latent.z.requires_grad
        if out.k == 1 and not dreg:
            # L_1 is the ELBO: take the base's estimate of it, with the analytic KL where there is one
            # (lower variance than log p(z) - log q(z | x) of the one sample, the same expectation).
            bound = out.elbo
        else:
            log_w = self._dreg_log_weights(out) if dreg else out.log_weights()  # (k, B) fp32
            bound = torch.logsumexp(log_w, dim=0) - math.log(out.k)  # (B,)
        terms = {"loss": -bound}
        if out.k == self.k:  # logged only where it is the bound of this k (evaluation draws one code)
            terms["iw_bound"] = bound
        return terms

    def _dreg_log_weights(self, out: VAEOutput) -> Tensor:
        """The log-weights ``(k, B)`` with DReG's gradients (see the module docstring): same values as
        ``out.log_weights()``, but the encoder is reached through z only, with w~^2 per sample."""
        z = out.latent.z  # (k, B, L)
        q = out.posterior
        assert q is not None, "checked at construction: DReG needs the one-layer Gaussian latent"
        stopped = DiagonalGaussian(q.mean.detach(), q.logvar.detach())
        log_w = out.log_px.float() + out.latent.log_p - stopped.log_prob(z)  # (k, B)
        w_tilde = torch.softmax(log_w.detach(), dim=0).unsqueeze(-1)  # (k, B, 1), normalised over the k codes
        # What reaches z from -L_k is -w~_i d log w_i / d z_i; times w~_i gives the encoder DReG's w~_i^2.
        # Only the loss's log-weights use z here, so nothing else gets scaled.
        z.register_hook(lambda grad: grad * w_tilde.to(grad.dtype))
        return log_w
