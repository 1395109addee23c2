"""Every config composes, and every group option passes the validators the commands run
before any model loads (lightning-hydra-template's test_configs, for tuner)."""

from __future__ import annotations

from conftest import ROOT


def test_every_config_composes():
    from hydra import compose, initialize_config_dir

    from tuner import objective as O
    from tuner.config import metric_settings, study_settings, to_dict
    from tuner.search import search_space

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in ("enhance", "evaluate", "tune", "export", "weights", "metrics_table"):
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
