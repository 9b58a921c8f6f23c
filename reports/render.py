"""Executes the report notebooks of a study with papermill and exports them.

The notebook runs on a kernel of the current interpreter, whatever kernels are installed: a
kernelspec (argv = this ``sys.executable -m ipykernel_launcher``) is written to a temporary folder
that goes first on ``JUPYTER_PATH`` while papermill runs, under a name no installed kernel uses.
Outputs (figures, tables, the executed notebook, HTML without code) go to ``reports/out/<study>``
by default and are logged as artifacts (``report/``) of the study's parent MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from analysis.store import find_experiment, redact_uri, resolve_tracking_uri
from studies.record import ROLE_STUDY, filter_role

NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"
DEFAULT_NOTEBOOK = NOTEBOOKS_DIR / "study_report.ipynb"
DEFAULT_OUT = Path("reports") / "out"
KERNEL_NAME = "bnn-reports-current-python"
ARTIFACT_PATH = "report"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ReportError(RuntimeError):
    """A report notebook failed.

    Attributes:
        notebook: The executed notebook (with the error in its failing cell).
        ename: Exception class raised in the cell.
        evalue: Its message.
        traceback: The cell's traceback, ANSI colours removed.
        cell_index: Index of the failing cell.
    """

    def __init__(
        self, notebook: Path, ename: str, evalue: str, traceback: list[str], cell_index: int | None
    ):
        self.notebook, self.ename, self.evalue = notebook, ename, evalue
        self.traceback, self.cell_index = traceback, cell_index
        super().__init__(f"{ename}: {evalue}")

    def summary(self, lines: int = 12) -> str:
        """Which cell failed, the error, and the last lines of its traceback."""
        tail = "\n".join(self.traceback).splitlines()[-lines:]
        where = f"cell {self.cell_index}" if self.cell_index is not None else "a cell"
        return "\n".join(
            [
                f"report notebook failed in {where}: {self.ename}: {self.evalue}",
                *tail,
                f"executed notebook: {self.notebook}",
            ]
        )


@dataclass
class RenderResult:
    """What ``render`` wrote.

    Attributes:
        out_dir: Folder of the report.
        notebook: The executed notebook.
        html: The HTML export (no code cells).
        files: Every file under ``out_dir``.
        parent_run_id: The study's parent run the report was logged to (None if not logged).
    """

    out_dir: Path
    notebook: Path
    html: Path
    files: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None


def kernel_spec() -> dict:
    """A kernelspec that starts an IPython kernel on this interpreter, with this code importable."""
    root = str(Path(__file__).resolve().parent.parent)  # the folder holding analysis/ and reports/
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--log-level=CRITICAL",
        ],
        "display_name": f"Python {sys.version.split()[0]} ({sys.executable})",
        "language": "python",
        "env": {
            "PYTHONPATH": path,
            "MPLBACKEND": "Agg",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        },
        "metadata": {"debugger": False},
    }


@contextmanager
def current_interpreter_kernel() -> Iterator[str]:
    """Within the block, a kernel name resolves to this interpreter (temporary kernelspec).

    Yields:
        The kernel name to give papermill.
    """
    previous = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="bnn-reports-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, previous) if p)
        try:
            yield KERNEL_NAME
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


def execute(
    notebook: Path, output: Path, parameters: dict, cwd: Path, timeout: int | None = None
) -> None:
    """Runs ``notebook`` with papermill on this interpreter's kernel, writing ``output``.

    Raises:
        ReportError: A cell raised (``output`` then holds the notebook up to the failing cell).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with current_interpreter_kernel() as kernel_name:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=parameters,
                kernel_name=kernel_name,
                language="python",
                progress_bar=False,
                log_output=False,
                cwd=str(cwd),
                execution_timeout=timeout,
            )
        except PapermillExecutionError as err:
            traceback = [_ANSI.sub("", line) for line in (err.traceback or [])]
            raise ReportError(
                output, err.ename, _ANSI.sub("", str(err.evalue)), traceback, err.cell_index
            ) from None


def export_html(notebook: Path, html: Path) -> Path:
    """HTML of an executed notebook without code cells, prompts or stderr (warnings, logs)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.get("outputs", [])
                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
    exporter = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
    return html


def log_report(study: str, tracking_uri: str, out_dir: Path) -> str | None:
    """Logs ``out_dir`` as artifacts ``report/`` of the study's parent run; returns its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = find_experiment(study, tracking_uri)
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=filter_role(ROLE_STUDY),
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if not parents:
        return None
    run_id = parents[0].info.run_id
    client.log_artifacts(run_id, str(out_dir), artifact_path=ARTIFACT_PATH)
    return run_id


def render(
    study: str,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    notebook: str | Path = DEFAULT_NOTEBOOK,
    parameters: dict | None = None,
    log: bool = True,
    timeout: int | None = None,
) -> RenderResult:
    """Renders the report of a study: figures, tables, executed notebook, HTML; logs it to MLflow.

    Args:
        study: Study (= MLflow experiment) name.
        out_dir: Output folder; default ``reports/out/<study>`` under the working directory.
        tracking_uri: MLflow URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        notebook: The parameterised notebook to run.
        parameters: Extra notebook parameters (``quality_metric``, ``cost_metric``, ``literature``,
            ``front_metrics``).
        log: Log the report as artifacts ``report/`` of the study's parent run.
        timeout: Per-cell time limit in seconds (None: none).

    Raises:
        StudyNotFoundError: No such study at the URI (lists the experiments there).
        ReportError: A notebook cell failed; the HTML of the failed notebook is still written.
    """
    uri = resolve_tracking_uri(tracking_uri)
    find_experiment(study, uri)  # fail fast, before a kernel starts
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT / study
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / "report.ipynb"
    html = out / "report.html"
    values = {"tracking_uri": uri, "study": study, "output_dir": str(out), **(parameters or {})}
    try:
        execute(Path(notebook), executed, values, cwd=Path.cwd(), timeout=timeout)
    finally:
        if executed.exists():
            export_html(executed, html)
    parent = log_report(study, uri, out) if log else None
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return RenderResult(out, executed, html, files, parent)


def describe_uri(tracking_uri: str | None) -> str:
    """The tracking URI as shown to users (default resolved, password removed)."""
    return redact_uri(resolve_tracking_uri(tracking_uri))
