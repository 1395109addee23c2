"""Artifact and fidelity metrics: tile seams, paste-back halo, edge overshoot, colour shift, LR-consistency."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .context import Context


def seam(ctx: Context) -> float:
    """Tile-seam score (lower better, 1.0 = seamless): mean |1-px step| across the known tile
    grid divided by the same measure off the grid.

    The grid lies every ``tile * scale`` output pixels (RealESRGANer hard-pastes tiles
    there).  Untiled outputs have no grid: NaN with the note "no tile grid".
    """
    return seam_score(ctx.y_out, int(round(ctx.tile * ctx.ref.scale)), notes=ctx.notes)


def seam_score(y: np.ndarray, period: int, *, notes: dict[str, str] | None = None) -> float:
    """Seam score of luminance ``y`` for a grid of ``period`` px (see :func:`seam`)."""
    h, w = y.shape
    if period <= 0 or (period >= w and period >= h):
        if notes is not None:
            notes["seam"] = "no tile grid"
        return math.nan
    dx = np.abs(np.diff(y, axis=1))  # dx[:, i] = step between columns i and i+1
    dy = np.abs(np.diff(y, axis=0))
    on_x = np.zeros(w - 1, bool)
    on_x[np.arange(period, w, period) - 1] = True
    on_y = np.zeros(h - 1, bool)
    on_y[np.arange(period, h, period) - 1] = True
    on = np.concatenate([dx[:, on_x].ravel(), dy[on_y].ravel()])
    off = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y].ravel()])
    return float(on.mean() / max(off.mean(), 1e-8))


def _grad(y: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))


def paste_halo(ctx: Context) -> float:
    """Paste-back halo (lower better, 1.0 = invisible): gradient step on the ring of the face paste
    mask, output versus R, relative to the same ratio on a control band around the ring.

    ring = 0.05 < mask < 0.95; control = pixels within 3*scale px of the ring but outside it.
    A visible paste edge raises the output's gradients on the ring alone.  Each pasted face
    (a connected part of the mask) is judged on its own and the image takes the worst, so one
    hard paste on a group photograph is not diluted by the others' clean rings.  NaN ("no pasted
    face") when no face was pasted.
    """
    m = ctx.face_mask
    if m is None or not (m > 0.05).any():
        ctx.notes["paste_halo"] = "no pasted face"
        return math.nan
    k = max(int(3 * ctx.ref.scale), 3)
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    go, gr = _grad(ctx.y_out), _grad(ctx.ref.y_ref)
    n, parts, stats, _ = cv2.connectedComponentsWithStats((m > 0.05).astype(np.uint8))
    worst = -math.inf
    for c in range(1, n):
        x, y, w, h = (int(v) for v in stats[c, :4])
        box = (slice(max(y - k, 0), y + h + k), slice(max(x - k, 0), x + w + k))
        any_ring = (m[box] > 0.05) & (m[box] < 0.95)
        ring = any_ring & (parts[box] == c)
        if ring.sum() < 10:
            continue
        near = cv2.dilate(ring.astype(np.uint8), kernel).astype(bool) & ~any_ring
        o, r = go[box], gr[box]
        ratio_ring = o[ring].mean() / max(r[ring].mean(), 1e-6)
        ratio_near = o[near].mean() / max(r[near].mean(), 1e-6)
        worst = max(worst, float(ratio_ring / max(ratio_near, 1e-6)))
    if worst == -math.inf:
        ctx.notes["paste_halo"] = "paste mask has no soft ring"
        return math.nan
    return worst


def edge_halo(ctx: Context) -> float:
    """Edge overshoot (lower better, 0 = none): on strong non-skin edges of R, how far the output
    leaves the local range of R, as a fraction of the local step height.

    For each pixel within s px of a strong edge (Canny on R): overshoot =
    (max(0, O - max_R) + max(0, min_R - O)) / (max_R - min_R), with max/min over a
    (2s+1)^2 window; the mean over those pixels.  This is (max - plateau) / step height.
    """
    s = max(int(round(ctx.ref.scale)), 1)
    memo = ctx.ref.memo
    if "edge_zone" not in memo:
        yr8 = (ctx.ref.y_ref * 255).astype(np.uint8)
        edges = cv2.Canny(yr8, 60, 150) > 0
        k = np.ones((2 * s + 1, 2 * s + 1), np.uint8)
        zone = cv2.dilate(edges.astype(np.uint8), k).astype(bool) & ~ctx.ref.skin_out
        hi = cv2.dilate(ctx.ref.y_ref, k)
        lo = cv2.erode(ctx.ref.y_ref, k)
        step = hi - lo
        zone &= step > 0.1  # strong edges only
        memo["edge_zone"] = (zone, hi[zone], lo[zone], step[zone])
    zone, hi, lo, step = memo["edge_zone"]
    if not zone.any():
        ctx.notes["edge_halo"] = "no strong edges"
        return math.nan
    o = ctx.y_out[zone]
    over = np.maximum(o - hi, 0) + np.maximum(lo - o, 0)
    return float(np.mean(over / step))


def _mean_lab(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    from skimage.color import rgb2lab

    px = rgb.reshape(-1, 3) if mask is None else rgb[mask]
    return rgb2lab(px.reshape(-1, 1, 3).astype(np.float64)).reshape(-1, 3).mean(axis=0)


def _delta_e(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000

    return float(deltaE_ciede2000(a[None], b[None])[0])


def delta_e(ctx: Context) -> float:
    """Colour shift, CIEDE2000 (lower better; < 1 is invisible, > 2-3 noticeable): mean Lab of
    the output downscaled to the input size versus the input, whole image."""
    memo = ctx.ref.memo
    if "lab_in" not in memo:
        memo["lab_in"] = _mean_lab(ctx.ref.input, None)
    return _delta_e(_mean_lab(ctx.down, None), memo["lab_in"])


def delta_e_skin(ctx: Context) -> float:
    """Colour shift over skin, CIEDE2000 (lower better): as :func:`delta_e`, on the input's skin mask.
    With several faces, the largest of all the skin's and each judged face's own
    (:attr:`InputAnalysis.judged_faces`), so its gate holds for every face."""
    m = ctx.ref.skin_in
    if not m.any():
        ctx.notes["delta_e_skin"] = "no face"
        return math.nan
    memo = ctx.ref.memo
    if "lab_in_skin" not in memo:
        labels = ctx.ref.skin_in_labels
        masks = [m, *(mi for mi in (labels == i for i in ctx.ref.judged_faces) if mi.any())]
        memo["lab_in_skin"] = [(mi, _mean_lab(ctx.ref.input, mi)) for mi in masks]
    return max(_delta_e(_mean_lab(ctx.down, mi), lab) for mi, lab in memo["lab_in_skin"])


def lr_psnr(ctx: Context) -> float:
    """LR-consistency PSNR, dB (higher better): output downscaled (antialiased bicubic) to the input
    size versus the input, RGB in [0, 1].  Clean-input targets ~45 dB; any denoising of a
    degraded input lowers it, so gates on it should be relative to a baseline."""
    mse = float(np.mean((ctx.down.astype(np.float64) - ctx.ref.input) ** 2))
    return 99.0 if mse == 0 else 10.0 * math.log10(1.0 / mse)


def lr_ssim(ctx: Context) -> float:
    """LR-consistency SSIM on luminance (higher better, 1 = identical), same pairing as lr_psnr."""
    from skimage.metrics import structural_similarity

    from ..images import luminance

    return float(structural_similarity(luminance(ctx.down), luminance(ctx.ref.input), data_range=1.0))
