"""``tuner <command> [hydra overrides]`` -- the only place that reads composed configs.

Each command has one primary config, ``conf/<command>.yaml``; arguments are Hydra
overrides, and Hydra's own flags work (``--cfg job``, ``--help``, ``-m``).
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, TunerError
from .paths import conf_dir

log = logging.getLogger("tuner")

USAGE = """usage: tuner <command> [key=value ...] [--cfg job] [--help]

commands:
  enhance    apply a pipeline or a preset to an image or a folder
  weights    list known model files: where each is, verified or missing
  metrics    list metrics: direction, range, needs, cost, availability here
  evaluate   score pipeline outputs (or existing outputs) against their inputs
  tune       run (or resume) an Optuna study over the pipeline's knobs
  export     write the best (or a chosen) trial of a study as a preset
  compare    regression gate: a candidate pipeline against a baseline (exit 0 pass, 1 fail, 2 error)
  report     a self-contained HTML report of a study, an evaluate or a compare result

Arguments are Hydra overrides, e.g.
  tuner enhance input=photo.jpg output=out/ model=RealESRGAN_x4plus params.tile=256 weights_dir=../shared/weights
  tuner enhance input=portraits/ output=out/ preset=best_preset.yaml
  tuner compare baseline=prod.yaml candidate=new.yaml out=cmp/
  tuner report study.name=default out=reports/default/
  tuner tune --cfg job          # print the composed config
"""


CONFIG_NAMES = {"metrics": "metrics_table"}  # conf/metrics/ is the metric-set group


def _commands() -> dict[str, Callable[[Any], int]]:
    from . import commands

    return {
        "enhance": commands.enhance,
        "weights": commands.weights,
        "metrics": commands.metrics,
        "evaluate": commands.evaluate,
        "tune": commands.tune,
        "export": commands.export,
        "compare": commands.compare,
        "report": commands.report,
    }


def error_code(cmd: str) -> int:
    """The exit code of a command that could not run (compare is a CI gate: 1 means "fails")."""
    from .errors import EXIT_COMPARE_ERROR, EXIT_ERROR

    return EXIT_COMPARE_ERROR if cmd == "compare" else EXIT_ERROR


def worst_code(cmd: str, codes: list[int]) -> int:
    """The exit code of a run whose jobs (one, or several with Hydra's ``-m``) exited with ``codes``:
    the worst of them, so a failing job is not hidden by a later one that passes.  From best to worst:
    0, a compare failure or a partial run, an error; any other code counts as the worst."""
    from .errors import EXIT_COMPARE_ERROR, EXIT_COMPARE_FAIL, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL

    order = [EXIT_OK, EXIT_COMPARE_FAIL, EXIT_COMPARE_ERROR] if cmd == "compare" else [EXIT_OK, EXIT_PARTIAL, EXIT_ERROR]
    return max(codes, key=lambda c: order.index(c) if c in order else len(order), default=0)


def expand_preset(args: list[str]) -> list[str]:
    """``preset=FILE`` becomes the preset's overrides, placed last so the preset wins."""
    from . import preset as presets

    out, extra = [], []
    for a in args:
        if a.startswith("preset=") and a != "preset=null":
            path = a.split("=", 1)[1]
            extra = presets.overrides(presets.load(path))
        out.append(a)
    return out + extra


def main(argv: list[str] | None = None) -> int:
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = args[0], args[1:]
    table = _commands()
    if cmd not in table:
        close = difflib.get_close_matches(cmd, table, n=1)
        print(f"tuner: unknown command {cmd!r}" + (f"; did you mean {close[0]!r}?" if close else "") + "\n\n" + USAGE,
              file=sys.stderr)
        return 2
    try:
        from .config import MOVED  # an override of a moved option would fail in Hydra, or with "+" be ignored

        for a in rest:
            key = a.split("=", 1)[0].lstrip("+~")
            if key in MOVED:
                raise ConfigError(f"{key} is now {MOVED[key]}")
        rest = expand_preset(rest) if cmd in ("enhance", "evaluate") else rest
        for a in rest:  # before Hydra creates runs/<study.name>/: a name must not leave that folder
            if a.split("=", 1)[0].lstrip("+~") == "study.name" and "=" in a:
                from .storage import check_study_name

                check_study_name(a.split("=", 1)[1])
    except TunerError as e:
        print(f"tuner {cmd}: error: {e}", file=sys.stderr)
        return error_code(cmd)
    codes: list[int] = []  # one per job: Hydra's -m runs app once per combination of the sweep

    def app(cfg: Any) -> None:
        from .config import to_dict
        from .errors import refuse_instantiation
        from .storage import redact_url

        try:
            refuse_instantiation(to_dict(cfg))
            codes.append(int(table[cmd](cfg)))
        except TunerError as e:
            log.error("%s", redact_url(str(e)))
            print(f"tuner {cmd}: error: {redact_url(str(e))}", file=sys.stderr)
            codes.append(error_code(cmd))
        except Exception as e:  # a bug: its traceback, with any password masked (Hydra would print the raw overrides)
            import traceback

            log.error("unexpected error:\n%s", redact_url("".join(traceback.format_exception(e))))
            print(f"tuner {cmd}: unexpected error: {e.__class__.__name__}: {redact_url(str(e))}", file=sys.stderr)
            codes.append(error_code(cmd))

    try:
        config_path = str(conf_dir())
    except TunerError as e:  # an incomplete installation: say so, no traceback
        print(f"tuner {cmd}: error: {e}", file=sys.stderr)
        return error_code(cmd)
    old_argv = sys.argv
    sys.argv = [f"tuner {cmd}", *rest]
    try:
        hydra.main(config_path=config_path, config_name=CONFIG_NAMES.get(cmd, cmd), version_base="1.3")(app)()
    except SystemExit as e:  # Hydra exits on bad overrides / --help
        code = int(e.code or 0) if not isinstance(e.code, str) else 1
        return error_code(cmd) if code else 0
    finally:
        sys.argv = old_argv
    rc = worst_code(cmd, codes)
    if len(set(codes)) > 1:
        print(f"tuner {cmd}: {len(codes)} jobs exited {codes}; exit {rc} (the worst)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
