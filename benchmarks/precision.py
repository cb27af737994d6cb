"""bf16-mixed against 32-true on the CPU: training speed and the ELBO reached, through vaezoo's Trainer.

    python benchmarks/precision.py                           # mnist_conv and cifar_conv, 50 steps
    python benchmarks/precision.py --configs cifar_conv --steps 20 --repeats 3

For each config, ``vaezoo fit --config configs/<name>.yaml --trainer.precision P`` runs ``--steps``
training steps (``limit_train_batches``, one epoch, validation off), alternating 32-true and
bf16-mixed so that a change in the machine's load hits both alike, after one untimed warm-up run of
each (oneDNN creates its fp32 and bf16 kernels on first use). Each run starts from the config's
``seed_everything``, so both precisions start from the same weights and see the same batches.

Printed per config and precision: the median (and min) wall time of the N steps, ms per step,
images/s, the speed-up of bf16-mixed over 32-true (ratio of the medians; target >= 1.5x on the conv
configs), and two quality figures after the N steps, in nats per image (higher is better):

- ``train ELBO``: vaezoo's own ``train/elbo_epoch``, the mean of the N steps' batch ELBOs;
- ``fixed ELBO``: the ELBO of the trained model on the first 1,024 training images, evaluated in
  fp32 with fixed noise (same pixels, same binarisation, same epsilon for both precisions), so the
  two precisions are compared on the same numbers.

bf16-mixed keeps the weights and the optimiser in fp32 and vaezoo's likelihood, KL and ELBO sums
in fp32 (see vaezoo/likelihoods.py); only the net's matmuls and convolutions run in bf16, which is
where a CPU with AMX (``lscpu | grep amx``) gains. On a CPU without AMX or AVX512-BF16, bf16 can
be slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
import yaml

# epoch_vs_bare.py sits beside this script, whose folder Python puts on sys.path.
from epoch_vs_bare import (
    DEFAULT_DATA,
    REPO,
    mnist_root,
    quiet_named_warnings,
    vaezoo_fit,
)

PRECISIONS = ("32-true", "bf16-mixed")
EVAL_IMAGES = 1024
WARMUP_STEPS = 3


class StepTimer(L.Callback):
    """Times the training epoch (the N steps) and scores the model once training ends.

    The CLI builds it from ``--trainer.callbacks+=__main__.StepTimer``, so results go to a class
    attribute: ``(wall s, batches, train/elbo_epoch, fixed ELBO)``.
    """

    results: ClassVar[list[tuple[float, int, float, float]]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wall = time.perf_counter() - self._t0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        train_elbo = float(trainer.callback_metrics["train/elbo_epoch"])
        StepTimer.results.append((self._wall, batches, train_elbo, fixed_elbo(trainer, pl_module)))


@torch.no_grad()
def fixed_elbo(trainer: L.Trainer, model: L.LightningModule) -> float:
    """The ELBO (nats per image) of ``model`` on the first training images, fp32, fixed noise."""
    dm = trainer.datamodule
    images = dm.train_dataloader().images[:EVAL_IMAGES]  # uint8 (N, C, H, W)
    x = images.float().div(255)
    generator = torch.Generator().manual_seed(1234)
    if dm.hparams.get("binarize", "none") != "none":  # binarised MNIST: one fixed draw
        x = torch.bernoulli(x, generator=generator)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(1234)  # the same epsilon for every model
        elbo = model(x.to(model.device)).elbo.mean().item()
    model.train(was_training)
    return elbo


def run(config: Path, precision: str, steps: int, data_args: list[str], workdir: Path) -> tuple[float, float, float]:
    run_dir = tempfile.mkdtemp(dir=workdir)
    vaezoo_fit([
        "--config", str(config),
        *data_args,
        "--trainer.precision", precision,
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", str(steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", run_dir,
        "--trainer.logger.init_args.save_dir", run_dir,
        f"--trainer.callbacks+={StepTimer.__module__}.StepTimer",
    ])
    if len(StepTimer.results) != 1:
        raise RuntimeError(f"expected one timed run, got {len(StepTimer.results)}")
    wall, batches, train_elbo, fixed = StepTimer.results.pop()
    if batches != steps:
        raise RuntimeError(f"the run made {batches} steps, expected {steps}")
    return wall, train_elbo, fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["mnist_conv", "cifar_conv"], help="config stems under configs/"
    )
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per precision (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="folder holding MNIST/raw/*.gz and cifar-10/ (the JPEG mirror) or the official CIFAR-10")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaezoo_precision_") as tmp, quiet_named_warnings():
        workdir = Path(tmp)
        for name in args.configs:
            config = REPO / "configs" / f"{name}.yaml"
            data = yaml.safe_load(config.read_text())["data"]
            batch_size = data.get("init_args", {}).get("batch_size", 128)
            if data["class_path"] in ("mnist", "fashion_mnist"):
                data_args = ["--data.root", str(mnist_root(args.data_dir, workdir / name))]
            else:
                data_args = ["--data.root", str(args.data_dir)]
            for precision in PRECISIONS:  # warm-up, untimed
                run(config, precision, WARMUP_STEPS, data_args, workdir)
            results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in PRECISIONS}
            for r in range(args.repeats):
                for precision in PRECISIONS:
                    results[precision].append(run(config, precision, args.steps, data_args, workdir))
                    wall, train_elbo, fixed = results[precision][-1]
                    print(f"[{name} {precision} {r + 1}/{args.repeats}] {wall:.2f} s, train ELBO {train_elbo:.2f}, "
                          f"fixed ELBO {fixed:.2f}", flush=True)
            base = statistics.median(w for w, _, _ in results[PRECISIONS[0]])
            for precision in PRECISIONS:
                walls = [w for w, _, _ in results[precision]]
                med = statistics.median(walls)
                rows.append((name, precision, med, min(walls), 1000 * med / args.steps, args.steps * batch_size / med,
                             base / med, statistics.median(e for _, e, _ in results[precision]),
                             statistics.median(f for _, _, f in results[precision])))
    print("\n" + "=" * 100)
    print(f"{args.steps} training steps per run, medians of {args.repeats} alternated runs, "
          f"{torch.get_num_threads()} thread(s); target: bf16-mixed >= 1.5x 32-true")
    print(f"{'config':<11} {'precision':<11} {'median s':>8} {'min s':>6} {'ms/step':>8} {'img/s':>7} {'speed-up':>8} "
          f"{'train ELBO':>10} {'fixed ELBO':>10}")
    for name, precision, med, low, ms, ips, speedup, train_elbo, fixed in rows:
        print(f"{name:<11} {precision:<11} {med:>8.2f} {low:>6.2f} {ms:>8.1f} {ips:>7.0f} {speedup:>7.2f}x "
              f"{train_elbo:>10.2f} {fixed:>10.2f}")
    print("ELBOs in nats per image, higher is better; train = mean over the run's steps, fixed = the trained "
          f"model on the first {EVAL_IMAGES} training images in fp32 with fixed noise.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
