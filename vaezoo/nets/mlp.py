"""Fully connected encoder and decoder."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from vaezoo.errors import VAEZooError
from vaezoo.nets.base import ACTIVATIONS, ImageShape, Init, Net, initialise
from vaezoo.registry import register_net


@register_net("mlp")
class MLPNet(Net):
    """MLP encoder and decoder: flatten, hidden layers, and the mirror image back to pixels.

    Args:
        image_shape: Supplied by the model from the data; not set in configs.
        latent_dim: Supplied by the model; not set in configs.
        out_channels: Supplied by the model; not set in configs.
        hidden_dims: Widths of the encoder's hidden layers; the decoder uses them reversed.
        activation: Nonlinearity after every hidden layer.
        init: How the linear layers start: ``pytorch`` (its default) or ``he`` (He et al. 2015; escapes the
            early no-information plateau of tanh MLPs sooner, and what the VampPrior needs, see
            :func:`vaezoo.nets.base.initialise`).
    """

    def __init__(
        self,
        image_shape: ImageShape,
        latent_dim: int,
        out_channels: int,
        hidden_dims: list[int] = [512, 256],  # noqa: B006 (jsonargparse needs the literal default)
        activation: Literal["relu", "tanh", "elu", "gelu", "silu", "leaky_relu", "softplus"] = "relu",
        init: Init = "pytorch",
    ) -> None:
        super().__init__(image_shape, latent_dim, out_channels)
        if not hidden_dims or min(hidden_dims) <= 0:
            raise VAEZooError(f"mlp net needs at least one hidden layer of positive width, got {hidden_dims}.")
        c, h, w = image_shape
        act = ACTIVATIONS[activation]

        def stack(sizes: list[int]) -> list[nn.Module]:
            return [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), act())]

        # (B, C, H, W) -> (B, C*H*W) -> hidden -> (B, 2 * latent_dim)
        self.encoder = nn.Sequential(
            nn.Flatten(), *stack([math.prod(image_shape), *hidden_dims]), nn.Linear(hidden_dims[-1], 2 * latent_dim)
        )
        # (B, latent_dim) -> hidden reversed -> (B, out_channels, H, W)
        self.decoder = nn.Sequential(
            *stack([latent_dim, *hidden_dims[::-1]]),
            nn.Linear(hidden_dims[0], out_channels * h * w),
            nn.Unflatten(1, (out_channels, h, w)),
        )
        initialise(self, init)
