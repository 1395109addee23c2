"""Helpers shared by several test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image as PILImage

PORTRAITS = Path(__file__).resolve().parent.parent / "datasets" / "portraits"


def camera_jpeg() -> bytes:
    """A bundled portrait re-saved as a camera would: a ~6 KB EXIF block before the image data."""
    with PILImage.open(PORTRAITS / "A13_flickr_ccby_05.jpg") as im:
        exif = im.getexif()
        exif[0x010F], exif[0x0110], exif[0x010E] = "Camera maker", "Camera model", "x" * 6000
        buf = io.BytesIO()
        im.save(buf, "JPEG", exif=exif, quality=90)
    return buf.getvalue()
