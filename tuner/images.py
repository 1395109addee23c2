"""Decode, validate and encode images.

**The one in-memory convention of tuner** (everything above this module relies on it):

- ``Image.rgb``: RGB, float32, shape (H, W, 3), values in [0, 1];
- ``Image.alpha``: None, or float32 (H, W) in [0, 1] (1 = opaque);
- ``Image.bit_depth``: 8 or 16, the depth the source had and the output keeps;
- ``Image.grey``: the source was single-channel; it is written back as grey.

Conversion to BGR, uint8/uint16, CHW tensors and so on happens only at the edges
(this module's ``decode``/``encode`` and the model adapters).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import ImageError
from .files import SUPPORTED_SUFFIXES, atomic_write_bytes

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Limits:
    """Input limits; a violation is an :class:`ImageError` naming the file."""

    min_side: int = 16
    max_side: int = 16384
    max_pixels: int = 178_956_970  # Pillow's own decompression-bomb threshold

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_side < self.min_side or self.max_pixels < 1:
            raise ImageError(f"invalid image limits {self}: need 1 <= min_side <= max_side, max_pixels >= 1")


@dataclass(frozen=True)
class Image:
    rgb: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    grey: bool = False
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    def with_rgb(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Image:
        return replace(self, rgb=rgb, alpha=alpha)


def from_array(arr: np.ndarray, *, path: Path | None = None) -> Image:
    """Build an :class:`Image` from an RGB/RGBA/grey uint8, uint16 or float [0,1] array."""
    if arr.dtype == np.uint8:
        depth, f = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        depth, f = 16, arr.astype(np.float32) / 65535.0
    elif arr.dtype in (np.float32, np.float64):
        depth, f = 8, np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageError(f"{path or 'array'}: unsupported dtype {arr.dtype}")
    grey = False
    alpha = None
    if f.ndim == 2:
        grey, f = True, np.repeat(f[:, :, None], 3, axis=2)
    elif f.ndim == 3 and f.shape[2] == 1:
        grey, f = True, np.repeat(f, 3, axis=2)
    elif f.ndim == 3 and f.shape[2] == 4:
        alpha, f = np.ascontiguousarray(f[:, :, 3]), f[:, :, :3]
    elif f.ndim == 3 and f.shape[2] == 2:  # grey + alpha
        alpha, f, grey = np.ascontiguousarray(f[:, :, 1]), np.repeat(f[:, :, :1], 3, axis=2), True
    elif not (f.ndim == 3 and f.shape[2] == 3):
        raise ImageError(f"{path or 'array'}: unsupported shape {arr.shape}")
    return Image(rgb=np.ascontiguousarray(f, dtype=np.float32), alpha=alpha, bit_depth=depth, grey=grey, path=path)


def decode(path: str | Path, *, limits: Limits = Limits()) -> Image:
    """Read ``path`` into the internal convention, or raise :class:`ImageError` naming it.

    Handles PNG, JPEG, WebP, TIFF and BMP; 8 and 16 bit; grey, RGBA, CMYK and palette
    images; and EXIF orientation.  Rejects zero-byte, truncated (also inside the header)
    and non-image files, decompression bombs (``limits.max_pixels``) and images outside
    the side limits.  A corrupt EXIF block is logged as a warning and read as orientation 1.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read the file ({e}); check its permissions") from e
    if not data:
        raise ImageError(f"{p}: file is empty (0 bytes)")
    w, h, fmt, mode, orientation = _probe(p)
    _check_size(p, w, h, limits)
    arr: np.ndarray | None = None
    if fmt in ("PNG", "TIFF"):
        # Pillow flattens 16-bit colour to 8 bit; OpenCV keeps it.
        try:
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            raise ImageError(f"{p}: cannot decode ({fmt}): {e} (truncated or corrupt file?)") from e
        if raw is not None and raw.dtype == np.uint16:
            arr = _apply_orientation(_bgr_to_rgb(raw), orientation)
    if arr is None:
        arr = _decode_pillow(p, mode, limits, orientation)
    image = from_array(arr, path=p)
    _check_size(p, image.size[1], image.size[0], limits)
    return image


def _probe(p: Path) -> tuple[int, int, str | None, str, int]:
    """(width, height, format, mode, EXIF orientation) from the header, without decoding pixels."""
    try:
        with _exif_warnings_logged_not_shown(), PILImage.open(p) as probe:
            w, h, fmt, mode, orientation = *probe.size, probe.format, probe.mode, _exif_orientation(p, probe)
            _warn_if_several(p, probe)  # last: counting pages moves the file to them
            return w, h, fmt, mode, orientation
    except UnidentifiedImageError as e:
        raise ImageError(f"{p}: not a readable image ({e.__class__.__name__})") from e
    except PILImage.DecompressionBombError as e:
        raise ImageError(f"{p}: rejected as a decompression bomb ({e})") from e
    except MemoryError:
        raise  # not a corrupt file: the caller reports it as running out of memory
    except Exception as e:  # noqa: BLE001 - Pillow's parsers raise OSError, SyntaxError, EOFError, struct.error, ...
        raise ImageError(
            f"{p}: cannot read the image header ({e.__class__.__name__}: {e}); truncated or corrupt file?"
        ) from e


