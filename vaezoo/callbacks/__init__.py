"""Callbacks: pictures (``ImageLogger``), FID (``FID``), ``vaezoo predict``'s outputs (``PredictionWriter``)
and the resumable latest state (``LatestCheckpoint``, used by the recipes).

The CLI attaches all three to every run, configured under ``--images.*``, ``--fid.*`` and
``--predict_writer.*``; FID is off unless ``--fid.num_samples`` is set.
"""

from vaezoo.callbacks.checkpoint import LatestCheckpoint
from vaezoo.callbacks.fid import FID
from vaezoo.callbacks.images import ImageLogger
from vaezoo.callbacks.log_media import log_figure, log_image
from vaezoo.callbacks.predict import PredictionWriter

__all__ = ["FID", "ImageLogger", "LatestCheckpoint", "PredictionWriter", "log_figure", "log_image"]
