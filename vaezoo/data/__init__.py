"""Image DataModules that keep each split in one uint8 tensor and batch by tensor indexing."""

from vaezoo.data.base import ImageDataModule
from vaezoo.data.celeba import CelebADataModule
from vaezoo.data.cifar10 import CIFAR10DataModule
from vaezoo.data.folder import FolderDataModule
from vaezoo.data.loader import EpochBatchSampler, TensorBatchLoader
from vaezoo.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "CelebADataModule",
    "EpochBatchSampler",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "TensorBatchLoader",
]
