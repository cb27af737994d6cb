"""CIFAR-10 (3x32x32 colour): the official batches via torchvision, or a JPEG mirror.

Sources, in order of preference:

1. The official python batches ``<root>/cifar-10-batches-py/`` (or ``<root>/cifar-10-python.tar.gz``,
   which torchvision extracts), read and md5-checked by ``torchvision.datasets.CIFAR10``; with
   ``download=True`` and neither present, torchvision fetches the archive.
2. When the official files are absent: the JPEG mirror ``<root>/cifar-10/cifar10_train_jpeg.zip``
   (``train/<class>/NNNN.jpg``) and ``<root>/cifar-10/cifar10_test_from_jpeg.npz`` (``x`` uint8
   (N, 32, 32, 3), ``y``). It is lossy (JPEG quality 75) and class-sorted: fine for development,
   not for published numbers.
"""

import pickle
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.error import URLError

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5, check_integrity
from torchvision.io import ImageReadMode, decode_jpeg

from vaezoo.data.base import ImageDataModule, user_cache_dir
from vaezoo.errors import VAEZooError, describe_error, error_reason
from vaezoo.io import atomic_write
from vaezoo.registry import register_dataset

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MIRROR_DIR = "cifar-10"
MIRROR_TRAIN = "cifar10_train_jpeg.zip"
MIRROR_TEST = "cifar10_test_from_jpeg.npz"

# What torchvision raises for missing, unreachable or damaged files (URLError is an OSError).
_READ_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError)


def decode_jpeg_zip(path: Path) -> tuple[Tensor, Tensor]:
    """Decode every ``<class>/NNNN.jpg`` of a zip (sorted by path), labelled by its folder.

    Returns:
        Images as uint8 ``(N, 3, 32, 32)`` and labels as int64 ``(N,)`` in :data:`CLASSES` order.
    """
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith(".jpg"))
        folders = [PurePosixPath(name).parent.name for name in names]
        unknown = sorted(set(folders) - set(CLASSES))
        if unknown or not names:
            raise VAEZooError(
                f"{path} should hold train/<class>/NNNN.jpg with <class> in {', '.join(CLASSES)}; "
                f"found {len(names)} JPEGs and unknown folders {unknown}."
            )
        # Raw bytes as 1-D uint8 tensors: torchvision decodes the list in C++, ~2x faster than PIL.
        data = [torch.frombuffer(bytearray(archive.read(name)), dtype=torch.uint8) for name in names]
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec (not a dependency here);
            # they still work, ~3x faster than PIL (2 s vs 6 s for 50,000), and run once per zip.
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            images = decode_jpeg(data, mode=ImageReadMode.RGB)  # N x (3, H, W)
    except RuntimeError as err:
        raise VAEZooError(f"{path} holds a JPEG that does not decode ({err}): replace the zip.") from err
    wrong = [name for name, image in zip(names, images) if image.shape != (3, 32, 32)]
    if wrong:
        raise VAEZooError(f"{path}: {wrong[0]} is not a 32x32 colour image ({len(wrong)} such files).")
    labels = torch.tensor([CLASSES.index(folder) for folder in folders], dtype=torch.int64)
    return torch.stack(images), labels


