"""The DataModule base: whole splits as uint8 tensors, batches as tensor indexing.

Each split lives in one uint8 ``(N, C, H, W)`` tensor with int64 ``(N,)`` labels. Batches travel
to the device as uint8 (4x less to copy than float32) and become float32 in [0, 1] there, in
:meth:`ImageDataModule.on_after_batch_transfer`.
"""

import os
from pathlib import Path
from typing import Any, Literal

import lightning
import torch
from torch import Tensor

from vaezoo.data.loader import EpochBatchSampler, TensorBatchLoader
from vaezoo.errors import VAEZooError
from vaezoo.registry import DATASETS, registered_name

Split = Literal["train", "val", "test"]


def _check_implemented(cls: type["ImageDataModule"]) -> None:
    """Refuse a DataModule that cannot read any files: the base class itself, or a subclass missing
    ``_prepare`` or ``_load`` (they would raise NotImplementedError once the run has started)."""
    missing = [m for m in ("_prepare", "_load") if getattr(cls, m) is getattr(ImageDataModule, m)]
    if not missing:
        return
    choose = (
        f"Choose one with --data NAME (datasets: {', '.join(DATASETS.names())}; e.g. --data mnist), or with "
        "`class_path: NAME` under `data:` in the config"
    )
    if cls is ImageDataModule:
        raise VAEZooError(f"no dataset chosen: data settings were given (e.g. --data.root) but no dataset. {choose}.")
    raise VAEZooError(
        f"{cls.__module__}.{cls.__qualname__} does not implement {' and '.join(missing)}, so it cannot read any "
        f"images: implement them (see vaezoo.data.ImageDataModule), or use a registered dataset. {choose}."
    )


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vaezoo`` (default ``~/.cache/vaezoo``): where DataModules cache decoded images, the
    user's cache, never the (maybe shared or read-only) data folder."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vaezoo"


