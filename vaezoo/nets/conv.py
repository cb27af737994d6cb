"""Convolutional encoder and decoder that adapt to the image shape."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.nets.base import ACTIVATIONS, ImageShape, Net
from vaezoo.registry import register_net


def _channels_last(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def _contiguous(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output.contiguous()  # callers (metrics, .view) expect the usual NCHW layout


class Crop(nn.Module):
    """Cut ``(top, bottom, left, right)`` pixels off a ``(B, C, H, W)`` map: undoes the encoder's padding."""

    def __init__(self, top: int, bottom: int, left: int, right: int) -> None:
        super().__init__()
        self.edges = (top, bottom, left, right)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom, left, right = self.edges
        return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]

    def extra_repr(self) -> str:
        return "top={}, bottom={}, left={}, right={}".format(*self.edges)


def fit_to_stride(h: int, w: int, factor: int) -> tuple[int, int, list[nn.Module], list[nn.Module]]:
    """How a net whose layers halve the size ``log2(factor)`` times handles an image of any ``h`` x ``w``.

    The encoder zero-pads the image up to the next multiple of ``factor`` (split evenly, the odd pixel
    at the bottom and right) and the decoder crops the same pixels off its output, so it gives exactly
    ``h`` x ``w`` and the likelihood never scores the padding. Sizes already divisible get no modules,
    so their nets (and checkpoints) are as before.

    Returns:
        The padded height and width, the encoder's first modules and the decoder's last ones.
    """
    ph, pw = -h % factor, -w % factor
    if not ph and not pw:
        return h, w, [], []
    top, left = ph // 2, pw // 2
    bottom, right = ph - top, pw - left
    return h + ph, w + pw, [nn.ZeroPad2d((left, right, top, bottom))], [Crop(top, bottom, left, right)]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)
    return nn.Identity()


@register_net("conv")
class ConvNet(Net):
    """Strided conv encoder and transposed-conv decoder; each layer halves (doubles) the image size.

    Works for images of any size. When height or width is not divisible by ``2 ** len(channels)``
    (1x28x28 with three layers, 3x218x178), the encoder zero-pads the image up to the next multiple
    and the decoder crops its output back to exactly the image's size: the padding is never scored.
    Sizes that divide (1x28x28 and 3x32x32 with the default two layers, 3x64x64 with up to six) are
    neither padded nor cropped.

    Args:
        image_shape: Supplied by the model from the data; not set in configs.
        latent_dim: Supplied by the model; not set in configs.
        out_channels: Supplied by the model; not set in configs.
        channels: Channels of the encoder's stride-2 conv layers; the decoder uses them reversed.
        activation: Nonlinearity after every conv layer.
        norm: Normalisation after every hidden conv layer: none, batch or group.
    """

    def __init__(
        self,
        image_shape: ImageShape,
        latent_dim: int,
        out_channels: int,
        channels: list[int] = [32, 64],  # noqa: B006 (jsonargparse needs the literal default)
        activation: Literal["relu", "tanh", "elu", "gelu", "silu", "leaky_relu", "softplus"] = "relu",
        norm: Literal["none", "batch", "group"] = "none",
    ) -> None:
        super().__init__(image_shape, latent_dim, out_channels)
        c, h, w = image_shape
        factor = 2 ** len(channels)
        if not channels or min(channels) <= 0:
            raise VAEZooError(f"conv net needs at least one layer of positive channels, got {channels}.")
        act = ACTIVATIONS[activation]
        hp, wp, pad, crop = fit_to_stride(h, w, factor)  # (B, c, h, w) <-> (B, c, hp, wp)
        hf, wf = hp // factor, wp // factor  # spatial size at the bottleneck

        def down(a: int, b: int) -> list[nn.Module]:  # (B, a, H, W) -> (B, b, H/2, W/2)
            return [nn.Conv2d(a, b, 4, stride=2, padding=1), _norm(norm, b), act()]

        def up(a: int, b: int) -> list[nn.Module]:  # (B, a, H, W) -> (B, b, 2H, 2W)
            return [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), _norm(norm, b), act()]

        sizes = [c, *channels]
        self.encoder = nn.Sequential(
            *pad,
            *[m for a, b in zip(sizes, sizes[1:]) for m in down(a, b)],
            nn.Flatten(),  # (B, channels[-1] * hf * wf)
            nn.Linear(channels[-1] * hf * wf, 2 * latent_dim),
        )
        rev = channels[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, rev[0] * hf * wf),
            act(),
            nn.Unflatten(1, (rev[0], hf, wf)),
            *[m for a, b in zip(rev, [*rev[1:], rev[-1]]) for m in up(a, b)],  # back to (B, channels[0], H, W)
            nn.Conv2d(rev[-1], out_channels, 3, padding=1),  # likelihood parameters, no activation
            *crop,  # (B, out_channels, hp, wp) -> (B, out_channels, h, w)
        )
        # NHWC ("channels_last") weights and input: oneDNN's CPU convolutions and the GPUs' tensor cores
        # are faster in it (1.1-1.3x per step on CPU, see docs/performance.md). Parameter names and
        # values are unchanged, so checkpoints are the same either way; what leaves the net is NCHW again.
        self.to(memory_format=torch.channels_last)
        self.encoder.register_forward_pre_hook(_channels_last)
        self.decoder.register_forward_hook(_contiguous)
