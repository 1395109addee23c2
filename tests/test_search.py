"""The search space and the samplers."""

from __future__ import annotations

import optuna
import pytest

from tuner.config import study_settings
from tuner.search import make_sampler, search_space


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "grid"])
def test_every_sampler_draws_from_the_search_space(sampler, tmp_path):

    space = search_space({"params": {"tile": {"type": "categorical", "choices": [0, 64]},
                                     "blend": {"type": "float", "low": 0.0, "high": 0.8, "step": 0.4}}})
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"study": {"name": "s", "n_trials": 3, "sampler": sampler, "n_startup_trials": 1}})
    st = study_settings(cfg, tmp_path)
    study = optuna.create_study(sampler=make_sampler(st.sampler, space, seed=st.seed, n_startup_trials=st.n_startup_trials))
    for _ in range(3):
        t = study.ask()
        drawn = {k: knob.suggest(t) for k, knob in space.items()}
        assert drawn["tile"] in (0, 64) and 0.0 <= drawn["blend"] <= 0.8
        study.tell(t, drawn["blend"])
