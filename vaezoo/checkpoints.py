"""``--ckpt_path last`` and ``--ckpt_path best`` across runs, not only within one.

Lightning resolves ``last`` in the checkpoint folder of *this* run, ``<save_dir>/<name>/version_<N>/
checkpoints``. A new ``vaezoo fit`` gets a new version, whose folder is empty, so Lightning warns and
trains from step 0: a killed run would not resume. ``best`` needs the ModelCheckpoint of a fit in
the same process, which a separate ``vaezoo test`` never has. Here both names are looked up over
every run of the config's logger (``<save_dir>/<name>/*/checkpoints``) and replaced by a path
before Lightning sees them.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from vaezoo.errors import VAEZooError


def checkpoint_folders(trainer: Trainer) -> tuple[list[Path], list[str]]:
    """Every folder where this config's ModelCheckpoints have written checkpoints, and the places
    searched (for messages).

    Mirrors Lightning's choice of ``dirpath``: the callback's own ``dirpath`` if set, else
    ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, for every version on disk,
    else ``<default_root_dir>/checkpoints``.
    """
    places = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if len(places) < len(trainer.checkpoint_callbacks):  # some use the logger's run folders
        if trainer.loggers:
            logger = trainer.loggers[0]
            # Neither .version nor .experiment: either would start a new run (a W&B run, a version folder).
            save_dir = logger.save_dir or trainer.default_root_dir
            # .name is the W&B project, or the CSV/TensorBoard experiment name: the folder above the runs.
            places.append(Path(save_dir) / str(logger.name or "") / "*" / "checkpoints")
        else:
            places.append(Path(trainer.default_root_dir) / "checkpoints")
    folders = [Path(f) for place in places for f in sorted(glob.glob(str(place))) if Path(f).is_dir()]
    return list(dict.fromkeys(folders)), [str(p) for p in dict.fromkeys(places)]


def newest(folders: list[Path]) -> Path | None:
    """The most recently written checkpoint in ``folders``: ``last.ckpt``'s target as a rule.

    Any ``*.ckpt`` counts, not only ``last*.ckpt``: Lightning replaces the ``last.ckpt`` link by
    removing it first, so a crash at that moment leaves the newest state under its own name only.
    """
    candidates = {p.resolve() for folder in folders for p in folder.glob("*.ckpt") if p.exists()}
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def best_of(last: Path) -> Path | None:
    """The best checkpoint that the monitoring ModelCheckpoint of the run of ``last`` had recorded."""
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") and state.get("best_model_path"):
            path = Path(state["best_model_path"])
            return path if path.is_file() else None
    return None


def resolve(ckpt_path: str | None, trainer: Trainer, subcommand: str) -> str | None:
    """``ckpt_path`` with ``last`` and ``best`` replaced by the file they stand for.

    For ``fit``, ``last`` with no checkpoint found means a first run: None (train from the start).

    Raises:
        VAEZooError: ``last`` or ``best`` for evaluation with nothing to evaluate.
    """
    if ckpt_path not in ("last", "best") or (ckpt_path == "best" and trainer.checkpoint_callback and
                                             getattr(trainer.checkpoint_callback, "best_model_path", "")):
        return ckpt_path  # a path, another keyword, or a best of a fit in this process: Lightning's
    folders, places = checkpoint_folders(trainer)
    where = " or ".join(places)
    last = newest(folders)
    if ckpt_path == "last":
        if last is not None:
            return str(last)
        if subcommand == "fit":
            return None
        raise VAEZooError(
            f"--ckpt_path last: there is no checkpoint in {where}. Train first (vaezoo fit with the same "
            "config), or give the path of a checkpoint."
        )
    best = best_of(last) if last is not None else None
    if best is None:
        raise VAEZooError(
            f"--ckpt_path best: no best checkpoint is recorded in {where} (it needs a fit whose ModelCheckpoint "
            "monitors a metric, e.g. val/elbo as the recipes do). Give the path of a checkpoint, or 'last'."
        )
    return str(best)
