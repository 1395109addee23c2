"""`tuner compare`: a planted regression fails, an identical candidate passes, one broken face
fails its per-image gate, and compare.json keeps its schema."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import torch
from conftest import SRVGG_OVERRIDES, TINY_SRVGG, tiny_state_dict
from helpers import PORTRAITS, chromium, render

from tuner import compare as C
from tuner import objective as O
from tuner.cache import StageCache
from tuner.dataset import load as load_dataset
from tuner.errors import ConfigError
from tuner.faces import FaceDetector
from tuner.images import decode, fit_max_side
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.weights import ModelSpec, WeightStore

SCHEMA = Path(__file__).parent / "data" / "compare.schema.json"
SIX = ["A02_usnavy_grace_hopper.jpg", "A04_whitehouse_obama_2012.jpg", "A05_whitehouse_biden_2013.jpg",
       "A13_flickr_ccby_05.jpg", "A14_flickr_ccby_09.jpg", "A01_nasa_eileen_collins.png"]
# the tiny random networks make outputs no absolute gate would pass: gate them against the baseline instead
RELATIVE_GATES = ["~compare.gates.identity", "~compare.gates.seam", "~compare.gates.edge_halo",
                  "+compare.gates.edge_halo.max_relative=0.01"]


@pytest.fixture(scope="module")
def sharp_weights(tmp_path_factory) -> Path:
    """The tiny baseline network with its residual (everything it adds to the nearest-upsampled
    input) amplified 6x: the same model family, a planted over-sharpening."""
    sd = tiny_state_dict(TINY_SRVGG, 1)
    last = max(k for k in sd["params"] if k.endswith(".weight"))
    sd["params"][last] = sd["params"][last] * 6.0
    sd["params"][last.replace("weight", "bias")] = sd["params"][last.replace("weight", "bias")] * 6.0
    p = tmp_path_factory.mktemp("candidate") / "sharp_x4v3.pth"
    torch.save(sd, p)
    return p


def _args(tiny_weights, portraits, out, *extra):
    return ["compare", f"weights_dir={tiny_weights}", f"dataset.path={portraits}", "dataset.max_side=96",
            f"out={out}", "baseline=realesr-general-x4v3", *SRVGG_OVERRIDES, *extra]


def test_a_planted_over_sharpening_fails_and_an_identical_candidate_passes(tmp_path, tiny_weights, sharp_weights,
                                                                          copy_portraits, run_cli):
    portraits = copy_portraits(SIX)
    r = run_cli(*_args(tiny_weights, portraits, tmp_path / "sharp", f"candidate.model.path={sharp_weights}",
                       *RELATIVE_GATES))
    assert r.returncode == 1, r.stderr[-3000:]
    res = json.loads((tmp_path / "sharp" / "compare.json").read_text())
    assert res["verdict"] == "fail" and "crunch" in res["failed"]
    crunch = res["metrics"]["crunch"]
    assert crunch["p_worse"] < 0.05 and crunch["ci95"][0] > crunch["tolerance"]
    assert res["candidate"]["source"].startswith(f"weights {sharp_weights}")
    assert "FAIL" in r.stdout and "crunch" in r.stdout  # the terminal summary
    jsonschema.validate(res, json.loads(SCHEMA.read_text()))
    page = tmp_path / "sharp" / "report.html"
    assert "crunch fails; worst images" in page.read_text()
    if chromium() is not None or os.environ.get("TUNER_REQUIRE_BROWSER"):
        got = render(page, tmp_path / "shot.png")  # crop boards and heat-maps decode, no script error
        assert got["selfcheck"][0] == 1 and got["selfcheck"][1] >= 12 and got["selfcheck"][2:] == (0, 0)
        assert got["console_errors"] == []

    same = run_cli(*_args(tiny_weights, portraits, tmp_path / "same", "candidate=realesr-general-x4v3",
                          *RELATIVE_GATES))
    assert same.returncode == 0, same.stderr[-3000:]
    res = json.loads((tmp_path / "same" / "compare.json").read_text())
    assert res["verdict"] == "pass" and res["failed"] == []
    assert all(s["verdict"] in ("no significant change", "not applicable") for s in res["metrics"].values())
    # the candidate ran on stages the baseline had just cached, and the log says so
    assert res["reused"]["candidate"]["sr"] == len(SIX)
    assert f"candidate: reused from the stage cache: upscale {len(SIX)}/{len(SIX)}" in same.stdout + same.stderr
    jsonschema.validate(res, json.loads(SCHEMA.read_text()))


def test_errors_exit_2_not_1(tmp_path, tiny_weights, copy_portraits, run_cli):
    portraits = copy_portraits(SIX[:2])
    for extra, message in ((["candidate=nothing-like-this"], "not a preset"),
                           (["candidate.model.path=/no/such.pth"], "does not exist"),
                           (["candidate=RealESRGAN_x4plus", "compare.alpha=2"], "compare.alpha")):
        r = run_cli(*_args(tiny_weights, portraits, tmp_path / "x", *extra))
        assert r.returncode == 2 and message in r.stderr, (extra, r.stderr[-2000:])


def test_one_face_turned_into_another_person_fails_the_identity_gate(tmp_path, tiny_weights, copy_portraits,
                                                                     monkeypatch):
    """Five of six images are unchanged; on one, the candidate's output carries another person's
    face.  The mean identity distance still looks harmless; the per-image gate names the image."""
    ds = load_dataset(copy_portraits(SIX), max_side=128)
    victim = ds.items[0]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    store = WeightStore(weights_dir=tiny_weights)
    base = C.Side("baseline", "model tiny", PipelineSpec(model=model), Params(blend=1.0))  # a Lanczos upscale
    cand = C.Side("candidate", "model tiny, swapped face", PipelineSpec(model=model, pre_pad=11), Params(blend=1.0))
    other = fit_max_side(decode(PORTRAITS / "A16_flickr_ccby_12.jpg"), 4 * 128).rgb
    real_run = Pipeline.run
    detect = FaceDetector()

    def run(self, image, params):
        res = real_run(self, image, params)
        if self.spec.pre_pad == 11 and image is victim.image:  # the candidate, on the victim only
            f_in = detect(image.rgb)[0].scaled(res.scale)
            f_other = detect(other)[0]
            m, _ = cv2.estimateAffinePartial2D(f_other.landmarks, f_in.landmarks)
            h, w = res.image.rgb.shape[:2]
            swapped = cv2.warpAffine(other, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            res.image = res.image.with_rgb(np.clip(swapped, 0, 1).astype(np.float32))
        return res

    monkeypatch.setattr(Pipeline, "run", run)
    rules = C.Rules.from_mapping({"metrics": {"crunch": {"tolerance": 1.0, "target": 8.0}},
                                  "gates": {"identity": {"max": 0.45}}})
    res = C.compare(ds, base, cand, rules, metric_names=["identity"], iqa_max_side=1024, store=store,
                    cache=StageCache(tmp_path / "cache"), out=tmp_path / "cmp")
    gate = res["gates"]["identity"]
    assert res["verdict"] == "fail" and res["failed"] == ["gate:identity"]
    assert [f["image"] for f in gate["failing"]] == [victim.name] and gate["failing"][0]["candidate"] > 0.6
    ids = [i["candidate"]["identity"] for i in res["images"] if i["candidate"]["identity"] is not None]
    assert np.mean(ids) < 0.45  # a mean gate would have passed


def test_harm_and_statistics_follow_the_metric_direction():
    rules = C.Rules.from_mapping({"metrics": {"lr_psnr": {"tolerance": 0.5}, "crunch": {"target": 8.0}}})
    lr, cr = rules.metrics
    assert C.harm(lr, 40.0, 38.0) == 2.0  # higher is better: a drop is harm
    assert C.harm(cr, 8.0, 11.0) == 3.0 and C.harm(cr, 8.0, 5.0) == 3.0  # away from the target either way
    assert C.harm(cr, 11.0, 8.0) == -3.0
    # a group photograph: the candidate keeps its crunchiest face at 8 dB but irons another to 2 dB
    assert C.harm(cr, 8.0, 8.0, (8.0, 2.0)) == 6.0
    assert "crunch_least" in C.Rules.from_mapping({"metrics": {"crunch": {"target": 8.0}}}).names
    with pytest.raises(Exception, match="other side"):  # wax is its waxiest face: no sibling for the other side
        C.Rules.from_mapping({"metrics": {"wax": {"target": 0.0}}})
    rng = np.random.default_rng(0)
    worse = C.metric_stats(list(2.0 + rng.normal(0, 0.3, 12)), lr, rules)
    assert worse["verdict"] == "fail" and worse["ci95"][0] > 0.5
    small = C.metric_stats(list(0.2 + rng.normal(0, 0.05, 12)), lr, rules)
    assert small["verdict"] == "worse (not shown beyond tolerance)"
    better = C.metric_stats(list(-1.0 + rng.normal(0, 0.2, 12)), lr, rules)
    assert better["verdict"] == "better"
    assert C.metric_stats([0.0] * 6, lr, rules)["verdict"] == "no significant change"
    assert C.metric_stats([float("nan")] * 3, lr, rules)["verdict"] == "not applicable"
    # four images cannot make a significant Wilcoxon test (2^-4 > 0.05), however large the harm: said so
    assert C.metric_stats([5.0, 6.0, 5.5, 7.0], lr, rules)["verdict"] == "insufficient data"
    assert C.metric_stats([5.0, 6.0, 5.5, 7.0, 6.5], lr, rules)["verdict"] == "fail"
    # zero harms count (scipy's default would drop them and call 2 worse images of 10 significant)
    assert C.metric_stats([0.0] * 8 + [1.0, 1.0], lr, rules)["p_worse"] > 0.05
    # the candidate has no value where the baseline has one: that fails, whatever the rest
    assert C.metric_stats([0.0] * 6, lr, rules, missing=1)["verdict"] == "fail (no value on 1 image(s))"


def test_gates_count_a_missing_candidate_value_and_skip_what_cannot_be_checked():
    base = C.SideRun(rows={"a": {"identity": 0.1, "lr_psnr": 30.0}, "b": {"identity": 0.2, "lr_psnr": math.nan}})
    cand = C.SideRun(rows={"a": {"identity": math.nan, "lr_psnr": 29.5}, "b": {"identity": 0.3, "lr_psnr": 20.0}})
    ident = C.gate_result(O.Constraint("identity", max=0.45), ["a", "b"], base, cand)
    assert not ident["holds"] and ident["failing"] == [{"image": "a", "candidate": None, "baseline": 0.1,
                                                         "excess": None, "why": "no value on the candidate"}]
    lr = C.gate_result(O.Constraint("lr_psnr", min_relative=-1.0), ["a", "b"], base, cand)
    assert lr["holds"] and lr["images_checked"] == 1  # b has no baseline value: nothing to check it against
    with pytest.raises(Exception, match="needs max"):
        C.Rules.from_mapping({"gates": {"identity": {"max": None}}})


def test_gates_read_the_studys_constraint_keys_and_a_min_gate_needs_no_baseline():
    """compare.gates and objective.constraints are one parse (conf/guards/study.yaml feeds both): every
    bound the study accepts, ``min`` too, is a gate; ``reduce: mean`` is refused, as compare gates every image."""
    rules = C.Rules.from_mapping({"gates": {"lr_psnr": {"min": 25.0}, "wax": {"max": 0.5, "relax_to_baseline": 0.0}}})
    assert {g.metric: (g.min, g.max, g.relax_to_baseline) for g in rules.gates} == {"lr_psnr": (25.0, None, None),
                                                                                     "wax": (None, 0.5, 0.0)}
    assert O.from_mapping({"terms": [{"metric": "piqe"}], "constraints": {"lr_psnr": {"min": 25.0}}}).constraints == (
        rules.gates[0],)
    with pytest.raises(ConfigError, match="compare gates every image"):
        C.Rules.from_mapping({"gates": {"wax": {"max": 0.5, "reduce": "mean"}}})
    with pytest.raises(ConfigError, match="unknown keys"):
        C.Rules.from_mapping({"gates": {"wax": {"maximum": 0.5}}})
    base = C.SideRun(rows={"a": {"lr_psnr": math.nan}, "b": {"lr_psnr": 30.0}})
    cand = C.SideRun(rows={"a": {"lr_psnr": 20.0}, "b": {"lr_psnr": 29.0}})
    res = C.gate_result(rules.gates[0], ["a", "b"], base, cand)  # an absolute bound: checked without a baseline
    assert res["images_checked"] == 2 and [f["image"] for f in res["failing"]] == ["a"] and res["min"] == 25.0


def test_an_absolute_gate_relaxed_to_the_baseline_follows_what_the_input_allows():
    """Real degraded inputs: the model as shipped already halos past the clean-calibrated 0.03 (0.067
    measured), so an absolute edge_halo gate fails every candidate there, better or not.  Relaxed to the
    baseline, per image: no worse than the baseline where the baseline is above the band, the band elsewhere."""
    base = C.SideRun(rows={"soft": {"edge_halo": 0.067}, "clean": {"edge_halo": 0.014}})
    better = C.SideRun(rows={"soft": {"edge_halo": 0.05}, "clean": {"edge_halo": 0.02}})
    worse = C.SideRun(rows={"soft": {"edge_halo": 0.07}, "clean": {"edge_halo": 0.02}})
    crunchy = C.SideRun(rows={"soft": {"edge_halo": 0.05}, "clean": {"edge_halo": 0.035}})
    absolute = O.Constraint("edge_halo", max=0.03)
    relaxed = O.Constraint("edge_halo", max=0.03, relax_to_baseline=0.0)
    assert [f["image"] for f in C.gate_result(absolute, ["soft", "clean"], base, better)["failing"]] == ["soft"]
    assert C.gate_result(relaxed, ["soft", "clean"], base, better)["holds"]
    got = C.gate_result(relaxed, ["soft", "clean"], base, worse)["failing"]
    assert [f["image"] for f in got] == ["soft"] and got[0]["excess"] == pytest.approx(0.003)
    # the clean image is held to the band, not to the baseline's 0.014 + 0
    assert [f["image"] for f in C.gate_result(relaxed, ["soft", "clean"], base, crunchy)["failing"]] == ["clean"]
    rules = C.Rules.from_mapping({"gates": {"edge_halo": {"max": 0.03, "relax_to_baseline": 0.0}}})
    assert rules.gates == (relaxed,)
    with pytest.raises(Exception, match="relaxes a max"):
        C.Rules.from_mapping({"gates": {"edge_halo": {"max_relative": 0.01, "relax_to_baseline": 0.0}}})
    # identity as the default study gates it: relaxed where the baseline already moves a face, never past 0.6
    ident = C.Rules.from_mapping({"gates": {"identity": {"max": 0.45, "relax_to_baseline": 0.0,
                                                         "relax_limit": 0.6}}}).gates[0]
    base_id = C.SideRun(rows={"old": {"identity": 0.7}})
    got = C.gate_result(ident, ["old"], base_id, C.SideRun(rows={"old": {"identity": 0.65}}))["failing"]
    assert [f["image"] for f in got] == ["old"] and got[0]["excess"] == pytest.approx(0.05)


def test_gates_agree_with_the_study_at_the_bound():
    """compare judges a per-image gate as the study does (:meth:`tuner.objective.Constraint.judge`),
    on the stored 6 decimals: at the bound holds, 1e-3 past fails, 0.4500004 (stored 0.45) holds."""
    base = C.SideRun(rows={"a": {"identity": 0.2}, "b": {"identity": 0.2}})
    rule = O.Constraint("identity", max=0.45)
    for v, holds in ((0.45, True), (0.451, False), (0.4500004, True), (0.4500006, False)):
        rows = {"a": {"identity": 0.1}, "b": {"identity": v}}
        got = C.gate_result(rule, ["a", "b"], base, C.SideRun(rows=rows))
        assert got["holds"] is holds and got["images_checked"] == 2, v
        in_study = rule.gate([{"image": k, **r} for k, r in rows.items()], None).violation <= 0
        assert in_study is holds, v
    got = C.gate_result(rule, ["b"], base, C.SideRun(rows={"b": {"identity": 0.451}}))["failing"]
    assert [f["image"] for f in got] == ["b"] and got[0]["excess"] == pytest.approx(1e-3)
    # relaxed to the baseline: the study holds a trial against the baseline's stored value (0.4599996 is
    # stored as 0.46), so a candidate at 0.4600004 (0.46) holds here too
    relaxed = O.Constraint("identity", max=0.45, relax_to_baseline=0.0)
    assert C.gate_result(relaxed, ["a"], C.SideRun(rows={"a": {"identity": 0.4599996}}),
                         C.SideRun(rows={"a": {"identity": 0.4600004}}))["holds"]


def test_a_candidate_that_fails_on_an_image_fails_the_comparison(tmp_path, tiny_weights, copy_portraits,
                                                                monkeypatch):
    from tuner.errors import PipelineError

    ds = load_dataset(copy_portraits(SIX), max_side=64)
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    base = C.Side("baseline", "model tiny", PipelineSpec(model=model), Params())
    cand = C.Side("candidate", "model tiny, breaks", PipelineSpec(model=model, pre_pad=11), Params())
    real_run = Pipeline.run

    def run(self, image, params):
        if self.spec.pre_pad == 11 and image is ds.items[2].image:
            raise PipelineError("out of memory")
        return real_run(self, image, params)

    monkeypatch.setattr(Pipeline, "run", run)
    res = C.compare(ds, base, cand, C.Rules.from_mapping({"metrics": {"piqe": {"tolerance": 2.0}}}),
                    metric_names=[], iqa_max_side=1024, store=WeightStore(weights_dir=tiny_weights),
                    cache=StageCache(tmp_path / "cache"), out=tmp_path / "cmp")
    assert res["verdict"] == "fail" and res["failed"] == ["runs"]
    assert res["candidate_failed_on"] == [ds.items[2].name] and res["dataset"]["n_paired"] == 5
    assert "FAILED to run on" in C.summary_table(res)


def test_two_presets_are_compared_as_their_settings_say(tmp_path, tiny_weights, copy_portraits, run_cli):
    from tuner import preset as presets
    from tuner.settings import Settings

    files = {}
    for name, blend in (("prod", 0.0), ("new", 0.6)):
        st = Settings(model="realesr-general-x4v3", blend=blend, blend_variant="frequency")
        files[name] = presets.save(presets.build(st, model_identity=[], face_sha256=None), tmp_path / f"{name}.yaml")
    portraits = copy_portraits(SIX[:3])
    r = run_cli("compare", f"weights_dir={tiny_weights}", f"dataset.path={portraits}", "dataset.max_side=64",
                f"out={tmp_path / 'cmp'}", f"baseline={files['prod']}", f"candidate={files['new']}", *SRVGG_OVERRIDES,
                *RELATIVE_GATES)
    # three images: below MIN_PAIRS no metric can be significant ("insufficient data"; the truth metrics
    # "not applicable" without pairs), so only a gate could fail; the frequency blend keeps the network's
    # low band (lr_psnr) and mixes in Lanczos's softer high band (no extra halo): both gates hold
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["verdict"] == "pass" and res["failed"] == []
    assert {s["verdict"] for s in res["metrics"].values()} <= {"insufficient data", "not applicable"}
    assert {g: (v["holds"], v["images_checked"]) for g, v in res["gates"].items()} == {
        "lr_psnr": (True, 3), "edge_halo": (True, 3)}
    assert res["baseline"]["source"] == f"preset {files['prod']}"
    assert res["candidate"]["settings"]["params"]["blend"] == 0.6
    assert res["candidate"]["settings"]["pipeline"]["blend_variant"] == "frequency"
    # the candidate's outputs are what `tuner enhance preset=new.yaml` makes
    e = run_cli("enhance", f"input={portraits}", f"output={tmp_path / 'enh'}", f"preset={files['new']}",
                "max_side=64", "output_format=png", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES)
    assert e.returncode == 0, e.stderr[-2000:]
    names = sorted(f"{Path(n).stem}.png" for n in SIX[:3])
    assert sorted(p.name for p in (tmp_path / "cmp" / "candidate").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "enh").iterdir()) == names
    for n in names:
        assert (tmp_path / "cmp" / "candidate" / n).read_bytes() == (tmp_path / "enh" / n).read_bytes(), n
    # compare=study: the same two presets against the default study's own guard rails, every one per image
    r = run_cli("compare", f"weights_dir={tiny_weights}", f"dataset.path={portraits}", "dataset.max_side=64",
                f"out={tmp_path / 'study'}", f"baseline={files['prod']}", f"candidate={files['new']}",
                "compare=study", *SRVGG_OVERRIDES)
    res = json.loads((tmp_path / "study" / "compare.json").read_text())
    assert r.returncode == (1 if res["failed"] else 0), r.stderr[-2000:]
    assert set(res["gates"]) == {"texture_excess", "texture_hr", "edge_halo", "wax", "identity", "seam", "paste_halo",
                                 "delta_e_skin", "lr_psnr"}
    assert res["gates"]["identity"]["relax_limit"] == 0.6 and res["gates"]["texture_hr"]["images_checked"] == 0
    # a gate with nothing to check (no truth here) says so, not "holds on every image"
    assert re.search(r"gate texture_hr\s+0\s.*not applicable \(no image to check\)", r.stdout), r.stdout[-2000:]
    assert {f"gate:{g}" for g, v in res["gates"].items() if not v["holds"]} <= set(res["failed"])
