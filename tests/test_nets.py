"""The conv and resnet nets on any image size: padding in the encoder, an exact crop in the decoder, and the
resnet's stages, widths and depth following its arguments and the image size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaezoo.errors import VAEZooError
from vaezoo.nets import ConvNet, ResNet
from vaezoo.nets.conv import Crop
from vaezoo.nets.resnet import ResBlock

ODD = [(1, 28, 28), (3, 218, 178), (3, 65, 47), (1, 5, 9)]


@pytest.mark.parametrize("net", [ConvNet, ResNet])
@pytest.mark.parametrize("shape", ODD, ids=lambda s: "x".join(map(str, s)))
def test_any_size_is_padded_in_and_cropped_out(net: type, shape: tuple[int, int, int]) -> None:
    kwargs = {"channels": [4, 8, 8]} if net is ConvNet else {"width": 4, "max_width": 8, "blocks": 1, "stages": 3}
    model = net(shape, 3, 2 * shape[0], **kwargs)
    x = torch.rand(2, *shape)
    h = model.encoder(x)
    assert h.shape == (2, 6)
    out = model.decoder(h[:, :3])
    assert out.shape == (2, 2 * shape[0], *shape[1:])  # exactly the image: the likelihood never sees padding
    pad, crop = model.encoder[0], model.decoder[-1]
    assert isinstance(pad, nn.ZeroPad2d) and isinstance(crop, Crop)
    left, right, top, bottom = pad.padding
    assert crop.edges == (top, bottom, left, right)  # the crop removes what the pad added, on the same sides
    assert (shape[1] + top + bottom) % 8 == 0 and (shape[2] + left + right) % 8 == 0 and max(pad.padding) < 8


def test_the_padding_is_zeros_around_the_centred_image() -> None:
    model = ConvNet((1, 5, 9), 2, 1, channels=[4, 4])  # padded to 8x12: 1 row above, 2 below, 1 column left, 2 right
    padded = model.encoder[0](torch.ones(1, 1, 5, 9))
    assert padded.shape == (1, 1, 8, 12) and padded.sum() == 45
    assert torch.equal(padded[0, 0, 1:6, 1:10], torch.ones(5, 9))


@pytest.mark.parametrize("net", [ConvNet, ResNet])
def test_sizes_that_divide_are_neither_padded_nor_cropped(net: type) -> None:
    # The conv net's layers and parameter names are those of earlier versions, so their checkpoints still load.
    model = net((3, 32, 32), 4, 6)
    assert not any(isinstance(m, (nn.ZeroPad2d, Crop)) for m in model.modules())
    if net is ConvNet:
        assert isinstance(model.encoder[0], nn.Conv2d) and isinstance(model.decoder[-1], nn.Conv2d)


@pytest.mark.parametrize(("size", "stages"), [(28, 3), (32, 3), (64, 4), (128, 5), (218, 6)])
def test_resnet_halves_down_to_about_four_pixels(size: int, stages: int) -> None:
    model = ResNet((3, size, size), 4, 3)
    assert model.stages == stages
    assert model.widths == [min(64 * 2**i, 128) for i in range(stages)]  # pythae's CelebA widths by default
    last_conv = [m for m in model.encoder if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        features = model.encoder[: list(model.encoder).index(last_conv) + 1](torch.rand(1, 3, size, size))
    assert features.shape[-1] <= 4 and features.shape[-1] * 2 > 4  # the encoder stops at about 4x4


def test_resnet_width_and_depth_follow_the_arguments() -> None:
    model = ResNet((3, 64, 64), 8, 3, width=16, max_width=48, blocks=3, stages=2, hidden_ratio=2)
    assert model.widths == [16, 32]
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 2 * 3  # encoder and decoder, 2 stages, 3 blocks each
    assert {b.block[1].out_channels for b in blocks} == {8, 16}  # hidden = channels // hidden_ratio
    plain = ResNet((3, 64, 64), 8, 3, width=16, blocks=0)
    assert not any(isinstance(m, ResBlock) for m in plain.modules())


def test_a_res_block_adds_its_input() -> None:
    block = ResBlock(4, 2, nn.ReLU)
    nn.init.zeros_(block.block[3].weight)
    nn.init.zeros_(block.block[3].bias)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(block(x), x)  # a zero residual leaves the input unchanged


@pytest.mark.parametrize(
    "kwargs", [{"width": 0}, {"blocks": -1}, {"final_size": 0}, {"hidden_ratio": 0}, {"stages": 0}]
)
def test_resnet_refuses_bad_settings(kwargs: dict[str, int]) -> None:
    with pytest.raises(VAEZooError, match="resnet net needs"):
        ResNet((3, 32, 32), 4, 3, **kwargs)
