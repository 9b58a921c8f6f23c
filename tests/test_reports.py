"""reports/: ``python -m reports render`` on a real SQLite MLflow store (``study_records``, written
by ``tests/mlflow_records.py``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from reports.__main__ import EXAMPLES, _check_parameters, build_parser, main
from reports.render import DEFAULT_NOTEBOOK

EXPECTED = [
    "figure1.png",
    "figure1.pdf",
    "figure1.svg",
    "figure1_latency.png",  # the demo record has measured latency (mlflow_records.latency_of)
    "figure1_latency.pdf",
    "figure1_latency.svg",
    "pareto_set.md",  # and two objectives (mlflow_records.OBJECTIVES)
    "pareto_set.tex",
    "pareto_set.csv",
    "objective_front.png",
    "objective_front.pdf",
    "objective_front.svg",
    "learning_curves.png",
    "learning_curves.pdf",
    "learning_curves.svg",
    "roc_front.png",
    "roc_front.pdf",
    "roc_front.svg",
    "results_synthetic.md",
    "results_synthetic.tex",
    "results_synthetic.csv",
    "ablation.md",
    "ablation.tex",
    "ablation.csv",
    "report.ipynb",
    "report.html",
]


@pytest.fixture(scope="module")
def records(study_records):
    return study_records


@pytest.fixture(scope="module")
def no_python3_kernel(tmp_path_factory) -> dict[str, str]:
    """An environment whose only ``python3`` kernelspec is broken: the report must not use it."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "/nonexistent/python",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "broken",
                "language": "python",
            }
        )
    )
    return {**os.environ, "JUPYTER_PATH": str(root)}


def _render(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reports", "render", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def rendered(records, no_python3_kernel, tmp_path_factory):
    """``python -m reports render demo`` from a fresh folder, default output folder."""
    cwd = tmp_path_factory.mktemp("cwd")
    result = _render(
        "demo", "--tracking-uri", records["demo"].tracking_uri, cwd=cwd, env=no_python3_kernel
    )
    return result, cwd / "reports" / "out" / "demo"


@pytest.mark.integration
def test_render_writes_every_file(rendered):
    result, out = rendered
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED)
    assert str(out) in result.stdout


# What a study adds with the evaluation protocol's data (see tests/test_protocol_report.py).
PROTOCOL_STEMS = (
    "cross_dataset",
    "cross_dataset_auc",
    "per_source",
    "robustness",
    "robustness_curves",
    "reliability",
    "calibration",
)


@pytest.mark.integration
def test_render_without_protocol_data_has_no_protocol_sections(rendered):
    """The demo record has no extra test sets, perturbations, per-source or calibration metrics
    and no predictions: none of those files, and no empty section."""
    _, out = rendered
    assert not [p.name for p in out.iterdir() if p.stem.startswith(PROTOCOL_STEMS)]
    html = (out / "report.html").read_text()
    for heading in ("Cross-dataset", "Per-source", "Robustness", "Calibration"):
        assert heading not in html
    assert "significantly different" not in (out / "ablation.md").read_text()


@pytest.mark.integration
def test_render_png_is_a_real_image(rendered):
    _, out = rendered
    for name in (
        "figure1.png",
        "figure1_latency.png",
        "objective_front.png",
        "learning_curves.png",
        "roc_front.png",
    ):
        pixels = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000, name
        assert pixels.std() > 10, name  # not blank
    assert (out / "figure1.pdf").read_bytes().startswith(b"%PDF")
    assert "<svg" in (out / "figure1.svg").read_text()


def test_render_html_has_no_code(rendered):
    _, out = rendered
    html = (out / "report.html").read_text()
    for code in ("load_runs(", "from analysis import", "save_figure(", "tracking_uri ="):
        assert code not in html
    assert "Figure 1" in html and "Feature ablation" in html and "Learning curves" in html
    assert html.count("data:image/png;base64") == 6
    assert "Downloading artifacts" not in html and "TqdmWarning" not in html
    assert "<table>" in html  # the Markdown tables, rendered


