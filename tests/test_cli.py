"""The `vaezoo` command: every shipped config, names on the command line, plugins, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import yaml

from tests.data_files import write_mnist_idx
from tests.plugins import DEMO_VARIANT, write_plugin
from vaezoo.introspect import import_object

from vaezoo import VAE, BetaVAE, ConvNet, Net
from vaezoo.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SMALL = ["--data.val_size", "16", "--data.batch_size", "8"]  # the tiny datasets hold 64 (MNIST) / 40 (CIFAR) images


@pytest.fixture
def roots(tiny_mnist, tiny_cifar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Tiny MNIST, Fashion-MNIST, CIFAR-10 and CelebA in one root, and the run directory as the working directory."""
    from tests.test_celeba import patch_celeba_md5s, write_celeba

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # CelebA's decoded splits
    patch_celeba_md5s(monkeypatch, write_celeba(tmp_path))  # 8 train / 4 val / 4 test
    write_mnist_idx(tiny_mnist[0], folder="FashionMNIST")  # the same tiny files in Fashion-MNIST's folder
    return {"mnist": tiny_mnist[0], "fashion_mnist": tiny_mnist[0], "cifar10": tiny_cifar, "celeba": tmp_path}


def run_cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run `vaezoo ARGS` in-process; returns (exit code, stdout, stderr)."""
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["vaezoo"])  # args come from the call, as from Python
            main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def dataset_of(config: Path) -> str:
    return yaml.safe_load(config.read_text())["data"]["class_path"]


def test_configs_are_shipped() -> None:
    assert {c.name for c in CONFIGS} >= {"mnist_mlp.yaml", "mnist_conv.yaml", "mnist_beta.yaml", "cifar_conv.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_config_prints_its_config(config: Path, roots, capsys) -> None:
    code, out, err = run_cli("fit", "--config", str(config), "--print_config", capsys=capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert issubclass(import_object(printed["model"]["class_path"]), VAE)
    assert issubclass(import_object(printed["model"]["init_args"]["net"]["class_path"]), Net)


def tiny_data_args(config: Path) -> list[str]:
    """The settings a recipe needs to train on the tests' tiny splits: small batches and validation split
    (CelebA's splits are the official partition: no val_size), and a VampPrior no more pseudo-inputs than the
    split holds images (refused otherwise)."""
    sizes = ["--data.batch_size", "4"] if dataset_of(config) == "celeba" else SMALL
    return sizes + (["--model.prior.pseudo_inputs", "8"] if "class_path: vamp" in config.read_text() else [])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_config_runs_fast_dev_run(config: Path, roots, capsys) -> None:
    code, out, err = run_cli(
        "fit", "--config", str(config), "--data.root", str(roots[dataset_of(config)]), *tiny_data_args(config),
        "--trainer.fast_dev_run", "true", capsys=capsys,
    )
    assert code == 0, err


def test_fit_then_test_reports_nats_per_image(roots, capsys) -> None:
    config = str(REPO / "configs" / "mnist_mlp.yaml")
    common = ["--config", config, "--data.root", str(roots["mnist"]), *SMALL]
    code, _, err = run_cli("fit", *common, "--trainer.max_epochs", "2", capsys=capsys)
    assert code == 0, err
    ckpt = Path("runs/mnist_mlp/version_0/checkpoints/last.ckpt")
    assert ckpt.exists()
    code, out, err = run_cli("test", *common, "--ckpt_path", str(ckpt), capsys=capsys)
    assert code == 0, err
    for key in ("test/elbo", "test/recon", "test/kl", "test/bpd", "test/loss", "test/nll", "test/nll_bpd",
                "test/mse", "test/psnr", "test/active_units"):
        assert key in out
    metrics = Path("runs/mnist_mlp/version_1/metrics.csv").read_text()
    assert "test/elbo" in metrics


def test_variant_and_net_switch_by_name_on_the_command_line(roots, capsys) -> None:
    code, out, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"),
        "--model", "beta", "--model.beta", "2.5", "--model.net", "conv", "--model.net.channels", "[8, 16]",
        "--print_config", capsys=capsys,
    )
    assert code == 0, err
    model = yaml.safe_load(out)["model"]
    assert import_object(model["class_path"]) is BetaVAE
    assert model["init_args"]["beta"] == 2.5
    assert model["init_args"]["latent_dim"] == 50  # kept from the config
    net = model["init_args"]["net"]
    assert import_object(net["class_path"]) is ConvNet
    assert net["init_args"]["channels"] == [8, 16]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "betta"], "unknown variant 'betta'. Did you mean 'beta'? Known variants: beta, "),
        (["--model.net", "transformer"], "unknown net 'transformer'. Known nets: conv, mlp"),
        (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    ],
)
def test_unknown_names_list_the_known_ones(args: list[str], expected: str, roots, capsys) -> None:
    code, _, err = run_cli("fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), *args, capsys=capsys)
    assert code == 2
    assert expected in err


def test_wrong_config_key_is_named(roots, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load((REPO / "configs" / "mnist_mlp.yaml").read_text())
    config["model"]["init_args"]["latnet_dim"] = 8
    bad.write_text(yaml.safe_dump(config))
    code, _, err = run_cli("fit", "--config", str(bad), capsys=capsys)
    assert code == 2
    assert "latnet_dim" in err


def test_missing_data_offline_says_where_to_put_the_files(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(tmp_path / "empty"),
        capsys=capsys,
    )
    assert code == 2
    assert "vaezoo: error:" in err and "Traceback" not in err
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "empty" / "MNIST" / "raw") in err


def test_variants_lists_names_descriptions_and_sources(capsys) -> None:
    code, out, _ = run_cli("variants", capsys=capsys)
    assert code == 0
    assert "vanilla" in out and "Kingma & Welling" in out and "[vaezoo: vaezoo.models.base.VAE]" in out
    assert "conv" in out and "mnist" in out and "logistic" in out


def _vaezoo(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "vaezoo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_plugin_package_is_discovered_and_trainable_by_name(tiny_mnist, tmp_path: Path) -> None:
    site = write_plugin(tmp_path / "site", "vaezoo-halfkl", "vz_halfkl", DEMO_VARIANT,
                        {"vaezoo.variants": {"halfkl": "vz_halfkl:HalfKLVAE"}})
    listing = _vaezoo("variants", site=site, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "halfkl" in listing.stdout and "plugin vaezoo-halfkl 0.1" in listing.stdout
    fit = _vaezoo(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--model", "halfkl",
        "--data.root", str(tiny_mnist[0]), *SMALL, "--trainer.fast_dev_run", "true", site=site, cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr


def test_broken_plugin_warns_and_the_cli_still_works(tiny_mnist, tmp_path: Path) -> None:
    site = write_plugin(tmp_path / "site", "vaezoo-broken", "vz_broken", "raise ImportError('needs a missing lib')\n",
                        {"vaezoo.variants": {"broken": "vz_broken:Broken"}})
    fit = _vaezoo(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(tiny_mnist[0]), *SMALL,
        "--trainer.fast_dev_run", "true", site=site, cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr
    assert "vaezoo variant plugin 'broken' (vz_broken:Broken, from vaezoo-broken 0.1) failed to load" in fit.stderr
    assert "needs a missing lib" in fit.stderr


def test_missing_checkpoint_is_named_before_anything_runs(roots, capsys) -> None:
    code, _, err = run_cli(
        "test", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(roots["mnist"]),
        "--ckpt_path", "runs/nope/last.ckpt", capsys=capsys,
    )
    assert code == 2
    assert "--ckpt_path runs/nope/last.ckpt does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("k", ["0", "-5"])
def test_non_positive_importance_samples_are_refused(k: str, roots, capsys) -> None:
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(roots["mnist"]),
        "--model.iw_samples", k, capsys=capsys,
    )
    assert code == 2
    assert f"iw_samples must be a positive number of importance samples or null (off), got {k}" in err


def test_test_prints_fid_with_a_pluggable_extractor(roots, capsys) -> None:
    code, out, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(roots["mnist"]), *SMALL,
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--images.every_n_epochs", "0", capsys=capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        "test", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(roots["mnist"]), *SMALL,
        "--ckpt_path", "last",
        "--model.iw_samples", "5", "--fid.num_samples", "16", "--fid.feature", "vaezoo.callbacks.fid.RandomConvFeatures",
        "--fid.feature.num_features", "8", capsys=capsys,
    )
    assert code == 0, err
    assert "test/fid" in out


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["--version"]])
def test_top_level_help_and_version_import_neither_torch_nor_lightning(args: list[str]) -> None:
    code = (
        "import sys; from vaezoo.command import main; main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'lightning', 'torchmetrics', 'wandb', 'matplotlib') if m in sys.modules); "
        "print('HEAVY', heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert ("vaezoo 0.1.0 (torch " in done.stdout) if args == ["--version"] else ("usage: vaezoo" in done.stdout)


def test_top_level_help_lists_exactly_the_subcommands_there_are() -> None:
    from lightning.pytorch.cli import LightningCLI

    from vaezoo.command import HELP

    usage = HELP.splitlines()[0]
    listed = usage[usage.index("{") + 1 : usage.index("}")].split(",")
    assert listed == [*LightningCLI.subcommands(), "variants", "compare", "compress", "decompress"]
    for name in listed:
        assert f"\n  {name} " in HELP  # each has its line of description


def test_the_parser_reads_init_parameters_without_the_model_stack() -> None:
    code = ("import sys, vaezoo.parser; "
            "print('LOADED', sorted(m for m in sys.modules if m.startswith('vaezoo.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split("LOADED", 1)[1]
    assert "vaezoo.models" not in loaded and "vaezoo.nets" not in loaded, loaded


class RecordCallbacks(L.Callback):
    """Records the types of the Trainer's callbacks when fitting or predicting starts."""

    seen: ClassVar[list[str]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        RecordCallbacks.seen = [type(cb).__name__ for cb in trainer.callbacks]


@pytest.mark.parametrize(("extra", "fid"), [([], False), (["--fid.num_samples", "8"], True)])
def test_idle_callbacks_are_not_attached(roots, capsys, extra: list[str], fid: bool) -> None:
    """FID with no samples and the prediction writer outside predict would only cost Lightning's dispatch per hook."""
    code, _, err = run_cli(
        "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--data.root", str(roots["mnist"]), *SMALL,
        "--trainer.fast_dev_run", "true", "--trainer.callbacks+=tests.test_cli.RecordCallbacks", *extra, capsys=capsys,
    )
    assert code == 0, err
    assert ("FID" in RecordCallbacks.seen) is fid
    assert "PredictionWriter" not in RecordCallbacks.seen and "ImageLogger" in RecordCallbacks.seen
