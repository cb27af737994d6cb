"""Any folder of images (PNG, JPEG, BMP, WebP) as a dataset, decoded once and cached as uint8.

Layout, under ``root`` (hidden files and folders, names starting with ``.``, are ignored):

* ``root/<class>/**/<image>``: every first-level subfolder is a class (sorted names, labels 0, 1, ...).
  Images directly in ``root`` form one more class, ``""`` (sorted first); with no subfolders at all
  there is a single class and every label is 0.
* ``root/train/``, ``root/val/``, ``root/test/``: when ``root/train/`` exists, these folders are the
  splits (each laid out as above, with labels shared over the three). A missing ``val/`` or ``test/``
  is carved out of ``train/`` by ``val_fraction`` / ``test_fraction``. Without ``train/``, the three
  splits are seeded fractions of the whole folder.

Every image is converted to ``channels`` (1 = grey, 3 = RGB; alpha is dropped) and, with
``image_size``, resized (shorter side to ``image_size``, bilinear, antialiased) and centre-cropped to
``image_size x image_size``; without it, all images must share one size, which is kept.

The first ``setup`` decodes the whole set with all cores into one uint8 ``(N, C, H, W)`` array saved
as ``folder_<key>.npy`` (plus ``folder_<key>.json``), where ``key`` hashes every file's relative path,
size and mtime and the transform: a changed file, a new file or another ``image_size``/``channels``
gives another key, so a stale cache is never read. Later runs memory-map that file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from vaezoo.data.base import ImageDataModule, Split, user_cache_dir
from vaezoo.data.loader import EpochBatchSampler, TensorBatchLoader
from vaezoo.errors import VAEZooError, describe_error
from vaezoo.io import atomic_write
from vaezoo.registry import register_dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_FOLDERS: tuple[Split, ...] = ("train", "val", "test")
# Bump when the decoding changes (resampling, conversion), so that old caches are not reused.
CACHE_VERSION = 1
# What PIL raises for a file that is not a readable image (truncated, corrupt, unknown format).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, Image.DecompressionBombError)
_CHUNK = 64  # images per task: large enough to amortise the thread hand-off, small for a smooth progress bar


@dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder, in a fixed order, with their class and split.

    Attributes:
        root: The folder.
        files: Paths relative to ``root``, sorted.
        labels: Class index of each file, in ``classes``.
        parts: Split folder of each file: 0 train/, 1 val/, 2 test/; -1 when the folder has no split folders.
        classes: Class names (first-level subfolders; ``""`` for images lying directly in the folder).
        stats: ``(size in bytes, mtime in ns)`` of each file, for the cache key.
    """

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    parts: tuple[int, ...]
    classes: tuple[str, ...]
    stats: tuple[tuple[int, int], ...]

    def key(self, transform: dict[str, Any]) -> str:
        """A hash of the file list, sizes, mtimes and the transform: the cache's name."""
        payload = json.dumps([CACHE_VERSION, transform, self.files, self.stats], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _images_under(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, recursively, hidden names skipped; symlinks followed."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(dirpath, name)


def index_folder(root: str | os.PathLike[str]) -> FolderIndex:
    """List the images under ``root`` with their classes and split folders (see the module doc).

    Raises:
        VAEZooError: ``root`` is not a folder, or holds no image with one of :data:`IMAGE_EXTENSIONS`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VAEZooError(
            f"--data.root {root} is not a folder: pass the folder that holds your images "
            f"({', '.join(IMAGE_EXTENSIONS)}), optionally in class subfolders."
        )
    split_mode = (root / "train").is_dir()
    bases = [(-1, root)]  # (split folder number, folder)
    if split_mode:
        bases = [(i, root / name) for i, name in enumerate(SPLIT_FOLDERS) if (root / name).is_dir()]
    found: list[tuple[str, str, int]] = []  # (relative path, class, part)
    for part, base in bases:
        for path in _images_under(base):
            inner = path.relative_to(base).parts
            found.append((path.relative_to(root).as_posix(), inner[0] if len(inner) > 1 else "", part))
    if split_mode:
        # Images beside the split folders would silently be left out: say so.
        others = [p for p in _images_under(root) if p.relative_to(root).parts[0] not in SPLIT_FOLDERS]
        if others:
            rank_zero_warn(
                f"{root} has train/ (so train/, val/ and test/ are the splits), but {len(others)} images lie outside "
                f"them (e.g. {others[0].relative_to(root)}) and are not used: move them into a split folder."
            )
    if not found:
        raise VAEZooError(
            f"no images found in {root}{' /train' if split_mode else ''}: looked for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case, in subfolders too). Put images there, or pass --data.root "
            "to the folder that holds them."
        )
    found.sort()
    classes = tuple(sorted({c for _, c, _ in found}))
    number = {c: i for i, c in enumerate(classes)}
    stats = []
    for rel, _, _ in found:
        st = (root / rel).stat()
        stats.append((st.st_size, st.st_mtime_ns))
    return FolderIndex(
        root=root,
        files=tuple(rel for rel, _, _ in found),
        labels=tuple(number[c] for _, c, _ in found),
        parts=tuple(p for _, _, p in found),
        classes=classes,
        stats=tuple(stats),
    )


def _convert(image: Image.Image, channels: int) -> Image.Image:
    """The image in mode ``L`` (grey) or ``RGB``; alpha is dropped, 16-bit grey is scaled to 8 bits."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # PIL's own L conversion clips 16-bit values at 255 (a white image); scale instead.
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode != "F" else 255.0
        image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8))  # (H, W) uint8: mode L
    elif image.mode == "P":
        image = image.convert("RGBA")  # a palette with transparency converts cleanly only through RGBA
    return image.convert("L" if channels == 1 else "RGB")


