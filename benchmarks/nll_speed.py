"""The test NLL (importance-weighted bound L_k) through vaezoo, against a bare PyTorch computation.

    python benchmarks/nll_speed.py                                  # mnist_mlp, 500 images, k = 1,000
    python benchmarks/nll_speed.py --configs mnist_conv --k 100 --images 200
    python benchmarks/nll_speed.py --threads 0                     # torch's default thread count

For each config (net and latent size read from the YAML; the cost does not depend on the
weights), on the first ``--images`` MNIST test images, binarised once, in batches of the config's
evaluation batch size, three ways to compute L_k with k = ``--k``, run in turn (bare, vaezoo, cli,
bare, ...) so that a change in the machine's load hits all three alike:

- ``bare``: L_k written plainly in PyTorch, as vaezoo computed it before it was made faster:
  chunks of 8,192 decoder inputs, the images repeated k times, ``binary_cross_entropy_with_logits``,
  log-weights concatenated and reduced by one logsumexp.
- ``vaezoo``: :meth:`vaezoo.models.VAE.importance_log_likelihood` on the same net.
- ``cli``: ``vaezoo test --config configs/<name>.yaml --trainer.limit_test_batches N`` in this
  process, as a user runs it (the whole test step: ELBO, reconstructions, metrics, the progress bar),
  timed from ``on_test_epoch_start`` to ``on_test_epoch_end``, on the checkpoint of a one-step
  ``vaezoo fit`` (made first; bare and vaezoo load its weights). The CLI's own data module reads the
  same images (with its own fixed binarisation). ``--no-cli`` leaves it out (bare and vaezoo then
  use the initial weights).

All run under ``torch.inference_mode`` (Lightning's test loop uses it too), each once untimed first.
Printed: per config, the median and min wall time of each, the ratio to ``bare``, and the time the
median implies for the whole test split (10,000 images) at k = 1,000, which is linear in both.

Threads: ``--threads 1`` by default (see benchmarks/README.md); torch's default count is printed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from epoch_vs_bare import mnist_root  # benchmarks/ is sys.path[0] when a script here runs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"  # read-only: MNIST/raw/*.gz is copied to a temp root
TEST_IMAGES, FULL_K = 10_000, 1000


class Recipe:
    """The parts of a config the three computations share: net, latent size, eval batch size."""

    def __init__(self, name: str) -> None:
        from vaezoo.registry import NETS

        self.path = Path(name) if name.endswith(".yaml") else REPO / "configs" / f"{name}.yaml"
        self.name = self.path.stem
        config = yaml.safe_load(self.path.read_text())
        model, data = config["model"]["init_args"], config["data"]
        if data["class_path"] != "mnist" or model.get("likelihood", "bernoulli") != "bernoulli":
            raise SystemExit(f"{self.path}: this benchmark covers MNIST configs with a Bernoulli likelihood.")
        net = model["net"]
        net_path = net if isinstance(net, str) else net["class_path"]
        net_cls = NETS.get(net_path)
        self.net = partial(net_cls, **({} if isinstance(net, str) else net.get("init_args", {})))
        self.latent_dim: int = model["latent_dim"]
        args = data.get("init_args", {})
        self.batch_size: int = args.get("eval_batch_size") or args.get("batch_size", 128)

    def model(self) -> Any:
        from vaezoo.models import VAE

        torch.manual_seed(0)
        return VAE(net=self.net, latent_dim=self.latent_dim, iw_samples=None).eval()


def bare_log_likelihood(net: nn.Module, x: Tensor, k: int, rows: int = 8192) -> Tensor:
    """L_k of binary images ``x`` (B, 1, 28, 28) in nats per image, ``(B,)``, written plainly."""
    mean, logvar = net.encoder(x).chunk(2, dim=1)  # (B, L) each
    b = x.shape[0]
    chunk = max(1, rows // b)
    log_w = []
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(c, *mean.shape)  # (c, B, L)
        logits = net.decoder(z.flatten(0, 1))  # (c * B, 1, 28, 28)
        targets = x.expand(c, *x.shape).flatten(0, 1)
        log_px = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).sum(1).view(c, b)
        log_pz = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1)
        log_qz = (-0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)
        log_w.append(log_px + log_pz - log_qz)
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)


class EvalTimer(L.Callback):
    """Wall seconds from ``on_test_epoch_start`` to ``on_test_epoch_end``, into a class attribute
    (the CLI builds it from ``--trainer.callbacks+=``)."""

    results: ClassVar[list[float]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        EvalTimer.results.append(time.perf_counter() - self._start)


def vaezoo_cli(args: list[str]) -> None:
    """``vaezoo ARGS`` in this process (LightningCLI warns if it also sees this script's argv)."""
    from vaezoo.cli import main

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        main(args)
    finally:
        sys.argv = argv


def one_step_checkpoint(recipe: Recipe, root: Path, workdir: Path) -> Path:
    """A checkpoint of the config after one training step: what ``vaezoo test`` needs (the cost of L_k
    does not depend on the weights)."""
    run_dir = workdir / f"fit-{recipe.name}"
    vaezoo_cli([
        "fit", "--config", str(recipe.path), "--data.root", str(root),
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir),
        "--images.every_n_epochs", "0",
    ])
    (ckpt,) = run_dir.glob("**/checkpoints/last.ckpt")
    return ckpt


