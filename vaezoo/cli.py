"""The ``vaezoo`` command: Lightning's CLI over every registered variant, net and dataset.

    vaezoo fit --config configs/mnist_mlp.yaml
    vaezoo fit --config configs/mnist_conv.yaml --model beta --model.beta 4 --model.net conv
    vaezoo test --config configs/mnist_mlp.yaml --ckpt_path runs/mnist_mlp/version_0/checkpoints/last.ckpt
    vaezoo variants          # every registered name, its description and where it came from
"""

from __future__ import annotations

import os
import pickle
import re
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import Namespace
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

import vaezoo.data  # noqa: F401 (registers the datasets)
import vaezoo.likelihoods  # noqa: F401 (registers the likelihoods)
import vaezoo.models  # noqa: F401 (registers the variants)
import vaezoo.nets  # noqa: F401 (registers the nets)
from vaezoo.callbacks import FID, ImageLogger, PredictionWriter, StopOnSignal
from vaezoo.data.base import ImageDataModule
from vaezoo import checkpoints, compat, runs, summary, tracking
from vaezoo.errors import VAEZooError, refused_arguments
from vaezoo.introspect import import_object
from vaezoo.parser import VAEZooParser
from vaezoo.models.base import VAE
from vaezoo.registry import format_table, load_plugins, resolve_name, unknown_name_message

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its messages
# What Lightning resolves itself: SLURM's requeue checkpoint, and models of a Lightning model registry.
_LIGHTNING_CKPT_KEYWORDS = ("hpc", "registry")
DESCRIPTION = (
    "vaezoo: train, compare and extend variational autoencoders. "
    "Run `vaezoo variants` to list the registered variants, nets, datasets, likelihoods and loggers, "
    "and `vaezoo compare RUN_DIR...` to compare runs."
)


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningCLI's, which parses, builds and runs the subcommand; then the run folders it claimed
        (:meth:`_claim_run_folders`) that hold no result are released, and after a failure those that hold
        only the run's config too: a failed command leaves no run folder without results behind."""
        self._claimed: list[tuple[Namespace, Path]] = []
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            runs.release([folder for _, folder in self._claimed], failed=True)
            raise
        runs.release([folder for _, folder in self._claimed])

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve and check ``--ckpt_path`` before Lightning reads the checkpoint.

        ``last`` and ``best`` become a path first (:mod:`vaezoo.checkpoints`), so both forms take this one
        path. Lightning reads the file next (rebuilding the whole ``model`` config from the checkpoint's
        hyperparameters, so the net fits the weights): a mistyped or cut-off path would surface there as a
        traceback. ``fit`` refuses a checkpoint trained with other settings than this command's unless
        ``--ckpt_mismatch use_checkpoint`` asks to continue it as it was trained; evaluation says what the
        checkpoint changes (:meth:`before_instantiate_classes`, after Lightning has rebuilt the model config).
        The settings that only steer this run (:data:`vaezoo.runs.RUN_SETTINGS`) stay as the config and command
        line give them, and ``config.yaml`` records what is used.
        """
        super().parse_arguments(parser, args)
        self._ckpt_plan: tuple[str, Path, Any, list[str]] | None = None  # (subcommand, ckpt, asked model, changed)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt is None:
            if subcommand != "fit":
                raise VAEZooError(
                    f"vaezoo {subcommand} needs a trained model, and no --ckpt_path was given: without one it would "
                    "score randomly initialised weights. Pass --ckpt_path last (the newest checkpoint of this "
                    "config's runs), --ckpt_path best (their best by val/elbo) or --ckpt_path PATH."
                )
            return
        if str(ckpt).split(":")[0] in _LIGHTNING_CKPT_KEYWORDS:
            return
        asked_settings = runs.settings(self._plain(subcommand))
        if ckpt in ("last", "best"):
            resolution = checkpoints.resolve(ckpt, subcommand, config.trainer, asked_settings)
            if runs.is_main_process():
                print(resolution.notice)
            config["ckpt_path"] = ckpt = resolution.path  # config.yaml names the file
            if ckpt is None:
                return
        checkpoints.check_file(Path(ckpt))
        data_class = checkpoints.class_of(config.get("data"))
        if data_class is not None and issubclass(data_class, ImageDataModule):
            # Before the model is built: a net for other images fails to build, or its weights fail to load,
            # with messages about layers that are only symptoms of this.
            if (mismatch := data_class.checkpoint_mismatch(ckpt)) is not None:
                raise VAEZooError(mismatch)
        run_settings = checkpoints.settings_of(Path(ckpt)) or {}
        changed = runs.differences(run_settings, asked_settings)
        if subcommand == "fit" and changed and config.get("ckpt_mismatch") != "use_checkpoint":
            raise VAEZooError(
                f"--ckpt_path {ckpt} was trained with other settings than this command's: {'; '.join(changed)}. "
                "Resuming would train on with the checkpoint's weights and optimizer state under settings it was not "
                "trained with. Run with the settings it was trained with (--config <its run>/config.yaml), drop "
                "--ckpt_path to start a new run, or add --ckpt_mismatch use_checkpoint to continue it as it was "
                "trained (config.yaml then records the checkpoint's settings)."
            )
        asked = config.get("model")
        self._ckpt_plan = (subcommand, Path(ckpt), asked.clone() if isinstance(asked, Namespace) else asked, changed)

    def _use_checkpoint_model(self) -> None:
        """After Lightning rebuilt the model config from the checkpoint: keep this run's own settings, take the
        run's data and seed where ``fit`` continues it as trained, and say what the checkpoint changed."""
        if self._ckpt_plan is None:
            return
        subcommand, ckpt, asked, changed = self._ckpt_plan
        config = self.config[subcommand]
        model = config.get("model")
        if not isinstance(asked, Namespace) or not isinstance(model, Namespace):
            return
        for key in runs.MODEL_RUN_SETTINGS:
            if f"init_args.{key}" in asked and f"init_args.{key}" in model:
                model[f"init_args.{key}"] = asked[f"init_args.{key}"]
        if subcommand == "fit" and changed:  # use_checkpoint: the data and seed as trained, too
            self._use_run_data(config, ckpt)
        changed = _model_changes(asked, model)
        if changed and runs.is_main_process():
            print(f"vaezoo: the model is built as {ckpt} was trained, not as the config says: {'; '.join(changed)}.",
                  file=sys.stderr)

    def _plain(self, subcommand: str) -> dict[str, Any]:
        """A subcommand's parsed config as plain data, as config.yaml holds it (defaults' class paths included)."""
        return yaml.safe_load(self.parser.dump(self.config, skip_unset=False, skip_check=True))[subcommand]

    def _use_run_data(self, config: Namespace, ckpt: Path) -> None:
        """Replace the data config and seed by those of the run of ``ckpt`` (keeping where the data lies)."""
        run = checkpoints.run_folder_of(ckpt)
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if run else None
        if not isinstance(saved, dict):
            return
        asked = config.get("data")
        asked = asked.clone() if isinstance(asked, Namespace) else asked
        updates: dict[str, Any] = {}
        if isinstance(saved.get("data"), dict):
            updates["data"] = saved["data"]
        if isinstance(saved.get("seed_everything"), int):
            updates["seed_everything"] = saved["seed_everything"]
        subcommand = self.config.subcommand
        self.config = self.parser.parse_object({subcommand: updates}, self.config)
        data = self.config[subcommand].get("data")
        if isinstance(asked, Namespace) and isinstance(data, Namespace):
            for key in runs.DATA_RUN_SETTINGS:
                if f"init_args.{key}" in asked and f"init_args.{key}" in data:
                    data[f"init_args.{key}"] = asked[f"init_args.{key}"]

    def before_instantiate_classes(self) -> None:
        self._use_checkpoint_model()
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Loading a checkpoint never runs code from it: weights_only unless the user says otherwise
        # (--weights_only false, for a checkpoint you trust that holds other Python objects).
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True
        _check_cpu_devices(config.trainer)
        _check_cpu_precision(config.trainer)
        _default_progress_bar(config.trainer)
        if self.subcommand == "predict":
            # predict logs no metrics: its files and their config.yaml go to --predict_writer.output_dir, and no
            # run folder is made (it would hold a config and nothing else, and show up in `vaezoo compare`).
            config.trainer.logger = False
        self._claim_run_folders(config.trainer)
        wandb_loggers = [spec for spec in _logger_specs(config.trainer.logger) if _is_wandb(spec)]
        if wandb_loggers:
            tracking.choose_mode()  # before W&B starts: offline without an API key, never a prompt
            identity = tracking.run_identity(config.as_dict())
            for spec in wandb_loggers:
                for key, value in identity.items():
                    if spec.init_args.get(key) is None:
                        spec.init_args[key] = value

    def _claim_run_folders(self, trainer: Namespace) -> None:
        """Give each CSV and TensorBoard logger a ``version_<N>`` folder that no other run can take.

        Only rank 0 of a job claims (the others' loggers write nothing; Lightning sends them rank 0's
        checkpoint folder). The version is set for building the logger and reset to null in the saved
        config, so that the run's ``config.yaml`` starts a new run when it is used as ``--config``.
        """
        self._default_logger: Namespace | None = None
        if not runs.is_main_process():
            return
        root = str(trainer.get("default_root_dir") or ".")
        if trainer.get("logger") is True and SLURMEnvironment.job_id() is None:
            # Lightning's default logger, as Lightning builds it (under SLURM its version is the job id: unique).
            cls = TensorBoardLogger if _tensorboard_available() else CSVLogger
            trainer.logger = Namespace(class_path=f"{cls.__module__}.{cls.__qualname__}",
                                       init_args=Namespace(save_dir=root, name="lightning_logs"))
            self._default_logger = trainer
        for spec in _logger_specs(trainer.get("logger")):
            if not (_is_subclass(spec, CSVLogger) or _is_subclass(spec, TensorBoardLogger)):
                continue
            args = spec.init_args
            name = args.get("name", "lightning_logs")  # "" or None: the versions lie in save_dir itself
            folder = Path(args.get("save_dir") or root) / (str(name) if name else "")
            if args.get("version") is not None:
                version = args.version
                runs.check_unused(folder / (f"version_{version}" if isinstance(version, int) else str(version)),
                                  "--trainer.logger.init_args.version")
                continue
            try:
                args.version = runs.claim_version(folder)
            except OSError as err:
                raise VAEZooError(
                    f"cannot write the run's files to {folder.parent} ({err.strerror or err}). Choose a writable folder "
                    "with --trainer.logger.init_args.save_dir, or run from a folder you can write to (runs/ is "
                    "relative to it)."
                ) from None
            self._claimed.append((spec, folder / f"version_{args.version}"))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            runs.release([folder for _, folder in self._claimed])
            raise
        for spec, _ in self._claimed:
            spec.init_args.version = None  # config.yaml: a new run's config, not this folder's
        if getattr(self, "_default_logger", None) is not None:
            self._default_logger.logger = True  # config.yaml: as the user wrote it
        if runs.is_main_process():  # a W&B run keeps a local CSV record too, which `vaezoo compare` reads
            tracking.add_csv_record(self.trainer)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, without the callbacks this subcommand would leave idle: FID with ``--fid.num_samples 0`` (the
        default) and the prediction writer outside ``predict``. Attached, each still costs Lightning's dispatch on
        every hook of every step (docs/performance.md, "What each callback costs")."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [cb for cb in trainer.callbacks if not _idle(cb, self.subcommand)]
        return trainer

    def _before_subcommand(self) -> None:
        if self.trainer.is_global_zero:  # rank 0 writes the run's files
            _check_writable(self.trainer)
        config = self.config_init[self.subcommand]
        if "verbose" in config:
            config["verbose"] = False  # vaezoo prints its own table, with units (summary.eval_summary)

    before_fit = before_validate = before_test = before_predict = _before_subcommand

    def _after_subcommand(self) -> None:
        if self.trainer.is_global_zero:
            folder = _run_folder(self.trainer.loggers[0]) if self.trainer.loggers else None
            if self.subcommand == "fit":
                print(summary.fit_summary(self.trainer, folder))
            elif self.subcommand in ("test", "validate"):
                model = self.trainer.lightning_module
                k = model.hparams.get("iw_samples" if self.subcommand == "test" else "val_iw_samples")
                ckpt = self.config[self.subcommand].get("ckpt_path")
                stage = "test" if self.subcommand == "test" else "val"
                print(summary.eval_summary(self.trainer, stage, ckpt, k, folder))
        self._announce_wandb()

    after_fit = after_validate = after_test = after_predict = _after_subcommand

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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # image_shape is a property of the DataModule class, not an init arg: linking an init arg
        # on instantiation makes Lightning's hparams merge fail once a logger is attached.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        # Every run gets pictures, FID (off until --fid.num_samples is set) and predict's writer.
        parser.add_lightning_class_args(ImageLogger, "images")
        parser.add_lightning_class_args(FID, "fid")
        parser.set_defaults({"fid.num_samples": 0})
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")
        parser.add_argument(
            "--ckpt_mismatch", type=Literal["error", "use_checkpoint"], default="error",
            help="fit with --ckpt_path, when the checkpoint was trained with other model, data or seed settings than "
                 "this command's: 'error' names them and stops; 'use_checkpoint' continues the run with the "
                 "checkpoint's settings (config.yaml records them).",
        )


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
        if stage == "predict":  # beside the predictions, which are what the command writes
            folders = [cb.output_dir for cb in trainer.callbacks if isinstance(cb, PredictionWriter)] or folders
        for folder in dict.fromkeys(folders):
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, folder / self.config_filename, skip_unset=False, overwrite=True)
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            for logger in wandb_loggers:
                tracking.setup_wandb_run(logger, config)


