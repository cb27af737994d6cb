"""``--ckpt_path last`` and ``--ckpt_path best`` across runs, among runs trained with the same settings.

Lightning resolves ``last`` in the checkpoint folder of *this* run, ``<save_dir>/<name>/version_<N>/
checkpoints``. A new ``vaezoo fit`` gets a new version, whose folder is empty, so Lightning warns and
trains from step 0: a killed run would not resume. ``best`` needs the ModelCheckpoint of a fit in
the same process, which a separate ``vaezoo test`` never has. Here both names are looked up, before
anything is built, over every run of the config's logger (``<save_dir>/<name>/*/checkpoints``), and
replaced by a path: the CLI then treats it exactly as a path given by hand.

Only runs trained with the same model and data settings count (:func:`vaezoo.runs.settings`): under
W&B every recipe shares ``<save_dir>/<project>``, and a sweep puts runs of several learning rates
side by side. A run's settings come from the ``config.yaml`` in its folder, or, for checkpoints kept
elsewhere (a callback's own ``dirpath``), from the hyperparameters inside the checkpoint.
"""

from __future__ import annotations

import glob
import importlib
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from vaezoo import runs
from vaezoo.errors import VAEZooError


def class_of(spec: object) -> type | None:
    """The class of a parsed ``class_path``/``init_args`` entry, if it imports."""
    path = spec.get("class_path") if isinstance(spec, Namespace) else None
    if not isinstance(path, str) or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _init_args(spec: Namespace) -> dict[str, Any]:
    args = spec.get("init_args")
    return args.as_dict() if isinstance(args, Namespace) else dict(args or {})


def search_places(trainer: Namespace) -> list[str]:
    """The folders (globs) where the ModelCheckpoints of a parsed trainer config write, as Lightning chooses them.

    A callback's own ``dirpath`` if set; else ``<save_dir>/<name>/*/checkpoints`` of the first logger, for
    every version; else ``<default_root_dir>/checkpoints``.
    """
    root = str(trainer.get("default_root_dir") or os.getcwd())
    callbacks = trainer.get("callbacks") or []
    specs = [s for s in (callbacks if isinstance(callbacks, list) else [callbacks])
             if (cls := class_of(s)) is not None and issubclass(cls, ModelCheckpoint)]
    places = [str(_init_args(s)["dirpath"]) for s in specs if _init_args(s).get("dirpath")]
    if len(places) == len(specs) and specs:
        return places
    logger = trainer.get("logger")
    logger = (logger[0] if logger else None) if isinstance(logger, list) else logger
    if logger is None or logger is False:
        return [*places, os.path.join(root, "checkpoints")]
    if logger is True:  # Lightning's default logger: <default_root_dir>/lightning_logs/version_N
        return [*places, os.path.join(root, "lightning_logs", "*", "checkpoints")]
    cls = class_of(logger)
    if cls is None:
        return [*places, os.path.join(root, "checkpoints")]
    # Building a logger starts nothing (a W&B run starts on first use); only its save_dir and name are read.
    instance = cls(**_init_args(logger))
    return [*places, os.path.join(str(instance.save_dir or root), str(instance.name or ""), "*", "checkpoints")]


def run_folder_of(path: Path) -> Path | None:
    """``<run>/`` for a checkpoint ``<run>/checkpoints/x.ckpt`` with the run's ``config.yaml`` beside, else None."""
    run = path.parent.parent
    return run if path.parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


