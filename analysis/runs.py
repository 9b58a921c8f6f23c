"""A study's MLflow record as tidy pandas frames.

The record and every name in it belong to ``studies.record`` (its writer is the runner's
``Tracker``); this module reads it only through ``studies.record``'s reader (``search_all``,
``read_cell``, ``read_parent``) and turns the rows into frames: one row per cell run with the run
columns (``RUN_COLUMNS``), the params typed back and the final metrics; per-epoch metrics
(``EPOCH_METRICS``, step = epoch), the ROC artifact and the per-image test predictions
(``ARTIFACT_PREDICTIONS``, cached per run) on request.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from analysis.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci
from studies import record
from studies.record import (
    ARTIFACT_PREDICTIONS,
    COST_METRICS,
    EPOCH_METRICS,
    PREDICTION_COLUMNS,
    RUN_COLUMNS,
)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Params that do not define a configuration: replicates differ only in these.
REPLICATE_EXCLUDE = (
    record.PARAM_SEED, "output_dir", record.PARAM_AXES, "device", "num_workers"
)
_INT = re.compile(r"[+-]?\d+")


class StudyNotFoundError(LookupError):
    """No experiment of that study at the tracking URI.

    Attributes:
        study: The name asked for.
        tracking_uri: Where it was looked for (credentials removed).
        experiments: Names of the experiments that exist there.
        reason: Why, when it is not simply a missing experiment (e.g. no database file).
    """

    def __init__(
        self, study: str, tracking_uri: str, experiments: list[str], reason: str = ""
    ) -> None:
        self.study = study
        self.tracking_uri = tracking_uri
        self.experiments = experiments
        self.reason = reason
        known = ", ".join(experiments) if experiments else "(none)"
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"no study {study!r} at {tracking_uri}{detail}; experiments there: {known}"
        )


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redact_uri(uri: str) -> str:
    """The URI without a password (``postgresql://user:***@host/db``), safe to print in reports."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _missing_sqlite(uri: str) -> str | None:
    """The path of a ``sqlite:///`` database file that does not exist (None otherwise)."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:" and not Path(path).exists():
            return path
    return None


def client_for(tracking_uri: str | None = None):
    """An ``MlflowClient`` for the URI; a missing SQLite file is an error (it is not created)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    missing = _missing_sqlite(uri)
    if missing:
        raise FileNotFoundError(f"no MLflow database at {missing} (tracking URI {uri})")
    return MlflowClient(tracking_uri=uri)


def list_experiments(tracking_uri: str | None = None) -> list[str]:
    """Names of the active experiments at the tracking URI."""
    return [e.name for e in client_for(tracking_uri).search_experiments()]


def find_experiment(study: str, tracking_uri: str | None = None):
    """The MLflow experiment of a study (by experiment name, else by its parent's ``TAG_STUDY`` tag).

    Raises:
        StudyNotFoundError: Listing the experiments that exist at the URI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    missing = _missing_sqlite(uri)
    if missing:
        raise StudyNotFoundError(
            study, redact_uri(uri), [], reason=f"no MLflow database at {missing}"
        )
    client = client_for(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is not None and experiment.lifecycle_stage == "active":
        return experiment
    experiments = client.search_experiments()
    if "'" not in study and experiments:  # a parent run tagged with the study, in one query
        found = client.search_runs(
            [e.experiment_id for e in experiments],
            filter_string=f"tags.`{record.TAG_STUDY}` = '{study}'",
            max_results=1,
        )
        if found:
            return client.get_experiment(found[0].info.experiment_id)
    raise StudyNotFoundError(study, redact_uri(uri), [e.name for e in experiments])


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
    from bnn.backbones import BACKBONES

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
) -> pd.DataFrame:
    """One tidy row per cell run of a study.

    Args:
        study: Study name (= experiment name), or an experiment whose parent run has
            ``studies.record.TAG_STUDY`` = this name.
        tracking_uri: Any MLflow URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        include_unfinished: Also return FAILED / KILLED / RUNNING runs (their metrics may be NaN).

    Returns:
        Columns: the run columns (``run_id``, ``cell_id``, ``seed`` among the params, ``model``,
        ``family``, ``binary`` and ``synthetic`` as bools, ``data``, ``data_digest``,
        ``not_comparable`` and ``failure`` (the reasons, else missing), ``attempts`` (int),
        ``git_commit``, ``status``, times), every param typed back (``freeze_backbone`` bool, ``seed`` int, numbers numeric,
        ``"None"`` as missing), and every final metric (``val_*``, ``test_*``, cost). ``attrs``:
        ``study``, ``tracking_uri`` (redacted), ``experiment_id``, ``parent_run_id``,
        ``parent_git_commit``, ``params``, ``metrics``, ``unfinished`` ({status: count} of the
        runs not FINISHED, whether or not included), ``loaded_at``.

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
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return frame


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The config params of a frame from ``load_runs`` (``attrs["params"]``, else inferred)."""
    names = frame.attrs.get("params")
    if names is None:
        metrics = set(metric_columns(frame))
        names = [c for c in frame.columns if c not in RUN_COLUMNS and c not in metrics]
    return [c for c in names if c in frame.columns]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The final metrics of a frame from ``load_runs`` (``attrs["metrics"]``, else inferred)."""
    names = frame.attrs.get("metrics")
    if names is None:
        names = [
            c
            for c in frame.columns
            if c.startswith(("val_", "test_"))
            or c in COST_METRICS
            or c in ("best_epoch", "skipped_images")
        ]
    return [c for c in names if c in frame.columns]


def replicate_keys(frame: pd.DataFrame) -> list[str]:
    """Params that define a configuration: all but seed, output dir, axes label, device, workers."""
    return [c for c in param_columns(frame) if c not in REPLICATE_EXCLUDE]


def _join(values) -> str:
    return ",".join(
        str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))
    )


