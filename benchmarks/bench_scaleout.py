"""Study throughput with 1, 2 and 3 `tuner tune` workers on one PostgreSQL study.

    python benchmarks/bench_scaleout.py [--workers 1 2 3] [--trials 12] [--images 6] [--max-side 128]
                                        [--storage postgresql://...]

Without --storage it starts a throw-away PostgreSQL server with `.ci/postgres` (and stops it).
Each worker count gets a fresh database, a fresh stage cache and the same study (the default
objective and search space, realesr-general-x4v3 from ../shared/weights, tracking off, pruning
off so that every trial scores every image and the counts compare), run side by side in one
invocation.  Printed per worker count:

- wall: from starting the workers until the last exits (imports and model loading included);
- trials/min over that wall time, and over the trials' own span (first start to last finish,
  read from the storage: the study proper, start-up excluded);
- CPU: the workers' user+system seconds over (wall x cores), i.e. how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, WEIGHTS, need_weights


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(workers: int, url: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, float]:
    import optuna

    cache = work / f"cache-{workers}"
    cmd = [sys.executable, "-m", "tuner.cli", "tune", f"study.name=bench{workers}", f"study.storage={url}",
           f"study.n_trials={args.trials}", f"weights_dir={WEIGHTS}", f"dataset.path={data}",
           f"dataset.max_side={args.max_side}", "tracking=none", "study.pruner.enabled=false", f"paths.runs_dir={work / 'runs'}"]
    env = dict(os.environ, TUNER_CACHE_DIR=str(cache))
    cpu0, t0 = children_cpu(), time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-3000:]}")
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    ts = [t for t in optuna.load_study(study_name=f"bench{workers}", storage=url).get_trials(deepcopy=False)
          if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ts) == args.trials, f"{len(ts)} trials finished, expected {args.trials}"
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    cores = len(os.sched_getaffinity(0))
    return {"wall_s": wall, "per_min_wall": 60 * args.trials / wall, "span_s": span,
            "per_min_span": 60 * args.trials / span, "cpu_busy": cpu / (wall * cores)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--storage", default=None, help="a PostgreSQL URL (default: a throw-away server)")
    args = ap.parse_args()
    need_weights("realesr-general-x4v3.pth")
    pg = ROOT / ".ci" / "postgres"
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        data = work / "portraits"
        data.mkdir()
        for src in sorted(p for p in (ROOT / "datasets" / "portraits").iterdir()
                          if p.suffix in (".jpg", ".png"))[: args.images]:
            (data / src.name).symlink_to(src)
        server = None
        if args.storage is None:
            server = Path(tempfile.mkdtemp(prefix="bench-pg-", dir="/tmp"))
            base = subprocess.run([str(pg), "start", str(server)], check=True, capture_output=True,
                                  text=True).stdout.strip()
        else:
            base = args.storage
        try:
            import sqlalchemy as sa

            eng = sa.create_engine(base, isolation_level="AUTOCOMMIT")
            rows = []
            for w in args.workers:
                name = f"bench_scaleout_{w}"
                with eng.connect() as c:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    c.execute(sa.text(f'CREATE DATABASE "{name}"'))
                rows.append((w, run(w, base.rsplit("/", 1)[0] + "/" + name, args, data, work)))
            eng.dispose()
        finally:
            if server is not None:
                subprocess.run([str(pg), "stop", str(server)], check=False)
    cores = len(os.sched_getaffinity(0))
    print(f"{args.trials} trials, {args.images} portraits at max_side={args.max_side}, realesr-general-x4v3, "
          f"{cores} cores, PostgreSQL")
    print("| workers | wall | trials/min (wall) | trials/min (study span) | CPU busy |")
    print("|---|---|---|---|---|")
    one = rows[0][1]
    for w, r in rows:
        print(f"| {w} | {r['wall_s']:.1f} s | {r['per_min_wall']:.1f} ({r['per_min_wall'] / one['per_min_wall']:.2f}x) "
              f"| {r['per_min_span']:.1f} ({r['per_min_span'] / one['per_min_span']:.2f}x) | {100 * r['cpu_busy']:.0f} % |")


if __name__ == "__main__":
    main()