@dataclass(frozen=True)
class Candidate:
    """A checkpoint on disk and the run that wrote it."""

    path: Path

    @property
    def run_folder(self) -> Path | None:
        return run_folder_of(self.path)

    @property
    def shown(self) -> str:
        """The run folder (or the file), relative to the working folder when it lies below it."""
        shown = self.run_folder or self.path
        try:
            return str(shown.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(shown)

    @cached_property
    def settings(self) -> dict[str, Any] | None:
        """The run's settings (:func:`vaezoo.runs.settings`); None when neither source can be read."""
        return settings_of(self.path)


def settings_of(path: Path) -> dict[str, Any] | None:
    """The settings a checkpoint was trained with: its run's ``config.yaml``, else its own hyperparameters."""
    run = run_folder_of(path)
    if run is not None:
        try:
            config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = None
        if isinstance(config, dict):
            return runs.settings(config)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (a cut-off or foreign file: it is named when it is used)
        return None
    config = {}
    for key, hparams_key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hparams = dict(checkpoint.get(hparams_key) or {})
        hparams.pop("_instantiator", None)
        if "_class_path" in hparams:  # LightningCLI's form: the class and its arguments
            config[key] = {"class_path": hparams.pop("_class_path"), "init_args": hparams}
    return runs.settings(config) if config else None


def candidates(places: list[str]) -> list[Candidate]:
    """Every checkpoint in the folders matching ``places``, newest first.

    Any ``*.ckpt`` counts, not only ``last*.ckpt``: Lightning replaces the ``last.ckpt`` link by removing it
    first, so a crash at that moment leaves the newest state under its own name only.
    """
    folders = dict.fromkeys(Path(f) for place in places for f in sorted(glob.glob(place)) if Path(f).is_dir())
    files = {p.resolve() for folder in folders for p in folder.glob("*.ckpt") if p.exists()}
    return [Candidate(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def best_of(last: Path) -> Path | None:
    """The best checkpoint that the monitoring ModelCheckpoint of the run of ``last`` had recorded."""
    checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") and state.get("best_model_path"):
            path = Path(state["best_model_path"])
            return path if path.is_file() else None
    return None


@dataclass
class Resolution:
    """What ``last`` or ``best`` stands for: a checkpoint, or None with the reason."""

    path: str | None
    notice: str


def resolve(keyword: str, subcommand: str, trainer: Namespace, asked: dict[str, Any]) -> Resolution:
    """The checkpoint that ``--ckpt_path last`` or ``best`` stands for, among runs with the settings ``asked``.

    Args:
        keyword: ``last`` or ``best``.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        trainer: The parsed trainer config (where the checkpoints are).
        asked: This command's settings (:func:`vaezoo.runs.settings`).

    Returns:
        The path, with the line that says what was chosen. For ``fit``, ``last`` with no checkpoint of this
        run's settings means a first run: no path, training starts from the start.

    Raises:
        VAEZooError: ``last`` or ``best`` for evaluation with nothing of these settings to evaluate.
    """
    places = search_places(trainer)
    where = " or ".join(places)
    found = candidates(places)
    same = [c for c in found if c.settings is None or not runs.differences(c.settings, asked)]
    other = next((c for c in found if c not in same), None)
    others = ""
    if other is not None and other.settings is not None:
        others = (f" {other.shown} was trained with other settings ({'; '.join(runs.differences(other.settings, asked))}); "
                  f"to use it, run with its config (--config {other.shown}/config.yaml) or give its checkpoint's path.")
    last = same[0].path if same else None
    if keyword == "last":
        if last is not None:
            return Resolution(str(last), f"vaezoo: --ckpt_path last: {last}")
        if subcommand == "fit":
            return Resolution(None, f"vaezoo: --ckpt_path last: no checkpoint of a run with these settings yet, "
                                    f"training from the start.{others}")
        raise VAEZooError(
            f"--ckpt_path last: there is no checkpoint of a run with these model and data settings in {where}."
            f"{others or ' Train first (vaezoo fit with the same config), or give the path of a checkpoint.'}"
        )
    best = best_of(last) if last is not None else None
    if best is None:
        raise VAEZooError(
            f"--ckpt_path best: no best checkpoint of a run with these model and data settings is recorded in {where} "
            "(it needs a fit whose ModelCheckpoint monitors a metric, e.g. val/elbo as the recipes do). Give the path "
            f"of a checkpoint, or 'last'.{others}"
        )
    return Resolution(str(best), f"vaezoo: --ckpt_path best: {best}")


def check_file(path: Path, keywords: bool = True) -> None:
    """Refuse a ``--ckpt_path`` that is missing, a folder, or a cut-off file, before the data loads.

    torch would fail later with a traceback: "Is a directory", or a zip archive's "central directory".

    Args:
        path: The ``--ckpt_path`` given.
        keywords: Whether the command also takes ``last`` and ``best`` (fit, validate, test, predict), to suggest them.
    """
    if path.is_dir():
        inside = sorted((p for pattern in ("*.ckpt", "checkpoints/*.ckpt", "*/checkpoints/*.ckpt") for p in path.glob(pattern)),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        example = f" such as {inside[0]} (the newest of the {len(inside)} there)" if inside else ""
        raise VAEZooError(
            f"--ckpt_path {path} is a folder, not a checkpoint file. Give a .ckpt file{example}"
            + (", or 'last' / 'best' for the newest / best checkpoint of this config's runs." if keywords else ".")
        )
    if not path.is_file():
        raise VAEZooError(
            f"--ckpt_path {path} does not exist. Give the path of a .ckpt file, e.g. runs/<recipe>/version_<N>/"
            "checkpoints/last.ckpt" + (", or 'last' (the newest checkpoint of this config's runs) or 'best'." if keywords else ".")
        )
    if zipfile.is_zipfile(path):  # torch's format since 1.6: the zip's directory is written last
        return
    with path.open("rb") as f:
        if f.read(1) == b"\x80":  # a pickle: torch's legacy format, which torch.load reads itself
            return
    raise VAEZooError(
        f"--ckpt_path {path} is not a complete checkpoint: it is cut off (a copy or download that did not finish) "
        f"or not a checkpoint at all ({path.stat().st_size} bytes). Copy it again, or use another checkpoint of the run "
        f"(ls {path.parent})."
    )