def test_render_tables_and_notebook(rendered, records):
    _, out = rendered
    tex = (out / "results_synthetic.tex").read_text()
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
    assert f"% study: demo (parent run {records['demo'].parent_run_id}" in tex
    assert "**" in (out / "ablation.md").read_text()
    notebook = nbformat.read(out / "report.ipynb", as_version=4)
    assert notebook.metadata.papermill.parameters["study"] == "demo"
    assert not any(
        o.get("output_type") == "error" for c in notebook.cells for o in c.get("outputs", [])
    )


def test_render_latency_and_objectives(rendered):
    """Measured latency on two hosts: the twin of Figure 1, the tables' columns, the report's
    words; two objectives: their Pareto set and front."""
    _, out = rendered
    html = (out / "report.html").read_text()
    assert "Figure 1 against measured latency" in html and "Trade-offs between objectives" in html
    assert "Latency measured on 2 hosts; compare within a host" in html
    assert "Latency was not measured for 2 of 13 runs" in html
    assert "Pareto front, host 2" in (out / "figure1_latency.svg").read_text()
    results = (out / "results_synthetic.md").read_text()
    assert "| Latency (ms) | Throughput (img/s) |" in results
    assert "measured on 2 hosts: compare within a host" in results
    pareto_set = (out / "pareto_set.md").read_text()
    assert "↑ test_auc (%)" in pareto_set and "↓ latency_ms (ms)" in pareto_set


@pytest.mark.slow  # a second render (about 30 s on 2 cores)
@pytest.mark.integration
def test_render_without_latency_or_objectives(records, tmp_path):
    """A study recorded before latency and objectives: no latency figure, no objectives section;
    the report says latency was not measured, and why; the tables show dashes."""
    result = _render(
        "other", "--tracking-uri", records["other"].tracking_uri, "--out", str(tmp_path),
        "--no-log", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert "figure1.png" in names and "results_synthetic.md" in names
    assert not {n for n in names if n.startswith(("figure1_latency", "pareto_set", "objective_"))}
    html = (tmp_path / "report.html").read_text()
    assert "Latency was not measured: recorded before latency measurement existed" in html
    assert "Trade-offs between objectives" not in html
    assert "| – | – |" in (tmp_path / "results_synthetic.md").read_text()


def test_render_logs_report_to_parent_run(rendered, records):
    client = MlflowClient(tracking_uri=records["demo"].tracking_uri)
    logged = {
        Path(a.path).name for a in client.list_artifacts(records["demo"].parent_run_id, "report")
    }
    assert {
        "report.html",
        "figure1.png",
        "figure1.pdf",
        "results_synthetic.tex",
        "report.ipynb",
    } <= logged
    study_file = client.list_artifacts(records["demo"].parent_run_id, "study")
    assert [Path(a.path).name for a in study_file] == ["demo.yaml"]


@pytest.mark.integration
def test_failing_notebook_exits_nonzero_with_the_error(records, tmp_path):
    result = _render(
        "broken",
        "--tracking-uri",
        records["broken"].tracking_uri,
        "--out",
        str(tmp_path),
        "--no-log",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "report notebook failed in cell" in result.stderr
    assert "KeyError" in result.stderr and "test_auc" in result.stderr
    assert "executed notebook:" in result.stderr
    assert (tmp_path / "report.html").exists()  # the failed notebook is still exported


def test_missing_study_exits_2_listing_experiments(records, capsys, tmp_path):
    assert (
        main(
            [
                "render",
                "nope",
                "--tracking-uri",
                records["demo"].tracking_uri,
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nope" in err and "demo" in err and "broken" in err
    missing_db = f"sqlite:///{tmp_path}/absent.db"
    assert main(["render", "demo", "--tracking-uri", missing_db]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()


def test_every_example_of_the_help_is_a_valid_command():
    """The commands ``--help`` shows parse as written and their ``--param``/``--front`` name
    parameters of the report notebook (an option or a parameter renamed breaks them here)."""
    commands = [line.split("python -m reports ", 1)[1] for line in EXAMPLES.splitlines()
                if "python -m reports " in line]
    assert len(commands) == 5
    for command in commands:
        args = build_parser().parse_args(shlex.split(command))
        assert args.command == "render" and args.study, command
        parameters = {**dict(args.param), **({"front_metrics": args.front} if args.front else {})}
        _check_parameters(DEFAULT_NOTEBOOK, parameters)
