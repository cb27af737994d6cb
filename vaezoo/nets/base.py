"""The interface every net (encoder-decoder pair) implements."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ImageShape = tuple[int, int, int]
"""(channels, height, width) of one image."""


class Net(nn.Module):
    """An encoder-decoder pair for a VAE over images of one shape.

    Subclasses build two modules in ``__init__``:

    - ``encoder``: ``(B, C, H, W)`` images in [0, 1] -> ``(B, 2 * latent_dim)``, the posterior's
      mean and log-variance side by side;
    - ``decoder``: ``(B, latent_dim)`` codes -> ``(B, out_channels, H, W)`` likelihood parameters.

    The first three ``__init__`` arguments are supplied by the model, never by the config: the
    image shape comes from the DataModule, and ``out_channels`` is the image's channels times the
    likelihood's parameters per channel.

    Args:
        image_shape: (channels, height, width) of the images.
        latent_dim: Size of the latent code z.
        out_channels: Channels of the decoder's output.
    """

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, image_shape: ImageShape, latent_dim: int, out_channels: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.out_channels = out_channels


NetFactory = Callable[[ImageShape, int, int], Net]
"""What a model's ``net`` argument takes: a Net class plus its own arguments, given in the config as
``net: {class_path: conv, init_args: {channels: [32, 64]}}`` or just ``net: mlp``."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}
