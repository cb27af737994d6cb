"""Several stochastic layers of Gaussian codes: the hierarchical VAE of Burda et al. (2015), bottom-up inference.

With layers z_1 (the bottom one, which the decoder sees) ... z_L (the top one), z_0 = x:

    generative  p(x, z_1..L) = p(x | z_1) p(z_1 | z_2) ... p(z_{L-1} | z_L) p(z_L)
    inference   q(z_1..L | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})

Every conditional is a diagonal Gaussian N(mean(u), diag(exp(logvar(u)))) whose mean and log-variance an
MLP computes from the layer next to it; q(z_1 | x) comes from the model's encoder (the net), p(x | z_1)
is the model's decoder, p(z_L) is the model's ``prior`` part. This module owns the MLPs between the
stochastic layers: q(z_{l+1} | z_l) (``up``) and p(z_l | z_{l+1}) (``down``) for l = 1 .. L-1. Burda et
al.'s two-layer MNIST model: x -> 200 -> 200 -> z_1 (100) -> 100 -> 100 -> z_2 (50), tanh, and back.

Each of the k codes per image is one bottom-up chain: z_1 ~ q(z_1 | x), then z_{l+1} ~ q(z_{l+1} | z_l)
given that sample (reparameterised, so gradients reach every layer). Its log-weights, fp32, ``(k, B)``:

    log q = sum_l log q(z_l | z_{l-1}),    log p = log p(z_L) + sum_{l<L} log p(z_l | z_{l+1})

The KL, KL(q(z_1..L | x) || p(z_1..L)) = E_q[log q - log p], splits by layer into
E_q[log q(z_l | z_{l-1}) - log p(z_l | z_{l+1})], and:

- the top layer's part is analytic given the sample below it: E_{z_{L-1}}[KL(q(z_L | z_{L-1}) || p(z_L))],
  the closed form of the prior (``normal``) at the sampled z_{L-1}, averaged over the k chains;
- a lower layer's part is estimated from the same samples: log q(z_l | z_{l-1}) - log p(z_l | z_{l+1}).
  Its two Gaussians have no common conditioning: p(z_l | z_{l+1}) is evaluated at z_{l+1} ~ q(z_{l+1} | z_l),
  which was drawn *from* z_l, so the pair cannot be integrated over z_l in closed form;
- with a learned prior (``mog``) the top layer's part is estimated too.

So the KL of two or more layers is a Monte-Carlo estimate (unbiased; ``kl_analytic`` False, logged as
``kl_mc``), with one term per layer logged as ``kl_z1`` ... ``kl_zL``. With one layer the latent is
exactly :class:`~vaezoo.latents.gaussian.GaussianLatent`: the same draws, the same analytic KL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.latents.base import ImageShape, Latent, LatentSample
from vaezoo.latents.gaussian import DiagonalGaussian
from vaezoo.nets.base import ACTIVATIONS
from vaezoo.priors.base import Prior, kl


class ConditionalGaussian(nn.Module):
    """N(mean(u), diag(exp(logvar(u)))): an MLP from ``u`` ``(..., in_dim)`` to the mean and log-variance.

    Args:
        in_dim: Size of the conditioning layer u.
        out_dim: Size of the Gaussian's variable.
        hidden_dims: Widths of the hidden layers ([] for a linear map).
        activation: Nonlinearity after every hidden layer (a name of ``vaezoo.nets.base.ACTIVATIONS``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: list[int], activation: str) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_dims]
        hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), ACTIVATIONS[activation]())]
        self.net = nn.Sequential(*hidden, nn.Linear(sizes[-1], 2 * out_dim))

    def forward(self, u: Tensor) -> DiagonalGaussian:
        mean, logvar = self.net(u).chunk(2, dim=-1)  # (..., out_dim) each
        return DiagonalGaussian(mean, logvar)


