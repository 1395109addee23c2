"""One exception base for the project; every message says what to do next."""

from __future__ import annotations


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
