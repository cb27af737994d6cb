"""One training epoch through vaezoo as users run it, against a bare PyTorch loop, a plainly written
LightningModule and pythae, at torch's default thread count and at one thread, in one go.

    python benchmarks/epoch_vs_bare.py --configs benchmarks/mlp512.yaml mnist_mlp --subset 32000 \
        --steps-per-call 1 --pythae-python pyvenv/bin/python          # 5 rounds, threads 0 (default) and 1

The loops of one config run in turn (bare, vaezoo, plain, ..., bare, vaezoo, ...), so that a change in the
machine's load hits all of them alike:

- ``bare``: a PyTorch loop written here. The whole training split as one uint8 tensor, a fresh
  permutation, ``torch.bernoulli(x.float() / 255)`` per batch, encoder, reparameterised sample,
  decoder, -ELBO (Bernoulli recon + analytic KL, nats per image, mean over the batch), backward,
  optimiser step. Nothing logged. This is the floor, and every ratio is to it.
- ``bare, vz ops``: the same loop with the kernels vaezoo picks for the same maths: binarised as vaezoo
  binarises (``rand < p``, the same Bernoulli draw, 4x faster than ``torch.bernoulli`` on a CPU), and the
  optimiser built as vaezoo builds it (torch's fused kernel where the config leaves the kernel open,
  :mod:`vaezoo.models.fused`). vaezoo's ratio to this loop is the framework's own cost; the gap between
  the two bare loops is what those kernel choices gain.
- ``vaezoo``: ``vaezoo fit --config <config>`` as a user runs it, through :func:`vaezoo.cli.main`: the
  config's Trainer, logger (CSV, into a temporary folder), ModelCheckpoint, the default progress bar, the
  model's own ``self.log`` calls and ``steps_per_call`` auto (the k it took is printed). Overrides:
  ``max_epochs 1``, ``limit_val_batches 0`` (no validation), ``enable_model_summary false`` (printed
  before training; not timed anyway), ``data.download false``. The epoch is the whole training split:
  MNIST's training file is cut to ``--subset`` + 5,000 validation images (a batch count would make auto
  take k = 1).
- ``vaezoo k=K`` (with ``--steps-per-call K``): the same with ``--model.steps_per_call K``; 1 shows what
  auto gains.
- ``plain``: a LightningModule as most tutorials write it: ``torchvision.datasets.MNIST`` with
  ``transforms.ToTensor()``, ``DataLoader(shuffle=True, num_workers=0)``, binarised in
  ``training_step``, ``self.log("train_loss", loss, prog_bar=True)``, default Trainer.
- ``pythae`` (with ``--pythae-python``, for ``benchmarks/mlp512.yaml``, pythae's own default MLP): pythae's
  ``TrainingPipeline`` in a Python that has pythae (benchmarks/pythae_epoch.py), one epoch timed by
  its own epoch callbacks, on images binarised once (it has no per-step draw); and ``vaezoo, static``:
  vaezoo as users run it with ``--data.binarize static``, binarised once as pythae's are.

What is timed: for the Lightning runs, from ``on_train_epoch_start`` to ``on_train_epoch_end`` of a
small callback (validation is off; ModelCheckpoint and the logger's epoch-end writes run after that
hook, so they are outside). For the bare loop, the loop itself, permutation included. Setup (parsing,
reading MNIST, building the model) is outside every timing. Each run starts from ``torch.manual_seed``
(the vaezoo config's own ``seed_everything: 0``). Each loop gets one untimed warm-up epoch of a few
batches first (first-iteration allocation, oneDNN kernel creation).

Printed: per thread count and config, the median (and min) wall time of an epoch, the median process CPU
time, and each loop's ratio to the bare loop of the same round: its median and range over the rounds.

Threads: ``--threads 0 1`` by default: torch's default (what users get) and one thread. On a small
shared machine a 2-thread OpenMP region waits for its slowest thread at every op, so one busy core can
stretch a step 5-20 times; the one-thread figures are the stabler comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"  # read-only: MNIST/raw/*.gz is copied to a temp root
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")
WARMUP_BATCHES = 10


# ----- what the configs say -------------------------------------------------------------------------


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class Recipe:
    """The parts of a config file the three loops share: net, latent size, optimiser, batch size.

    Args:
        name: The config's stem, e.g. ``mnist_mlp`` for ``configs/mnist_mlp.yaml``, or the path of a
            config file (``benchmarks/mlp512.yaml``).
    """

    def __init__(self, name: str) -> None:
        from vaezoo.registry import NETS

        self.path = Path(name) if name.endswith(".yaml") else REPO / "configs" / f"{name}.yaml"
        self.name = self.path.stem
        config = yaml.safe_load(self.path.read_text())
        model = config["model"]["init_args"]
        data = config["data"]
        if data["class_path"] != "mnist" or model.get("likelihood", "bernoulli") != "bernoulli":
            raise SystemExit(f"{self.path}: this benchmark covers MNIST configs with a Bernoulli likelihood.")
        if data.get("init_args", {}).get("binarize", "dynamic") != "dynamic":
            raise SystemExit(f"{self.path}: this benchmark's bare loop binarises dynamically, as the configs do.")
        self.latent_dim: int = model["latent_dim"]
        net = model["net"]
        net_path = net if isinstance(net, str) else net["class_path"]
        self.net_cls = NETS.get(net_path) if "." not in net_path else _import(net_path)
        self.net_args: dict[str, Any] = {} if isinstance(net, str) else dict(net.get("init_args", {}))
        opt = model.get("optimizer", {"class_path": "torch.optim.Adam"})
        self.opt_cls = _import(opt["class_path"])
        self.opt_args: dict[str, Any] = dict(opt.get("init_args", {}))
        self.batch_size: int = data.get("init_args", {}).get("batch_size", 128)
        self.seed: int = config.get("seed_everything", 0)

    def net(self) -> nn.Module:
        """A fresh net: images (B, 1, 28, 28) -> encoder (B, 2L); codes (B, L) -> decoder logits."""
        return self.net_cls((1, 28, 28), self.latent_dim, 1, **self.net_args)

    def optimizer(self, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        return self.opt_cls(params, **self.opt_args)


def neg_elbo(net: nn.Module, x: Tensor) -> Tensor:
    """-ELBO in nats per image, batch mean, for binary images ``x`` (B, 1, 28, 28).

    The same maths as vaezoo.models.base.VAE: q(z | x) = N(mu, exp(logvar)), one reparameterised
    sample, Bernoulli log-likelihood summed over pixels, analytic KL to N(0, I) summed over latents.
    """
    mu, logvar = net.encoder(x).chunk(2, dim=1)  # (B, L) each
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    logits = net.decoder(z)  # (B, 1, 28, 28)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)  # (B,)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
    return (recon + kl).mean()


# ----- timing ---------------------------------------------------------------------------------------


class EpochTimer(L.Callback):
    """Wall and CPU seconds from ``on_train_epoch_start`` to ``on_train_epoch_end``.

    The vaezoo CLI builds it from ``--trainer.callbacks+=__main__.EpochTimer``, so the results go
    to a class attribute.
    """

    results: ClassVar[list[tuple[float, float, int]]] = []  # (wall s, cpu s, optimiser steps)
    steps_per_call: ClassVar[list[int]] = []  # the k each vaezoo epoch ran with (auto's choice as users get it)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wall, self._cpu, self._step = time.perf_counter(), time.process_time(), trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        EpochTimer.results.append((wall, cpu, trainer.global_step - self._step))
        EpochTimer.steps_per_call.append(getattr(pl_module, "group_size", 1))


def _take_result(expected_batches: int) -> tuple[float, float]:
    if len(EpochTimer.results) != 1:
        raise RuntimeError(f"expected one timed epoch, got {len(EpochTimer.results)}")
    wall, cpu, batches = EpochTimer.results.pop()
    if batches != expected_batches:
        raise RuntimeError(f"the epoch made {batches} optimiser steps, expected {expected_batches}")
    return wall, cpu


# ----- the three loops --------------------------------------------------------------------------------


def run_bare(recipe: Recipe, images: Tensor, n_batches: int, vaezoo_ops: bool = False) -> tuple[float, float]:
    """The floor: one epoch of ``n_batches`` batches in plain PyTorch. ``vaezoo_ops``: the kernels vaezoo picks,
    binarised by ``1[u < p]`` with ``u ~ U[0, 1)`` (the same Bernoulli draw, 4x faster than ``torch.bernoulli``
    on a CPU) and the optimiser's fused kernel where the config leaves it open (vaezoo.models.fused)."""
    from vaezoo.models.fused import prefer_fused

    torch.manual_seed(recipe.seed)
    net = recipe.net()
    opt = recipe.optimizer(net.parameters())
    if vaezoo_ops:
        opt = prefer_fused(opt)
    net.train()
    bs = recipe.batch_size
    wall, cpu = time.perf_counter(), time.process_time()
    order = torch.randperm(len(images))
    for i in range(n_batches):
        p = images[order[i * bs : (i + 1) * bs]].float() / 255  # (B, 1, 28, 28) in [0, 1]
        x = (torch.rand_like(p) < p).float() if vaezoo_ops else torch.bernoulli(p)  # in {0, 1}
        loss = neg_elbo(net, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def vaezoo_fit(args: list[str]) -> None:
    """``vaezoo fit ARGS`` in this process (LightningCLI warns if it also sees this script's argv)."""
    from vaezoo.cli import main

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        main(["fit", *args])
    finally:
        sys.argv = argv


def run_vaezoo(recipe: Recipe, root: Path, n_batches: int, workdir: Path, k: int | None = None,
               total_batches: int = 0, *extra: str) -> tuple[float, float]:
    """One epoch through ``vaezoo fit --config <recipe>`` as users run it (``steps_per_call`` auto), or with
    ``--model.steps_per_call k``. The epoch is the whole training split (``mnist_root`` cut it to the subset):
    a batch count in ``limit_train_batches`` would make auto take k = 1, so only the warm-up sets one."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    limit = ["--trainer.limit_train_batches", str(n_batches)] if n_batches < total_batches else []
    vaezoo_fit([
        "--config", str(recipe.path),
        "--data.root", str(root),
        "--data.download", "false",  # the cut files are not the official ones
        "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "0",
        *limit,
        *(["--model.steps_per_call", str(k)] if k is not None and not limit else []),  # the warm-up: k = 1
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        f"--trainer.callbacks+={EpochTimer.__module__}.EpochTimer",
        *extra,
    ])
    shutil.rmtree(run_dir, ignore_errors=True)
    return _take_result(n_batches)


class PlainVAE(L.LightningModule):
    """A LightningModule as a tutorial writes it, with the same net, ELBO and optimiser."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.net = recipe.net()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch  # (B, 1, 28, 28) float in [0, 1] from ToTensor
        loss = neg_elbo(self.net, torch.bernoulli(x))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.recipe.optimizer(self.parameters())


def run_plain(
    recipe: Recipe, root: Path, train_indices: list[int], n_batches: int, workdir: Path
) -> tuple[float, float]:
    """One epoch of the plain LightningModule over torchvision's MNIST and a DataLoader."""
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import MNIST

    torch.manual_seed(recipe.seed)
    dataset = Subset(MNIST(str(root), train=True, transform=transforms.ToTensor()), train_indices)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, num_workers=0)
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=n_batches,
        logger=CSVLogger(str(run_dir)),
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        callbacks=[EpochTimer()],
    )
    trainer.fit(PlainVAE(recipe), loader)
    shutil.rmtree(run_dir, ignore_errors=True)
    return _take_result(n_batches)


