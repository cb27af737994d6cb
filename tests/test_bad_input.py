"""Bad input through the real CLI: one short `vaezoo: error:` message that names the problem and the fix.

The other cases of the list live beside the code they concern: unknown names, wrong config key and
missing data in test_cli.py, corrupt dataset files in test_data.py, plugins in test_registry.py,
FID weights in test_fid.py, NaN losses in test_faults.py, unwritable outputs in test_predict.py.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.data_files import copy_real_mnist
from tests.test_cli import REPO, SMALL, run_cli
from vaezoo import VAE
from vaezoo.data import MNISTDataModule
from vaezoo.errors import VAEZooError
from vaezoo.registry import DATASETS

RECIPE = str(REPO / "configs" / "mnist_mlp.yaml")
QUICK = [*SMALL, "--model.iw_samples", "2", "--images.every_n_epochs", "0", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]


@pytest.fixture
def data(tiny_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tiny_mnist[0]


def fails(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run `vaezoo ARGS`, check it fails with one short message and no traceback; return stderr."""
    code, _, err = run_cli(*args, capsys=capsys)
    notices = ("Seed set to", "vaezoo: the model is built as")  # information printed before the failure
    lines = [line for line in err.splitlines() if line.strip() and not any(n in line for n in notices)]
    assert code == 2, err
    assert "Traceback" not in err and "usage:" not in err
    assert lines[0].startswith("vaezoo: error: ") and len(lines) <= 3, err
    return err


# ----- config files and keys -----------------------------------------------------------------------


def test_missing_config_file(data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", "configs/nope.yaml")
    assert "vaezoo: error: --config: File does not exist: '" in err and "configs/nope.yaml'" in err


def test_invalid_yaml(data: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: [1, 2\nmodel: {}\n")
    err = fails(capsys, "fit", "--config", str(bad))
    assert "did not find expected ',' or ']'" in err and "line 2" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"trainer:\n\tmax_epochs: 1\n", ", line 2, column 1: a tab character. YAML indents with spaces only"),
        (b"", " is empty (or holds only comments): a config file is a YAML mapping of sections such as "
              "trainer:, model:, data:"),
        (b"# trainer: {max_epochs: 1}\n", " is empty (or holds only comments)"),
        (b"# two recipes\n- configs/mnist_mlp.yaml\n- configs/mnist_conv.yaml\n",
         ", line 2: the file holds a list, not a mapping: a config file is a YAML mapping of sections such as "
         "trainer:, model:, data:"),
        (b"max_epochs=3\n", ", line 1: the file holds a single value ('max_epochs=3'), not a mapping"),
        ("trainer:\n  max_epochs: 1  # caf\u00e9\n".encode("latin-1"),
         " is not UTF-8 text: line 2, column 23 holds the byte 0xe9"),
    ],
    ids=["tab", "empty", "only-comments", "list", "scalar", "latin-1"],
)
def test_config_file_that_is_not_a_yaml_mapping_is_named(content: bytes, expected: str, data: Path, tmp_path: Path,
                                                         capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    err = fails(capsys, "fit", "--config", RECIPE, "--config", str(bad))
    assert f"vaezoo: error: {bad}{expected}" in err


def test_section_given_key_colon_value_says_how_to_set_it(data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--trainer", "max_epochs:1")
    assert ("--trainer max_epochs:1 is not a file, and not a mapping either: YAML needs a space after the colon. "
            "Set one option with --trainer.max_epochs 1, or give a mapping: --trainer '{max_epochs: 1}'.") in err


def test_section_file_that_is_a_list_is_named(data: Path, tmp_path: Path, capsys) -> None:
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text("- max_epochs: 1\n")
    err = fails(capsys, "fit", "--config", RECIPE, "--trainer", str(trainer))
    assert (f"{trainer}, line 1: the file holds a list, not a mapping: a config file is a YAML mapping of --trainer "
            "options such as max_epochs: 10") in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], f"no dataset chosen: pass --data NAME (datasets: {', '.join(DATASETS.names())}), e.g. --data mnist"),
        (["--data.batch_size", "8"], "no dataset chosen: data settings were given (e.g. --data.root) but no dataset. "
                                     f"Choose one with --data NAME (datasets: {', '.join(DATASETS.names())}"),
    ],
    ids=["nothing", "settings-only"],
)
def test_model_without_data_asks_for_a_dataset(args: list[str], expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--model", "vanilla", *args)
    assert expected in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.latnet_dim", "3"], "Option 'latnet_dim' is not accepted. Did you mean 'latent_dim'?"),
        (["--data.batch_sise", "3"], "Option 'batch_sise' is not accepted. Did you mean 'batch_size'?"),
        (["--model.net.hidden_dimz", "[3]"], "Option 'hidden_dimz' is not accepted. Got value: "),
        (["--model.optimizer.lrr", "0.1"], "Did you mean 'lr'?"),
        (["--model.beta", "4"], "'beta' is an option of: beta (variant), betatc (variant); choose one first"),
        # abbreviations are refused: argparse took --trainer.max_epoch as --trainer.max_epochs
        (["--trainer.max_epoch", "3"], "arguments: --trainer.max_epoch 3. Did you mean '--trainer.max_epochs'?"),
        (["--seed_everythin", "3"], "arguments: --seed_everythin 3. Did you mean '--seed_everything'?"),
    ],
)
def test_unknown_key_is_named_with_a_close_match(args: list[str], expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, *args)
    assert expected in err
    assert "Every option, with its type and default: vaezoo fit --help" in err


