"""Peak memory of real pipeline runs versus tuner's estimate (the one behind limits.max_memory_gb,
limits.max_output_pixels and params.tile=auto).

    python benchmarks/bench_memory.py [--sizes 256 512] [--tiles 0 128 256] [--x4plus-size 256]
    python benchmarks/bench_memory.py --calibrate     # the constants in tuner/upscale.py and tuner/pipeline.py

Each case runs in a child process (like bench_upscale.py --rss-child): load the model, warm up on a
32 px input, then reset the peak RSS (Linux /proc/self/clear_refs; else ru_maxrss) and run
``Pipeline.run`` (upscale, global blend 0.3) and the PNG encode on a portrait resized to size^2.
"measured" is the peak RSS above the warmed-up process; "estimate" is
``tuner.memory.estimate_memory(...).host`` for the same input, tile and settings, with the stage
that sets it.  The estimate should be >= measured (a budget guard), but not by much (ratio ~1-1.5).

--calibrate measures what the constants are fitted on: bare ``net(x)`` forwards of random-weight
SRVGGNetCompact / RRDBNet (floats alive per input pixel), the post-upscale stages per output pixel
(blend variants, face paste, encode) on stand-in arrays, and one GFPGAN forward at 512 px.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import PORTRAITS, WEIGHTS, need_weights

PORTRAIT = PORTRAITS / "A04_whitehouse_obama_2012.jpg"


# ---------------------------------------------------------------- child side
def _status_bytes(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _measure(fn: Callable[[], Any]) -> tuple[int, float]:
    """(peak RSS bytes above the current RSS while ``fn`` runs, seconds)."""
    base = _status_bytes("VmRSS")
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        pass
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    if reset and base is not None:
        peak = _status_bytes("VmHWM") or 0
    else:  # no reset: ru_maxrss is the lifetime peak (the warmup is small, so close enough)
        base = base or 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - base, 0), dt


def _portrait(size: int) -> Any:
    from tuner.images import decode, from_array, resize

    return from_array(resize(decode(PORTRAIT).rgb, (size, size)))


def child_pipeline(c: dict[str, Any]) -> dict[str, Any]:
    from tuner.images import encode
    from tuner.pipeline import Params, Pipeline, PipelineSpec
    from tuner.weights import WeightStore, catalogue

    spec = PipelineSpec(model=catalogue("model")[c["model"]])
    pipe = Pipeline(spec, store=WeightStore(weights_dir=WEIGHTS, allow_download=False), memo_limit_bytes=0)
    params = Params(tile=c["tile"], blend=c["blend"], blend_variant=c["variant"], **c.get("policy", {}))
    out = Path(tempfile.mkdtemp()) / "out.png"
    pipe.run(_portrait(32), params)  # load the model, initialise oneDNN: not part of the peak
    image = _portrait(c["size"])

    def run() -> None:
        encode(pipe.run(image, params).image, out)

    peak, dt = _measure(run)
    return {"peak": peak, "seconds": dt}


def child_net(c: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tuner.upscale import build_network

    torch.manual_seed(0)
    net = build_network(c["arch"]).eval()
    with torch.inference_mode():
        net(torch.rand(1, 3, 16, 16))
    x = torch.rand(1, 3, c["size"], c["size"])

    def run() -> None:
        with torch.inference_mode():
            net(x)

    peak, dt = _measure(run)
    return {"peak": peak, "seconds": dt, "floats_per_px": peak / 4 / c["size"] ** 2}


def child_post(c: dict[str, Any]) -> dict[str, Any]:
    """The stages after the upscale on a stand-in SR output (the SR array exists before the peak is reset)."""
    import numpy as np

    from tuner.blend import blend
    from tuner.facegeom import Face, skin_mask
    from tuner.faces import RestoredFace, paste_faces
    from tuner.images import encode, reference_upscale
    from tuner.texture import match_texture

    n = c["size"]
    image = _portrait(n)
    h = w = 4 * n
    sr = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    face = Face(box=(0.3 * n, 0.3 * n, 0.7 * n, 0.7 * n), score=0.99,
                landmarks=np.array([[0.4, 0.45], [0.6, 0.45], [0.5, 0.55], [0.42, 0.65], [0.58, 0.65]]) * n)
    k = 512 / (0.4 * n)
    restored = [RestoredFace(crop=np.random.default_rng(1).random((512, 512, 3), dtype=np.float32),
                             matrix=np.array([[k, 0, -0.3 * n * k], [0, k, -0.3 * n * k]]))]
    out_path = Path(tempfile.mkdtemp()) / "out.png"
    did: dict[str, float] = {}

    def run() -> None:
        ref = reference_upscale(image.rgb, (h, w))
        out = paste_faces(sr, restored, scale=4.0, weight=0.5) if c["faces"] else sr
        skin = skin_mask(ref, [face.scaled(4.0)]) if c["variant"] == "skin" or "texture" in c else None
        out = blend(out, ref, amount=0.3, variant=c["variant"], skin=skin, scale=4.0)
        if "texture" in c:  # the texture policy: -3 mixes R in (the stand-in SR is crunchy), +8 adds grain
            assert skin is not None
            out, info = match_texture(out, ref, skin, scale=4.0, target=c["texture"], seed=0)
            did.update(mix=info["mix"], grain=info["grain"])
        encode(image.with_rgb(out), out_path)

    peak, dt = _measure(run)
    return {"peak": peak, "seconds": dt, "bytes_per_out_px": peak / (h * w), **did}


def child_gfpgan(c: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from tuner.faces import FaceRestorer, build_face_network
    from tuner.weights import catalogue

    torch.manual_seed(0)
    restorer = FaceRestorer(build_face_network(catalogue("face")["gfpgan_v1.4"].arch), face_size=512)
    crop = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    peak, dt = _measure(lambda: restorer.restore(crop))
    return {"peak": peak, "seconds": dt}


CHILDREN = {"pipeline": child_pipeline, "net": child_net, "post": child_post, "gfpgan": child_gfpgan}


# ---------------------------------------------------------------- parent side
def run_child(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][-200:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def estimate(case: dict[str, Any]) -> tuple[int, str]:
    from tuner.memory import estimate_memory
    from tuner.pipeline import Params, PipelineSpec
    from tuner.weights import catalogue

    spec = PipelineSpec(model=catalogue("model")[case["model"]])
    e = estimate_memory(spec, (case["size"], case["size"]), case["tile"],
                        params=Params(blend=case["blend"], blend_variant=case["variant"], **case.get("policy", {})))
    return e.host, max(e.stages, key=lambda k: e.stages[k])


def table(cases: list[dict[str, Any]], timeout: float) -> None:
    print(f"{'model':<22}{'input':>7}{'tile':>6}  {'variant':<12}{'measured MB':>12}{'estimate MB':>12}"
          f"{'est/meas':>9}  {'set by':<8}{'time s':>7}")
    for c in cases:
        res = run_child({"kind": "pipeline", **c}, timeout)
        est, stage = estimate(c)
        variant = c["variant"] + ("+policy" if "policy" in c else "")
        head = f"{c['model']:<22}{c['size']:>7}{c['tile']:>6}  {variant:<12}"
        if "error" in res:
            print(f"{head}{'-':>12}{est / 2**20:>12.0f}{'-':>9}  {stage:<8}  error: {res['error']}")
            continue
        meas = res["peak"]
        print(f"{head}{meas / 2**20:>12.0f}{est / 2**20:>12.0f}{est / max(meas, 1):>9.2f}  {stage:<8}"
              f"{res['seconds']:>7.1f}", flush=True)


def calibrate(timeout: float) -> None:
    print("bare net(x) forward, random weights: floats alive per input pixel at the peak")
    print(f"{'arch':<44}{'input':>7}{'peak MB':>9}{'floats/px':>11}{'model':>8}")
    from tuner.upscale import network_bytes_per_px

    nets = [({"type": "SRVGGNetCompact", "num_feat": f, "num_conv": 4, "upscale": s, "act_type": "prelu"}, n)
            for f, s in ((32, 4), (64, 4), (128, 4), (64, 2)) for n in (512, 768)]
    nets += [({"type": "RRDBNet", "num_feat": f, "num_block": 2, "num_grow_ch": g, "scale": s}, n)
             for f, g, s in ((64, 32, 4), (32, 16, 4), (64, 32, 2)) for n in (192, 256)]
    for arch, n in nets:
        arch = {"num_in_ch": 3, "num_out_ch": 3, **arch}
        res = run_child({"kind": "net", "arch": arch, "size": n}, timeout)
        name = ", ".join(f"{k}={v}" for k, v in arch.items() if k in ("type", "num_feat", "upscale", "scale"))
        if "error" in res:
            print(f"{name:<44}{n:>7}  error: {res['error']}")
            continue
        print(f"{name:<44}{n:>7}{res['peak'] / 2**20:>9.0f}{res['floats_per_px']:>11.0f}"
              f"{network_bytes_per_px(arch) / 4:>8.0f}")
    print("\nafter the upscale (R, face paste, blend, PNG encode), 512^2 input -> 2048^2 output, SR array held:")
    print(f"{'variant':<12}{'faces':>6}{'peak MB':>9}{'B/out px':>10}")
    for variant in ("global", "skin", "frequency"):
        for faces in (False, True):
            res = run_child({"kind": "post", "variant": variant, "faces": faces, "size": 512}, timeout)
            if "error" in res:
                print(f"{variant:<12}{faces!s:>6}  error: {res['error']}")
                continue
            print(f"{variant:<12}{faces!s:>6}{res['peak'] / 2**20:>9.0f}{res['bytes_per_out_px']:>10.1f}")
    for target, path, what in ((-3.0, "mix", "texture policy, mixing R in"), (8.0, "grain", "texture policy, adding grain")):
        res = run_child({"kind": "post", "variant": "skin", "faces": True, "size": 512, "texture": target}, timeout)
        if "error" in res:
            print(f"{what}: error: {res['error']}")
            continue
        if not (res["mix"] > 0) == (path == "mix") or not (res["grain"] > 0) == (path == "grain"):
            print(f"{what}: took the other path (mix {res['mix']:.3g}, grain {res['grain']:.3g}), not measured")
            continue
        print(f"{'skin':<12}{'True':>6}{res['peak'] / 2**20:>9.0f}{res['bytes_per_out_px']:>10.1f}  + {what} "
              f"({path} {res[path]:.2f})")
    res = run_child({"kind": "gfpgan"}, timeout)
    print(f"\nGFPGANv1.4 forward on one 512 px face (random weights): "
          f"{res['peak'] / 2**20:.0f} MB" if "error" not in res else f"\nGFPGAN: error {res['error']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="input sides for realesr-general-x4v3")
    ap.add_argument("--tiles", type=int, nargs="+", default=[0, 128, 256])
    ap.add_argument("--x4plus-size", type=int, default=256, help="RealESRGAN_x4plus input side (0 = skip)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per child")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        case = json.loads(a.child)
        print(json.dumps(CHILDREN[case.pop("kind")](case)))
        return
    if a.calibrate:
        calibrate(a.timeout)
        return
    import torch

    need_weights("realesr-general-x4v3.pth", *(["RealESRGAN_x4plus.pth"] if a.x4plus_size else []))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; blend 0.3 global, no faces")
    cases = [{"model": "realesr-general-x4v3", "size": n, "tile": t, "variant": "global", "blend": 0.3}
             for n in a.sizes for t in a.tiles]
    cases.append({"model": "realesr-general-x4v3", "size": max(a.sizes), "tile": min(a.tiles), "variant": "frequency",
                  "blend": 0.3})
    # the default study's tuned policy (runs/default): global blend 0.32, texture_target -0.5 from the predicted truth
    cases.append({"model": "realesr-general-x4v3", "size": max(a.sizes), "tile": min(a.tiles), "variant": "global",
                  "blend": 0.32, "policy": {"texture_target": -0.5, "texture_anchor": "predicted"}})
    if a.x4plus_size:
        cases += [{"model": "RealESRGAN_x4plus", "size": a.x4plus_size, "tile": t, "variant": "global", "blend": 0.3}
                  for t in (0, 128)]
    table(cases, a.timeout)


if __name__ == "__main__":
    main()
