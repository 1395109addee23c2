"""GPU check: CUDA fp32/fp16 upscaling versus CPU, CUDA determinism, GPU timing, the pipeline on CUDA.

    TUNER_WEIGHTS_DIR=path/with/realesr-general-x4v3.pth python benchmarks/gpu_check.py

Needs a CUDA device and realesr-general-x4v3.pth; prints a JSON of the figures (also to
$OUT/gpucheck.json when OUT is set).  Not part of the test suite: CI has no GPU.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import PORTRAITS, WEIGHTS

from tuner.faces import FaceDetector, FaceRestorer, build_face_network, restore_faces
from tuner.images import decode, fit_max_side, quantize, resize
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.upscale import UpscaleOptions, Upscaler
from tuner.weights import WeightStore, catalogue, load_state_dict

TINY_GFPGAN = {"type": "GFPGANv1Clean", "out_size": 64, "num_style_feat": 64, "channel_multiplier": 1,
               "decoder_load_path": None, "fix_decoder": False, "num_mlp": 2, "input_is_latent": True,
               "different_w": True, "narrow": 0.125, "sft_half": True}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-20)))


def gpu_seconds(fn, repeat: int = 3) -> float:  # noqa: ANN001
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    r: dict[str, object] = {}
    spec = catalogue("model")["realesr-general-x4v3"]
    sd = load_state_dict(WEIGHTS / spec.file_name, spec.key)
    img = fit_max_side(decode(PORTRAITS / "A04_whitehouse_obama_2012.jpg"), 256).rgb
    opts = UpscaleOptions(tile=128)
    cpu = Upscaler.from_state_dict(spec.arch, sd, device="cpu")(img, opts)
    g = Upscaler.from_state_dict(spec.arch, sd, device="cuda")
    gh = Upscaler.from_state_dict(spec.arch, sd, device="cuda", half=True)
    g32, g32b, g16 = g(img, opts), g(img, opts), gh(img, UpscaleOptions(tile=128, half=True))
    r["cpu_vs_cuda_fp32_max_lsb"] = int(np.abs(quantize(cpu, 8).astype(int) - quantize(g32, 8).astype(int)).max())
    r["cpu_vs_cuda_fp32_psnr"] = psnr(cpu, g32)
    r["cuda_fp32_repeat_identical"] = g32.tobytes() == g32b.tobytes()
    r["cuda_fp16_vs_fp32_psnr"] = psnr(g16, g32)
    big = resize(decode(PORTRAITS / "A04_whitehouse_obama_2012.jpg").rgb, (1024, 1024))
    for name, up, o in (("fp32_tile0", g, UpscaleOptions()), ("fp32_tile512", g, UpscaleOptions(tile=512)),
                        ("fp16_tile0", gh, UpscaleOptions(half=True))):
        r[f"s_1024_to_4096_{name}"] = gpu_seconds(lambda up=up, o=o: up(big, o))

    torch.manual_seed(4)
    fsd = build_face_network(TINY_GFPGAN).state_dict()
    face_img = fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 160).rgb
    faces = FaceDetector()(face_img)
    on_gpu = FaceRestorer.from_state_dict(TINY_GFPGAN, fsd, device="cuda")
    a, b = (restore_faces(face_img, faces, on_gpu)[0].crop for _ in range(2))
    c = restore_faces(face_img, faces, FaceRestorer.from_state_dict(TINY_GFPGAN, fsd, device="cpu"))[0].crop
    r["face_cuda_repeat_identical"] = a.tobytes() == b.tobytes()
    r["face_cuda_vs_cpu_maxabs"] = float(np.abs(a - c).max())

    pipe = Pipeline(PipelineSpec(model=spec, device="cuda"), store=WeightStore(weights_dir=WEIGHTS, allow_download=False))
    res = pipe.run(fit_max_side(decode(PORTRAITS / "A13_flickr_ccby_05.jpg"), 256), Params(tile=64, blend=0.2))
    r["pipeline_cuda_out_shape"] = list(res.image.rgb.shape)
    r["pipeline_cuda_finite"] = bool(np.isfinite(res.image.rgb).all())
    print(json.dumps(r, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpucheck.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