def test_a_config_file_key_that_does_not_exist_gets_a_close_match(data: Path, tmp_path: Path, capsys) -> None:
    config = yaml.safe_load(Path(RECIPE).read_text())
    config["model"]["init_args"]["net"]["init_args"]["activaton"] = "relu"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    err = fails(capsys, "fit", "--config", str(bad))
    assert "Option 'activaton' is not accepted" in err and "Did you mean 'activation'?" in err


# ----- values out of range -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.latent_dim", "0"], "latent_dim must be a positive integer, got 0"),
        (["--model.latent_dim", "abc"], "--latent_dim: Expected a <class 'int'>. Got value: abc"),
        (["--data.batch_size", "0"], "batch_size must be a positive number of images"),
        (["--data.batch_size", "-8"], "batch_size must be a positive number of images"),
        (["--model.optimizer.lr", "0"], "the learning rate must be > 0, got 0.0"),
        (["--model.optimizer.lr", "-0.1"], "the optimizer refused its arguments: Invalid learning rate: -0.1"),
        (["--model.iw_samples", "0"], "iw_samples must be a positive number of importance samples or null (off), got 0"),
        (["--model", "beta", "--model.beta", "-1"], "beta must be >= 0, got -1"),
    ],
)
def test_values_out_of_range(args: list[str], expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK, *args)
    assert expected in err


