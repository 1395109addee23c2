"""Import shims for the model packages, kept in one place.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, which newer
torchvision renamed to ``_functional_tensor``.  Every import of basicsr, realesrgan,
gfpgan or facexlib in tuner goes through :func:`import_basicsr_stack` first.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def import_basicsr_stack() -> None:
    """Install the ``functional_tensor`` alias (idempotent) so basicsr imports cleanly."""
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sys.modules[name] = importlib.import_module("torchvision.transforms._functional_tensor")