# ----- driver ----------------------------------------------------------------------------------------


def mnist_root(data_dir: Path, workdir: Path, train_images: int | None = None) -> Path:
    """A writable root holding MNIST's four files, extracted, with the first ``train_images`` of the official
    training file (all 60,000 when None): vaezoo (``--data.download false``) reads them as they are."""
    import gzip

    root = workdir / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        src = data_dir / "MNIST" / "raw" / name
        if not src.is_file():
            raise SystemExit(f"{src} is missing: pass --data-dir to a folder holding MNIST/raw/*.gz.")
        data = gzip.decompress(src.read_bytes())
        if name.startswith("train") and train_images is not None:
            header, item = (16, 28 * 28) if "images" in name else (8, 1)  # idx3 / idx1: magic, count (, rows, cols)
            data = data[:4] + train_images.to_bytes(4, "big") + data[8:header] + data[header : header + train_images * item]
        (raw / name.removesuffix(".gz")).write_bytes(data)
    return root


def _train_split(recipe: Recipe, root: Path) -> tuple[Tensor, Tensor]:
    """vaezoo's training split (the same images the vaezoo run trains on): uint8 images and positions."""
    from vaezoo.data import MNISTDataModule

    dm = MNISTDataModule(root=str(root), download=False, batch_size=recipe.batch_size)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert dm.train_indices is not None
    return loader.images, dm.train_indices  # uint8 (55000, 1, 28, 28), int64 (55000,)


