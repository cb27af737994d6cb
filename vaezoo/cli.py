"""The ``vaezoo`` command: Lightning's CLI over every registered variant, net and dataset.

    vaezoo fit --config configs/mnist_mlp.yaml
    vaezoo fit --config configs/mnist_conv.yaml --model beta --model.beta 4 --model.net conv
    vaezoo test --config configs/mnist_mlp.yaml --ckpt_path runs/mnist_mlp/version_0/checkpoints/last.ckpt
    vaezoo variants          # every registered name, its description and where it came from
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import logging
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import yaml
from jsonargparse import Namespace, _typehints
from jsonargparse._util import import_object
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger

import vaezoo.data  # noqa: F401 (registers the datasets)
import vaezoo.likelihoods  # noqa: F401 (registers the likelihoods)
import vaezoo.models  # noqa: F401 (registers the variants)
import vaezoo.nets  # noqa: F401 (registers the nets)
from vaezoo.callbacks import FID, ImageLogger, PredictionWriter
from vaezoo.data.base import ImageDataModule
from vaezoo import checkpoints, tracking
from vaezoo.errors import VAEZooError
from vaezoo.parser import VAEZooParser
from vaezoo.models.base import VAE
from vaezoo.registry import format_table, load_plugins, resolve_name, unknown_name_message

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its messages
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # what Lightning resolves itself
DESCRIPTION = (
    "vaezoo: train, compare and extend variational autoencoders. "
    "Run `vaezoo variants` to list the registered variants, nets, datasets, likelihoods and loggers, "
    "and `vaezoo compare RUN_DIR...` to compare runs."
)


def _use_registry_names() -> None:
    """Let jsonargparse take registry names (``beta``, ``conv``) wherever it takes a class name.

    jsonargparse resolves a bare name by the ``__name__`` of the imported subclasses of the
    expected type; it has no public hook for aliases, so vaezoo wraps that one function. The
    wrapper answers only for names in a vaezoo registry whose class fits the expected type, and
    turns an unknown bare name into a message listing the known ones. ``tests/test_cli.py`` checks
    this against the installed jsonargparse.
    """
    original: Callable[..., str] = _typehints.resolve_class_path_by_name
    if getattr(original, "_vaezoo", False):
        return

    def resolve(cls: type | tuple[type, ...], name: str) -> str:
        if not isinstance(name, str) or "." in name:
            return original(cls, name)
        bases = tuple(t for t in (cls if isinstance(cls, tuple) else (cls,)) if inspect.isclass(t))
        path = resolve_name(name, bases) or original(cls, name)
        if "." not in path and (message := unknown_name_message(name, bases)):
            raise ValueError(message)
        return path

    resolve._vaezoo = True  # type: ignore[attr-defined]
    _typehints.resolve_class_path_by_name = resolve


def _quiet_known_noise() -> None:
    """Silence messages that are not the user's business, by their exact text only."""
    # Lightning 2.6 calls jsonargparse APIs that 4.49+ deprecates (the only ones it names).
    for old in ("instantiate_classes", "skip_none parameter"):
        warnings.filterwarnings("ignore", message=rf"\s*``?{old}")
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # An advertisement for a hosted logger, printed on every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith("💡 Tip")
    )


