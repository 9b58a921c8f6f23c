"""Command line: ``python -m reports render STUDY [--out DIR] [--tracking-uri URI]``."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
examples:
  python -m reports render quickstart
      report of study "quickstart" from sqlite:///mlflow.db into reports/out/quickstart/
  python -m reports render ablation_cocofake --tracking-uri http://127.0.0.1:5000 --out /tmp/report
  python -m reports render demo --param quality_metric=test_auc --param literature=false
  python -m reports render demo --front latency_ms,eval_heldout_auc
      also draws eval_heldout_auc against latency_ms with their Pareto front (objective_front.*)
  MLFLOW_TRACKING_URI=postgresql://user@db/mlflow python -m reports render ablation_dffd --no-log

writes figure1.png/.pdf/.svg, learning_curves.*, roc_front.*, results_<dataset>.md/.tex/.csv,
ablation.md/.tex/.csv, report.ipynb (executed) and report.html (no code), and logs them as
artifacts "report/" of the study's parent MLflow run. Where the study has their data, also:
figure1_latency.* (accuracy against measured latency, per host), pareto_set.md/.tex/.csv (two or
more objectives: the configurations no other beats on all of them) and objective_front.* (the
first two objectives, or --front X,Y, with their front);
cross_dataset.* and cross_dataset_auc.* (extra test sets), per_source.* and per_source_<set>.*,
robustness.* and robustness_curves.* (perturbations), reliability.* (test predictions) and
calibration.*; the ablation then marks rows that differ from RGB alone (McNemar, AUC permutation
test, Holm-corrected).

exit status: 0 success; 1 a notebook cell failed (its error and the tail of the notebook's
traceback are printed); 2 invalid input: no such study (the experiments at the tracking URI are
listed), an unknown --param, bad arguments (one line 'error: ...', nothing created); 130 interrupted.
The same codes as python -m bnn and python -m studies (bnn/errors.py).
"""


def _parameter(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _pair(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) != 2:
        raise argparse.ArgumentTypeError(f"expected two metric names X,Y, got {text!r}")
    return names


# Notebook parameters that render sets from its own arguments (STUDY, --tracking-uri, --out).
_SET_BY_RENDER = ("study", "tracking_uri", "output_dir")


def _check_parameters(notebook, parameters: dict) -> None:
    """Every ``--param`` must be a parameter of the notebook (papermill would inject an unknown one
    silently and the report would ignore it); raises ``ValueError`` naming it and the valid ones."""
    from papermill import inspect_notebook

    valid = [name for name in inspect_notebook(str(notebook)) if name not in _SET_BY_RENDER]
    for key in parameters:
        if key in _SET_BY_RENDER:
            raise ValueError(f"--param {key}: set by render itself (STUDY, --tracking-uri, --out)")
        if key not in valid:
            raise ValueError(f"--param {key}: unknown notebook parameter; valid: {', '.join(valid) or '(none)'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reports",
        description="Reports of studies from their MLflow record.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render",
        help="execute the report notebook of a study and export it",
        description="Execute reports/notebooks/study_report.ipynb for STUDY with papermill on this "
        "interpreter, export figures, tables and HTML, and log them to MLflow.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument("study", metavar="STUDY", help="study name (= MLflow experiment name)")
    render.add_argument("--out", metavar="DIR", help="output folder (default: reports/out/STUDY)")
    render.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    render.add_argument(
        "--param",
        metavar="KEY=VALUE",
        action="append",
        type=_parameter,
        default=[],
        help="notebook parameter, VALUE read as JSON when it parses "
        "(quality_metric, cost_metric, literature, front_metrics); repeatable",
    )
    render.add_argument(
        "--front",
        metavar="X,Y",
        type=_pair,
        help="two metric columns to draw against each other with their Pareto front "
        "(objective_front.*; default: the study's first two objectives, if it has two)",
    )
    render.add_argument("--include-stale", action="store_true",
                        help="also show runs of an earlier version of the study file (labelled stale)")
    render.add_argument("--notebook", metavar="PATH", help="another parameterised notebook to run")
    render.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    render.add_argument(
        "--timeout", type=int, metavar="S", help="time limit per notebook cell (seconds)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Deferred for start-up speed only: --help and argument errors answer without loading
    # pandas, MLflow and torch (no import cycle needs it).
    from analysis.store import StudyNotFoundError
    from bnn.errors import EXIT_INVALID, EXIT_OK, EXIT_PARTIAL, run_cli
    from reports.render import ARTIFACT_PATH, DEFAULT_NOTEBOOK, ReportError, describe_uri, render

    notebook = args.notebook or DEFAULT_NOTEBOOK

    def command() -> int:
        parameters = dict(args.param)
        if args.front:
            parameters["front_metrics"] = args.front
        if args.include_stale:
            parameters["include_stale"] = True
        _check_parameters(notebook, parameters)
        result = render(
            args.study,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            notebook=notebook,
            parameters=parameters,
            log=not args.no_log,
            timeout=args.timeout,
        )
        print(f"report of {args.study!r} in {result.out_dir} ({len(result.files)} files)")
        print(f"  html: {result.html}")
        if result.parent_run_id:
            print(
                f"  logged to MLflow run {result.parent_run_id} ({describe_uri(args.tracking_uri)}), "
                f"artifacts {ARTIFACT_PATH}/"
            )
        return EXIT_OK

    # Every other user error (a path, a value): bnn.errors' one mapping.
    extra = {
        StudyNotFoundError: lambda err: (str(err), EXIT_INVALID),
        ReportError: lambda err: (err.summary(), EXIT_PARTIAL),  # keeps the notebook's traceback tail
    }
    return run_cli(command, extra)

if __name__ == "__main__":
    sys.exit(main())
