"""What the texture policy's anchor costs per pipeline run (stages cached): texture_anchor=lanczos
against predicted, side by side on 8 train LRs of the default study (256 px), median of 5 passes.

    python benchmarks/bench_policy.py
"""

from __future__ import annotations

from _common import WEIGHTS, need_weights, timeit

from tuner.cache import StageCache
from tuner.dataset import Pairs, load
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.weights import WeightStore, catalogue, user_cache_dir


def main() -> None:
    need_weights("realesr-general-x4v3.pth")
    pipe = Pipeline(PipelineSpec(model=catalogue("model")["realesr-general-x4v3"]),
                    store=WeightStore(weights_dir=WEIGHTS, allow_download=False),
                    cache=StageCache(user_cache_dir() / "stages"))
    items = load(None, max_side=256, pairs=Pairs(degradation="none", split="train")).items[:8]
    per_image = {}
    for name, p in (("lanczos anchor", Params(texture_target=3.0, blend=0.79, blend_variant="skin")),
                    ("predicted anchor", Params(texture_target=-0.5, texture_anchor="predicted", blend=0.79,
                                                blend_variant="skin"))):

        def one_pass(p: Params = p) -> None:
            for it in items:
                pipe.run(it.image, p)

        per_image[name] = timeit(one_pass, repeat=5) / len(items)
    for k, v in per_image.items():
        print(f"{k}: {v * 1000:.1f} ms per image")
    print(f"predicted / lanczos: {per_image['predicted anchor'] / per_image['lanczos anchor']:.3f}")


if __name__ == "__main__":
    main()
