"""Measured latency of a study's cells: hosts, replicates per host, and what the report says.

The runner times each cell's selected checkpoint on the exported engine (``bnn.latency``) and logs,
on the cell's run (``studies.record``): ``latency_ms`` (batch 1, median milliseconds per image end
to end: extra input channels + network, at the cell's own resolution), ``latency_network_ms`` (the
network alone, same loop), ``throughput_ips`` (batch 32, images per second end to end), and, when
the study asks, the same at 224 px (``latency_224px_ms``, ...). Tags say where: ``latency_host``
(CPU model), ``latency_threads``, ``latency_engine``; or why not: ``latency_skipped``. Runs
recorded before latency was measured have none of these.

Timings compare only on one host. A host here is (CPU model, threads), labelled
``"<CPU model>, <threads> threads"``; figures and tables never average runs of different hosts
into one point or cell without saying so. The results and ablation tables show latency and
throughput with the columns, values and notes of ``table_columns``, ``table_values`` and
``table_text``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.replicates import group_replicates, is_grouped, replicate_keys
from analysis.table_format import DASH, Column

LATENCY = "latency_ms"
LATENCY_NETWORK = "latency_network_ms"
THROUGHPUT = "throughput_ips"
METRICS = (
    LATENCY,
    LATENCY_NETWORK,
    THROUGHPUT,
    "latency_224px_ms",
    "latency_network_224px_ms",
    "throughput_224px_ips",
)
HOST = "host"  # the column of host labels this module adds
HOSTS = "hosts"  # per configuration row: its runs' hosts, joined with "; "
NOT_RECORDED = "recorded before latency measurement existed"


def is_latency(metric: str) -> bool:
    """Whether ``metric`` is a measured speed (latency or throughput, any resolution)."""
    return metric in METRICS or metric.startswith(("latency_", "throughput_"))


def _text(value) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def host_label(frame: pd.DataFrame) -> pd.Series:
    """Per run, ``"<CPU model>, <threads> threads"`` (None where the run has no host tag)."""
    cpus = frame.get("latency_host", pd.Series(None, index=frame.index, dtype=object))
    threads = frame.get("latency_threads", pd.Series(None, index=frame.index, dtype=object))
    labels = []
    for cpu, n in zip(cpus, threads, strict=True):
        cpu, n = _text(cpu), _text(n)
        if cpu is None:
            labels.append(None)
            continue
        n = n.removesuffix(".0") if n else n
        labels.append(f"{cpu}, {n} thread{'' if n == '1' else 's'}" if n else cpu)
    return pd.Series(labels, index=frame.index, dtype=object, name=HOST)


def measured(frame: pd.DataFrame, metric: str = LATENCY) -> pd.Series:
    """Which rows have a value of ``metric`` (False for all when the column is missing)."""
    if metric not in frame:
        return pd.Series(False, index=frame.index)
    return frame[metric].notna()


def has_latency(frame: pd.DataFrame, metric: str = LATENCY) -> bool:
    """Whether any row has a measured ``metric``."""
    return bool(measured(frame, metric).any())


def hosts(frame: pd.DataFrame, metric: str = LATENCY) -> list[str]:
    """Distinct hosts of the rows with ``metric``, in order of first appearance.

    Works on runs (``host_label``) and on configuration rows of ``with_spread`` (``hosts``).
    """
    rows = frame[measured(frame, metric)]
    if HOST in rows:
        labels = rows[HOST]
    elif HOSTS in rows:
        labels = rows[HOSTS].dropna().str.split("; ").explode()
    else:
        labels = host_label(rows)
    return list(dict.fromkeys(label for label in labels if isinstance(label, str) and label))


def engines(frame: pd.DataFrame, metric: str = LATENCY) -> list[str]:
    """Distinct ``latency_engine`` values of the runs with ``metric``."""
    if "latency_engine" not in frame:
        return []
    values = frame.loc[measured(frame, metric), "latency_engine"]
    return list(dict.fromkeys(v for v in values if _text(v)))


def with_spread(grouped: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Configuration rows with each latency metric's std over seeds and their hosts.

    Args:
        grouped: ``group_replicates(runs, by=...)`` (its ``attrs["grouped_by"]`` says how).
        runs: The runs it was grouped from (``load_runs``); when they are ``grouped`` itself
            (already grouped, runs lost) only missing columns are added as NaN.

    Returns:
        A copy of ``grouped`` with ``<metric>_std`` (sample std, NaN for one measured run) for
        every latency metric of the runs, and ``hosts`` (the runs' hosts joined with ``"; "``,
        None where no run was measured).
    """
    out = grouped.copy()
    metrics = [m for m in METRICS if m in runs]
    if is_grouped(runs):
        for metric in metrics:
            if f"{metric}_std" not in out:
                out[f"{metric}_std"] = np.nan
        if HOSTS not in out:
            out[HOSTS] = None
        return out
    keys = grouped.attrs["grouped_by"]
    labels = runs[HOST] if HOST in runs else host_label(runs)
    runs = runs.assign(**{HOST: labels})
    groups = runs.groupby(keys, dropna=False, sort=False) if keys else [((), runs)]
    spread = {f"{m}_std": [] for m in metrics}
    joined = []
    for _, group in groups:  # the order of group_replicates' rows (same groupby)
        for metric in metrics:
            values = group[metric].dropna().to_numpy(dtype=float)
            spread[f"{metric}_std"].append(values.std(ddof=1) if values.size > 1 else np.nan)
        done = group[measured(group)]
        joined.append("; ".join(dict.fromkeys(h for h in done[HOST] if h)) or None)
    if len(joined) != len(out):
        raise ValueError("with_spread: grouped rows do not match the runs' groups")
    for column, values in spread.items():
        out[column] = values
    out[HOSTS] = joined
    return out