class VAEZooCLI(LightningCLI):
    """LightningCLI with the image shape linked from the DataModule into the model."""

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path``, then let Lightning rebuild the model from the checkpoint's hyperparameters.

        Lightning reads the file here, before anything else runs: a mistyped or cut-off path would
        surface as a traceback. It then replaces the whole ``model`` config by the checkpoint's, so the
        net fits the weights; vaezoo says so when that changes the config's model, and keeps the
        settings that only steer this run (``_RUN_SETTINGS``) as the config and command line give them.
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt or ckpt in _CKPT_KEYWORDS:
            return super()._parse_ckpt_path()
        if not Path(ckpt).is_file():
            raise VAEZooError(
                f"--ckpt_path {ckpt} does not exist. Give the path of a .ckpt file, e.g. runs/<recipe>/version_<N>/"
                "checkpoints/last.ckpt, or 'last' (the newest checkpoint of this config's runs) or 'best'."
            )
        _check_complete(Path(ckpt))
        asked = self.config[subcommand].get("model")
        asked = asked.clone() if isinstance(asked, Namespace) else asked
        super()._parse_ckpt_path()
        model = self.config[subcommand].get("model")
        if not isinstance(asked, Namespace) or not isinstance(model, Namespace):
            return
        for key in _RUN_SETTINGS:
            if f"init_args.{key}" in asked and f"init_args.{key}" in model:
                model[f"init_args.{key}"] = asked[f"init_args.{key}"]
        changed = _model_changes(asked, model)
        if changed:
            print(f"vaezoo: the model is built as {ckpt} was trained, not as the config says: {'; '.join(changed)}.",
                  file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Loading a checkpoint never runs code from it: weights_only unless the user says otherwise
        # (--weights_only false, for a checkpoint you trust that holds other Python objects).
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True
        _check_cpu_devices(config.trainer)
        _check_cpu_precision(config.trainer)
        _default_progress_bar(config.trainer)
        wandb_loggers = [spec for spec in _logger_specs(config.trainer.logger) if _is_wandb(spec)]
        if wandb_loggers:
            tracking.choose_mode()  # before W&B starts: offline without an API key, never a prompt
            identity = tracking.run_identity(config.as_dict())
            for spec in wandb_loggers:
                for key, value in identity.items():
                    if spec.init_args.get(key) is None:
                        spec.init_args[key] = value

    def _before_subcommand(self) -> None:
        if self.trainer.is_global_zero:  # rank 0 writes the run's files
            _check_writable(self.trainer)
        self._resolve_ckpt_path()

    def _resolve_ckpt_path(self) -> None:
        # Lightning looks for 'last' in this run's new, empty folder; 'best' needs a fit in this process.
        config = self.config_init[self.subcommand]
        asked = config.get("ckpt_path")
        resolved = checkpoints.resolve(asked, self.trainer, self.subcommand)
        if resolved != asked:
            config["ckpt_path"] = resolved
            self.config[self.subcommand]["ckpt_path"] = resolved  # the run's config.yaml names the file
            if self.trainer.is_global_zero:
                print(f"vaezoo: --ckpt_path {asked}: " + (resolved or "no checkpoint yet, training from the start"))

    before_fit = before_validate = before_test = before_predict = _before_subcommand

    def _announce_wandb(self) -> None:
        wandb_loggers = [logger for logger in self.trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers or not self.trainer.is_global_zero:
            return
        for logger in wandb_loggers:
            notice = tracking.offline_notice(logger)
            if notice:
                print(notice)
        import wandb

        wandb.finish()  # one subcommand, one run: a later CLI call in this process starts its own

    after_fit = after_validate = after_test = after_predict = _announce_wandb

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # image_shape is a property of the DataModule class, not an init arg: linking an init arg
        # on instantiation makes Lightning's hparams merge fail once a logger is attached.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        # Every run gets pictures, FID (off until --fid.num_samples is set) and predict's writer.
        parser.add_lightning_class_args(ImageLogger, "images")
        parser.add_lightning_class_args(FID, "fid")
        parser.set_defaults({"fid.num_samples": 0})
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")


class SaveConfigAndTrack(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder of every logger, and the flat config into W&B runs.

    Lightning saves one file in ``trainer.log_dir``, the first logger's; for a W&B logger that is
    its shared ``save_dir``, where every run would overwrite the last. Here each logger's own run
    folder gets the file: ``<save_dir>/<name>/version_<N>/`` for CSV and TensorBoard,
    ``<save_dir>/<project>/<run id>/`` (beside the checkpoints) for W&B.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning calls this on rank 0 only.
        folders = [_run_folder(logger) for logger in trainer.loggers] or [Path(trainer.default_root_dir)]
        for folder in dict.fromkeys(folders):
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, folder / self.config_filename, skip_none=False, overwrite=True)
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in wandb_loggers:
                tracking.setup_wandb_run(logger, config)


# Model arguments that steer one run, not the trained model: kept from the config under --ckpt_path.
_RUN_SETTINGS = ("iw_samples", "val_iw_samples", "nonfinite", "compile")


def _model_changes(asked: Namespace, used: Namespace) -> list[str]:
    """``key: config value -> checkpoint value`` for the parts of the model that differ."""

    def short(value: object) -> str:
        if isinstance(value, Namespace) and value.get("class_path"):
            args = value.get("init_args")
            args = ", ".join(f"{k}={v}" for k, v in (args.items() if isinstance(args, Namespace) else []))
            return f"{value.class_path.rsplit('.', 1)[-1]}({args})"
        return str(value)

    changes = []
    if asked.get("class_path") != used.get("class_path"):
        changes.append(f"variant {short(asked.get('class_path'))} -> {short(used.get('class_path'))}")
    for key in ("net", "latent_dim", "likelihood"):
        before, after = asked.get(f"init_args.{key}"), used.get(f"init_args.{key}")
        if before != after:
            changes.append(f"{key} {short(before)} -> {short(after)}")
    return changes


def _check_writable(trainer: Trainer) -> None:
    """Refuse folders that the run's logs and checkpoints cannot be written to, before any work is done."""
    folders = {Path(logger.save_dir): "--trainer.logger.init_args.save_dir" for logger in trainer.loggers if logger.save_dir}
    folders.setdefault(Path(trainer.default_root_dir), "--trainer.default_root_dir")
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders.setdefault(Path(callback.dirpath), "the dirpath of the checkpoint callback")
    for folder, option in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise VAEZooError(
                f"cannot write the run's files to {folder} ({err.strerror or err}). Choose a writable folder with "
                f"{option}, or run from a folder you can write to (runs/ is relative to it)."
            ) from None


def _check_complete(path: Path) -> None:
    """Refuse a cut-off checkpoint before the data loads: torch would fail later with a traceback about
    a zip archive's "central directory"."""
    if zipfile.is_zipfile(path):  # torch's format since 1.6: the zip's directory is written last
        return
    with path.open("rb") as f:
        if f.read(1) == b"\x80":  # a pickle: torch's legacy format, which torch.load reads itself
            return
    raise VAEZooError(
        f"--ckpt_path {path} is not a complete checkpoint: it is cut off (a copy or download that did not finish) "
        f"or not a checkpoint at all ({path.stat().st_size} bytes). Copy it again, or use another checkpoint of the run "
        f"(ls {path.parent})."
    )


def _check_cpu_devices(trainer: Namespace) -> None:
    """On the CPU, ``devices`` is a number of processes: refuse more than there are cores.

    Lightning refuses a GPU count that the machine lacks, but starts any number of CPU processes, each
    with a full copy of the model and data, which then fight over the cores.
    """
    devices = trainer.get("devices")
    if not _on_cpu(trainer) or not isinstance(devices, (int, str)) or not str(devices).isdigit():
        return
    cores = os.cpu_count() or 1
    if int(devices) > cores:
        raise VAEZooError(
            f"--trainer.devices {devices} on the CPU asks for {devices} training processes, but this machine has "
            f"{cores} cores. On a CPU, devices counts processes (DDP over gloo), not cores: use at most {cores}, or 1 "
            "(torch already uses every core in one process)."
        )


def _check_cpu_precision(trainer: Namespace) -> None:
    """Refuse the precisions that a CPU cannot train in, before any data is loaded."""
    precision = str(trainer.get("precision") or "32-true")
    if not _on_cpu(trainer):
        return
    if precision in ("16-true", "16"):
        raise VAEZooError(
            f"--trainer.precision {precision} keeps the weights and Adam's state in fp16, which the CPU cannot train "
            "in: Adam's eps (1e-8) rounds to 0 and the loss turns NaN in the first steps. On a CPU use bf16-mixed "
            "(fast on CPUs with AMX, see docs/performance.md) or 32-true."
        )
    if precision.startswith("transformer-engine"):
        raise VAEZooError(f"--trainer.precision {precision} needs an NVIDIA GPU with Transformer Engine; use bf16-mixed "
                          "or 32-true on a CPU.")


def _on_cpu(trainer: Namespace) -> bool:
    """Whether the parsed trainer config will run on the CPU (``auto`` without a GPU or MPS)."""
    import torch

    accelerator = str(trainer.get("accelerator") or "auto")
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    return accelerator == "cpu" or (accelerator == "auto" and not gpu)


def _default_progress_bar(trainer: Namespace) -> None:
    """A TQDM bar redrawn every 10 batches unless the config names a bar: Lightning's default, Rich
    redrawn every batch, costs ~2.5 ms per step in a terminal, which is a third of a small net's step."""
    if trainer.get("enable_progress_bar") is False:
        return
    callbacks = trainer.get("callbacks") or []
    specs = callbacks if isinstance(callbacks, list) else [callbacks]
    if any(_is_subclass(spec, ProgressBar) for spec in specs):
        return
    bar = Namespace(class_path="lightning.pytorch.callbacks.TQDMProgressBar", init_args=Namespace(refresh_rate=10))
    trainer.callbacks = [*specs, bar]


def _run_folder(logger: Logger) -> Path:
    if isinstance(logger, WandbLogger):
        return Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
    return Path(logger.log_dir or logger.save_dir or ".")


def _logger_specs(value: object) -> list[Namespace]:
    """The ``class_path``/``init_args`` entries of a parsed ``trainer.logger`` (one, a list, or a bool)."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, Namespace) and v.get("class_path")]


def _is_wandb(spec: Namespace) -> bool:
    return _is_subclass(spec, WandbLogger)


def _is_subclass(spec: object, cls: type) -> bool:
    """Whether a parsed ``class_path``/``init_args`` entry (or an instance) is of class ``cls``."""
    if isinstance(spec, cls):
        return True
    if not isinstance(spec, Namespace) or not spec.get("class_path"):
        return False
    try:
        return issubclass(import_object(spec.class_path), cls)
    except (ImportError, AttributeError, ValueError, TypeError):
        return False


def main(args: list[str] | None = None) -> None:
    """Entry point of ``vaezoo`` and ``python -m vaezoo``.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a broken plugin warns once per start, visibly
        load_plugins()
    if argv[:1] == ["variants"]:
        print(format_table(), end="")
        return
    if argv[:1] == ["compare"]:
        from vaezoo import compare  # lazily: rich and matplotlib are slow to import

        sys.exit(compare.main(argv[1:]))
    _use_registry_names()
    _quiet_known_noise()
    try:
        VAEZooCLI(
            model_class=VAE,
            datamodule_class=ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigAndTrack,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION, "prog": "vaezoo"},
            parser_class=VAEZooParser,
            auto_configure_optimizers=False,  # the model takes its optimizer as an argument
            args=args,
        )
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"vaezoo: error: {user_error}", file=sys.stderr)
        sys.exit(2)


# Lightning's own errors for settings the machine cannot honour (devices, precision, strategy).
_USER_ERROR_TYPES: tuple[type[BaseException], ...] = (MisconfigurationException,)


def _user_error(err: BaseException) -> VAEZooError | None:
    """The VAEZooError behind ``err``: jsonargparse wraps errors raised while instantiating classes."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VAEZooError):
            return err
        if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) refused an object
            reason = _ANSI.sub("", str(err).splitlines()[0])[:160]
            return VAEZooError(
                "refused to load the checkpoint: besides weights it holds Python objects whose loading could "
                f"run code ({reason}). vaezoo loads checkpoints with weights_only. Use a "
                "checkpoint written by vaezoo or Lightning, or one whose source you trust re-saved as plain weights."
            )
        if isinstance(err, _USER_ERROR_TYPES):
            return VAEZooError(f"{err} (Lightning refused a --trainer setting or callback; see `vaezoo fit --help`)")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
