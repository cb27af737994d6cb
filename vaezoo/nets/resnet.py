"""Residual conv encoder and decoder whose depth follows the image size (pythae's benchmark ResNets, generalised).

pythae's CIFAR-10 and CelebA benchmark nets (``pythae.models.nn.benchmarks.{cifar,celeba}``) halve a
3x64x64 image with four strided convs down to 128x4x4, add two residual blocks, and map that to the
posterior with a linear layer; the decoder mirrors it with transposed convs. Here the number of halvings
comes from the image size (down to about 4x4: four for 64x64, five for 128x128), and the width (channels
per stage) and depth (residual blocks per stage) are arguments.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError
from vaezoo.nets.base import ACTIVATIONS, ImageShape, Net
from vaezoo.nets.conv import _channels_last, _contiguous, fit_to_stride
from vaezoo.registry import register_net


class ResBlock(nn.Module):
    """``x + conv1x1(act(conv3x3(act(x))))``: pythae's residual block, same size in and out.

    Args:
        channels: Channels in and out.
        hidden: Channels of the 3x3 conv inside the block (pythae: a quarter of ``channels``).
        activation: The nonlinearity class.
    """

    def __init__(self, channels: int, hidden: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            activation(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            activation(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)  # (B, C, H, W)


@register_net("resnet")
class ResNet(Net):
    """Strided-conv encoder and transposed-conv decoder with residual blocks at every stage.

    Each encoder stage halves the image with a 4x4 stride-2 conv and then applies ``blocks`` residual
    blocks; stages are added until the smaller side is at most ``final_size`` (1x28x28 and 3x32x32: 3
    stages, 3x64x64: 4, as pythae's CelebA net; 3x128x128: 5). Stage ``i`` has
    ``min(width * 2**i, max_width)`` channels. The decoder mirrors the encoder. Images of any size work:
    sizes not divisible by ``2 ** stages`` are zero-padded before the encoder and cropped back after the
    decoder, which gives exactly the image's size (as the ``conv`` net does).

    Args:
        image_shape: Supplied by the model from the data; not set in configs.
        latent_dim: Supplied by the model; not set in configs.
        out_channels: Supplied by the model; not set in configs.
        width: Channels of the first (largest) stage; each later stage doubles them, up to max_width.
        max_width: Most channels of any stage.
        blocks: Residual blocks per stage (depth); 0 leaves a plain strided conv net.
        final_size: The encoder halves the image until its smaller side is at most this many pixels.
        stages: Number of stride-2 stages; None derives it from the image size and final_size.
        hidden_ratio: A residual block's inner 3x3 conv has channels // hidden_ratio channels (pythae: 4).
        activation: Nonlinearity between the convs.
    """

    def __init__(
        self,
        image_shape: ImageShape,
        latent_dim: int,
        out_channels: int,
        width: int = 64,
        max_width: int = 128,
        blocks: int = 2,
        final_size: int = 4,
        stages: int | None = None,
        hidden_ratio: int = 4,
        activation: Literal["relu", "tanh", "elu", "gelu", "silu", "leaky_relu", "softplus"] = "relu",
    ) -> None:
        super().__init__(image_shape, latent_dim, out_channels)
        c, h, w = image_shape
        if min(width, max_width, final_size, hidden_ratio) <= 0 or blocks < 0:
            raise VAEZooError(
                f"resnet net needs positive width, max_width, final_size and hidden_ratio and blocks >= 0, got "
                f"width={width}, max_width={max_width}, final_size={final_size}, hidden_ratio={hidden_ratio}, "
                f"blocks={blocks}."
            )
        if stages is None:
            stages = max(1, math.ceil(math.log2(min(h, w) / final_size)))
        elif stages <= 0:
            raise VAEZooError(f"resnet net needs stages >= 1 (or None, from the image size), got {stages}.")
        act = ACTIVATIONS[activation]
        widths = [min(width * 2**i, max_width) for i in range(stages)]
        hp, wp, pad, crop = fit_to_stride(h, w, 2**stages)  # (B, c, h, w) <-> (B, c, hp, wp)
        hf, wf = hp >> stages, wp >> stages  # spatial size at the bottleneck

        def res(ch: int) -> list[nn.Module]:
            return [ResBlock(ch, max(1, ch // hidden_ratio), act) for _ in range(blocks)]

        encoder: list[nn.Module] = [*pad]
        for a, b in zip([c, *widths], widths):  # (B, a, H, W) -> (B, b, H/2, W/2)
            encoder += [nn.Conv2d(a, b, 4, stride=2, padding=1), act(), *res(b)]
        self.encoder = nn.Sequential(
            *encoder,
            act(),  # the last block ends on a sum
            nn.Flatten(),  # (B, widths[-1] * hf * wf)
            nn.Linear(widths[-1] * hf * wf, 2 * latent_dim),
        )
        rev = widths[::-1]
        decoder: list[nn.Module] = [
            nn.Linear(latent_dim, rev[0] * hf * wf),
            nn.Unflatten(1, (rev[0], hf, wf)),
        ]
        for a, b in zip(rev, [*rev[1:], rev[-1]]):  # (B, a, H, W) -> (B, b, 2H, 2W)
            decoder += [*res(a), act(), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(
            *decoder,
            act(),
            nn.Conv2d(rev[-1], out_channels, 3, padding=1),  # likelihood parameters, no activation
            *crop,  # (B, out_channels, hp, wp) -> (B, out_channels, h, w)
        )
        self.stages, self.widths = stages, widths
        # NHWC, as the conv net (see vaezoo/nets/conv.py): faster convs, unchanged checkpoints, NCHW out.
        self.to(memory_format=torch.channels_last)
        self.encoder.register_forward_pre_hook(_channels_last)
        self.decoder.register_forward_hook(_contiguous)
