"""The upscaler must match RealESRGANer (realesrgan 0.3.0) within 1 LSB on 8-bit output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_RRDB, TINY_SRVGG, tiny_state_dict

from tuner.errors import PipelineError
from tuner.images import quantize
from tuner.upscale import (
    UpscaleOptions,
    Upscaler,
    build_network,
    interpolate,
    network_bytes_per_px,
    upscale_memory,
)


def _upstream(arch, sd, img_u8_rgb, *, tile, tile_pad=10, pre_pad=10, tmp_path, outscale=None):
    from tuner.compat import import_basicsr_stack

    import_basicsr_stack()
    from realesrgan import RealESRGANer

    path = tmp_path / "w.pth"
    torch.save({"params": sd}, path)
    net = build_network(arch)
    up = RealESRGANer(scale=arch["scale"], model_path=str(path), model=net, tile=tile, tile_pad=tile_pad,
                      pre_pad=pre_pad, half=False, device=torch.device("cpu"))
    out, _ = up.enhance(img_u8_rgb[:, :, ::-1].copy(), outscale=outscale)
    return out[:, :, ::-1]


@pytest.mark.parametrize("arch", [TINY_RRDB, {**TINY_RRDB, "scale": 2}, {**TINY_SRVGG, "scale": 4}])
@pytest.mark.parametrize("tile", [0, 16])
def test_matches_realesrganer(arch, tile, portrait_small, tmp_path):
    sd = tiny_state_dict(arch, 7)["params"]
    u8 = quantize(portrait_small[:45, :37], 8)  # odd sizes exercise the mod/pre pads
    ref = _upstream(arch, sd, u8, tile=tile, tmp_path=tmp_path)
    ours = Upscaler.from_state_dict(arch, sd)(u8.astype(np.float32) / 255.0, UpscaleOptions(tile=tile))
    ours = quantize(ours, 8)
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_outscale_is_a_lanczos_resize_of_the_x4_output(portrait_small, tmp_path):
    """outscale resizes the model-scale output as RealESRGANer does: cv2 INTER_LANCZOS4 to
    (int(w * outscale), int(h * outscale)) of the input size; tuner resizes the float result (then
    clips), RealESRGANer its 8-bit one, so they agree to 1 LSB."""
    sd = tiny_state_dict(TINY_SRVGG, 1)["params"]
    up = Upscaler.from_state_dict(TINY_SRVGG, sd)
    x4 = up(portrait_small, UpscaleOptions())
    out = up(portrait_small, UpscaleOptions(outscale=2.5))
    h, w = portrait_small.shape[:2]  # 96 x 64: not square, so a swapped (w, h) shows
    assert out.shape == (int(h * 2.5), int(w * 2.5), 3)
    want = np.clip(cv2.resize(x4, (int(w * 2.5), int(h * 2.5)), interpolation=cv2.INTER_LANCZOS4), 0, 1)
    assert np.array_equal(out, want)
    u8 = quantize(portrait_small, 8)
    ref = _upstream({**TINY_SRVGG, "scale": 4}, sd, u8, tile=0, tmp_path=tmp_path, outscale=2.5)
    ours = quantize(up(u8.astype(np.float32) / 255.0, UpscaleOptions(outscale=2.5)), 8)
    assert ours.shape == ref.shape and np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_dni_arithmetic():
    a = tiny_state_dict(TINY_SRVGG, 1)["params"]
    b = tiny_state_dict(TINY_SRVGG, 2)["params"]
    mixed = interpolate([a, b], [0.3, 0.7])
    for k in a:
        torch.testing.assert_close(mixed[k], 0.3 * a[k] + 0.7 * b[k])
    assert all(torch.equal(interpolate([a, b], [1.0, 0.0])[k], a[k]) for k in a)


def test_failing_tile_raises(portrait_small):
    class Boom(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] < 40:  # the last, narrower tile
                raise RuntimeError("out of memory")
            return torch.nn.functional.interpolate(x, scale_factor=4)

    up = Upscaler(Boom(), scale=4)
    with pytest.raises(PipelineError, match="tile"):
        up(portrait_small, UpscaleOptions(tile=32, tile_pad=2))


def test_overlap_feathering_removes_seams(portrait_small):
    up = Upscaler.from_state_dict(TINY_RRDB, tiny_state_dict(TINY_RRDB, 5)["params"])
    whole = up(portrait_small, UpscaleOptions(tile=0))
    hard = up(portrait_small, UpscaleOptions(tile=24, tile_pad=0))
    soft = up(portrait_small, UpscaleOptions(tile=24, tile_pad=0, overlap=6))
    err_hard = np.abs(hard - whole).mean()
    err_soft = np.abs(soft - whole).mean()
    assert err_soft < 0.7 * err_hard


def test_memory_estimate_follows_tile_and_sizes(portrait_small):
    """upscale_memory is arithmetic on sizes; its output size must be the real one (the guards rely on it)."""
    h, w = portrait_small.shape[:2]
    up = Upscaler.from_state_dict(TINY_SRVGG, tiny_state_dict(TINY_SRVGG, 1)["params"])
    for opts in (UpscaleOptions(), UpscaleOptions(tile=32), UpscaleOptions(outscale=2.5)):
        out = up(portrait_small, opts)
        assert upscale_memory(TINY_SRVGG, (h, w), opts).out_pixels == out.shape[0] * out.shape[1], opts
    big = (2000, 1500)
    whole = upscale_memory(TINY_RRDB, big, UpscaleOptions())
    tiled = upscale_memory(TINY_RRDB, big, UpscaleOptions(tile=256))
    assert whole.tiles_out == 0 and tiled.tiles_out == 3 * 4 * (2010 * 4) * (1510 * 4)
    assert tiled.network < whole.network / 20  # 276^2 px of context-padded tile vs 2010 x 1510
    assert tiled.tail == whole.tail  # the full-size output exists either way
    # per input pixel: RRDBNet 4 x num_feat x s^2 floats, SRVGGNetCompact 3.25 x max(num_feat, 3 s^2)
    assert network_bytes_per_px(TINY_RRDB) == 4 * 4.0 * 8 * 16
    assert network_bytes_per_px({"type": "SRVGGNetCompact", "num_feat": 64, "upscale": 4}) == 4 * 3.25 * 64
    assert network_bytes_per_px({"type": "SRVGGNetCompact", "num_feat": 64, "upscale": 4}, half=True) == 2 * 3.25 * 64
