"""Training images/s on one GPU, vaezoo's Trainer against a bare loop, per recipe and precision.

    python benchmarks/gpu_throughput.py                       # random images of each recipe's shape
    python benchmarks/gpu_throughput.py --configs cifar_conv --data-dir ../shared/data

Called by ``benchmarks/gpu_check.sh``. Two recipes: ``cifar_conv`` (a conv net, a step of milliseconds)
and ``mnist_mlp`` (a small MLP, a step of a fraction of a millisecond on a GPU, where Lightning's fixed
~1 ms of Python per training step would dominate: what ``steps_per_call`` is for). For each precision
(32-true, 16-mixed, bf16-mixed) it runs, in turn:

- ``bare``: a PyTorch loop written here with the config's net, latent size, optimiser (as the config
  writes it) and batch size; the ELBO with the config's vaezoo likelihood (``DiscretizedLogistic`` or
  ``Bernoulli``, kept in fp32 under autocast, as vaezoo does) and the analytic KL; ``torch.autocast`` for
  the mixed precisions, plus a ``GradScaler`` for 16-mixed. Batches are indexed out of the uint8 training
  tensor in host memory and copied to the GPU each step, as vaezoo's loader does; MNIST is binarised on
  the GPU each step (``1[u < p]``), as vaezoo does.
- ``bare, vz ops``: the same loop with the optimiser built as vaezoo builds it (torch's fused Adam where
  the config leaves the kernel open and no GradScaler runs, ``vaezoo.models.fused``). vaezoo's ratio to
  this loop is the framework's own cost.
- ``vaezoo k=K``: ``vaezoo fit --config configs/<recipe>.yaml --trainer.precision P
  --model.steps_per_call K`` on one GPU, K = 1 and ``auto`` (the default) by default (validation off,
  ``warmup + steps`` optimiser steps through ``--trainer.max_steps``, the config's logger into a temp
  folder). ``auto`` takes the largest k <= 25 that divides 50, 200 and ``warmup + steps``: 10 for
  cifar_conv's 10 + 50 steps, 25 for mnist_mlp's 50 + 500.

Timed: the ``steps`` steps after ``warmup`` untimed ones, between two ``torch.cuda.synchronize``.
Peak memory: ``torch.cuda.max_memory_allocated`` over the whole run (weights, Adam state,
activations), reset before each run.

Data: random uint8 images of the recipe's shape by default (throughput does not depend on the pixels,
and nothing needs to be decoded or read); ``--data-dir`` reads the real CIFAR-10 for cifar_conv (official
batches or the JPEG mirror in ``cifar-10/``; set ``XDG_CACHE_HOME`` to keep the decoded cache somewhere
else than ``~/.cache/vaezoo``).
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
from vaezoo.data.mnist import MNISTDataModule
from vaezoo.models.fused import prefer_fused
from vaezoo.registry import LIKELIHOODS, NETS

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
# Per recipe: (warm-up, timed) optimiser steps. Both are multiples of the k that auto takes (10 and 25), and
# the timed part is long enough to time on a GPU.
STEPS = {"cifar_conv": (10, 50), "mnist_mlp": (50, 500)}
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


def _random_images(n: int, shape: tuple[int, int, int], seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator), \
        torch.randint(0, 10, (n,), generator=generator)


class RandomCIFAR(ImageDataModule):
    """CIFAR-10-shaped random uint8 images (50,000 train, 10,000 test), the same on every process."""

    image_shape = (3, 32, 32)
    num_classes = 10
    name = "random_cifar"

    def _prepare(self) -> None:
        pass  # nothing to download

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        return _random_images(50_000 if train else 10_000, self.image_shape, 0 if train else 1)


class RandomMNIST(MNISTDataModule):
    """MNIST-shaped random uint8 images (60,000 train, 10,000 test), binarised as MNIST's ``binarize`` says."""

    def _prepare(self) -> None:
        pass  # nothing to download

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        return _random_images(60_000 if train else 10_000, (1, 28, 28), 0 if train else 1)


