"""``vaezoo compare``: one table, and optionally one plot, over the runs in some folders.

    vaezoo compare runs/                                    # every run under runs/, best first
    vaezoo compare 'runs/mnist_*/version_*' --sort name     # globs are expanded here too
    vaezoo compare runs/ wandb/ --plot curves.png --metric val/elbo

Each argument is a run directory, a folder searched recursively, a glob, or a ``metrics.csv`` /
``run-*.wandb`` file. Two kinds of run are read:

- Lightning ``CSVLogger`` runs: ``metrics.csv`` with LightningCLI's ``config.yaml`` beside it
  (``hparams.yaml`` when there is no ``config.yaml``).
- W&B runs, offline ones included (``wandb/offline-run-*/run-<id>.wandb``). wandb 0.31 ships no
  Python reader (its ``datastore`` module went with the move to ``wandb-core``), so the
  transaction log is read here: LevelDB's log framing, which the wandb-core writer keeps, with each
  record decoded by wandb's own protobuf ``Record``. vaezoo's runs log the whole CLI config there
  (``vaezoo.tracking``); for other runs, which log only the hyperparameters and no class paths,
  variant and dataset are inferred from the hyperparameters' names and marked ``?``.

``vaezoo test`` writes a new run whose ``config.yaml`` names the checkpoint it evaluated. Its
``test/*`` figures are merged into the row of the run that wrote that checkpoint when that run is
among those read and the test scored what a full test under the fit's own settings scores:

- the same data: the same dataset (data ``class_path``) and the same data arguments, except those
  that change no test figure: ``root``, ``download``, ``on_device``, ``num_workers``,
  ``batch_size`` and ``eval_batch_size`` (the figures are means per image) and ``val_size`` (the
  test set is the whole official one, whatever the validation split). ``binarize`` and ``seed``
  count (the seed draws MNIST's fixed binarisation of the test images), and so does every argument
  of a plugin's dataset;
- the same k: the test's ``iw_samples`` (importance samples of ``test/nll``) equal to the fit's,
  which is what the fit's recipe would test with;
- the whole test set: the test's ``trainer.limit_test_batches`` null or 1.0 (a float); a number of
  batches, or any other fraction, is a partial test.

Both configs are compared as LightningCLI resolves them: an argument a config leaves out counts as
its default in the class's signature, and a registry name (``mnist``) equals its class path; a
fit without its ``config.yaml`` (``hparams.yaml`` names no dataset) matches no test. Not
compared: precision, devices and ``seed_everything`` (the Monte Carlo draws), which move a figure
within its noise. Among the matching tests the latest wins, one of the fit's own logger first;
the others keep rows of their own. A test on other settings keeps its own row too, marked ``≠``,
its note naming each difference, e.g. ``test of runs/mnist_mlp/version_0 on other settings: data
fashion_mnist (fit: mnist); iw_samples 10 (fit: 1000); limit_test_batches 0.1 (partial)``.

A run that cannot be read is named in a warning on stderr and the others still print. The exit
status is 0 when at least one run printed, 1 when the plot could not be written, 2 when no run was
found or none could be read.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib
import inspect
import io
import json
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaezoo.errors import VAEZooError
from vaezoo.io import atomic_write
from vaezoo.registry import registered_name

PROG = "vaezoo compare"
_PRUNED_DIRS = {"checkpoints", ".git", ".venv", "__pycache__", "node_modules"}
_WHAT_IS_READ = "Lightning CSVLogger runs (metrics.csv) and W&B runs (wandb/offline-run-*/run-*.wandb)"


class RunError(Exception):
    """A run that cannot be read; the message says which file is wrong and how."""


@dataclass
class Run:
    """One run as read from disk.

    Attributes:
        path: The run directory.
        history: Logged rows in order, each ``{key: value}`` with only the keys that row holds.
        config: LightningCLI's resolved ``config.yaml`` (model, data, trainer, ckpt_path), or ``{}``.
        hparams: Flat logged hyperparameters (``hparams.yaml``, W&B config); used without ``config``.
        wall_s: Wall time in seconds, or None.
        wall_exact: False when ``wall_s`` comes from file modification times.
        finished_at: A timestamp ordering runs of the same checkpoint (latest test wins).
        source: ``csv`` or ``wandb``, the logger that wrote the run.
        run_id: The W&B run id: WandbLogger checkpoints go to ``<save_dir>/<project>/<id>/checkpoints``.
        notes: Things worth a warning that did not stop the run from being read.
    """

    path: Path
    history: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    wall_exact: bool = True
    finished_at: float = 0.0
    source: str = "csv"
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def last(self, key: str) -> float | None:
        """The last logged value of ``key``, or None."""
        return next((row[key] for row in reversed(self.history) if key in row), None)

    def values(self, key: str) -> list[float]:
        return [row[key] for row in self.history if key in row]

    @property
    def ckpt_path(self) -> str | None:
        value = self.config.get("ckpt_path")
        return value if isinstance(value, str) and value else None

    @property
    def is_test(self) -> bool:
        """A ``vaezoo test`` run: it evaluated a checkpoint and trained nothing."""
        keys = {k for row in self.history for k in row}
        return (
            self.ckpt_path is not None
            and any(k.startswith("test/") for k in keys)
            and not any(k.startswith("train/") for k in keys)
        )


# ---------------------------------------------------------------------------------------- finding


def _find_runs(patterns: list[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Expand the arguments into ``(run directory, kind)`` pairs, kind ``csv``, ``wandb`` or ``empty``.

    ``empty`` is a CSVLogger-style directory (``hparams.yaml``) with no ``metrics.csv`` yet, kept
    so the user hears about it. Returns the runs in argument order, without duplicates, and
    warnings for arguments that matched nothing.
    """
    found: dict[Path, tuple[Path, str]] = {}
    warnings: list[str] = []
    for pattern in patterns:
        # Shells that do not expand globs (Windows, quoted arguments) leave them to us.
        matches = [pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern, recursive=True))
        paths = [Path(match) for match in matches]
        if not paths:
            warnings.append(f"{pattern}: no such file or directory, and no glob match")
            continue
        runs = [run for path in paths for run in _runs_under(path.parent if path.is_file() else path)]
        if not runs:
            warnings.append(f"{pattern}: no runs found there")
        for run_dir, kind in runs:
            found.setdefault(run_dir.resolve(), (run_dir, kind))
    return list(found.values()), warnings


