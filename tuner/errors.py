"""One exception base for the project; every message says what to do next."""

from __future__ import annotations

# exit codes of every command: 0 = all done; 1 = error; 3 = done, but some inputs were bad and skipped
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3


class TunerError(Exception):
    """Base class of every error tuner raises on purpose."""


class ConfigError(TunerError):
    """The composed configuration is invalid (unknown key, value out of range, missing file)."""


class ImageError(TunerError):
    """An input image cannot be used; the message names the file."""


class WeightsError(TunerError):
    """A model file is missing, corrupt, refused (sha256) or unsafe to load."""


class PipelineError(TunerError):
    """A pipeline stage (upscale tile, face restoration) failed."""


class MetricError(TunerError):
    """A metric is unknown or cannot run here (weights, missing faces)."""


class PresetError(TunerError):
    """A preset file does not match the schema."""