def decode_image(path: str | os.PathLike[str], channels: int, image_size: int | None) -> np.ndarray:
    """Read one image file as uint8 ``(C, H, W)``: converted to ``channels``, then (with ``image_size``)
    resized so its shorter side is ``image_size`` and centre-cropped to a square.

    Raises:
        OSError, ValueError, ...: the file is not a readable image (see ``_DECODE_ERRORS``).
    """
    with Image.open(path) as image:
        if image_size is not None:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still covers image_size (much faster).
            image.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        image = _convert(image, channels)
        if image_size is not None and image.size != (image_size, image_size):
            image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(image)  # (H, W) or (H, W, 3)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _image_size_of(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the header only, or None for a file PIL cannot open."""
    try:
        with Image.open(path) as image:
            return image.size
    except _DECODE_ERRORS:
        return None


def common_size(index: FolderIndex, workers: int | None = None) -> tuple[int, int]:
    """The ``(height, width)`` all images share, read from their headers.

    Raises:
        VAEZooError: the images have more than one size (``image_size`` must then be set).
    """
    with ThreadPoolExecutor(_workers(workers)) as pool:
        sizes = list(pool.map(_image_size_of, (index.root / f for f in index.files), chunksize=_CHUNK))
    found: dict[tuple[int, int], list[str]] = {}
    for rel, size in zip(index.files, sizes):
        if size is not None:  # unreadable files are reported and skipped when decoding
            found.setdefault(size, []).append(rel)
    if len(found) > 1:
        common = sorted(found.items(), key=lambda kv: -len(kv[1]))
        listed = "; ".join(f"{w}x{h}: {len(files)} images, e.g. {files[0]}" for (w, h), files in common[:3])
        raise VAEZooError(
            f"the images in {index.root} have {len(found)} different sizes "
            f"({listed}{'; ...' if len(found) > 3 else ''}) "
            "and no image_size was given: pass --data.image_size N to resize and centre-crop every image to NxN."
        )
    if not found:
        return 0, 0  # none readable: decoding reports every file
    (width, height), = found
    return height, width


