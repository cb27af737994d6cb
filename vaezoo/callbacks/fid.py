"""Fréchet Inception Distance (FID) of a model's samples against the data's held-out images.

FID (Heusel et al. 2017) fits a Gaussian to features of real and of generated images and
measures the Fréchet distance between the two:

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))     (lower is better, 0 = same)

The callback owns the torchmetrics metric and its Inception network, so they are never part of
the LightningModule and never land in a checkpoint (~95 MB otherwise).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import weakref
from http.client import HTTPException
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor, nn

from vaezoo.errors import VAEZooError, describe_error

# torch-fidelity's Inception weights: torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3,
# written out so the message needs no import of torch-fidelity.
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
INCEPTION_FEATURES = (64, 192, 768, 2048)
# The de-facto switch of offline ML setups (torch itself has none): set, a missing file fails at once
# instead of after the network's connect timeout.
_OFFLINE_VARS = ("HF_HUB_OFFLINE",)
# What a failed download (urllib, an unwritable cache) or an unreadable weights file raises.
_LOAD_ERRORS = (OSError, HTTPException, RuntimeError, EOFError, ValueError, TypeError, pickle.UnpicklingError)


def cached_weights_path() -> Path:
    """Where torch-fidelity looks for the Inception weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _has_torch_fidelity() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in _OFFLINE_VARS)


def _missing_weights(reason: str) -> VAEZooError:
    return VAEZooError(
        f"FID needs torch-fidelity's Inception weights {WEIGHTS_FILE}, which are not at {cached_weights_path()} "
        f"and could not be downloaded ({reason}). Download {WEIGHTS_URL} on a machine with internet access, then "
        f"either put it at {cached_weights_path()} (the torch hub cache; it moves with $TORCH_HOME), or pass its "
        "path as the FID callback's feature_extractor_weights_path "
        f"(vaezoo: --fid.feature_extractor_weights_path /path/to/{WEIGHTS_FILE})."
    )


