"""Published numbers of Lanzino et al. (CVPRW 2024), shipped as ``analysis/data/literature.csv``.

The CSV's header comments say where every number comes from; its ``source`` and
``transcribed_from`` columns repeat it per row. Values are the paper's, never ours: accuracy and
AUC in percent, parameters in millions, and the paper's "FLOPs (G)" column verbatim.
``published_points`` picks the rows a figure draws beside a study's points (``analysis.fronts``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.labels import dataset_name

LITERATURE_CSV = Path(__file__).resolve().parent / "data" / "literature.csv"
CITATION = (
    "Lanzino R., Fontana F., Diko A., Marini M. R., Cinque L. Faster Than Lies: Real-time Deepfake "
    "Detection using Binary Neural Networks. CVPR Workshops 2024"
)
SHORT_CITATION = "Lanzino et al., CVPRW 2024"


def load_literature(table: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """The published rows, optionally of one table and one dataset.

    Args:
        table: ``"results"`` (one results table per dataset) or ``"ablation"``; None for all.
        dataset: ``"cocofake"``, ``"dffd"`` or ``"cifake"``; None for all. The ablation rows have
            no dataset (the published table does not state it) and are kept when ``table`` is
            ``"ablation"``.

    Returns:
        Columns ``table``, ``dataset``, ``block`` (``paper``: the authors' BNext rows,
        ``reference``: rows the paper quotes from ``reference``), ``model``, ``backbone`` (our
        registry name where it is the same network), ``frozen``, ``features``, ``pretraining``,
        ``accuracy``, ``auc``, ``params_m``, ``flops_g_published``, ``source``,
        ``transcribed_from``.
    """
    frame = pd.read_csv(LITERATURE_CSV, comment="#", dtype={"frozen": "boolean"})
    for column in ("dataset", "reference", "model", "backbone", "features", "pretraining"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    if table is not None:
        frame = frame[frame["table"] == table]
    if dataset is not None and table != "ablation":
        frame = frame[frame["dataset"] == dataset]
    return frame.reset_index(drop=True)


def published_ops(frame: pd.DataFrame) -> pd.Series:
    """OPs per image implied by the published "FLOPs (G)" column, for plotting beside our OPs.

    For the paper's BNext rows the column is OPs in units of 1e8 (0.89 for BNext-T, whose OPs
    ``bnn.cost`` counts as 88.6e6). For the full-precision reference rows OPs = FLOPs and the
    column is read as labelled, in units of 1e9. This is an interpretation of the published unit
    (stated in every caption that uses it), not a measured value.

    Args:
        frame: Rows of ``load_literature``.

    Returns:
        OPs per image (NaN where the paper gives none), aligned with ``frame.index``.
    """
    scale = np.where(frame["block"] == "paper", 1e8, 1e9)
    return pd.Series(frame["flops_g_published"].to_numpy(dtype=float) * scale, index=frame.index)


def published_points(literature, frame: pd.DataFrame, quality: str) -> tuple[pd.DataFrame, str]:
    """Published rows to plot beside a study's points on an OPs axis, and the datasets they are of.

    Args:
        literature: None or False for none; True for those of the runs' dataset (when the runs
            have one dataset the paper has); a dataset name (``"cocofake"``); or rows of
            ``load_literature``.
        frame: The study's runs or configurations (for their dataset).
        quality: The plotted quality metric: ``<split>_accuracy`` or ``<split>_auc`` (others: none).

    Returns:
        The rows with their OPs in ``ops`` (``published_ops``) and the quality in ``y`` (percent),
        rows lacking either dropped; and their datasets' names joined with ``", "``.
    """
    column = {"accuracy": "accuracy", "auc": "auc"}.get(quality.partition("_")[2])
    if literature is None or literature is False or column is None:
        return pd.DataFrame(), ""
    if isinstance(literature, pd.DataFrame):
        rows = literature
    else:
        dataset = literature
        if literature is True:
            datasets = frame["dataset"].dropna().unique() if "dataset" in frame else []
            dataset = datasets[0] if len(datasets) == 1 else None
        rows = load_literature("results", dataset) if dataset else pd.DataFrame()
    if rows.empty:
        return rows, ""
    rows = rows.assign(ops=published_ops(rows), y=rows[column]).dropna(subset=["ops", "y"])
    datasets = rows["dataset"].dropna().unique()
    return rows, ", ".join(dataset_name(d) for d in datasets)
