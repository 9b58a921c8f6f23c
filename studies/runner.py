"""Executes a study: one Optuna study per study file, each grid cell exactly once.

Exactly-once across workers (several terminals, or several machines on one PostgreSQL storage and
one MLflow server): the cells are queued as Optuna trials (``studies.cell_queue``) and a worker
runs a cell only while it holds the claim (``studies.claim``: atomic WAITING -> RUNNING, heartbeats,
stale trials failed and enqueued again). A worker that was only stalled past the grace period
finds its claim lost (checked at every beat and right before every write into the cell's MLflow
run: each epoch's metrics, the results, the end); it then stops and leaves the cell and its MLflow
run to whichever worker took it over, writing nothing more into either. Each epoch is logged once
per cell over all attempts (a retry skips epochs already in the run and logs those an earlier
attempt checkpointed but did not log). After training, ``studies.cell_evaluation`` evaluates and
times the selected checkpoint.

Stopping (``StopRequest``): SIGINT/SIGTERM only set a flag, so no exception is ever raised inside
library code (an MLflow migration, a SQLAlchemy callback). The worker stops at the next safe point:
between two training or evaluation batches (``fit``'s ``should_stop``), before the next claim, or
while waiting. A cell stopped in training has its MLflow run KILLED and its trial FAIL; the next
invocation runs it again, resuming from the cell's last finished epoch.

Bounded attempts: in one invocation a cell is started at most ``MAX_ATTEMPTS`` times (a recorded
failure is not retried at all; a worker that died is, up to the cap), and a search starts at most
``search.trials`` trials minus those already complete, failed attempts included, as Optuna's
``n_trials`` counts them. Re-running the command tries failed cells again.

A cell whose objective is NaN (``val_auc`` of a one-class split) finishes as *not comparable*: its
metrics are logged, its MLflow run is FINISHED with the tag ``bnn.not_comparable`` (the reason),
its trial is PRUNED with the user attribute ``not_comparable``, and it counts as done everywhere.
Distillation: a student waits for its teacher cell (``studies.cell_queue``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bnn.backbones import weights_path
from bnn.data import DatasetLayoutError
from bnn.errors import storage_fault, user_error
from bnn.signals import FitInterrupted, StopRequest
from bnn.splits import load_splits
from bnn.train import EpochStats, fit
from studies.cell_evaluation import complete_protocol, evaluate_cell_protocol, measure_cell_latency
from studies.cell_queue import (
    DONE_STATES,
    NOT_COMPARABLE,
    WAIT,
    CellQueue,
    cell_states,
    is_finished,
    load_optuna_study,
    open_storage,
)
from studies.claim import ClaimLost, Heartbeat
from studies.db_setup import open_shared, study_lock
from studies.objective import not_comparable_reason, objective_value
from studies.record import TAG_LATENCY_SKIPPED, create_mlflow_schema
from studies.record_writer import Tracker, protocol_tags
from studies.spec import Cell, Study

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyInterrupted(Exception):
    """SIGINT or SIGTERM arrived; raised by the runner itself at a safe point."""


@dataclass
class RunSummary:
    """What one ``run_study`` invocation did."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    taken_over: list[str] = field(default_factory=list)
    not_comparable: dict[str, str] = field(default_factory=dict)  # finished, objective NaN: why
    skipped_done: int = 0
    interrupted: bool = False
    registered: dict[str, str] = field(default_factory=dict)  # registered model -> version of the best cell


def check_inputs(study: Study) -> None:
    """Fails before anything is created when a cell's dataset (every split; an empty one is an
    error), an extra test set (``evaluate:``) or pretrained weights are missing."""
    configs = [cell.config for cell in study.cells] or [study.base]
    datasets = {(c.dataset, c.data_root, repr(sorted(c.data_params.items())), c.max_train_samples,
                 c.max_val_samples, c.max_test_samples, c.seed): c for c in configs}
    for c in datasets.values():
        load_splits(c)
    for i, test_set in enumerate(study.test_sets):  # extra test sets whose root is given must exist now
        if not test_set.skip_reason:
            try:
                test_set.load(configs[0].resolution)
            except (OSError, ValueError, KeyError) as err:  # name the entry: the reader knows only its root
                what = f"evaluate[{i}] ({test_set.name}): {err.args[0] if isinstance(err, KeyError) else err}"
                raise (DatasetLayoutError(what) if isinstance(err, OSError) else ValueError(what)) from None
    for c in configs:
        if c.pretrained:
            weights_path(c.backbone, c.pretrained)
        if c.distill and not c.distill.teacher_id and not Path(c.distill.teacher).is_file():
            raise FileNotFoundError(f"distill.teacher: teacher checkpoint '{c.distill.teacher}' not found "
                                    "(a best.pt written by `python -m bnn train` or a study cell)")


