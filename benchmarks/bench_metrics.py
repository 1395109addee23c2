"""Cost of the default metric set on a 1024^2 and a 4096^2 output, versus upscaling to 4096^2.

    python benchmarks/bench_metrics.py [--skip-4k-upscale]

Scores real-ESRGAN-like outputs of a bundled portrait (general-x4v3 output when the weights
are there, else a Lanczos upscale) with conf/metrics/default.yaml's set.  Prints, per output
size, the cold time (input analysis included) and the warm time (analysis reused, as a study
does), and the ratio of the 4096^2 scoring cost to upscaling 1024^2 -> 4096^2 with
realesr-general-x4v3 on the same machine (goal < 1).
"""

from __future__ import annotations

import argparse
import time

import yaml
from _common import PORTRAITS, ROOT, WEIGHTS, timeit

from tuner import metrics as M
from tuner.faces import FaceDetector
from tuner.images import decode, reference_upscale, resize
from tuner.upscale import UpscaleOptions, Upscaler
from tuner.weights import catalogue, load_state_dict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-4k-upscale", action="store_true")
    a = ap.parse_args()
    names = yaml.safe_load((ROOT / "conf" / "metrics" / "default.yaml").read_text())["names"]
    spec = catalogue("model")["realesr-general-x4v3"]
    have = (WEIGHTS / spec.file_name).is_file()
    up = Upscaler.from_state_dict(spec.arch, load_state_dict(WEIGHTS / spec.file_name, spec.key)) if have else None
    src = decode(PORTRAITS / "A04_whitehouse_obama_2012.jpg").rgb
    results = {}
    for out_side in (1024, 4096):
        inp = resize(src, (out_side // 4, out_side // 4))
        faces = FaceDetector()(inp)
        out = up(inp, UpscaleOptions(tile=256)) if up is not None else reference_upscale(inp, (out_side, out_side))
        t = time.perf_counter()
        analysis = M.InputAnalysis(inp, faces, out.shape[:2])
        M.score(M.Context(out, analysis), names)
        cold = time.perf_counter() - t
        warm = timeit(lambda: M.score(M.Context(out, analysis), names), repeat=3, warmup=0)  # noqa: B023
        per = {}
        for n in names:
            per[n] = timeit(lambda: M.score(M.Context(out, analysis), [n]), repeat=1, warmup=0)  # noqa: B023
        results[out_side] = (cold, warm)
        print(f"{out_side}^2 output ({'general-x4v3' if up else 'lanczos'}): cold {cold:.2f}s, warm {warm:.2f}s")
        print("   " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
    if up is not None and not a.skip_4k_upscale:
        inp = resize(src, (1024, 1024))
        t = time.perf_counter()
        up(inp, UpscaleOptions(tile=256))
        t_up = time.perf_counter() - t
        cold, warm = results[4096]
        print(f"upscale 1024^2 -> 4096^2 with realesr-general-x4v3 (tile 256): {t_up:.1f}s")
        print(f"scoring / upscaling at 4096^2: cold {cold / t_up:.3f}, warm {warm / t_up:.3f} (goal < 1)")


if __name__ == "__main__":
    main()
