"""The CLI's default progress bar shows progress and an ETA early in slow loops (the test NLL)."""

from __future__ import annotations

import re
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaezoo.callbacks.progress import TimedProgressBar
from vaezoo.cli import _default_progress_bar
from jsonargparse import Namespace


class _Timed(L.LightningModule):
    """A test loop whose batches take ``seconds`` each, as the importance-sampled NLL's do."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.seconds = seconds

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        time.sleep(self.seconds)
        self.log("test/value", self.layer(batch[0]).mean())


def _test_output(bar: TQDMProgressBar, batches: int, seconds: float, capsys: pytest.CaptureFixture) -> str:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar])
    trainer.test(_Timed(seconds), DataLoader(TensorDataset(torch.zeros(batches, 2)), batch_size=1), verbose=False)
    return capsys.readouterr().out


def _drawn_counts(out: str, total: int) -> list[int]:
    return [int(n) for n in re.findall(rf"(\d+)/{total} \[", out)]


def test_slow_test_batches_show_progress_and_an_eta_before_the_tenth(capsys) -> None:
    # Lightning's bar at the CLI's refresh_rate 10 draws nothing between 0/4 and 4/4: with test batches
    # of seconds each (k = 1,000 importance samples) the user saw neither progress nor an ETA.
    out = _test_output(TimedProgressBar(refresh_rate=10, refresh_seconds=0.1), 4, 0.3, capsys)
    assert {1, 2, 3} <= set(_drawn_counts(out, 4)), out
    first = re.search(r"1/4 \[(\S+)<(\S+),", out)
    assert first and re.fullmatch(r"\d\d:\d\d", first.group(2)), out  # an ETA, not "?"


def test_fast_batches_are_still_drawn_every_refresh_rate(capsys) -> None:
    out = _test_output(TimedProgressBar(refresh_rate=10, refresh_seconds=60.0), 25, 0.0, capsys)
    assert set(_drawn_counts(out, 25)) - {0} == {10, 20, 25}, out


def test_the_cli_default_bar_is_the_timed_one() -> None:
    trainer = Namespace(callbacks=None, enable_progress_bar=None)
    _default_progress_bar(trainer)
    (bar,) = trainer.callbacks
    assert bar.class_path == "vaezoo.callbacks.progress.TimedProgressBar" and bar.init_args.refresh_rate == 10
