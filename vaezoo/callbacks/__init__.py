"""Callbacks: pictures (``ImageLogger``), FID (``FID``), ``vaezoo predict``'s outputs (``PredictionWriter``),
the resumable latest state (``LatestCheckpoint``, used by the recipes) and the stop on SIGTERM or Ctrl+C
that saves it (``StopOnSignal``).

The CLI attaches the first three to every run, configured under ``--images.*``, ``--fid.*`` and
``--predict_writer.*``; FID is off unless ``--fid.num_samples`` is set. It attaches ``StopOnSignal``
to every run too, with no options.
"""

from vaezoo.callbacks.checkpoint import LatestCheckpoint
from vaezoo.callbacks.fid import FID
from vaezoo.callbacks.images import ImageLogger
from vaezoo.callbacks.log_media import log_figure, log_image
from vaezoo.callbacks.predict import PredictionWriter
from vaezoo.callbacks.signals import StopOnSignal

__all__ = ["FID", "ImageLogger", "LatestCheckpoint", "PredictionWriter", "StopOnSignal", "log_figure", "log_image"]
