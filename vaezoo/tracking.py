"""Weights & Biases with no account needed to start, and runs that compare.

- No API key and ``WANDB_MODE`` unset: W&B logs offline, and the run's folder and the
  ``wandb sync`` command that uploads it are printed at the end. A ``WANDB_MODE`` the user set
  always wins. Nothing ever prompts for a login.
- Run name, group and tags come from the recipe (variant, net, dataset, beta, latent size) unless
  the config gives them.
- The full resolved CLI config lands in the run's config, flattened (``model.latent_dim``,
  ``model.net.hidden_dims``, ``data.batch_size``, ``trainer.max_epochs``...), so every
  hyperparameter is a column to filter and group by.
- ``val/*`` and ``test/*`` are plotted against ``epoch``, so curves of
  runs with different batch sizes line up.
- Every W&B run also keeps a local CSV record, ``metrics.csv`` beside its ``config.yaml`` and
  checkpoints, which ``vaezoo compare`` reads with nothing to decode.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from vaezoo.errors import VAEZooError
from vaezoo.registry import LOGGERS, registered_name

# Short names for Lightning's loggers: --trainer.logger wandb
for _name, _cls in (("csv", CSVLogger), ("tensorboard", TensorBoardLogger), ("wandb", WandbLogger)):
    LOGGERS.add(_name, _cls, "lightning")


def has_api_key() -> bool:
    """Whether W&B has credentials: ``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one that is not ours to judge
        return False


def choose_mode() -> str:
    """Set ``WANDB_MODE=offline`` when there is no API key and the user chose no mode; returns the mode.

    Raises:
        VAEZooError: ``WANDB_MODE=online`` without an API key: W&B would prompt, or fail without a TTY.
    """
    mode = os.environ.get("WANDB_MODE", "")
    if not mode:
        mode = "online" if has_api_key() else "offline"
        os.environ["WANDB_MODE"] = mode
    elif mode == "online" and not has_api_key():
        raise VAEZooError(
            "WANDB_MODE=online but W&B has no API key. Run `wandb login` or set WANDB_API_KEY, "
            "or unset WANDB_MODE to log offline and upload later with `wandb sync`."
        )
    return mode


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """Name, group and tags of a run, from its resolved config (a plain dict).

    Example: ``beta-conv-mnist-z10-b4``, group ``mnist-beta``, tags ``[beta, conv, mnist, bernoulli]``.
    """
    model, data = config.get("model") or {}, config.get("data") or {}
    args = model.get("init_args") or {}
    variant, dataset = registered_name(model.get("class_path")), registered_name(data.get("class_path"))
    net, likelihood = args.get("net"), args.get("likelihood")
    net = registered_name(net.get("class_path") if isinstance(net, Mapping) else net)
    likelihood = registered_name(likelihood.get("class_path") if isinstance(likelihood, Mapping) else likelihood)
    parts = [variant, net, dataset, f"z{args['latent_dim']}" if "latent_dim" in args else None]
    if args.get("beta") is not None:
        parts.append(f"b{args['beta']:g}")
    name = "-".join(p for p in parts if p)
    tags = [t for t in (variant, net, dataset, likelihood) if t]
    return {"name": name or None, "group": "-".join(t for t in (dataset, variant) if t) or None, "tags": tags}


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """One key per hyperparameter: ``{model: {class_path: X, init_args: {a: 1}}}`` -> ``{model: X, model.a: 1}``."""
    return dict(_flat(config, prefix))


def _flat(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        if "class_path" in value:
            yield key, value["class_path"]
        for k, v in value.items():
            if k == "class_path":
                continue
            sub = key if k in ("init_args", "dict_kwargs") else (f"{key}.{k}" if key else str(k))
            yield from _flat(v, sub)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):  # e.g. trainer.callbacks.0 = ModelCheckpoint, trainer.callbacks.0.monitor
            yield from _flat(v, f"{key}.{i}")
    else:
        yield key, list(value) if isinstance(value, tuple) else value


def setup_wandb_run(logger: WandbLogger, config: Mapping[str, Any]) -> None:
    """Put the flattened config into the run and plot evaluation metrics against epochs (rank 0 only)."""
    run = logger.experiment
    run.config.update(flatten_config(config), allow_val_change=True)
    for pattern in ("val/*", "test/*"):  # W&B takes globs with a suffix wildcard only
        run.define_metric(pattern, step_metric="epoch")


def offline_notice(logger: WandbLogger) -> str | None:
    """One line saying where an offline run went and how to upload it; None for an online run."""
    run = logger.experiment
    if not run.offline and os.environ.get("WANDB_MODE") != "offline":
        return None
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run folder
    return f"W&B logged offline (no API key) to {run_dir}; upload it with: wandb sync {run_dir}"


def add_csv_record(trainer: Trainer) -> None:
    """Add a ``CSVLogger`` beside each W&B logger, writing ``metrics.csv`` into the W&B run's own folder.

    That folder, ``<save_dir>/<project>/<run id>/``, already holds the run's ``config.yaml`` and
    checkpoints; with ``metrics.csv`` there it is a run folder like a CSV run's, which ``vaezoo compare``
    reads locally. The W&B run keeps logging as before. Its run id names the folder, so the run starts
    here, where Lightning would start it a moment later (at the trainer's setup). Call it on the main
    process only: other processes log nothing. A run folder that already holds a ``metrics.csv`` (a
    W&B run resumed by its id) gets no CSV logger, which would delete that file.
    """
    loggers = list(trainer.loggers)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and isinstance(run_id := logger.experiment.id, str):
            folder = Path(logger.save_dir or ".") / str(logger.name) / run_id
            if not (folder / "metrics.csv").exists():
                loggers.append(CSVLogger(save_dir=folder.parent.parent, name=str(logger.name), version=run_id))
    trainer.loggers = loggers
