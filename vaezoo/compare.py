"""``vaezoo compare``: one table, and optionally one plot, over the runs in some folders.

    vaezoo compare runs/                                    # every run under runs/, best first
    vaezoo compare 'runs/mnist_*/version_*' --sort name     # globs are expanded here too
    vaezoo compare runs/ --plot curves.png --metric val/elbo

A run is what every ``vaezoo fit``, ``validate`` and ``test`` keeps in its folder whatever its
logger (a W&B run beside its checkpoints, see ``vaezoo.tracking``): Lightning's ``metrics.csv`` and
LightningCLI's ``config.yaml``. Only those files are read and nothing of the model stack is
imported, so torch never loads: class paths show as their class name (``BetaVAE``).

A ``vaezoo test`` run is merged into the row of the fit whose checkpoint it evaluated when it
scored what a full test under the fit's settings scores: the same data class and data arguments
(less those that change no test figure), the same ``iw_samples``, the whole test set. Otherwise it
keeps a row of its own, marked ``≠``, that names each difference (docs/tracking.md has the rules).
Exit status: 0 when a run printed, 1 when the plot failed, 2 when no run was found or readable.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaezoo.errors import VAEZooError
from vaezoo.io import atomic_write

PROG = "vaezoo compare"
_PRUNED_DIRS = {"checkpoints", ".git", ".venv", "__pycache__", "node_modules"}
_WHAT_IS_READ = "run folders holding a metrics.csv (and its config.yaml)"
# Data arguments that change no test figure (see the module docstring); every other one counts.
_UNSCORED_DATA_ARGS = frozenset({"root", "download", "on_device", "num_workers", "batch_size", "eval_batch_size",
                                 "val_size"})
MISSING = "—"


class RunError(Exception):
    """A run that cannot be read; the message says which file is wrong and how."""


@dataclass
class Run:
    """One run folder (its logged rows in order, each with only the keys it holds, and its ``config.yaml``), and
    its table row: the ``vaezoo test`` run merged into it, and a note under its name."""

    path: Path
    history: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    wall: str | None = None  # "12s", or "~12s" from file times
    finished_at: float = 0.0  # metrics.csv's last write: orders tests of one checkpoint
    notes: list[str] = field(default_factory=list)  # warnings that did not stop the run from being read
    test: Run | None = None
    note: str = ""
    other_settings: bool = False  # a test of a fit read here, on other data or settings: marked ≠

    def last(self, key: str) -> float | None:
        return next((row[key] for row in reversed(self.history) if key in row), None)

    def test_value(self, key: str) -> float | None:
        value = self.test.last(key) if self.test is not None else None
        return value if value is not None else self.last(key)

    def args(self, section: str) -> dict[str, Any]:
        spec = self.config.get(section)
        args = spec.get("init_args") if isinstance(spec, dict) else None
        return args if isinstance(args, dict) else {}

    @property
    def ckpt_path(self) -> str | None:
        value = self.config.get("ckpt_path")
        return value if isinstance(value, str) and value else None

    @property
    def is_test(self) -> bool:
        """A ``vaezoo test`` run: it evaluated a checkpoint and trained nothing."""
        keys = {k for row in self.history for k in row}
        return self.ckpt_path is not None and any(k.startswith("test/") for k in keys) and not any(
            k.startswith("train/") for k in keys)


def _find_runs(patterns: list[str], warnings: list[str]) -> list[Path]:
    """The run folders the arguments name, in argument order, without duplicates."""
    found: dict[Path, Path] = {}
    for pattern in patterns:
        # Shells that do not expand globs (Windows, quoted arguments) leave them to us.
        paths = [Path(p) for p in ([pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern, recursive=True)))]
        if not paths:
            warnings.append(f"{pattern}: no such file or directory, and no glob match")
        hits = 0
        for dirpath, dirnames, filenames in (walk for p in paths for walk in os.walk(p.parent if p.is_file() else p)):
            # A Lightning version folder with no metrics.csv yet is kept, so that the user hears about it.
            if "metrics.csv" in filenames or ("hparams.yaml" in filenames and Path(dirpath).name.startswith("version_")):
                found.setdefault(Path(dirpath).resolve(), Path(dirpath))
                hits += 1
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if d not in _PRUNED_DIRS)
        if paths and not hits:
            warnings.append(f"{pattern}: no runs found there")
    return list(found.values())


def _read_run(path: Path) -> Run:
    """Read ``metrics.csv`` and ``config.yaml`` of one run folder.

    Raises:
        RunError: If ``metrics.csv`` is missing, unreadable, empty or corrupt.
    """
    metrics = path / "metrics.csv"
    try:
        text = metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError("metrics.csv is missing (the run logged nothing yet)") from None
    except UnicodeDecodeError:
        raise RunError("metrics.csv is corrupt (not UTF-8 text)") from None
    except OSError as err:
        raise RunError(f"metrics.csv cannot be read ({err.strerror})") from None
    if not text.strip():
        raise RunError("metrics.csv is empty")
    try:
        header, *body = [row for row in csv.reader(text.splitlines()) if row]
    except csv.Error as err:
        raise RunError(f"metrics.csv is corrupt ({err})") from None
    if "epoch" not in header and not any("/" in key for key in header):
        raise RunError("metrics.csv is corrupt (its header names no epoch and no metric)")
    run = Run(path, [], finished_at=metrics.stat().st_mtime)
    if body and not text.endswith(("\n", "\r")):  # a run killed mid-write: the complete rows are still good
        body.pop()
        run.notes.append("metrics.csv ends in a partial row (ignored)")
    for line, cells in enumerate(body, start=2):
        if len(cells) != len(header):
            raise RunError(f"metrics.csv is corrupt (line {line} has {len(cells)} fields, the header {len(header)})")
        try:
            run.history.append({key: float(cell) for key, cell in zip(header, cells) if cell.strip()})
        except ValueError:
            raise RunError(f"metrics.csv is corrupt (line {line} holds a cell that is not a number)") from None
    if not run.history:
        raise RunError("metrics.csv holds a header but no rows (nothing logged yet)")
    import yaml  # a dependency of jsonargparse; deferred to keep `import vaezoo` fast

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML was built with it
    try:
        config = yaml.load((path / "config.yaml").read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 (safe)
    except FileNotFoundError:
        config = "is missing"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        config = f"is corrupt ({type(err).__name__})"
    if isinstance(config, dict):
        run.config = config
    else:
        run.notes.append(f"config.yaml {config if isinstance(config, str) else 'is not a mapping'}: no settings shown")
    elapsed = [v for row in run.history for k, v in row.items() if k.endswith("elapsed_s")]
    # CSVLogger writes no times: config.yaml (written at setup) to the last write of metrics.csv, approximately.
    start = min((p.stat().st_mtime for p in (path / "config.yaml", path / "hparams.yaml") if p.is_file()), default=None)
    if elapsed:
        run.wall = _duration(max(elapsed))
    elif start is not None and run.finished_at >= start:
        run.wall = "~" + _duration(run.finished_at - start)
    return run


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _name(spec: Any) -> str | None:
    """A ``class_path`` (or ``{class_path: ...}``) by its class name, or a registry name as the config holds it."""
    class_path = spec.get("class_path") if isinstance(spec, dict) else spec
    return class_path.rsplit(".", 1)[-1] if isinstance(class_path, str) else None


def _merge_tests(runs: list[Run]) -> list[Run]:
    """The table's rows: every run but the tests merged into their fit's row (the latest matching test of each)."""
    fits = [run for run in runs if not run.is_test]
    tests_of: dict[int, list[Run]] = {}
    for test in (run for run in runs if run.is_test):
        fit = _evaluated_run(test, fits)
        differences = _test_differences(test, fit) if fit is not None else []
        if fit is None:
            test.note = f"evaluates {test.ckpt_path} (its run is not among those read)"
        elif differences:  # not the fit's test score: a row of its own, saying why
            test.note = f"test of {_shown(fit.path)} on other settings: {'; '.join(differences)}"
            test.other_settings = True
        else:
            tests_of.setdefault(id(fit), []).append(test)
    for fit in fits:
        tests = sorted(tests_of.get(id(fit), []), key=lambda t: (t.finished_at, str(t.path)))
        if tests:
            fit.test, fit.note = tests[-1], f"test: {_shown(tests[-1].path)}"
        for other in tests[:-1]:  # other tests of the same fit keep rows of their own
            other.note = f"another test of {_shown(fit.path)}"
    return [run for run in runs if not any(fit.test is run for fit in fits)]


def _evaluated_run(test: Run, fits: list[Run]) -> Run | None:
    """The run whose folder holds the checkpoint ``test`` evaluated (W&B's too: ``<project>/<id>/checkpoints``)."""
    ckpt = Path(test.ckpt_path or "")
    # A relative ckpt_path is relative to where `vaezoo test` ran: some folder above the test run, or this one.
    bases = [Path("/")] if ckpt.is_absolute() else [test.path, *test.path.resolve().parents, Path.cwd()]
    fit_dirs = [(fit, fit.path.resolve()) for fit in fits]
    for base in bases:
        candidate = Path(os.path.abspath(base.resolve() / ckpt))
        for fit, fit_dir in fit_dirs:
            if fit_dir in candidate.parents:
                return fit
    return None


def _test_differences(test: Run, fit: Run) -> list[str]:
    """``what test-value (fit: fit-value)`` for each way ``test`` was scored otherwise than the fit's full test."""
    differences = []
    test_data, fit_data = (run.config.get("data") for run in (test, fit))
    test_data, fit_data = (spec.get("class_path") if isinstance(spec, dict) else spec for spec in (test_data, fit_data))
    if test_data != fit_data or not fit.config:  # a fit without its config.yaml cannot show the same data
        differences.append(f"data {_name(test_data) or 'not recorded'} (fit: {_name(fit_data) or 'not recorded'})")
    test_args, fit_args = test.args("data"), fit.args("data")
    for key in sorted((test_args.keys() & fit_args.keys()) - _UNSCORED_DATA_ARGS):
        if test_args[key] != fit_args[key]:
            differences.append(f"{key} {_setting(test_args[key])} (fit: {_setting(fit_args[key])})")
    # The checkpoint fixes the model; only the k of test/nll is the test's own choice.
    test_model, fit_model = test.args("model"), fit.args("model")
    if "iw_samples" in test_model and "iw_samples" in fit_model and test_model["iw_samples"] != fit_model["iw_samples"]:
        differences.append(f"iw_samples {_setting(test_model['iw_samples'])} (fit: {_setting(fit_model['iw_samples'])})")
    trainer = test.config.get("trainer")
    limit = trainer.get("limit_test_batches") if isinstance(trainer, dict) else None
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # the int 1 is one batch (Lightning's rule)
        differences.append(f"limit_test_batches {_setting(limit)} (partial)")
    return differences


def _setting(value: Any) -> str:
    """A config value as the user writes it on the command line (``null``, ``true``, ``0.1``)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _values(run: Run) -> dict[str, Any]:
    """Variant, net, dataset, the key hyperparameters and the figures of a row."""
    model, data = run.args("model"), run.args("data")
    optimizer = model.get("optimizer")
    lr = (optimizer.get("init_args") or {}).get("lr") if isinstance(optimizer, dict) else model.get("lr")
    val = [row["val/elbo"] for row in run.history if "val/elbo" in row and not math.isnan(row["val/elbo"])]
    epochs = [] if run.is_test else [row["epoch"] for row in run.history if "epoch" in row]
    return {
        "variant": _name(run.config.get("model")), "net": _name(model.get("net")),
        "dataset": _name(run.config.get("data")), "latent_dim": model.get("latent_dim"), "beta": model.get("beta"),
        "lr": lr, "batch_size": data.get("batch_size"), "likelihood": _name(model.get("likelihood")),
        "best_val_elbo": max(val) if val else run.last("val/elbo"), "final_val_elbo": run.last("val/elbo"),
        "test_elbo": run.test_value("test/elbo"), "test_nll": run.test_value("test/nll"),
        "test_bpd": run.test_value("test/bpd"), "fid": run.test_value("test/fid"),
        "epochs": int(max(epochs)) + 1 if epochs else None, "wall": run.wall,
    }


_Column = tuple[str, str, str, bool]  # header, key, format, optional (dropped when no row has a value)
_COLUMNS: list[_Column] = [
    ("variant", "variant", "{}", False), ("net", "net", "{}", False), ("dataset", "dataset", "{}", False),
    ("latent", "latent_dim", "{}", False), ("β", "beta", "{:g}", True), ("lr", "lr", "{:g}", False),
    ("batch", "batch_size", "{}", False), ("likelihood", "likelihood", "{}", False),
    # Two-line headers keep narrow terminals usable.
    ("val ELBO\nbest", "best_val_elbo", "{:.2f}", False), ("val ELBO\nfinal", "final_val_elbo", "{:.2f}", False),
    ("test\nELBO", "test_elbo", "{:.2f}", False), ("test\nNLL", "test_nll", "{:.2f}", False),
    ("test\nbpd", "test_bpd", "{:.4f}", True), ("FID", "fid", "{:.2f}", True),
    ("epochs", "epochs", "{}", False), ("wall", "wall", "{}", False),
]


def _cell(value: Any, fmt: str) -> str:
    try:
        return MISSING if value is None else fmt.format(value)
    except (TypeError, ValueError):  # a hand-edited config holding a string where a number goes
        return str(value)


def _print_table(rows: list[Run], values: list[dict[str, Any]]) -> None:
    """Print one table when it fits the terminal; else two (hyperparameters, then results), each keyed by run."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 1000  # piped to a file: no wrapping at rich's default 80 columns
    columns = [c for c in _COLUMNS if not c[3] or any(v[c[1]] is not None for v in values)]
    notes = ["ELBO and NLL in nats per image (ELBO: higher is better; NLL: importance-sampled, lower is better)"]
    if any(v["wall"] and v["wall"].startswith("~") for v in values):
        notes.append("~ wall time from file modification times (approximate)")
    if any(row.other_settings for row in rows):
        notes.append("≠ a test on other data or evaluation settings than its fit: not that run's test score")

    def table(columns: list[_Column], caption: str, with_notes: bool = True) -> Table:
        table = Table(caption=caption or None, caption_justify="left")
        # Where rich must shrink, keep the run readable, fold the names, and never break a number.
        table.add_column("run", overflow="fold", min_width=min(max(len(_shown(r.path)) for r in rows), 24))
        for header, _key, fmt, _optional in columns:
            table.add_column(header, justify="left" if fmt == "{}" else "right", no_wrap=fmt != "{}", overflow="fold")
        for row, value in zip(rows, values):
            name = Text(_shown(row.path))  # Text, not markup: paths may hold brackets
            if row.other_settings and with_notes:  # its figures sit where a reader looks for the fit's: say so loudly
                name.append(f"\n  ≠ {row.note}", style="bold yellow")
            elif row.note and with_notes:
                name.append(f"\n  ↳ {row.note}", style="dim")
            table.add_row(name, *(Text(_cell(value[key], fmt)) for _header, key, fmt, _optional in columns))
        return table

    # Whether the numbers fit: a long note folds onto more lines instead.
    if Measurement.get(console, console.options.update_width(10_000), table(columns, "", False)).maximum <= console.width:
        console.print(table(columns, "\n".join(notes)))
        return
    split = next(i for i, c in enumerate(columns) if c[1] == "best_val_elbo")
    console.print(table(columns[:split], ""))
    console.print(table(columns[split:], "\n".join(notes)))


def _write_plot(rows: list[Run], metric: str, target: Path) -> None:
    """One PNG with ``metric`` against epoch for every row's run, written atomically.

    Raises:
        VAEZooError: If no run logged ``metric``, matplotlib is missing, or the file cannot be written.
    """
    curves = [(_shown(row.path), [(r["epoch"], r[metric]) for r in row.history if metric in r and "epoch" in r])
              for row in rows]
    curves = [(name, points) for name, points in curves if points]
    if not curves:
        known = sorted({k for row in rows for r in row.history for k in r if "/" in k})
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
        ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (" (nats per image)" if metric.endswith(("/elbo", "/nll", "/recon", "/kl")) else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    try:  # next to the target, then renamed over it: no reader sees half a file
        atomic_write(target, lambda file: fig.savefig(file, format="png"))
    except OSError as err:
        raise VAEZooError(f"cannot write the plot to {target}: {err.strerror or err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Compare runs in one table: variant, net, dataset, key hyperparameters, best and final val ELBO, test "
        f"ELBO/NLL/bpd, FID, epochs and wall time. Reads {_WHAT_IS_READ}, which every vaezoo run keeps (W&B's too). "
        "A `vaezoo test` run fills the test columns of the run whose checkpoint it evaluated when it tested the same "
        "data with the same iw_samples on the whole test set; else it keeps its own row, marked ≠."))
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_GLOB",
                        help="a run directory, a folder searched recursively, a glob, or a metrics.csv file")
    parser.add_argument("--plot", type=Path, metavar="PATH",
                        help="also write a PNG of --metric against epoch for every run")
    parser.add_argument("--metric", default="val/elbo", help="the metric --plot draws (default: val/elbo)")
    parser.add_argument("--sort", choices=("best", "name"), default="best",
                        help="best: highest best val ELBO first (default); name: by run path")
    return parser


