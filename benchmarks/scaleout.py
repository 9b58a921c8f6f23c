"""Load figure of the study runner: cells per minute and the runner's overhead per cell, with 1, 3
and 8 workers, on SQLite files and on PostgreSQL (Optuna) + an MLflow server on PostgreSQL.

A grid of very short cells (BNext-micro, 16 px, 60 synthetic images, 1 epoch: a few seconds of
training each) is run by W worker processes started at the same second
(``python -m studies run FILE``). Every worker logs, per cell, its wall time from claim to the
end of its records, the time inside ``fit`` (training and evaluation, the runner's callbacks
excluded) and the difference, the runner's overhead: claiming the trial, the MLflow run and its
metrics, tags, artifacts and dataset inputs, the Optuna result (``studies.runner``'s
``cell_end`` event; the ``cell ... in X s (training and evaluation Y s, runner Z s)`` log line).
The baseline is the cell's own ``fit`` time, measured in the same run.

    python benchmarks/scaleout.py                       # SQLite and PostgreSQL, 1/3/8 workers
    python benchmarks/scaleout.py --backends sqlite --workers 1 3 --cells 12

Prints one row per (backend, workers): cells, wall seconds (first start to last exit), cells per
minute, median and 90th-percentile runner overhead per cell, that median as a share of a 60 s
cell (goal <= 2 %), how many benign creation races were retried (``studies.db_setup``), and
whether the run was clean (every worker exit 0, each cell exactly once, no ERROR line or
traceback). PostgreSQL needs the ``postgres`` extra and a local PostgreSQL (``initdb``,
``pg_ctl``); the throw-away cluster and server are those of ``tests/pg_mlflow.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the throw-away PostgreSQL cluster and MLflow server
sys.path.insert(0, str(REPO))  # benchmarks.results

from benchmarks.results import RECORD_HELP, recorded  # noqa: E402

STUDY = """\
name: load
dataset: synthetic
data_params: {{count: 60, image_size: 20, difficulty: 0.0}}
tracking_uri: {tracking}
storage: {storage}
runs_dir: {root}/runs
defaults: {{backbone: bnext_micro, resolution: 16, epochs: 1, batch_size: 16}}
grid:
  features: {{powerset: [sobel, fft, lbp]}}
seeds: {seeds}
log_checkpoint: false
"""
LINE = re.compile(r"cell (\w+) FINISHED in ([\d.]+) s \(training and evaluation ([\d.]+) s, runner ([\d.]+) s\)")


def run_grid(root: Path, tracking: str, storage: str, workers: int, cells: int) -> dict:
    """Runs a fresh grid of ``cells`` cells with ``workers`` processes started together."""
    seeds = list(range(max(1, cells // 8)))
    study = root / "load.yaml"
    study.write_text(STUDY.format(tracking=tracking, storage=storage, root=root, seeds=seeds))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BNN_CACHE_DIR": str(root.parent / "cache")}
    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "studies", "run", str(study), "--quiet"], cwd=root,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(workers)]
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - start
    finished = [m for out in outputs for m in LINE.findall(out)]
    overheads = sorted(float(m[3]) for m in finished)
    ids = [m[0] for m in finished]
    lines = [line for out in outputs for line in out.splitlines()]
    errors = [line for line in lines  # error log lines and the last line of each traceback
              if re.search(r"\bERROR\b", line) or re.match(r"^([\w.]+)(Error|Exception)\b", line)]
    retries = sum("retrying after" in line for line in lines)  # benign creation races, retried (db_setup)
    clean = all(p.returncode == 0 for p in processes) and len(ids) == len(set(ids)) == len(seeds) * 8 and not errors
    median = statistics.median(overheads) if overheads else float("nan")
    p90 = overheads[int(0.9 * (len(overheads) - 1))] if overheads else float("nan")
    return {"cells": len(ids), "wall_s": wall, "cells_per_min": 60 * len(ids) / wall, "overhead_median_s": median,
            "overhead_p90_s": p90, "share_of_60s": median / 60, "fit_median_s": statistics.median(
                float(m[2]) for m in finished) if finished else float("nan"), "clean": clean,
            "errors": errors[:4], "retries": retries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 3, 8])
    parser.add_argument("--cells", type=int, default=16, help="grid size (a multiple of 8)")
    parser.add_argument("--record", action="store_true", help=RECORD_HELP)
    args = parser.parse_args()
    with recorded("scaleout", args.record):
        rows = []
        with tempfile.TemporaryDirectory(prefix="bnn-load-") as tmp:
            tmp = Path(tmp)
            for backend in args.backends:
                for workers in args.workers:
                    root = tmp / f"{backend}-{workers}"
                    root.mkdir()
                    if backend == "sqlite":
                        row = run_grid(root, f"sqlite:///{root}/mlflow.db", f"sqlite:///{root}/optuna.db", workers,
                                       args.cells)
                    else:
                        from pg_mlflow import mlflow_tracking_server, postgres_cluster

                        with postgres_cluster() as cluster, mlflow_tracking_server(cluster.url("mlflow")) as server:
                            row = run_grid(root, server, cluster.url("optuna"), workers, args.cells)
                    rows.append({"backend": backend if backend == "sqlite" else "postgres + mlflow server",
                                 "workers": workers, **row})
                    print(rows[-1], flush=True)
        print("\n| backend | workers | cells | wall (s) | cells/min | fit median (s) | runner overhead median / p90 (s) "
              "| overhead / 60 s cell | store races retried | clean |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['backend']} | {r['workers']} | {r['cells']} | {r['wall_s']:.0f} | {r['cells_per_min']:.1f} | "
                  f"{r['fit_median_s']:.2f} | {r['overhead_median_s']:.3f} / {r['overhead_p90_s']:.3f} | "
                  f"{100 * r['share_of_60s']:.2f} % | {r['retries']} | {'yes' if r['clean'] else 'NO: ' + '; '.join(r['errors'])} |")
        return 0 if all(r["clean"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
