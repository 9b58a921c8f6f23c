"""Command line: ``python -m studies run|plan|status|validate|ui|submit FILE``."""

from __future__ import annotations

from studies import early_signals

if __name__ == "__main__":  # `python -m studies`: hold signals before anything else is imported
    early_signals.hold()

# Only light modules here: the commands import what they need (torch through any bnn module,
# mlflow, optuna, the studies modules that import them) so that `python -m studies` starts fast.
import argparse
import logging
import os
import signal
import sys

from rich.console import Console

from studies.db_setup import require_driver

console = Console(stderr=False)
# Where stdout is a log (a file, a pipe, `--workers` prefixes, a cluster job) rich would wrap at 80
# columns and break cell ids and names across lines; there tables take their natural width.
LOG_WIDTH = 1000


def _fit_console_to_output() -> None:
    """Tables and lines at their natural width when stdout is not a terminal (``COLUMNS`` wins)."""
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
        console.soft_wrap = True

EXAMPLES = {
    "run": """examples:
  python -m studies run quickstart.yaml               # bundled study, synthetic data, ~10 min on 2 CPUs
  python -m studies run ablation_cocofake.yaml        # Table 4; needs COCO 2014 + COCOFake and a GPU
  python -m studies run quickstart.yaml --set epochs=1 --set tracking_uri=sqlite:///tmp/mlflow.db
  python -m studies run quickstart.yaml --workers 2   # two single-threaded worker processes
Run the same command in several terminals (or machines sharing a PostgreSQL storage and an MLflow
server) to split the cells between workers; re-running resumes where it stopped.""",
    "plan": """examples:
  python -m studies plan quickstart.yaml
  python -m studies plan results_cocofake.yaml --set seeds=[0,1,2]""",
    "status": """examples:
  python -m studies status quickstart.yaml""",
    "validate": """examples:
  python -m studies validate my_study.yaml            # exit code 2 and file:line: key: message if invalid""",
    "ui": """examples:
  python -m studies ui quickstart.yaml                # MLflow UI on http://127.0.0.1:5000
  python -m studies ui quickstart.yaml --port 5001
  python -m studies ui quickstart.yaml --optuna       # and optuna-dashboard on http://127.0.0.1:5001
It prints (and opens, where there is a browser) the study's runs sorted by its objective; --optuna also
prints the link to the study's page in optuna-dashboard (one trial per cell, its cell_id a user
attribute). Ctrl-C or SIGTERM stops the servers and everything they started; the exit status is then 0.
A study tracked on an http(s):// server gets that server's link instead, and no MLflow UI is started.""",
    "submit": """examples:
  python -m studies submit results_cocofake.yaml --slurm --workers 8 --gres gpu:1 --time 24:00:00 \\
      --set tracking_uri=http://mlflow-host:5000 --set storage=postgresql://bnn@db-host/optuna
  python -m studies submit quickstart.yaml --slurm --workers 2 --nodelist node1 --dry-run   # print only
It writes runs/<study>/slurm/<study>.sbatch (one array task per worker, logs beside it) and submits it
with sbatch. Submitting again resumes whatever is left. More than one worker on SQLite stores needs
--nodelist with one node (docs/scaling_out.md).""",
}


def _load(args):
    from bnn.config import parse_overrides
    from studies.spec import load_study

    # a bad --set: ValueError, exit code 2 in main
    return load_study(args.file, parse_overrides(args.set), max_cells=args.max_cells)


def cmd_validate(args) -> int:
    study = _load(args)
    what = f"search of {study.spec.search.trials} trials" if study.is_search else f"{len(study.cells)} cells"
    console.print(f"{study.path}: ok, study '{study.name}', {what}")
    return 0


def cmd_plan(args) -> int:
    from studies import status_tables

    study = _load(args)
    states, _, _ = status_tables.study_states(study)
    console.print(f"study [bold]{study.name}[/] ({study.path})")
    console.print(f"  tracking: {study.tracking_uri}   optuna storage: {study.storage}")
    console.print(f"  dataset: {study.base.dataset}   resolution: {study.base.resolution}   "
                  f"epochs: {study.base.epochs}   batch size: {study.base.batch_size}")
    objectives = ", ".join(f"{o.metric} ({'max' if o.direction == 'maximize' else 'min'})"
                           for o in study.spec.objectives)
    several = len(study.spec.objectives) > 1
    console.print(f"  objective{'s' if several else ''}: {objectives}"
                  + ("; Pareto set in `status`, the first selects" if several else ""))
    latency = study.spec.latency
    console.print("  latency: " + (f"measured per cell, {latency.threads} thread(s), median of {latency.repeats}"
                                   + (f", also at {latency.resolutions} px" if latency.resolutions else "")
                                   + (f", seeds {latency.seeds} only" if latency.seeds is not None else "")
                                   if latency.enabled else "off"))
    if study.is_search:
        kind = "multi-objective TPE" if several else "TPE"
        console.print(f"  search: {study.spec.search.trials} {kind} trials over {list(study.spec.search.space)}")
        return 0
    console.print(status_tables.cell_table(study, states, f"{len(study.cells)} cells", with_ops=True))
    _print_stale(status_tables, study)
    return 0


