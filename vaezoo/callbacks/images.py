"""Pictures of what a VAE has learnt: reconstructions, samples, interpolations, traversals, 2-D maps.

Every picture is one ``torchvision.utils.make_grid`` of tiles (2 pixels of padding around each),
logged through :func:`vaezoo.callbacks.log_media.log_image`, so it lands in W&B, TensorBoard, or as
PNG files beside ``metrics.csv``, whichever logger is attached. Keys, with ``stage`` = ``val``
during ``fit``/``validate`` and ``test`` during ``test``:

- ``stage/images/reconstructions``, ``stage/images/samples``, ``stage/images/interpolations``,
  ``stage/images/traversals``;
- with a 2-D latent space only: ``stage/images/manifold`` and ``stage/images/latent_scatter``.

Everything is cheap: the first few images of the stage's dataloader, one decoder call per picture,
and a pass over at most ``scatter_images`` images for the 2-D scatter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import lightning as L
import torch
from torch import Tensor
from torchvision.utils import make_grid

from vaezoo.callbacks.log_media import log_figure, log_image
from vaezoo.errors import VAEZooError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vaezoo.models.base import VAE

Stage = Literal["val", "test"]

__all__ = ["ImageLogger", "latent_scatter", "most_active_dims"]


def most_active_dims(means: Tensor, k: int) -> Tensor:
    """The ``k`` latent dimensions whose posterior means vary most over a batch, most active first.

    Activity as in Burda et al. (2016): ``A_l = Var_x(E_q[z_l | x])``, the variance over the images
    of the posterior mean of dimension ``l``. A dimension the encoder ignores (posterior = prior
    for every image) has activity 0.

    Args:
        means: Posterior means ``(B, L)`` of a batch.
        k: How many dimensions, at most ``L``.

    Returns:
        Dimension indices ``(k,)`` int64, by decreasing activity (ties keep index order).
    """
    activity = means.float().var(0, correction=0)  # (L,); correction=0 so one image gives 0, not NaN
    return activity.argsort(descending=True, stable=True)[:k]


class ImageLogger(L.Callback):
    """Logs pictures of the model: reconstructions, samples, interpolations, traversals, 2-D maps.

    When: at the end of validation every ``every_n_epochs`` epochs, always at the end of ``fit``
    (from validation images, unless that step was just logged), and at the end of ``test`` (from
    test images). Only global rank 0 computes and logs; it runs no collective, so the other DDP
    ranks never wait for it. The model runs in eval mode without gradients, and its previous mode
    is restored. Keys: ``val/images/<name>`` (fit, validate) and ``test/images/<name>`` (test); with
    no W&B or TensorBoard logger the pictures are PNG files in ``<log_dir>/images/``.

    The pictures (one grid each; "images" are the first ones of the stage's dataloader, as the
    DataModule prepares them for evaluation):

    - ``reconstructions``: ``num_images`` images, each followed on its right by its
      reconstruction E[x | z = posterior mean]; ``ceil(sqrt(num_images))`` pairs per row.
    - ``samples``: E[x | z] for ``num_images`` codes z ~ N(0, I) drawn once from ``seed`` and
      kept, so that every epoch (and every run with the same seed) decodes the same codes;
      ``ceil(sqrt(num_images))`` per row.
    - ``interpolations``: one row per pair of consecutive images (1st and 2nd, 3rd and 4th, ...):
      decodings of ``interpolation_steps`` codes evenly spaced on the straight line between the two
      posterior means, so the first and last tiles are the two images' reconstructions.
    - ``traversals``: one row per latent dimension, for the ``num_traversal_dims`` most active
      dimensions (largest variance of the posterior mean over the images, Burda et al. 2016),
      most active first. In a row, the dimension takes ``traversal_steps`` evenly spaced values
      from ``-traversal_range`` to ``+traversal_range`` (absolute code values, in units of the
      prior's standard deviation, 1), while the other dimensions stay at the posterior mean of the
      first image (Higgins et al. 2017).
    - ``manifold`` (only when ``latent_dim`` is 2): decodings over a ``manifold_steps`` x
      ``manifold_steps`` grid of the latent plane at the prior's quantiles 0.05 .. 0.95 (Kingma &
      Welling 2014, fig. 4); z1 grows left to right, z2 bottom to top.
    - ``latent_scatter`` (only when ``latent_dim`` is 2): the posterior means of up to
      ``scatter_images`` images (rank 0's share under DDP), coloured by label.

    Args:
        every_n_epochs: Log at the end of validation every this many epochs (epochs N, 2N, ...
            counted from 1); 0 logs only at the end of fit and of test.
        num_images: Images in the reconstructions grid (each shown with its reconstruction) and
            in the samples grid.
        num_interpolations: Rows of the interpolations grid, one pair of images each (fewer when
            the dataloader holds fewer than twice as many images); 0 turns the picture off.
        interpolation_steps: Tiles per interpolation row, both endpoints included (at least 2).
        num_traversal_dims: Rows of the traversals grid: the most active latent dimensions, at
            most latent_dim of them; 0 turns the picture off.
        traversal_steps: Tiles per traversal row, i.e. values swept per dimension (at least 2).
        traversal_range: The swept dimension runs from -traversal_range to +traversal_range, in
            prior standard deviations (the prior is N(0, 1) per dimension, so 3.0 spans 99.7% of it).
        manifold_steps: Tiles per side of the 2-D manifold grid (at least 2).
        scatter_images: Most images whose posterior means the 2-D scatter shows; 0 turns it off.
        seed: Seed of the fixed codes behind the samples grid.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 64,
        num_interpolations: int = 8,
        interpolation_steps: int = 10,
        num_traversal_dims: int = 10,
        traversal_steps: int = 11,
        traversal_range: float = 3.0,
        manifold_steps: int = 20,
        scatter_images: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        minimums = {
            "every_n_epochs": (every_n_epochs, 0),
            "num_images": (num_images, 1),
            "num_interpolations": (num_interpolations, 0),
            "interpolation_steps": (interpolation_steps, 2),
            "num_traversal_dims": (num_traversal_dims, 0),
            "traversal_steps": (traversal_steps, 2),
            "manifold_steps": (manifold_steps, 2),
            "scatter_images": (scatter_images, 0),
            "seed": (seed, 0),
        }
        for name, (value, least) in minimums.items():
            if value < least:
                raise VAEZooError(f"ImageLogger's {name} must be >= {least}, got {value}.")
        if not traversal_range > 0:
            raise VAEZooError(
                f"ImageLogger's traversal_range must be > 0 prior standard deviations, got {traversal_range}."
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.num_interpolations = num_interpolations
        self.interpolation_steps = interpolation_steps
        self.num_traversal_dims = num_traversal_dims
        self.traversal_steps = traversal_steps
        self.traversal_range = traversal_range
        self.manifold_steps = manifold_steps
        self.scatter_images = scatter_images
        self.seed = seed
        self._logged_step: int | None = None  # global step of the last validation pictures

    # ----- when ------------------------------------------------------------------------------------

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_pictures(trainer, pl_module, "val")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last epoch's validation may have logged this very step already.
        if self._logged_step != trainer.global_step:
            self.log_pictures(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_pictures(trainer, pl_module, "test")

    def log_pictures(self, trainer: L.Trainer, pl_module: VAE, stage: Stage) -> None:
        """Compute every picture from the ``stage``'s images and log it under ``stage/images/``.

        Does nothing on ranks other than 0. Runs the model in eval mode without gradients and
        restores its mode afterwards.
        """
        if not trainer.is_global_zero:
            return
        if stage == "val":
            self._logged_step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                grids, scatter = self._compute(trainer, pl_module, stage)
        finally:
            pl_module.train(was_training)
        for name, grid in grids.items():
            log_image(trainer, f"{stage}/images/{name}", grid)
        if scatter is not None:
            log_figure(trainer, f"{stage}/images/latent_scatter", scatter)
        stats = getattr(pl_module, "latent_stats", {}).get(stage)  # filled at the model's epoch end
        if stats is not None and "kl_per_dim" in stats:  # a KL estimated by sampling has no split per unit
            log_figure(trainer, f"{stage}/images/latent_kl", latent_kl_figure(stats))

    def _compute(self, trainer: L.Trainer, model: VAE, stage: Stage) -> tuple[dict[str, Tensor], Figure | None]:
        first = _take(self._batches(trainer, model, stage), max(self.num_images, 2 * self.num_interpolations))
        grids = self.grids(model, first[0] if first is not None else None)
        scatter = None
        if model.latent_dim == 2 and self.scatter_images:
            means, labels = _posterior_means(model, self._batches(trainer, model, stage), self.scatter_images)
            scatter = latent_scatter(means, labels) if len(means) else None
        return grids, scatter

    def _batches(self, trainer: L.Trainer, model: VAE, stage: Stage) -> Iterator[tuple[Tensor, Tensor]]:
        """The stage's batches as evaluation sees them: float images on the model's device."""
        datamodule = trainer.datamodule
        if datamodule is None:
            warnings.warn("ImageLogger needs a DataModule for pictures of real images; logging samples only.")
            return
        loader = datamodule.val_dataloader() if stage == "val" else datamodule.test_dataloader()
        for images, labels in loader:  # uint8 (B, C, H, W), int64 (B,)
            x, y = datamodule.on_after_batch_transfer((images.to(model.device), labels), 0)
            yield x.to(model.dtype), y  # (B, C, H, W) in [0, 1]

    # ----- what ------------------------------------------------------------------------------------

    def grids(self, model: VAE, x: Tensor | None) -> dict[str, Tensor]:
        """Every grid picture, by name, for images ``x`` ``(B, C, H, W)`` (None: samples and manifold only)."""
        grids = {}
        if x is not None:
            grids["reconstructions"] = self.reconstruction_grid(model, x)
        grids["samples"] = self.sample_grid(model)
        if x is not None and self.num_interpolations and len(x) >= 2:
            grids["interpolations"] = self.interpolation_grid(model, x)
        if x is not None and self.num_traversal_dims:
            grids["traversals"] = self.traversal_grid(model, x)
        if model.latent_dim == 2:
            grids["manifold"] = self.manifold_grid(model)
        return grids

    @torch.no_grad()
    def reconstruction_grid(self, model: VAE, x: Tensor) -> Tensor:
        """The first ``num_images`` of ``x``, each followed by its reconstruction: ``(3, H', W')``."""
        x = x[: self.num_images]  # (n, C, H, W)
        pairs = torch.stack([x, model.reconstruct(x)], dim=1).flatten(0, 1)  # (2n, C, H, W): x0, r0, x1, r1, ...
        return make_grid(pairs.float(), nrow=2 * _side(len(x)))

    @torch.no_grad()
    def sample_grid(self, model: VAE) -> Tensor:
        """E[x | z] for the fixed codes of :meth:`fixed_codes`: ``(3, H', W')``, the same every call."""
        return make_grid(_decode_mean(model, self.fixed_codes(model)), nrow=_side(self.num_images))

    def fixed_codes(self, model: VAE) -> Tensor:
        """The codes behind the samples grid, ``(num_images, D)``, drawn from the model's prior with a generator
        seeded by ``seed`` at every call: the same codes each time for a fixed prior (N(0, I)); for a learned
        prior (a mixture, the VampPrior), the same draws of a prior that moves as it trains."""
        # Its own generator: the global RNG (and so training) neither moves nor is moved by it.
        generator = torch.Generator().manual_seed(self.seed)
        return model.sample_codes(self.num_images, generator)

    @torch.no_grad()
    def interpolation_grid(self, model: VAE, x: Tensor) -> Tensor:
        """Rows of decodings along the line between the posterior means of consecutive images."""
        pairs = min(self.num_interpolations, len(x) // 2)
        mean = model.code(x[: 2 * pairs])  # (2P, D): posterior means, or quantised codes
        start, end = mean[0::2, None], mean[1::2, None]  # (P, 1, L) each
        t = torch.linspace(0, 1, self.interpolation_steps, device=mean.device, dtype=mean.dtype)[:, None]  # (S, 1)
        z = start + t * (end - start)  # (P, S, L)
        return make_grid(_decode_mean(model, z.flatten(0, 1)), nrow=self.interpolation_steps)

    @torch.no_grad()
    def traversal_grid(self, model: VAE, x: Tensor) -> Tensor:
        """One row per most active latent dimension, swept while the others stay at ``x[0]``'s code."""
        codes = self.traversal_codes(model.code(x))  # (K, S, D)
        return make_grid(_decode_mean(model, codes.flatten(0, 1)), nrow=self.traversal_steps)

    def traversal_codes(self, means: Tensor) -> Tensor:
        """The codes of the traversals grid, ``(K, S, L)`` for posterior means ``(B, L)``.

        Row ``k`` is ``means[0]`` with dimension ``most_active_dims(means)[k]`` replaced by
        ``linspace(-traversal_range, traversal_range, traversal_steps)``.
        """
        dims = most_active_dims(means, min(self.num_traversal_dims, means.shape[1]))  # (K,)
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_steps)
        codes = means[0].expand(len(dims), self.traversal_steps, -1).clone()  # (K, S, L)
        for row, dim in enumerate(dims.tolist()):
            codes[row, :, dim] = values.to(codes)
        return codes

    @torch.no_grad()
    def manifold_grid(self, model: VAE) -> Tensor:
        """Decodings over the 2-D latent plane at the prior's quantiles: ``(3, H', W')``."""
        probs = torch.linspace(0.05, 0.95, self.manifold_steps, dtype=torch.float64)
        q = torch.distributions.Normal(0.0, 1.0).icdf(probs)  # (S,) increasing
        # Rows from the top: z2 decreasing, so "up" in the picture is +z2 as on a plot.
        z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")  # (S, S) each
        z = torch.stack([z1, z2], dim=-1).flatten(0, 1)  # (S * S, 2), row-major like the grid
        return make_grid(_decode_mean(model, z.to(model.device, model.dtype)), nrow=self.manifold_steps)


def latent_scatter(means: Tensor, labels: Tensor) -> Figure:
    """A scatter plot of 2-D posterior means ``(N, 2)`` coloured by their labels ``(N,)``, 500x450 pixels."""
    from matplotlib import colormaps  # lazily: matplotlib is slow to import
    from matplotlib.figure import Figure

    means, labels = means.float().cpu().numpy(), labels.cpu().numpy()
    # Built without pyplot: no global figure registry, no GUI backend; log_figure draws it with Agg.
    fig = Figure(figsize=(5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    lo, hi = int(labels.min()), int(labels.max())
    classes = hi - lo + 1
    # One distinct colour per class, centred on its integer label; a continuous map past 10 classes.
    cmap = colormaps["tab10"].resampled(classes) if classes <= 10 else colormaps["viridis"]
    points = ax.scatter(means[:, 0], means[:, 1], c=labels, s=4, alpha=0.7, cmap=cmap, vmin=lo - 0.5, vmax=hi + 0.5)
    fig.colorbar(points, ax=ax, label="label", ticks=range(lo, hi + 1) if classes <= 10 else None)
    ax.set_xlabel("z1 (posterior mean)")
    ax.set_ylabel("z2 (posterior mean)")
    ax.set_title(f"q(z | x) means of {len(means)} images")
    return fig


def latent_kl_figure(stats: dict[str, Tensor]) -> Figure:
    """Bar charts of the KL (nats per image) and the activity Cov_x(E_q[z_l]) of each latent dimension.

    Args:
        stats: ``kl_per_dim`` and ``activity``, ``(L,)`` each, as :class:`vaezoo.metrics.LatentActivity` computes.
    """
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import

    kl, activity = stats["kl_per_dim"].float().cpu().numpy(), stats["activity"].float().cpu().numpy()
    dims = range(len(kl))
    fig = Figure(figsize=(max(5, len(kl) * 0.12), 5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(dims, kl, color="tab:blue")
    top.set_ylabel("KL (nats per image)")
    top.set_title(f"{int((activity > 0.01).sum())} of {len(kl)} latent dimensions active")
    bottom.bar(dims, activity.clip(min=1e-6), color="tab:orange")
    bottom.axhline(0.01, color="black", linewidth=0.8, linestyle="--")  # Burda et al.'s threshold
    bottom.set_yscale("log")
    bottom.set_ylabel("Cov_x(E_q[z])")
    bottom.set_xlabel("latent dimension")
    return fig


def _side(n: int) -> int:
    """Tiles per row of a near-square grid of ``n`` tiles."""
    return math.ceil(math.sqrt(n))


def _decode_mean(model: VAE, z: Tensor) -> Tensor:
    """E[x | z] for codes ``z`` ``(N, L)``: ``(N, C, H, W)`` float32 in [0, 1]."""
    return model.likelihood.mean(model.decode(z)).float()


def _take(batches: Iterator[tuple[Tensor, Tensor]], n: int) -> tuple[Tensor, Tensor] | None:
    """The first ``n`` images and labels of ``batches`` (fewer if there are fewer), None if empty."""
    xs, ys, count = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= n:
            break
    if not count:
        return None
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _posterior_means(model: VAE, batches: Iterator[tuple[Tensor, Tensor]], n: int) -> tuple[Tensor, Tensor]:
    """Posterior means ``(N, L)`` and labels ``(N,)`` of the first ``N <= n`` images, on the CPU."""
    means, labels, count = [], [], 0
    for x, y in batches:
        x, y = x[: n - count], y[: n - count]  # batch by batch: never all images on the device at once
        means.append(model.code(x).float().cpu())
        labels.append(y.cpu())
        count += len(x)
        if count >= n:
            break
    if not count:
        return torch.empty(0, model.latent.code_dim), torch.empty(0, dtype=torch.long)
    return torch.cat(means), torch.cat(labels)
