from __future__ import annotations

import io
import logging
import struct

import cv2
import numpy as np
import pytest
from conftest import PORTRAITS as PORTRAITS_DIR
from helpers import camera_jpeg
from PIL import Image as PILImage

from tuner.errors import ImageError
from tuner.files import list_images
from tuner.images import Limits, decode, encode, fit_max_side, from_array, to_array

RNG = np.random.default_rng(0)


def _rgb8(h=40, w=30):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
def test_lossless_8bit_roundtrip(tmp_path, ext):
    a = _rgb8()
    p = tmp_path / f"a{ext}"
    PILImage.fromarray(a).save(p, **({"lossless": True} if ext == ".webp" else {}))
    img = decode(p)
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (40, 30, 3) and img.bit_depth == 8
    np.testing.assert_array_equal(to_array(img), a)
    out = encode(img, tmp_path / f"b{ext}")
    np.testing.assert_array_equal(to_array(decode(out)), a)


def test_jpeg_decodes_close(tmp_path):
    a = np.full((32, 32, 3), 120, np.uint8)
    PILImage.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(to_array(decode(tmp_path / "a.jpg")).astype(int) - 120).max() <= 2


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_and_alpha_kept(tmp_path, ext):
    a = RNG.integers(0, 65536, (20, 24, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / f"a{ext}"), a[:, :, [2, 1, 0, 3]])
    img = decode(tmp_path / f"a{ext}")
    assert img.bit_depth == 16 and img.alpha is not None
    np.testing.assert_array_equal(to_array(img), a)
    back = cv2.imread(str(encode(img, tmp_path / f"b{ext}")), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[:, :, [2, 1, 0, 3]], a)


def test_16bit_grey(tmp_path):
    a = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200)
    cv2.imwrite(str(tmp_path / "g.png"), a)
    img = decode(tmp_path / "g.png")
    assert img.grey and img.bit_depth == 16
    np.testing.assert_array_equal(to_array(img), a)


def test_grey_rgba_palette_cmyk(tmp_path):
    g = RNG.integers(0, 256, (20, 20), dtype=np.uint8)
    PILImage.fromarray(g, "L").save(tmp_path / "g.png")
    img = decode(tmp_path / "g.png")
    assert img.grey and img.rgb.shape == (20, 20, 3)
    np.testing.assert_array_equal(to_array(img), g)

    rgba = RNG.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = decode(tmp_path / "a.png")
    np.testing.assert_array_equal(to_array(img), rgba)

    la = np.random.default_rng(1).integers(0, 256, (20, 20, 2), dtype=np.uint8)  # grey + alpha: read, and written back (as grey RGBA)
    PILImage.fromarray(la, "LA").save(tmp_path / "la.png")
    img = decode(tmp_path / "la.png")
    assert img.grey and img.alpha is not None
    np.testing.assert_array_equal(to_array(img), la)
    for ext in (".png", ".webp", ".tif"):
        back = np.asarray(PILImage.open(encode(img, tmp_path / f"la_out{ext}")).convert("RGBA"))
        seen = la[:, :, 1] > 0  # lossless WebP drops the colour under fully transparent pixels
        np.testing.assert_array_equal(back[seen], la[:, :, [0, 0, 0, 1]][seen])
        np.testing.assert_array_equal(back[:, :, 3], la[:, :, 1])

    pal = PILImage.fromarray(_rgb8(20, 20)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    img = decode(tmp_path / "p.png")
    assert img.alpha is not None and (img.alpha == 0).any()

    PILImage.fromarray(np.full((20, 20, 3), (200, 50, 50), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    img = decode(tmp_path / "c.jpg")
    assert not img.grey and abs(float(img.rgb[..., 0].mean()) - 200 / 255) < 0.05


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = PILImage.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "o.jpg", exif=exif, quality=100)
    img = decode(tmp_path / "o.jpg")
    assert img.size == (40, 20)
    assert img.rgb[:20].mean() > 0.9 and img.rgb[20:].mean() < 0.1  # white is now on top


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("definitely not an image"), "not a readable image"),
        (lambda p: p.write_bytes(_png_bytes(_rgb8(64, 64))[:300]), "truncated|cannot decode"),
    ],
    ids=["zero-byte", "not-image", "truncated"],
)
def test_bad_files_named_errors(tmp_path, make, match):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(ImageError, match=match) as e:
        decode(p)
    assert "bad.png" in str(e.value)


