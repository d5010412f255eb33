"""The errors training raises on purpose, all of the :class:`~pb_adapters.PbAdaptersError` family
(options that contradict each other raise :class:`~pb_adapters.training.cli.TrainOptionError`,
values out of range :class:`~pb_adapters.errors.ConfigError`)."""

from __future__ import annotations

from pb_adapters.errors import PbAdaptersError

__all__ = ["CheckpointError", "DataError", "DivergenceError", "OutputError"]


class DataError(PbAdaptersError, ValueError):
    """A data set could not be read, does not have the expected layout, or cannot be trained
    on (no images, a single class, an image in two splits, an image above the pixel bound)."""


class CheckpointError(PbAdaptersError, ValueError):
    """A checkpoint to resume from is missing, incomplete, corrupt or does not fit the run, or
    one could not be written."""


class DivergenceError(PbAdaptersError, FloatingPointError):
    """The training loss became non-finite or exploded; the run stopped without saving."""


class OutputError(PbAdaptersError, OSError):
    """The output folder of a run cannot be created or written."""
