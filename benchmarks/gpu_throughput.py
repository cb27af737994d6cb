"""Training images/s of ``cifar_conv`` on one GPU: vaezoo's Trainer against a bare loop, per precision.

    python benchmarks/gpu_throughput.py                       # synthetic CIFAR-shaped data
    python benchmarks/gpu_throughput.py --data-dir ../shared/data --steps 100

Called by ``benchmarks/gpu_check.sh``. For each precision (32-true, 16-mixed, bf16-mixed) it runs,
in turn:

- ``bare``: a PyTorch loop written here with the config's net (``vaezoo.nets.ConvNet``), latent
  size, optimiser and batch size; the ELBO with vaezoo's ``DiscretizedLogistic`` likelihood (kept in
  fp32 under autocast, as vaezoo does) and the analytic KL; ``torch.autocast`` for the mixed
  precisions, plus a ``GradScaler`` for 16-mixed. Batches are indexed out of the uint8 training
  tensor in host memory and copied to the GPU each step, as vaezoo's loader does.
- ``vaezoo``: ``vaezoo fit --config configs/cifar_conv.yaml --trainer.precision P`` on one GPU
  (validation off, one epoch of ``warmup + steps`` batches, the config's logger into a temp folder).
  vaezoo steps Adam with torch's fused kernel in 32-true and bf16-mixed (not under 16-mixed's scaler;
  ``vaezoo.models.fused``); the bare loop steps the config's optimiser as written, as a user's loop would.

Timed: the ``--steps`` steps after ``--warmup`` untimed ones, between two ``torch.cuda.synchronize``.
Peak memory: ``torch.cuda.max_memory_allocated`` over the whole run (weights, Adam state,
activations), reset before each run.

Data: random uint8 images of CIFAR-10's shape by default (throughput does not depend on the
pixels, and nothing needs to be decoded); ``--data-dir`` reads the real CIFAR-10 from that folder
(official batches or the JPEG mirror in ``cifar-10/``; set ``XDG_CACHE_HOME`` to keep the decoded
cache somewhere else than ``~/.cache/vaezoo``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
import yaml
from torch import Tensor

from vaezoo.data.base import ImageDataModule
from vaezoo.likelihoods import DiscretizedLogistic
from vaezoo.registry import NETS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cifar_conv.yaml"
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
DEVICE = "cuda"  # "cpu" only for --cpu-dry-run, which checks this script on a machine without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _reset_peak() -> None:
    gc.collect()  # the previous run's model and optimiser state
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


class RandomCIFAR(ImageDataModule):
    """CIFAR-10-shaped random uint8 images (50,000 train, 10,000 test), the same on every process."""

    image_shape = (3, 32, 32)
    num_classes = 10
    name = "random_cifar"

    def _prepare(self) -> None:
        pass  # nothing to download

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        n = 50_000 if train else 10_000
        generator = torch.Generator().manual_seed(0 if train else 1)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, 10, (n,), generator=generator)


class GPUTimer(L.Callback):
    """Seconds of the training batches ``warmup`` to ``warmup + steps - 1``, and the peak memory."""

    results: ClassVar[list[tuple[float, int]]] = []  # (seconds, peak bytes)
    warmup = 10  # optimiser steps
    steps = 50
    k = 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _reset_peak()
        k = GPUTimer.k = getattr(pl_module, "group_size", 1)  # a training step makes k optimiser steps
        if GPUTimer.warmup % k or GPUTimer.steps % k:
            raise SystemExit(f"steps_per_call {k} must divide --warmup {GPUTimer.warmup} and --steps {GPUTimer.steps}.")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if batch_idx == GPUTimer.warmup // GPUTimer.k:
            _sync()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if batch_idx == (GPUTimer.warmup + GPUTimer.steps) // GPUTimer.k - 1:
            _sync()
            GPUTimer.results.append((time.perf_counter() - self._t0, _peak()))


def recipe() -> dict:
    """The cifar_conv config's model and data settings."""
    config = yaml.safe_load(CONFIG.read_text())
    model = config["model"]["init_args"]
    if model.get("likelihood") != "logistic":
        raise SystemExit(f"{CONFIG}: expected the logistic likelihood, got {model.get('likelihood')!r}.")
    net = model["net"]
    opt = model.get("optimizer", {"class_path": "torch.optim.Adam"})
    module, _, cls = opt["class_path"].rpartition(".")
    return {
        "latent_dim": model["latent_dim"],
        "net_cls": NETS.get(net if isinstance(net, str) else net["class_path"]),
        "net_args": {} if isinstance(net, str) else dict(net.get("init_args", {})),
        "opt_cls": getattr(__import__(module, fromlist=[cls]), cls),
        "opt_args": dict(opt.get("init_args", {})),
        "batch_size": config["data"].get("init_args", {}).get("batch_size", 128),
        "seed": config.get("seed_everything", 0),
    }


