"""Each private use of a library in :mod:`vaezoo.compat` against the installed versions: these fail, naming
the module to update, when jsonargparse or Lightning change underneath."""

from __future__ import annotations

import inspect

import pytest
from jsonargparse import ArgumentParser, _typehints
from lightning.pytorch.callbacks import ModelCheckpoint

from vaezoo import compat
from vaezoo.models import VAE
from vaezoo.models.beta import BetaVAE
from vaezoo.registry import resolve_name, unknown_name_message

UPDATE = "jsonargparse or Lightning changed: update vaezoo/compat.py (and the versions it names)"


class Encoder:
    """A class for jsonargparse to build, with one option."""

    def __init__(self, width: int = 4) -> None:
        self.width = width


def test_registry_names_resolve_through_jsonargparses_hook() -> None:
    signature = inspect.signature(_typehints.resolve_class_path_by_name)
    assert list(signature.parameters)[:2] == ["cls", "name"], UPDATE
    compat.use_registry_names(resolve_name, unknown_name_message)
    compat.use_registry_names(resolve_name, unknown_name_message)  # idempotent: wrapped once
    assert _typehints.resolve_class_path_by_name(VAE, "beta") == f"{BetaVAE.__module__}.BetaVAE"
    with pytest.raises(ValueError, match="unknown variant 'betaa'. Did you mean 'beta'"):
        _typehints.resolve_class_path_by_name(VAE, "betaa")
    # and jsonargparse itself goes through it: a registry name where a class is expected
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=VAE)
    assert parser.parse_args(["--model", "beta"]).model.class_path == f"{BetaVAE.__module__}.BetaVAE", UPDATE


def test_model_checkpoint_has_what_save_now_and_both_triggers_use() -> None:
    callback = ModelCheckpoint(every_n_train_steps=5)
    for name in ("_every_n_epochs", "_last_global_step_saved"):
        assert hasattr(callback, name), f"{UPDATE}: ModelCheckpoint.{name}"
    for name, params in (("_monitor_candidates", ["trainer"]), ("_save_topk_checkpoint", ["trainer", "monitor_candidates"]),
                         ("_save_last_checkpoint", ["trainer", "monitor_candidates"])):
        method = getattr(ModelCheckpoint, name, None)
        assert method is not None, f"{UPDATE}: ModelCheckpoint.{name}"
        assert list(inspect.signature(method).parameters)[1:] == params, f"{UPDATE}: ModelCheckpoint.{name}"
    compat.save_on_epochs_too(callback)
    assert callback._every_n_epochs == 1 and callback._every_n_train_steps == 5


def _message(parser: ArgumentParser, args: list[str]) -> str:
    with pytest.raises(Exception) as caught:  # noqa: PT011 (jsonargparse's ArgumentError, whatever its wrapping)
        parser.parse_args(args)
    return str(caught.value)


def test_jsonargparse_error_text_still_matches_the_patterns() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=Encoder)
    parser.add_argument("--trainer", type=dict)
    parser.add_argument("--seed", type=int, required=True)

    message = _message(parser, ["--seed", "0", "--net", f"{__name__}.Encoder", "--net.widht", "3"])
    assert (match := compat.OPTION.search(message)) and match[1] == "widht", (UPDATE, message)
    assert f"{__name__}.Encoder" in compat.CLASS_PATH.findall(message), (UPDATE, message)
    joined = " ".join(line.strip() for line in message.splitlines())  # as vaezoo.parser.explain joins them
    assert compat.PARSER_KEY.search(joined) and compat.PROBLEM_CLASS.search(joined), (UPDATE, message)

    message = _message(parser, ["--net", f"{__name__}.Encoder"])
    assert (match := compat.REQUIRED.search(message.strip())) and "seed" in match[1], (UPDATE, message)

    message = _message(parser, ["--seed", "0", "--sed", "1"])
    assert (match := compat.UNRECOGNIZED.search(message)) and match[1] == "--sed", (UPDATE, message)

    subcommands = ArgumentParser(exit_on_error=False)
    fit = ArgumentParser(exit_on_error=False)
    fit.add_argument("--seed", type=int, default=0)
    subcommands.add_subcommands().add_subcommand("fit", fit)
    try:
        subcommands.parse_object({"fit": {"sed": 1}})
        message = ""
    except Exception as err:  # noqa: BLE001
        message = str(err)
    assert (match := compat.SUBCOMMAND_OPTION.search(message)) and match[1] == "sed", (UPDATE, message)


