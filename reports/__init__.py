"""reports: parameterised notebooks that turn a study's MLflow record into figures and tables.

``python -m reports render STUDY`` executes ``reports/notebooks/study_report.ipynb`` with
papermill on the current interpreter and writes ``reports/out/<study>/`` (see ``reports.render``).
"""

from __future__ import annotations

from reports.render import DEFAULT_NOTEBOOK, RenderResult, ReportError, render

__all__ = ["DEFAULT_NOTEBOOK", "RenderResult", "ReportError", "render"]