def run_cli(recipe: Recipe, root: Path, ckpt: Path, k: int, n_batches: int, workdir: Path) -> float:
    """Seconds of ``vaezoo test`` on ``n_batches`` batches, from the test epoch's start to its end."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    try:
        vaezoo_cli([
            "test", "--config", str(recipe.path), "--data.root", str(root), "--ckpt_path", str(ckpt),
            "--model.iw_samples", str(k),
            "--trainer.limit_test_batches", str(n_batches),
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir),
            "--images.every_n_epochs", "0",
            f"--trainer.callbacks+={EvalTimer.__module__}.EvalTimer",
        ])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return EvalTimer.results.pop()


def binarised_test_images(root: Path, n: int) -> Tensor:
    """The first ``n`` MNIST test images, binarised once: ``(n, 1, 28, 28)`` in {0, 1}."""
    with gzip.open(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    return torch.bernoulli(torch.from_numpy(pixels.copy()).float() / 255, generator=torch.Generator().manual_seed(0))


def bench(recipe: Recipe, root: Path, args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    ckpt = one_step_checkpoint(recipe, root, workdir) if args.cli else None
    model = recipe.model()
    if ckpt is not None:  # the weights the cli run tests
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    x = binarised_test_images(root, args.images)
    batches = x.split(recipe.batch_size)
    n_batches = len(batches)

    def over_batches(fn: Callable[[Tensor], Tensor]) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                fn(batch)
        return time.perf_counter() - start

    runners: dict[str, Callable[[], float]] = {
        "bare": lambda: over_batches(lambda b: bare_log_likelihood(model.net, b, args.k)),
        "vaezoo": lambda: over_batches(lambda b: model.importance_log_likelihood(b, args.k)),
    }
    if args.cli:
        runners["cli"] = lambda: run_cli(recipe, root, ckpt, args.k, n_batches, workdir)
    print(f"\n== {recipe.name}: {n_batches} batches of {recipe.batch_size} ({len(x)} images), k = {args.k}, "
          f"{args.repeats} repeats, {torch.get_num_threads()} thread(s) ==", flush=True)
    for run in runners.values():  # warm-up, untimed
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        for name, run in runners.items():
            gc.collect()
            times[name].append(run())
            print(f"[{recipe.name} repeat {r + 1}/{args.repeats}] {name}: {times[name][-1]:.2f} s", flush=True)
    return times


def report(recipe: Recipe, times: dict[str, list[float]], images: int, k: int) -> str:
    med = {name: statistics.median(v) for name, v in times.items()}
    lines = [
        f"{recipe.name} ({images} images, k = {k})",
        f"  {'way':<8} {'median s':>9} {'min s':>7} {'x bare':>7} {'full test split at k = 1,000':>30}",
    ]
    for name, v in times.items():
        full = med[name] * (TEST_IMAGES / images) * (FULL_K / k)
        lines.append(f"  {name:<8} {med[name]:>9.2f} {min(v):>7.2f} {med[name] / med['bare']:>7.2f} "
                     f"{f'~{full / 60:.1f} min':>30}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["mnist_mlp"], help="config names or paths")
    parser.add_argument("--images", type=int, default=500, help="test images per run (default 500)")
    parser.add_argument("--k", type=int, default=FULL_K, help="importance samples per image (default 1,000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="leave out the `vaezoo test` run")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding MNIST/raw/*.gz")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="vaezoo-test-nll-"))
    try:
        root = mnist_root(args.data_dir, workdir)
        with warnings.catch_warnings():
            # --trainer.limit_test_batches and fresh weights are on purpose here.
            warnings.filterwarnings("ignore", message=r".*does not have many workers")
            tables = [report(r, bench(r, root, args, workdir), args.images, args.k) for r in map(Recipe, args.configs)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
