"""Write tiny datasets in the official on-disk formats, so tests run the real readers.

Plain functions, importable by any test (``from tests.data_files import ...``).
"""

import hashlib
import io
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

# ../shared/data from the repository root: real files, read-only in CI.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_GZ = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# What write_mnist_idx wrote: {"train": (images (n, 28, 28), labels (n,)), "test": ...}.
MNISTWritten = dict[str, tuple[np.ndarray, np.ndarray]]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed IDX file (magic 0x0000080<ndim>, big-endian sizes)."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_idx(
    root: Path, n_train: int = 64, n_test: int = 16, seed: int = 0, folder: str = "MNIST"
) -> MNISTWritten:
    """Write the four extracted MNIST IDX files under ``root/<folder>/raw/``.

    Images are random uint8 (all 256 levels occur), labels cycle 0..9.

    Args:
        root: The dataset root (what ``--data.root`` would be).
        n_train: Number of training images.
        n_test: Number of test images.
        seed: Seed of the random pixels.
        folder: ``"MNIST"`` or ``"FashionMNIST"``.

    Returns:
        ``{"train": (images (n, 28, 28), labels (n,)), "test": ...}`` as written.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


def copy_real_mnist(root: Path, folder: str = "MNIST") -> Path:
    """Copy the four official ``.gz`` files from ``../shared/data/<folder>/raw`` to ``root/<folder>/raw``.

    Skips the calling test when the shared copy is absent. The DataModule (``download=True``)
    then checks their md5s and extracts them: torchvision's real download path, offline.

    Returns:
        ``root``, the folder to pass as ``--data.root``.
    """
    source = SHARED_DATA / folder / "raw"
    if not all((source / name).is_file() for name in MNIST_GZ):
        pytest.skip(f"real {folder} not found under {source}")
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_GZ:
        shutil.copyfile(source / name, raw / name)  # copyfile: the copies are writable
    return Path(root)


def cifar10_image(index: int) -> np.ndarray:
    """The known CHW uint8 (3, 32, 32) image number ``index`` written by :func:`write_cifar10_batches`.

    Red is constant ``index % 256``, green equals the row ``h`` and blue ``2 * w + 1`` for column
    ``w``, so a swapped channel, or rows and columns swapped, shows in the values.
    """
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([np.full((32, 32), index % 256), h, 2 * w + 1]).astype(np.uint8)


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (BINSTRING), as the official CIFAR-10 files do.

    torchvision loads them with ``encoding="latin1"``, which turns such strings (dict keys,
    the ndarray's raw buffer) into ``str``; Python 3 ``bytes`` would stay ``bytes`` and miss.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(header + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_cifar10_batches(root: Path, n_per_batch: int = 8) -> dict[str, str]:
    """Write the official CIFAR-10 python pickles under ``root/cifar-10-batches-py/``.

    ``data_batch_1..5`` and ``test_batch`` hold ``b"data"`` uint8 ``(n, 3072)`` (each row the
    R, G, B planes of 32x32, row-major) and ``b"labels"``; ``batches.meta`` holds
    ``b"label_names"``. Image ``i`` over all training batches (then ``5 * n_per_batch + i``
    for the test batch) is :func:`cifar10_image` of that number; its label is ``number % 10``.

    Returns:
        md5 hex digest of each written file, by file name (for :func:`patch_cifar10_md5s`).
    """
    folder = Path(root) / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        numbers = range(b * n_per_batch, (b + 1) * n_per_batch)
        data = np.stack([cifar10_image(i).reshape(3072) for i in numbers])
        contents[name] = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in numbers],
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in numbers],
        }
    contents["batches.meta"] = {
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_cases_per_batch": n_per_batch,
        b"num_vis": 3072,
    }
    md5s = {}
    for name, content in contents.items():
        buffer = io.BytesIO()
        _Py2Pickler(buffer, protocol=2).dump(content)  # the official files are Python 2 pickles
        blob = buffer.getvalue()
        (folder / name).write_bytes(blob)
        md5s[name] = hashlib.md5(blob).hexdigest()
    return md5s


def patch_cifar10_md5s(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Point torchvision's CIFAR10 md5 table at the tiny files, so its real check runs on them."""
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


def flat_colour(label: int, index: int) -> tuple[int, int, int]:
    """The RGB colour of JPEG-mirror image ``index`` of class ``label``: distinct and JPEG-safe."""
    return 20 + 20 * label, 40 + 40 * index, 200 - 15 * label


def write_cifar10_jpeg_mirror(root: Path, n_train_per_class: int = 2, n_test: int = 6) -> None:
    """Write the JPEG mirror layout under ``root/cifar-10/``.

    ``cifar10_train_jpeg.zip`` (stored, ``train/<class>/NNNN.jpg``) holds flat-colour 32x32
    JPEGs coloured by :func:`flat_colour` (flat colours survive JPEG within a few levels);
    ``cifar10_test_from_jpeg.npz`` holds ``x`` uint8 (n_test, 32, 32, 3) HWC with red =
    row ``h``, green = column ``w``, blue = 100 + image number, and ``y`` = number % 10.
    """
    from PIL import Image

    folder = Path(root) / "cifar-10"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "cifar10_train_jpeg.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for label, name in enumerate(CIFAR10_CLASSES):
            for index in range(n_train_per_class):
                buffer = io.BytesIO()
                Image.new("RGB", (32, 32), flat_colour(label, index)).save(buffer, "JPEG", quality=75)
                archive.writestr(f"train/{name}/{index:04d}.jpg", buffer.getvalue())
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    x = np.stack([np.stack([h, w, np.full((32, 32), 100 + i)], axis=-1) for i in range(n_test)]).astype(np.uint8)
    y = (np.arange(n_test) % 10).astype(np.uint8)
    np.savez(folder / "cifar10_test_from_jpeg.npz", x=x, y=y, path=np.array([f"test/{i}.jpg" for i in range(n_test)]))
