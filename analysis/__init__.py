"""analysis: a study's MLflow record -> pandas frames, Pareto fronts, paper-style tables, figures.

Reads MLflow only (the record written by ``studies``; see ``analysis.runs`` for the contract).

Modules:
    runs: ``load_runs``, ``group_replicates``, ``load_epoch_history``, ``load_roc``,
        ``load_predictions`` (per-image test predictions, cached per run).
    stats: seeded bootstrap confidence intervals.
    pareto: ``nondominated`` (n objectives, each maximised or minimised), ``pareto_front`` for
        any (cost, quality) pair, ``pareto_set`` for a study's objectives.
    latency: measured latency and throughput per cell: hosts, replicates per host, the wording.
    objectives: the study's objectives, their Pareto set as a table, a front of any two metrics.
    literature: the published numbers of Lanzino et al. (CVPRW 2024), shipped as a CSV.
    provenance: study, run ids, git commit and time attached to every table and figure.
    protocol: the evaluation protocol's metrics (extra test sets, per source, robustness,
        calibration) and reliability points as frames per configuration.
    significance: paired tests (McNemar, AUC permutation test) and Holm's correction.
    paired: ablation rows against their RGB baseline on the same test images.
    tables: results tables (Tables 1-3 of the paper, with measured latency and throughput), the
        feature ablation (Table 4) with its significance marks, and the protocol's cross-dataset,
        per-source, robustness and calibration tables (``table_format``: Markdown, LaTeX, CSV).
    fronts: Figure 1 (accuracy against OPs), its measured-latency twin, any two metrics' front.
    plots: Figure 1 and its latency twin (re-exported from ``fronts``),
        learning curves, ROC curves, the cross-dataset heat map, robustness curves and
        reliability diagrams (Agg backend; ``figstyle``: what every figure shares).
"""

from __future__ import annotations

from analysis.pareto import pareto_front, pareto_set
from analysis.runs import (
    StudyNotFoundError,
    group_replicates,
    load_epoch_history,
    load_roc,
    load_runs,
)

__all__ = [
    "StudyNotFoundError",
    "group_replicates",
    "load_epoch_history",
    "load_roc",
    "load_runs",
    "pareto_front",
    "pareto_set",
]