class ImageDataModule(lightning.LightningDataModule):
    """Base of the image DataModules: a seeded train/val split and uint8 tensor batches.

    Subclasses set the class attributes and implement :meth:`_prepare` and :meth:`_load`.
    ``image_shape`` is a class attribute, not an init argument, so the CLI can link
    ``data.image_shape`` into the model without it entering the saved hyperparameters twice.

    The validation set is carved out of the official training set with a fixed ``seed``, so it
    is the same on every run and for any number of processes; ``test`` and ``predict`` use the
    official test set.
    """

    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    name: str
    # Training batches per training step: set by the model at each fit's start (VAE.on_fit_start), never a setting.
    steps_per_call: int = 1

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
            root: Folder holding the dataset files (or where they are downloaded to).
            batch_size: Training batch size per device, in images.
            eval_batch_size: Validation/test/predict batch size per device, in images.
                None uses batch_size.
            val_size: Number of images held out of the official training set for validation.
            seed: Seed of the train/val split and of the training shuffle order (epoch e
                is shuffled with seed + e), independent of seed_everything.
            download: Fetch (or extract) the dataset when it is not already under root.
            on_device: Hold each split, as uint8, in the accelerator's memory (MNIST ~47 MB,
                CIFAR-10 ~150 MB per process), so that a batch is one index on the device with no copy
                from the host. No effect on the CPU; false keeps the splits in host memory.
        """
        super().__init__()
        _check_implemented(type(self))
        if batch_size <= 0:
            raise VAEZooError(f"batch_size must be a positive number of images, got {batch_size}: pass e.g. 128.")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise VAEZooError(
                f"eval_batch_size must be a positive number of images or None (= batch_size), got {eval_batch_size}."
            )
        if val_size < 0:
            raise VAEZooError(f"val_size must be >= 0 images, got {val_size}: pass e.g. 5000 (0 = no validation).")
        if seed < 0:
            raise VAEZooError(f"seed must be >= 0, got {seed}.")
        self.save_hyperparameters()
        self._splits: dict[Split, tuple[Tensor, Tensor]] = {}
        # Positions in the official training set: saved so a run's split can be checked later.
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None

    @classmethod
    def checkpoint_mismatch(cls, path: str | os.PathLike) -> str | None:
        """Why the checkpoint at ``path`` cannot run on this dataset's images, or None if it can.

        A model is built for one image shape (its ``image_shape`` hyperparameter). Run on images of
        another shape, its net fails to build or its weights fail to load, with messages about layers;
        this one names both datasets instead. A DataModule whose shape comes from its settings (a
        property, as ``folder``'s) is not checked here: the class alone does not know it.
        """
        shape = getattr(cls, "image_shape", None)
        if not isinstance(shape, tuple):
            return None
        try:  # mmap: only the hyperparameters are read, not the weights
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 (an unreadable checkpoint is reported where it is loaded)
            return None
        saved = (checkpoint.get("hyper_parameters") or {}).get("image_shape")
        if saved is None or tuple(saved) == shape:
            return None
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        trained_on = registered_name(data.get("_class_path"), [DATASETS])
        name = next((e.name for e in DATASETS if e.cls is cls), cls.__name__)
        images = f"{'x'.join(map(str, saved))} images" + (f" ({trained_on})" if trained_on else "")
        run_on = f"--data {trained_on}" if trained_on in DATASETS else "the data it was trained on"
        return (
            f"--ckpt_path {path} holds a model trained on {images}, but this config's data are "
            f"{'x'.join(map(str, shape))} images ({name}): a model runs only on images of the shape it "
            f"was trained on. Run it with {run_on} (or with the config.yaml of its run folder), or use a "
            f"checkpoint trained on {name}."
        )

    def _prepare(self) -> None:
        """Make the files available under ``root`` (download or check); runs on one process."""
        raise NotImplementedError

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        """Read the official training (``train=True``) or test split.

        Returns:
            Images as uint8 ``(N, C, H, W)`` and labels as int64 ``(N,)``.
        """
        raise NotImplementedError

    def _finalize(self, images: Tensor, split: Split) -> Tensor:
        """Fixed per-split preprocessing of uint8 ``(N, C, H, W)`` at setup; identity here."""
        return images

    def _to_float(self, x: Tensor, training: bool) -> Tensor:
        """Turn a uint8 ``(B, C, H, W)`` batch on the device into float32 in [0, 1].

        Args:
            x: The batch, already on the device.
            training: Whether it is a training batch (random augmentations apply only then).
        """
        return x.float().div_(255)

    def prepare_data(self) -> None:
        """Download or check the files (Lightning runs this on one process per node)."""
        self._prepare()

    @property
    def train_size(self) -> int | None:
        """Training images of the whole split, over all processes (None before ``setup``): the dataset size
        that objectives built on minibatch statistics (beta-TCVAE) need."""
        train = self._splits.get("train")
        return len(train[0]) if train is not None else None

    def setup(self, stage: str | None = None) -> None:
        """Load the splits the stage needs, once: a ``test`` after ``fit`` reuses memory."""
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            images, labels = self._load(train=True)
            n, val_size = len(images), self.hparams.val_size
            if val_size >= n:
                raise VAEZooError(
                    f"val_size={val_size} leaves no training images: {self.name} has {n} training images. "
                    f"Pass a --data.val_size below {n}."
                )
            # The same permutation on every process and for any world size: only the seed matters.
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed))
            self.val_indices, self.train_indices = perm[:val_size], perm[val_size:]
            for split, idx in (("train", self.train_indices), ("val", self.val_indices)):
                self._splits[split] = (self._finalize(images[idx], split), labels[idx])
        if stage in (None, "test", "predict") and "test" not in self._splits:
            images, labels = self._load(train=False)
            self._splits["test"] = (self._finalize(images, "test"), labels)

    def _loader(self, split: Split, training: bool) -> TensorBatchLoader:
        if split not in self._splits:
            raise VAEZooError(f"The {split} split is not loaded: call setup() first (the Trainer does this).")
        images, labels = self._on_device(split)
        batch_size = self.hparams.batch_size
        if not training and self.hparams.eval_batch_size is not None:
            batch_size = self.hparams.eval_batch_size
        sampler = EpochBatchSampler(
            len(images), batch_size, shuffle=training, drop_last=training, seed=self.hparams.seed,
            group=self.steps_per_call if training else 1,
        )
        loader = TensorBatchLoader(images, labels, sampler)
        if training and len(loader) == 0:
            raise VAEZooError(
                f"batch_size={batch_size} is more than the {len(images)} training images "
                f"(shared over {sampler.rank_world()[1]} processes) can fill once: pass a smaller --data.batch_size."
            )
        return loader

    def _on_device(self, split: Split) -> tuple[Tensor, Tensor]:
        """The split's tensors, moved once to the accelerator the Trainer runs on (see ``on_device``)."""
        images, labels = self._splits[split]
        device = self.trainer.strategy.root_device if self.trainer is not None else images.device
        if self.hparams.on_device and device.type != "cpu" and images.device != device:
            images, labels = images.to(device), labels.to(device)
            self._splits[split] = (images, labels)  # later loaders and epochs reuse the device copy
        return images, labels

    def train_dataloader(self) -> TensorBatchLoader:
        """Shuffled training batches; the incomplete last batch is dropped."""
        return self._loader("train", training=True)

    def val_dataloader(self) -> TensorBatchLoader:
        """Validation batches in a fixed order, every image once."""
        return self._loader("val", training=False)

    def test_dataloader(self) -> TensorBatchLoader:
        """Official test-set batches in order, every image once."""
        return self._loader("test", training=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        """The test-set batches, for ``predict``."""
        return self._loader("test", training=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Convert the uint8 images to float32 on the device, where the batch already is."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        x = self._to_float(images, training)
        module = getattr(self.trainer, "lightning_module", None)
        if module is not None and module.dtype in (torch.float16, torch.bfloat16, torch.float64):
            x = x.to(module.dtype)  # 16-true, bf16-true, 64-true: the weights' dtype (mixed keeps fp32)
        return x, labels