def test_lazy_instance_parts_are_readable() -> None:
    from jsonargparse import lazy_instance

    from vaezoo.likelihoods import Gaussian

    assert compat.lazy_instance_parts(lazy_instance(Gaussian, sigma=0.3)) == (Gaussian, {"sigma": 0.3}), UPDATE
    assert compat.lazy_instance_parts(Gaussian(sigma=0.3)) is None


def test_the_logging_step_is_the_epoch_loops_batch_count() -> None:
    """compat 6: steps_per_call > 1 reads and advances the count Lightning logs at (tests/test_steps_per_call.py
    checks the logged rows end to end)."""
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert compat.logging_step(trainer) == 0, f"{UPDATE}: fit_loop.epoch_loop._batches_that_stepped"
    compat.count_batches(trainer, 3)
    assert compat.logging_step(trainer) == 3
    assert trainer.fit_loop.epoch_loop.on_save_checkpoint()["_batches_that_stepped"] == 3, f"{UPDATE}: its checkpoint key"
    assert compat.every_n_train_steps(ModelCheckpoint(every_n_train_steps=7)) == 7, f"{UPDATE}: _every_n_train_steps"
    assert compat.every_n_train_steps(ModelCheckpoint()) == 0


@pytest.mark.parametrize("automatic", [True, False])
def test_a_checkpoint_holds_both_step_counts_and_its_epoch_progress(tmp_path, automatic: bool) -> None:
    """compat 7: a checkpoint saved 3 steps into an epoch, by automatic or manual optimisation: both step counts are
    there, ``global_step`` reads the one of the kind in use, and ``mid_epoch`` sees where it stopped."""
    import lightning as L
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Model(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = automatic

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            if self.automatic_optimization:
                return super().training_step(batch, batch_idx)
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(self.step(batch))
            optimizer.step()
            return None

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
            if batch_idx == 2 and not self.trainer.ckpt_path:
                self.trainer.save_checkpoint(tmp_path / "mid.ckpt")

    trainer = L.Trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    model = Model()
    trainer.fit(model)
    compat.sync_live_step_counts(trainer)  # in the trainer too: global_step stays when the kind changes after a fit
    model.automatic_optimization = not automatic
    assert trainer.global_step == 5, f"{UPDATE}: the fit loop's optimiser progress"
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert compat.mid_epoch(checkpoint) == (0, 3), f"{UPDATE}: epoch_loop.batch_progress"
    fit_loop = checkpoint["loops"]["fit_loop"]
    assert compat._AUTOMATIC in fit_loop and compat._MANUAL in fit_loop, f"{UPDATE}: the optimiser progress keys"
    compat.sync_step_counts(checkpoint)
    assert fit_loop[compat._AUTOMATIC]["optimizer"]["step"]["total"]["completed"] == 3, UPDATE
    assert fit_loop[compat._MANUAL]["total"]["completed"] == 3, UPDATE
    # Resumed by the other kind, global_step starts where the run stopped.
    other = Model()
    other.automatic_optimization = not automatic
    resumed = L.Trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    torch.save(checkpoint, tmp_path / "synced.ckpt")
    resumed.fit(other, ckpt_path=tmp_path / "synced.ckpt")
    assert resumed.global_step == 5, UPDATE


def test_a_step_past_lightnings_wrappers_is_counted() -> None:
    """compat 8: ``counted_step`` steps the torch optimiser and counts it in ``global_step`` as
    ``LightningOptimizer.step`` does under manual optimisation."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Model(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            optimizer = self.optimizers()
            optimizer.zero_grad()
            before = self.layer.weight.detach().clone()
            self.step(batch).backward()
            compat.counted_step(optimizer)
            assert not self.layer.weight.detach().equal(before)  # it stepped
            return None

    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Model())
    assert trainer.global_step == 4, f"{UPDATE}: LightningOptimizer._on_before_step / _on_after_step"
