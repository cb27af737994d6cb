"""Run folders that never mix, and what makes two runs "the same run".

**Claiming a folder.** Lightning's ``CSVLogger`` and ``TensorBoardLogger`` pick ``version_<N>`` by
listing the folder and taking the next number, and create it later, when they first write. Two
fits started within a second of each other both see ``version_0`` free and both write into it.
:func:`claim_version` takes the number with ``os.mkdir``, which the filesystem grants to exactly
one process, and moves on to the next number when another process got there first. The CLI
claims before it builds the logger and hands it that version; a command that then fails before
writing a result removes the folder again (:func:`release`).

**The same run.** ``--ckpt_path last`` and ``best`` may resume or score only a run of this recipe
trained with the same model and data settings. :func:`settings` reduces a resolved config to the
values that define a trained model (the variant and its arguments, the net, the optimizer, the
dataset and its split and batch size, the seed), leaving out those that only steer one command
(:data:`RUN_SETTINGS`: where the data lies, the evaluation's k, the precision of a guard, the optimiser steps
per training step, which train exactly as one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from vaezoo.errors import VAEZooError
from vaezoo.tracking import flatten_config

# Keys of the flattened config that steer one command, not what is trained: they may differ between
# a run and the command that resumes or scores it. ``model.image_shape`` is linked from the data.
RUN_SETTINGS = frozenset({
    "model.iw_samples", "model.val_iw_samples", "model.nonfinite", "model.max_skipped_fraction", "model.compile",
    "model.steps_per_call",
    "model.image_shape", "data.root", "data.download", "data.on_device", "data.eval_batch_size",
})
# The model arguments among them, kept from the command line when a checkpoint's model replaces the config's.
MODEL_RUN_SETTINGS = tuple(key.removeprefix("model.") for key in sorted(RUN_SETTINGS) if key.startswith("model."))
DATA_RUN_SETTINGS = tuple(key.removeprefix("data.") for key in sorted(RUN_SETTINGS) if key.startswith("data."))


def is_main_process() -> bool:
    """Whether this process is rank 0 of its job, from the launchers' environment, before any Trainer exists.

    Lightning's own guess (``rank_zero_only.rank``, from ``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``) is 0 on
    the first process of every node when Lightning's launcher starts the others, so ``NODE_RANK`` (and
    torchrun's ``GROUP_RANK``) are checked too.
    """
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return getattr(rank_zero_only, "rank", 0) == 0 and node == "0"


def claim_version(root: Path) -> int:
    """Create ``root/version_<N>`` for the lowest free N above the existing ones, atomically; returns N.

    ``os.mkdir`` fails with ``FileExistsError`` for every process but one, so two processes never get the
    same folder, however close together they start.
    """
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def check_unused(folder: Path, option: str) -> None:
    """Refuse a version folder given by the user that already holds a run: Lightning would overwrite its logs.

    Raises:
        VAEZooError: If ``folder`` exists and is not empty.
    """
    if folder.is_dir() and any(folder.iterdir()):
        raise VAEZooError(
            f"{option} names {folder}, which already holds a run: its metrics would be overwritten. Leave the version "
            "unset (each run gets the next free version_N), or choose one that is not there yet."
        )


# What a run writes as it starts, before any result: a failed command's folder holding only these is empty.
STARTUP_FILES = frozenset({"config.yaml", "hparams.yaml"})


def release(folders: list[Path], failed: bool = False) -> None:
    """Remove the claimed folders that hold no result: empty ones, and after a failure those that hold only
    :data:`STARTUP_FILES` (the config of a run that never ran). A folder with anything else is kept whole."""
    for folder in folders:
        try:
            entries = list(folder.iterdir())
            if failed and entries and all(e.is_file() and e.name in STARTUP_FILES for e in entries):
                for entry in entries:
                    entry.unlink()
            folder.rmdir()  # only ever removes an empty folder: nothing else is lost
        except OSError:
            pass


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a resolved config (model, data, seed) that define a trained model, flattened.

    Args:
        config: A subcommand's config as plain data: ``{"model": ..., "data": ..., "seed_everything": ...}``,
            as LightningCLI writes it to ``config.yaml``.
    """
    flat = flatten_config({key: config[key] for key in ("model", "data") if config.get(key) is not None})
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):  # `true` (a random seed) or absent: unknown
        flat["seed_everything"] = seed
    return {key: value for key, value in flat.items() if key not in RUN_SETTINGS}


def differences(run: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """``key: run value -> asked value`` for every setting that both define and that differs.

    A key that only one side has (an argument added in a later version of vaezoo, or a seed that was not
    recorded) is not a difference; the class paths above such keys are compared.
    """
    return [f"{key} {_short(run[key])} (run) vs {_short(asked[key])} (this command)"
            for key in sorted(run.keys() & asked.keys()) if not _same(run[key], asked[key])]


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)  # 1 and 1.0 are one setting
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _short(value: Any) -> str:
    if isinstance(value, str) and value.count(".") >= 2:  # a class path: its class name is enough
        return value.rsplit(".", 1)[-1]
    return str(value)
