"""After a cell trained: its evaluation protocol and latency, and completing finished cells.

A finished cell's selected checkpoint is evaluated on the study's extra test sets and robustness
sweep (``bnn.protocol``) and timed on the binary engine (``bnn.latency``). Cells that finished
before an ``evaluate``/``robustness`` entry was added or changed, or before the study's ``latency``
settings applied, get the missing metrics from their kept checkpoint (``complete_protocol``),
without retraining.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bnn.checkpoint import load_detector
from bnn.evaluation import evaluate
from bnn.latency import EngineMissing, measure
from bnn.protocol import evaluate_protocol, protocol_metric_names
from bnn.splits import load_splits, make_loader
from studies.cell_queue import CellQueue, is_finished
from studies.db_setup import study_lock
from studies.record import (
    ARTIFACT_CHECKPOINT_DIR,
    TAG_EVAL_PREFIX,
    TAG_LATENCY_ENGINE,
    TAG_LATENCY_HOST,
    TAG_LATENCY_SKIPPED,
    TAG_LATENCY_THREADS,
    TAG_ROBUST_PREFIX,
)
from studies.record_writer import Tracker, protocol_tags
from studies.schema import LATENCY_ENV, Latency
from studies.spec import Cell, Study

log = logging.getLogger(__name__)


def evaluate_cell_protocol(study: Study, cell: Cell, checkpoint: Path, val_threshold: float | None,
                           should_stop: Callable[[], bool] | None = None,
                           test_sets: list | None = None, perturbations: list | None = None) -> dict[str, float]:
    """The study's extra test sets and robustness sweep on a cell's selected checkpoint
    (``bnn.protocol``); ``{}`` when the study has neither.

    Args:
        study: The study (its ``test_sets`` and ``perturbations`` unless given).
        cell: The cell.
        checkpoint: Its selected checkpoint.
        val_threshold: The EER threshold on validation; ``None``: taken from the validation
            split again (a cell finished before the threshold was logged).
        should_stop: Polled between batches.
        test_sets: Only these test sets.
        perturbations: Only these perturbations.
    """
    test_sets = study.test_sets if test_sets is None else test_sets
    perturbations = study.perturbations if perturbations is None else perturbations
    if not test_sets and not perturbations:
        return {}
    model, config = load_detector(checkpoint, cell.config.device)
    device = next(model.parameters()).device
    splits = load_splits(cell.config)
    if val_threshold is None:
        loader = make_loader(splits["val"], cell.config, device, shuffle=False)
        val_threshold = evaluate(model, loader, device, amp=cell.config.amp, desc="val",
                                 max_batches=cell.config.max_eval_batches)[1].eer_threshold
    return evaluate_protocol(model, cell.config, val_threshold=val_threshold, test_split=splits["test"],
                             test_sets=test_sets, perturbations=perturbations, device=device,
                             should_stop=should_stop)


LATENCY_OFF = f"not timed: latency is off for this study (latency.enabled: false, or {LATENCY_ENV}=off)"


def measure_cell_latency(settings: Latency, cell: Cell, checkpoint: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Latency metrics (``bnn.latency``) of a cell's selected checkpoint on this host, and the tags
    saying where and how they were measured.

    Returns:
        ``({}, {TAG_LATENCY_SKIPPED: why})`` when the study switched latency off (``LATENCY_OFF``),
        times only other seeds (``latency.seeds``) or the engine is missing; else the
        metrics and the ``TAG_LATENCY_HOST``, ``TAG_LATENCY_THREADS``, ``TAG_LATENCY_ENGINE`` tags.
    """
    if not settings.enabled:
        return {}, {TAG_LATENCY_SKIPPED: LATENCY_OFF}
    if not settings.times(cell.config.seed):
        return {}, {TAG_LATENCY_SKIPPED: f"not timed: the study times only seeds {settings.seeds} (latency.seeds)"}
    model, config = load_detector(checkpoint, "cpu")
    try:
        measured = measure(model, config.resolution, tuple(settings.resolutions), settings.threads,
                           settings.repeats)
    except EngineMissing as err:
        log.warning("cell %s: latency not measured: %s", cell.cell_id, err)
        return {}, {TAG_LATENCY_SKIPPED: str(err)}
    log.info("cell %s: latency %.2f ms (network %.2f ms), %.0f images/s at batch 32, %s, %d thread(s), "
             "measured in %.1f s", cell.cell_id, measured.metrics["latency_ms"],
             measured.metrics["latency_network_ms"], measured.metrics["throughput_ips"], measured.engine,
             measured.threads, measured.seconds)
    return measured.metrics, {TAG_LATENCY_HOST: measured.host, TAG_LATENCY_THREADS: str(measured.threads),
                              TAG_LATENCY_ENGINE: measured.engine}


