"""A study's MLflow record as tidy pandas frames.

The record and every name in it belong to ``studies.record`` (its writer is the runner's
``Tracker``); this module reads it only through ``studies.record``'s reader (``search_all``,
``read_cell``, ``read_parent``) and turns the rows into frames: one row per cell run with the run
columns (``RUN_COLUMNS``), the params typed back and the final metrics; per-epoch metrics
(``EPOCH_METRICS``, step = epoch), the ROC artifact and the per-image test predictions
(``ARTIFACT_PREDICTIONS``, cached per run) on request. Where the record lives (tracking URI,
client, the study's experiment) is ``analysis.store``'s; configurations and their replicates
(``group_replicates``) are ``analysis.replicates``'s.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.store import client_for, find_experiment, redact_uri, resolve_tracking_uri
from bnn.backbones import BACKBONES
from studies import record
from studies.record import (
    ARTIFACT_PREDICTIONS,
    EPOCH_METRICS,
    PREDICTION_COLUMNS,
    RUN_COLUMNS,
)

_INT = re.compile(r"[+-]?\d+")


def _typed(values: list[str | None]) -> pd.Series:
    """Param strings back to bool / int / float where every present value allows it."""
    present = [v for v in values if v is not None]
    if not present:
        return pd.Series(values, dtype=object)
    missing = len(present) < len(values)
    if all(v in ("True", "False") for v in present):
        converted = [None if v is None else v == "True" for v in values]
        return pd.Series(converted, dtype="boolean" if missing else bool)
    if all(_INT.fullmatch(v) for v in present):
        converted = [None if v is None else int(v) for v in values]
        return pd.Series(converted, dtype="Int64" if missing else "int64")
    try:
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype=float)
    except ValueError:
        return pd.Series(values, dtype=object)


def _row(run) -> tuple[dict, dict, dict]:
    row = record.read_cell(run)
    meta = dict(row.meta)
    meta["start_time"] = pd.to_datetime(row.start_time_ms, unit="ms", utc=True)
    meta["end_time"] = pd.to_datetime(row.end_time_ms, unit="ms", utc=True) if row.end_time_ms else pd.NaT
    meta["duration_s"] = (
        (row.end_time_ms - row.start_time_ms) / 1000.0
        if row.end_time_ms and row.start_time_ms
        else np.nan
    )
    return meta, row.params, row.metrics


def _fill_model_tags(frame: pd.DataFrame) -> None:
    """Fills model/family/binary from the backbone registry for runs that lack those tags."""
    if "backbone" not in frame or not frame[["model", "family", "binary"]].isna().any().any():
        return
    for i, name in frame["backbone"].items():
        if name in BACKBONES:
            spec = BACKBONES.get(name)
            for column, value in (
                ("model", spec.display_name),
                ("family", spec.family),
                ("binary", str(spec.binary).lower()),
            ):
                if frame.at[i, column] is None:
                    frame.at[i, column] = value


def load_runs(
    study: str,
    tracking_uri: str | None = None,
    include_unfinished: bool = False,
    include_stale: bool = False,
) -> pd.DataFrame:
    """One tidy row per cell run of a study.

    Args:
        study: Study name (= experiment name), or an experiment whose parent run has
            ``studies.record.TAG_STUDY`` = this name.
        tracking_uri: Any MLflow URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        include_unfinished: Also return FAILED / KILLED / RUNNING runs (their metrics may be NaN).
        include_stale: Also return runs the last ``studies run`` tagged stale (``TAG_STALE``: not
            cells of the study file since it was edited); their ``stale`` column says how they differ.

    Returns:
        Columns: the run columns (``run_id``, ``cell_id``, ``seed`` among the params, ``model``,
        ``family``, ``binary`` and ``synthetic`` as bools, ``data``, ``data_digest``,
        ``not_comparable`` and ``failure`` (the reasons, else missing), ``attempts`` (int),
        ``git_commit``, ``stale`` (how a run of an earlier version of the study file differs, else
        missing), ``status``, times), every param typed back (``freeze_backbone`` bool, ``seed`` int, numbers numeric,
        ``"None"`` as missing), and every final metric (``val_*``, ``test_*``, cost). ``attrs``:
        ``study``, ``tracking_uri`` (redacted), ``experiment_id``, ``parent_run_id``,
        ``parent_git_commit``, ``params``, ``metrics``, ``unfinished`` ({status: count} of the
        runs not FINISHED, whether or not included), ``stale`` ({how they differ: count} of the stale
        runs, whether or not included), ``stale_included``, ``loaded_at``.

    Raises:
        StudyNotFoundError: No such study; the message lists the experiments at the URI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    experiment = find_experiment(study, uri)
    client = client_for(uri)
    parents = record.search_all(client, experiment.experiment_id, record.ROLE_STUDY)
    cells = record.search_all(client, experiment.experiment_id, record.ROLE_CELL)
    unfinished = Counter(r.info.status for r in cells if r.info.status != "FINISHED")
    if not include_unfinished:
        cells = [r for r in cells if r.info.status == "FINISHED"]
    stale = Counter(r.data.tags[record.TAG_STALE] for r in cells if record.TAG_STALE in r.data.tags)
    if not include_stale:
        cells = [r for r in cells if record.TAG_STALE not in r.data.tags]

    metas, params, metrics = [], [], []
    for run in cells:
        meta, param, metric = _row(run)
        metas.append(meta)
        params.append(param)
        metrics.append(metric)
    param_names = sorted({k for p in params for k in p})
    metric_names = sorted({k for m in metrics for k in m})

    frame = pd.DataFrame(metas, columns=list(RUN_COLUMNS))
    columns = {}  # added in one go: a column at a time fragments a frame of hundreds of metrics
    for name in param_names:
        if name not in frame:
            columns[name] = _typed([p.get(name) for p in params]).to_numpy()
    for name in metric_names:
        columns[name] = np.array([m.get(name, np.nan) for m in metrics], dtype=float)
    if columns:
        frame = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    _fill_model_tags(frame)
    for column in ("binary", "synthetic"):
        frame[column] = frame[column].map({record.TRUE: True, record.FALSE: False}).astype("boolean")
        if not frame[column].isna().any():
            frame[column] = frame[column].astype(bool)
    frame["attempts"] = pd.to_numeric(frame["attempts"]).astype("Int64")
    if "study" in frame:
        frame["study"] = frame["study"].fillna(study)
    frame = frame.sort_values(["start_time", "run_id"], kind="stable").reset_index(drop=True)

    parent = record.read_parent(parents[0]) if parents else {}
    frame.attrs.update(
        study=parent.get("study") or study,
        experiment=experiment.name,
        experiment_id=experiment.experiment_id,
        tracking_uri=redact_uri(uri),
        parent_run_id=parent.get("run_id"),
        parent_git_commit=parent.get("git_commit"),
        objectives=parent.get("objectives", []),
        params=param_names,
        metrics=metric_names,
        unfinished=dict(sorted(unfinished.items())),
        stale=dict(sorted(stale.items())),
        stale_included=include_stale,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return frame


def load_epoch_history(
    run_ids,
    tracking_uri: str | None = None,
    metrics=EPOCH_METRICS,
) -> pd.DataFrame:
    """Per-epoch metrics of runs, for learning curves.

    Args:
        run_ids: Run ids (e.g. ``frame["run_id"]``).
        tracking_uri: MLflow URI (default as in ``load_runs``).
        metrics: Per-epoch metric names to read.

    Returns:
        Long frame with columns ``run_id``, ``step`` (epoch, from 0), ``metric``, ``value``,
        sorted by run, metric and step; metrics a run never logged are simply absent.
    """
    client = client_for(tracking_uri)
    rows = []
    for run_id in run_ids:
        for metric in metrics:
            for point in client.get_metric_history(run_id, metric):
                rows.append((run_id, int(point.step), metric, float(point.value)))
    frame = pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])
    frame = frame.astype({"run_id": str, "step": "int64", "metric": str, "value": float})
    return frame.sort_values(["run_id", "metric", "step"], kind="stable").reset_index(drop=True)


