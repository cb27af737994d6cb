"""What ``vaezoo predict`` writes: samples, restorations, latent codes and decodings.

    vaezoo predict --config configs/mnist_mlp.yaml --ckpt_path runs/.../last.ckpt \\
        --predict_writer.output_dir out --predict_writer.tasks "[generate, reconstruct, encode]" \\
        --predict_writer.corruption mask

:class:`PredictionWriter` acts only inside ``trainer.predict`` (the official test split); during
``fit``, ``validate`` and ``test`` it does nothing and creates nothing. Its files, under
``output_dir``, each written atomically (a temporary name in the same folder, then ``os.replace``):

* ``generate``: ``samples.pt``, float32 ``(num_samples, C, H, W)`` in [0, 1], E[x | z] for
  z ~ N(0, I); ``samples.png``, the first ``grid_images`` of them, 8 per row.
* ``reconstruct``: ``reconstructions.pt``, float16 ``(N, C, H, W)`` in [0, 1], the reconstruction
  of every (corrupted) test image in dataset order; ``reconstructions.png``, the first
  ``grid_images`` test images in rows of three: clean, corrupted, reconstructed (the same 8 images
  in each of the three rows); ``restore_metrics.json``, ``{"corruption", "mse_corrupted",
  "mse_reconstructed", "psnr_corrupted", "psnr_reconstructed", "images"}``: the MSE of the clean
  images against the corrupted inputs and against the reconstructions, and their PSNR in dB.
* ``encode``: ``codes.npz`` with ``mean`` and ``logvar`` float32 ``(N, L)``, ``label`` int64
  ``(N,)``, ``image_shape`` int64 ``(3,)``, ``latent_dim`` int64 ``()`` and ``checkpoint`` str ``()``
  (``""`` when none was loaded); ``compression.json``, bytes per image of the 8-bit image against
  a float32 and a float16 code, and the ratios.
* ``decode``: ``decoded.pt``, float16 ``(N, C, H, W)`` in [0, 1], E[x | z = mean] of the codes;
  ``decoded.png``, the first ``grid_images`` of them, 8 per row.

Image tensors of the whole split are float16: its step near 1 is 2^-11, finer than the 1/255 of
8-bit pixels, at half the size of float32.

Multi-process (DDP) predict: each process handles the positions ``rank, rank + W, ...`` of the split
(vaezoo's loaders and Lightning's distributed sampler both shard so); at the end of the epoch every
process's rows are gathered with ``strategy.all_gather`` and put back in dataset order, and rank 0
alone writes. Sample generation and decoding run on rank 0 only.
"""

from __future__ import annotations

import json
import math
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor
from torchvision.utils import save_image

from vaezoo.errors import VAEZooError
from vaezoo.io import atomic_write
from vaezoo.latents.gaussian import GaussianLatent
from vaezoo.models.base import VAE

Task = Literal["generate", "reconstruct", "encode", "decode"]
Corruption = Literal["none", "noise", "mask"]

_GRID_ROW = 8  # images per row of every PNG grid
_CHUNK = 256  # codes decoded per decoder call when generating or decoding
_OPT = "--predict_writer"  # the CLI prefix, for the fixes named in error messages


def psnr(mse: float) -> float | None:
    """Peak signal-to-noise ratio in dB of pixels in [0, 1]: ``10 log10(1 / mse)``; None when mse is 0."""
    return None if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def mask_box(height: int, width: int, fraction: float) -> tuple[slice, slice]:
    """The rows and columns that ``corruption="mask"`` blanks: a centred box of ``fraction`` of the area.

    Each side is scaled by ``sqrt(fraction)`` and rounded half up (a square on square images); the
    box starts ``(side - box side) // 2`` pixels from the top and from the left. On 28x28 with
    ``fraction=0.5``: rows and columns 4 to 23 (20x20 = 400 of 784 pixels).

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        fraction: Share of the image area to mask, in (0, 1].
    """
    # floor(x + 0.5), not round(): Python's round() sends halves to the even side.
    h, w = (math.floor(side * math.sqrt(fraction) + 0.5) for side in (height, width))
    top, left = (height - h) // 2, (width - w) // 2
    return slice(top, top + h), slice(left, left + w)


