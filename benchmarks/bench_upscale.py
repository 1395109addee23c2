"""Upscale-stage cost: seconds per megapixel, overhead versus a bare forward, conv efficiency, peak RSS.

    python benchmarks/bench_upscale.py [--size 128] [--rss-size 1024] [--models realesr-general-x4v3 RealESRGAN_x4plus]

For each model and tile in (0, 128, 256), in one run on the same input:
- s/MP: pipeline upscale seconds per output megapixel;
- pipe/bare: the pipeline's upscale time over a bare ``net(x)`` on the same (padded) input (goal <= 1.10);
- conv eff: time of bare ``F.conv2d`` calls with the exact shapes the model runs, over the pipeline
  time (1.0 = the pipeline runs at bare-conv throughput);
and, in a child process per model, peak RSS of a --rss-size^2 input at tile 256 (goal <= 4 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from _common import PORTRAITS, WEIGHTS, need_weights, timeit

from tuner.images import decode, resize
from tuner.upscale import UpscaleOptions, Upscaler
from tuner.weights import catalogue, load_state_dict


def load(name: str) -> Upscaler:
    spec = catalogue("model")[name]
    need_weights(spec.file_name)
    return Upscaler.from_state_dict(spec.arch, load_state_dict(WEIGHTS / spec.file_name, spec.key))


def conv_shapes(net: torch.nn.Module, x: torch.Tensor) -> list[tuple]:
    shapes = []

    def hook(m, inp, out):  # noqa: ANN001
        shapes.append((tuple(inp[0].shape), m.weight, m.bias, m.stride, m.padding))

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        net(x)
    for h in hs:
        h.remove()
    return shapes


def bare_convs(shapes: list[tuple]) -> None:
    with torch.inference_mode():
        for shp, w, b, stride, pad in shapes:
            F.conv2d(torch.empty(shp), w, b, stride, pad)


def rss_child(name: str, size: int) -> None:
    up = load(name)
    img = resize(decode(PORTRAITS / "A04_whitehouse_obama_2012.jpg").rgb, (size, size))
    up(img, UpscaleOptions(tile=256))
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128, help="input side for the timings")
    ap.add_argument("--rss-size", type=int, default=1024)
    ap.add_argument("--models", nargs="+", default=["realesr-general-x4v3", "RealESRGAN_x4plus"])
    ap.add_argument("--rss-models", nargs="*", default=None, help="models for the peak-RSS child (default: --models)")
    ap.add_argument("--rss-child", nargs=2, metavar=("MODEL", "SIZE"))
    a = ap.parse_args()
    if a.rss_child:
        rss_child(a.rss_child[0], int(a.rss_child[1]))
        return
    torch.set_num_threads(torch.get_num_threads())
    img = resize(decode(PORTRAITS / "A04_whitehouse_obama_2012.jpg").rgb, (a.size, a.size))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {a.size}x{a.size}")
    print(f"{'model':<24}{'tile':>6}{'s/MP':>9}{'pipe/bare':>11}{'conv eff':>10}")
    for name in a.models:
        up = load(name)
        for tile in (0, 128, 256):
            opts = UpscaleOptions(tile=tile)
            t_pipe = timeit(lambda: up(img, opts), repeat=3)  # noqa: B023
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
            x = F.pad(x, (0, 10, 0, 10), "reflect")  # the same pre_pad the pipeline adds
            with torch.inference_mode():
                t_bare = timeit(lambda: up.net(x), repeat=3)  # noqa: B023
            shapes = conv_shapes(up.net, x)
            t_conv = timeit(lambda: bare_convs(shapes), repeat=3)  # noqa: B023
            mp = (a.size * up.scale) ** 2 / 1e6
            print(f"{name:<24}{tile:>6}{t_pipe / mp:>9.2f}{t_pipe / t_bare:>11.3f}{t_conv / t_pipe:>10.3f}")
    for name in a.models if a.rss_models is None else a.rss_models:
        out = subprocess.run([sys.executable, __file__, "--rss-child", name, str(a.rss_size)], capture_output=True,
                             text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-300:]}
        print(f"peak RSS {name} {a.rss_size}^2 tile 256: {res}")


if __name__ == "__main__":
    main()
