"""The hierarchical VAE of Burda et al. (2015): two or more stochastic layers, inferred bottom-up."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.latents.gaussian import DiagonalGaussian
from vaezoo.latents.hierarchical import HierarchicalLatent
from vaezoo.models.base import VAE, _checkpoint_mismatch
from vaezoo.nets.base import Init, initialise
from vaezoo.priors.base import Prior
from vaezoo.registry import register_variant


@register_variant("hvae")
class HVAE(VAE):
    """The hierarchical VAE of Burda et al. (2015): two or more stochastic layers of Gaussian units, inferred bottom-up.

    "Importance Weighted Autoencoders", section 5: the model p(x | z_1) p(z_1 | z_2) ... p(z_L), the posterior
    q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}).

    The objective is the ELBO, log p(x | z_1) + log p(z_1..L) - log q(z_1..L | x), in nats per image. Its KL
    over two or more layers is a Monte-Carlo estimate (logged as ``kl_mc``, one term per layer as
    ``kl_z1`` ...): the top layer's term is analytic given the sample below it, the lower layers' are
    sampled (:mod:`vaezoo.latents.hierarchical` says why). ``latent_dims: [L]`` is exactly ``vanilla``.

    The net (e.g. ``mlp`` with ``hidden_dims: [200, 200]``) gives q(z_1 | x) and p(x | z_1); the MLPs between
    the stochastic layers are set here. Burda et al.'s two-layer MNIST model: ``latent_dims: [100, 50]``,
    ``hidden_dims: [100, 100]``, tanh (configs/mnist_hvae.yaml). Decoding, reconstructions, traversals and
    ``encode`` work on the bottom layer z_1; samples are drawn top-down from the prior.

    Args:
        latent_dims: Units per stochastic layer, bottom first: z_1 (what the decoder takes) ... z_L (under
            ``prior``). The model's ``latent_dim`` is ``latent_dims[0]``.
        hidden_dims: Widths of the hidden layers of each MLP between two stochastic layers (q(z_{l+1} | z_l) uses
            them in order, p(z_l | z_{l+1}) reversed); [] makes them linear.
        activation: Nonlinearity of those MLPs.
        init: How their linear layers start: ``pytorch`` or ``he`` (see :func:`vaezoo.nets.base.initialise`).
        latent_dim: Leave it unset: it is ``latent_dims[0]``; a different value is refused.
        **kwargs: Everything :class:`vaezoo.models.base.VAE` takes (net, likelihood, prior: ``normal`` or
            ``mog``, ...).
    """

    def __init__(
        self,
        latent_dims: list[int] = [100, 50],  # noqa: B006 (jsonargparse needs the literal default)
        hidden_dims: list[int] = [100, 100],  # noqa: B006
        activation: Literal["relu", "tanh", "elu", "gelu", "silu", "leaky_relu", "softplus"] = "tanh",
        init: Init = "pytorch",
        latent_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        latent_dims, hidden_dims = list(latent_dims), list(hidden_dims)
        if not latent_dims or min(latent_dims) <= 0:
            raise VAEZooError(f"latent_dims must list one or more positive layer sizes, bottom first, got "
                              f"{latent_dims}; e.g. --model.latent_dims '[100, 50]'.")
        if hidden_dims and min(hidden_dims) <= 0:
            raise VAEZooError(f"hidden_dims must be positive widths (or [] for linear maps between the layers), got "
                              f"{hidden_dims}; e.g. --model.hidden_dims '[100, 100]'.")
        if latent_dim is not None and latent_dim != latent_dims[0]:
            raise VAEZooError(f"hvae takes latent_dim from latent_dims[0] = {latent_dims[0]} (the bottom layer), but "
                              f"latent_dim is {latent_dim}: leave latent_dim unset (--model.latent_dim null), or set "
                              f"--model.latent_dims '[{latent_dim}, ...]'.")
        latent_dim = latent_dims[0]  # the frame's value is what save_hyperparameters keeps
        # Read by build_latent, which the base's __init__ calls.
        self._layers, self._hidden_dims, self._activation = latent_dims, hidden_dims, activation
        super().__init__(latent_dim=latent_dim, **kwargs)
        for mlp in (*self.latent.up, *self.latent.down):
            initialise(mlp, init)
        self.latent_dims = latent_dims

    def build_latent(self, latent_dim: int, prior: Prior) -> HierarchicalLatent:
        return HierarchicalLatent(self._layers, prior, self._hidden_dims, self._activation)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior of the bottom layer q(z_1 | x) of images ``x`` ``(B, C, H, W)`` in [0, 1] (what the decoder
        takes); the upper layers' posteriors depend on a sample of z_1: ``model(x).latent`` holds them."""
        return self.latent.posterior(self.net.encoder(x))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # `vaezoo fit` saves its config, where latent_dim is null (derived from latent_dims): compare the layers.
        saved = checkpoint.get("hyper_parameters") or {}
        layers = saved.get("latent_dims")
        if layers is not None and list(layers) != self.latent_dims:
            detail = f"latent_dims {list(layers)} (checkpoint) vs {self.latent_dims} (config)"
            raise VAEZooError(_checkpoint_mismatch(detail))
        if "latent_dim" in saved and saved["latent_dim"] is None:
            saved = {**saved, "latent_dim": self.latent_dim if layers is None else layers[0]}
            checkpoint = {**checkpoint, "hyper_parameters": saved}  # a copy: the checkpoint itself stays as saved
        super().on_load_checkpoint(checkpoint)
