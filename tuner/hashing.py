"""Content hashes and cache keys (no torch): shared by the data layer and the stage cache.

``array_hash`` names an array by its dtype, shape and bytes; ``make_key`` names a stage
output by everything that determines it (sha256 of a canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def make_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def array_hash(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((a.dtype, a.shape)).encode())
    h.update(np.ascontiguousarray(a).data.cast("B"))  # the bytes, without a copy
    return h.hexdigest()
