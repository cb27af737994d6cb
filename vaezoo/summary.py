"""What ``vaezoo fit`` and ``vaezoo test`` say when they end: where the results went, and the figures with units.

After a fit::

    vaezoo: fit done. Run folder: runs/mnist_mlp/version_3
      best checkpoint  runs/mnist_mlp/version_3/checkpoints/best-epoch=9-step=5500.ckpt (val/elbo -98.21 nats per image)
      last checkpoint  runs/mnist_mlp/version_3/checkpoints/last.ckpt (epoch 9, step 5500)
      test it:   vaezoo test --config runs/mnist_mlp/version_3/config.yaml --ckpt_path runs/.../best-epoch=9-step=5500.ckpt
      resume it: vaezoo fit --config runs/mnist_mlp/version_3/config.yaml --ckpt_path last --trainer.max_epochs 20

After a test, one line per figure with its unit, the k of the importance-weighted NLL, and the checkpoint scored.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from vaezoo.registry import registered_name

# name -> (format, unit); names without a unit here print with none.
_UNITS: dict[str, tuple[str, str]] = {
    "elbo": ("{:.2f}", "nats per image (higher is better)"),
    "nll": ("{:.2f}", "nats per image, -log p(x) by importance sampling"),
    "loss": ("{:.2f}", "nats per image (the minimised objective)"),
    "recon": ("{:.2f}", "nats per image, -E_q log p(x | z)"),
    "kl": ("{:.2f}", "nats per image, KL(q(z | x) || p(z))"),
    "kl_mc": ("{:.2f}", "nats per image, KL(q(z | x) || p(z)) estimated by sampling"),
    "bpd": ("{:.4f}", "bits per dimension, -ELBO / (D ln 2)"),
    "nll_bpd": ("{:.4f}", "bits per dimension, from the NLL"),
    "mse": ("{:.5f}", "mean squared error per pixel, pixels in [0, 1]"),
    "psnr": ("{:.2f}", "dB"),
    "active_units": ("{:.0f}", "latent dimensions (Burda et al.'s active units)"),
    "fid": ("{:.2f}", "FID against the test images"),
    "mi": ("{:.2f}", "nats per image, index-code mutual information, minibatch estimate (betatc)"),
    "tc": ("{:.2f}", "nats per image, total correlation, minibatch estimate (betatc)"),
    "dwkl": ("{:.2f}", "nats per image, dimension-wise KL, minibatch estimate (betatc)"),
    "commitment": ("{:.4f}", "beta ||z_e - sg(e)||^2 per image, squared code units (vqvae)"),
    "perplexity": ("{:.1f}", "exp(entropy) of the codes a batch uses, at most K (vqvae)"),
    "used_codes": ("{:.1f}", "distinct codes a batch uses, at most K (vqvae)"),
}
_ORDER = ("elbo", "nll", "bpd", "nll_bpd", "recon", "kl", "kl_mc", "loss", "mse", "psnr", "active_units", "fid")


def _value(value: object) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)  # type: ignore[arg-type]


def _unit(name: str) -> tuple[str, str]:
    """Format and unit of a figure; a variant's KL parts (``kl_z1``, ...) are nats per image like the KL."""
    if name in _UNITS:
        return _UNITS[name]
    if name.startswith("kl_"):
        return "{:.2f}", "nats per image"
    return "{:.6g}", ""


def _fmt(name: str, value: float) -> str:
    fmt = _unit(name)[0]
    return fmt.format(value) if math.isfinite(value) else str(value)


def metrics_table(metrics: Mapping[str, object], stage: str, k: int | None) -> str:
    """``stage/*`` figures one per line, with units; the NLL's line names its k.

    Args:
        metrics: ``trainer.callback_metrics``.
        stage: ``test`` or ``val``.
        k: Importance samples per image behind ``nll``, or None.
    """
    figures = {key.split("/", 1)[1]: _value(v) for key, v in metrics.items() if key.startswith(f"{stage}/")}
    names = [n for n in _ORDER if n in figures] + sorted(n for n in figures if n not in _ORDER)
    labels = {n: f"{stage}/{n}" + (f" (k={k})" if n in ("nll", "nll_bpd") and k else "") for n in names}
    width = max((len(label) for label in labels.values()), default=0)
    values = {n: _fmt(n, figures[n]) for n in names}
    value_width = max((len(v) for v in values.values()), default=0)
    return "\n".join(f"  {labels[n]:<{width}}  {values[n]:>{value_width}}  {_unit(n)[1]}".rstrip()
                     for n in names)


def eval_summary(trainer: Trainer, stage: str, ckpt_path: str | None, k: int | None, run_folder: Path | None) -> str:
    """The figures of ``vaezoo test`` or ``validate``, the checkpoint they score and how much of the split."""
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    scored = trainer.num_test_batches if stage == "test" else trainer.num_val_batches
    total = len(loaders) if loaders is not None and hasattr(loaders, "__len__") else None
    scored_n = int(scored[0]) if scored else None
    split = "test" if stage == "test" else "validation"
    part = f"all {total} batches" if scored_n == total else f"{scored_n} of {total} batches: a partial {split} set"
    datamodule = trainer.datamodule
    data = getattr(datamodule, "name", type(datamodule).__name__) if datamodule is not None else "the data"
    lines = [f"vaezoo {'test' if stage == 'test' else 'validate'}: {ckpt_path} on the {data} {split} split ({part})",
             metrics_table(trainer.callback_metrics, stage, k)]
    model = trainer.lightning_module
    reason = getattr(getattr(model, "latent", None), "iw_reason", None)
    if stage == "test" and reason:  # a latent without log q(z | x) (VQ-VAE): say why there is no NLL
        variant = registered_name(f"{type(model).__module__}.{type(model).__qualname__}")
        lines.append(f"  test/nll  n/a  ({variant}: {reason})")
    if run_folder is not None:
        lines.append(f"  figures saved in {run_folder}")
    return "\n".join(lines)


def fit_summary(trainer: Trainer, run_folder: Path | None) -> str:
    """Where a fit's results went: run folder, best and last checkpoints, best val/elbo, and the next commands."""
    lines = [f"vaezoo: fit {'stopped' if trainer.interrupted else 'done'}. Run folder: {run_folder or '(no logger)'}"]
    best = next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)
    last = next((cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and (cb.last_model_path or (not cb.monitor and cb.best_model_path))),
                None)
    if best is not None:
        score = best.best_model_score
        shown = f"{_value(score):.2f}" if score is not None else "?"
        unit = " nats per image" if best.monitor.endswith("elbo") else ""
        lines.append(f"  best checkpoint  {best.best_model_path} ({best.monitor} {shown}{unit})")
    if last:
        lines.append(f"  last checkpoint  {last} (step {trainer.global_step})")
    if not best and not last:
        lines.append("  no checkpoint was written (checkpointing is off, or no step was completed)")
    config = run_folder / "config.yaml" if run_folder is not None and (run_folder / "config.yaml").is_file() else None
    if config is not None:
        scored = best.best_model_path if best is not None else last
        if scored:
            lines.append(f"  test it:    vaezoo test --config {shlex.quote(str(config))} --ckpt_path {shlex.quote(scored)}")
        if last:
            epochs = trainer.max_epochs or 0
            more = f" --trainer.max_epochs {epochs * 2}" if epochs > 0 and not trainer.interrupted else ""
            lines.append(f"  resume it:  vaezoo fit --config {shlex.quote(str(config))} --ckpt_path last{more}")
    return "\n".join(lines)