STRICT = """
    from torch import nn

    from vaezoo import VAE, Net


    class StrictVAE(VAE):
        \"\"\"Checks its own argument the Python way.\"\"\"

        def __init__(self, gamma: float = 1.0, **kwargs) -> None:
            if gamma <= 0:
                raise ValueError(f"gamma must be > 0, got {gamma}")
            super().__init__(**kwargs)


    class StrictNet(Net):
        \"\"\"Checks its own argument the Python way, after the base class's.\"\"\"

        def __init__(self, image_shape, latent_dim, out_channels, width: int = 64) -> None:
            super().__init__(image_shape, latent_dim, out_channels)
            if width % 2:
                raise ValueError(f"width must be even, got {width}")
            self.encoder = nn.Sequential(nn.Flatten(), nn.LazyLinear(2 * latent_dim))
            self.decoder = nn.Sequential(nn.Linear(latent_dim, out_channels * 28 * 28), nn.Unflatten(1, (1, 28, 28)))
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "vz_strict.StrictVAE", "--model.gamma", "-1"],
         "vaezoo: error: vz_strict.StrictVAE refused its arguments: gamma must be > 0, got -1.0. Change that value "
         "in the config or on the command line"),
        (["--model.net", "vz_strict.StrictNet", "--model.net.width", "3"],
         "vaezoo: error: vz_strict.StrictNet refused its arguments: width must be even, got 3. Change that value"),
    ],
    ids=["variant", "net"],
)
def test_plugin_init_raising_value_error_is_one_line(args: list[str], expected: str, data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "vz_strict.py").write_text(textwrap.dedent(STRICT))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "vz_strict", raising=False)
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK, *args)
    assert expected in err


# ----- the machine ---------------------------------------------------------------------------------


def test_more_cpu_processes_than_cores(data: Path, capsys) -> None:
    too_many = str((os.cpu_count() or 1) + 1)
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK,
                "--trainer.accelerator", "cpu", "--trainer.devices", too_many)
    assert f"--trainer.devices {too_many} on the CPU asks for {too_many} training processes" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpu_asked_for_on_a_machine_without_one(data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK, "--trainer.accelerator", "gpu")
    assert "No supported gpu backend found!" in err and "Lightning refused a --trainer setting" in err


@pytest.mark.parametrize(("precision", "expected"), [
    ("16-true", "keeps the weights and Adam's state in fp16, which the CPU cannot train in"),
    ("transformer-engine", "needs an NVIDIA GPU with Transformer Engine"),
    ("8-mixed", "--trainer.precision"),  # not a precision at all: the parser names the option
])
def test_precision_the_cpu_cannot_run(precision: str, expected: str, data: Path, capsys) -> None:
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK, "--trainer.accelerator", "cpu",
                "--trainer.precision", precision)
    assert expected in err


# ----- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture
def trained(data: Path, capsys) -> Path:
    code, _, err = run_cli("fit", "--config", RECIPE, "--data.root", str(data), *QUICK, capsys=capsys)
    assert code == 0, err
    return Path("runs/mnist_mlp/version_0/checkpoints/last.ckpt").resolve()


def test_truncated_checkpoint(trained: Path, data: Path, tmp_path: Path, capsys) -> None:
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    err = fails(capsys, "test", "--config", RECIPE, "--data.root", str(data), *QUICK, "--ckpt_path", str(cut))
    assert f"--ckpt_path {cut} is not a complete checkpoint: it is cut off" in err


def test_a_text_file_as_checkpoint(data: Path, tmp_path: Path, capsys) -> None:
    page = tmp_path / "model.ckpt"
    page.write_text("<html>Not Found</html>")
    err = fails(capsys, "test", "--config", RECIPE, "--data.root", str(data), *QUICK, "--ckpt_path", str(page))
    assert "is not a complete checkpoint" in err


RECORDED: dict[str, VAE] = {}


class Recorder(L.Callback):
    """Keeps the model that `vaezoo test` evaluates."""

    def on_test_start(self, trainer: L.Trainer, pl_module: VAE) -> None:
        RECORDED["model"] = pl_module


def test_checkpoint_of_another_model_is_announced_and_run_settings_stay(trained: Path, data: Path, capsys) -> None:
    """LightningCLI builds the model from the checkpoint's hyperparameters (so the weights fit): vaezoo says
    what that changes, and keeps the settings that only steer this run (here iw_samples)."""
    RECORDED.clear()
    code, _, err = run_cli("test", "--config", str(REPO / "configs" / "mnist_conv.yaml"), "--data.root", str(data),
                           *QUICK, "--model.iw_samples", "3", "--ckpt_path", str(trained),
                           "--trainer.callbacks+=tests.test_bad_input.Recorder", capsys=capsys)
    assert code == 0, err
    assert (f"vaezoo: the model is built as {trained} was trained, not as the config says: net ConvNet(channels=[32, 64]"
            in err) and "-> MLPNet(hidden_dims=[200, 200], activation=tanh, init=pytorch); latent_dim 32 -> 50" in err
    model = RECORDED["model"]
    assert type(model.net).__name__ == "MLPNet" and model.iw_samples["test"] == 3


@pytest.mark.parametrize("trained_on", ["mnist", "cifar10"])
def test_checkpoint_for_other_images_names_both_datasets(trained_on: str, data: Path, tiny_cifar: Path, capsys) -> None:
    """The checkpoint's net cannot be built for, or run on, the other images: the cause is the data, not the layers."""
    runs = {"mnist": ("mnist_mlp", "1x28x28", ["--data.root", str(data)]),
            "cifar10": ("cifar_conv", "3x32x32", ["--data.root", str(tiny_cifar), "--model.net.channels", "[4, 4, 4]",
                                                  "--model.latent_dim", "2"])}
    (recipe, shape, args), (other_recipe, other_shape, other_args) = runs.pop(trained_on), *runs.values()
    code, _, err = run_cli("fit", "--config", str(REPO / "configs" / f"{recipe}.yaml"), *args, *QUICK, capsys=capsys)
    assert code == 0, err
    ckpt = Path(f"runs/{recipe}/version_0/checkpoints/last.ckpt").resolve()
    other = "cifar10" if trained_on == "mnist" else "mnist"
    err = fails(capsys, "test", "--config", str(REPO / "configs" / f"{other_recipe}.yaml"), *other_args, *QUICK,
                "--ckpt_path", str(ckpt))
    assert (f"vaezoo: error: --ckpt_path {ckpt} holds a model trained on {shape} images ({trained_on}), but this "
            f"config's data are {other_shape} images ({other}): a model runs only on images of the shape it was "
            f"trained on. Run it with --data {trained_on} (or with the config.yaml of its run folder), or use a "
            f"checkpoint trained on {other}.") in err
    assert "fewer layers" not in err


