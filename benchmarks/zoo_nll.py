"""The zoo's quality at one equal budget, beside the papers: test NLL of vanilla, IWAE, the VampPrior and
the two-layer VAE on real MNIST, as users run them (the ``vaezoo`` CLI and the shipped recipes).

    python benchmarks/zoo_nll.py --data ../shared/data --epochs 20 --nll-k 1000
    python benchmarks/zoo_nll.py --data ../shared/data --epochs 20 --models vanilla iwae5 iwae50

Every model: Burda et al.'s MLP sizes (784-200-200, tanh, batch 100, Adam 1e-3), dynamically binarised
MNIST (55,000 training images, 5,000 held out for validation), seed 0, ``--epochs`` epochs, then
``vaezoo test`` of the last checkpoint with ``--nll-k`` importance samples per test image (10,000 images).
The VampPrior and the two-layer model train as their recipes do (He initialisation and a KL warm-up);
``vanilla_warm`` is the VAE trained the same way, the VampPrior's like-for-like baseline. It prints one
table (test NLL in nats per image, lower is better; training time in minutes) with the published values, and writes it as JSON with ``--out``. The published values used 3,280 epochs
(Burda et al. 2015, Table 1; Tomczak & Welling 2018, Table 1): at a budget of tens of epochs every
figure is higher, and the question is whether the papers' ordering shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from epoch_vs_bare import mnist_root  # benchmarks/ is sys.path[0] when a script here runs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# name -> (recipe, extra CLI arguments, published test NLL in nats or None, its source)
MODELS: dict[str, tuple[str, list[str], float | None, str]] = {
    "vanilla": ("mnist_mlp.yaml", [], 86.76, "Burda et al. 2015, VAE, 1 layer, k=1"),
    "iwae5": ("mnist_iwae.yaml", ["--model.k", "5"], 85.54, "Burda et al. 2015, IWAE, 1 layer, k=5"),
    "iwae50": ("mnist_iwae.yaml", ["--model.k", "50"], 84.78, "Burda et al. 2015, IWAE, 1 layer, k=50"),
    # the VAE trained as the VampPrior recipe trains (He init, KL warm-up): the VampPrior's fair baseline
    "vanilla_warm": ("mnist_mlp.yaml", ["--model.net.init", "he", "--model.kl_warmup_steps", "2750"], None,
                     "control: the VampPrior recipe with N(0, I)"),
    "vamp": ("mnist_vamp.yaml", [], 85.57, "Tomczak & Welling 2018, VampPrior, 1 layer"),
    "hvae": ("mnist_hvae.yaml", [], 85.33, "Burda et al. 2015, VAE, 2 layers, k=1"),
}


def _run(args: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "vaezoo", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"vaezoo {args[0]} failed (exit {done.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def _last(metrics: Path, key: str) -> float:
    rows = [row for row in csv.DictReader(metrics.open()) if row.get(key)]
    return float(rows[-1][key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="a folder holding MNIST/raw/ with the four official files")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--nll-k", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--models", nargs="+", default=["vanilla", "iwae5", "vanilla_warm", "vamp", "hvae"], choices=list(MODELS))
    parser.add_argument("--precision", default="32-true", help="training precision, e.g. bf16-mixed")
    parser.add_argument("--work", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="zoo_nll_"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():  # a copy of the official files: ../shared is read-only
        mnist_root(args.data, work)
    import torch

    print(f"torch threads: {torch.get_num_threads()} (the default), {args.epochs} epochs, test NLL at k={args.nll_k}, "
          f"training precision {args.precision}; runs in {work}", flush=True)
    rows = []
    for name in args.models:
        recipe, extra, published, source = MODELS[name]
        fit = ["fit", "--config", str(CONFIGS / recipe), *extra, "--data.root", str(work / "data"),
               "--trainer.max_epochs", str(args.epochs), "--trainer.precision", args.precision,
               "--trainer.enable_progress_bar", "false", "--images.every_n_epochs", "0", "--seed_everything", "0",
               "--trainer.logger.init_args.save_dir", str(work / "runs"), "--trainer.logger.init_args.name", name,
               "--model.iw_samples", "null"]
        train_s = _run(fit, work, work / f"{name}.fit.log")
        run = max((work / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                "--model.iw_samples", str(args.nll_k), "--trainer.precision", "32-true",
                "--trainer.enable_progress_bar", "false"]
        test_s = _run(test, work, work / f"{name}.test.log")
        tested = max((work / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        nll = _last(tested / "metrics.csv", "test/nll")
        elbo = _last(tested / "metrics.csv", "test/elbo")
        row = {"model": name, "test_nll": nll, "test_elbo": elbo, "published_nll": published, "source": source,
               "train_min": train_s / 60, "test_min": test_s / 60, "epochs": args.epochs, "nll_k": args.nll_k}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| model | test NLL (k={args.nll_k}) | test ELBO | published NLL (3,280 epochs) | training (min) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        published = "-" if r["published_nll"] is None else f"{r['published_nll']:.2f}"
        print(f"| {r['model']} | {r['test_nll']:.2f} | {r['test_elbo']:.2f} | {published} ({r['source']}) "
              f"| {r['train_min']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