def load_roc(
    run_id: str, tracking_uri: str | None = None, split: str = "test"
) -> dict[str, np.ndarray]:
    """ROC points of a run from its ``metrics/roc_<split>.json`` artifact.

    Args:
        run_id: The cell's run id.
        tracking_uri: MLflow URI (default as in ``load_runs``).
        split: ``"test"`` (the artifact the runner logs).

    Returns:
        ``{"fpr": array, "tpr": array, "thresholds": array}``.

    Raises:
        FileNotFoundError: The run has no such artifact.
    """
    client = client_for(tracking_uri)
    artifact = f"metrics/roc_{split}.json"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except Exception as err:  # MLflow raises several types for a missing artifact
            raise FileNotFoundError(f"run {run_id} has no artifact {artifact}: {err}") from err
        data = json.loads(Path(path).read_text())
    return {key: np.asarray(data.get(key, []), dtype=float) for key in ("fpr", "tpr", "thresholds")}


_PREDICTIONS: dict[tuple[str, str], pd.DataFrame] = {}


def load_predictions(run_id: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Per-image test predictions of a run (its ``studies.record.ARTIFACT_PREDICTIONS``).

    Downloaded once per run and tracking URI (kept in memory for this process).

    Args:
        run_id: The cell's run id.
        tracking_uri: MLflow URI (default as in ``load_runs``).

    Returns:
        One row per test image with ``PREDICTION_COLUMNS``: ``path`` (str), ``label`` (int,
        1 = fake), ``prob_fake`` (float), ``source`` (str), in the order the runner wrote them.

    Raises:
        FileNotFoundError: The run has no such artifact (runs of older versions).
    """
    uri = resolve_tracking_uri(tracking_uri)
    key = (uri, run_id)
    if key not in _PREDICTIONS:
        client = client_for(uri)
        folder, name = ARTIFACT_PREDICTIONS.rsplit("/", 1)
        listed = {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
        if name not in listed:
            raise FileNotFoundError(f"run {run_id} has no artifact {ARTIFACT_PREDICTIONS}")
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, ARTIFACT_PREDICTIONS, tmp)
            table = pd.read_csv(path, dtype={"path": str, "source": str}, keep_default_na=False)
        missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"run {run_id}: {ARTIFACT_PREDICTIONS} lacks column(s) {missing}")
        table = table[list(PREDICTION_COLUMNS)].copy()
        table["label"] = table["label"].astype("int64")
        table["prob_fake"] = pd.to_numeric(table["prob_fake"], errors="coerce")
        _PREDICTIONS[key] = table
    return _PREDICTIONS[key].copy()


def load_all_predictions(
    run_ids: Iterable[str], tracking_uri: str | None = None
) -> dict[str, pd.DataFrame]:
    """``load_predictions`` of every run that has the artifact: ``{run_id: predictions}``
    (runs without it are left out)."""
    out = {}
    for run_id in dict.fromkeys(run_ids):
        try:
            out[run_id] = load_predictions(run_id, tracking_uri)
        except FileNotFoundError:
            continue
    return out
