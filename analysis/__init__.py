"""analysis: a study's MLflow record -> pandas frames, Pareto fronts, paper-style tables, figures.

Reads MLflow only (the record written by ``studies``; see ``analysis.runs`` for the contract).

Modules:
    store: where the record lives: tracking URI, client, a study's experiment
        (``StudyNotFoundError``).
    runs: ``load_runs``, ``load_epoch_history``, ``load_roc``, ``load_predictions`` (per-image
        test predictions, cached per run).
    replicates: which params define a configuration, ``group_replicates`` (seeds folded into one
        row), the quality metrics of a frame.
    stats: seeded bootstrap confidence intervals.
    pareto: ``nondominated`` (n objectives, each maximised or minimised), ``pareto_front`` for
        any (cost, quality) pair, ``pareto_set`` for a study's objectives.
    latency: measured latency and throughput per cell: hosts, replicates per host, the wording.
    objectives: the study's objectives, their Pareto set as a table, a front of any two metrics.
    literature: the published numbers of Lanzino et al. (CVPRW 2024), shipped as a CSV.
    labels: dataset names, frozen/trainable, a setting's label (feature sets:
        ``bnn.feature_sets``).
    provenance: study, run ids, git commit and time attached to every table and figure.
    protocol: the evaluation protocol's metrics (extra test sets, per source, robustness,
        calibration) and reliability points as frames per configuration.
    significance: paired tests (McNemar, AUC permutation test) and Holm's correction.
    paired: ablation rows against their RGB baseline on the same test images.
    table_format: ``Table`` and ``Column``: Markdown, LaTeX (booktabs) and CSV, best marked.
    tables: the results tables (Tables 1-3 of the paper, with measured latency and throughput).
    ablation: the feature ablation (Table 4) with its significance marks.
    protocol_tables: the protocol's cross-dataset, per-source, robustness and calibration tables.
    figstyle: what every figure shares (Agg canvas, footer, colours, labels, ``save_figure``).
    fronts: Figure 1 (accuracy against OPs), its measured-latency twin, any two metrics' front.
    plots: learning curves and ROC curves.
    protocol_plots: the cross-dataset heat map, robustness curves and reliability diagrams.
"""

from __future__ import annotations

from analysis.pareto import pareto_front, pareto_set
from analysis.replicates import group_replicates
from analysis.runs import load_epoch_history, load_roc, load_runs
from analysis.store import StudyNotFoundError

__all__ = [
    "StudyNotFoundError",
    "group_replicates",
    "load_epoch_history",
    "load_roc",
    "load_runs",
    "pareto_front",
    "pareto_set",
]
