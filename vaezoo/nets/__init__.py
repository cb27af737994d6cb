"""Encoder-decoder nets. Each file registers its net under a short name (``mlp``, ``conv``, ``resnet``)."""

from vaezoo.nets.base import ImageShape, Net, NetFactory
from vaezoo.nets.conv import ConvNet
from vaezoo.nets.mlp import MLPNet
from vaezoo.nets.resnet import ResNet

__all__ = ["ConvNet", "ImageShape", "MLPNet", "Net", "NetFactory", "ResNet"]
