"""The interface every net (encoder-decoder pair) implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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

Init = Literal["pytorch", "he"]
"""How the linear layers of an MLP start: ``pytorch`` (PyTorch's default, weights uniform in
+-1/sqrt(fan_in)) or ``he`` (He et al. 2015, "Delving deep into rectifiers": weights normal with variance
2/fan_in, zero biases, as the VampPrior's reference code starts its MLPs)."""


def initialise(module: nn.Module, init: Init) -> None:
    """Start every ``nn.Linear`` in ``module`` by the scheme ``init`` (nothing to do for ``pytorch``).

    Why ``he`` exists: PyTorch's default shrinks the signal by about sqrt(3) per layer, so a tanh MLP's
    encoder starts nearly constant over the data (posterior means varying by about 0.05). The decoder
    then learns the data's mean image first and the model sits on that no-information plateau (about
    207 nats per MNIST image) for hundreds of steps: long enough for the VampPrior, whose components
    come from the same encoder, to settle into posterior collapse for good (docs/models.md).
    """
    if init == "pytorch":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # variance 2 / fan_in
            nn.init.zeros_(layer.bias)
