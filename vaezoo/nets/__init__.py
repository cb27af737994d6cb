"""Encoder-decoder nets. Each file registers its net under a short name (``mlp``, ``conv``)."""

from vaezoo.nets.base import ImageShape, Net, NetFactory
from vaezoo.nets.conv import ConvNet
from vaezoo.nets.mlp import MLPNet

__all__ = ["ConvNet", "ImageShape", "MLPNet", "Net", "NetFactory"]