def decode_folder(
    index: FolderIndex,
    out: np.ndarray,
    channels: int,
    image_size: int | None,
    workers: int | None = None,
) -> list[str]:
    """Decode every file of ``index`` into ``out[i]`` (uint8 ``(N, C, H, W)``), with all cores and a
    progress bar. Unreadable files, and files of another size when ``image_size`` is None, are warned
    about and left out: ``out[:N - len(skipped)]`` then holds the others, in order.

    Returns:
        The relative paths of the skipped files.
    """
    n = len(index.files)
    expected = tuple(out.shape[1:])
    problems: dict[int, str] = {}

    def decode_chunk(start: int) -> int:
        stop = min(start + _CHUNK, n)
        for i in range(start, stop):
            try:
                image = decode_image(index.root / index.files[i], channels, image_size)
            except _DECODE_ERRORS as err:
                problems[i] = describe_error(err)
                continue
            if image.shape != expected:
                problems[i] = f"its size is {image.shape[2]}x{image.shape[1]}, not {expected[2]}x{expected[1]}"
                continue
            out[i] = image
        return stop - start

    desc = f"vaezoo: decoding {n} images in {index.root}"
    with ThreadPoolExecutor(_workers(workers)) as pool, tqdm(total=n, desc=desc, unit="img", disable=None) as bar:
        # PIL releases the GIL while it decodes and resizes, so threads use every core.
        for done in pool.map(decode_chunk, range(0, n, _CHUNK)):
            bar.update(done)
    if not problems:
        return []
    bad = sorted(problems)
    shown = "; ".join(f"{index.files[i]} ({problems[i]})" for i in bad[:5])
    rank_zero_warn(
        f"skipped {len(bad)} of {n} images in {index.root} that could not be read: {shown}"
        f"{'; ...' if len(bad) > 5 else ''}. Replace or delete them; the other {n - len(bad)} are used."
    )
    kept = np.setdiff1d(np.arange(n), np.asarray(bad))
    # Close the gaps in place, in order: rows are only ever moved down, onto rows already read.
    for start in range(0, len(kept), 4096):
        rows = kept[start : start + 4096]
        out[start : start + len(rows)] = out[rows]
    return [index.files[i] for i in bad]