def _runs_under(top: Path) -> list[tuple[Path, str]]:
    """Every run directory at or below ``top``, in sorted order."""
    runs: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        kind = _run_kind(here, filenames)
        if kind is not None:
            runs.append((here, kind))
            dirnames[:] = []  # a run's own subfolders (W&B files/, logs/) hold no other runs
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNED_DIRS)
    return runs


def _run_kind(path: Path, filenames: list[str]) -> str | None:
    if "metrics.csv" in filenames:
        return "csv"
    if any(f.startswith("run-") and f.endswith(".wandb") for f in filenames):
        return "wandb"
    if "hparams.yaml" in filenames and path.name.startswith("version_"):
        return "empty"
    return None


# ------------------------------------------------------------------------------------ CSV runs


def _read_csv_run(path: Path) -> Run:
    """A CSVLogger run: ``metrics.csv``, and the config from ``config.yaml`` or ``hparams.yaml``.

    Raises:
        RunError: If ``metrics.csv`` is missing, empty or corrupt.
    """
    metrics = path / "metrics.csv"
    history, notes = _read_metrics_csv(metrics)
    run = Run(path=path, history=history, notes=notes, finished_at=metrics.stat().st_mtime)
    config, problem = _read_yaml(path / "config.yaml")
    if config is not None:
        run.config = config
    else:  # a run logged without LightningCLI: the hyperparameters alone, with no class paths
        hparams, hparams_problem = _read_yaml(path / "hparams.yaml")
        run.hparams = hparams or {}
        outcome = "; hyperparameters from hparams.yaml" if hparams else f" and {hparams_problem}: no hyperparameters"
        run.notes.append(problem + outcome)
    run.wall_s, run.wall_exact = _elapsed(history), True
    if run.wall_s is None:
        run.wall_s, run.wall_exact = _wall_from_mtimes(path), False
    return run