def _idle(callback: Callback, subcommand: str | None) -> bool:
    """Whether ``callback`` would do nothing in this subcommand (see ``VAEZooCLI.instantiate_trainer``)."""
    if isinstance(callback, FID):
        return callback.num_samples == 0
    if isinstance(callback, PredictionWriter):
        return subcommand != "predict"
    return False


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
    """A TQDM bar redrawn every 10 batches or every second unless the config names a bar: Lightning's
    default, Rich redrawn every batch, costs ~2.5 ms per step in a terminal, which is a third of a small
    net's step; the clock shows progress and an ETA early in slow loops (the test NLL)."""
    if trainer.get("enable_progress_bar") is False:
        return
    callbacks = trainer.get("callbacks") or []
    specs = callbacks if isinstance(callbacks, list) else [callbacks]
    if any(_is_subclass(spec, ProgressBar) for spec in specs):
        return
    bar = Namespace(class_path="vaezoo.callbacks.progress.TimedProgressBar",
                    init_args=Namespace(refresh_rate=10, refresh_seconds=1.0))
    trainer.callbacks = [*specs, bar]


def _tensorboard_available() -> bool:
    """Whether Lightning's default logger is TensorBoard's (it is CSV's without tensorboard or tensorboardX)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


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
    compat.use_registry_names(resolve_name, unknown_name_message)
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
            # SIGTERM and Ctrl+C save the latest state, print this command with --ckpt_path last, exit 143 or 130.
            trainer_defaults={"callbacks": [StopOnSignal(argv)]},
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
    """The VAEZooError behind ``err``: jsonargparse wraps errors raised while instantiating classes.

    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VAEZooError):
            return err
        if (refused := refused_arguments(err)) is not None:  # a plugin's __init__ raised ValueError
            return refused
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