class GPUTimer(L.Callback):
    """Seconds of the training batches ``warmup`` to ``warmup + steps - 1``, and the peak memory."""

    results: ClassVar[list[tuple[float, int]]] = []  # (seconds, peak bytes)
    steps_per_call_aware = True  # its batch hooks read the group's k: auto groups with it (vaezoo.models.groups)
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


def recipe(name: str) -> dict:
    """The settings of ``configs/<name>.yaml`` that the bare loop shares with vaezoo."""
    path = REPO / "configs" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    model = config["model"]["init_args"]
    data = config["data"]
    net = model["net"]
    opt = model.get("optimizer", {"class_path": "torch.optim.Adam"})
    module, _, cls = opt["class_path"].rpartition(".")
    likelihood = LIKELIHOODS.get(model.get("likelihood", "bernoulli"))()
    mnist = data["class_path"] == "mnist"
    if not mnist and data["class_path"] != "cifar10":
        raise SystemExit(f"{path}: this benchmark covers the MNIST and CIFAR-10 recipes, not {data['class_path']}.")
    return {
        "name": name,
        "path": path,
        "image_shape": (1, 28, 28) if mnist else (3, 32, 32),
        "binarize": data.get("init_args", {}).get("binarize", "dynamic") if mnist else None,
        "random_data": RandomMNIST if mnist else RandomCIFAR,
        "likelihood": likelihood,
        "latent_dim": model["latent_dim"],
        "net_cls": NETS.get(net if isinstance(net, str) else net["class_path"]),
        "net_args": {} if isinstance(net, str) else dict(net.get("init_args", {})),
        "opt_cls": getattr(__import__(module, fromlist=[cls]), cls),
        "opt_args": dict(opt.get("init_args", {})),
        "batch_size": data.get("init_args", {}).get("batch_size", 128),
        "seed": config.get("seed_everything", 0),
    }


def run_bare(r: dict, images: Tensor, precision: str, warmup: int, steps: int,
             vaezoo_ops: bool = False) -> tuple[float, int]:
    """The bare loop on the GPU: (seconds of ``steps`` steps, peak bytes). ``vaezoo_ops``: the optimiser as vaezoo
    builds it (fused where the config leaves the kernel open and no GradScaler runs)."""
    device = torch.device(DEVICE)
    torch.manual_seed(r["seed"])
    likelihood = r["likelihood"]
    channels = r["image_shape"][0]
    net = r["net_cls"](r["image_shape"], r["latent_dim"], channels * likelihood.params_per_channel, **r["net_args"])
    net = net.to(device)
    opt = r["opt_cls"](net.parameters(), **r["opt_args"])
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    if vaezoo_ops and dtype is not torch.float16:
        opt = prefer_fused(opt)
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
        x = images[idx].to(device).float().div_(255)  # (B, C, H, W) in [0, 1]
        if r["binarize"] == "dynamic":
            x = (torch.rand_like(x) < x).float()  # a fresh Bernoulli draw, as vaezoo's MNIST makes it
        with torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None):
            mean, logvar = net.encoder(x).chunk(2, dim=1)  # (B, L) each
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            params = net.decoder(z)  # (B, P * C, H, W)
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