class FID(lightning.Callback):
    """Logs the FID of ``pl_module.sample()`` images against the DataModule's images.

    At the end of ``test`` it logs ``test/fid`` (real images: the test split); with
    ``every_n_val_epochs`` it also logs ``val/fid`` (real images: the validation split). The
    statistics of the real images (a d x d float64 matrix: 32 MB at d = 2048) are extracted once and
    kept until FID needs another split or DataModule. Under DDP every process takes its share of the
    real and generated images, and the statistics are summed across processes.

    The default features are torch-fidelity's Inception v3 (the standard FID), whose weights are
    downloaded once to ``$TORCH_HOME/hub/checkpoints/``; offline, put the file there or pass
    ``feature_extractor_weights_path``. Values of different ``feature`` settings, image counts or
    datasets do not compare.

    Args:
        num_samples: Number of generated images; they are compared with as many real images of the
            split (all of it when the split is smaller). FID is biased upwards at small counts:
            10,000 is the usual figure; compare runs only at equal counts. 0 turns FID off (the
            ``vaezoo`` CLI's default: ``--fid.num_samples 10000`` turns it on).
        feature: An Inception v3 pool layer (64, 192, 768 or 2048 features), or any ``nn.Module``
            mapping float32 images ``(N, 3, H, W)`` in [0, 1] at the data's resolution to ``(N, d)``
            features. Such a module is probed once with ``torch.rand(1, 3, H, W)`` on the CPU to
            find d, unless it has an int attribute ``num_features``; it is run in eval mode.
        feature_extractor_weights_path: Path of the Inception weights file
            (``weights-inception-2015-12-05-6726825d.pth``). None looks in the torch hub cache and
            downloads it there if absent.
        batch_size: Images per batch when sampling the model and extracting features, per process.
        every_n_val_epochs: 0 computes FID only at test. N also computes it at the end of every
            N-th validation run (sanity checks excluded), logged as ``val/fid``; a checkpoint
            monitoring ``val/fid`` needs it at every validation, N = 1.
        seed: Seed of the prior noise z of the generated images (plus the process rank), so that
            FIDs across epochs compare the same z; the global random state is left untouched.

    Raises:
        VAEZooError: For a bad argument, or, when FID is first needed (at ``setup``), when the
            Inception weights are neither found nor downloadable.
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        feature: int | nn.Module = 2048,
        feature_extractor_weights_path: str | None = None,
        batch_size: int = 250,
        every_n_val_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        if num_samples < 2 and num_samples != 0:
            raise VAEZooError(f"FID num_samples must be >= 2 images (10000 is usual), or 0 (off), got {num_samples}.")
        if batch_size <= 0:
            raise VAEZooError(f"FID batch_size must be a positive number of images, got {batch_size}.")
        if every_n_val_epochs < 0:
            raise VAEZooError(f"every_n_val_epochs must be >= 0 (0 = only at test), got {every_n_val_epochs}.")
        if isinstance(feature, bool) or not isinstance(feature, nn.Module) and feature not in INCEPTION_FEATURES:
            raise VAEZooError(f"FID feature must be one of {INCEPTION_FEATURES} or an nn.Module, got {feature!r}.")
        self.num_samples = num_samples
        self.feature = feature
        self.feature_extractor_weights_path = feature_extractor_weights_path
        self.batch_size = batch_size
        self.every_n_val_epochs = every_n_val_epochs
        self.seed = seed
        self.val_runs = 0  # validation runs seen, checkpointed so that "every N-th" survives a resume
        # Plain attributes, not in state_dict(): the metric and its network stay out of checkpoints.
        self.metric: Any = None  # torchmetrics FrechetInceptionDistance, built by build_metric
        self._real_of: tuple[str, weakref.ref] | None = None  # (split, DataModule) of the metric's real set

    # ----- building the metric --------------------------------------------------------------------

    def build_metric(self, image_shape: tuple[int, int, int] = (3, 299, 299)) -> Any:
        """Create the metric once (on the CPU); the Trainer calls this in ``setup``.

        Args:
            image_shape: (channels, height, width) of the images; a custom ``feature`` module is
                probed with 3 channels at this size.

        Returns:
            The torchmetrics ``FrechetInceptionDistance``.

        Raises:
            VAEZooError: When the Inception weights file is missing, unreadable or cannot be downloaded.
        """
        if self.metric is not None:
            return self.metric
        from torchmetrics.image.fid import FrechetInceptionDistance

        _, h, w = image_shape
        # normalize=True: inputs are float [0, 1]; Inception gets (x * 255).byte(), which wraps
        # outside [0, 1], so update() clamps first. A custom module gets the floats unchanged.
        # reset_real_features=False: reset() keeps the real set, extracted once for many evaluations.
        options = dict(normalize=True, input_img_size=(3, h, w), sync_on_compute=True, reset_real_features=False)
        # Inception's initialisation and a custom module's probe draw from the CPU's global RNG:
        # forked, so that adding FID does not change a seeded run.
        with torch.random.fork_rng(devices=[]):
            if isinstance(self.feature, nn.Module):
                metric = FrechetInceptionDistance(feature=self.feature, **options)
            else:
                metric = self._build_inception(FrechetInceptionDistance, options)
        self.metric = metric.eval()
        return self.metric

    def _build_inception(self, metric_cls: type, options: dict[str, Any]) -> Any:
        """Check torch-fidelity and the weights first, then build; a failed download becomes one VAEZooError."""
        if not _has_torch_fidelity():
            raise VAEZooError(
                "FID's Inception features need torch-fidelity, which is not installed: pip install torch-fidelity "
                "(or torchmetrics[image]), or pass an nn.Module as the FID callback's feature."
            )
        path, cached = self.feature_extractor_weights_path, cached_weights_path()
        if path is not None and not Path(path).is_file():
            raise VAEZooError(
                f"feature_extractor_weights_path={path} does not exist. Point it at {WEIGHTS_FILE} "
                f"(from {WEIGHTS_URL}), or leave it unset to use {cached}."
            )
        if path is None and not cached.is_file() and _offline():
            raise _missing_weights(f"{'/'.join(_OFFLINE_VARS)} is set")
        try:
            return metric_cls(feature=self.feature, feature_extractor_weights_path=path, **options)
        except _LOAD_ERRORS as err:
            if path is None and not cached.is_file():  # the download failed: a urllib trace helps nobody
                raise _missing_weights(describe_error(err)) from None
            raise VAEZooError(
                f"Could not load the Inception weights {path or cached} ({describe_error(err)}): the file is truncated "
                f"or not {WEIGHTS_FILE}. Delete it and run again, or replace it with {WEIGHTS_URL}."
            ) from None

    # ----- feeding images ---------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Add images to the real or the generated set, in chunks of ``batch_size``.

        Args:
            images: Float ``(B, C, H, W)`` with C = 1 or 3, nominally in [0, 1]: values outside are
                clamped, grey is repeated to RGB.
            real: Whether they are data (True) or samples (False).
        """
        if self.metric is None:
            raise VAEZooError("FID.update needs the metric: call build_metric(image_shape) first.")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise VAEZooError(f"FID needs (B, 1 or 3, H, W) images, got {tuple(images.shape)}.")
        if real:
            self._real_of = None  # no longer one split's images only
        images = images.float().clamp(0, 1).expand(-1, 3, -1, -1)  # (B, 3, H, W); grey repeated
        for chunk in images.split(self.batch_size):
            self.metric.update(chunk.to(self.metric.device), real=real)

    def compute(self, keep_real: bool = False) -> Tensor:
        """The FID of the images added so far (summed over processes); then empties both sets.

        Args:
            keep_real: Keep the real set for the next compute, so that its images need no second pass.

        Raises:
            VAEZooError: When either set holds fewer than 2 images.
        """
        try:
            value = self.metric.compute()
        except RuntimeError as err:
            raise VAEZooError(
                f"FID needs at least 2 real and 2 generated images ({err}): use a larger split or num_samples."
            ) from None
        finally:
            self._reset(real=not keep_real)
        return value

    def _reset(self, real: bool) -> None:
        """Empty the generated set, and the real one too if ``real`` (the metric's flag says what reset() keeps)."""
        self.metric.reset_real_features = real
        self.metric.reset()
        self.metric.reset_real_features = False
        self._real_of = None if real else self._real_of

    # ----- Lightning hooks --------------------------------------------------------------------------

    def setup(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str) -> None:
        """Build the metric before a stage that needs it, so a missing file fails before training."""
        if self.num_samples and (stage == "test" or (stage in ("fit", "validate") and self.every_n_val_epochs > 0)):
            self._build_for(trainer, pl_module)

    def _build_for(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> Any:
        shape = getattr(pl_module, "image_shape", None) or getattr(trainer.datamodule, "image_shape", None)
        if shape is None:
            raise VAEZooError("FID needs the image shape: the model or DataModule must have image_shape (C, H, W).")
        return self.build_metric(tuple(shape))

    def on_validation_epoch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if self.num_samples == 0 or self.every_n_val_epochs == 0 or trainer.sanity_checking:
            return
        self.val_runs += 1
        if self.val_runs % self.every_n_val_epochs == 0:
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if self.num_samples:
            self._evaluate(trainer, pl_module, "test")

    # Lightning evaluates under inference mode, where the metric's reset would make its states
    # inference tensors that no later update outside it (another Trainer, FID.update) may touch.
    @torch.inference_mode(False)
    @torch.no_grad()
    def _evaluate(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, split: str) -> None:
        """Add this process's real and generated images, compute the FID, log ``<split>/fid``."""
        datamodule = trainer.datamodule
        if datamodule is None:
            raise VAEZooError("FID takes its real images from a DataModule: pass datamodule= to the Trainer.")
        if not callable(getattr(pl_module, "sample", None)):
            raise VAEZooError(f"FID needs a model with sample(n), got {type(pl_module).__name__}.")
        device = pl_module.device
        self._build_for(trainer, pl_module).to(device)  # built already unless a hook was skipped
        rank, world = trainer.global_rank, trainer.world_size
        # This process's share of num_samples: rank r takes positions r, r + world, ... < num_samples,
        # which is also how the loaders shard a split, so the real set is the split's first images.
        share = len(range(rank, self.num_samples, world))

        held = self._real_of == (split, weakref.ref(datamodule))  # a dead reference equals none
        self._reset(real=not held)
        if not held:
            loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
            taken = 0
            for x, y in loader:  # uint8 (B, C, H, W) on the CPU
                if taken >= share:
                    break
                x, _ = datamodule.on_after_batch_transfer((x[: share - taken].to(device), y[: share - taken]), 0)
                x = x.float().div(255) if x.dtype == torch.uint8 else x  # a DataModule that keeps uint8
                self.update(x, real=True)
                taken += len(x)
            self._real_of = (split, weakref.ref(datamodule))

        # Fixed z for every evaluation, without moving the global random state (training continues).
        on_cpu = device.type == "cpu"
        with torch.random.fork_rng(devices=[] if on_cpu else [device], device_type="cuda" if on_cpu else device.type):
            torch.manual_seed(self.seed + rank)
            for start in range(0, share, self.batch_size):
                self.update(pl_module.sample(min(self.batch_size, share - start)), real=False)

        # compute() already summed the states over processes, so every rank holds the same value;
        # sync_dist only averages equal values, and silences Lightning's DDP warning.
        pl_module.log(f"{split}/fid", self.compute(keep_real=True), sync_dist=True)

    # ----- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Only the count of validation runs: the metric and its network never enter a checkpoint."""
        return {"val_runs": self.val_runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_runs = state_dict.get("val_runs", 0)


class RandomConvFeatures(nn.Module):
    """FID features from a fixed, seeded random conv net: needs no download, fits any image size.

    Features of a randomly initialised network separate image distributions surprisingly well and
    are a cheap offline stand-in for Inception, e.g. ``--fid.feature vaezoo.callbacks.fid.RandomConvFeatures``.
    Its values compare only with each other (same ``num_features`` and ``seed``), never with
    Inception FIDs from papers.

    Args:
        num_features: Size d of the feature vector.
        seed: Seed of the random weights.
    """

    def __init__(self, num_features: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features  # torchmetrics reads it instead of probing the module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),  # (N, 32, H/2, W/2)
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # (N, 64, H/4, W/4)
                nn.Conv2d(64, num_features, 3, stride=2, padding=1),  # (N, d, H/8, W/8)
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, d)
            )
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(N, d)`` of images ``(N, 3, H, W)`` in [0, 1]."""
        return self.net(x.float() * 2 - 1)