@contextlib.contextmanager
def quiet_named_warnings() -> Iterator[None]:
    """Silence the warnings these runs cause on purpose, by their text."""
    with warnings.catch_warnings():
        # Validation is off, so the config's ModelCheckpoint(monitor="val/elbo") finds no value.
        warnings.filterwarnings("ignore", message=r".*could not find the monitored key")
        # The plain loader has num_workers=0 on purpose (the baseline).
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        # A --subset run has fewer batches than log_every_n_steps.
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
        yield


def run_pythae(python: str, data_dir: Path, recipe: Recipe, n_batches: int) -> tuple[float, float]:
    """pythae's own epoch (benchmarks/pythae_epoch.py) in a Python that has pythae, at this process's thread count."""
    import subprocess

    done = subprocess.run(
        [python, str(REPO / "benchmarks" / "pythae_epoch.py"), "--data-dir", str(data_dir), "--images",
         str(n_batches * recipe.batch_size), "--batch-size", str(recipe.batch_size), "--latent-dim", str(recipe.latent_dim),
         "--threads", str(torch.get_num_threads())],
        capture_output=True, text=True, check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("EPOCH ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"pythae run failed:\n{done.stderr[-2000:]}")
    wall, cpu = map(float, line.split()[1:])
    return wall, cpu


def is_peers_mlp(recipe: Recipe) -> bool:
    """Whether the recipe is pythae's default MLP (784-512-z, ReLU), the only net pythae's side is run with."""
    return recipe.net_args.get("hidden_dims") == [512] and recipe.net_args.get("activation") == "relu"


def bench(
    recipe: Recipe, subset: int | None, repeats: int, workdir: Path, pythae: str | None = None,
    data_dir: Path = DEFAULT_DATA, steps_per_call: int = 0,
) -> dict[str, list[tuple[float, float]]]:
    if subset is not None and (subset < recipe.batch_size or subset % recipe.batch_size):
        raise SystemExit(f"--subset {subset} must be a multiple of {recipe.name}'s batch size {recipe.batch_size} "
                         "(the epoch is then whole batches in every loop).")
    # The training file cut to the subset and the validation images (5,000, the DataModule's default val_size):
    # every loop's epoch is then the whole training split, as users run vaezoo.
    root = mnist_root(data_dir, workdir / recipe.name, None if subset is None else subset + 5000)
    images, train_indices = _train_split(recipe, root)
    n_batches = len(images) // recipe.batch_size
    total = -(-len(images) // recipe.batch_size)  # vaezoo's epoch, a last smaller batch included
    indices = train_indices.tolist()
    runners: dict[str, Callable[[int], tuple[float, float]]] = {
        "bare": lambda n: run_bare(recipe, images, n),
        "bare, vz ops": lambda n: run_bare(recipe, images, n, vaezoo_ops=True),
        "vaezoo": lambda n: run_vaezoo(recipe, root, n, workdir, None, total),
        "plain": lambda n: run_plain(recipe, root, indices, n, workdir),
    }
    if steps_per_call:
        runners[f"vaezoo k={steps_per_call}"] = lambda n: run_vaezoo(recipe, root, n, workdir, steps_per_call, total)
    if pythae and is_peers_mlp(recipe):
        runners["pythae"] = lambda n: run_pythae(pythae, data_dir, recipe, n)
        # pythae trains on images binarised once: vaezoo on the same footing (no draw per step) beside it.
        runners["vaezoo, static"] = lambda n: run_vaezoo(recipe, root, n, workdir, None, total, "--data.binarize", "static")
    print(f"\n== {recipe.name}: {n_batches} batches of {recipe.batch_size} ({n_batches * recipe.batch_size} "
          f"images), {repeats} repeats, {torch.get_num_threads()} thread(s) ==", flush=True)
    for name, run in runners.items():  # warm-up, untimed (pythae warms up inside its own run)
        if name != "pythae":
            run(min(WARMUP_BATCHES, n_batches))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for r in range(repeats):
        for name, run in runners.items():
            gc.collect()  # the previous run's trainer and model, outside the timed part
            times[name].append(run(n_batches))
            print(f"[{recipe.name} repeat {r + 1}/{repeats}] {name}: {times[name][-1][0]:.2f} s", flush=True)
    return times


def report(name: str, times: dict[str, list[tuple[float, float]]]) -> str:
    """Per loop: wall medians, and the ratio to the bare loop of the same round, its median and range over rounds."""
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    lines = [
        f"{name}",
        f"  {'loop':<14} {'wall median s':>13} {'wall min s':>10} {'cpu median s':>12} {'x bare: median (range over rounds)':>36}",
    ]
    for k, v in times.items():
        ratios = [w / b for (w, _), (b, _) in zip(v, times["bare"], strict=True)]
        lines.append(
            f"  {k:<14} {med[k]:>13.2f} {min(w for w, _ in v):>10.2f} {statistics.median(c for _, c in v):>12.2f} "
            f"{statistics.median(ratios):>19.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["mnist_mlp", "mnist_conv"], help="config stems under configs/, or paths of config files")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per loop (median reported)")
    parser.add_argument("--subset", type=int, default=None, help="images per epoch (default: the whole 55k split)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                        help="torch.set_num_threads, one pass each; 0 is torch's default (what users get)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding MNIST/raw/*.gz")
    parser.add_argument("--steps-per-call", type=int, default=0, help="adds vaezoo with --model.steps_per_call K "
                        "to every round, beside vaezoo as users run it (auto); e.g. 1 shows what auto gains")
    parser.add_argument("--pythae-python", help="a Python with pythae installed: adds pythae's TrainingPipeline to "
                        "every round of the configs that use its default MLP (benchmarks/mlp512.yaml)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    default_threads = torch.get_num_threads()
    recipes = [Recipe(name) for name in args.configs]
    summary = []
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        results = {}
        with tempfile.TemporaryDirectory(prefix="vaezoo_bench_") as tmp, quiet_named_warnings():
            workdir = Path(tmp)
            for recipe in recipes:
                EpochTimer.steps_per_call.clear()
                results[recipe.name] = bench(recipe, args.subset, args.repeats, workdir, args.pythae_python,
                                             args.data_dir, args.steps_per_call)
                auto = EpochTimer.steps_per_call[len(EpochTimer.steps_per_call) // 2]  # a timed run's (not the warm-up's)
                results[recipe.name + f" (vaezoo: steps_per_call auto took {auto})"] = results.pop(recipe.name)
        label = f"{torch.get_num_threads()} thread(s)" + (" (torch's default)" if not threads else "")
        summary.append(f"\n--- {label} ---\n" + "\n".join(report(name, times) for name, times in results.items()))
    print("\n" + "=" * 72)
    print(f"One training epoch, medians of {args.repeats} alternated runs; target (issue 15): vaezoo <= 1.10x bare")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