def _png_bytes(a):
    ok, buf = cv2.imencode(".png", a)
    return buf.tobytes()


def test_size_limits_and_bomb(tmp_path):
    p = tmp_path / "big.png"
    PILImage.fromarray(_rgb8(300, 300)).save(p)
    with pytest.raises(ImageError, match="decompression-bomb"):
        decode(p, limits=Limits(max_pixels=300 * 299))
    with pytest.raises(ImageError, match="larger than the maximum side"):
        decode(p, limits=Limits(max_side=299))
    small = tmp_path / "small.png"
    PILImage.fromarray(_rgb8(8, 8)).save(small)
    with pytest.raises(ImageError, match="smaller than the minimum"):
        decode(small)


def test_encode_refuses_to_drop_alpha(tmp_path):
    img = from_array(RNG.integers(0, 256, (10, 10, 4), dtype=np.uint8))
    with pytest.raises(ImageError, match="alpha"):
        encode(img, tmp_path / "x.jpg")


def test_fit_max_side_only_downscales():
    img = from_array(_rgb8(200, 100))
    assert fit_max_side(img, 50).size == (50, 25)
    assert fit_max_side(img, 500).size == (200, 100)


# ---------------------------------------------------------------- files cut inside their header (issue 7)
_camera_jpeg = camera_jpeg


def _saved(fmt: str) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(_rgb8(64, 64)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, make",
    [
        ("camera.jpg", lambda: _camera_jpeg()[:2000]),  # the first 2000 bytes of a photo: inside its EXIF
        ("portrait.jpg", lambda: (PORTRAITS_DIR / "A02_usnavy_grace_hopper.jpg").read_bytes()[:100]),
        ("cut.webp", lambda: _saved("WEBP")[:30]),
        ("cut.bmp", lambda: _saved("BMP")[:30]),
    ],
)
def test_file_cut_inside_header_is_named_error(tmp_path, name, make):
    data = make()
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ImageError, match="truncated or corrupt") as e:
        decode(p)
    assert name in str(e.value)


def test_camera_jpeg_cut_is_inside_the_header():
    whole = _camera_jpeg()
    assert whole.index(b"\xff\xda") > 2000  # start-of-scan after the cut: the cut really is in the header


# ---------------------------------------------------------------- corrupt EXIF (issue 7)
def _jpeg_with_exif(exif_payload: bytes) -> bytes:
    """A 20x40 JPEG (left half white) with ``exif_payload`` as its APP1 EXIF segment."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255
    buf = io.BytesIO()
    PILImage.fromarray(a).save(buf, "JPEG", quality=100)
    b = buf.getvalue()
    seg = b"Exif\x00\x00" + exif_payload
    return b[:2] + b"\xff\xe1" + struct.pack(">H", len(seg) + 2) + seg + b[2:]


def _ifd(entry: bytes) -> bytes:
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\x13\x37" * 20, "not a TIFF"),  # Pillow itself hides this one
        (b"II*\x00" + struct.pack("<I", 99999), "Corrupt EXIF"),  # IFD offset past the end
        (_ifd(struct.pack("<HHI", 0x0112, 2, 4) + b"ab\x00\x00"), "orientation"),  # text where a number belongs
        (_ifd(struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 9, 0)), "orientation"),  # 9 is not 1..8
    ],
    ids=["garbage", "bad-offset", "text-orientation", "orientation-9"],
)
def test_corrupt_exif_warns_and_keeps_orientation_1(tmp_path, caplog, payload, reason):
    p = tmp_path / "exif.jpg"
    p.write_bytes(_jpeg_with_exif(payload))
    with caplog.at_level(logging.WARNING, logger="tuner.images"):
        img = decode(p)
    assert img.size == (20, 40)  # as stored: not rotated
    assert img.rgb[:, :20].mean() > 0.9
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("exif.jpg" in m and "EXIF" in m and reason in m for m in msgs), msgs


def test_valid_exif_orientation_does_not_warn(tmp_path, caplog):
    p = tmp_path / "ok.jpg"
    p.write_bytes(_jpeg_with_exif(_ifd(struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 6, 0))))
    with caplog.at_level(logging.WARNING, logger="tuner.images"):
        img = decode(p)
    assert img.size == (40, 20)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_dataset_skips_an_image_too_thin_after_max_side_and_keeps_the_rest(tmp_path):
    """16x300 passes decode (limits.min_side 16) but is 13 px wide at max_side=256: skipped by name, the
    good image kept (it would otherwise reach the upscale's reflect pads)."""
    from tuner.dataset import load

    PILImage.fromarray(np.full((300, 16, 3), 128, np.uint8)).save(tmp_path / "strip.png")
    PILImage.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "good.png")
    ds = load(tmp_path, max_side=256)
    assert [it.name for it in ds.items] == ["good"]
    assert [f.name for f, _ in ds.failures] == ["strip.png"] and "below limits.min_side=16" in ds.failures[0][1]