def _available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vaezoo/folders`` (default ``~/.cache/vaezoo/folders``): the user's cache, so that a
    shared or read-only image folder is never written to."""
    return user_cache_dir() / "folders"


class IndexedBatchLoader(TensorBatchLoader):
    """Batches gathered through an index from a whole (memory-mapped) set: only each batch is read into memory.

    Args:
        images: The whole set, uint8 ``(N, C, H, W)``, typically memory-mapped.
        labels: The whole set's labels, int64 ``(N,)``.
        index: The split's rows of ``images``, int64 ``(n,)``.
        sampler: Yields batches of positions in ``index``; ``sampler.num_samples`` must equal n.
    """

    def __init__(self, images: Tensor, labels: Tensor, index: Tensor, sampler: EpochBatchSampler) -> None:
        super().__init__(images, labels, EpochBatchSampler(len(images), 1, shuffle=False, drop_last=False))
        if sampler.num_samples != len(index):
            raise VAEZooError(f"sampler covers {sampler.num_samples} samples but the split has {len(index)} images.")
        self.index = index
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in self.sampler:
            rows = self.index[idx]
            yield self.images[rows], self.labels[rows]  # gathered copies: uint8 (B, C, H, W), int64 (B,)


@register_dataset("folder")
class FolderDataModule(ImageDataModule):
    """Your own images: any folder of PNG, JPEG, BMP or WebP files, class subfolders optional.

    Decoded once with all cores and cached as uint8 (see :mod:`vaezoo.data.folder` for the layout, the
    splits and the cache); ``image_shape`` is ``(channels, image_size, image_size)``, or the images'
    common size when ``image_size`` is None.
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        channels: Literal[1, 3] = 3,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        on_device: bool = True,
        cache_dir: str | None = None,
        memory_map: bool | None = None,
        workers: int | None = None,
    ) -> None:
        """Store and check the settings; the folder is listed when the image shape is first needed.

        Args:
            root: The folder of images (searched recursively). First-level subfolders are classes;
                train/, val/ and test/ subfolders, when train/ exists, are the splits.
            image_size: Resize (shorter side, bilinear) and centre-crop every image to this many
                pixels square. None keeps the images' size, which must then be the same for all.
            channels: 1 converts every image to grey, 3 to RGB (alpha is dropped).
            batch_size: Training batch size per device, in images.
            eval_batch_size: Validation/test/predict batch size per device, in images.
                None uses batch_size.
            val_fraction: Share of the images held out for validation (of train/ when the folder
                has split folders but no val/).
            test_fraction: Share of the images held out for testing (of train/ when the folder has
                split folders but no test/).
            seed: Seed of the train/val/test split and of the training shuffle order (epoch e is
                shuffled with seed + e), independent of seed_everything.
            on_device: Hold each split, as uint8, in the accelerator's memory, so that a batch is one
                index on the device. No effect on the CPU or for memory-mapped sets.
            cache_dir: Folder of the decoded-images cache. None uses $XDG_CACHE_HOME/vaezoo/folders
                (default ~/.cache/vaezoo/folders). When it cannot be written, the images are decoded
                into memory on every run, with a warning.
            memory_map: Read batches straight from the memory-mapped cache instead of loading the
                splits into memory. None does so when the set is larger than half the available
                memory.
            workers: Threads decoding images. None uses every core this process may run on.
        """
        super().__init__(root, batch_size, eval_batch_size, 0, seed, False, on_device)
        for key in ("val_size", "download"):  # the base's settings that a folder does not have
            self._hparams.pop(key, None)
            self._hparams_initial.pop(key, None)
        if image_size is not None and image_size <= 0:
            raise VAEZooError(
                f"image_size must be a positive number of pixels or None, got {image_size}: pass e.g. 64."
            )
        if channels not in (1, 3):
            raise VAEZooError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
        for what, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise VAEZooError(f"{what} must lie in [0, 1), got {value}: pass e.g. 0.1.")
        if val_fraction + test_fraction >= 1:
            raise VAEZooError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training images: "
                "make their sum less than 1 (e.g. 0.1 each)."
            )
        if workers is not None and workers <= 0:
            raise VAEZooError(f"workers must be a positive number of threads or None (every core), got {workers}.")
        self._index: FolderIndex | None = None
        self._shape: tuple[int, int, int] | None = None
        self._set: tuple[Tensor, Tensor, Tensor] | None = None  # images, labels, parts of the whole set
        self._rows: dict[Split, Tensor] = {}  # memory-mapped mode: each split's rows of the whole set
        self.test_indices: Tensor | None = None
        self.classes: tuple[str, ...] = ()
        self.num_classes = 0
        self.decoded = 0  # images decoded by this instance (0 when the cache was read)
        self.skipped: list[str] = []  # files left out as unreadable, relative to root
        self.cache_path: Path | None = None  # the .npy read, or None when decoded into memory

    # ----- what the folder holds ---------------------------------------------------------------

    def _listing(self) -> FolderIndex:
        if self._index is None:
            self._index = index_folder(self.hparams.root)
            self.classes = self._index.classes
            self.num_classes = len(self.classes)
        return self._index

    @property
    def image_shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        """``(C, H, W)`` of the images the model sees: from the settings, or from the images' headers."""
        if self._shape is None:
            channels, size = self.hparams.channels, self.hparams.image_size
            if size is not None:
                self._shape = (channels, size, size)
            else:
                index = self._listing()
                try:  # a cache of this very set knows the size: no need to open every file again
                    meta = json.loads(self._cache_files(index.key(self._transform))[1].read_text())
                    _, _, height, width = map(int, meta["shape"])  # (N, C, H, W)
                    self._shape = (channels, height, width)
                except (OSError, ValueError, KeyError, TypeError):
                    height, width = common_size(index, self.hparams.workers)
                    self._shape = (channels, height, width)
        return self._shape

    @property
    def _transform(self) -> dict[str, Any]:
        return {"image_size": self.hparams.image_size, "channels": self.hparams.channels, "resample": "bilinear-fit"}

    # ----- decoding and the cache ---------------------------------------------------------------

    def _cache_files(self, key: str) -> tuple[Path, Path]:
        folder = Path(self.hparams.cache_dir).expanduser() if self.hparams.cache_dir else default_cache_dir()
        return folder / f"folder_{key}.npy", folder / f"folder_{key}.json"

    def _read_cache(self, index: FolderIndex, key: str) -> tuple[np.ndarray, list[str]] | None:
        """The cached array (memory-mapped) and skipped files, or None when there is no valid cache for ``key``."""
        npy, meta_file = self._cache_files(key)
        try:
            meta = json.loads(meta_file.read_text())
            # mode "c": copy-on-write, so torch gets a writable array without reading the file.
            array = np.load(npy, mmap_mode="c")
        except (OSError, ValueError):
            return None
        n = len(index.files) - len(meta.get("skipped", ()))
        # The header must describe this very set and transform: a hash collision or a foreign file is rebuilt.
        if (meta.get("version"), meta.get("key"), meta.get("transform")) != (CACHE_VERSION, key, self._transform) or (
            array.dtype != np.uint8 or array.ndim != 4 or tuple(array.shape[1:]) != self.image_shape or len(array) < n
        ):
            return None
        return array[:n], list(meta["skipped"])

    def _decode(self, index: FolderIndex, key: str) -> tuple[np.ndarray, list[str]]:
        """Decode the set, into the cache file when it can be written, else into memory (with a warning)."""
        shape = (len(index.files), *self.image_shape)
        npy, meta_file = self._cache_files(key)
        channels, size, workers = self.hparams.channels, self.hparams.image_size, self.hparams.workers
        try:
            npy.parent.mkdir(parents=True, exist_ok=True)
            # Decode straight into a file-backed array: a set larger than memory never sits in memory whole.
            tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except OSError as err:
            rank_zero_warn(
                f"cannot write the image cache in {npy.parent} ({describe_error(err)}): decoding {shape[0]} images "
                "into memory, again on every run. Pass --data.cache_dir to a writable folder to decode them once."
            )
            out = np.empty(shape, dtype=np.uint8)
            skipped = decode_folder(index, out, channels, size, workers)
            self.decoded += shape[0]
            return out[: shape[0] - len(skipped)], skipped
        try:
            skipped = decode_folder(index, out, channels, size, workers)
            self.decoded += shape[0]
            out.flush()
            del out
            os.replace(tmp, npy)  # atomic: a reader sees no cache or the whole array
            meta = {"version": CACHE_VERSION, "key": key, "transform": self._transform, "root": str(index.root),
                    "shape": [shape[0] - len(skipped), *shape[1:]], "skipped": skipped}
            # The header is written last: an .npy without its .json is never read.
            atomic_write(meta_file, lambda file: file.write(json.dumps(meta, indent=1).encode()))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        rank_zero_info(f"vaezoo: cached {shape[0] - len(skipped)} decoded images in {npy}.")
        self.cache_path = npy
        return np.load(npy, mmap_mode="c")[: shape[0] - len(skipped)], skipped

    def _whole_set(self) -> tuple[Tensor, Tensor, Tensor]:
        """Images uint8 ``(N, C, H, W)`` (memory-mapped when cached), labels and split folders of every
        readable file, from the cache or decoded now."""
        if self._set is None:
            index = self._listing()
            key = index.key(self._transform)
            cached = self._read_cache(index, key)
            if cached is not None:
                self.cache_path = self._cache_files(key)[0]
                if cached[1]:  # said when the cache was built; said again, as those files are still left out
                    rank_zero_warn(
                        f"{len(cached[1])} images in {index.root} are skipped as unreadable (e.g. {cached[1][0]}; "
                        f"all listed in {self._cache_files(key)[1]}). Replace or delete them."
                    )
            array, skipped = cached if cached is not None else self._decode(index, key)
            self.skipped = skipped
            gone = {f for f in skipped}
            kept = [i for i, f in enumerate(index.files) if f not in gone]
            if not kept:
                raise VAEZooError(
                    f"none of the {len(index.files)} images in {index.root} could be read (see the warning above): "
                    "replace them with readable PNG, JPEG, BMP or WebP files."
                )
            self._set = (
                torch.from_numpy(array),
                torch.tensor([index.labels[i] for i in kept], dtype=torch.int64),
                torch.tensor([index.parts[i] for i in kept], dtype=torch.int64),
            )
        return self._set

    def _prepare(self) -> None:
        self._whole_set()  # decode and cache once here (one process per node), not on every rank in setup

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        """The training (``train=True``: train and val) or test images; the splits are made in :meth:`setup`."""
        images, labels, parts = self._whole_set()
        rows = self._split_rows(parts)
        none = rows["train"][:0]
        idx = torch.cat([rows["train"], rows.get("val", none)]) if train else rows.get("test", none)
        return images[idx], labels[idx]

    # ----- splits ------------------------------------------------------------------------------

    def _split_rows(self, parts: Tensor) -> dict[Split, Tensor]:
        """Each split's rows of the whole set: the split folders, or seeded fractions (see the module doc)."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        if bool((parts < 0).all()):  # no split folders: fractions of everything
            pool, rows = torch.arange(len(parts)), {}
            carve = {"val": hp.val_fraction, "test": hp.test_fraction}
        else:
            pool = torch.nonzero(parts == 0).flatten()
            rows = {s: torch.nonzero(parts == i).flatten() for i, s in enumerate(SPLIT_FOLDERS)
                    if i and bool((parts == i).any())}
            carve = {s: getattr(hp, f"{s}_fraction") for s in ("val", "test") if s not in rows}
        perm = pool[torch.randperm(len(pool), generator=generator)]
        start = 0
        for split, fraction in carve.items():
            count = round(fraction * len(pool))
            rows[split] = perm[start : start + count].sort().values
            start += count
        rows["train"] = perm[start:].sort().values  # sorted: the file order, for reading locality
        if len(rows["train"]) == 0:
            where = f"{Path(hp.root) / 'train'}" if bool((parts >= 0).any()) else hp.root
            raise VAEZooError(
                f"no training images left: {where} has {len(pool)} readable images and the val/test fractions "
                f"take them all. Add images, or lower --data.val_fraction / --data.test_fraction."
            )
        return rows

    def setup(self, stage: str | None = None) -> None:
        """Read the whole set once (cache or decode) and cut the three splits from it."""
        if self._rows or self._splits:
            return
        images, labels, parts = self._whole_set()
        rows = self._split_rows(parts)
        self.train_indices, self.val_indices = rows["train"], rows.get("val", torch.empty(0, dtype=torch.int64))
        self.test_indices = rows.get("test", torch.empty(0, dtype=torch.int64))
        memory_map = self.hparams.memory_map
        if memory_map is None:
            available = _available_memory()
            memory_map = available is not None and images.numel() > available // 2 and self.cache_path is not None
        for split in SPLIT_FOLDERS:
            idx = rows.get(split, torch.empty(0, dtype=torch.int64))
            if memory_map:
                self._rows[split] = idx
            else:
                self._splits[split] = (images[idx], labels[idx])  # gathered into memory: (n, C, H, W)
        rank_zero_info(
            f"vaezoo: {len(images)} images in {self.hparams.root}, {self.num_classes} classes, "
            f"{'x'.join(map(str, images.shape[1:]))}: train {len(rows['train'])}, val {len(self.val_indices)}, "
            f"test {len(self.test_indices)}{' (memory-mapped)' if memory_map else ''}."
        )

    @property
    def train_size(self) -> int | None:
        """Training images of the whole split, over all processes (None before ``setup``)."""
        if "train" in self._rows:
            return len(self._rows["train"])
        return super().train_size

    def _loader(self, split: Split, training: bool) -> TensorBatchLoader:
        if split not in self._rows:
            return super()._loader(split, training)
        images, labels, _ = self._whole_set()
        batch_size = self.hparams.batch_size
        if not training and self.hparams.eval_batch_size is not None:
            batch_size = self.hparams.eval_batch_size
        index = self._rows[split]
        sampler = EpochBatchSampler(
            len(index), batch_size, shuffle=training, drop_last=training, seed=self.hparams.seed
        )
        loader = IndexedBatchLoader(images, labels, index, sampler)
        if training and len(loader) == 0:
            raise VAEZooError(
                f"batch_size={batch_size} is more than the {len(index)} training images can fill once: "
                "pass a smaller --data.batch_size."
            )
        return loader