def _print_stale(status_tables, study) -> None:
    note = status_tables.stale_note(study)
    if note:
        console.print(f"[yellow]note:[/] {note}")


def cmd_status(args) -> int:
    from studies import status_tables

    study = _load(args)
    states, trials, optuna_study = status_tables.study_states(study)
    counts = {k: sum(1 for c in study.cells if states.get(c.cell_id, "pending") == k)
              for k in ("done", "not comparable", "running", "waiting", "failed", "pending")}
    console.print(f"study [bold]{study.name}[/]: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                  + f" of {len(study.cells)} cells")
    if study.cells:
        console.print(status_tables.cell_table(study, states, "", trials=trials))
    pareto = status_tables.pareto_table(study, optuna_study)
    if pareto is not None:
        console.print(pareto)
    _print_stale(status_tables, study)
    console.print(f"MLflow: {study.tracking_uri} (experiment '{study.name}'); "
                  f"browse with: python -m studies ui {args.file}")
    return 0


def cmd_run(args) -> int:
    from bnn.signals import StopRequest

    # A signal only sets a flag (nothing raises in library code); one that came during start-up counts.
    with StopRequest(already=early_signals.received()) as stop:
        if args.workers > 1:
            return _run_workers(args, stop)
        return _run(args, stop)


def _run_workers(args, stop) -> int:
    """``run --workers N``: N worker processes running ``run FILE --workers 1 --quiet`` (same
    ``--set`` values) on the study's shared stores, each single-threaded unless ``OMP_NUM_THREADS``
    is set; their output lines prefixed ``[wK]``. A signal is forwarded to every worker, which stops
    at its next safe point; the exit status is the worst: 130 interrupted, 2 invalid input, 1 any
    other failure, else 0."""
    import os
    import subprocess
    import threading
    import time


    study = _load(args)  # an invalid file, --set or missing driver: one error here, not one per worker
    for url in (study.storage, study.tracking_uri):
        require_driver(url)
    command = [sys.executable, "-m", "studies", "run", args.file, "--workers", "1", "--quiet"]
    for item in args.set:
        command += ["--set", item]
    command += ["--max-cells", str(args.max_cells)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    console.print(f"study [bold]{study.name}[/]: starting {args.workers} workers "
                  f"(OMP_NUM_THREADS={env['OMP_NUM_THREADS']} each)")
    lock = threading.Lock()

    def relay(name: str, stream) -> None:
        for line in stream:
            with lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

    workers, relays = [], []
    for k in range(1, args.workers + 1):
        if stop:
            break
        # A session of its own: a signal reaches a worker once, forwarded by this process.
        worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=1, start_new_session=True)
        workers.append(worker)
        relays.append(threading.Thread(target=relay, args=(f"w{k}", worker.stdout), daemon=True))
        relays[-1].start()
    forwarded = None
    while any(w.poll() is None for w in workers):
        if stop and stop.signal != forwarded:
            forwarded = stop.signal
            for w in workers:
                if w.poll() is None:
                    w.send_signal(getattr(signal, stop.signal))
        time.sleep(0.2)
    for thread in relays:
        thread.join(timeout=10)
    codes = [w.returncode for w in workers]
    console.print("workers: " + ", ".join(f"w{k} exit {c}" for k, c in enumerate(codes, 1))
                  + f"; progress: python -m studies status {args.file}")
    if stop or 130 in codes:
        return 130
    if 2 in codes:
        return 2
    return 1 if any(codes) else 0


def _run(args, stop) -> int:
    from tqdm.auto import tqdm

    from studies import status_tables
    from studies.cell_queue import DONE_STATES
    from studies.runner import Runner, check_inputs, epoch_text

    study = _load(args)
    for url in (study.storage, study.tracking_uri):  # before anything is created
        require_driver(url)
    check_inputs(study)
    if stop:
        console.print(f"[yellow]interrupted[/] ({stop.signal}) before anything was created")
        return 130
    total = study.spec.search.trials if study.is_search else len(study.cells)
    console.print(f"study [bold]{study.name}[/]: {total} cells, data: {study.base.dataset}, "
                  f"tracking {study.tracking_uri}")
    bar = tqdm(total=total, desc=study.name, unit="cell", disable=not sys.stderr.isatty() or args.quiet)

    def on_event(kind: str, info: dict) -> None:
        if kind == "cell_start":
            bar.set_postfix_str(f"{info['cell'].cell_id} {info['cell'].axes_label()}")
            logging.getLogger("studies").info("cell %s start: %s", info["cell"].cell_id, info["cell"].axes_label())
        elif kind == "epoch":
            bar.set_postfix_str(f"{info['cell'].cell_id} {epoch_text(info['stats'])}")
        elif kind == "cell_end":
            bar.update(1)
            if "seconds" in info:  # runner: claim, MLflow run and records, Optuna; not training
                logging.getLogger("studies").info(
                    "cell %s %s in %.2f s (training, evaluation and latency %.2f s, runner %.3f s)", info["cell"].cell_id,
                    info["status"], info["seconds"], info["fit_seconds"], info["runner_seconds"])
            else:
                logging.getLogger("studies").info("cell %s %s", info["cell"].cell_id, info["status"])
        elif kind == "waiting":
            bar.set_postfix_str(f"waiting for {info['running']} cell(s) running elsewhere")
        elif kind == "registered":
            logging.getLogger("studies").info("best cell registered as models:/%s/%s (MLflow Model Registry)",
                                              info["name"], info["version"])

    runner = Runner(study, on_event=on_event, stop=stop)
    done_before = sum(1 for s in status_tables.study_states(study)[0].values() if s in DONE_STATES)
    bar.update(done_before)
    summary = runner.run()
    bar.close()
    states, trials, optuna_study = status_tables.study_states(study)
    if not study.is_search:
        console.print(status_tables.cell_table(study, states, f"study {study.name}", trials=trials))
    pareto = status_tables.pareto_table(study, optuna_study)
    if pareto is not None:
        console.print(pareto)
    _print_stale(status_tables, study)
    what = "trials" if study.is_search else "cells"
    console.print(f"this run: {len(summary.completed)} {what} finished ({len(summary.not_comparable)} not "
                  f"comparable), {len(summary.failed)} failed, {summary.skipped_done} already done before")
    for cell_id, message in summary.not_comparable.items():
        console.print(f"[magenta]not comparable[/] {cell_id}: {message} (metrics logged; not run again)")
    for cell_id, message in summary.failed.items():
        console.print(f"[red]failed[/] {cell_id}: {message}")
    if summary.failed:
        console.print("[red]some cells failed[/]: fix the cause and re-run the same command to try them again")
    for cell_id in summary.taken_over:
        console.print(f"[yellow]taken over[/] {cell_id}: this worker stalled past the heartbeat grace period "
                      "and another worker runs the cell")
    for name, version in summary.registered.items():
        console.print(f"best cell registered: models:/{name}/{version} (serve: mlflow models serve -m "
                      f"models:/{name}/{version} --env-manager local)")
    console.print(f"browse: python -m studies ui {args.file}")
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: re-run the same command to resume")
        return 130
    return 1 if summary.failed else 0


def cmd_submit(args) -> int:
    from studies.slurm import SlurmError, SlurmOptions, build_job, submit

    if not args.slurm:
        raise SlurmError("submit needs a scheduler: --slurm (the only one supported)")
    options = SlurmOptions(workers=args.workers, time=args.time, gres=args.gres, partition=args.partition,
                           cpus_per_task=args.cpus_per_task, nodelist=args.nodelist)
    options.check()  # a bad --time before the study is loaded
    study = _load(args)
    for url in (study.storage, study.tracking_uri):
        require_driver(url)
    from studies.spec import MAX_CELLS

    job = build_job(study, args.set, options, max_cells=None if args.max_cells == MAX_CELLS else args.max_cells)
    if args.dry_run:  # the script only (plain text: redirect it into a file); nothing written or submitted
        sys.stdout.write(job.text)
        print(f"dry run: nothing written or submitted (submit would write {job.script_path})", file=sys.stderr)
        return 0
    job_id = submit(job)
    print(f"submitted job {job_id}: {args.workers} array task(s) of study {study.name}\n"
          f"  script: {job.script_path}\n  logs:   {job.log_pattern(job_id, '<task>')}\n"
          f"  progress: python -m studies status {args.file}; submit again (or sbatch the script) to resume")
    return 0


def cmd_ui(args) -> int:
    from studies.ui import serve

    optuna_port = (args.optuna_port or args.port + 1) if args.optuna else None
    return serve(_load(args), args.port, open_browser=not args.no_browser,  # plain print: a URL unwrapped
                 optuna_port=optuna_port)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (1 or more), not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    early_signals.hold()  # first: a Ctrl-C during the imports below is recorded, never swallowed
    try:
        return _main(argv)
    finally:
        try:
            early_signals.release()
        except KeyboardInterrupt:  # arrived after the command ended: nothing left to stop
            pass


def _main(argv: list[str] | None) -> int:
    _fit_console_to_output()
    from bnn.data import DatasetLayoutError
    from bnn.errors import EXIT_INVALID, exit_status_help, quiet_storage_faults, run_cli
    from studies.spec import MAX_CELLS

    status = exit_status_help("some cells failed (run)")
    parser = argparse.ArgumentParser(prog="python -m studies", description=__doc__.replace("``", ""), epilog=status,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {"run": cmd_run, "plan": cmd_plan, "status": cmd_status, "validate": cmd_validate, "ui": cmd_ui,
                "submit": cmd_submit}
    helps = {
        "run": "run a study's cells (resumes; several workers may share a storage)",
        "plan": "list the cells with their status and cost, without running anything",
        "status": "progress and results of a study",
        "validate": "check a study file only",
        "ui": "start the MLflow UI (and with --optuna optuna-dashboard) on 127.0.0.1 for the study",
        "submit": "write a Slurm array job for the study (one worker per task) and submit it with sbatch",
    }
    for name, handler in handlers.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name], epilog=f"{EXAMPLES[name]}\n\n{status}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("file", help="study file; a bare name resolves to the bundled studies/ folder")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a study key or a defaults (FitConfig) key, e.g. epochs=1")
        p.add_argument("--max-cells", type=_positive, default=MAX_CELLS, metavar="N",
                       help=f"refuse a grid of more cells (default {MAX_CELLS:,}; counted before any is built)")
        if name == "run":
            p.add_argument("--quiet", action="store_true", help="no progress bar")
            p.add_argument("--workers", type=_positive, default=1, metavar="N",
                           help="worker processes on this machine (default 1); each single-threaded "
                                "(OMP_NUM_THREADS=1) unless OMP_NUM_THREADS is set")
        if name == "submit":
            p.add_argument("--slurm", action="store_true", help="as a Slurm array job (required: the only scheduler)")
            p.add_argument("--workers", type=_positive, default=1, metavar="N", help="array tasks, one worker each")
            p.add_argument("--time", metavar="LIMIT", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS; SIGTERM "
                           "comes a tenth of it before (10 s to 5 min), and the cell stops cleanly")
            p.add_argument("--gres", metavar="GRES", help="generic resources per task, e.g. gpu:1")
            p.add_argument("--partition", metavar="P", help="Slurm partition (default: the cluster's)")
            p.add_argument("--cpus-per-task", type=_positive, metavar="C",
                           help="CPUs per task (the worker's OMP_NUM_THREADS; default 1)")
            p.add_argument("--nodelist", metavar="NODE", help="run every task on these nodes (one node allows "
                           "SQLite stores with several workers)")
            p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
        if name == "ui":
            p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
            p.add_argument("--no-browser", action="store_true", help="print the link only")
            p.add_argument("--optuna", action="store_true",
                           help="also start optuna-dashboard on the study's Optuna storage (127.0.0.1)")
            p.add_argument("--optuna-port", type=int, default=None, metavar="PORT",
                           help="optuna-dashboard's port (default: --port + 1)")
        p.set_defaults(func=handler)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    quiet_storage_faults()
    for noisy in ("alembic", "mlflow", "optuna", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # StudyFileError (a ValueError) and every other user error: bnn.errors' one mapping.
    extra = {DatasetLayoutError: lambda err: (f"data missing for study {args.file}: {err}", EXIT_INVALID)}

    def command() -> int:
        if args.command != "run":  # only run stops at safe points; the others stop at once
            early_signals.release()
        return args.func(args)

    return run_cli(command, extra)


if __name__ == "__main__":
    sys.exit(main())