class HierarchicalLatent(Latent):
    """``len(layers)`` stochastic layers of Gaussian units, bottom first, under the prior ``prior`` on the top
    one (see the module docstring for the model, the KL and what is analytic).

    Args:
        layers: Units per stochastic layer, bottom (z_1, the decoder's code) first, e.g. ``[100, 50]``.
        prior: p(z_L) over the top layer: ``normal`` (analytic top-layer KL) or ``mog``. Priors defined through
            the encoder (``vamp``) need q(z_L | x) in closed form, which bottom-up inference over two or more
            layers does not have, and are refused at start-up.
        hidden_dims: Widths of the hidden layers of every MLP between two stochastic layers, from the lower
            layer up; p(z_l | z_{l+1}) uses them reversed.
        activation: Their nonlinearity.
    """

    def __init__(self, layers: list[int], prior: Prior, hidden_dims: list[int] = [100, 100],  # noqa: B006
                 activation: str = "tanh") -> None:
        super().__init__()
        if not layers or min(layers) <= 0:
            raise VAEZooError(f"a hierarchical latent needs one or more layers of positive size, got {layers}; "
                              "e.g. --model.latent_dims [100, 50] (bottom layer first).")
        self.layers = list(layers)
        self.code_dim = layers[0]
        self.activity_dim = sum(layers)
        self.prior = prior
        # q(z_{l+1} | z_l) and p(z_l | z_{l+1}) for l = 1 .. L-1, bottom pair first.
        self.up = nn.ModuleList(ConditionalGaussian(a, b, hidden_dims, activation) for a, b in zip(layers, layers[1:]))
        self.down = nn.ModuleList(
            ConditionalGaussian(b, a, hidden_dims[::-1], activation) for a, b in zip(layers, layers[1:])
        )
        self.terms = tuple(f"kl_z{l}" for l in range(1, len(layers) + 1)) if len(layers) > 1 else ()

    @property
    def kl_analytic(self) -> bool:
        return len(self.layers) == 1 and self.prior.analytic_kl

    def bind(self, image_shape: ImageShape, encode: Callable[[Tensor], Tensor]) -> None:
        if len(self.layers) == 1:  # q(z_1 | x) is the top layer's posterior: every prior works, as for vanilla
            def posterior_of(x: Tensor) -> tuple[Tensor, Tensor]:
                q = self.posterior(encode(x))
                return q.mean, q.logvar
        else:
            def posterior_of(x: Tensor) -> tuple[Tensor, Tensor]:
                raise VAEZooError(
                    f"the prior {type(self.prior).__name__} needs the encoder's posterior of the top layer q(z_L | x) "
                    f"in closed form, which a hierarchical latent of {len(self.layers)} layers does not have (it is "
                    "an integral over the layers below); use --model.prior normal or mog."
                )
        self.prior.bind(self.layers[-1], image_shape, posterior_of)

    def posterior(self, h: Tensor) -> DiagonalGaussian:
        """q(z_1 | x) from the encoder's output ``h`` ``(B, 2 L_1)``: the mean and log-variance side by side."""
        mean, logvar = h.chunk(2, dim=-1)  # (B, L_1) each
        return DiagonalGaussian(mean, logvar)

    def forward(self, h: Tensor, k: int = 1, log_weights: bool = False) -> LatentSample:
        q1 = self.posterior(h)
        z1 = q1.rsample(k)  # (k, B, L_1)
        posterior = {"mean": q1.mean, "logvar": q1.logvar}
        finite = {"posterior mean": q1.mean, "posterior logvar": q1.logvar}
        if len(self.layers) == 1:  # GaussianLatent's computation, step for step (the same numbers as vanilla)
            log_q = log_p = None
            if log_weights or not self.prior.analytic_kl:
                log_q, log_p = q1.log_prob(z1), self.prior.log_prob(z1)
            kl_total, kl_per_dim, analytic = kl(self.prior, q1.mean, q1.logvar, log_q, log_p)
            return LatentSample(z=z1, kl=kl_total, kl_analytic=analytic, log_q=log_q, log_p=log_p, point=q1.mean,
                                activity=q1.mean, kl_per_dim=kl_per_dim, posterior=posterior, finite_parts=finite)
        # Bottom-up: each chain's z_{l+1} is drawn given its own z_l.
        qs, zs = [q1], [z1]
        for up in self.up:
            q = up(zs[-1])  # (k, B, L_{l+1}) mean and logvar
            qs.append(q)
            zs.append(q.rsample())
        log_q_layers = [q.log_prob(z) for q, z in zip(qs, zs)]  # (k, B) each, fp32
        log_p_layers = [down(z_above).log_prob(z) for down, z, z_above in zip(self.down, zs, zs[1:])]
        log_p_layers.append(self.prior.log_prob(zs[-1]))
        # Per layer, (B,): sampled below the top; the top analytic given z_{L-1} where the prior has a closed form.
        kls = [(lq - lp).mean(0) for lq, lp in zip(log_q_layers[:-1], log_p_layers[:-1])]
        top = qs[-1]
        if self.prior.analytic_kl:
            kls.append(self.prior.kl_per_dim(top.mean.float(), top.logvar.float()).sum(-1).mean(0))
        else:
            kls.append((log_q_layers[-1] - log_p_layers[-1]).mean(0))
        for l, q in enumerate(qs[1:], start=2):
            finite[f"z{l} mean"], finite[f"z{l} logvar"] = q.mean, q.logvar
        # E_q[z_l | x] of an upper layer = E[mean of q(z_l | z_{l-1})] (tower rule): the k chains' mean estimates it.
        activity = torch.cat([q1.mean, *(q.mean.mean(0) for q in qs[1:])], dim=-1)  # (B, sum L)
        return LatentSample(
            z=z1, kl=torch.stack(kls).sum(0), kl_analytic=False, log_q=sum(log_q_layers), log_p=sum(log_p_layers),
            point=q1.mean, activity=activity, stats={f"kl_z{l}": v for l, v in enumerate(kls, start=1)},
            posterior=posterior, finite_parts=finite,
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes z_1 ``(n, L_1)`` drawn top-down: z_L ~ p(z_L), then z_l ~ p(z_l | z_{l+1}) (a draw, not the
        mean: the model's own distribution), ending at the bottom layer."""
        z = self.prior.sample(n, generator)  # (n, L_L) on the model's device
        for down in reversed(self.down):
            p = down(z.to(down.net[0].weight.dtype))
            if generator is not None:  # drawn on the CPU, the same codes on any device
                eps = torch.randn(p.mean.shape, generator=generator).to(p.mean.device, p.mean.dtype)
            else:
                eps = torch.randn_like(p.mean)
            z = p.mean + torch.exp(0.5 * p.logvar) * eps
        return z

    def point(self, h: Tensor) -> Tensor:
        return self.posterior(h).mean

    def check(self) -> None:
        self.prior.check()

    def check_data(self, train_images: int) -> None:
        self.prior.check_data(train_images)

    def describe(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "kl": "analytic" if self.kl_analytic else
                  "top layer analytic given the sample below, lower layers sampled" if self.prior.analytic_kl else
                  "sampled",
        }