def run_vaezoo(r: dict, precision: str, data_args: list[str], warmup: int, steps: int, workdir: Path,
               k: str = "auto") -> tuple[float, int]:
    """``vaezoo fit`` on one GPU, ``warmup + steps`` optimiser steps (``--trainer.max_steps``), with
    ``--model.steps_per_call k`` (``auto``: the default, as users run it): (seconds of ``steps`` steps, peak bytes)."""
    from vaezoo.cli import main

    GPUTimer.warmup, GPUTimer.steps = warmup, steps
    run_dir = tempfile.mkdtemp(dir=workdir)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees this script's own argv
    try:
        main([
            "fit", "--config", str(r["path"]), *data_args,
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
    parser.add_argument("--configs", nargs="+", default=list(STEPS), choices=list(STEPS), help="recipes under configs/")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 50 cifar_conv, 500 mnist_mlp)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (cuDNN autotuning, allocation; default: 10 cifar_conv, 50 mnist_mlp)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per loop and precision (median reported)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding CIFAR-10; default: random images")
    parser.add_argument("--steps-per-call", nargs="+", default=["1", "auto"],
                        help="vaezoo's --model.steps_per_call values to run: auto (the default, which takes the largest "
                             "k <= 25 dividing 50, 200 and warmup + steps) and numbers that divide --warmup and --steps")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the same code on the CPU (a few steps, one repeat) to check the script, not to time")
    args = parser.parse_args(argv)
    global DEVICE
    if args.cpu_dry_run:
        DEVICE, args.repeats = "cpu", 1
        args.steps_per_call = [k for k in args.steps_per_call if k in ("1", "2", "auto")] or ["1"]
    elif not torch.cuda.is_available():
        print("no GPU")
        return 0
    import warnings

    warnings.filterwarnings("ignore", message=r".*could not find the monitored key")  # validation is off
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # short runs
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run)"
    print(f"{device_name} | torch {torch.__version__} | lightning {L.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaezoo_gpu_") as tmp:
        for name in args.configs:
            r = recipe(name)
            warmup, steps = (2, 2) if args.cpu_dry_run else STEPS[name]
            warmup, steps = args.warmup or warmup, args.steps or steps
            if args.data_dir is None or name != "cifar_conv":
                random_data = r["random_data"]
                data_args = ["--data.class_path", f"{random_data.__module__}.{random_data.__name__}"]
                dm: ImageDataModule = random_data(batch_size=r["batch_size"])
            else:
                from vaezoo.data import CIFAR10DataModule

                data_args = ["--data.root", str(args.data_dir)]
                dm = CIFAR10DataModule(root=str(args.data_dir), batch_size=r["batch_size"])
                dm.prepare_data()
            dm.setup("fit")
            images = dm.train_dataloader().images  # uint8 (N, C, H, W), host memory
            print(f"\n{name}, batch {r['batch_size']}, {warmup} warm-up + {steps} timed steps, "
                  f"{'random' if data_args[0] == '--data.class_path' else 'CIFAR-10'} images", flush=True)
            for precision in args.precisions:
                res: dict[str, list[tuple[float, int]]] = {
                    "bare": [], "bare, vz ops": [], **{f"vaezoo k={k}": [] for k in args.steps_per_call}}
                for _ in range(args.repeats):  # alternated: the bare loops, then vaezoo at every k
                    res["bare"].append(run_bare(r, images, precision, warmup, steps))
                    res["bare, vz ops"].append(run_bare(r, images, precision, warmup, steps, vaezoo_ops=True))
                    for k in args.steps_per_call:
                        res[f"vaezoo k={k}"].append(run_vaezoo(r, precision, data_args, warmup, steps, Path(tmp), k))
                ips = {loop: steps * r["batch_size"] / statistics.median(s for s, _ in v) for loop, v in res.items()}
                peak = {loop: max(m for _, m in v) / 2**20 for loop, v in res.items()}
                for loop in res:
                    if loop != "bare":
                        rows.append((name, precision, loop, ips["bare"], ips[loop], ips[loop] / ips["bare"],
                                     peak["bare"], peak[loop]))
                print(f"[{name} {precision}] " + ", ".join(f"{loop} {v:.0f} img/s" for loop, v in ips.items()), flush=True)
    print(f"\n{'recipe':<11} {'precision':<11} {'loop':<14} {'bare img/s':>10} {'loop img/s':>10} {'loop/bare':>9} "
          f"{'bare peak MiB':>13} {'loop peak MiB':>13}")
    for name, precision, loop, bare, other, ratio, pb, pv in rows:
        print(f"{name:<11} {precision:<11} {loop:<14} {bare:>10.0f} {other:>10.0f} {ratio:>9.2f} {pb:>13.0f} {pv:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
