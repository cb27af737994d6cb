"""What ``vaezoo predict`` writes: samples, restorations, latent codes and decodings (:class:`PredictionWriter`).

    vaezoo predict --config configs/mnist_mlp.yaml --ckpt_path runs/.../last.ckpt \\
        --predict_writer.output_dir out --predict_writer.tasks "[generate, reconstruct, encode]" \\
        --predict_writer.corruption mask

``generate`` and ``decode`` need no test images: they are the plain functions :func:`generate` and
:func:`decode` over a model. The per-image tasks write what the model's ``predict_step`` returns, in
dataset order. Under DDP each process saves its rows, with their dataset indices, to
``output_dir/.predict-rank<r>.pt``; after a barrier rank 0 merges them (an index that a sampler's
padding repeats counts once), writes, and deletes them. Over several nodes, ``output_dir`` must be a
folder that every node sees. Every output file is written atomically (a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
import secrets
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
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
_MAKE_CODES = f'run predict with {_OPT}.tasks "[encode]" to write codes.npz'


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


def in_dataset_order(rows: dict[str, Tensor]) -> dict[str, Tensor]:
    """``rows`` (each ``(n, ...)``, with an int64 ``index`` ``(n,)`` of dataset indices) sorted by index, each
    index once: a ``DistributedSampler`` pads the last processes' shares with repeats of the first images."""
    order = torch.argsort(rows["index"], stable=True)
    index = rows["index"][order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return {name: value[order[first]] for name, value in rows.items()}


@torch.no_grad()
def decode(model: VAE, codes: Tensor) -> Tensor:
    """E[x | z] ``(n, C, H, W)`` float32 on the CPU for codes ``z`` ``(n, L)``, decoded in chunks of 256.

    Args:
        model: The VAE whose decoder and likelihood map codes to images.
        codes: Codes of the model's latent space, e.g. the ``mean`` of a ``codes.npz`` from encode.
    """
    return torch.cat([model.likelihood.mean(model.decode(z.to(model.device, model.dtype))).float().cpu()
                      for z in codes.split(_CHUNK)])


def generate(model: VAE, num_samples: int, seed: int = 0) -> Tensor:
    """``num_samples`` images E[x | z] ``(n, C, H, W)`` float32 in [0, 1] for codes z from the model's prior, drawn
    with ``seed`` on the CPU: the same images on any device.

    Args:
        model: The VAE to draw from.
        num_samples: How many images.
        seed: Seed of the prior draws.
    """
    return decode(model, model.sample_codes(num_samples, torch.Generator().manual_seed(seed)))


def read_codes(path: str | Path | None, model: VAE) -> Tensor:
    """The posterior means ``(N, L)`` of a ``codes.npz`` written by the encode task, checked against ``model``.

    Raises:
        VAEZooError: no path, no such file, not a codes file, or codes of another latent size or image shape.
    """
    if path is None:
        raise VAEZooError(f"The decode task needs codes: {_MAKE_CODES}, then pass its path as {_OPT}.codes_path.")
    path = Path(path)
    if not path.is_file():
        raise VAEZooError(f"{_OPT}.codes_path {path} does not exist: {_MAKE_CODES}, or point {_OPT}.codes_path at one.")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with npz:
            mean = npz["mean"].astype(np.float32)
            latent_dim, image_shape = int(npz["latent_dim"]), tuple(int(s) for s in npz["image_shape"])
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise VAEZooError(
            f"{path} is not a codes file written by the encode task ({type(err).__name__}: {err}): "
            f"{_MAKE_CODES} again, or point {_OPT}.codes_path at one."
        ) from None
    model_shape = tuple(model.image_shape)
    if mean.ndim != 2 or mean.shape[1] != latent_dim:
        raise VAEZooError(f"{path} is inconsistent: mean has shape {mean.shape} but latent_dim is {latent_dim}; "
                          f"{_MAKE_CODES} again.")
    if latent_dim != model.latent_dim or image_shape != model_shape:
        raise VAEZooError(
            f"{path} holds codes of latent_dim {latent_dim} for images {image_shape}, but the model has "
            f"latent_dim {model.latent_dim} and images {model_shape}: decode with the checkpoint and "
            f"config that wrote them, or {_MAKE_CODES} with this model."
        )
    return torch.from_numpy(mean)


def _save_grid(images: Tensor, nrow: int) -> Callable[[BinaryIO], None]:
    return lambda file: save_image(images.float(), file, nrow=nrow, padding=2, format="png")


def _save_tensor(tensor: Tensor) -> Callable[[BinaryIO], None]:
    return lambda file: torch.save(tensor.contiguous(), file)


def _save_json(data: dict[str, Any]) -> Callable[[BinaryIO], None]:
    return lambda file: file.write((json.dumps(data, indent=2) + "\n").encode())


class PredictionWriter(BasePredictionWriter):
    """Writes samples, restorations, latent codes and decodings during ``vaezoo predict``.

    It acts only in ``trainer.predict``, over the official test split; in fit, validate and test it
    does nothing and creates no folder. Rank 0 alone writes, under ``output_dir``:

    * ``generate``: ``num_samples`` images E[x | z], z from the prior drawn with ``seed`` on the CPU
      (the same images on any device) -> ``samples.pt`` (float32 ``(n, C, H, W)`` in [0, 1]), ``samples.png``.
    * ``reconstruct`` (restore): every test image is corrupted (``corruption``) and reconstructed ->
      ``reconstructions.pt`` (float16 ``(N, C, H, W)``), ``reconstructions.png`` (rows of three: clean,
      corrupted, reconstructed) and ``restore_metrics.json``: ``corruption``, ``images``, the MSE of the
      clean images against the corrupted inputs and against the reconstructions (per pixel over all N
      images, [0, 1] units) and their PSNR ``10 log10(1 / MSE)`` dB (``null`` when the MSE is 0).
    * ``encode`` (compress): the posterior of every clean test image -> ``codes.npz`` (``mean`` and
      ``logvar`` float32 ``(N, L)``, ``label`` int64 ``(N,)``, ``image_shape``, ``latent_dim`` and
      ``checkpoint``, ``""`` when none was loaded), ``compression.json`` (bytes per image: the 8-bit
      image against a float32 and a float16 code, and the ratios).
    * ``decode``: E[x | z = mean] of the codes in ``codes_path`` (a ``codes.npz`` from ``encode``) ->
      ``decoded.pt`` (float16 ``(N, C, H, W)``), ``decoded.png``.

    Grids show the first ``grid_images``, 8 per row. Whole-split images are float16 (a step of 2^-11
    near 1, finer than 8-bit pixels). "Clean" images are the test images as the DataModule delivers
    them (binarised where it binarises). The output folder and codes file are checked before the first batch.

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
        super().__init__(write_interval="batch")
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
        # This process's results on the CPU: "image" rows of every image, "grid" rows of the reconstruct grid's.
        self._rows: dict[str, dict[str, list[Tensor]]] = {}
        self._seen = 0  # images this process has predicted
        self._noise: torch.Generator | None = None

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Lightning tracks batch indices only for a torch DataLoader and warns about any other loader; this
        # writer counts the positions of vaezoo's own loader itself (write_on_batch_end). By its exact text.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader: "
                                                  "`TensorBatchLoader`")

    def on_predict_start(self, trainer: L.Trainer, pl_module: VAE) -> None:
        """Check the output folder (and the codes file), then generate and decode: no batches needed."""
        self._rows, self._seen = {}, 0
        # Lightning keeps the last tracked batch's indices across runs of one Trainer, and sets none for a loader
        # it cannot track (vaezoo's): clear them, so a later run with vaezoo's loader counts its own positions.
        trainer.predict_loop.current_batch_indices = []
        codes, problem = None, None
        if trainer.is_global_zero:
            try:
                self._check_output(pl_module)
                codes = read_codes(self.codes_path, pl_module) if "decode" in self.tasks else None
            except VAEZooError as err:
                problem = str(err)
        # Every process raises the same error, so none waits on a collective the others never reach.
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise VAEZooError(problem)
        if self.corruption == "noise":
            # One stream per process, seeded by (seed, rank); drawn on the CPU, the same on any device.
            state = np.random.SeedSequence([self.seed, trainer.global_rank]).generate_state(1, np.uint64)[0]
            self._noise = torch.Generator().manual_seed(int(state))
        if not trainer.is_global_zero:
            return
        with trainer.precision_plugin.predict_step_context():
            if "generate" in self.tasks:
                samples = generate(pl_module, self.num_samples, self.seed)
                self._write_images("samples", samples, torch.float32, f"generate: {len(samples)} samples", "png")
            if codes is not None:
                decoded = decode(pl_module, codes)
                what = f"decode: {len(decoded)} codes from {self.codes_path}"
                self._write_images("decoded", decoded, torch.float16, what, "pt")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: VAE,
        prediction: dict[str, Tensor],
        batch_indices: Sequence[int] | None,
        batch: tuple[Tensor, Tensor],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Keep this batch's ``predict_step`` results that the tasks write, with their dataset indices."""
        if not {"reconstruct", "encode"} & set(self.tasks):
            return
        x = batch[0]  # (B, C, H, W) in [0, 1], on the device
        if batch_indices:  # a torch DataLoader, whose sampler Lightning tracks (DistributedSampler included)
            index = torch.as_tensor(list(batch_indices), dtype=torch.int64)
        else:  # vaezoo's loaders: process r takes positions r, r + W, ... of the split, in order
            index = trainer.global_rank + trainer.world_size * torch.arange(self._seen, self._seen + len(x))
        self._seen += len(x)
        rows = {"index": index}
        if "encode" in self.tasks:
            rows |= {"mean": prediction["mean"].float(), "logvar": prediction["logvar"].float(),
                     "label": prediction["label"].long()}
        if "reconstruct" in self.tasks:
            clean = x.float()
            corrupted = self.corrupt(clean, self._noise)
            if self.corruption != "none":  # the prediction of the corrupted batch
                with trainer.precision_plugin.predict_step_context():
                    prediction = pl_module.predict_step((corrupted.to(x.dtype), batch[1]), batch_idx)
            recon = prediction["reconstruction"].float()  # (B, C, H, W)
            # Squared errors summed per image in float64: exact enough to add up over 10,000 images.
            rows |= {"sse_corrupted": (corrupted - clean).double().pow(2).flatten(1).sum(1),
                     "sse_reconstructed": (recon - clean).double().pow(2).flatten(1).sum(1),
                     "reconstruction": recon.half()}
            first = (index < self.grid_images).to(x.device)  # the grid's images, kept at full precision
            if first.any():
                self._keep("grid", {"index": index[first.cpu()], "clean": clean[first], "corrupted": corrupted[first],
                                    "reconstructed": recon[first]})
        self._keep("image", rows)

    def _keep(self, group: str, rows: dict[str, Tensor]) -> None:
        for name, value in rows.items():
            self._rows.setdefault(group, {}).setdefault(name, []).append(value.detach().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
        """Merge every process's rows in dataset order and write the reconstruct and encode files on rank 0."""
        if not {"reconstruct", "encode"} & set(self.tasks):
            return
        local = {group: {name: torch.cat(parts) for name, parts in rows.items()} for group, rows in self._rows.items()}
        self._rows = {}
        shares = [local]
        if trainer.world_size > 1:  # one file per process, merged by rank 0 once all are written
            parts = [self.output_dir / f".predict-rank{r}.pt" for r in range(trainer.world_size)]
            self.output_dir.mkdir(parents=True, exist_ok=True)  # rank 0 made it, on its node
            atomic_write(parts[trainer.global_rank], lambda file: torch.save(local, file))
            trainer.strategy.barrier("predict_writer")
            if not trainer.is_global_zero:
                return
            unseen = [part.name for part in parts if not part.is_file()]
            if unseen:
                raise VAEZooError(f"the other processes' predictions ({', '.join(unseen)}) are not in {self.output_dir} "
                                  f"on this node: make {_OPT}.output_dir a folder that every node sees.")
            shares = [torch.load(part, weights_only=True) for part in parts]
            for part in parts:
                part.unlink()
        merged = {}
        for group in ("image", "grid"):
            held = [share[group] for share in shares if group in share]  # a process with no images has no rows
            if held:
                merged[group] = in_dataset_order({name: torch.cat([h[name] for h in held]) for name in held[0]})
        if "image" not in merged:
            print("predict: the predict split holds no images; nothing written.", flush=True)
            return
        if "reconstruct" in self.tasks:
            self._write_restore(merged["image"], merged["grid"])
        if "encode" in self.tasks:
            self._write_codes(merged["image"], pl_module, trainer.ckpt_path)

    # ----- writing ---------------------------------------------------------------------------------------

    def _check_output(self, pl_module: VAE) -> None:
        """Refuse encode for a model without a Gaussian posterior, and an output folder that cannot be written."""
        # encode writes q(z | x) as (mean, logvar): one Gaussian layer, or a variant whose encode() gives the
        # Gaussian posterior of the decoder's code (hvae: q(z1 | x)).
        gaussian = isinstance(pl_module.latent, GaussianLatent) or type(pl_module).encode is not VAE.encode
        if "encode" in self.tasks and not gaussian:
            raise VAEZooError(
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
            raise VAEZooError(
                f"Cannot write predictions to {self.output_dir} ({err.strerror or err}): "
                f"choose another {_OPT}.output_dir, a folder you can create and write to."
            ) from None

    def _write_images(self, name: str, images: Tensor, dtype: torch.dtype, what: str, shown: str) -> None:
        """``<name>.pt`` (``images`` as ``dtype``), ``<name>.png`` (the first ``grid_images``, 8 per row), a line."""
        atomic_write(self.output_dir / f"{name}.pt", _save_tensor(images.to(dtype)))
        grid = images[: self.grid_images]
        atomic_write(self.output_dir / f"{name}.png", _save_grid(grid, nrow=min(_GRID_ROW, len(grid))))
        print(f"{what} -> {self.output_dir / f'{name}.{shown}'}", flush=True)

    def _write_restore(self, rows: dict[str, Tensor], grid: dict[str, Tensor]) -> None:
        recon = rows["reconstruction"]  # (N, C, H, W) float16
        pixels = len(recon) * math.prod(recon.shape[1:])
        mse_c, mse_r = (rows[f"sse_{part}"].sum().item() / pixels for part in ("corrupted", "reconstructed"))
        metrics = {"corruption": self.corruption, "mse_corrupted": mse_c, "mse_reconstructed": mse_r,
                   "psnr_corrupted": psnr(mse_c), "psnr_reconstructed": psnr(mse_r), "images": len(recon)}
        atomic_write(self.output_dir / "reconstructions.pt", _save_tensor(recon))
        triplet = _triplet_grid(grid["clean"], grid["corrupted"], grid["reconstructed"])
        atomic_write(self.output_dir / "reconstructions.png", triplet)
        atomic_write(self.output_dir / "restore_metrics.json", _save_json(metrics))

        def db(value: float | None) -> str:
            return "inf dB" if value is None else f"{value:.1f} dB"

        line = (
            f"reconstruct ({self.corruption}, {len(recon)} images): MSE to clean {mse_c:.4g} ({db(psnr(mse_c))}) "
            f"corrupted, {mse_r:.4g} ({db(psnr(mse_r))}) reconstructed"
        )
        if self.corruption != "none":
            line += ": the VAE restores" if mse_r < mse_c else ": the VAE does not restore (the corrupted input is closer)"
        print(f"{line} -> {self.output_dir / 'restore_metrics.json'}", flush=True)

    def _write_codes(self, rows: dict[str, Tensor], pl_module: VAE, ckpt: Any) -> None:
        mean, shape, latent_dim = rows["mean"], tuple(pl_module.image_shape), pl_module.latent_dim

        codes = {"mean": mean.numpy().astype(np.float32), "logvar": rows["logvar"].numpy().astype(np.float32),
                 "label": rows["label"].numpy().astype(np.int64), "image_shape": np.asarray(shape, dtype=np.int64),
                 "latent_dim": np.asarray(latent_dim, dtype=np.int64),
                 "checkpoint": np.asarray("" if ckpt is None else str(ckpt))}
        atomic_write(self.output_dir / "codes.npz", lambda file: np.savez(file, **codes))
        raw, f32, f16 = math.prod(shape), 4 * latent_dim, 2 * latent_dim  # bytes per image: 8-bit pixels, codes
        report = {"images": len(mean), "image_shape": list(shape), "latent_dim": latent_dim, "raw_bytes_per_image": raw,
                  "code_bytes_per_image_float32": f32, "code_bytes_per_image_float16": f16,
                  "ratio_float32": raw / f32, "ratio_float16": raw / f16,
                  "note": "posterior means only, not entropy-coded; the decoder's weights are not counted"}
        atomic_write(self.output_dir / "compression.json", _save_json(report))
        print(f"encode: {len(mean)} codes -> {self.output_dir / 'codes.npz'}; per image {raw} B raw (8-bit) vs {f32} B "
              f"float32 ({raw / f32:.1f}x smaller), {f16} B float16 ({raw / f16:.1f}x)", flush=True)


def _triplet_grid(clean: Tensor, corrupted: Tensor, recon: Tensor) -> Callable[[BinaryIO], None]:
    """A PNG whose rows come in threes: clean, corrupted and reconstructed, the same images per column."""
    nrow = min(_GRID_ROW, len(clean))
    blank = clean.new_zeros((-len(clean) % nrow, *clean.shape[1:]))  # fills a short last row
    parts = [torch.cat([part.float(), blank]).unflatten(0, (-1, nrow)) for part in (clean, corrupted, recon)]
    return _save_grid(torch.stack(parts, 1).flatten(0, 2), nrow=nrow)  # (rows, 3, nrow, C, H, W): rows in threes
