"""Pictures of what a VAE has learnt: reconstructions, samples, interpolations, traversals, 2-D maps.

Every picture is one ``torchvision.utils.make_grid`` of tiles (2 pixels of padding around each),
logged through :func:`vaezoo.callbacks.log_media.log_image`, so it lands in W&B, TensorBoard, or as
PNG files beside ``metrics.csv``, whichever logger is attached. Keys, with ``stage`` = ``val``
during ``fit``/``validate`` and ``test`` during ``test``:

- ``stage/images/reconstructions``, ``stage/images/samples``, ``stage/images/interpolations``,
  ``stage/images/traversals``;
- the latent maps: ``stage/images/latent_scatter`` (the codes of up to ``scatter_images`` images,
  coloured by label; a latent larger than 2 is shown on its two principal components) and the
  decoded latent plane, ``stage/images/manifold`` (a 2-D code under the N(0, I) prior: the prior's
  quantiles) or ``stage/images/manifold_pca`` (any other code: the plane of the codes' two
  principal components through their mean).

Everything is cheap: the first few images of the stage's dataloader, one decoder call per picture,
and one encoder pass over at most ``scatter_images`` images for the latent maps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, NamedTuple

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

__all__ = ["PCA", "ImageLogger", "latent_scatter", "most_active_dims", "principal_components"]


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
    - ``latent_scatter``: the codes (``model.code``: posterior means; z1's posterior means for
      ``hvae``; the quantised codes for ``vqvae``, a few piles of points, one per codebook entry) of
      up to ``scatter_images`` images (rank 0's share under DDP), coloured by label, with a legend.
      A 2-D code is drawn as it is; a larger one on its first two principal components (an SVD of
      the centred codes), as the title says with the share of variance they explain.
    - ``manifold`` (a 2-D code under the N(0, I) prior): decodings over a ``manifold_steps`` x
      ``manifold_steps`` grid of the latent plane at the prior's quantiles ``manifold_quantile`` ..
      ``1 - manifold_quantile`` (Kingma & Welling 2014, fig. 4); z1 grows left to right, z2 bottom
      to top.
    - ``manifold_pca`` (any other code: larger than 2, a learned prior, a deeper ``hvae``'s z1, ``vqvae``):
      the same grid over the plane through the mean of the scatter's codes spanned by their first
      two principal components, at ``mean + s_i * Phi^-1(p)`` along component i, with ``s_i`` the
      codes' standard deviation along it and ``p`` the same quantiles: the central part of a
      Gaussian fitted to the codes. PC1 grows left to right, PC2 bottom to top. Needs the
      scatter's codes (``scatter_images`` > 0).

    Neither latent map is drawn for a 1-D code.

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
        manifold_steps: Tiles per side of the manifold grid (at least 2); 0 turns it off.
        manifold_quantile: The manifold grid runs from this quantile to 1 minus it along each axis
            (0.05: the central 90%, as Kingma & Welling); in (0, 0.5).
        scatter_images: Most images whose codes the latent scatter shows (and the principal
            components of a code larger than 2 come from); 0 turns the scatter and the PCA
            manifold off.
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
        manifold_quantile: float = 0.05,
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
            "manifold_steps": (manifold_steps, 0),
            "scatter_images": (scatter_images, 0),
            "seed": (seed, 0),
        }
        for name, (value, least) in minimums.items():
            if value < least:
                raise VAEZooError(f"ImageLogger's {name} must be >= {least}, got {value}.")
        if manifold_steps == 1:
            raise VAEZooError("ImageLogger's manifold_steps must be >= 2 tiles per side, or 0 to turn it off, got 1.")
        if not 0 < manifold_quantile < 0.5:
            raise VAEZooError(
                f"ImageLogger's manifold_quantile must be in (0, 0.5), got {manifold_quantile}; e.g. 0.05 spans the "
                "central 90% of each axis."
            )
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
        self.manifold_quantile = manifold_quantile
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
        codes = labels = None
        if model.latent.code_dim >= 2 and self.scatter_images:
            codes, labels = _posterior_means(model, self._batches(trainer, model, stage), self.scatter_images)
        maps, scatter = self.latent_maps(model, codes, labels)
        return {**grids, **maps}, scatter

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
        """Every grid picture, by name, for images ``x`` ``(B, C, H, W)`` (None: samples only)."""
        grids = {}
        if x is not None:
            grids["reconstructions"] = self.reconstruction_grid(model, x)
        grids["samples"] = self.sample_grid(model)
        if x is not None and self.num_interpolations and len(x) >= 2:
            grids["interpolations"] = self.interpolation_grid(model, x)
        if x is not None and self.num_traversal_dims:
            grids["traversals"] = self.traversal_grid(model, x)
        return grids

    @torch.no_grad()
    def latent_maps(
        self, model: VAE, codes: Tensor | None, labels: Tensor | None
    ) -> tuple[dict[str, Tensor], Figure | None]:
        """The manifold grid, by name (``manifold`` or ``manifold_pca``), and the latent scatter.

        Args:
            model: The model, in eval mode.
            codes: ``model.code`` of the scatter's images ``(N, D)``, or None (no data, or
                ``scatter_images`` is 0): then only the prior's manifold can be drawn.
            labels: Their labels ``(N,)``.

        Returns:
            The grids (none for a 1-D code, nor for ``manifold_pca`` with fewer than 2 codes) and
            the scatter figure (None without codes, or with fewer than 2 for a code larger than 2).
        """
        dim = model.latent.code_dim
        if dim < 2:
            return {}, None  # a line, not a plane: the traversals picture already sweeps it
        enough = codes is not None and len(codes) >= (1 if dim == 2 else 2)  # an SVD needs 2 points for 2 components
        grids = {}
        if self.manifold_steps and dim == 2 and _prior_is_standard_normal(model):
            grids["manifold"] = self.manifold_grid(model)
        elif self.manifold_steps and codes is not None and len(codes) >= 2:
            grids["manifold_pca"] = self.manifold_grid(model, principal_components(codes))
        scatter = latent_scatter(codes, labels, _code_name(model)) if enough else None
        return grids, scatter

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
    def manifold_grid(self, model: VAE, pca: PCA | None = None) -> Tensor:
        """Decodings of :meth:`manifold_codes` as a ``manifold_steps``-wide grid: ``(3, H', W')``."""
        z = self.manifold_codes(pca)  # (S * S, D)
        return make_grid(_decode_mean(model, z.to(model.device, model.dtype)), nrow=self.manifold_steps)

    def manifold_codes(self, pca: PCA | None = None) -> Tensor:
        """The codes of the manifold grid, ``(S * S, D)`` float64 in the grid's row-major order.

        With ``pca`` None, ``D`` = 2 and ``(z1, z2) = (Phi^-1(p_j), Phi^-1(p_i))`` for tile (row i,
        column j), ``p`` = ``linspace(manifold_quantile, 1 - manifold_quantile, S)`` and rows from
        the top, so z2 grows upwards. With ``pca``, ``mean + Phi^-1(p_j) s_1 v_1 + Phi^-1(p_i) s_2 v_2``
        for its directions ``v`` and standard deviations ``s``.
        """
        probs = torch.linspace(self.manifold_quantile, 1 - self.manifold_quantile, self.manifold_steps,
                               dtype=torch.float64)
        q = torch.distributions.Normal(0.0, 1.0).icdf(probs)  # (S,) increasing
        # Rows from the top: the second coordinate decreasing, so "up" in the picture is + as on a plot.
        b, a = torch.meshgrid(q.flip(0), q, indexing="ij")  # (S, S) each
        ab = torch.stack([a, b], dim=-1).flatten(0, 1)  # (S * S, 2), row-major like the grid
        if pca is None:
            return ab
        return pca.mean + (ab * pca.std) @ pca.axes  # (S * S, D): the plane through the mean


class PCA(NamedTuple):
    """The first two principal components of codes ``(N, D)``, float64 (see :func:`principal_components`).

    Attributes:
        mean: The codes' mean ``(D,)``.
        axes: The two principal directions ``(2, D)``, unit rows, largest variance first.
        std: The codes' standard deviation along each ``(2,)`` (divisor N - 1).
        explained: The share of the codes' total variance along each ``(2,)``, in [0, 1].
    """

    mean: Tensor
    axes: Tensor
    std: Tensor
    explained: Tensor

    def project(self, codes: Tensor) -> Tensor:
        """Coordinates ``(N, 2)`` of codes ``(N, D)`` on the two components, from the mean."""
        return (codes.double() - self.mean) @ self.axes.T


def principal_components(codes: Tensor) -> PCA:
    """The first two principal components of ``N >= 2`` codes ``(N, D)``, ``D >= 2``, by an SVD of the centred codes.

    An SVD's signs are arbitrary; each direction is flipped so that its largest entry (in absolute value) is
    positive, so the same codes always give the same picture.
    """
    codes = codes.double().cpu()
    mean = codes.mean(0)  # (D,)
    _, s, vh = torch.linalg.svd(codes - mean, full_matrices=False)  # s (min(N, D),), vh (min(N, D), D)
    axes = vh[:2]  # (2, D)
    pivot = axes.abs().argmax(1, keepdim=True)  # (2, 1)
    axes = axes * axes.gather(1, pivot).sign()  # rows are unit vectors, so the pivot is never 0
    var = s.pow(2)  # (min(N, D),): N - 1 times the variance along each component
    return PCA(mean, axes, (var[:2] / (len(codes) - 1)).sqrt(), var[:2] / var.sum().clamp(min=1e-300))


def latent_scatter(codes: Tensor, labels: Tensor, what: str = "posterior mean") -> Figure:
    """A scatter plot of codes ``(N, D)``, coloured by their labels ``(N,)`` with a legend, 500x450 pixels.

    A 2-D code is drawn as it is, a larger one on its first two principal components (:func:`principal_components`,
    which needs ``N >= 2``), and the title says which, with the share of the variance the two explain.

    Args:
        codes: The codes, e.g. ``model.code(x)``.
        labels: Integer labels.
        what: What a code is, for the axes and the title (e.g. "posterior mean", "quantised code").
    """
    from matplotlib import colormaps  # lazily: matplotlib is slow to import
    from matplotlib.figure import Figure

    n, dim = codes.shape
    if dim == 2:
        points = codes.float().cpu().numpy()
        axes = (f"z1 ({what})", f"z2 ({what})")
        title = f"{what}s of {n} images"
    else:
        pca = principal_components(codes)
        points = pca.project(codes).float().numpy()
        share = (100 * pca.explained).tolist()
        axes = (f"PC1 ({share[0]:.0f}% of variance)", f"PC2 ({share[1]:.0f}% of variance)")
        title = (f"{what}s of {n} images: first 2 principal\n"
                 f"components of the {dim}-D code ({sum(share):.0f}% of variance)")
    labels = labels.cpu().numpy()
    # Built without pyplot: no global figure registry, no GUI backend; log_figure draws it with Agg.
    fig = Figure(figsize=(5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    classes = sorted(set(labels.tolist()))
    if len(classes) <= 20:
        # One distinct colour per class, named in a legend beside the plot.
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, label in enumerate(classes):
            chosen = labels == label
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.7, color=cmap(i), label=str(label))
        ax.legend(title="label", loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=3, fontsize="small",
                  frameon=False)
    else:  # too many classes for a legend: a continuous map and a colour bar
        drawn = ax.scatter(points[:, 0], points[:, 1], c=labels, s=4, alpha=0.7, cmap=colormaps["viridis"])
        fig.colorbar(drawn, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize="medium")
    return fig


def latent_kl_figure(stats: dict[str, Tensor]) -> Figure:
    """Bar charts of the KL (nats per image) and the activity Cov_x(E_q[z_l]) of each latent dimension.

    Args:
        stats: ``kl_per_dim`` and ``activity``, ``(L,)`` each, as :class:`vaezoo.metrics.LatentActivity` computes.
    """
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import

    # reshape: torchmetrics squeezes a 1-element result, so a 1-D latent's (1,) arrives as ()
    kl, activity = (stats[key].float().cpu().reshape(-1).numpy() for key in ("kl_per_dim", "activity"))
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


def _prior_is_standard_normal(model: VAE) -> bool:
    """Whether the decoder's code has the prior N(0, I), so the prior's quantiles span where the codes lie.

    True for one Gaussian layer (or an ``hvae`` of one layer) under the ``normal`` prior; a learned prior
    (``mog``, ``vamp``), z1 of a deeper ``hvae`` (its prior is a mixture over z2) and ``vqvae``'s codebook
    vectors are elsewhere.
    """
    from vaezoo.latents.gaussian import GaussianLatent
    from vaezoo.latents.hierarchical import HierarchicalLatent
    from vaezoo.priors.normal import NormalPrior

    latent = model.latent
    one_layer = isinstance(latent, GaussianLatent) or (
        isinstance(latent, HierarchicalLatent) and len(latent.layers) == 1
    )
    return one_layer and isinstance(getattr(latent, "prior", None), NormalPrior)


def _code_name(model: VAE) -> str:
    """What ``model.code`` gives, in words, for the scatter's axes and title."""
    from vaezoo.latents.gaussian import GaussianLatent
    from vaezoo.latents.hierarchical import HierarchicalLatent
    from vaezoo.latents.vq import VQLatent

    if isinstance(model.latent, GaussianLatent):
        return "posterior mean"
    if isinstance(model.latent, HierarchicalLatent):
        return "z1 posterior mean"
    if isinstance(model.latent, VQLatent):
        return "quantised code"
    return "code"  # a plugin's kind of latent


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