def _read_metrics_csv(path: Path) -> tuple[list[dict[str, float]], list[str]]:
    """The rows of a CSVLogger ``metrics.csv`` (empty cells left out) and notes about it.

    Raises:
        RunError: If the file is missing, unreadable, empty or corrupt.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError("metrics.csv is missing") from None
    except UnicodeDecodeError:
        raise RunError("metrics.csv is corrupt (not UTF-8 text)") from None
    except OSError as err:
        raise RunError(f"metrics.csv cannot be read ({err.strerror})") from None
    if not text.strip():
        raise RunError("metrics.csv is empty")
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as err:
        raise RunError(f"metrics.csv is corrupt ({err})") from None
    header, body = rows[0], rows[1:]
    if "epoch" not in header and not any("/" in key for key in header):
        raise RunError("metrics.csv is corrupt (its header names no epoch and no metric)")
    notes = []
    # A run killed mid-write leaves a partial last line; the complete rows are still good.
    if body and not text.endswith(("\n", "\r")):
        body.pop()
        notes.append("metrics.csv ends in a partial row (ignored)")
    history = [_parse_row(header, row, line) for line, row in enumerate(body, start=2)]
    if not history:
        raise RunError("metrics.csv holds a header but no rows (nothing logged yet)")
    return history, notes


def _parse_row(header: list[str], row: list[str], line: int) -> dict[str, float]:
    if len(row) != len(header):
        raise RunError(f"metrics.csv is corrupt (line {line} has {len(row)} fields, the header {len(header)})")
    parsed: dict[str, float] = {}
    for key, cell in zip(header, row):
        if cell.strip():
            try:
                parsed[key] = float(cell)
            except ValueError:
                raise RunError(f"metrics.csv is corrupt (line {line}, column {key!r} holds {cell[:20]!r})") from None
    return parsed


def _read_yaml(path: Path) -> tuple[dict[str, Any] | None, str]:
    """A YAML mapping and ``""``, or None and what is wrong with the file."""
    import yaml  # a dependency of jsonargparse and Lightning; deferred to keep `import vaezoo` fast

    class Loader(yaml.SafeLoader):
        """Safe loading that reads ``!!python/tuple`` (hparams.yaml's image_shape) and such as plain data."""

    def plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 (a safe loader)
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"{path.name} is corrupt ({type(err).__name__})"
    if not isinstance(data, dict):
        return None, f"{path.name} is {'empty' if data is None else 'not a mapping'}"
    return data, ""


def _elapsed(history: list[dict[str, float]]) -> float | None:
    """A logged elapsed-time column (``time/elapsed_s`` or alike), if the run has one."""
    times = [v for row in history for k, v in row.items() if k.endswith("elapsed_s")]
    return max(times) if times else None


def _wall_from_mtimes(path: Path) -> float | None:
    """Approximate wall time: ``metrics.csv``'s last write minus the start of the run.

    CSVLogger writes no timestamps. LightningCLI writes ``config.yaml`` at setup and CSVLogger
    ``hparams.yaml`` when training starts, so the earlier of the two marks the start; the last
    flush of ``metrics.csv`` marks the end. Copying a run without keeping times spoils this.
    """
    starts = [p.stat().st_mtime for p in (path / "config.yaml", path / "hparams.yaml") if p.is_file()]
    if not starts:
        return None
    wall = (path / "metrics.csv").stat().st_mtime - min(starts)
    return wall if wall >= 0 else None


# ------------------------------------------------------------------------------------ W&B runs

_WANDB_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32 of type byte + payload, payload length, chunk type
_BLOCK = 32 * 1024  # LevelDB log blocks: a chunk never straddles one; a tail under 7 bytes is padding
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _read_wandb_run(path: Path) -> Run:
    """A W&B run directory: history, config and runtime from its ``run-<id>.wandb`` log.

    Raises:
        RunError: If the log is unreadable, not a W&B log, or holds no metrics.
    """
    logs = sorted(path.glob("run-*.wandb"))
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except Exception as err:  # noqa: BLE001 (any import failure means the same to the user)
        raise RunError(f"reading W&B runs needs the wandb package ({type(err).__name__}: {err})") from None
    try:
        data = logs[0].read_bytes()
    except OSError as err:
        raise RunError(f"{logs[0].name} cannot be read ({err.strerror})") from None
    payloads, truncated = _leveldb_records(data, logs[0].name)
    run = Run(path=path, history=[], finished_at=logs[0].stat().st_mtime, source="wandb")
    runtime = None
    for payload in payloads:
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 (protobuf's DecodeError moves between versions)
            truncated = truncated or "a record does not decode"
            break
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
        elif kind == "config":
            run.hparams.update(_wandb_items(record.config.update))
        elif kind == "history":
            run.history.append(_numbers(_wandb_items(record.history.item)))
        elif kind == "exit":
            runtime = float(record.exit.runtime)
    if truncated:
        run.notes.append(f"{logs[0].name} is truncated ({truncated}); read what came before")
    if not any(k for row in run.history for k in row if "/" in k):
        raise RunError(f"{logs[0].name} holds no logged metrics" + (f" ({truncated})" if truncated else ""))
    run.config = _unflatten_cli_config(run.hparams)
    run.wall_s = _elapsed(run.history) or runtime or max(run.values("_runtime"), default=None)
    return run


def _leveldb_records(data: bytes, name: str) -> tuple[list[bytes], str | None]:
    """The record payloads of a W&B transaction log, and why reading stopped early (or None).

    Raises:
        RunError: If the file does not start with the W&B header.
    """
    if len(data) < _WANDB_HEADER.size or _WANDB_HEADER.unpack_from(data)[:2] != (b":W&B", 0xBEE1):
        raise RunError(f"{name} is not a W&B transaction log (bad header)")
    records: list[bytes] = []
    parts: list[bytes] = []
    pos = _WANDB_HEADER.size
    while pos < len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER.size:
            pos += _BLOCK - pos % _BLOCK  # block padding
            continue
        if pos + _CHUNK_HEADER.size > len(data):
            return records, "cut inside a chunk header"
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break  # preallocated zeros: the end of what was written
        payload = data[pos + _CHUNK_HEADER.size : pos + _CHUNK_HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return records, "a chunk fails its checksum"
        pos += _CHUNK_HEADER.size + length
        if kind == _FULL:
            records.append(payload)
        elif kind == _FIRST:
            parts = [payload]
        elif kind in (_MIDDLE, _LAST) and parts:
            parts.append(payload)
            if kind == _LAST:
                records.append(b"".join(parts))
                parts = []
        else:
            return records, f"unknown chunk type {kind}"
    return records, ("cut inside a record" if parts else None)


def _wandb_items(items: Any) -> dict[str, Any]:
    """``{key: value}`` from W&B config/history items (``key`` or ``nested_key``, JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        try:
            out[key] = json.loads(item.value_json)
        except ValueError:
            continue  # a value W&B itself could not encode as JSON: not a metric
    return out


def _unflatten_cli_config(flat: dict[str, Any]) -> dict[str, Any]:
    """LightningCLI's nested config from vaezoo's flattened W&B config, or ``{}`` if it has none.

    ``vaezoo.tracking`` logs ``{model: CLASS, model.latent_dim: 50, model.net: CLASS,
    model.net.hidden_dims: [...], data.batch_size: 8, ckpt_path: ...}``: a dotted key holding a
    string and having children was a ``{class_path, init_args}`` pair.
    """
    if not isinstance(flat.get("model"), str):
        return {}  # only Lightning's own hyperparameters: no class paths to recover
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        for part in key.split("."):
            node = node.setdefault(part, {})
        node[""] = value  # "" cannot be a part of a dotted key: it marks the node's own value

    def build(node: dict[str, Any]) -> Any:
        children = {k: build(v) for k, v in node.items() if k != ""}
        if "" not in node:
            return children
        if children and isinstance(node[""], str):
            return {"class_path": node[""], "init_args": children}
        return node[""]

    return build(tree)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ------------------------------------------------------------------------------------- reading


def _read_runs(found: list[tuple[Path, str]], warn: list[str]) -> list[Run]:
    runs = []
    for path, kind in found:
        try:
            if kind == "empty":
                raise RunError("metrics.csv is missing (the run logged nothing yet)")
            run = _read_csv_run(path) if kind == "csv" else _read_wandb_run(path)
        except RunError as err:
            warn.append(f"skipped {_shown(path)}: {err}")
            continue
        warn.extend(f"{_shown(path)}: {note}" for note in run.notes)
        runs.append(run)
    return runs


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------- merging


@dataclass
class Row:
    """A table row: a run, and the test run whose figures replace its ``test/*`` ones."""

    run: Run
    test: Run | None = None
    note: str = ""
    other_settings: bool = False  # a test of a fit read here, on other data or settings: marked ≠

    def test_value(self, key: str) -> float | None:
        value = self.test.last(key) if self.test is not None else None
        return value if value is not None else self.run.last(key)


def _merge_tests(runs: list[Run]) -> list[Row]:
    """One row per run, with one ``vaezoo test`` run of each fit folded into the fit's row."""
    rows = {id(run): Row(run) for run in runs}
    fits = [run for run in runs if not run.is_test]
    tests_of: dict[int, list[Run]] = {}
    for test in (run for run in runs if run.is_test):
        fit = _evaluated_run(test, fits)
        differences = _test_differences(test, fit) if fit is not None else []
        if fit is None:
            rows[id(test)].note = f"evaluates {test.ckpt_path} (its run is not among those read)"
        elif differences:  # not the fit's test score: a row of its own, saying why
            rows[id(test)].note = f"test of {_shown(fit.path)} on other settings: {'; '.join(differences)}"
            rows[id(test)].other_settings = True
        else:
            tests_of.setdefault(id(fit), []).append(test)
    for fit in fits:
        tests = tests_of.get(id(fit), [])
        # A test logged by two loggers at once belongs with the fit's own kind; else the latest wins.
        tests.sort(key=lambda t: (t.source == fit.source, t.finished_at, str(t.path)))
        if tests:
            rows[id(fit)].test, rows[id(fit)].note = tests[-1], f"test: {_shown(tests[-1].path)}"
            del rows[id(tests[-1])]
        for other in tests[:-1]:  # other tests of the same fit keep rows of their own
            rows[id(other)].note = f"another test of {_shown(fit.path)}"
    return list(rows.values())


def _evaluated_run(test: Run, fits: list[Run]) -> Run | None:
    """The run whose checkpoint ``test`` evaluated, among ``fits``."""
    ckpt = Path(test.ckpt_path or "")
    for fit in fits:  # WandbLogger checkpoints live in <save_dir>/<project>/<run id>/checkpoints/
        if fit.run_id and ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name == fit.run_id:
            return fit
    # A relative ckpt_path is relative to where `vaezoo test` ran: some folder above the test run
    # (runs/<name>/version_N sits below it), or the current one.
    bases = [Path("/")] if ckpt.is_absolute() else [test.path, *test.path.resolve().parents, Path.cwd()]
    fit_dirs = [(fit, fit.path.resolve()) for fit in fits]
    for base in bases:
        candidate = Path(os.path.abspath(base.resolve() / ckpt))
        for fit, fit_dir in fit_dirs:
            if fit_dir in candidate.parents:
                return fit
    return None


# Data arguments that change no test figure (see the module docstring); every other one counts.
_UNSCORED_DATA_ARGS = frozenset(
    {"root", "download", "on_device", "num_workers", "batch_size", "eval_batch_size", "val_size"}
)
_UNKNOWN = object()  # a setting neither the config nor the class's signature gives


def _test_differences(test: Run, fit: Run) -> list[str]:
    """How ``test`` was scored otherwise than a full test of ``fit`` under the fit's settings.

    Returns:
        One ``what test-value (fit: fit-value)`` per difference, data first; empty when they match.
    """
    variants, _nets, datasets, _likelihoods = _registries()
    differences = []
    test_data, test_data_args = _settings(test, "data", datasets)
    fit_data, fit_data_args = _settings(fit, "data", datasets)
    if test_data != fit_data:  # a fit without its config.yaml cannot show that it used the same data
        differences.append(f"data {test_data or 'not recorded'} (fit: {fit_data or 'not recorded'})")
    for key in sorted((test_data_args.keys() & fit_data_args.keys()) - _UNSCORED_DATA_ARGS):
        if test_data_args[key] != fit_data_args[key]:
            differences.append(f"{key} {_setting(test_data_args[key])} (fit: {_setting(fit_data_args[key])})")
    # The checkpoint fixes the model; only the k of test/nll is the test's own choice.
    test_k, fit_k = (_settings(run, "model", variants)[1].get("iw_samples", _UNKNOWN) for run in (test, fit))
    if _UNKNOWN not in (test_k, fit_k) and test_k != fit_k:
        differences.append(f"iw_samples {_setting(test_k)} (fit: {_setting(fit_k)})")
    trainer = test.config.get("trainer")
    limit = trainer.get("limit_test_batches") if isinstance(trainer, dict) else None
    # 1.0 is the whole set, but the int 1 is one batch (Lightning's rule).
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        differences.append(f"limit_test_batches {_setting(limit)} (partial)")
    return differences


def _settings(run: Run, section: str, registry: Any) -> tuple[str | None, dict[str, Any]]:
    """The registry name of a run's ``model`` or ``data`` class, and its init args with the defaults filled in.

    A run with no CLI config (``hparams.yaml`` only, or a W&B run vaezoo did not log) gives no name
    and its flat hyperparameters, so only the arguments both runs hold are compared.
    """
    if not run.config:
        return None, dict(run.hparams)
    spec = run.config.get(section)
    spec = {"class_path": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        return None, {}
    given = spec.get("init_args")
    cls = _class_of(spec.get("class_path"), registry)
    defaults = {} if cls is None else {
        name: p.default for name, p in _init_parameters(cls).items() if p.default is not inspect.Parameter.empty
    }
    return _short_name(spec, registry), {**defaults, **(given if isinstance(given, dict) else {})}


def _class_of(class_path: Any, registry: Any) -> type | None:
    """The class a config's ``class_path`` names (a registry name or a dotted path), or None."""
    if not isinstance(class_path, str):
        return None
    if "." not in class_path:
        return registry.get(class_path) if class_path in registry else None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 (e.g. a plugin not installed here: compare what the configs hold)
        return None
    return cls if inspect.isclass(cls) else None


def _setting(value: Any) -> str:
    """A config value as the user writes it on the command line (``null``, ``true``, ``0.1``)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------------ columns


def _registries() -> tuple[Any, Any, Any, Any]:
    """The variant, net, dataset and likelihood registries, filled (imports torch: deferred)."""
    import vaezoo.data  # noqa: F401 (registers the datasets)
    import vaezoo.likelihoods  # noqa: F401 (registers the likelihoods)
    import vaezoo.models  # noqa: F401 (registers the variants)
    import vaezoo.nets  # noqa: F401 (registers the nets)
    from vaezoo.registry import DATASETS, LIKELIHOODS, NETS, VARIANTS, load_plugins

    load_plugins()
    return VARIANTS, NETS, DATASETS, LIKELIHOODS


def _short_name(spec: Any, registry: Any) -> str | None:
    """The registry name of a ``class_path`` (or ``{class_path: ...}``), else its class name."""
    class_path = spec.get("class_path") if isinstance(spec, dict) else spec
    return registered_name(class_path, [registry]) if isinstance(class_path, str) else None


def _inferred_name(hparams: dict[str, Any], registry: Any) -> str | None:
    """The registered class whose ``__init__`` arguments best match the logged hyperparameters.

    A guess for runs without a class path (W&B, hparams.yaml only), shown with a ``?``: each class
    scores its arguments present minus those absent (a logged hparams set leaves out modules such
    as the likelihood); ties (MNIST and Fashion-MNIST take the same arguments) show every name.
    """
    scores: dict[str, int] = {}
    for entry in registry:
        params = _init_params(entry.cls)
        present = len(params & hparams.keys())
        if present:
            scores[entry.name] = present - len(params - hparams.keys())
    if not scores or max(scores.values()) <= 0:
        return None
    best = max(scores.values())
    return "|".join(name for name, score in scores.items() if score == best) + "?"


def _init_params(cls: type) -> set[str]:
    """Named ``__init__`` arguments of ``cls``, following ``**kwargs`` up to its bases."""
    return set(_init_parameters(cls))


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Named ``__init__`` parameters of ``cls`` by name, following ``**kwargs`` up to its bases."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:  # the subclass's own default wins over a base's
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return found


def _describe(run: Run) -> dict[str, Any]:
    """Variant, net, dataset and the key hyperparameters of a run."""
    variants, nets, datasets, likelihoods = _registries()
    if run.config:
        model, data = run.config.get("model") or {}, run.config.get("data") or {}
        margs = (model.get("init_args") or {}) if isinstance(model, dict) else {}
        dargs = (data.get("init_args") or {}) if isinstance(data, dict) else {}
        variant, dataset = _short_name(model, variants), _short_name(data, datasets)
    else:
        margs = dargs = run.hparams
        variant, dataset = _inferred_name(run.hparams, variants), _inferred_name(run.hparams, datasets)
    optimizer = margs.get("optimizer")
    lr = ((optimizer.get("init_args") or {}).get("lr") if isinstance(optimizer, dict) else None) or margs.get("lr")
    return {
        "variant": variant,
        "net": _short_name(margs.get("net"), nets),
        "dataset": dataset,
        "latent_dim": margs.get("latent_dim"),
        "beta": margs.get("beta"),
        "lr": lr,
        "batch_size": dargs.get("batch_size"),
        "likelihood": _short_name(margs.get("likelihood"), likelihoods),
    }


def _figures(row: Row) -> dict[str, Any]:
    """The numbers of a row: val ELBO best and final, test figures, epochs, wall time."""
    run = row.run
    val = [v for v in run.values("val/elbo") if not math.isnan(v)]
    epochs = run.values("epoch") if not run.is_test else []
    return {
        "best_val_elbo": max(val) if val else run.last("val/elbo"),
        "final_val_elbo": run.last("val/elbo"),
        "test_elbo": row.test_value("test/elbo"),
        "test_nll": row.test_value("test/nll"),
        "test_bpd": row.test_value("test/bpd"),
        "fid": row.test_value("test/fid"),
        "epochs": int(max(epochs)) + 1 if epochs else None,
        "wall": _duration(run.wall_s, run.wall_exact),
    }


def _duration(seconds: float | None, exact: bool) -> str | None:
    if seconds is None:
        return None
    s = round(seconds)
    text = f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return text if exact else f"~{text}"


_Column = tuple[str, str, str, bool]  # header, key, format, optional (dropped when no row has a value)
_COLUMNS: list[_Column] = [
    ("variant", "variant", "{}", False),
    ("net", "net", "{}", False),
    ("dataset", "dataset", "{}", False),
    ("latent", "latent_dim", "{}", False),
    ("β", "beta", "{:g}", True),
    ("lr", "lr", "{:g}", False),
    ("batch", "batch_size", "{}", False),
    ("likelihood", "likelihood", "{}", False),
    ("val ELBO\nbest", "best_val_elbo", "{:.2f}", False),  # two-line headers keep narrow terminals usable
    ("val ELBO\nfinal", "final_val_elbo", "{:.2f}", False),
    ("test\nELBO", "test_elbo", "{:.2f}", False),
    ("test\nNLL", "test_nll", "{:.2f}", False),
    ("test\nbpd", "test_bpd", "{:.4f}", True),
    ("FID", "fid", "{:.2f}", True),
    ("epochs", "epochs", "{}", False),
    ("wall", "wall", "{}", False),
]
MISSING = "—"


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return MISSING
    try:
        return fmt.format(value)
    except (TypeError, ValueError):  # a hand-written config holding a string where a number goes
        return str(value)


# ------------------------------------------------------------------------------------- output


def _print_table(rows: list[Row], values: list[dict[str, Any]]) -> None:
    """Print the comparison with rich (imported here: `import vaezoo` stays light).

    One table when it fits the terminal; else two, hyperparameters then results, each keyed by run,
    since rich would otherwise squeeze 17 columns into unreadable slivers.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 1000  # piped to a file: no wrapping at rich's default 80 columns
    columns = [c for c in _COLUMNS if not c[3] or any(v[c[1]] is not None for v in values)]
    caption = _caption(rows, values)
    table = _table(rows, values, columns, caption)
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        console.print(table)
        return
    split = next(i for i, c in enumerate(columns) if c[1] == "best_val_elbo")
    console.print(_table(rows, values, columns[:split], ""))
    console.print(_table(rows, values, columns[split:], caption))


def _caption(rows: list[Row], values: list[dict[str, Any]]) -> str:
    notes = ["ELBO and NLL in nats per image (ELBO: higher is better; NLL: importance-sampled, lower is better)"]
    if any(v["wall"] and v["wall"].startswith("~") for v in values):
        notes.append("~ wall time from file modification times (approximate)")
    if any(v[k] and str(v[k]).endswith("?") for v in values for k in ("variant", "dataset")):
        notes.append("? inferred from the logged hyperparameters")
    if any(row.other_settings for row in rows):
        notes.append("≠ a test on other data or evaluation settings than its fit: not that run's test score")
    return "\n".join(notes)


def _table(rows: list[Row], values: list[dict[str, Any]], columns: list[_Column], caption: str) -> Any:
    """A rich Table of ``columns`` with the run (and its note) first."""
    from rich.table import Table
    from rich.text import Text

    table = Table(caption=caption or None, caption_justify="left")
    # Where rich must shrink, keep the run readable, fold the names, and never break a number.
    longest = max(len(_shown(row.run.path)) for row in rows)
    table.add_column("run", overflow="fold", min_width=min(longest, 24))
    for header, _key, fmt, _optional in columns:
        numeric = fmt != "{}"
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for row, value in zip(rows, values):
        name = Text(_shown(row.run.path))  # Text, not markup: paths may hold brackets
        if row.other_settings:  # its figures sit where a reader looks for the fit's: say so loudly
            name.append(f"\n  ≠ {row.note}", style="bold yellow")
        elif row.note:
            name.append(f"\n  ↳ {row.note}", style="dim")
        table.add_row(name, *(Text(_cell(value[key], fmt)) for _header, key, fmt, _optional in columns))
    return table


def _write_plot(rows: list[Row], metric: str, target: Path) -> None:
    """One PNG with ``metric`` against epoch for every row's run, written atomically.

    Raises:
        VAEZooError: If no run logged ``metric`` or the file cannot be written.
    """
    curves = []
    for row in rows:
        points = [(r["epoch"], r[metric]) for r in row.run.history if metric in r and "epoch" in r]
        if points:
            curves.append((_shown(row.run.path), points))
    if not curves:
        known = sorted({k for row in rows for r in row.run.history for k in r if "/" in k})
        raise VAEZooError(f"no run logged {metric!r}, so there is nothing to plot; logged metrics: {', '.join(known)}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise VAEZooError(f"--plot needs matplotlib ({err}); install it with `pip install matplotlib`") from None

    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, with no pyplot state and no display needed
    ax = fig.add_subplot()
    for name, points in curves:
        epochs, ys = zip(*points)
        ax.plot(epochs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (" (nats per image)" if metric.endswith(("/elbo", "/nll", "/recon", "/kl")) else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save_atomically(fig, target)


def _save_atomically(fig: Any, target: Path) -> None:
    """Write the PNG next to ``target`` and rename it over, so no reader sees half a file."""
    if not target.parent.is_dir():
        raise VAEZooError(f"cannot write the plot to {target}: the folder {target.parent} does not exist")
    try:
        atomic_write(target, lambda file: fig.savefig(file, format="png"))
    except OSError as err:
        raise VAEZooError(f"cannot write the plot to {target}: {err.strerror or err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Compare runs in one table: variant, net, dataset, key hyperparameters, best and final val "
            f"ELBO, test ELBO/NLL/bpd, FID, epochs and wall time. Reads {_WHAT_IS_READ}; a `vaezoo test` "
            "run is merged into the row of the run whose checkpoint it evaluated when it tested the same data "
            "with the same iw_samples on the whole test set; else it keeps its own row, marked ≠."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="RUN_DIR_OR_GLOB",
        help="a run directory, a folder searched recursively, a glob, or a metrics.csv / run-*.wandb file",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PATH", help="also write a PNG of --metric against epoch for every run"
    )
    parser.add_argument("--metric", default="val/elbo", help="the metric --plot draws (default: val/elbo)")
    parser.add_argument(
        "--sort", choices=("best", "name"), default="best",
        help="best: highest best val ELBO first (default); name: by run path",
    )
    return parser


def main(args: list[str] | None = None) -> int:
    """Entry point of ``vaezoo compare``.

    Args:
        args: The arguments after ``compare``; None reads ``sys.argv`` (after a leading ``compare``).

    Returns:
        The exit status: 0 when at least one run printed, 1 when the plot failed, 2 when no run
        was found or readable (or the arguments are wrong).
    """
    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["compare"] else sys.argv[1:]
    try:
        ns = _parser().parse_args(args)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    found, warnings = _find_runs(ns.paths)
    runs = _read_runs(found, warnings)
    for line in warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not runs:
        searched = ", ".join(repr(p) for p in ns.paths)
        what = f"{len(found)} run(s) found, none readable (see the warnings above)" if found else "no runs found"
        print(f"{PROG}: error: {what}; searched {searched} for {_WHAT_IS_READ}", file=sys.stderr)
        return 2
    rows = _merge_tests(runs)
    values = [{**_describe(row.run), **_figures(row)} for row in rows]
    order = sorted(range(len(rows)), key=lambda i: _sort_key(ns.sort, rows[i], values[i]))
    _print_table([rows[i] for i in order], [values[i] for i in order])
    if ns.plot is not None:
        try:
            _write_plot([rows[i] for i in order], ns.metric, ns.plot)
        except VAEZooError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {ns.plot}")
    return 0


def _sort_key(sort: str, row: Row, value: dict[str, Any]) -> tuple[Any, ...]:
    best = value["best_val_elbo"]
    if sort == "name" or best is None or math.isnan(best):
        return (sort != "name", 0.0, _shown(row.run.path))  # runs without a val ELBO go last
    return (False, -best, _shown(row.run.path))


if __name__ == "__main__":
    sys.exit(main())
