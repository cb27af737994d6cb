"""Shared fixtures: no network, tiny datasets in the official formats, and small runs."""

from pathlib import Path

import numpy as np
import pytest

from tests.network import block_network
from tests.data_files import patch_cifar10_md5s, write_cifar10_batches, write_mnist_idx


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torchvision and torch.hub download fails at once, as offline."""
    block_network(monkeypatch)


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A root holding 64 train / 16 test random MNIST images as extracted IDX files."""
    return tmp_path, write_mnist_idx(tmp_path, n_train=64, n_test=16)


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root holding official-format CIFAR-10 pickles (8 per batch), md5 table patched to them."""
    patch_cifar10_md5s(monkeypatch, write_cifar10_batches(tmp_path, n_per_batch=8))
    return tmp_path


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny MNIST (64 train / 16 test) in ``tmp_path/data``; the working folder, where ``runs/`` goes, is
    ``tmp_path/work``. Returns the data root."""
    write_mnist_idx(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "data"