def test_a_folder_says_what_it_leaves_out_and_a_multi_page_file_that_only_its_first_is_read(tmp_path, caplog):
    a = _rgb8(20, 20)
    PILImage.fromarray(a).save(tmp_path / "b.png")
    PILImage.fromarray(a).save(tmp_path / "a.JPG")
    (tmp_path / "c.heic").write_bytes(b"x")
    (tmp_path / "d.heic").write_bytes(b"x")
    PILImage.fromarray(a).save(tmp_path / "e.gif")
    PILImage.fromarray(a).save(tmp_path / ".h.png")  # hidden, and an image tuner reads: read, as before
    (tmp_path / ".x.heic").write_bytes(b"x")  # hidden, in another format: not worth a word
    (tmp_path / ".cache").mkdir()  # a hidden subfolder: not worth a word either
    (tmp_path / "MANIFEST.csv").write_text("name\n")  # not an image: not worth a word either
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="tuner"):
        assert [p.name for p in list_images(tmp_path)] == [".h.png", "a.JPG", "b.png"]
    assert "left out 1 .gif file(s), 2 .heic file(s), 1 subfolder(s)" in caplog.text  # not 3 .heic, not 2 subfolders
    assert ".csv" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuner"):  # listed again (the validation split): said once
        assert [p.name for p in list_images(tmp_path)] == [".h.png", "a.JPG", "b.png"]
    assert not caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuner"):
        list_images(tmp_path / "sub")
    assert not caplog.text  # nothing left out: no word

    pages = [PILImage.fromarray(a), PILImage.fromarray(255 - a)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    with caplog.at_level(logging.WARNING, logger="tuner"):
        img = decode(tmp_path / "m.tif")
    assert "m.tif holds 2 images (pages or frames); only the first is read" in caplog.text
    np.testing.assert_array_equal(to_array(img), a)
    # a later page's header broken (the first page's next-page pointer past the end): the first is still read
    raw = bytearray((tmp_path / "m.tif").read_bytes())
    assert raw[:2] == b"II"
    ifd = struct.unpack("<I", raw[4:8])[0]
    at = ifd + 2 + 12 * struct.unpack("<H", raw[ifd:ifd + 2])[0]
    raw[at:at + 4] = struct.pack("<I", len(raw) + 1000)
    (tmp_path / "broken.tif").write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuner"):
        img = decode(tmp_path / "broken.tif")
    assert "broken.tif: could not count its pages" in caplog.text and "EXIF" not in caplog.text
    np.testing.assert_array_equal(to_array(img), a)
    # a camera's two-image JPEG (MPO: the photo and a preview or depth map) is an ordinary photo: no word
    PILImage.fromarray(a).save(tmp_path / "two.jpg", format="MPO", save_all=True, append_images=[pages[1]])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuner"):
        decode(tmp_path / "two.jpg")
    assert not caplog.text