def _shadowed_interval(metric: str, metrics: list[str]) -> bool:
    """Whether ``metric`` is a run's interval (``<m>_ci_low``/``_ci_high``) of an aggregated
    quality metric ``<m>``, whose seed-bootstrap interval columns have the same names."""
    for end in ("_ci_low", "_ci_high"):
        base = metric.removesuffix(end)
        if base != metric and base in metrics and base.startswith(("val_", "test_")):
            return True
    return False


def group_replicates(
    frame: pd.DataFrame,
    by: list[str] | None = None,
    metrics: list[str] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Replicates (seeds) of the same configuration folded into one row.

    Args:
        frame: From ``load_runs``.
        by: Columns that identify a configuration; default every param but ``seed``,
            ``output_dir``, ``axes``, ``device`` and ``num_workers``.
        metrics: Metrics to aggregate; default every final metric.
        level: Coverage of the bootstrap interval.
        resamples: Bootstrap resamples.
        seed: Seed of the bootstrap (the same frame always gives the same intervals).

    Returns:
        One row per configuration, in order of first appearance: the ``by`` columns, the
        descriptive columns (``model``, ``family``, ``binary``, ``data``, ``synthetic``,
        ``study``), ``n`` (replicates), ``seeds``, ``run_ids`` and ``cell_ids`` (comma-joined),
        and per metric ``<metric>`` (mean over replicates, NaNs skipped); quality metrics
        (``val_*``, ``test_*``) also get ``<metric>_std`` (sample std, NaN for n = 1),
        ``<metric>_ci_low`` and ``<metric>_ci_high`` (percentile bootstrap of the mean over
        seeds, NaN for n < 2). A run's own interval over images (``test_accuracy_ci_low`` as the
        runner logs it) has the name of that column: it is left out when its metric is
        aggregated (read it from the runs). ``attrs`` carries over, plus ``grouped_by``.
    """
    keys = list(by) if by is not None else replicate_keys(frame)
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise KeyError(f"group_replicates: no column(s) {missing}; columns: {list(frame.columns)}")
    metrics = list(metrics) if metrics is not None else metric_columns(frame)
    metrics = [m for m in metrics if not _shadowed_interval(m, metrics)]
    descriptive = [
        c
        for c in ("model", "family", "binary", "data", "synthetic", "study")
        if c in frame.columns and c not in keys
    ]

    rows = []
    grouped = frame.groupby(keys, dropna=False, sort=False) if keys else [((), frame)]
    for key, group in grouped:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        for column in descriptive:
            row[column] = group[column].iloc[0]
        row["n"] = len(group)
        row["seeds"] = _join(group["seed"]) if "seed" in group else ""
        row["run_ids"] = _join(group["run_id"]) if "run_id" in group else ""
        row["cell_ids"] = _join(group["cell_id"]) if "cell_id" in group else ""
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            finite = values[~np.isnan(values)]
            row[metric] = finite.mean() if finite.size else np.nan
            if metric.startswith(("val_", "test_")):
                row[f"{metric}_std"] = finite.std(ddof=1) if finite.size > 1 else np.nan
                low, high = bootstrap_ci(finite, level=level, resamples=resamples, seed=seed)
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows.append(row)
    out = pd.DataFrame(rows)
    for key in keys:  # keep the dtypes of the key columns (bool stays bool, ints stay ints)
        if key in out and len(out):
            out[key] = out[key].astype(frame[key].dtype)
    out.attrs.update(frame.attrs)
    out.attrs["grouped_by"] = keys
    return out


def is_grouped(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` comes from ``group_replicates``."""
    return "grouped_by" in frame.attrs


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