def restore_order(gathered: Tensor, counts: list[int]) -> Tensor:
    """Rows gathered from W processes, back in dataset order.

    Process ``r`` held dataset rows ``r, r + W, r + 2W, ...``, padded to the longest share.

    Args:
        gathered: ``(W, max(counts), ...)``, from ``all_gather`` of each process's padded rows.
        counts: How many of each process's rows are real (not padding).

    Returns:
        ``(sum(counts), ...)``: row ``k * W + r`` is process ``r``'s row ``k``.
    """
    most = gathered.shape[1]
    real = torch.arange(most)[:, None] < torch.tensor(counts)[None, :]  # (most, W)
    return gathered.transpose(0, 1)[real]  # k-major, then rank: the dataset order


def _gather_rows(strategy: Strategy, local: Tensor) -> Tensor:
    """Every process's rows of ``local`` ``(n_rank, ...)`` in dataset order, on the CPU; a no-op on one process."""
    if strategy.world_size == 1:
        return local
    device = strategy.root_device
    counts = strategy.all_gather(torch.tensor([len(local)], device=device)).flatten().tolist()  # (W,)
    # all_gather needs one shape on every process: pad each share to the longest.
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: len(local)] = local
    return restore_order(strategy.all_gather(padded.to(device)).cpu(), counts)


def _save_grid(images: Tensor, nrow: int) -> Callable[[BinaryIO], None]:
    return lambda file: save_image(images.float(), file, nrow=nrow, padding=2, format="png")


def _save_tensor(tensor: Tensor) -> Callable[[BinaryIO], None]:
    return lambda file: torch.save(tensor.contiguous(), file)


def _save_json(data: dict[str, Any]) -> Callable[[BinaryIO], None]:
    return lambda file: file.write((json.dumps(data, indent=2) + "\n").encode())


