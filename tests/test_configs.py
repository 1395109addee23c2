"""Every config composes, and every group option passes the validators the commands run
before any model loads (lightning-hydra-template's test_configs, for tuner)."""

from __future__ import annotations

import pytest
from conftest import ROOT


def test_every_config_composes():
    from hydra import compose, initialize_config_dir

    from tuner import objective as O
    from tuner.config import metric_settings, pipeline_config, study_settings, to_dict
    from tuner.search import search_space

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in ("enhance", "evaluate", "tune", "export", "weights", "metrics_table", "compare", "report"):
            compose(config_name=name, overrides=["+input=x", "+output=y"] if name == "enhance" else [])
        for model in (ROOT / "conf" / "model").glob("*.yaml"):
            compose(config_name="tune", overrides=[f"model={model.stem}"])
        for group in ("face", "objective", "search", "metrics", "tracking", "experiment", "dataset", "study", "paths"):
            for f in (ROOT / "conf" / group).glob("*.yaml"):
                cfg = compose(config_name="tune", overrides=[f"{group}={f.stem}"], return_hydra_config=False)
                # every group option passes the validators the commands run before any model loads
                search_space(to_dict(cfg.search))
                O.from_mapping(to_dict(cfg.objective))
                study_settings(cfg, ROOT / "runs")
                metric_settings(cfg)
                pipeline_config(cfg)  # model, face, detector, upscale and limits keys


def test_hydra_settings_per_command():
    """tune writes into runs/<study.name>/; every other command writes only where it is told."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        tune = compose(config_name="tune", overrides=["study.name=s", "paths.runs_dir=/r"], return_hydra_config=True)
        assert tune.hydra.run.dir == "/r/s"
        for name in ("enhance", "evaluate", "export", "weights", "metrics_table"):
            cfg = compose(config_name=name, return_hydra_config=True,
                          overrides=["+input=x", "+output=y"] if name == "enhance" else [])
            assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None, name


@pytest.mark.parametrize("override", ["+_target_=os.system", "+pipeline._target_=builtins.exec",
                                      "+study._target_=builtins.exec", "+search.params.blend._args_=[1]"])
def test_hydra_instantiation_keys_are_refused_anywhere(override, run_cli, tmp_path):
    """Configs are data: tuner never instantiates, and says so before any work."""
    r = run_cli("tune", override, "study.name=t", cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "never instantiates objects" in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "runs" / "t" / "study.db").exists()


def test_no_code_runs_from_data():
    """Source scan: no instantiate/eval/exec/pickle in tuner, and every torch.load is weights_only=True."""
    import ast

    for f in sorted((ROOT / "tuner").rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
            builtin = isinstance(fn, ast.Name) and name in ("eval", "exec")  # not torch's Module.eval()
            assert name != "instantiate" and not builtin and (owner, name) != ("pickle", "load"), \
                f"{f.name}:{node.lineno}: {owner}.{name}"
            if (owner, name) == ("torch", "load"):
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{f.name}:{node.lineno}: torch.load without weights_only=True"


@pytest.mark.parametrize("override, key", [("study.allow_infeasible=no", "study.allow_infeasible"),
                                           ("study.strict=off", "study.strict"),
                                           ("study.pruner.enabled=0", "study.pruner.enabled"),
                                           ("allow_download=no", "allow_download"),
                                           ("cache.enabled=off", "cache.enabled")])
def test_an_on_off_setting_takes_only_true_or_false(override, key):
    """Hydra passes ``=no``, ``=off`` and ``=0`` through as a string or a number, and ``bool()`` of them
    is true (allow_infeasible=no exported an infeasible trial): every on/off setting refuses them by name."""
    from hydra import compose, initialize_config_dir

    from tuner.config import pipeline_config, study_settings
    from tuner.errors import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="tune", overrides=[override])
        with pytest.raises(ConfigError, match=f"{key} must be true or false, got"):
            study_settings(cfg, ROOT / "runs")
            pipeline_config(cfg)
        ok = compose(config_name="tune", overrides=[override.split("=")[0] + "=false"])
        study_settings(ok, ROOT / "runs")
        pipeline_config(ok)


def test_compare_study_gates_are_the_default_studys_constraints():
    """``compare=study`` checks a preset against the guard rails it was tuned under: its gates, composed over
    compare=default's, are objective=truth's constraints bound for bound (both read conf/guards/study.yaml)."""
    from hydra import compose, initialize_config_dir

    from tuner import objective as O
    from tuner.compare import Rules
    from tuner.config import to_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        rules = Rules.from_mapping(to_dict(compose(config_name="compare", overrides=["compare=study"]).compare))
        default = Rules.from_mapping(to_dict(compose(config_name="compare").compare))
        study = O.from_mapping(to_dict(compose(config_name="tune", overrides=["objective=truth"]).objective))
    assert {g.metric: g for g in rules.gates} == {c.metric: c for c in study.constraints}
    assert rules.metrics == default.metrics and {g.metric for g in default.gates} < {g.metric for g in rules.gates}