def complete_protocol(study: Study, queue: CellQueue, tracker: Tracker, should_stop: Callable[[], bool],
                      check_signal: Callable[[], None], on_event: Callable[[str, dict], None]) -> None:
    """Finished cells that lack metrics of the study's current ``evaluate``/``robustness``
    entries (added after they ran), or hold them for an earlier definition of the entry (the
    ``TAG_EVAL_PREFIX``/``TAG_ROBUST_PREFIX`` tags differ), get them from their kept
    checkpoint, without retraining; so do cells without latency metrics for the study's
    ``latency`` settings (finished before latency was measured, measured with other threads, or
    skipped because the engine was missing).

    Args:
        study: The study.
        queue: Its cells and trials.
        tracker: Its MLflow record.
        should_stop: Polled between evaluation batches.
        check_signal: Called before each cell; raises to stop.
        on_event: Told ``("cell_protocol", {"cell", "metrics"})`` for each cell that got metrics.
    """
    latency = study.spec.latency
    latency_names = set(latency.metric_names()) if latency.enabled else set()
    if not study.test_sets and not study.perturbations and not latency_names:
        return
    cells = queue.cells
    by_cell = queue.trials_by_cell()
    done = {cell_id: t.user_attrs["mlflow_run_id"] for cell_id, trials in by_cell.items() for t in trials
            if cell_id in cells and is_finished(t) and "mlflow_run_id" in t.user_attrs}
    if not done:
        return

    def missing(have: dict[str, float], tags: dict[str, str], seed: int) -> tuple[list, list, bool]:
        """Entries without their metrics, or evaluated under another definition; and whether
        the latency is to be measured."""
        sets = [s for s in study.test_sets if not s.skip_reason and (
            not set(protocol_metric_names([s], [])) <= set(have)
            or tags.get(f"{TAG_EVAL_PREFIX}{s.name}") != s.definition())]
        perturbations = [p for p in study.perturbations
                         if not set(protocol_metric_names([], [p])) <= set(have)
                         or tags.get(f"{TAG_ROBUST_PREFIX}{p.key}") != p.describe()]
        timed = bool(latency_names) and latency.times(seed) and (
            not latency_names <= set(have) or tags.get(TAG_LATENCY_THREADS) != str(latency.threads))
        return sets, perturbations, timed

    records = tracker.protocol_records(done.values())
    lacking = [cell_id for cell_id, run_id in done.items()
               if any(missing(*records.get(run_id, ({}, {})), cells[cell_id].config.seed))]
    # Workers sharing the study take the cells in different orders, and a cell's lock makes
    # the others skip what one of them added meanwhile.
    lacking.sort(key=lambda c: hashlib.sha256(f"{os.getpid()}:{c}".encode()).digest())
    engine = getattr(queue.storage, "engine", None)
    for cell_id in lacking:
        check_signal()
        run_id = done[cell_id]
        with study_lock(study.storage, engine, f"protocol of {cell_id} in {study.name}"):
            run = tracker.client.get_run(run_id)
            have = dict(run.data.metrics)
            sets, perturbations, timed = missing(have, dict(run.data.tags), cells[cell_id].config.seed)
            if not sets and not perturbations and not timed:
                continue
            added = ", ".join([s.name for s in sets] + [p.key for p in perturbations] + ["latency"] * timed)
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = kept_checkpoint(cells[cell_id], tracker, run_id, Path(tmp))
                if checkpoint is None:
                    log.warning("cell %s: cannot add %s: its checkpoint is neither in %s nor logged to MLflow "
                                "(log_checkpoint)", cell_id, added, cells[cell_id].config.output_dir)
                    continue
                log.info("cell %s: evaluating its checkpoint %s on %s (added to or changed in the study after it finished)",
                         cell_id, checkpoint, added)
                scalars, tags = {}, protocol_tags(sets, perturbations)
                if sets or perturbations:
                    scalars = evaluate_cell_protocol(study, cells[cell_id], checkpoint, have.get("val_eer_threshold"),
                                                     should_stop, sets, perturbations)
                if timed:
                    measured, latency_tags = measure_cell_latency(latency, cells[cell_id], checkpoint)
                    scalars, tags = {**scalars, **measured}, {**tags, **latency_tags}
            tracker.log_scalars(run_id, scalars, tags)
        on_event("cell_protocol", {"cell": cells[cell_id], "metrics": len(scalars)})


def kept_checkpoint(cell: Cell, tracker: Tracker, run_id: str, tmp: Path) -> Path | None:
    """A finished cell's selected checkpoint: ``<runs_dir>/<cell>/best.pt`` on this machine, else
    the copy logged to its MLflow run (``log_checkpoint``, downloaded into ``tmp``), else None."""
    local = Path(cell.config.output_dir) / "best.pt"
    if local.is_file():
        return local
    try:
        return Path(tracker.client.download_artifacts(run_id, f"{ARTIFACT_CHECKPOINT_DIR}/best.pt", str(tmp)))
    except Exception as err:  # MLflow raises its own or OSError types for a missing artifact
        log.debug("cell %s: no logged checkpoint: %s", cell.cell_id, err)
        return None
