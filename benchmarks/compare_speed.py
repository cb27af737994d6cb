"""How long `vaezoo compare` takes over many runs: the median wall time of `python -m vaezoo compare`.

    python benchmarks/compare_speed.py                     # 50 runs, 5 timed calls
    python benchmarks/compare_speed.py --runs 200 --repeat 3

Each run folder holds what a vaezoo fit keeps: the resolved ``config.yaml`` of configs/mnist_mlp.yaml
(from ``vaezoo fit --print_config``, as LightningCLI writes it; beta and latent_dim varied per run) and
a ``metrics.csv`` with a real run's columns: 30 epochs of 600 steps, train metrics every 50 steps and
per epoch, the val metrics per epoch. Every fourth run gets a ``vaezoo test`` run of its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train/bpd", "train/elbo", "train/kl", "train/loss", "train/recon"]
VAL = ["val/active_units", "val/bpd", "val/elbo", "val/kl", "val/loss", "val/mse", "val/psnr", "val/recon"]
TEST = ["test/bpd", "test/elbo", "test/kl", "test/nll", "test/recon"]


def write_run(folder: Path, config: dict, rows: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    header = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("epoch", "step"), k))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def make_runs(root: Path, n: int, config: dict) -> None:
    rng = random.Random(0)
    for i in range(n):
        run = yaml.safe_load(yaml.safe_dump(config))  # a deep copy
        run["model"]["init_args"].update(beta=rng.choice([0.5, 1.0, 2.0, 4.0]), latent_dim=rng.choice([10, 20, 50]))
        rows: list[dict[str, float]] = []
        for epoch in range(30):
            level = -200 + 100 * (1 - 0.9**epoch) + rng.gauss(0, 1)
            for step in range(epoch * 600 + 49, (epoch + 1) * 600, 50):
                rows.append({"epoch": epoch, "step": step, **{f"{k}_step": level + rng.gauss(0, 3) for k in TRAIN}})
            rows.append({"epoch": epoch, "step": (epoch + 1) * 600 - 1, **{k: level + rng.gauss(0, 1) for k in VAL}})
            rows.append({"epoch": epoch, "step": (epoch + 1) * 600 - 1, **{f"{k}_epoch": level for k in TRAIN}})
        write_run(root / f"version_{i}", run, rows)
        if i % 4 == 0:  # a `vaezoo test` of this run's checkpoint, on its settings: merged into its row
            test = {**run, "ckpt_path": str(root / f"version_{i}" / "checkpoints" / "last.ckpt")}
            write_run(root / f"test_{i}", test, [{"epoch": 30, "step": 18000, **{k: -95.0 for k in TEST}}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    ns = parser.parse_args()
    printed = subprocess.run([sys.executable, "-m", "vaezoo", "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"),
                              "--print_config"], capture_output=True, text=True, check=True, cwd=REPO)
    with tempfile.TemporaryDirectory() as tmp:
        make_runs(Path(tmp) / "runs" / "mnist_mlp", ns.runs, yaml.safe_load(printed.stdout))
        times = []
        for _ in range(ns.repeat):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "vaezoo", "compare", "runs"], cwd=tmp,
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            assert done.returncode == 0, done.stderr
        shown = sum(line.startswith("│ runs/") for line in done.stdout.splitlines())
    print(f"vaezoo compare over {ns.runs} runs ({shown} rows): median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {ns.repeat} calls)")


if __name__ == "__main__":
    main()