def run_bare(r: dict, images: Tensor, precision: str, warmup: int, steps: int) -> tuple[float, int]:
    """The bare loop on the GPU: (seconds of ``steps`` steps, peak bytes)."""
    device = torch.device(DEVICE)
    torch.manual_seed(r["seed"])
    likelihood = DiscretizedLogistic()
    net = r["net_cls"]((3, 32, 32), r["latent_dim"], 3 * likelihood.params_per_channel, **r["net_args"]).to(device)
    opt = r["opt_cls"](net.parameters(), **r["opt_args"])
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(DEVICE, enabled=dtype is torch.float16)
    bs = r["batch_size"]
    order = torch.randperm(len(images))
    _reset_peak()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync()
            t0 = time.perf_counter()
        idx = order[(i * bs) % (len(images) - bs):][:bs]
        x = images[idx].to(device).float().div_(255)  # (B, 3, 32, 32) in [0, 1]
        with torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None):
            mean, logvar = net.encoder(x).chunk(2, dim=1)  # (B, L) each
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            params = net.decoder(z)  # (B, 6, 32, 32)
        recon = -likelihood.log_prob(params, x)  # (B,) fp32
        mean, logvar = mean.float(), logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
        loss = (recon + kl).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    _sync()
    return time.perf_counter() - t0, _peak()


def run_vaezoo(precision: str, data_args: list[str], warmup: int, steps: int, workdir: Path,
               k: str = "auto") -> tuple[float, int]:
    """``vaezoo fit`` on one GPU, ``warmup + steps`` optimiser steps (``--trainer.max_steps``), with
    ``--model.steps_per_call k`` (``auto``: the default, as users run it): (seconds of ``steps`` steps, peak bytes)."""
    from vaezoo.cli import main

    GPUTimer.warmup, GPUTimer.steps = warmup, steps
    run_dir = tempfile.mkdtemp(dir=workdir)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees this script's own argv
    try:
        main([
            "fit", "--config", str(CONFIG), *data_args,
            "--trainer.accelerator", "gpu" if DEVICE == "cuda" else "cpu", "--trainer.devices", "1",
            "--trainer.precision", precision,
            "--trainer.max_epochs", "1",
            "--trainer.max_steps", str(warmup + steps), "--model.steps_per_call", k,
            "--trainer.limit_val_batches", "0",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", run_dir,
            "--trainer.logger.init_args.save_dir", run_dir,
            f"--trainer.callbacks+={GPUTimer.__module__}.GPUTimer",
        ])
    finally:
        sys.argv = argv
    if len(GPUTimer.results) != 1:
        raise RuntimeError(f"expected one timed run, got {len(GPUTimer.results)}")
    return GPUTimer.results.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, allocation)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per loop and precision (median reported)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding CIFAR-10; default: random images")
    parser.add_argument("--steps-per-call", nargs="+", default=["1", "auto"],
                        help="vaezoo's --model.steps_per_call values to run: auto (the default, which takes the largest "
                             "k <= 10 dividing 50, 200 and warmup + steps) and numbers that divide --warmup and --steps")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the same code on the CPU (2 + 2 steps, one repeat) to check the script, not to time")
    args = parser.parse_args(argv)
    global DEVICE
    if args.cpu_dry_run:
        DEVICE, args.warmup, args.steps, args.repeats = "cpu", 2, 2, 1
        args.steps_per_call = [k for k in args.steps_per_call if k in ("1", "2", "auto")] or ["1"]
    elif not torch.cuda.is_available():
        print("no GPU")
        return 0
    import warnings

    warnings.filterwarnings("ignore", message=r".*could not find the monitored key")  # validation is off
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # short runs
    r = recipe()
    if args.data_dir is None:
        data_args = ["--data.class_path", f"{RandomCIFAR.__module__}.RandomCIFAR"]
        dm: ImageDataModule = RandomCIFAR(batch_size=r["batch_size"])
    else:
        from vaezoo.data import CIFAR10DataModule

        data_args = ["--data.root", str(args.data_dir)]
        dm = CIFAR10DataModule(root=str(args.data_dir), batch_size=r["batch_size"])
        dm.prepare_data()
    dm.setup("fit")
    images = dm.train_dataloader().images  # uint8 (N, 3, 32, 32), host memory
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run)"
    print(f"{device_name} | torch {torch.__version__} | lightning {L.__version__} | "
          f"cifar_conv, batch {r['batch_size']}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"{'random' if args.data_dir is None else 'CIFAR-10'} images", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaezoo_gpu_") as tmp:
        for precision in args.precisions:
            res: dict[str, list[tuple[float, int]]] = {"bare": [], **{f"vaezoo k={k}": [] for k in args.steps_per_call}}
            for _ in range(args.repeats):  # alternated: bare, then vaezoo at every k
                res["bare"].append(run_bare(r, images, precision, args.warmup, args.steps))
                for k in args.steps_per_call:
                    res[f"vaezoo k={k}"].append(run_vaezoo(precision, data_args, args.warmup, args.steps, Path(tmp), k))
            ips = {name: args.steps * r["batch_size"] / statistics.median(s for s, _ in v) for name, v in res.items()}
            peak = {name: max(m for _, m in v) / 2**20 for name, v in res.items()}
            for name in res:
                if name != "bare":
                    rows.append((precision, name, ips["bare"], ips[name], ips[name] / ips["bare"], peak["bare"], peak[name]))
            print(f"[{precision}] " + ", ".join(f"{name} {v:.0f} img/s" for name, v in ips.items()), flush=True)
    print(f"\n{'precision':<11} {'loop':<14} {'bare img/s':>10} {'vaezoo img/s':>12} {'vaezoo/bare':>11} "
          f"{'bare peak MiB':>13} {'vaezoo peak MiB':>15}")
    for precision, name, bare, vz, ratio, pb, pv in rows:
        print(f"{precision:<11} {name:<14} {bare:>10.0f} {vz:>12.0f} {ratio:>11.2f} {pb:>13.0f} {pv:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