@register_dataset("cifar10")
class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images, 3x32x32, 10 classes.

    Reads the official python batches through torchvision; when they are absent it falls back
    to the JPEG mirror under ``<root>/cifar-10/`` (lossy: for development, not for published
    numbers) and caches the decoded training set as ``.npz`` in ``$XDG_CACHE_HOME/vaezoo``
    (default ``~/.cache/vaezoo``), keyed by the zip's md5.
    """

    image_shape = (3, 32, 32)
    num_classes = 10
    name = "cifar10"

    def __init__(
        self,
        root: str = "./data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        on_device: bool = True,
    ) -> None:
        """Store and check the settings; nothing is read from disk until ``setup``.

        Args:
            root: Folder holding cifar-10-batches-py/ (or cifar-10-python.tar.gz, or the
                JPEG mirror in cifar-10/), or where the official archive is downloaded to.
            batch_size: Training batch size per device, in images.
            eval_batch_size: Validation/test/predict batch size per device, in images.
                None uses batch_size.
            val_size: Number of images held out of the 50,000 training images for validation.
            seed: Seed of the train/val split and of the training shuffle order (epoch e
                is shuffled with seed + e), independent of seed_everything.
            download: Fetch the official archive when no source is under root, or check the
                md5 of an archive found there and extract it (no network needed then).
            on_device: Hold each split, as uint8, in the accelerator's memory (MNIST ~47 MB,
                CIFAR-10 ~150 MB per process), so that a batch is one index on the device with no copy
                from the host. No effect on the CPU; false keeps the splits in host memory.
        """
        super().__init__(root, batch_size, eval_batch_size, val_size, seed, download, on_device)

    @property
    def source(self) -> Literal["official", "jpeg"]:
        """``"official"`` or ``"jpeg"``: which files :meth:`setup` reads (see the module doc)."""
        root = Path(self.hparams.root)
        batches = root / CIFAR10.base_folder
        official = all((batches / name).is_file() for name, _ in CIFAR10.train_list + CIFAR10.test_list)
        mirror = root / MIRROR_DIR
        if official or (root / CIFAR10.filename).is_file():
            return "official"
        if (mirror / MIRROR_TRAIN).is_file() and (mirror / MIRROR_TEST).is_file():
            return "jpeg"
        return "official"  # nothing here: torchvision downloads it, or we explain what is missing

    def _prepare(self) -> None:
        if self.source == "jpeg":
            self._cached_jpeg_train(write=True)  # decode once here, not on every rank in setup
        else:
            for train in (True, False):
                self._open(train, download=self.hparams.download)

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        if self.source == "jpeg":
            rank_zero_info(f"CIFAR-10: reading the JPEG mirror under {Path(self.hparams.root) / MIRROR_DIR}.")
            rank_zero_warn(
                "CIFAR-10 comes from the lossy JPEG mirror (quality 75), not the official batches: "
                "fine for development, not for published numbers."
            )
            if train:
                return self._cached_jpeg_train(write=False)
            with np.load(Path(self.hparams.root) / MIRROR_DIR / MIRROR_TEST) as test:
                x, y = test["x"], test["y"]
            if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or y.shape != x.shape[:1]:
                raise VAEZooError(
                    f"{MIRROR_TEST} should hold x uint8 (N, 32, 32, 3) and y (N,); got {x.dtype} {x.shape}, {y.shape}."
                )
            # HWC -> CHW: (N, 32, 32, 3) -> (N, 3, 32, 32)
            return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
        rank_zero_info(f"CIFAR-10: reading the official batches in {Path(self.hparams.root) / CIFAR10.base_folder}.")
        dataset = self._open(train, download=False)
        # torchvision keeps HWC uint8 (N, 32, 32, 3); the model wants CHW (N, 3, 32, 32).
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.int64)

    def _cached_jpeg_train(self, write: bool) -> tuple[Tensor, Tensor]:
        """The decoded training zip, from the cache if there, else decoded (and cached when ``write``)."""
        zip_path = Path(self.hparams.root) / MIRROR_DIR / MIRROR_TRAIN
        # Keyed by content so a replaced zip is never served from a stale cache.
        cache = user_cache_dir() / f"cifar10_train_from_jpeg_{calculate_md5(zip_path)[:12]}.npz"
        if cache.is_file():
            with np.load(cache) as arrays:
                return torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
        images, labels = decode_jpeg_zip(zip_path)
        if write:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                # Atomic, so another process never reads a half-written cache.
                atomic_write(cache, lambda file: np.savez(file, x=images.numpy(), y=labels.numpy()))
            except OSError:
                pass  # a read-only cache: go without one
        return images, labels

    def _open(self, train: bool, download: bool) -> CIFAR10:
        """The torchvision dataset for one split, every failure turned into a VAEZooError."""
        root = Path(self.hparams.root)
        batches = root / CIFAR10.base_folder
        try:
            return CIFAR10(str(root), train=train, download=download)
        except _READ_ERRORS as err:
            files = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
            present = [name for name, _ in files if (batches / name).is_file()]
            bad = [name for name, md5 in files if name in present and not check_integrity(batches / name, md5)]
            if bad:
                raise VAEZooError(
                    f"{', '.join(str(batches / name) for name in bad)} fail torchvision's md5 check (corrupt or "
                    f"partial). Delete {batches} and run again with --data.download true, or put the official "
                    "files there."
                ) from err
            if len(present) == len(files):
                raise VAEZooError(
                    f"Could not read CIFAR-10 from {batches}: {describe_error(err)}"
                ) from err
            raise self._missing(err, download) from None  # a urllib traceback helps nobody

    def _missing(self, err: BaseException, download: bool) -> VAEZooError:
        root = Path(self.hparams.root)
        reason = error_reason(err)
        if not download:
            why = "download is off"
            if (root / CIFAR10.filename).is_file():
                why += (
                    f" so {CIFAR10.filename} is not extracted: pass --data.download true "
                    "(it checks the md5 and extracts, fetching nothing)"
                )
        elif isinstance(err, URLError) or "urlopen" in reason:
            why = f"downloading it failed: {reason}"
            archive = root / CIFAR10.filename
            if archive.is_file() and not check_integrity(archive, CIFAR10.tgz_md5):
                why += f"; the {CIFAR10.filename} there fails torchvision's md5 check"
        else:
            why = f"{type(err).__name__}: {reason}"
        return VAEZooError(
            f"CIFAR-10 not found under {root} ({why}). Put one of these there: the official "
            f"{CIFAR10.filename} (from {CIFAR10.url}; extracted with --data.download true), or its extracted "
            f"{CIFAR10.base_folder}/ folder, or the JPEG mirror files {MIRROR_DIR}/{MIRROR_TRAIN} and "
            f"{MIRROR_DIR}/{MIRROR_TEST} (lossy); or pass --data.root to a folder holding one of them."
        )
