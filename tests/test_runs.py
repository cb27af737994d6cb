"""Runs never mix: one folder per run however close together they start, ``last``/``best`` only among runs
of the same settings, one code path for a checkpoint however it is named, and no empty run folders."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.data_files import write_mnist_idx
from tests.test_checkpoints import FAST, RECIPE
from tests.test_cli import REPO, run_cli
from vaezoo import runs

FIT = ["fit", "--config", str(RECIPE), *FAST, "--trainer.max_epochs", "1"]



def _claim_after(barrier: multiprocessing.synchronize.Barrier, root: str, queue: multiprocessing.Queue) -> None:
    barrier.wait()  # every process leaves the barrier at the same instant
    queue.put(runs.claim_version(Path(root)))


def test_processes_claiming_at_the_same_instant_get_different_versions(tmp_path: Path) -> None:
    (tmp_path / "version_0").mkdir(parents=True)  # an earlier run
    context = multiprocessing.get_context("spawn")
    n = 8
    barrier, queue = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_claim_after, args=(barrier, str(tmp_path), queue)) for _ in range(n)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    versions = sorted(queue.get(timeout=10) for _ in range(n))
    assert versions == list(range(1, n + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"version_{v}" for v in range(n + 1))


def test_a_claimed_folder_is_released_only_while_empty(tmp_path: Path) -> None:
    empty, used = tmp_path / "version_0", tmp_path / "version_1"
    used.mkdir(parents=True)
    (used / "metrics.csv").write_text("epoch\n0\n")
    empty.mkdir()
    runs.release([empty, used])
    assert not empty.exists() and (used / "metrics.csv").read_text() == "epoch\n0\n"


@pytest.mark.slow
def test_four_fits_started_together_each_get_their_own_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_mnist_idx(root)
    lrs = ["0.001", "0.002", "0.003", "0.004"]
    # A logger on a slow shared filesystem (NFS under a SLURM array): choosing the next version by listing the
    # folder takes a while, so processes that start together all see the same version free.
    (tmp_path / "slowfs.py").write_text(
        "import time\nfrom lightning.pytorch.loggers import CSVLogger\n\n\n"
        "class SlowCSVLogger(CSVLogger):\n"
        "    def _get_next_version(self):\n"
        "        version = super()._get_next_version()\n"
        "        time.sleep(3)\n"
        "        return version\n"
    )
    logger = ["--trainer.logger", "slowfs.SlowCSVLogger", "--trainer.logger.init_args.save_dir", "runs",
              "--trainer.logger.init_args.name", "mnist_mlp"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    # Each process imports everything first, then waits for the same instant to start its fit, as a sweep's
    # jobs do that were queued together.
    start_at = time.time() + 40
    wait_then_fit = ("import sys, time; from vaezoo.cli import main; "
                     "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); main(sys.argv[2:])")
    procs = [
        subprocess.Popen([sys.executable, "-c", wait_then_fit, str(start_at), *FIT, "--data.root", str(root),
                          "--model.optimizer.lr", lr, "--trainer.max_epochs", "2", *logger],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for lr in lrs
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    folders = sorted((tmp_path / "runs" / "mnist_mlp").iterdir())
    assert [f.name for f in folders] == [f"version_{i}" for i in range(4)]
    seen = set()
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        lr = config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
        seen.add(lr)
        # Every file of the folder belongs to the run of that config: the checkpoints' optimizer ...
        for ckpt in (folder / "checkpoints").glob("*.ckpt"):
            state = torch.load(ckpt, weights_only=True)
            assert state["optimizer_states"][0]["param_groups"][0]["lr"] == lr, ckpt
            assert state["hyper_parameters"]["optimizer"]["init_args"]["lr"] == lr, ckpt
        # ... and the metrics: one run's rows, each epoch's validation once.
        rows = (folder / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        epochs = [r.split(",")[header.index("epoch")] for r in rows[1:] if r.split(",")[header.index("val/elbo")]]
        assert epochs == ["0", "1"], rows
        # The summary of the run that wrote it names it.
        assert sum(f"Run folder: runs/mnist_mlp/{folder.name}" in out for out in outputs) == 1
    assert seen == {float(lr) for lr in lrs}


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--data.val_size", "64"], "leaves no training images"),  # fails in setup, before anything is written
     (["--data.batch_size", "1000"], "is more than the 48 training images")],  # after config.yaml and hparams.yaml
    ids=["in-setup", "after-config"],
)
def test_a_failed_fit_leaves_no_run_folder(args: list[str], expected: str, data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), *args, capsys=capsys)
    assert code == 2 and expected in err
    assert not Path("runs/mnist_mlp").exists() or not any(Path("runs/mnist_mlp").iterdir())


def test_an_explicit_version_that_holds_a_run_is_refused(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    before = Path("runs/mnist_mlp/version_0/metrics.csv").read_text()
    code, _, err = run_cli(*FIT, "--data.root", str(data), "--trainer.logger.init_args.version", "0", capsys=capsys)
    assert code == 2 and "runs/mnist_mlp/version_0, which already holds a run" in err
    assert Path("runs/mnist_mlp/version_0/metrics.csv").read_text() == before


def test_fit_summary_says_where_everything_went_and_its_commands_work(data: Path, capsys) -> None:
    code, out, err = run_cli(*FIT, "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    run = Path("runs/mnist_mlp/version_0")
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    assert f"vaezoo: fit done. Run folder: {run}" in out
    assert f"best checkpoint  {best} (val/elbo " in out and " nats per image)" in out
    assert f"last checkpoint  {run}/checkpoints/last.ckpt (step 6)" in out
    test_command = f"vaezoo test --config {run}/config.yaml --ckpt_path {best}"
    assert test_command in out
    assert f"vaezoo fit --config {run}/config.yaml --ckpt_path last --trainer.max_epochs 2" in out
    # The printed test command runs as printed, and prints a table with units, k and the checkpoint.
    code, out, err = run_cli(*test_command.split()[1:], "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    assert f"vaezoo test: {best} on the mnist test split (all 2 batches)" in out
    assert "test/nll (k=2)" in out and "nats per image" in out and "bits per dimension" in out
    assert "0.409867525100708" not in out and not any(len(tok) > 12 for tok in out.split() if tok[:1] in "-0123456789")
    assert "┃" not in out  # Lightning's own table, with 16 digits and no units, is not printed


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluating_without_a_checkpoint_is_refused(subcommand: str, data: Path, capsys) -> None:
    code, out, err = run_cli(subcommand, "--config", str(RECIPE), "--data.root", str(data), *FAST, capsys=capsys)
    assert code == 2
    assert f"vaezoo: error: vaezoo {subcommand} needs a trained model, and no --ckpt_path was given" in err
    assert "--ckpt_path last" in err and "test/elbo" not in out
    assert not Path("runs").exists() or not any(Path("runs").rglob("*.csv"))


def test_ckpt_path_naming_a_folder_says_it_is_a_folder(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli("test", "--config", str(RECIPE), "--data.root", str(data), *FAST,
                           "--ckpt_path", "runs/mnist_mlp/version_0", capsys=capsys)
    assert code == 2
    assert "--ckpt_path runs/mnist_mlp/version_0 is a folder, not a checkpoint file" in err
    assert "such as runs/mnist_mlp/version_0/checkpoints/" in err and "does not exist" not in err


def test_last_never_resumes_a_run_of_other_settings(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), "--model.optimizer.lr", "0.05", capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli(*FIT, "--data.root", str(data), "--model.optimizer.lr", "0.001", "--ckpt_path", "last",
                             capsys=capsys)
    assert code == 0, err
    assert "no checkpoint of a run with these settings yet, training from the start" in out
    assert "runs/mnist_mlp/version_0 was trained with other settings (model.optimizer.lr 0.05 (run) vs 0.001" in out
    new = Path("runs/mnist_mlp/version_1")
    saved = yaml.safe_load((new / "config.yaml").read_text())
    assert saved["ckpt_path"] is None and saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.001
    state = torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 0.001 and state["global_step"] == 6
    # The same settings again: resumes the lr 0.001 run, not the newer-or-older lr 0.05 one.
    code, out, err = run_cli(*FIT, "--data.root", str(data), "--model.optimizer.lr", "0.001", "--ckpt_path", "last",
                             "--trainer.max_epochs", "2", capsys=capsys)
    assert code == 0, err
    assert f"vaezoo: --ckpt_path last: {(new / 'checkpoints').resolve()}" in out


def test_recipes_sharing_one_folder_do_not_resume_each_other(data: Path, capsys) -> None:
    # As under W&B, where every recipe logs to <save_dir>/<project>: one folder for two recipes.
    shared = ["--trainer.logger.init_args.name", "shared"]
    code, _, err = run_cli(*FIT, "--data.root", str(data), *shared, capsys=capsys)
    assert code == 0, err
    beta = ["fit", "--config", str(REPO / "configs" / "mnist_beta.yaml"), *FAST, "--trainer.max_epochs", "1"]
    code, out, err = run_cli(*beta, "--data.root", str(data), *shared, "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert "training from the start" in out and "model BetaVAE (run)" not in out
    assert "model VAE (run) vs BetaVAE (this command)" in out


def test_ckpt_path_with_other_settings_is_refused_for_fit_unless_asked(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    ckpt = "runs/mnist_mlp/version_0/checkpoints/last.ckpt"
    resume = [*FIT, "--data.root", str(data), "--trainer.max_epochs", "2", "--ckpt_path", ckpt]
    code, _, err = run_cli(*resume, "--model.optimizer.lr", "0.01", "--data.batch_size", "4", capsys=capsys)
    assert code == 2
    assert "was trained with other settings than this command's: data.batch_size 8 (run) vs 4 (this command); " \
           "model.optimizer.lr 0.001 (run) vs 0.01 (this command)" in err
    assert "--ckpt_mismatch use_checkpoint" in err
    assert sorted(p.name for p in Path("runs/mnist_mlp").iterdir()) == ["version_0"]  # nothing written
    # Asked for: the run goes on as it was trained, and config.yaml says so.
    code, _, err = run_cli(*resume, "--model.optimizer.lr", "0.01", "--data.batch_size", "4",
                           "--ckpt_mismatch", "use_checkpoint", capsys=capsys)
    assert code == 0, err
    saved = yaml.safe_load(Path("runs/mnist_mlp/version_1/config.yaml").read_text())
    assert saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.001
    assert saved["data"]["init_args"]["batch_size"] == 8 and saved["data"]["init_args"]["root"] == str(data)
    state = torch.load("runs/mnist_mlp/version_1/checkpoints/last.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 0.001 and state["global_step"] == 12


def test_last_and_a_path_take_one_code_path(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), "--model.net.hidden_dims", "[32]", capsys=capsys)
    assert code == 0, err
    evaluate = ["test", "--config", str(RECIPE), "--data.root", str(data), *FAST]
    # Named by its path, the checkpoint's model is built, with the notice.
    path = "runs/mnist_mlp/version_0/checkpoints/last.ckpt"
    code, out, err = run_cli(*evaluate, "--ckpt_path", path, capsys=capsys)
    assert code == 0, err
    assert f"vaezoo: the model is built as {path} was trained, not as the config says: net MLPNet(hidden_dims=[200, 200]" in err
    # Named as last, the same file, rebuilt the same way: the run was trained with other settings than this
    # config, so `last` names them instead of picking it; with the run's own config it is found and scored.
    code, _, err = run_cli(*evaluate, "--ckpt_path", "last", capsys=capsys)
    assert code == 2 and "Traceback" not in err and "Missing key" not in err
    assert "model.net.hidden_dims [32] (run) vs [200, 200] (this command)" in err
    code, out, err = run_cli("test", "--config", "runs/mnist_mlp/version_0/config.yaml", "--ckpt_path", "last",
                             capsys=capsys)
    assert code == 0, err
    assert f"vaezoo test: {Path(path).resolve().parent}/latest-epoch=0-step=6.ckpt" in out
    saved = yaml.safe_load(Path("runs/mnist_mlp/version_2/config.yaml").read_text())
    assert saved["ckpt_path"].endswith("latest-epoch=0-step=6.ckpt")


def test_predict_leaves_no_run_folder_and_writes_its_config_beside_its_files(data: Path, capsys) -> None:
    code, _, err = run_cli(*FIT, "--data.root", str(data), capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli("predict", "--config", str(RECIPE), "--data.root", str(data), *FAST, "--ckpt_path", "last",
                           "--predict_writer.output_dir", "out", "--predict_writer.tasks", "[encode]", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in Path("runs/mnist_mlp").iterdir()) == ["version_0"]
    assert sorted(p.name for p in Path.cwd().iterdir()) == ["out", "runs"]  # no checkpoints/ or lightning_logs/
    saved = yaml.safe_load(Path("out/config.yaml").read_text())
    assert saved["ckpt_path"].endswith(".ckpt") and Path("out/codes.npz").is_file()