def group_by_host(runs: pd.DataFrame) -> pd.DataFrame:
    """``group_replicates`` with the host as one more key: one row per configuration and host.

    Seeds of one configuration timed on two hosts give two rows (a point per host), never one
    mean. Rows carry ``host`` (None for runs without latency), the latency metrics' means and, from
    ``with_spread``, their std over seeds. An already grouped frame is returned with the columns
    ``with_spread`` adds (its runs can no longer be split by host).
    """
    if is_grouped(runs):
        return with_spread(runs, runs)
    keys = replicate_keys(runs)
    runs = runs.assign(**{HOST: host_label(runs)})
    grouped = group_replicates(runs, by=[*keys, HOST])
    return with_spread(grouped, runs)


def skipped_reasons(frame: pd.DataFrame, metric: str = LATENCY) -> dict[str, int]:
    """``{reason: runs}`` for the runs without ``metric``: their ``latency_skipped`` tag, or
    ``NOT_RECORDED`` when the run has no such tag (runs from before latency was measured)."""
    if is_grouped(frame):
        return {}
    missing = frame[~measured(frame, metric)]
    tags = missing.get("latency_skipped", pd.Series(None, index=missing.index, dtype=object))
    reasons = [_text(t) or NOT_RECORDED for t in tags]
    return dict(pd.Series(reasons, dtype=object).value_counts(sort=True)) if reasons else {}


def describe_hosts(frame: pd.DataFrame, metric: str = LATENCY) -> str:
    """One sentence on where ``metric`` was measured (empty when nowhere).

    One host: ``"Latency measured on one host: <CPU>, <n> threads (<engine>)."``; several:
    ``"Latency measured on N hosts; compare within a host: host 1 = ..., host 2 = ..."``.
    """
    found = hosts(frame, metric)
    if not found and not has_latency(frame, metric):
        return ""
    engine = ", ".join(engines(frame, metric))
    engine = f" ({engine})" if engine else ""
    if len(found) <= 1:
        where = found[0] if found else "an unrecorded host"
        return f"Latency measured on one host: {where}{engine}."
    listed = "; ".join(f"host {i} = {h}" for i, h in enumerate(found, start=1))
    return f"Latency measured on {len(found)} hosts; compare within a host: {listed}{engine}."


def describe_missing(frame: pd.DataFrame, metric: str = LATENCY) -> str:
    """One sentence on the runs without ``metric`` and why (empty when every run has it)."""
    reasons = skipped_reasons(frame, metric)
    if not reasons:
        return ""
    total = int(sum(reasons.values()))
    why = "; ".join(f"{reason} ({n} run{'s' if n > 1 else ''})" for reason, n in reasons.items())
    if total == len(frame):
        return f"Latency was not measured: {why}."
    return f"Latency was not measured for {total} of {len(frame)} runs: {why}."


def describe(frame: pd.DataFrame, metric: str = LATENCY) -> str:
    """The report's paragraph on latency: where it was measured and which runs lack it."""
    return " ".join(
        t for t in (describe_hosts(frame, metric), describe_missing(frame, metric)) if t
    )


# --- in tables (analysis.tables, analysis.ablation) -----------------------------------------------

TABLE_KEYS = (LATENCY, f"{LATENCY}_std", THROUGHPUT, f"{THROUGHPUT}_std")


def table_columns(single_host: bool) -> list[Column]:
    """Latency and throughput (mean ± std over seeds); best/second marked only on one host."""
    return [
        Column(LATENCY, "Latency (ms)", "Latency (ms)", 2, "lower" if single_host else None,
               std=f"{LATENCY}_std"),
        Column(THROUGHPUT, "Throughput (img/s)", "Throughput (img/s)", 1,
               "higher" if single_host else None, std=f"{THROUGHPUT}_std"),
    ]


def table_values(grouped: pd.DataFrame) -> pd.DataFrame:
    """The latency columns of a table (``TABLE_KEYS`` and ``latency_host``) from configuration rows
    of ``with_spread``."""
    out = pd.DataFrame({c: grouped.get(c, np.nan) for c in TABLE_KEYS}, index=grouped.index)
    out["latency_host"] = grouped.get(HOSTS)
    return out


def table_text(runs: pd.DataFrame) -> tuple[str, list[str]]:
    """A caption phrase on where latency was measured and the notes explaining the columns."""
    found = hosts(runs)
    if not found and not has_latency(runs):
        phrase = ""
    elif len(found) <= 1:
        phrase = f" Latency and throughput measured on {found[0] if found else 'one host'}."
    else:
        phrase = f" Latency and throughput measured on {len(found)} hosts: compare within a host."
    note = (
        "Latency: median time per image at batch 1, end to end (extra input channels + network) "
        "on the exported engine at the cell's resolution; throughput: images per second at batch "
        f"32; mean ± std over seeds. {DASH}: not measured. "
    )
    note += describe(runs) or "Latency was not measured."
    if len(found) > 1:
        note += " Host of each row: CSV column latency_host."
    return phrase, [note]
