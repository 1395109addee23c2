"""Where tuner's own files are: the configs and the bundled portraits.

They ship inside the package (``pip install .`` and wheels put ``conf/`` and
``datasets/portraits/`` under ``tuner/``; see pyproject.toml), and in a source checkout or
an editable install they are the repository's top-level ``conf/`` and ``datasets/``.  So
``tuner`` works from any directory, installed either way.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

_PKG = Path(__file__).resolve().parent


def _first(*candidates: Path, marker: str) -> Path:
    for c in candidates:
        if (c / marker).exists():
            return c
    raise ConfigError(f"tuner's {marker} is missing from {[str(c) for c in candidates]}: the installation is "
                      "incomplete; reinstall tuner (pip install .)")


def conf_dir() -> Path:
    """The folder of tuner's Hydra configs (``tune.yaml``, ``model/``, ...)."""
    return _first(_PKG / "conf", _PKG.parent / "conf", marker="tune.yaml")


def bundled_portraits() -> Path:
    """The bundled portrait set (``MANIFEST.csv``, ``ATTRIBUTION.md`` and the images)."""
    return _first(_PKG / "datasets" / "portraits", _PKG.parent / "datasets" / "portraits", marker="MANIFEST.csv")