# ----- data ----------------------------------------------------------------------------------------


def test_damaged_test_images_gz_is_blamed_not_the_train_files(tmp_path: Path, monkeypatch, capsys) -> None:
    """The official .gz files, t10k-images cut off: torchvision extracts the train files, then fails on it."""
    root = copy_real_mnist(tmp_path / "data")
    damaged = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    monkeypatch.chdir(tmp_path)
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(root), *QUICK)
    assert (f"MNIST files under {damaged.parent} fail torchvision's md5 check: t10k-images-idx3-ubyte.gz (cut off or "
            "damaged), and fetching them again failed (<urlopen error network disabled in tests>). Replace them") in err
    assert "train-" not in err


class NaNPixels(MNISTDataModule):
    """Real MNIST batches, with a NaN pixel in the third training batch (as a broken custom dataset gives)."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer.training and self.trainer.global_step == 2:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x, y


def test_nan_in_the_input_data_is_named_as_the_data(tiny_mnist, tmp_path: Path) -> None:
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    model = VAE(latent_dim=4, iw_samples=None)
    with pytest.raises(VAEZooError, match=r"the training batch at step 2 \(epoch 0\) holds NaN or Inf pixels, so the loss became nan"):
        trainer.fit(model, NaNPixels(root=str(tiny_mnist[0]), val_size=16, batch_size=8))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----- no secrets in logged configs ----------------------------------------------------------------


def test_api_key_and_environment_never_reach_the_logged_config(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    key, secret = "k" * 40, "s3cr3t-value-of-the-environment"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MY_TOKEN", secret)
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    try:
        code, out, err = run_cli("fit", "--config", RECIPE, "--config", str(REPO / "configs" / "logger" / "wandb.yaml"),
                                 "--data.root", str(data), *QUICK, capsys=capsys)
    finally:
        import wandb

        wandb.teardown()
    assert code == 0, err
    written = [p for p in Path("runs").rglob("*") if p.is_file() and p.suffix != ".ckpt"]
    assert any(p.name == "config.yaml" for p in written) and any(p.suffix == ".wandb" for p in written)
    for path in written:
        content = path.read_bytes()
        assert key.encode() not in content and secret.encode() not in content, path


# ----- where the run writes ------------------------------------------------------------------------


def test_unwritable_run_folder_is_refused_before_any_work(data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, so no folder can be made under it")
    err = fails(capsys, "fit", "--config", RECIPE, "--data.root", str(data), *QUICK,
                "--trainer.logger.init_args.save_dir", str(blocker / "runs"))
    assert f"cannot write the run's files to {blocker / 'runs'}" in err
    assert "--trainer.logger.init_args.save_dir" in err
    assert not list(Path.cwd().rglob("*.ckpt"))  # nothing trained
