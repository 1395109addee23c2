"""The report of a study: verdict, best trial's face sheet, optimisation plots, top trials' gates.

Plots come from ``optuna.visualization.matplotlib`` (history, parameter importances, parallel
coordinates, the Pareto front of multi-objective studies); the gates are recomputed per image
against the study's final baseline (:func:`tuner.export.recheck`), as ``tuner export`` does.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from . import objective as O
from .errors import ConfigError
from .export import best_trial, holds, recheck
from .images import decode
from .report import figure, page, png, subplots, table
from .storage import StudySettings, make_storage, redact_url

TOP = 10  # trials in the constraint table


def load_study(st: StudySettings) -> Any:
    import optuna

    if st.storage.startswith("sqlite") and not Path(st.storage.split("///", 1)[-1]).exists():
        raise ConfigError(f"no study storage at {redact_url(st.storage)}; run `tuner tune study.name={st.name}` first")
    try:
        return optuna.load_study(study_name=st.name, storage=make_storage(st))
    except KeyError as e:
        raise ConfigError(f"study '{st.name}' not found in {redact_url(st.storage)}") from e


def optuna_plots(study: Any, multi: bool) -> list[str]:
    """History, importances, parallel coordinates (and the Pareto front): each plot, or why not."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plots = [("Pareto front", lambda: ovm.plot_pareto_front(study))] if multi else [
        ("Optimisation history", lambda: ovm.plot_optimization_history(study))]
    target = (lambda t: t.values[0]) if multi else None
    plots += [("Parameter importances (fANOVA)", lambda: ovm.plot_param_importances(study, target=target)),
              ("Parallel coordinates", lambda: ovm.plot_parallel_coordinate(study, target=target))]
    out = []
    for title, make in plots:
        try:
            ax = make()
            fig: Any = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 3.6)
            out += [f"<h2>{title}</h2>", figure(fig)]
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials or parameters for this plot
            out += [f"<h2>{title}</h2>", f"<p class=small>not drawn: {html.escape(str(e))}</p>"]
    return out


def trial_table(study: Any, objective: O.Objective) -> pd.DataFrame:
    """The top trials by value: their values, settings and every gate's worst image."""
    rows = []
    for t, gates in recheck(study, objective):
        row: dict[str, Any] = {"trial": t.number, **{f"value{i or ''}": v for i, v in enumerate(t.values)},
                               "every image holds": holds(gates), **t.params}
        for c, g in zip(objective.constraints, gates, strict=True):
            row[c.metric] = g.value
            row[f"{c.metric} worst"] = g.image or ""
        rows.append(row)
    df = pd.DataFrame(rows)
    if not len(df) or "value" not in df:
        return df
    return df.sort_values("value", ascending=objective.directions[0] == "minimize").head(TOP)


def metric_distributions(study: Any) -> str:
    """Histograms of each metric's image mean over the completed trials."""
    from optuna.trial import TrialState

    means = pd.DataFrame([t.user_attrs.get("metrics") or {} for t in
                          study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]).apply(
        pd.to_numeric, errors="coerce")
    cols = [c for c in means.columns if means[c].notna().any()]
    if not cols:
        return "<p class=small>no completed trial recorded metrics</p>"
    fig, axes = subplots(len(cols), 2.4)
    for ax, c in zip(axes[0], cols, strict=True):
        ax.hist(means[c].dropna(), bins=10)
        ax.set_title(c, fontsize=9)
    fig.tight_layout()
    return figure(fig)


def study_report(st: StudySettings, run_dir: Path, path: Path) -> Path:
    study = load_study(st)
    info = study.user_attrs.get("tuner") or {}
    if "objective" not in info:
        raise ConfigError(f"study '{st.name}' has no tuner record (not made by `tuner tune`)")
    objective = O.from_mapping(info["objective"])
    sections = []
    try:
        best, gates = best_trial(study, objective, allow_infeasible=True)
        ok = holds(gates)
        bad = [f"{c.describe()}: {g.value:.4g} on {g.image}" for c, g in zip(objective.constraints, gates, strict=True)
               if g.violation > 0]
        sections.append(
            f"<div class='verdict {'pass' if ok else 'fail'}'><b>best trial {best.number}</b>, value "
            f"{', '.join(f'{v:.4g}' for v in best.values)}; constraints hold on every image: "
            f"<b>{'yes' if ok else 'no'}</b>{'' if ok else ' (' + html.escape('; '.join(bad)) + ')'}. "
            f"{len(study.trials)} trial(s), {info.get('n_images')} image(s) at max_side {info.get('max_side')}; "
            f"searched {html.escape(', '.join(info.get('space', [])))}.</div>")
        sheet = run_dir / "trials" / f"{best.number:04d}" / "faces.png"
        if sheet.is_file():
            sections += ["<h2>Best trial: faces at 100 %</h2>", png(decode(sheet).rgb)]
        per = best.user_attrs.get("per_image") or {}
        if per:
            sections += ["<h2>Best trial, per image (click a header to sort)</h2>",
                         table(pd.DataFrame(per).rename_axis("image").reset_index())]
    except ConfigError as e:
        sections.append(f"<div class='verdict fail'>{html.escape(str(e))}</div>")
    sections += optuna_plots(study, objective.mode == "multi")
    sections += [f"<h2>Top {TOP} trials: gates per image (worst image shown)</h2>", table(trial_table(study, objective)),
                 "<h2>Metric distributions over trials (image means)</h2>", metric_distributions(study)]
    return page(f"tuner study {st.name}", sections, path)
