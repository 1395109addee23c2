from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PORTRAITS, TINY_GFPGAN, tiny_state_dict

from tuner.errors import PipelineError
from tuner.facegeom import skin_mask
from tuner.faces import FaceDetector, FaceRestorer, paste_faces, paste_masks, restore_faces
from tuner.images import decode, fit_max_side, resize


@pytest.fixture(scope="module")
def face_image():
    return fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 160).rgb


@pytest.fixture(scope="module")
def restorer():
    return FaceRestorer.from_state_dict(TINY_GFPGAN, tiny_state_dict(TINY_GFPGAN, 4)["params"])


def test_detector_finds_face_with_ordered_landmarks(face_image):
    faces = FaceDetector()(face_image)
    assert len(faces) == 1
    le, re, nose, ml, mr = faces[0].landmarks
    assert le[0] < re[0] and ml[0] < mr[0]  # image-left first, as facexlib's template
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])


def test_detector_on_group_photo():
    img = decode(PORTRAITS / "A10_solvay_conference_1927_group.png").rgb
    assert len(FaceDetector()(img)) >= 25


def test_face_weight_endpoints_and_linearity(face_image, restorer):
    faces = FaceDetector()(face_image)
    restored = restore_faces(face_image, faces, restorer)
    up = resize(face_image, (face_image.shape[0] * 4, face_image.shape[1] * 4))
    assert paste_faces(up, restored, scale=4, weight=0.0) is up  # identical to face=none
    full = paste_faces(up, restored, scale=4, weight=1.0)
    half = paste_faces(up, restored, scale=4, weight=0.5)
    mask = paste_masks(up.shape[:2], restored, 4)
    assert (mask > 0.99).sum() > 1000
    assert not np.allclose(full, up)
    # weight 0.5 is exactly halfway inside the mask (single face)
    np.testing.assert_allclose(half, 0.5 * (full + up), atol=2e-6)
    # outside the paste mask nothing changes
    outside = mask == 0
    np.testing.assert_array_equal(full[outside], up[outside])


def test_restoration_is_deterministic_without_touching_the_global_rng(face_image, restorer):
    faces = FaceDetector()(face_image)
    # a fresh StyleGAN2 has zero noise strength; give the stand-in some, so this test can see noise
    sd = tiny_state_dict(TINY_GFPGAN, 4)["params"]
    sd = {k: (torch.full_like(v, 0.5) if k.endswith(".weight") and v.shape == (1,) else v) for k, v in sd.items()}
    restorer = FaceRestorer.from_state_dict(TINY_GFPGAN, sd)
    t = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        n1 = restorer.net(t, return_rgb=False, randomize_noise=True)[0]
        n2 = restorer.net(t, return_rgb=False, randomize_noise=True)[0]
    assert not torch.equal(n1, n2)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = restore_faces(face_image, faces, restorer)[0].crop
    assert torch.equal(torch.get_rng_state(), state)  # no reseed, no draw: the caller's RNG is untouched
    torch.manual_seed(2)  # a different global RNG state must not change the bytes
    b = restore_faces(face_image, faces, restorer)[0].crop
    assert a.tobytes() == b.tobytes()


def test_restoration_failure_raises(face_image):
    class Broken(torch.nn.Module):
        def forward(self, x, **kw):
            raise RuntimeError("CUDA error: device-side assert")

    faces = FaceDetector()(face_image)
    with pytest.raises(PipelineError, match="face restoration failed"):
        restore_faces(face_image, faces, FaceRestorer(Broken(), face_size=64))


def test_face_upsample_gives_larger_crop(face_image, restorer):
    faces = FaceDetector()(face_image)
    r = restore_faces(face_image, faces, restorer, crop_upsampler=lambda c: resize(c, (c.shape[0] * 4, c.shape[1] * 4)))
    assert r[0].crop.shape[0] == 256
    up = resize(face_image, (face_image.shape[0] * 4, face_image.shape[1] * 4))
    plain = restore_faces(face_image, faces, restorer)
    # both paste into the same place
    m1, m2 = paste_masks(up.shape[:2], r, 4), paste_masks(up.shape[:2], plain, 4)
    assert ((m1 > 0.5) == (m2 > 0.5)).mean() > 0.99


def test_skin_mask_covers_cheeks_not_eyes(face_image):
    faces = FaceDetector()(face_image)
    m = skin_mask(face_image, faces)
    f = faces[0]
    le = f.landmarks[0].round().astype(int)
    assert not m[le[1], le[0]]
    x0, y0, x1, y1 = (int(v) for v in f.box)
    assert 0.25 < m[y0:y1, x0:x1].mean() < 0.8  # most of the face box is skin
    assert m[: max(y0 - 3, 0)].sum() == 0 and m[:, : max(x0 - 3, 0)].sum() == 0  # nothing far outside the face


def test_restoreformer_stand_in_restores(face_image):
    arch = {"type": "RestoreFormer", "n_embed": 32, "embed_dim": 16, "ch": 32, "ch_mult": [1, 2],
            "num_res_blocks": 1, "attn_resolutions": [16], "resolution": 64, "z_channels": 16, "head_size": 2}
    restorer = FaceRestorer.from_state_dict(arch, tiny_state_dict(arch, 9)["params"])
    restorer.face_size = 64
    faces = FaceDetector()(face_image)
    crop = restore_faces(face_image, faces, restorer)[0].crop
    assert crop.shape == (64, 64, 3) and np.isfinite(crop).all()


def test_facexlib_detector_loads_its_weights(tmp_path, face_image):
    """facexlib's RetinaFace-ResNet50 path: a stand-in checkpoint loads and runs (random weights find nothing)."""
    from tuner.compat import import_basicsr_stack

    import_basicsr_stack()
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "det.pth")
    det = FaceDetector("retinaface_resnet50", resnet50_path=tmp_path / "det.pth", threshold=0.0)
    raw = det._detect_resnet50((face_image * 255).round().astype(np.uint8))
    # the checkpoint was loaded into facexlib's network and run: at threshold 0 random weights emit boxes,
    # each with 5 landmarks in image coordinates
    assert len(raw) > 0 and all(f.landmarks.shape == (5, 2) for f in raw)


class _IdentityNet(torch.nn.Module):
    """A 'restorer' that returns its input: pasting must then reproduce the upscaled face."""

    def forward(self, x, **kw):
        return x, None


@pytest.mark.parametrize("upsample", [False, True])
def test_paste_back_geometry_round_trips(face_image, upsample):
    faces = FaceDetector()(face_image)
    restorer = FaceRestorer(_IdentityNet(), face_size=512)
    ups = (lambda c: resize(c, (c.shape[0] * 4, c.shape[1] * 4))) if upsample else None
    restored = restore_faces(face_image, faces, restorer, crop_upsampler=ups)
    h, w = face_image.shape[:2]
    up = resize(face_image, (h * 4, w * 4))
    pasted = paste_faces(up, restored, scale=4, weight=1.0)
    inner = paste_masks(up.shape[:2], restored, 4) > 0.99
    errs = {(dx, dy): np.abs(np.roll(pasted, (dy, dx), axis=(0, 1)) - up)[inner].mean()
            for dx in range(-2, 3) for dy in range(-2, 3)}
    assert min(errs, key=errs.get) == (0, 0), errs  # no pixel offset in the inverse warp
    assert errs[(0, 0)] < 0.02  # what is left is resampling (bilinear warps vs Lanczos)