def main(args: list[str] | None = None) -> int:
    """Entry point of ``vaezoo compare``.

    Args:
        args: The arguments after ``compare``; None reads ``sys.argv`` (after a leading ``compare``).

    Returns:
        The exit status: 0 when a run printed, 1 when the plot failed, 2 when no run was found or readable.
    """
    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["compare"] else sys.argv[1:]
    try:
        ns = _parser().parse_args(args)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    warnings: list[str] = []
    found, runs = _find_runs(ns.paths, warnings), []
    for path in found:
        try:
            runs.append(_read_run(path))
        except RunError as err:
            warnings.append(f"skipped {_shown(path)}: {err}")
            continue
        warnings.extend(f"{_shown(path)}: {note}" for note in runs[-1].notes)
    for line in warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not runs:
        searched = ", ".join(repr(p) for p in ns.paths)
        what = f"{len(found)} run(s) found, none readable (see the warnings above)" if found else "no runs found"
        print(f"{PROG}: error: {what}; searched {searched} for {_WHAT_IS_READ}", file=sys.stderr)
        return 2
    def order(row: tuple[Run, dict[str, Any]]) -> tuple[Any, ...]:
        best = row[1]["best_val_elbo"]
        if ns.sort == "name" or best is None or math.isnan(best):  # runs without a val ELBO go last
            return (ns.sort != "name", 0.0, _shown(row[0].path))
        return (False, -best, _shown(row[0].path))

    rows = sorted(((row, _values(row)) for row in _merge_tests(runs)), key=order)
    _print_table([row for row, _ in rows], [value for _, value in rows])
    if ns.plot is not None:
        try:
            _write_plot([row for row, _ in rows], ns.metric, ns.plot)
        except VAEZooError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {ns.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
