"""CelebA (aligned faces, 3x218x178 JPEGs), read by torchvision, at 64x64 by the usual protocol.

Every face is centre-cropped to 148x148 and resized to 64x64 (``image_size``), as in most VAE papers on
CelebA (and PyTorch-VAE, pythae). The splits are the official ones of ``list_eval_partition.txt``:
162,770 training, 19,867 validation and 19,962 test images.

The official layout, which torchvision reads and downloads from Google Drive::

    <root>/celeba/
        img_align_celeba/                 000001.jpg ... 202599.jpg (or img_align_celeba.zip, extracted
                                          with download=True)
        list_eval_partition.txt
        list_attr_celeba.txt
        identity_CelebA.txt
        list_bbox_celeba.txt
        list_landmarks_align_celeba.txt

Decoding 200,000 JPEGs takes minutes, so the decoded splits are cached as ``.npy`` files in
``$XDG_CACHE_HOME/vaezoo`` (default ``~/.cache/vaezoo``), keyed by the images' names, sizes and
modification times and by the crop and size; later runs memory-map them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets import CelebA
from torchvision.datasets.utils import check_integrity, extract_archive
from torchvision.transforms import v2

from vaezoo.data.base import ImageDataModule, Split, user_cache_dir
from vaezoo.errors import VAEZooError, error_reason
from vaezoo.io import atomic_write
from vaezoo.registry import register_dataset

IMAGES = "img_align_celeba"
ZIP = f"{IMAGES}.zip"
PARTITION = "list_eval_partition.txt"
SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# torchvision's split names for ours.
_SPLITS: dict[Split, Literal["train", "valid", "test"]] = {"train": "train", "val": "valid", "test": "test"}
# What torchvision (and gdown, PIL, csv parsing) raise for missing, unreachable or damaged files.
_READ_ERRORS = (OSError, RuntimeError, ValueError, IndexError, EOFError)


def text_files() -> list[tuple[str, str]]:
    """``(name, md5)`` of the five text files torchvision checks (it reads every one, whatever the target)."""
    return [(name, md5) for _, md5, name in CelebA.file_list if not name.endswith(".zip")]


@register_dataset("celeba")
class CelebADataModule(ImageDataModule):
    """CelebA aligned faces: 162,770 training, 19,867 validation and 19,962 test images, 3x64x64.

    Each 178x218 face is centre-cropped to ``crop_size`` (148) and resized to ``image_size`` (64),
    the usual protocol of VAE papers. The splits are the official partition, so ``val_size`` is not
    used. Labels (the colour of the latent scatter, and ``predict``'s ``label``) are one of the 40
    binary attributes, ``Male`` by default.

    Files go under ``<root>/celeba/`` in torchvision's (official) layout; see ``docs/data.md``.
    """

    image_shape = (3, 64, 64)  # at the default image_size; an instance's follows its image_size
    num_classes = 2
    name = "celeba"

    def __init__(
        self,
        root: str = "./data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        download: bool = True,
        on_device: bool = True,
        image_size: int = 64,
        crop_size: int = 148,
        label: str = "Male",
    ) -> None:
        """Store and check the settings; nothing is read from disk until ``setup``.

        Args:
            root: Folder holding celeba/ (img_align_celeba/ or its .zip, and the five .txt files), or
                where torchvision downloads them to.
            batch_size: Training batch size per device, in images.
            eval_batch_size: Validation/test/predict batch size per device, in images.
                None uses batch_size.
            seed: Seed of the training shuffle order (epoch e is shuffled with seed + e),
                independent of seed_everything. The splits are the official ones.
            download: Fetch the files from Google Drive when absent (needs ``pip install gdown``; Drive
                often refuses with a quota error, see docs/data.md for a manual download), or check the
                md5 of an img_align_celeba.zip found and extract it.
            on_device: Hold each split, as uint8, in the accelerator's memory (~2 GB for all of CelebA at
                64x64, 4x that at 128x128), so that a batch is one index on the device with no copy from
                the host. No effect on the CPU; false keeps the splits in host memory.
            image_size: Height and width of the images after the crop, in pixels.
            crop_size: Side of the centre square cut out of each 178x218 face before resizing, in pixels.
            label: The attribute used as each image's label (0 or 1): a column name of
                list_attr_celeba.txt, e.g. Male, Smiling, Eyeglasses, Young.
        """
        if image_size <= 0 or crop_size <= 0:
            raise VAEZooError(
                f"image_size and crop_size must be positive numbers of pixels, got {image_size} and {crop_size}: "
                "pass e.g. --data.image_size 64 --data.crop_size 148."
            )
        super().__init__(root, batch_size, eval_batch_size, 0, seed, download, on_device)
        # An instance attribute: the CLI links data.image_shape into the model after building the data.
        self.image_shape = (3, image_size, image_size)
        # torchvision parses the five text files (200,000 rows each) per dataset object: once per split here.
        self._datasets: dict[str, CelebA] = {}

    @classmethod
    def checkpoint_mismatch(cls, path: str | os.PathLike) -> str | None:
        """As the base's, but any square colour size is CelebA's (``image_size`` is a setting)."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 (an unreadable checkpoint is reported where it is loaded)
            return None
        saved = tuple((checkpoint.get("hyper_parameters") or {}).get("image_shape") or ())
        if len(saved) == 3 and saved[0] == 3 and saved[1] == saved[2]:
            return None  # a net of another image_size is then refused by the model's own load check (models/base.py)
        return super().checkpoint_mismatch(path)

    @property
    def folder(self) -> Path:
        """``<root>/celeba``, where torchvision looks."""
        return Path(self.hparams.root) / CelebA.base_folder

    def _prepare(self) -> None:
        self._open("all", download=self.hparams.download)  # fetch or extract what is missing, check the md5s
        for split in _SPLITS:  # decode once here, on one process, not on every rank in setup
            self._cached(split, write=True)

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        return self._cached("train" if train else "test", write=False)

    def setup(self, stage: str | None = None) -> None:
        """Load the official splits the stage needs, once (no validation images are carved out of training)."""
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            for split in ("train", "val"):
                self._splits[split] = self._cached(split, write=False)
            self.train_indices = torch.arange(len(self._splits["train"][0]))  # the whole official training split
        if stage in (None, "test", "predict") and "test" not in self._splits:
            self._splits["test"] = self._cached("test", write=False)

    def _open(self, split: str, download: bool) -> CelebA:
        """The torchvision dataset for one split, every failure turned into a VAEZooError naming the layout."""
        if split in self._datasets:
            return self._datasets[split]
        size, crop = self.hparams.image_size, self.hparams.crop_size
        transform = v2.Compose([v2.PILToTensor(), v2.RGB(), v2.CenterCrop(crop), v2.Resize(size, antialias=True)])
        if download:
            self._extract()
        try:
            dataset = CelebA(self.hparams.root, split=split, target_type="attr", transform=transform, download=download)
        except _READ_ERRORS as err:
            raise self._missing(err, download) from None  # a gdown/urllib traceback helps nobody
        self._datasets[split] = dataset
        return dataset

    def _extract(self) -> None:
        """Extract a downloaded img_align_celeba.zip as torchvision's ``download`` would, but without gdown.

        torchvision imports gdown (an optional package) before it looks at the files, even when every one
        is already there and only the zip needs extracting.
        """
        folder = self.folder
        if (folder / IMAGES).is_dir() or not (folder / ZIP).is_file():
            return
        if not all(check_integrity(folder / name, md5) for name, md5 in text_files()):
            return  # torchvision downloads what is missing, or _missing names it
        md5 = next(md5 for _, md5, name in CelebA.file_list if name == ZIP)
        if not check_integrity(folder / ZIP, md5):
            raise VAEZooError(
                f"{folder / ZIP} fails torchvision's md5 check (cut off or not the official file): download it "
                f"again from {SOURCE} (Align&Cropped Images), or extract the official one to {folder / IMAGES}/."
            )
        rank_zero_info(f"CelebA: extracting {folder / ZIP}.")
        extract_archive(str(folder / ZIP))

    def _missing(self, err: BaseException, download: bool) -> VAEZooError:
        """Say which official files are missing or damaged, where they go, and how to get them by hand."""
        folder = self.folder
        absent = [name for name, _ in text_files() if not (folder / name).is_file()]
        damaged = [
            name for name, md5 in text_files() if (folder / name).is_file() and not check_integrity(folder / name, md5)
        ]
        images = (folder / IMAGES).is_dir()
        if not images:
            unextracted = f" (the {ZIP} there is not extracted)" if (folder / ZIP).is_file() else ""
            absent.insert(0, f"{IMAGES}/{unextracted}")
        problems = []
        if absent:
            problems.append(f"missing: {', '.join(absent)}")
        if damaged:
            problems.append(
                f"failing torchvision's md5 check (cut off or not the official file): {', '.join(damaged)}"
            )
        if not download:
            why = "download is off"
            if (folder / ZIP).is_file() and not images:
                why += (
                    f"; pass --data.download true to extract {ZIP} (with all five .txt files there, nothing is fetched)"
                )
        elif "gdown" in str(err):
            why = "downloading needs gdown: pip install gdown"
        else:
            why = f"downloading from Google Drive failed ({error_reason(err)}); Drive often refuses with a quota error"
        layout = (
            f"{folder}/ holding {IMAGES}/ (202,599 JPEGs 000001.jpg ... 202599.jpg; or {ZIP}, which --data.download "
            f"true extracts) and {', '.join(name for name, _ in text_files())}"
        )
        return VAEZooError(
            f"CelebA not found under {folder} ({'; '.join(problems) or error_reason(err)}; {why}). Download the "
            f"official files by hand from {SOURCE} (Align&Cropped Images, and the Anno and Eval folders) and lay "
            f"them out as torchvision reads them: {layout}. Or pass --data.root to a folder holding celeba/."
        )

    def _cached(self, split: Split, write: bool) -> tuple[Tensor, Tensor]:
        """One official split as uint8 ``(N, 3, S, S)`` images and int64 ``(N,)`` labels, decoded at most once.

        The cache's name holds a hash of the split's file names, sizes and modification times and of the
        transform, so replaced images or another crop never read a stale cache.
        """
        dataset = self._open(_SPLITS[split], download=False)
        label = self.hparams.label
        if label not in dataset.attr_names:
            raise VAEZooError(
                f"--data.label {label!r} is not a column of {self.folder / 'list_attr_celeba.txt'}: pass one of "
                f"{', '.join(name for name in dataset.attr_names if name)}."
            )
        labels = dataset.attr[:, dataset.attr_names.index(label)].long()  # (N,) in {0, 1}
        images_dir = self.folder / IMAGES
        key = hashlib.sha256(
            repr((self.hparams.image_size, self.hparams.crop_size, torchvision.__version__)).encode()
        )
        try:
            for name in dataset.filename:
                stat = (images_dir / name).stat()
                key.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError as err:
            raise VAEZooError(
                f"{images_dir / name} is listed in {PARTITION} but cannot be read ({error_reason(err)}): put the "
                f"official {IMAGES}/ folder (202,599 JPEGs) there, complete."
            ) from None
        size = self.hparams.image_size
        cache = user_cache_dir() / f"celeba_{split}_{size}px_{key.hexdigest()[:16]}.npy"
        if cache.is_file():
            # Copy-on-write memory map: pages are read when a batch needs them, and writes stay private.
            return torch.from_numpy(np.load(cache, mmap_mode="c")), labels
        images = self._decode(dataset, split)
        if write:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                # Atomic, so another process never reads a half-written cache.
                atomic_write(cache, lambda file: np.save(file, images.numpy()))
            except OSError as err:
                warnings.warn(f"CelebA: cannot write the cache {cache} ({error_reason(err)}); decoding on every run.")
        return images, labels

    def _decode(self, dataset: CelebA, split: Split) -> Tensor:
        """Every image of ``dataset`` through its crop and resize, on all cores: uint8 ``(N, 3, S, S)``."""
        n = len(dataset)
        rank_zero_info(f"CelebA: decoding the {n} {split} images once (cached for later runs).")
        # Worker processes pay off only past a few hundred images; tests decode a handful in-process.
        workers = min(os.cpu_count() or 1, 8) if n >= 512 else 0
        loader = DataLoader(dataset, batch_size=256, num_workers=workers)
        size = self.hparams.image_size
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        done = 0
        try:
            for batch, _ in loader:  # (B, 3, S, S) uint8
                images[done : done + len(batch)] = batch
                done += len(batch)
        except _READ_ERRORS as err:
            bad = dataset.filename[done] if done < n else "?"
            raise VAEZooError(
                f"CelebA: an image near {self.folder / IMAGES / bad} does not decode ({error_reason(err)}): "
                f"replace {IMAGES}/ with the official files (a cut-off download or extraction?)."
            ) from None
        return images
