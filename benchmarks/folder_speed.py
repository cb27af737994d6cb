"""The ``folder`` DataModule against torchvision's ``ImageFolder`` + ``DataLoader``, in images per second.

    python benchmarks/folder_speed.py                   # 10,000 CIFAR-10 JPEGs, 3 repeats
    python benchmarks/folder_speed.py --images 50000 --repeats 1

The images: the first ``--images / 10`` JPEGs of each class in ``../shared/data/cifar-10/cifar10_train_jpeg.zip``
(32x32, real JPEGs), unpacked into ``<tmp>/train/<class>/NNNN.jpg``. Both loaders read that folder and
yield float32 batches of 128 in [0, 1] with labels, shuffled, every image once per epoch.

- ``vaezoo``: ``FolderDataModule(root, image_size=32)`` as ``--data folder --data.root <tmp>/train
  --data.image_size 32`` builds it (no
  val/test fractions, so every image is a training image; the cache in a fresh temporary folder), and
  its ``train_dataloader``, each uint8 batch turned into float as Lightning's ``on_after_batch_transfer``
  does. *First epoch*: listing, decoding with every core, writing the cache, then one epoch.
  *Later epochs*: one more pass over the loader. *Next run*: a new DataModule over the same folder,
  which reads the cache instead of decoding, then one epoch.
- ``ImageFolder``: ``ImageFolder(root, transform=ToTensor())`` in a
  ``DataLoader(batch_size=128, shuffle=True, num_workers=w, persistent_workers=w > 0)`` for w in
  ``--workers`` (0, 1, 2); the best w for each phase (by median) is the one compared. *First epoch*:
  building ``ImageFolder`` (it lists the folder), starting the workers, one epoch. *Later epochs*:
  one more epoch with the same (persistent) workers. It decodes every image every epoch: that is what
  it does by design.

Both find the JPEGs in the OS page cache (they were just unpacked), so the disk is not measured.
The contenders alternate within each repeat; medians (and mins) over ``--repeats`` are printed,
with the ratios vaezoo / ImageFolder (> 1: vaezoo is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import ToTensor

REPO = Path(__file__).resolve().parents[1]
ZIP = REPO.parent / "shared" / "data" / "cifar-10" / "cifar10_train_jpeg.zip"
BATCH = 128


def unpack(zip_path: Path, n: int, into: Path) -> Path:
    """The first ``n / 10`` JPEGs of each class of the zip, as ``into/train/<class>/NNNN.jpg``."""
    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith(".jpg"))
        by_class: dict[str, list[str]] = {}
        for name in names:
            by_class.setdefault(PurePosixPath(name).parent.name, []).append(name)
        per_class = n // len(by_class)
        for files in by_class.values():
            for name in files[:per_class]:
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return into / "train"


def epoch(batches: Iterable, to_float: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Iterate one epoch (float conversion included), returning the number of images seen."""
    seen = 0
    for images, labels in batches:
        x = to_float(images) if to_float is not None else images
        seen += len(x) + 0 * int(labels[0])  # touch the labels, as a training step would
    return seen


def vaezoo_run(root: Path, cache: Path, image_size: int | None) -> dict[str, float]:
    """Images/s of vaezoo's folder loader: first epoch (decode + cache), a later epoch, the next run's first."""
    from vaezoo.data import FolderDataModule

    shutil.rmtree(cache, ignore_errors=True)
    kwargs = {"image_size": image_size, "batch_size": BATCH, "val_fraction": 0.0, "test_fraction": 0.0,
              "cache_dir": str(cache)}

    def first(expect_decode: bool) -> tuple[FolderDataModule, float]:
        start = time.perf_counter()
        dm = FolderDataModule(str(root), **kwargs)
        dm.image_shape  # noqa: B018 (the CLI reads it to build the model: counted, it lists the folder)
        dm.prepare_data()
        dm.setup("fit")
        seen = epoch(dm.train_dataloader(), lambda x: dm._to_float(x, training=True))
        took = time.perf_counter() - start
        assert (dm.decoded > 0) == expect_decode, dm.decoded
        return dm, seen / took

    dm, first_rate = first(expect_decode=True)
    start = time.perf_counter()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    seen = epoch(loader, lambda x: dm._to_float(x, training=True))
    later_rate = seen / (time.perf_counter() - start)
    _, next_rate = first(expect_decode=False)
    return {"first": first_rate, "later": later_rate, "next run": next_rate}


def imagefolder_run(root: Path, workers: int) -> dict[str, float]:
    """Images/s of ImageFolder + DataLoader: the first epoch (listing and worker start-up included), a later one."""
    start = time.perf_counter()
    dataset = ImageFolder(str(root), transform=ToTensor())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    seen = epoch(loader)
    first_rate = seen / (time.perf_counter() - start)
    start = time.perf_counter()
    seen = epoch(loader)
    later_rate = seen / (time.perf_counter() - start)
    del loader  # stops persistent workers
    return {"first": first_rate, "later": later_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="JPEGs to unpack (a multiple of 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers to try")
    parser.add_argument("--zip", type=Path, default=ZIP)
    parser.add_argument("--image-size", type=int, default=32, help="vaezoo's image_size (0: None, keep the size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); see README")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*(the image cache|decoded images).*")

    with tempfile.TemporaryDirectory(prefix="vaezoo_folder_speed_") as tmp:
        root = unpack(args.zip, args.images, Path(tmp))
        n = sum(1 for _ in root.rglob("*.jpg"))
        print(f"{n} JPEGs from {args.zip.name} in {root}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
              f"torch threads {torch.get_num_threads()}")
        rates: dict[str, dict[str, list[float]]] = {}
        for repeat in range(args.repeats):
            result = {"vaezoo": vaezoo_run(root, Path(tmp) / "cache", args.image_size or None)}
            for w in args.workers:
                result[f"ImageFolder w={w}"] = imagefolder_run(root, w)
            for name, r in result.items():
                for phase, rate in r.items():
                    rates.setdefault(name, {}).setdefault(phase, []).append(rate)
            print(f"  repeat {repeat + 1}: " + "; ".join(
                f"{name} " + ", ".join(f"{p} {v:,.0f}" for p, v in r.items()) for name, r in result.items()))
        print(f"\nimages/s, median (min) of {args.repeats}; load now {os.getloadavg()[0]:.2f}")
        print(f"{'loader':<18} {'first epoch':>18} {'later epochs':>18} {'next run':>18}")
        med = {name: {p: statistics.median(v) for p, v in phases.items()} for name, phases in rates.items()}
        for name, phases in rates.items():
            cells = [f"{statistics.median(phases[p]):>9,.0f} ({min(phases[p]):>6,.0f})" if p in phases else f"{'-':>18}"
                     for p in ("first", "later", "next run")]
            print(f"{name:<18} " + " ".join(cells))
        # ImageFolder at its best num_workers, chosen for each phase on its own
        others = [name for name in med if name != "vaezoo"]
        best = {p: max(others, key=lambda name: med[name][p]) for p in ("first", "later")}
        print()
        for phase in ("first", "later"):
            print(f"vaezoo / {best[phase]}, {phase} epoch: {med['vaezoo'][phase] / med[best[phase]][phase]:.2f}x")
        print(f"vaezoo next run's first epoch / {best['first']} first epoch: "
              f"{med['vaezoo']['next run'] / med[best['first']]['first']:.2f}x")


if __name__ == "__main__":
    main()
