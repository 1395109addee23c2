"""tuner: measured, repeatable tuning of Real-ESRGAN + GFPGAN portrait upscaling.

Data flows one way: dataset -> pipeline (upscale -> faces -> blend) -> metrics ->
objective -> study -> preset / report.  Images inside the package follow the single
convention documented in :mod:`tuner.images`.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Bumped whenever a change to the pipeline can change output pixels; part of every
# stage-cache key and of every exported preset.  2: the texture policy lands each judged face of
# a group photo on its own target, and refits its grain where clipping takes some back.
PIPELINE_VERSION = "2"