FINISHED, FAILED, KILLED, TAKEN_OVER = "FINISHED", "FAILED", "KILLED", "TAKEN OVER"


@dataclass
class CellOutcome:
    """How one claimed cell ended; ``Runner._finish`` is the one place that writes it into the
    MLflow run, the Optuna trial, the run summary and the ``cell_end`` event.

    Attributes:
        status: ``FINISHED``, ``NOT COMPARABLE`` (finished, objective NaN), ``FAILED``, ``KILLED``
            (interrupted) or ``TAKEN OVER`` (another worker runs the cell: nothing is written).
        message: Why it failed, was interrupted or is not comparable.
        values: The objective values of a finished cell (Optuna's ``tell``).
        event: Further ``cell_end`` fields of a finished cell: ``result``, ``fit_seconds`` and
            ``started`` (``time.perf_counter()`` at its claim), from which ``_finish`` adds
            ``seconds`` and ``runner_seconds``.
    """

    status: str
    message: str = ""
    values: list[float] = field(default_factory=list)
    event: dict = field(default_factory=dict)


class Runner:
    """Runs the cells of one study in this process (see the module docstring)."""

    def __init__(self, study: Study, on_event: Callable[[str, dict], None] | None = None,
                 stop: StopRequest | None = None) -> None:
        """``stop``: the caller's ``StopRequest`` when it handles signals from before the stores
        are created (``studies run`` does); otherwise ``run`` installs its own."""
        self.study = study
        self.on_event = on_event or (lambda kind, info: None)
        self.stop = stop
        self.storage = open_storage(study.storage)
        self.optuna_study = load_optuna_study(study, create=True, storage=self.storage)
        with study_lock(study.storage, self.storage.engine, f"mlflow parent run of {study.name}"):
            self.tracker = open_shared(study.tracking_uri, lambda: Tracker(study), "opening the MLflow store",
                                       initialise=create_mlflow_schema)
        self.cells = {cell.cell_id: cell for cell in study.cells}
        # Attempts of this invocation are trials started after now.
        self.queue = CellQueue(study, self.optuna_study, self.storage, self.cells, started=time.time())
        self._failed_here = 0  # search trials this worker saw fail in this invocation
        self._claimed_at: float | None = None  # perf_counter() before the claim of the next cell

    def _check_signal(self) -> None:
        if self.stop:
            raise StudyInterrupted(self.stop.signal)

    def _fail_stale(self) -> None:
        """Fails trials whose worker stopped beating; their MLflow runs become KILLED, unless the
        cell has a newer trial: a retry reuses the cell's run, which then belongs to it."""
        for run_id in self.queue.fail_stale():
            self.tracker.mark_killed_if_running(run_id)

    # --- execution ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Runs cells until none is left to this worker; returns what happened."""
        summary = RunSummary()
        own_stop = self.stop is None
        if own_stop:
            self.stop = StopRequest().__enter__()
        try:
            self._fail_stale()
            states = cell_states(self.optuna_study)
            summary.skipped_done = sum(1 for c in self.cells if states.get(c) in DONE_STATES)
            complete_protocol(self.study, self.queue, self.tracker, lambda: bool(self.stop), self._check_signal,
                              self.on_event)
            if self.study.is_search:
                self._run_search(summary)
                return summary
            self.queue.enqueue(only_stale=False)
            while True:
                self._check_signal()
                self._claimed_at = time.perf_counter()
                trial = self.queue.claim()
                if trial is None:
                    self._fail_stale()
                    self.queue.enqueue(only_stale=True)
                    trial = self.queue.claim()
                if trial is None:
                    running = self.queue.running_here()
                    if not running and not self.queue.waiting_for_teacher:
                        break
                    self.on_event("waiting", {"running": len(running)})
                    self._sleep()
                    continue
                self._run_trial(trial, summary)
        except StudyInterrupted:
            summary.interrupted = True
        finally:
            if own_stop:
                self.stop.__exit__(None, None, None)
            self._close_parent(summary)
        return summary

    def _sleep(self) -> None:
        """One heartbeat interval, cut short by a signal (nothing to clean up while waiting)."""
        deadline = time.monotonic() + self.storage.get_heartbeat_interval()
        while not self.stop and time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
        self._check_signal()

    def _run_trial(self, trial: optuna.Trial, summary: RunSummary) -> None:
        cell_id = trial.user_attrs["cell_id"]
        reason = self.queue.unrunnable.pop(self.queue.trial_id(trial), None)
        if self.queue.is_duplicate(trial, cell_id):
            trial.set_user_attr("duplicate", True)
            self.optuna_study.tell(trial, state=TrialState.PRUNED)
            return
        if reason is not None:
            self._fail_unrun(trial, self.cells[cell_id], reason, summary)
            return
        self._execute(trial, self.cells[cell_id], summary)

    def _fail_unrun(self, trial: optuna.Trial, cell: Cell, reason: str, summary: RunSummary) -> None:
        """Records a cell that cannot run (its teacher cannot finish) as FAILED, with the reason."""
        log.error("cell %s not run: %s", cell.cell_id, reason)
        run_id = self.tracker.cell_run(cell)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("axes", cell.axes_label())
        self._finish(trial, cell, run_id, CellOutcome(FAILED, reason), summary)

    def _run_search(self, summary: RunSummary) -> None:
        """TPE trials until the budget is used: trials finished or running (any worker) plus the
        trials that failed here in this invocation reach ``search.trials``."""
        search = self.study.spec.search
        while self.study.teacher is not None:  # every trial distils from one teacher cell
            verdict = self.queue.teacher_verdict(self.study.teacher, {})
            if verdict is None:
                break
            if verdict != WAIT:
                log.error("search not run: %s", verdict)
                summary.failed["search"] = verdict
                return
            self.on_event("waiting", {"running": 0})
            self._check_signal()
            self._sleep()
        while True:
            self._check_signal()
            self._fail_stale()
            used = [t for t in self.optuna_study.get_trials(deepcopy=False)
                    if is_finished(t) or t.state == TrialState.RUNNING]
            if len(used) + self._failed_here >= search.trials:
                if self._failed_here:
                    log.error("search: %d of its %d trials failed in this invocation; stopping (re-run to try "
                              "again)", self._failed_here, search.trials)
                return
            self._claimed_at = time.perf_counter()
            trial = self.optuna_study.ask()
            values = {}
            for key, p in search.space.items():
                if p.type == "categorical":
                    values[key] = trial.suggest_categorical(key, p.choices)
                elif p.type == "int":
                    values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
                else:
                    values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
            cell = self.study.search_cell(values)
            self.cells[cell.cell_id] = cell
            trial.set_user_attr("cell_id", cell.cell_id)
            self._execute(trial, cell, summary)
            if self.storage.get_trial(self.queue.trial_id(trial)).state == TrialState.FAIL:
                self._failed_here += 1

    def _execute(self, trial: optuna.Trial, cell: Cell, summary: RunSummary) -> None:
        started = self._claimed_at or time.perf_counter()
        self._claimed_at = None
        cell_id = cell.cell_id
        run_id = self.tracker.cell_run(cell)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("axes", cell.axes_label())
        self.on_event("cell_start", {"cell": cell, "run_id": run_id})
        log_epoch = self._epoch_logger_once(run_id)
        in_callbacks = [0.0]  # seconds the runner spent inside fit (claim checks, epoch logging)

        def timed(callback: Callable[[EpochStats], None]) -> Callable[[EpochStats], None]:
            def run(stats: EpochStats) -> None:
                begin = time.perf_counter()
                try:
                    callback(stats)
                finally:
                    in_callbacks[0] += time.perf_counter() - begin
            return run

        callbacks = [
            # The claim first: a worker whose cell was taken over writes nothing more into the run.
            timed(lambda s: self.queue.check_claim(trial)),
            timed(log_epoch),
            lambda s: self.on_event("epoch", {"cell": cell, "stats": s}),
        ]
        try:
            with Heartbeat(self.storage, self.queue.trial_id(trial)) as heartbeat:
                self._check_signal()
                try:
                    fit_started = time.perf_counter()
                    result = fit(cell.config, callbacks=callbacks,
                                 should_stop=lambda: bool(self.stop) or heartbeat.lost.is_set())
                    fit_seconds = time.perf_counter() - fit_started - in_callbacks[0]
                except FitInterrupted:
                    self._check_signal()
                    self.queue.check_claim(trial)
                    raise
                self.queue.check_claim(trial)
                protocol_started = time.perf_counter()
                protocol = evaluate_cell_protocol(self.study, cell, result.checkpoint, result.val.eer_threshold,
                                                   lambda: bool(self.stop) or heartbeat.lost.is_set())
                self.queue.check_claim(trial)
                latency, latency_tags = measure_cell_latency(self.study.spec.latency, cell, result.checkpoint)
                fit_seconds += time.perf_counter() - protocol_started
                self.queue.check_claim(trial)
                for stats in result.history:  # epochs an earlier attempt checkpointed but did not log
                    log_epoch(stats)
                self.tracker.log_result(run_id, result, {**protocol, **latency},
                                        {**protocol_tags(self.study.test_sets, self.study.perturbations),
                                         **latency_tags})
                self.queue.check_claim(trial)  # once more before the run is ended (logging artifacts takes time)
        except ClaimLost:
            self._finish(trial, cell, run_id, CellOutcome(TAKEN_OVER), summary)
            return
        except StudyInterrupted as err:
            # Not holding the claim: the run belongs to the worker that took the cell over.
            taken = not self.queue.holds_claim(trial)
            self._finish(trial, cell, run_id, CellOutcome(TAKEN_OVER) if taken else
                         CellOutcome(KILLED, f"interrupted by {err}"), summary)
            raise
        except Exception as err:
            if not self.queue.holds_claim(trial):
                log.warning("cell %s: %s: %s after the cell was taken over", cell_id, type(err).__name__, err)
                self._finish(trial, cell, run_id, CellOutcome(TAKEN_OVER), summary)
                return
            fault = storage_fault(err)
            mapped = user_error(err)  # the storage, or the cell's data or settings: one line, no traceback
            if mapped is None:
                log.exception("cell %s failed", cell_id)
            else:
                log.error("cell %s failed: %s", cell_id, fault or mapped[0])
            self._finish(trial, cell, run_id, CellOutcome(FAILED, fault or f"{type(err).__name__}: {err}"), summary)
            return
        scalars = {**result.scalars(), **protocol, **latency}
        # Results live in MLflow only (see studies.record); Optuna gets the objective values.
        values = [objective_value(scalars, o.metric) for o in self.study.spec.objectives]
        event = {"result": result, "started": started, "fit_seconds": fit_seconds}
        if any(math.isnan(v) for v in values):  # finished, but cannot be ranked: done, never re-run automatically
            metric = self.study.spec.objectives[[math.isnan(v) for v in values].index(True)].metric
            reason = not_comparable_reason(metric, scalars)
            if metric in self.study.spec.latency.metric_names():
                reason += f" (latency not measured: {latency_tags.get(TAG_LATENCY_SKIPPED, 'unknown reason')})"
            log.warning("cell %s is %s: %s", cell_id, NOT_COMPARABLE, reason)
            outcome = CellOutcome(NOT_COMPARABLE.upper(), reason, event=event)
        else:
            outcome = CellOutcome(FINISHED, values=values, event=event)
        self._finish(trial, cell, run_id, outcome, summary)

    def _finish(self, trial: optuna.Trial, cell: Cell, run_id: str, outcome: CellOutcome, summary: RunSummary) -> None:
        """Writes ``outcome`` into the cell's MLflow run and Optuna trial, the summary and one
        ``cell_end`` event (a taken-over cell: the summary and the event only)."""
        label = self._label(trial, cell.cell_id)
        event = {"cell": cell, "status": outcome.status, **outcome.event}
        if outcome.status == TAKEN_OVER:
            log.warning("cell %s: this worker's heartbeat expired and another worker took the cell over; "
                        "leaving it (and MLflow run %s) to that worker", cell.cell_id, run_id)
            summary.taken_over.append(cell.cell_id)
        elif outcome.status == KILLED:
            trial.set_user_attr("failure", outcome.message)
            self.tracker.end(run_id, "KILLED", outcome.message)
            self.optuna_study.tell(trial, state=TrialState.FAIL)
        elif outcome.status == FAILED:
            self._record_failure(trial, run_id, outcome.message)
            summary.failed[label] = outcome.message
            event["error"] = outcome.message
        elif outcome.status == NOT_COMPARABLE.upper():
            self.tracker.mark_not_comparable(run_id, outcome.message)
            trial.set_user_attr("not_comparable", outcome.message)
            self.tracker.end(run_id, "FINISHED")
            self.optuna_study.tell(trial, state=TrialState.PRUNED)
            summary.not_comparable[label] = outcome.message
            summary.completed.append(cell.cell_id)
        else:
            self.tracker.end(run_id, "FINISHED")
            self.optuna_study.tell(trial, outcome.values if len(outcome.values) > 1 else outcome.values[0])
            summary.completed.append(cell.cell_id)
        if "started" in event:  # a finished cell: its wall time from claim to both stores written
            seconds = time.perf_counter() - event.pop("started")
            event.update(seconds=seconds, runner_seconds=seconds - event["fit_seconds"])
        self.on_event("cell_end", event)

    def _record_failure(self, trial: optuna.Trial, run_id: str, message: str) -> None:
        """Marks the cell's MLflow run and Optuna trial FAILED, each store on its own: when one cannot
        be written (its disk is full) the other is still marked, and the storage fault is raised
        after both were tried (the stale-trial recovery of the next invocation finishes the job)."""
        faults = []
        for write in (lambda: trial.set_user_attr("failure", message),
                      lambda: self.tracker.end(run_id, "FAILED", message),
                      lambda: self.optuna_study.tell(trial, state=TrialState.FAIL)):
            try:
                write()
            except Exception as err:
                fault = storage_fault(err)
                if fault is None:
                    raise
                faults.append(err)
        if faults:
            raise faults[0]

    def _label(self, trial: optuna.Trial, cell_id: str) -> str:
        """How the summary names an attempt: the cell id, with the trial number in a search (two
        trials can draw the same cell)."""
        return f"trial {trial.number} (cell {cell_id})" if self.study.is_search else cell_id

    def _epoch_logger_once(self, run_id: str) -> Callable[[EpochStats], None]:
        """The tracker's epoch logger, logging each epoch of the cell's run once over all attempts:
        epochs already in the run (logged by an earlier attempt; a retry resumes from the last
        checkpoint, or trains again from scratch where it cannot read it) are not logged again."""
        logged = self.tracker.logged_epochs(run_id)
        log_epoch = self.tracker.epoch_logger(run_id)

        def log_once(stats: EpochStats) -> None:
            if stats.epoch not in logged:
                log_epoch(stats)
                logged.add(stats.epoch)

        return log_once

    def _close_parent(self, summary: RunSummary) -> None:
        if self.study.is_search:
            self.tracker.finish_parent("KILLED" if summary.interrupted else "FINISHED")
            if not summary.interrupted:
                self._register_best(summary)
            return
        states = cell_states(self.optuna_study)
        if all(states.get(c) in DONE_STATES for c in self.cells):
            self.tracker.finish_parent("FINISHED")
            self._register_best(summary)
        elif summary.interrupted:
            self.tracker.finish_parent("KILLED")
        elif not any(s in ("running", "waiting") for s in states.values()):
            self.tracker.finish_parent("FAILED")



    def _register_best(self, summary: RunSummary) -> None:
        """Once the study is finished: its best cell's models in the MLflow Model Registry
        (``Tracker.register_best``), one worker at a time (the last workers of a study finish
        together); a registry that cannot be written is logged, and the cells stay done."""
        if not self.study.spec.log_checkpoint:
            return
        try:
            with study_lock(self.study.storage, self.storage.engine, f"model registry of {self.study.name}"):
                summary.registered = self.tracker.register_best()
        except Exception as err:
            log.error("study %s: the best cell was not registered: %s: %s", self.study.name, type(err).__name__, err)
            summary.failed["model registry"] = f"{type(err).__name__}: {err}"
        for name, version in summary.registered.items():
            self.on_event("registered", {"name": name, "version": version})


def epoch_text(stats: EpochStats) -> str:
    return f"epoch {stats.epoch}: val acc {stats.val_accuracy:.3f}, loss {stats.train_loss:.3f}"
