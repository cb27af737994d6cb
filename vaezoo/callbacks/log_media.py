"""Put a picture wherever the attached loggers can show it: W&B, TensorBoard, or PNG files.

One entry point, :func:`log_image`, for everything in vaezoo that makes pictures; callbacks never
ask which logger is attached. The dispatch, per logger in ``trainer.loggers``:

- ``WandbLogger``: ``logger.log_image`` (a W&B image under ``key``, at the trainer's global step);
- ``TensorBoardLogger``: ``logger.experiment.add_image`` (the Images tab);
- any other logger (``CSVLogger``, MLflow, ...), or no logger at all: a PNG file under
  ``<dir>/images/``, where ``dir`` is that logger's ``log_dir`` (else its ``save_dir``), or
  ``trainer.default_root_dir`` when no logger is attached.

Only global rank 0 writes, and nothing here runs a collective, so it is safe to call from rank 0
alone (``trainer.log_dir`` is not: it broadcasts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from vaezoo.errors import VAEZooError
from vaezoo.io import atomic_write

if TYPE_CHECKING:
    import lightning as L
    from matplotlib.figure import Figure

__all__ = ["figure_to_tensor", "image_path", "log_figure", "log_image"]


def log_image(trainer: L.Trainer, key: str, image: Tensor, caption: str | None = None) -> list[Path]:
    """Send one image (usually a grid) to every attached logger, or write it as a PNG.

    Args:
        trainer: The running trainer; its ``loggers``, ``global_step`` and ``current_epoch`` are read.
        key: Where the picture goes, ``stage/images/name`` (e.g. ``val/images/samples``). For PNG
            files every ``/`` becomes ``_`` in the file name.
        image: ``(C, H, W)`` float in [0, 1] with C = 1 or 3, on any device: one picture, e.g.
            from ``torchvision.utils.make_grid``.
        caption: Shown under the image by W&B; TensorBoard and PNG files have no place for it.

    Returns:
        The PNG files written (none for W&B and TensorBoard, nor on ranks other than 0).

    Raises:
        VAEZooError: If ``image`` is not ``(1 or 3, H, W)``.
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise VAEZooError(f"log_image takes one (1 or 3, H, W) image, got shape {tuple(image.shape)} for {key!r}.")
    if not trainer.is_global_zero:
        return []
    image = image.detach().float().cpu()  # (C, H, W) in [0, 1]
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            _log_wandb(logger, key, image, caption, step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
    return [_save_png(image, image_path(folder, key, trainer.current_epoch, step)) for folder in _png_dirs(trainer)]


def log_figure(trainer: L.Trainer, key: str, fig: Figure) -> list[Path]:
    """Render a matplotlib figure to pixels, log it with :func:`log_image`, then close it.

    Args:
        trainer: The running trainer.
        key: Where the picture goes, as for :func:`log_image`.
        fig: The figure; closed afterwards, whether logging succeeded or not.

    Returns:
        The PNG files written, as for :func:`log_image`.
    """
    try:
        # Drawing takes a while: only the rank that logs draws.
        return log_image(trainer, key, figure_to_tensor(fig)) if trainer.is_global_zero else []
    finally:
        # Only pyplot keeps references to figures; a Figure built without pyplot needs no closing.
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)


def figure_to_tensor(fig: Figure) -> Tensor:
    """The figure's pixels as ``(3, H, W)`` float in [0, 1], drawn by Agg at the figure's dpi."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from torchvision.transforms.v2.functional import to_dtype

    # A figure made under another (e.g. interactive) backend is redrawn by Agg, which has a buffer.
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = torch.from_numpy(np.array(canvas.buffer_rgba()))  # (H, W, 4) uint8, copied out of Agg's buffer
    return to_dtype(rgba[..., :3].permute(2, 0, 1).contiguous(), torch.float32, scale=True)  # (3, H, W)


def image_path(folder: str | Path, key: str, epoch: int, step: int) -> Path:
    """Where a PNG goes: ``<folder>/images/<key, "/" -> "_">_epoch<EEE>_step<SSSSSS>.png``.

    E.g. key ``val/images/samples`` at epoch 3, step 420: ``val_images_samples_epoch003_step000420.png``.
    """
    return Path(folder) / "images" / f"{key.replace('/', '_')}_epoch{epoch:03d}_step{step:06d}.png"


def _log_wandb(logger: WandbLogger, key: str, image: Tensor, caption: str | None, step: int) -> None:
    from torchvision.transforms.v2.functional import to_dtype

    # wandb.Image casts a tensor straight to uint8 (values must already be 0..255): a float image
    # in [0, 1] would arrive black.
    pixels = to_dtype(image, torch.uint8, scale=True)  # (C, H, W) uint8
    # Lightning checks len() of every keyword list: caption=None would fail, so leave it out.
    extra = {"caption": [caption]} if caption else {}
    logger.log_image(key=key, images=[pixels], step=step, **extra)


def _png_dirs(trainer: L.Trainer) -> list[Path]:
    """Folders that get a PNG: one per logger that cannot show images, or the root without loggers."""
    if not trainer.loggers:
        return [Path(trainer.default_root_dir)]
    shown = (WandbLogger, TensorBoardLogger)
    folders = [_logger_dir(logger) for logger in trainer.loggers if not isinstance(logger, shown)]
    # Two loggers in one folder (e.g. CSV and another writing beside it) need the file only once.
    return list(dict.fromkeys(Path(f if f is not None else trainer.default_root_dir) for f in folders))


def _logger_dir(logger: Logger) -> str | None:
    # As trainer.log_dir resolves it, without its broadcast: CSVLogger has a versioned log_dir.
    return logger.log_dir if isinstance(logger, CSVLogger) else logger.save_dir


def _save_png(image: Tensor, path: Path) -> Path:
    """Write ``image`` ``(C, H, W)`` to ``path`` atomically: a reader never sees half a PNG."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: save_image(image, file, format="png"))
    return path
