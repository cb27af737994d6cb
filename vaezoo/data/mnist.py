"""MNIST and Fashion-MNIST (28x28 grey), read by torchvision, optionally binarised."""

import errno
from pathlib import Path
from typing import ClassVar, Literal, get_args
from urllib.error import URLError

import torch
from torch import Tensor
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity

from vaezoo.data.base import ImageDataModule, Split
from vaezoo.errors import VAEZooError, describe_error, error_reason
from vaezoo.registry import register_dataset

Binarize = Literal["dynamic", "static", "none"]

# What torchvision raises for missing, unreachable, unwritable or malformed files.
_READ_ERRORS = (OSError, RuntimeError, AssertionError, ValueError, TypeError, EOFError)


@register_dataset("mnist")
class MNISTDataModule(ImageDataModule):
    """MNIST digits: 60,000 training and 10,000 test images, 1x28x28.

    Binarisation (``binarize``), as in the VAE literature:

    * ``"dynamic"``: every training batch is re-sampled on the device as
      ``bernoulli(grey / 255)``, a fresh draw each step. Validation and test images are drawn
      once at setup with fixed seeds, so their curves compare across epochs and runs.
    * ``"static"``: every split is drawn once at setup with fixed seeds (derived from ``seed``).
    * ``"none"``: grey levels scaled to [0, 1].
    """

    image_shape = (1, 28, 28)
    num_classes = 10
    name = "mnist"
    dataset_cls: ClassVar[type[MNIST]] = MNIST

    def __init__(
        self,
        root: str = "./data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        on_device: bool = True,
        binarize: Binarize = "dynamic",
    ) -> None:
        """Store and check the settings; nothing is read from disk until ``setup``.

        Args:
            root: Folder holding MNIST/raw/ (FashionMNIST/raw/ for Fashion-MNIST) with the
                four IDX files or their .gz, or where they are downloaded to.
            batch_size: Training batch size per device, in images.
            eval_batch_size: Validation/test/predict batch size per device, in images.
                None uses batch_size.
            val_size: Number of images held out of the 60,000 training images for validation.
            seed: Seed of the train/val split, the training shuffle order (epoch e is
                shuffled with seed + e) and the fixed binarisations, independent of
                seed_everything.
            download: Fetch the files when absent, or check the md5 of the .gz files found
                and extract them (no network needed then).
            on_device: Hold each split, as uint8, in the accelerator's memory (MNIST ~47 MB,
                CIFAR-10 ~150 MB per process), so that a batch is one index on the device with no copy
                from the host. No effect on the CPU; false keeps the splits in host memory.
            binarize: "dynamic" (fresh pixel draws per training step, fixed val/test
                draws), "static" (one fixed draw per split) or "none" (grey in [0, 1]).
        """
        super().__init__(root, batch_size, eval_batch_size, val_size, seed, download, on_device)
        if binarize not in get_args(Binarize):
            raise VAEZooError(f"binarize must be one of {get_args(Binarize)}, got {binarize!r}.")

    @property
    def _raw(self) -> Path:
        return Path(self.hparams.root) / self.dataset_cls.__name__ / "raw"

    @property
    def _extracted(self) -> list[Path]:
        """The four IDX files torchvision reads (the .gz names without .gz)."""
        return [self._raw / Path(name).stem for name, _ in self.dataset_cls.resources]

    def _prepare(self) -> None:
        for train in (True, False):
            self._open(train, download=self.hparams.download)

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self._open(train, download=False)
        return dataset.data.unsqueeze(1), dataset.targets  # uint8 (N, 1, 28, 28), int64 (N,)

    def _open(self, train: bool, download: bool) -> MNIST:
        """The torchvision dataset for one split, every failure turned into a VAEZooError."""
        split = "train" if train else "t10k"
        images_file, labels_file = self._raw / f"{split}-images-idx3-ubyte", self._raw / f"{split}-labels-idx1-ubyte"
        try:
            dataset = self.dataset_cls(self.hparams.root, train=train, download=download)
        except _READ_ERRORS as err:
            # torchvision wants all four extracted files whichever split it reads, and extracts all
            # four .gz when downloading: this split's files are to blame only when all four are there.
            if all(path.is_file() for path in self._extracted):
                raise self._corrupt(images_file, labels_file, err) from err
            raise self._missing(err, download) from None  # a urllib traceback helps nobody
        if dataset.data.shape[1:] != (28, 28):
            raise VAEZooError(
                f"{images_file} holds images of shape {tuple(dataset.data.shape[1:])}, not 28x28: "
                "replace it with the official file."
            )
        if len(dataset.targets) != len(dataset.data):
            raise VAEZooError(
                f"{labels_file} has {len(dataset.targets)} labels but {images_file} has {len(dataset.data)} "
                "images: one of them is truncated or from another dataset; replace both with the official files."
            )
        return dataset

    def _corrupt(self, images_file: Path, labels_file: Path, err: BaseException) -> VAEZooError:
        """Name the file torchvision's IDX reader chokes on."""
        for path, read in ((images_file, read_image_file), (labels_file, read_label_file)):
            try:
                read(str(path))
            except _READ_ERRORS as file_err:
                return VAEZooError(
                    f"{path} is corrupt or truncated ({describe_error(file_err)}). Delete it "
                    "(and its .gz) and run again with --data.download true, or replace it with the official file."
                )
        return VAEZooError(f"Could not read {images_file} and {labels_file}: {describe_error(err)}")

    def _missing(self, err: BaseException, download: bool) -> VAEZooError:
        """Say which files to put where, and why they could not be fetched."""
        title, raw = self.dataset_cls.__name__, self._raw
        names = ", ".join(name for name, _ in self.dataset_cls.resources)
        where = (
            f"Put these four files there: {names} (from {self.dataset_cls.mirrors[0]}), "
            f"or pass --data.root to a folder holding {title}/raw/."
        )
        if not download:
            absent = ", ".join(path.name for path in self._extracted if not path.is_file())
            return VAEZooError(
                f"{title} not found under {raw}: with download off, torchvision reads only the extracted files, "
                f"and {absent} {'is' if ',' not in absent else 'are'} not there. {where} With the .gz files there, "
                "pass --data.download true: torchvision checks their md5 and extracts them, fetching nothing."
            )
        unwritable = (errno.EACCES, errno.EPERM, errno.EROFS)
        if isinstance(err, OSError) and not isinstance(err, URLError) and err.errno in unwritable:
            return VAEZooError(
                f"Cannot write to {raw} ({error_reason(err)}): torchvision extracts the .gz files next to them. "
                f"Copy {title}/raw/*.gz to a writable folder and pass --data.root to it."
            )
        resources = self.dataset_cls.resources
        bad = [name for name, md5 in resources if (raw / name).is_file() and not check_integrity(raw / name, md5)]
        if bad:  # the damaged file, not the split being read when torchvision tried to fetch it again
            return VAEZooError(
                f"{title} files under {raw} fail torchvision's md5 check: {', '.join(bad)} (cut off or damaged), and "
                f"fetching them again failed ({error_reason(err)}). Replace them with the official files from "
                f"{self.dataset_cls.mirrors[0]}, or delete them and run again where the network is reachable."
            )
        return VAEZooError(f"{title} not found under {raw}, and downloading it failed ({error_reason(err)}). {where}")

    def _finalize(self, images: Tensor, split: Split) -> Tensor:
        mode = self.hparams.binarize
        if mode == "static" or (mode == "dynamic" and split != "train"):
            # One fixed draw per split; the seed also depends on the split so that train, val
            # and test draws are unrelated.
            seed = self.hparams.seed * 3 + get_args(Split).index(split)
            probs = images.float().div_(255)  # (N, 1, 28, 28) in [0, 1]
            # Stored as 0/255 so that _to_float's scaling gives exactly {0., 1.}.
            images = torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed)).mul_(255).to(torch.uint8)
        return images

    def _to_float(self, x: Tensor, training: bool) -> Tensor:
        x = super()._to_float(x, training)  # (B, 1, 28, 28) in [0, 1]
        if training and self.hparams.binarize == "dynamic":
            # A fresh draw every step, on the device: 1[u < p] with u ~ U[0, 1) is Bernoulli(p), and on a CPU
            # it is 4x faster than torch.bernoulli (0.25 against 1.0 ms per 128 images: a sixth of an MLP step).
            x = (torch.rand_like(x) < x).to(x.dtype)
        return x


@register_dataset("fashion_mnist")
class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando): 60,000 training and 10,000 test images of clothes, 1x28x28.

    Same layout, settings and binarisation options as :class:`MNISTDataModule`; the files go
    under ``<root>/FashionMNIST/raw/``.
    """

    name = "fashion_mnist"
    dataset_cls = FashionMNIST