class PredictionWriter(L.Callback):
    """Writes samples, restorations, latent codes and decodings during ``vaezoo predict``.

    It acts only in ``trainer.predict``, over the official test split; in fit, validate and test it
    does nothing and creates no folder. Rank 0 alone writes; under DDP the per-image results of all
    processes are gathered first (see the module docstring for every file and its format).

    Tasks:

    * ``generate``: ``num_samples`` images E[x | z] from z ~ N(0, I) drawn with ``seed`` on the CPU
      (the same images on any device) -> ``samples.pt``, ``samples.png``.
    * ``reconstruct`` (restore): every test image is corrupted (``corruption``) and reconstructed
      from the corrupted input with ``model.reconstruct``. ``restore_metrics.json`` holds the MSE of
      the clean images against the corrupted inputs and against the reconstructions (per pixel,
      averaged over all pixels of all N images, [0, 1] units) and the PSNR of those MSEs
      (``10 log10(1 / MSE)`` dB; ``null`` when the MSE is 0, i.e. infinite) ->
      ``reconstructions.pt``, ``reconstructions.png``, ``restore_metrics.json``.
    * ``encode`` (compress): the posterior mean and log-variance of every clean test image, with
      its label -> ``codes.npz``; the code size against the raw image -> ``compression.json``.
    * ``decode``: E[x | z = mean] of the codes in ``codes_path`` (a ``codes.npz`` from ``encode``)
      -> ``decoded.pt``, ``decoded.png``.

    "Clean" images are the test images as the DataModule delivers them (binarised where it
    binarises). The output folder and the codes file are checked when predict starts, before the
    first batch.

    Args:
        output_dir: Folder for the files (created if missing).
        tasks: What to write: any of generate, reconstruct, encode, decode.
        num_samples: Images drawn from the prior by ``generate``.
        seed: Seed of the prior draws of ``generate`` and of the noise of ``corruption="noise"``
            (the noise also depends on the batch size and the number of processes).
        corruption: What ``reconstruct`` does to each input before reconstructing it: ``none``;
            ``noise`` adds Gaussian noise of standard deviation ``noise_std`` to the [0, 1] pixels and
            clamps to [0, 1]; ``mask`` sets to 0 a centred box covering ``mask_fraction`` of the image
            area (each side scaled by sqrt(mask_fraction), e.g. 20x20 of 28x28 at 0.5).
        noise_std: Standard deviation of the added noise, in [0, 1] pixel units (before clamping).
        mask_fraction: Share of the image area masked by ``corruption="mask"``, in (0, 1].
        codes_path: The ``codes.npz`` that ``decode`` reads (written by ``encode``).
        grid_images: How many images each PNG grid shows (at most; 8 per row).
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        tasks: list[Task] = ["generate", "reconstruct", "encode"],  # noqa: B006 (jsonargparse needs the literal)
        num_samples: int = 64,
        seed: int = 0,
        corruption: Corruption = "none",
        noise_std: float = 0.3,
        mask_fraction: float = 0.5,
        codes_path: str | None = None,
        grid_images: int = 64,
    ) -> None:
        super().__init__()
        unknown = sorted(set(tasks) - set(get_args(Task)))
        if unknown or not tasks:
            raise VAEZooError(
                f"predict_writer.tasks must be a non-empty list of {', '.join(get_args(Task))}; got {list(tasks)}. "
                f'E.g. {_OPT}.tasks "[generate, reconstruct, encode]".'
            )
        if corruption not in get_args(Corruption):
            raise VAEZooError(f"predict_writer.corruption must be one of {get_args(Corruption)}, got {corruption!r}.")
        for name, value in (("num_samples", num_samples), ("grid_images", grid_images)):
            if value <= 0:
                raise VAEZooError(f"predict_writer.{name} must be a positive number of images, got {value}.")
        if noise_std < 0:
            raise VAEZooError(f"predict_writer.noise_std must be >= 0 (pixel units in [0, 1]), got {noise_std}.")
        if not 0 < mask_fraction <= 1:
            raise VAEZooError(f"predict_writer.mask_fraction must lie in (0, 1], got {mask_fraction}.")
        self.output_dir = Path(output_dir)
        self.tasks = list(dict.fromkeys(tasks))  # ordered, without repeats
        self.num_samples = num_samples
        self.seed = seed
        self.corruption = corruption
        self.noise_std = noise_std
        self.mask_fraction = mask_fraction
        self.codes_path = codes_path
        self.grid_images = grid_images
        self._reset()

    def _reset(self) -> None:
        # Per-batch results of this process, on the CPU, in batch order.
        self._rows: dict[str, list[Tensor]] = {}
        self._noise: torch.Generator | None = None
        self._codes: np.ndarray | None = None  # (N, L) means read for decode

    def _add(self, name: str, rows: Tensor) -> None:
        self._rows.setdefault(name, []).append(rows.detach().cpu())

    # ----- corruption --------------------------------------------------------------------------------

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The corrupted copy of images ``x`` ``(B, C, H, W)`` in [0, 1] that ``reconstruct`` sees.

        Args:
            x: Clean images, pixels in [0, 1].
            generator: CPU generator of the noise (``corruption="noise"``); None uses torch's global one.
        """
        if self.corruption == "noise":
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
            return (x + self.noise_std * noise).clamp_(0.0, 1.0)
        if self.corruption == "mask":
            rows, cols = mask_box(x.shape[-2], x.shape[-1], self.mask_fraction)
            x = x.clone()
            x[..., rows, cols] = 0.0
            return x
        return x

    # ----- Lightning hooks -----------------------------------------------------------------------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: VAE) -> None:
        """Check the output folder (and the codes file), then generate and decode: no batches needed."""
        self._reset()
        problem = self._check_inputs(pl_module) if trainer.is_global_zero else None
        # Every process raises the same error, so none waits on a collective the others never reach.
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise VAEZooError(problem)
        if self.corruption == "noise":
            # One stream per process, seeded by (seed, rank); drawn on the CPU, the same on any device.
            state = np.random.SeedSequence([self.seed, trainer.global_rank]).generate_state(1, np.uint64)[0]
            self._noise = torch.Generator().manual_seed(int(state))
        if trainer.is_global_zero:
            with torch.no_grad(), trainer.precision_plugin.predict_step_context():
                if "generate" in self.tasks:
                    self._generate(pl_module)
                if "decode" in self.tasks:
                    self._decode(pl_module)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: VAE,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Corrupt, reconstruct and encode one batch, keeping the results on the CPU."""
        if not {"reconstruct", "encode"} & set(self.tasks):
            return
        x, labels = batch  # (B, C, H, W) float in [0, 1] on the device, (B,) int
        with torch.no_grad(), trainer.precision_plugin.predict_step_context():
            if "reconstruct" in self.tasks:
                self._restore_batch(pl_module, x.float())
            if "encode" in self.tasks:
                posterior = pl_module.encode(x)  # (needs a one-layer Gaussian latent: checked at setup)
                self._add("mean", posterior.mean.float())  # (B, L)
                self._add("logvar", posterior.logvar.float())  # (B, L)
                self._add("label", labels.long())  # (B,)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
        """Gather every process's rows (DDP) and write the reconstruct and encode files on rank 0."""
        rows = {name: self._local(name, *spec) for name, spec in self._row_specs(pl_module).items()}
        # All processes take part in every gather, in the same order.
        rows = {name: _gather_rows(trainer.strategy, local) for name, local in rows.items()}
        if trainer.is_global_zero:
            if "reconstruct" in self.tasks:
                self._write_restore(rows)
            if "encode" in self.tasks:
                self._write_codes(rows, pl_module, trainer.ckpt_path)
        self._reset()

    # ----- checks ----------------------------------------------------------------------------------------

    def _check_inputs(self, pl_module: VAE) -> str | None:
        """The first problem with the model, the output folder or the codes file, as a user-facing message."""
        # encode writes q(z | x) as (mean, logvar): one Gaussian layer, or a variant whose encode() gives the
        # Gaussian posterior of the decoder's code (hvae: q(z1 | x)).
        gaussian = isinstance(pl_module.latent, GaussianLatent) or type(pl_module).encode is not VAE.encode
        if "encode" in self.tasks and not gaussian:
            return (
                f"the encode task writes a one-layer Gaussian posterior (mean, logvar), but this model's latent is a "
                f"{type(pl_module.latent).__name__} ({type(pl_module).__name__}). Drop encode from {_OPT}.tasks, e.g. "
                f'"[generate, reconstruct]"; in Python, model(x).latent.posterior holds its codes.'
            )
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".probe.{secrets.token_hex(4)}"
            probe.touch(exist_ok=False)
            probe.unlink()
        except OSError as err:
            return (
                f"Cannot write predictions to {self.output_dir} ({err.strerror or err}): "
                f"choose another {_OPT}.output_dir, a folder you can create and write to."
            )
        if "decode" in self.tasks:
            return self._load_codes(pl_module)
        return None

    def _load_codes(self, pl_module: VAE) -> str | None:
        """Read and check ``codes_path`` into ``self._codes``; the problem as a message, or None."""
        make = f'run predict with {_OPT}.tasks "[encode]" to write codes.npz'
        if self.codes_path is None:
            return f"The decode task needs codes: {make}, then pass its path as {_OPT}.codes_path."
        path = Path(self.codes_path)
        if not path.is_file():
            return f"{_OPT}.codes_path {path} does not exist: {make}, or point {_OPT}.codes_path at one."
        try:
            npz = np.load(path, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with npz:
                mean = npz["mean"].astype(np.float32)
                latent_dim, image_shape = int(npz["latent_dim"]), tuple(int(s) for s in npz["image_shape"])
        except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return (
                f"{path} is not a codes file written by the encode task ({type(err).__name__}: {err}): "
                f"{make} again, or point {_OPT}.codes_path at one."
            )
        model_shape = tuple(pl_module.image_shape)
        if mean.ndim != 2 or mean.shape[1] != latent_dim:
            return f"{path} is inconsistent: mean has shape {mean.shape} but latent_dim is {latent_dim}; {make} again."
        if latent_dim != pl_module.latent_dim or image_shape != model_shape:
            return (
                f"{path} holds codes of latent_dim {latent_dim} for images {image_shape}, but the model has "
                f"latent_dim {pl_module.latent_dim} and images {model_shape}: decode with the checkpoint and "
                f"config that wrote them, or {make} with this model."
            )
        self._codes = mean
        return None

    # ----- tasks -------------------------------------------------------------------------------------------

    def _decode_means(self, pl_module: VAE, z: Tensor) -> Tensor:
        """E[x | z] ``(n, C, H, W)`` float32 on the CPU for codes ``z`` ``(n, L)``, in chunks."""
        out = [
            pl_module.likelihood.mean(pl_module.decode(chunk.to(pl_module.device))).float().cpu()
            for chunk in z.split(_CHUNK)
        ]
        return torch.cat(out)

    def _generate(self, pl_module: VAE) -> None:
        generator = torch.Generator().manual_seed(self.seed)  # drawn on the CPU: any device agrees
        z = pl_module.sample_codes(self.num_samples, generator)  # (n, D), from the model's prior
        samples = self._decode_means(pl_module, z)  # (n, C, H, W)
        atomic_write(self.output_dir / "samples.pt", _save_tensor(samples))
        atomic_write(self.output_dir / "samples.png", self._grid(samples))
        print(f"generate: {len(samples)} samples -> {self.output_dir / 'samples.png'}", flush=True)

    def _decode(self, pl_module: VAE) -> None:
        assert self._codes is not None  # loaded by _check_inputs
        decoded = self._decode_means(pl_module, torch.from_numpy(self._codes))  # (N, C, H, W)
        atomic_write(self.output_dir / "decoded.pt", _save_tensor(decoded.half()))
        atomic_write(self.output_dir / "decoded.png", self._grid(decoded))
        print(f"decode: {len(decoded)} codes from {self.codes_path} -> {self.output_dir / 'decoded.pt'}", flush=True)

    def _restore_batch(self, pl_module: VAE, x: Tensor) -> None:
        corrupted = self.corrupt(x, self._noise)  # (B, C, H, W)
        recon = pl_module.reconstruct(corrupted).float()  # (B, C, H, W)
        # Squared errors summed per image in float64: exact enough to add up over 10,000 images.
        self._add("sse_corrupted", (corrupted - x).double().pow(2).flatten(1).sum(1))  # (B,)
        self._add("sse_reconstructed", (recon - x).double().pow(2).flatten(1).sum(1))  # (B,)
        self._add("reconstruction", recon.half())
        # The grid needs the first grid_images of the split: every process keeps its own first ones.
        kept = sum(len(t) for t in self._rows.get("grid_clean", []))
        if kept < self.grid_images:
            take = self.grid_images - kept
            self._add("grid_clean", x[:take])
            self._add("grid_corrupted", corrupted[:take])
            self._add("grid_reconstructed", recon[:take])

    def _write_restore(self, rows: dict[str, Tensor]) -> None:
        recon = rows["reconstruction"]  # (N, C, H, W) float16
        n, pixels = len(recon), math.prod(recon.shape[1:])
        if n == 0:
            print("reconstruct: the predict split holds no images; nothing written.", flush=True)
            return
        mse_c = rows["sse_corrupted"].sum().item() / (n * pixels)
        mse_r = rows["sse_reconstructed"].sum().item() / (n * pixels)
        metrics = {
            "corruption": self.corruption,
            "mse_corrupted": mse_c,
            "mse_reconstructed": mse_r,
            "psnr_corrupted": psnr(mse_c),
            "psnr_reconstructed": psnr(mse_r),
            "images": n,
        }
        atomic_write(self.output_dir / "reconstructions.pt", _save_tensor(recon))
        grid = [rows[f"grid_{part}"][: self.grid_images] for part in ("clean", "corrupted", "reconstructed")]
        atomic_write(self.output_dir / "reconstructions.png", self._triplet_grid(*grid))
        atomic_write(self.output_dir / "restore_metrics.json", _save_json(metrics))
        print(self._restore_line(metrics), flush=True)

    def _restore_line(self, m: dict[str, Any]) -> str:
        def db(value: float | None) -> str:
            return "inf dB" if value is None else f"{value:.1f} dB"

        line = (
            f"reconstruct ({self.corruption}, {m['images']} images): MSE to clean {m['mse_corrupted']:.4g} "
            f"({db(m['psnr_corrupted'])}) corrupted, {m['mse_reconstructed']:.4g} ({db(m['psnr_reconstructed'])}) "
            "reconstructed"
        )
        if self.corruption != "none":
            restored = m["mse_reconstructed"] < m["mse_corrupted"]
            line += ": the VAE restores" if restored else ": the VAE does not restore (the corrupted input is closer)"
        return f"{line} -> {self.output_dir / 'restore_metrics.json'}"

    def _write_codes(self, rows: dict[str, Tensor], pl_module: VAE, ckpt: Any) -> None:
        mean, logvar, label = rows["mean"], rows["logvar"], rows["label"]
        shape, latent_dim = tuple(pl_module.image_shape), pl_module.latent_dim

        def save(file: BinaryIO) -> None:
            np.savez(
                file,
                mean=mean.numpy().astype(np.float32),
                logvar=logvar.numpy().astype(np.float32),
                label=label.numpy().astype(np.int64),
                image_shape=np.asarray(shape, dtype=np.int64),
                latent_dim=np.asarray(latent_dim, dtype=np.int64),
                checkpoint=np.asarray("" if ckpt is None else str(ckpt)),
            )

        atomic_write(self.output_dir / "codes.npz", save)
        raw = math.prod(shape)  # bytes per image at 8 bits per pixel
        report = {
            "images": len(mean),
            "image_shape": list(shape),
            "latent_dim": latent_dim,
            "raw_bytes_per_image": raw,
            "code_bytes_per_image_float32": 4 * latent_dim,
            "code_bytes_per_image_float16": 2 * latent_dim,
            "ratio_float32": raw / (4 * latent_dim),
            "ratio_float16": raw / (2 * latent_dim),
            "note": "posterior means only, not entropy-coded; the decoder's weights are not counted",
        }
        atomic_write(self.output_dir / "compression.json", _save_json(report))
        print(
            f"encode: {len(mean)} codes -> {self.output_dir / 'codes.npz'}; per image {raw} B raw (8-bit) vs "
            f"{4 * latent_dim} B float32 ({report['ratio_float32']:.1f}x smaller), "
            f"{2 * latent_dim} B float16 ({report['ratio_float16']:.1f}x)",
            flush=True,
        )

    # ----- helpers -------------------------------------------------------------------------------------------

    def _row_specs(self, pl_module: VAE) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The per-image results the tasks collect: name -> (shape of one row, dtype).

        The order is fixed: under DDP every process gathers them in this order.
        """
        image, code = tuple(pl_module.image_shape), (pl_module.latent_dim,)
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if "reconstruct" in self.tasks:
            specs["sse_corrupted"] = specs["sse_reconstructed"] = ((), torch.float64)
            specs["reconstruction"] = (image, torch.float16)
            for part in ("clean", "corrupted", "reconstructed"):
                specs[f"grid_{part}"] = (image, torch.float32)
        if "encode" in self.tasks:
            specs["mean"] = specs["logvar"] = (code, torch.float32)
            specs["label"] = ((), torch.int64)
        return specs

    def _local(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """This process's rows of ``name`` ``(n_rank, *shape)`` in batch order (none: an empty tensor)."""
        if self._rows.get(name):
            return torch.cat(self._rows[name]).to(dtype)
        return torch.zeros((0, *shape), dtype=dtype)

    def _grid(self, images: Tensor) -> Callable[[BinaryIO], None]:
        """A PNG of the first ``grid_images`` of ``images`` ``(n, C, H, W)``, 8 per row."""
        images = images[: self.grid_images]
        return _save_grid(images, nrow=min(_GRID_ROW, len(images)))

    def _triplet_grid(self, clean: Tensor, corrupted: Tensor, recon: Tensor) -> Callable[[BinaryIO], None]:
        """A PNG whose rows come in threes: clean, corrupted and reconstructed, the same images per column."""
        nrow = min(_GRID_ROW, len(clean))
        rows = []
        for start in range(0, len(clean), nrow):
            for part in (clean, corrupted, recon):
                chunk = part[start : start + nrow].float()  # (<= nrow, C, H, W)
                blank = chunk.new_zeros((nrow - len(chunk), *chunk.shape[1:]))  # fill a short last row
                rows.append(torch.cat([chunk, blank]))
        return _save_grid(torch.cat(rows), nrow=nrow)
