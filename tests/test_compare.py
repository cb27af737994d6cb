"""`vaezoo compare`: a table over real tiny runs (W&B's included), merged test runs, broken runs, globs, the plot."""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.network import block_network
from tests.data_files import write_mnist_idx
from vaezoo.cli import main as vaezoo
from vaezoo.compare import main as compare

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_mlp.yaml"
BETAS = (0.5, 2.0, 8.0)  # fits version_0, version_1, version_2; version_3 tests version_0
TINY = [
    "--data.val_size", "16", "--data.batch_size", "8", "--model", "beta", "--model.iw_samples", "10",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@contextlib.contextmanager
def _offline_in(base: Path) -> Iterator[pytest.MonkeyPatch]:
    """Work in ``base`` with the network off, for fixtures that outlive one test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        block_network(mp)  # conftest's no_network serves single tests only, not module fixtures
        mp.setattr(sys, "argv", ["vaezoo"])
        try:
            yield mp
        finally:
            import wandb

            wandb.teardown()  # W&B's process-wide settings (its folders) must not outlive the fixture


def _tiny_args(base: Path, beta: float, *extra: str) -> list[str]:
    """Arguments of a tiny β-VAE run on tiny MNIST (written to base/data on first use)."""
    root = base / "data"
    if not root.exists():
        write_mnist_idx(root, n_train=64, n_test=16)
    return ["--config", str(CONFIG), *extra, "--data.root", str(root), *TINY, "--model.beta", str(beta)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny β-VAE fits (runs/mnist_mlp/version_0..2) and a test of the first (version_3), built once."""
    base = tmp_path_factory.mktemp("compare")
    with _offline_in(base):
        for beta in BETAS:
            vaezoo(["fit", *_tiny_args(base, beta), "--trainer.max_epochs", "2"])
        ckpt = "runs/mnist_mlp/version_0/checkpoints/last.ckpt"
        vaezoo(["test", *_tiny_args(base, BETAS[0]), "--ckpt_path", ckpt])
    return base


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at 80 columns otherwise


def run_compare(*args: str, cwd: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        code = compare(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def parse_table(out: str) -> dict[str, dict[str, str]]:
    """The rows of a printed table by run, each ``{header: cell}`` plus ``note`` (the run's second line)."""
    lines = [line.rstrip() for line in out.splitlines()]
    header_lines = [[c.strip() for c in line.strip("┃").split("┃")] for line in lines if line.startswith("┃")]
    headers = [" ".join(part for part in parts if part) for parts in zip(*header_lines)]  # two-line headers
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if any(cells[1:]):
                row = rows[cells[0]] = dict(zip(headers, cells), note="")
            else:
                row["note"] += cells[0]
    return rows


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(run: Path, key: str) -> list[float]:
    return [float(row[key]) for row in metrics(run) if row.get(key)]


def test_table_has_every_beta_its_best_val_elbo_and_the_merged_test_nll(workdir: Path, capsys) -> None:
    code, out, err = run_compare("runs", cwd=workdir, capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    fits = [f"runs/mnist_mlp/version_{i}" for i in range(3)]
    assert sorted(rows) == fits  # the test run (version_3) is merged, not a row of its own
    for run, beta in zip(fits, BETAS):
        row, val_elbo = rows[run], column(workdir / run, "val/elbo")
        names = (row["variant"], row["net"], row["dataset"], row["β"])  # class names: no torch to look up registry names
        assert names == ("BetaVAE", "MLPNet", "MNISTDataModule", f"{beta:g}")
        assert row["val ELBO best"] == f"{max(val_elbo):.2f}"
        assert row["val ELBO final"] == f"{val_elbo[-1]:.2f}"
        hyper = (row["latent"], row["lr"], row["batch"], row["likelihood"], row["epochs"])
        assert hyper == ("50", "0.001", "8", "Bernoulli", "2")
    tested = workdir / "runs/mnist_mlp/version_3"
    assert rows[fits[0]]["test NLL"] == f"{column(tested, 'test/nll')[-1]:.2f}"
    assert rows[fits[0]]["test ELBO"] == f"{column(tested, 'test/elbo')[-1]:.2f}"
    assert "runs/mnist_mlp/version_3" in rows[fits[0]]["note"]
    assert rows[fits[1]]["test NLL"] == rows[fits[2]]["test NLL"] == "—"
    best = {run: max(column(workdir / run, "val/elbo")) for run in fits}
    assert list(rows) == sorted(fits, key=best.__getitem__, reverse=True)  # --sort best is the default


def test_a_test_run_without_its_fit_run_is_a_row_of_its_own(workdir: Path, capsys) -> None:
    code, out, err = run_compare("runs/mnist_mlp/version_3", cwd=workdir, capsys=capsys)
    assert code == 0, err
    row = parse_table(out)["runs/mnist_mlp/version_3"]
    assert row["test NLL"] == f"{column(workdir / 'runs/mnist_mlp/version_3', 'test/nll')[-1]:.2f}"
    assert row["val ELBO best"] == "—"
    assert "runs/mnist_mlp/version_0/checkpoints/last.ckpt" in row["note"]


def test_a_narrow_terminal_gets_two_tables_with_every_number_whole(workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = run_compare("runs", cwd=workdir, capsys=capsys)
    assert code == 0, err
    assert sum(line.startswith("┏") for line in out.splitlines()) == 2  # hyperparameters, then results
    assert max(len(line) for line in out.splitlines()) <= 120 and "…" not in out
    for i in range(3):
        assert f"{max(column(workdir / f'runs/mnist_mlp/version_{i}', 'val/elbo')):.2f}" in out


def test_broken_runs_are_named_and_the_others_still_print(workdir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    for name, text in {"version_0": "", "version_1": "epoch,step,val/elbo\n0,5,-500.0\n1,11\n2,17,-499.0\n"}.items():
        (broken / name).mkdir(parents=True)
        (broken / name / "metrics.csv").write_text(text)
    code, out, err = run_compare("runs", str(broken), "--sort", "name", cwd=workdir, capsys=capsys)
    assert code == 0, err
    assert f"skipped {broken / 'version_0'}: metrics.csv is empty" in err
    assert f"skipped {broken / 'version_1'}: metrics.csv is corrupt (line 3 has 2 fields" in err
    assert list(parse_table(out)) == [f"runs/mnist_mlp/version_{i}" for i in range(3)]  # --sort name


def test_globs_are_expanded_even_when_the_shell_did_not(workdir: Path, capsys) -> None:
    code, out, err = run_compare("runs/*/version_[12]", "--sort", "name", cwd=workdir, capsys=capsys)
    assert code == 0, err
    assert list(parse_table(out)) == ["runs/mnist_mlp/version_1", "runs/mnist_mlp/version_2"]


def test_no_runs_found_exits_2_and_says_what_was_searched(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run_compare("empty", "nowhere/*/version_*", cwd=tmp_path, capsys=capsys)
    assert code == 2
    assert out == ""
    assert "error: no runs found; searched 'empty', 'nowhere/*/version_*' for" in err
    assert "metrics.csv" in err and "Traceback" not in err


def test_plot_writes_one_png_atomically(workdir: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "curves.png"
    code, out, err = run_compare("runs", "--plot", str(target), cwd=workdir, capsys=capsys)
    assert code == 0, err
    with Image.open(target) as image:
        image.verify()  # a complete, decodable PNG
        assert image.format == "PNG" and 400 <= image.width <= 4000 and 300 <= image.height <= 4000
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind
    code, _, err = run_compare("runs", "--plot", str(target), "--metric", "val/nope", cwd=workdir, capsys=capsys)
    assert code == 1 and "no run logged 'val/nope'" in err and "val/elbo" in err


# ------------------------------------------------- tests on other data or settings than the fit's

Config = dict[str, Any]
FIT = "runs/mnist_mlp/version_0"
OTHER = "≠ test of runs/mnist_mlp/version_0 on other settings: "


def load_config(run: Path) -> Config:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.fixture
def tests_of_a_fit(workdir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Copy the real fit (version_0) to tmp_path; the fixture's value writes tests of it, version_1, 2, ...

    Each test is the real test run's ``config.yaml`` (version_3 of ``workdir``) edited by a function
    ``edit(fit_config, test_config)`` (an emptied fit_config deletes the fit's file), with a
    ``test/elbo`` of -100 - <version> and a later mtime than the tests before it.
    """
    fit, real_test = tmp_path / FIT, workdir / "runs/mnist_mlp/version_3"
    shutil.copytree(workdir / FIT, fit, ignore=shutil.ignore_patterns("checkpoints", "images"))
    real_fit = load_config(fit)
    made: list[Path] = []

    def add(edit: Callable[[Config, Config], None]) -> Path:
        fit_config, test_config = copy.deepcopy(real_fit), load_config(real_test)
        edit(fit_config, test_config)
        if fit_config:
            (fit / "config.yaml").write_text(yaml.safe_dump(fit_config, sort_keys=False))
        else:  # the fit's config.yaml is gone
            (fit / "config.yaml").unlink(missing_ok=True)
        version = len(made) + 1
        made.append(folder := tmp_path / f"runs/mnist_mlp/version_{version}")
        shutil.copytree(real_test, folder, ignore=shutil.ignore_patterns("images"))
        (folder / "config.yaml").write_text(yaml.safe_dump(test_config, sort_keys=False))
        rows = [{**row, "test/elbo": str(-100.0 - version)} for row in metrics(real_test)]
        with open(folder / "metrics.csv", "w", newline="") as f:
            (writer := csv.DictWriter(f, fieldnames=list(rows[0]))).writeheader()
            writer.writerows(rows)
        os.utime(folder / "metrics.csv", (1e9 + version, 1e9 + version))  # the order of tests: the latest wins
        return folder

    return add


def _model(config: Config) -> Config:
    return config["model"]["init_args"]


def _data(config: Config) -> Config:
    return config["data"]["init_args"]


def _fashion(fit: Config, test: Config) -> None:
    test["data"]["class_path"] = "vaezoo.data.mnist.FashionMNISTDataModule"


def _everything(fit: Config, test: Config) -> None:
    _fashion(fit, test)
    _model(fit)["iw_samples"], _model(test)["iw_samples"] = 1000, 10
    test["trainer"]["limit_test_batches"] = 0.1


OTHER_SETTINGS: dict[str, tuple[Callable[[Config, Config], None], str]] = {
    "other data": (_fashion, "data FashionMNISTDataModule (fit: MNISTDataModule)"),
    "another k": (lambda fit, test: _model(test).update(iw_samples=100), "iw_samples 100 (fit: 10)"),
    "nll off": (lambda fit, test: _model(test).update(iw_samples=None), "iw_samples null (fit: 10)"),
    "a fraction of the test set": (
        lambda fit, test: test["trainer"].update(limit_test_batches=0.25), "limit_test_batches 0.25 (partial)"
    ),
    "one test batch": (
        lambda fit, test: test["trainer"].update(limit_test_batches=1), "limit_test_batches 1 (partial)"
    ),
    "grey levels": (lambda fit, test: _data(test).update(binarize="none"), "binarize none (fit: dynamic)"),
    "another binarisation draw": (lambda fit, test: _data(test).update(seed=1), "seed 1 (fit: 0)"),
    "a fit without its config.yaml": (lambda fit, test: fit.clear(), "data MNISTDataModule (fit: not recorded)"),
    "everything": (
        _everything,
        "data FashionMNISTDataModule (fit: MNISTDataModule); iw_samples 10 (fit: 1000); limit_test_batches 0.1 (partial)",
    ),
}


@pytest.mark.parametrize("case", OTHER_SETTINGS)
def test_a_test_on_other_settings_keeps_its_own_row_and_names_the_differences(
    case: str, tests_of_a_fit: Callable[..., Path], capsys
) -> None:
    edit, differences = OTHER_SETTINGS[case]
    base = [tests_of_a_fit(edit) for _ in range(2)][0].parents[2]  # two such tests: neither is merged
    code, out, err = run_compare("runs", cwd=base, capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    assert sorted(rows) == [FIT, "runs/mnist_mlp/version_1", "runs/mnist_mlp/version_2"]
    assert rows[FIT]["test ELBO"] == "—" and rows[FIT]["note"] == ""  # the fit was never tested as it was trained
    for version in (1, 2):
        test = rows[f"runs/mnist_mlp/version_{version}"]
        assert test["test ELBO"] == f"{-100.0 - version:.2f}"
        assert test["note"].replace(" ", "") == (OTHER + differences).replace(" ", "")  # rich may wrap the note
    assert "≠ a test on other data or evaluation settings" in out  # the caption says what the mark means


def _recorded_by_one_side_only(fit: Config, test: Config) -> None:
    """Settings that one config lacks (written by another vaezoo version) are not compared."""
    _data(test)["seed"], _model(test)["iw_samples"] = 7, 1000
    del _data(fit)["seed"], _model(fit)["iw_samples"], _data(test)["binarize"]
    del test["trainer"]["limit_test_batches"]


def _unscored(fit: Config, test: Config) -> None:
    _data(test).update(root="elsewhere", download=False, batch_size=3, eval_batch_size=5, val_size=7, on_device=False)
    _model(test).update(val_iw_samples=4, compile=True)
    test["trainer"].update(limit_test_batches=1.0, precision="64-true")


MATCHING: dict[str, Callable[[Config, Config], None]] = {
    "the same settings": lambda fit, test: None,
    "settings recorded by one side only": _recorded_by_one_side_only,
    "settings that change no test figure": _unscored,
}


@pytest.mark.parametrize("case", MATCHING)
def test_a_test_on_the_fits_settings_is_merged(case: str, tests_of_a_fit: Callable[..., Path], capsys) -> None:
    test = tests_of_a_fit(MATCHING[case])
    code, out, err = run_compare("runs", cwd=test.parents[2], capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    assert list(rows) == [FIT]
    assert rows[FIT]["test ELBO"] == "-101.00"
    assert rows[FIT]["note"] == "↳ test: runs/mnist_mlp/version_1"


def test_the_latest_matching_test_wins_over_a_later_one_on_other_data(
    tests_of_a_fit: Callable[..., Path], capsys
) -> None:
    tests_of_a_fit(lambda fit, test: None)
    tests_of_a_fit(lambda fit, test: None)
    base = tests_of_a_fit(_fashion).parents[2]  # the latest test of all
    code, out, err = run_compare("runs", cwd=base, capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    assert rows[FIT]["test ELBO"] == "-102.00" and rows[FIT]["note"] == "↳ test: runs/mnist_mlp/version_2"
    assert rows["runs/mnist_mlp/version_1"]["note"] == "↳ another test of runs/mnist_mlp/version_0"
    assert rows["runs/mnist_mlp/version_3"]["test ELBO"] == "-103.00"
    assert rows["runs/mnist_mlp/version_3"]["note"].startswith("≠ test of runs/mnist_mlp/version_0")


def test_vaezoo_test_on_fashion_mnist_of_an_mnist_fit_is_not_its_test_score(
    workdir: Path, tmp_path: Path, capsys
) -> None:
    shutil.copytree(workdir / FIT, tmp_path / FIT, symlinks=True)  # the fit with its checkpoints
    data = tmp_path / "data"
    write_mnist_idx(data, n_train=64, n_test=16)
    write_mnist_idx(data, n_train=64, n_test=16, seed=1, folder="FashionMNIST")
    with _offline_in(tmp_path):
        ckpt = f"{FIT}/checkpoints/last.ckpt"
        vaezoo(["test", *_tiny_args(tmp_path, BETAS[0], "--data", "fashion_mnist"), "--ckpt_path", ckpt])
    tested = tmp_path / "runs/mnist_mlp/version_1"
    capsys.readouterr()  # the test's own printout (Lightning's results table) is not compare's
    code, out, err = run_compare("runs", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    assert rows[FIT]["test ELBO"] == rows[FIT]["test NLL"] == "—"
    test = rows["runs/mnist_mlp/version_1"]
    assert test["test ELBO"] == f"{column(tested, 'test/elbo')[-1]:.2f}"
    assert test["dataset"] == "FashionMNISTDataModule"
    differences = "data FashionMNISTDataModule (fit: MNISTDataModule)"
    assert test["note"].replace(" ", "") == (OTHER + differences).replace(" ", "")


def test_a_wandb_fit_and_its_test_compare_through_their_csv_record(tmp_path: Path, capsys) -> None:
    """W&B runs (offline, configs/logger/wandb.yaml) read like CSV runs, and a test merges into its fit."""
    wandb_config = str(CONFIG.parent / "logger" / "wandb.yaml")
    with _offline_in(tmp_path) as mp:
        for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(tmp_path / "wandb-home"))
        mp.setenv("WANDB_MODE", "offline")
        args = _tiny_args(tmp_path, BETAS[0], "--config", wandb_config, "--images.every_n_epochs", "0")
        vaezoo(["fit", *args, "--trainer.max_epochs", "2"])
        (ckpt,) = Path("runs/vaezoo").glob("*/checkpoints/last.ckpt")
        vaezoo(["test", *args, "--ckpt_path", str(ckpt)])
    fit_run = tmp_path / ckpt.parents[1]
    (tested,) = [p.parent for p in (tmp_path / "runs/vaezoo").glob("*/metrics.csv") if p.parent != fit_run]
    capsys.readouterr()
    code, out, err = run_compare("runs", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    rows = parse_table(out)
    assert list(rows) == [str(ckpt.parents[1])]  # the test run is merged, not a row of its own
    (fit,) = rows.values()
    assert fit["val ELBO best"] == f"{max(column(fit_run, 'val/elbo')):.2f}"
    assert fit["test NLL"] == f"{column(tested, 'test/nll')[-1]:.2f}"
    assert (fit["variant"], fit["dataset"], fit["epochs"]) == ("BetaVAE", "MNISTDataModule", "2")
    assert fit["note"] == f"↳ test: {tested.relative_to(tmp_path)}"


def test_vaezoo_compare_never_imports_torch(tmp_path: Path) -> None:
    run = tmp_path / "runs/mnist_mlp/version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,val/elbo\n0,5,-120.5\n1,11,-110.25\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"class_path": "vaezoo.models.beta.BetaVAE"}}))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "vaezoo", "compare", "runs"], cwd=tmp_path,
                          env={**os.environ, "COLUMNS": "300"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runs/mnist_mlp/version_0" in done.stdout and "-110.25" in done.stdout and "BetaVAE" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "yaml" in imported  # the check sees what compare imports ...
    assert not {name for name in imported if name.split(".")[0] in ("torch", "lightning")}  # ... and no torch