def _warn_if_several(p: Path, probe: PILImage.Image) -> None:
    """Log that only the first image of a multi-page TIFF or an animated WebP is read (not of an MPO
    JPEG, whose second image is a camera's depth map or preview).  Counting walks every page header, so
    a damaged later page is logged too, and the first image still read."""
    if probe.format == "MPO":
        return
    try:
        frames = int(getattr(probe, "n_frames", 1))
    except Exception as e:  # noqa: BLE001 - any parser failure past the first page: the first is still read
        log.warning("%s: could not count its pages (%s); only the first is read", p, e)
        return
    if frames > 1:
        log.warning("%s holds %d images (pages or frames); only the first is read", p, frames)


def _check_size(p: Path, w: int, h: int, limits: Limits) -> None:
    if w * h > limits.max_pixels:
        raise ImageError(
            f"{p}: {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels} "
            "(decompression-bomb guard; raise limits.max_pixels if this image is genuine)"
        )
    if min(w, h) < limits.min_side:
        raise ImageError(f"{p}: {w}x{h} is smaller than the minimum side of {limits.min_side} px")
    if max(w, h) > limits.max_side:
        raise ImageError(f"{p}: {w}x{h} is larger than the maximum side of {limits.max_side} px")


# EXIF orientation -> the Pillow transpose that displays the image upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}


def _decode_pillow(p: Path, mode: str, limits: Limits, orientation: int) -> np.ndarray:
    old = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        with _exif_warnings_logged_not_shown(), PILImage.open(p) as opened:
            opened.load()
            im: PILImage.Image = opened.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else opened
            if im.mode == "P" or im.mode == "PA":
                im = im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.int64)
                if a.max() > 255:
                    return np.clip(a, 0, 65535).astype(np.uint16)
                return a.astype(np.uint8)
            if im.mode in ("1", "L"):
                return np.asarray(im.convert("L"))
            if im.mode == "LA":
                return np.asarray(im)
            if im.mode == "RGBA":
                return np.asarray(im)
            if im.mode == "F":
                raise ImageError(f"{p}: floating-point images are not supported; convert to 8 or 16 bit")
            return np.asarray(im.convert("RGB"))  # RGB, CMYK, YCbCr, LAB, ...
    except ImageError:
        raise
    except PILImage.DecompressionBombError as e:
        raise ImageError(f"{p}: rejected as a decompression bomb ({e})") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure on this file names it (OSError, SyntaxError, ...)
        raise ImageError(f"{p}: cannot decode ({mode}): {e} (truncated or corrupt file?)") from e
    finally:
        PILImage.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def _exif_warnings_logged_not_shown() -> Iterator[None]:
    """Silence Pillow's EXIF UserWarnings: :func:`_exif_orientation` logs them once, naming the file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?i).*exif", category=UserWarning)
        yield


def _exif_orientation(p: Path, im: PILImage.Image) -> int:
    """EXIF orientation 1..8 of an opened image; 1 (as stored) when it has none.

    Pillow reads a damaged EXIF block as empty, sometimes with a UserWarning and sometimes
    silently; here a damaged block is logged as a warning naming the file and the reason,
    and the image is used as stored (orientation 1) rather than turned on a guess.
    """
    problems: list[str] = []
    value: object = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = im.info.get("exif")
            if isinstance(raw, bytes) and raw:
                # Image.open swallows a bad TIFF header inside the block; parsing it again does not
                PILImage.Exif().load(raw)
            value = im.getexif().get(0x0112, 1)
        except Exception as e:  # noqa: BLE001 - any parser failure on a damaged block is reported below
            problems.append(f"{e.__class__.__name__}: {e}")
    problems += [str(w.message).strip() for w in caught]
    if not problems and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8):
        problems.append(f"orientation value {value!r} is not 1..8")
    if problems or not isinstance(value, int):
        log.warning("%s: corrupt EXIF block (%s); ignoring it and using the image as stored (orientation 1)",
                    p, "; ".join(dict.fromkeys(problems)))
        return 1
    return value


def _apply_orientation(a: np.ndarray, o: int) -> np.ndarray:
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.swapaxes(x, 0, 1)[:, ::-1],
        7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
        8: lambda x: np.swapaxes(x, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[o](a)) if o in ops else a


def _bgr_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 3:
        return a[:, :, ::-1].copy()
    if a.ndim == 3 and a.shape[2] == 4:
        return a[:, :, [2, 1, 0, 3]].copy()
    return a


def quantize(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float [0,1] to uint8/uint16 exactly as RealESRGANer does: ``round(x * max)``."""
    if bit_depth == 16:
        return (np.clip(x, 0.0, 1.0) * 65535.0).round().astype(np.uint16)
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_array(image: Image) -> np.ndarray:
    """The image as the integer array it will be written as (RGB[A] or grey[+A])."""
    rgb = image.rgb
    if image.grey:
        # ITU-R 601 luma, as cv2.COLOR_RGB2GRAY uses.
        chans = [rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114]
    else:
        chans = [rgb[:, :, i] for i in range(3)]
    if image.alpha is not None:
        chans.append(image.alpha)
    out = quantize(np.stack(chans, axis=2), image.bit_depth)
    return out[:, :, 0] if out.shape[2] == 1 else out


def encode(image: Image, path: str | Path) -> Path:
    """Write ``image`` to ``path`` atomically, keeping bit depth and alpha where the format allows.

    PNG and TIFF keep 16 bit and alpha; WebP keeps alpha (8 bit); JPEG and BMP are 8 bit.
    Asking for a format that would silently drop alpha or bit depth raises instead.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in SUPPORTED_SUFFIXES:
        raise ImageError(f"{p}: cannot write '{ext}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if image.alpha is not None and ext in (".jpg", ".jpeg", ".bmp"):
        raise ImageError(f"{p}: {ext} cannot hold the alpha channel of this image; write .png, .webp or .tif")
    depth = image.bit_depth if ext in (".png", ".tif", ".tiff") else 8
    arr = to_array(replace(image, bit_depth=depth))
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha: OpenCV writes 1, 3 or 4 channels, so as grey RGBA
        arr = arr[:, :, [0, 0, 0, 1]]
    if arr.ndim == 3:
        arr = _bgr_to_rgb(arr)  # RGB(A) -> BGR(A) for OpenCV; same swap both ways
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # >100 selects lossless
    why = "too large for the format?"
    try:
        ok, buf = cv2.imencode(ext, arr, params)
    except cv2.error as e:
        ok, why = False, str(e).strip()
    if not ok:
        raise ImageError(f"{p}: OpenCV could not encode this {arr.shape[1]}x{arr.shape[0]} image as {ext} ({why})"
                         + ("; try output_format=png" if ext != ".png" else ""))
    atomic_write_bytes(p, buf.tobytes())
    return p


def prefilter(rgb: np.ndarray, strength: float) -> np.ndarray:
    """A classical denoise of the input before the network (``params.prefilter``, the denoise
    lever that needs no DNI partner weights): OpenCV's non-local means on the 8-bit image, filter
    strength h = 3 + 12 * ``strength`` grey levels for luma and chroma (7 px patches, 21 px search).
    ``strength`` 0 returns ``rgb`` itself."""
    if strength <= 0:
        return rgb
    u8 = cv2.cvtColor((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    h = 3.0 + 12.0 * float(strength)
    out = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 7, 21)
    return (cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)


def resize(rgb: np.ndarray, size: tuple[int, int], *, interpolation: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    """Resize an (H, W[, C]) float image to ``size`` = (height, width), clipped to [0, 1]."""
    h, w = size
    out = cv2.resize(rgb, (w, h), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def reference_upscale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """R: Lanczos (cv2.INTER_LANCZOS4) upscale of the input to ``size`` = (H, W), clipped to [0, 1]."""
    return resize(rgb, size, interpolation=cv2.INTER_LANCZOS4)


def downscale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic downscale of an (H, W, C) float image to ``size`` = (H, W), clipped to
    [0, 1]: PIL's BICUBIC (a = -0.5, the kernel stretched by the scale; MATLAB's ``imresize``) on
    each channel in float (mode "F", no 8-bit rounding).  The clean pairs' LR and LR-consistency's
    output-to-input downscale are both this."""
    chans = [np.asarray(PILImage.fromarray(np.ascontiguousarray(rgb[..., c], dtype=np.float32), mode="F")
                        .resize((size[1], size[0]), PILImage.Resampling.BICUBIC, reducing_gap=None))
             for c in range(rgb.shape[2])]
    return np.clip(np.stack(chans, axis=2), 0, 1).astype(np.float32)


def fit_max_side(image: Image, max_side: int | None, limits: Limits | None = None, name: object = "",
                 setting: str = "max_side") -> Image:
    """Downscale (INTER_AREA) so the long side is at most ``max_side``; never upscales.  With ``limits``, a downscaled
    result under ``limits.min_side`` is refused (ImageError naming ``name`` and ``setting``; decode checked the rest)."""
    h, w = image.size
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    if limits is not None and min(size) < limits.min_side:
        raise ImageError(f"{name}: {size[1]}x{size[0]} after {setting}={max_side} is below limits.min_side="
                         f"{limits.min_side} (raise {setting})")
    alpha = None if image.alpha is None else resize(image.alpha, size, interpolation=cv2.INTER_AREA)
    return replace(image, rgb=resize(image.rgb, size, interpolation=cv2.INTER_AREA), alpha=alpha)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma Y in [0, 1] of an RGB float image (what every texture metric reads)."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)
