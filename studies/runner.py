"""Executes a study: one Optuna study per study file, each grid cell exactly once.

Exactly-once across workers (several terminals, or several machines on one PostgreSQL storage and
one MLflow server): grid cells are enqueued as WAITING trials tagged with their ``cell_id``; a worker
claims one with Optuna's atomic WAITING -> RUNNING transition; a cell with a COMPLETE trial is never
run again, and when two workers enqueued the same cell concurrently only the lowest-numbered trial
runs (the other is pruned as a duplicate). A running cell records a heartbeat; a worker killed with
SIGKILL leaves a trial whose heartbeat goes stale, which any worker fails and enqueues again. A
worker that was only stalled past the grace period finds that its trial is no longer RUNNING (its
heartbeat thread checks at every beat, and the claim is checked right before every write into the
cell's MLflow run: each epoch's metrics, the results, the end); it then stops and leaves the cell
and its MLflow run to whichever worker took it over, writing nothing more into either. Each epoch
is logged once per cell over all attempts (a retry skips epochs already in the run and logs those
an earlier attempt checkpointed but did not log).

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

Distillation (``studies.distill``): a student cell is claimed only once its teacher cell has a
COMPLETE trial, in this study or in the teacher's own study on the same storage. Until then the
worker runs other cells, and waits while the teacher is waiting or running here, or running in its
own study (a stale teacher there is failed like a stale trial here, so the wait is bounded). When
the teacher can no longer finish in this invocation (its trial failed with a recorded failure, or
its own study is not being run), the student is claimed and failed at once with the reason; the
next invocation enqueues both again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bnn.config import FitConfig
from bnn.latency import latency_metric_names
from bnn.signals import StopRequest
from bnn.train import EpochStats, FitInterrupted, fit
from studies.db_setup import open_shared, sqlite_path, study_lock
from studies.distill import Teacher
from studies.objective import not_comparable_reason, objective_value
from studies.record import (
    ARTIFACT_CHECKPOINT_DIR,
    TAG_EVAL_PREFIX,
    TAG_LATENCY_ENGINE,
    TAG_LATENCY_HOST,
    TAG_LATENCY_SKIPPED,
    TAG_LATENCY_THREADS,
    TAG_ROBUST_PREFIX,
    Tracker,
    create_mlflow_schema,
    protocol_tags,
)
from studies.spec import Cell, Study, set_dotted
from studies.yaml_lines import StudyFileError

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ENV = "BNN_HEARTBEAT_SECONDS"
MIN_GRACE_SECONDS = 10  # a loaded machine can stall a heartbeat for seconds
WAIT = "wait"  # a student's teacher is not done but may still finish
MAX_ATTEMPTS = 3  # starts of one cell per invocation (workers that died included)
NOT_COMPARABLE = "not comparable"  # the cell state of a finished cell whose objective is NaN


class StudyInterrupted(Exception):
    """SIGINT or SIGTERM arrived; raised by the runner itself at a safe point."""


class ClaimLost(Exception):
    """This worker's trial was failed as stale (heartbeat expired) while its cell still ran."""


@dataclass
class RunSummary:
    """What one ``run_study`` invocation did."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    taken_over: list[str] = field(default_factory=list)
    not_comparable: dict[str, str] = field(default_factory=dict)  # finished, objective NaN: why
    skipped_done: int = 0
    interrupted: bool = False


def heartbeat_seconds() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, "10"))


def grace_seconds(interval: int) -> int:
    """How long a heartbeat may be missing before the trial counts as stale."""
    return max(3 * interval, MIN_GRACE_SECONDS)


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage | None:
    """RDB storage with heartbeats; SQLite waits for locks instead of failing. ``None`` when
    ``create`` is false and the SQLite file does not exist yet."""
    engine_kwargs = {}
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    interval = heartbeat_seconds()
    return open_shared(
        url,
        lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace_seconds(interval)
        ),
        "opening the Optuna storage",
        initialise=_create_optuna_schema,
    )


def _create_optuna_schema(url: str) -> None:
    """Builds Optuna's complete schema at the SQLite ``url`` (for ``open_shared``)."""
    optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}}).engine.dispose()


def load_optuna_study(study: Study, create: bool = True) -> optuna.Study | None:
    """The study's Optuna study; ``None`` when it does not exist and ``create`` is false.

    Its directions are the study file's objectives (``StudyFile.objectives``): one for a
    single-objective study, several for a multi-objective one, whose search samples with Optuna's
    multi-objective TPE (``TPESampler`` handles several objectives) and whose ``best_trials`` are
    the Pareto set.

    Raises:
        StudyFileError: ``create`` and the stored study was created with other directions (the
            objective list of the study file changed in number or direction).
    """
    storage = open_storage(study.storage, create=create)
    if storage is None:
        return None
    directions = [objective.direction for objective in study.spec.objectives]
    sampler = optuna.samplers.TPESampler(seed=study.spec.search.sampler_seed) if study.spec.search else None
    if create:
        optuna_study = open_shared(
            study.storage,
            lambda: optuna.create_study(
                study_name=study.name, storage=storage, directions=directions, load_if_exists=True, sampler=sampler
            ),
            "creating the Optuna study",
        )
        stored = [d.name.lower() for d in optuna_study.directions]
        if stored != directions:
            raise StudyFileError(study.path, None, "objective",
                                 f"the Optuna study '{study.name}' was created with the "
                                 f"direction(s) {stored}, the file now gives {directions}; restore the objective "
                                 f"or give the study a new name (name:)")
        return optuna_study
    try:
        return optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
    except KeyError:
        return None


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial whose cell is done: COMPLETE, or PRUNED as not comparable (NaN objective)."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.PRUNED and "not_comparable" in trial.user_attrs)


def trial_state_name(trial: optuna.trial.FrozenTrial) -> str | None:
    """"done" | ``NOT_COMPARABLE`` | "running" | "waiting" | "failed", ``None`` for a pruned duplicate."""
    if trial.state == TrialState.PRUNED:
        return NOT_COMPARABLE if "not_comparable" in trial.user_attrs else None
    return {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
            TrialState.FAIL: "failed"}.get(trial.state)


DONE_STATES = ("done", NOT_COMPARABLE)  # cell states that are final: not run again


def cell_states(optuna_study: optuna.Study | None) -> dict[str, str]:
    """cell_id -> "done" | ``NOT_COMPARABLE`` | "running" | "waiting" | "failed" from the trials
    (pruned duplicates ignored); both states of ``DONE_STATES`` are final."""
    states: dict[str, str] = {}
    if optuna_study is None:
        return states
    rank = {"done": 5, NOT_COMPARABLE: 4, "running": 3, "waiting": 2, "failed": 1}
    for trial in optuna_study.get_trials(deepcopy=False):
        cell_id = trial.user_attrs.get("cell_id")
        name = trial_state_name(trial)
        if cell_id and name and rank[name] > rank.get(states.get(cell_id, ""), 0):
            states[cell_id] = name
    return states


def check_inputs(study: Study) -> None:
    """Fails before anything is created when a cell's dataset (every split; an empty one is an
    error), an extra test set (``evaluate:``) or pretrained weights are missing."""
    from bnn.data import DatasetLayoutError
    from bnn.pretrained import resolve_weights
    from bnn.train import load_splits

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
            resolve_weights(c.backbone, c.pretrained)
        if c.distill and not c.distill.teacher_id and not Path(c.distill.teacher).is_file():
            raise FileNotFoundError(f"distill.teacher: teacher checkpoint '{c.distill.teacher}' not found "
                                    "(a best.pt written by `python -m bnn train` or a study cell)")


class _Heartbeat:
    """Records a trial's heartbeat in a thread while its cell runs, and notices when the trial is
    no longer RUNNING (failed as stale by another worker): ``lost`` is then set, which ``fit``'s
    ``should_stop`` polls, so a worker whose cell was taken over stops within a beat."""

    def __init__(self, storage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
                if self._storage.get_trial(self._trial_id).state != TrialState.RUNNING:
                    self.lost.set()
            except Exception as err:  # a transient lock must not kill the cell
                log.warning("heartbeat failed: %s", err)
            self._stop.wait(interval)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Runner:
    """Runs the cells of one study in this process (see the module docstring)."""

    def __init__(self, study: Study, on_event: Callable[[str, dict], None] | None = None,
                 stop: StopRequest | None = None) -> None:
        """``stop``: the caller's ``StopRequest`` when it handles signals from before the stores
        are created (``studies run`` does); otherwise ``run`` installs its own."""
        self.study = study
        self.on_event = on_event or (lambda kind, info: None)
        self.stop = stop
        self._started = time.time()  # attempts of this invocation are trials started after it
        self.optuna_study = load_optuna_study(study, create=True)
        self.storage = self.optuna_study._storage
        with study_lock(study.storage, getattr(self.storage, "engine", None), f"mlflow parent run of {study.name}"):
            self.tracker = open_shared(study.tracking_uri, lambda: Tracker(study), "opening the MLflow store",
                                       initialise=create_mlflow_schema)
        self.cells = {cell.cell_id: cell for cell in study.cells}
        self._other_studies: dict[str, optuna.Study] = {}  # teachers' own studies, by name
        self._unrunnable: dict[int, str] = {}  # claimed trial id -> why its teacher cannot finish
        self._waiting_for_teacher = False  # a WAITING student's teacher may still finish
        self._failed_here = 0  # search trials this worker saw fail in this invocation
        self._claimed_at: float | None = None  # perf_counter() before the claim of the next cell

    def _check_signal(self) -> None:
        if self.stop:
            raise StudyInterrupted(self.stop.signal)

    # --- queue -------------------------------------------------------------------------------
    def _trials_by_cell(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        by_cell: dict[str, list] = {}
        for trial in self.optuna_study.get_trials(deepcopy=False):
            if "cell_id" in trial.user_attrs:
                by_cell.setdefault(trial.user_attrs["cell_id"], []).append(trial)
        return by_cell

    def _fail_stale(self) -> None:
        """Fails trials whose worker stopped beating; their MLflow runs become KILLED, unless the
        cell has a newer trial: a retry reuses the cell's run, which then belongs to it."""
        optuna.storages.fail_stale_trials(self.optuna_study)
        trials = self.optuna_study.get_trials(deepcopy=False)
        newest: dict[str, int] = {}
        for trial in trials:
            cell_id = trial.user_attrs.get("cell_id")
            if cell_id:
                newest[cell_id] = max(newest.get(cell_id, -1), trial.number)
        for trial in trials:
            run_id = trial.user_attrs.get("mlflow_run_id")
            if (trial.state == TrialState.FAIL and run_id and "failure" not in trial.user_attrs
                    and newest.get(trial.user_attrs.get("cell_id")) == trial.number):
                self.tracker.mark_killed_if_running(run_id)

    def _enqueue(self, only_stale: bool) -> None:
        """Enqueues cells that have no finished, running or waiting trial.

        With ``only_stale``, a failed cell is enqueued again only when its worker died (no
        recorded failure) and the cell was started fewer than ``MAX_ATTEMPTS`` times since this
        invocation began; cells that raised stay failed until the next invocation.
        """
        by_cell = self._trials_by_cell()
        for cell_id in self.cells:
            trials = [t for t in by_cell.get(cell_id, []) if is_finished(t) or t.state != TrialState.PRUNED]
            if any(is_finished(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                continue
            if only_stale and trials:
                if "failure" in trials[-1].user_attrs:
                    continue
                if self._attempts_here(trials) >= MAX_ATTEMPTS:
                    log.error("cell %s: %d attempts in this invocation ended without a result (its worker "
                              "died each time); not retried until the next invocation", cell_id, MAX_ATTEMPTS)
                    continue
            self.optuna_study.enqueue_trial({}, user_attrs={"cell_id": cell_id})

    def _attempts_here(self, trials: list[optuna.trial.FrozenTrial]) -> int:
        """How many of ``trials`` were started since this invocation began."""
        return sum(1 for t in trials if t.datetime_start is not None and t.datetime_start.timestamp() >= self._started)

    def _teacher_verdict(self, teacher: Teacher, by_cell: dict[str, list]) -> str | None:
        """``None`` when the teacher cell is done, ``WAIT`` while it may still finish, else why not."""
        name = f"teacher cell {teacher.cell_id} ({teacher.label})"
        if teacher.study == self.study.name:
            trials = [t for t in by_cell.get(teacher.cell_id, []) if t.state != TrialState.PRUNED or is_finished(t)]
            if any(is_finished(t) for t in trials):
                return None
            failed = trials[-1].user_attrs.get("failure") if trials and trials[-1].state == TrialState.FAIL else None
            return f"{name} failed: {failed}" if failed else WAIT  # unrecorded failures are enqueued again
        other = self._other_studies.get(teacher.study)
        if other is None:
            try:
                other = self._other_studies[teacher.study] = optuna.load_study(
                    study_name=teacher.study, storage=self.storage)
            except KeyError:
                other = None
        states = {}
        if other is not None:
            optuna.storages.fail_stale_trials(other)
            teacher_trials = [t for t in other.get_trials(deepcopy=False) if t.user_attrs.get("cell_id") == teacher.cell_id]
            if any(is_finished(t) for t in teacher_trials):
                return None
            states = {t.state for t in teacher_trials}
            busy = other.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if TrialState.RUNNING in states or (TrialState.WAITING in states and busy):
                return WAIT
        state = "failed" if TrialState.FAIL in states else "waiting" if states else "not run"
        return (f"{name} of study '{teacher.study}' is {state}; run `python -m studies run {teacher.path}` "
                "(with the same --set values) first")

    def _teacher_verdicts(self) -> dict[str, str]:
        """cell_id -> ``WAIT`` or a failure reason, for the students whose teacher is not done."""
        students = [c for c in self.cells.values() if c.teacher is not None]
        if not students:
            return {}
        by_cell = self._trials_by_cell()
        verdicts = {c.cell_id: self._teacher_verdict(c.teacher, by_cell) for c in students}
        return {cell_id: v for cell_id, v in verdicts.items() if v is not None}

    def _claim(self) -> optuna.Trial | None:
        """Atomically takes one WAITING trial (WAITING -> RUNNING); ``None`` when there is none.

        Students whose teacher is not done are skipped while it may still finish; one whose
        teacher cannot finish is taken, and ``_run_trial`` fails it with the reason.
        """
        verdicts = self._teacher_verdicts()
        self._waiting_for_teacher = WAIT in verdicts.values()
        for frozen in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            cell_id = frozen.user_attrs.get("cell_id")
            if cell_id not in self.cells:
                continue  # a cell of another version of this study file (other --set values)
            if verdicts.get(cell_id) == WAIT:
                continue  # its teacher is not done yet
            for attempt in range(5):
                try:
                    if self.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                        # A first heartbeat at once: Optuna finds stale only trials that have one, so
                        # a worker killed before its heartbeat thread starts (MLflow run creation
                        # comes first) would otherwise leave a RUNNING trial that no one fails.
                        self.storage.record_heartbeat(frozen._trial_id)
                        if cell_id in verdicts:
                            self._unrunnable[frozen._trial_id] = verdicts[cell_id]
                        return optuna.Trial(self.optuna_study, frozen._trial_id)
                    break  # another worker took it
                except Exception as err:  # SQLite busy under concurrent writers: retry
                    log.debug("claim retry %d: %s", attempt, err)
                    time.sleep(0.2 * (attempt + 1))
        return None

    def _is_duplicate(self, trial: optuna.Trial, cell_id: str) -> bool:
        """Another trial of the cell is complete, or is live with a lower number."""
        for other in self._trials_by_cell().get(cell_id, []):
            if other.number == trial.number:
                continue
            if is_finished(other):
                return True
            if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
                return True
        return False

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
            self._complete_protocol()
            if self.study.is_search:
                self._run_search(summary)
                return summary
            self._enqueue(only_stale=False)
            while True:
                self._check_signal()
                self._claimed_at = time.perf_counter()
                trial = self._claim()
                if trial is None:
                    self._fail_stale()
                    self._enqueue(only_stale=True)
                    trial = self._claim()
                if trial is None:
                    running = [
                        t for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if t.user_attrs.get("cell_id") in self.cells
                    ]
                    if not running and not self._waiting_for_teacher:
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
        reason = self._unrunnable.pop(trial._trial_id, None)
        if self._is_duplicate(trial, cell_id):
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
        trial.set_user_attr("failure", reason)
        self.tracker.end(run_id, "FAILED", reason)
        self.optuna_study.tell(trial, state=TrialState.FAIL)
        summary.failed[cell.cell_id] = reason
        self.on_event("cell_end", {"cell": cell, "status": "FAILED", "error": reason})

    def _run_search(self, summary: RunSummary) -> None:
        """TPE trials until the budget is used: trials finished or running (any worker) plus the
        trials that failed here in this invocation reach ``search.trials``."""
        search = self.study.spec.search
        while self.study.teacher is not None:  # every trial distils from one teacher cell
            verdict = self._teacher_verdict(self.study.teacher, {})
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
            update = self.study.base.model_dump()
            for key, value in values.items():
                set_dotted(update, key, value)
            cell = self.study.make_cell(FitConfig(**update), values)
            self.cells[cell.cell_id] = cell
            trial.set_user_attr("cell_id", cell.cell_id)
            self._execute(trial, cell, summary)
            if self.storage.get_trial(trial._trial_id).state == TrialState.FAIL:
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
            timed(lambda s: self._check_claim(trial)),
            timed(log_epoch),
            lambda s: self.on_event("epoch", {"cell": cell, "stats": s}),
        ]
        try:
            with _Heartbeat(self.storage, trial._trial_id) as heartbeat:
                self._check_signal()
                try:
                    fit_started = time.perf_counter()
                    result = fit(cell.config, callbacks=callbacks,
                                 should_stop=lambda: bool(self.stop) or heartbeat.lost.is_set())
                    fit_seconds = time.perf_counter() - fit_started - in_callbacks[0]
                except FitInterrupted:
                    self._check_signal()
                    self._check_claim(trial)
                    raise
                self._check_claim(trial)
                protocol_started = time.perf_counter()
                protocol = self._evaluate_protocol(cell, result.checkpoint, result.val.eer_threshold,
                                                   lambda: bool(self.stop) or heartbeat.lost.is_set())
                self._check_claim(trial)
                latency, latency_tags = self._measure_latency(cell, result.checkpoint)
                fit_seconds += time.perf_counter() - protocol_started
                self._check_claim(trial)
                for stats in result.history:  # epochs an earlier attempt checkpointed but did not log
                    log_epoch(stats)
                self.tracker.log_result(run_id, result, {**protocol, **latency},
                                        {**protocol_tags(self.study.test_sets, self.study.perturbations),
                                         **latency_tags})
                self._check_claim(trial)  # once more before the run is ended (logging artifacts takes time)
        except ClaimLost:
            self._leave_taken_over(cell, run_id, summary)
            return
        except StudyInterrupted as err:
            if not self._holds_claim(trial):  # the run belongs to the worker that took the cell over
                self._leave_taken_over(cell, run_id, summary)
                raise
            trial.set_user_attr("failure", f"interrupted by {err}")
            self.tracker.end(run_id, "KILLED", f"interrupted by {err}")
            self.optuna_study.tell(trial, state=TrialState.FAIL)
            self.on_event("cell_end", {"cell": cell, "status": "KILLED"})
            raise
        except Exception as err:
            if not self._holds_claim(trial):
                log.warning("cell %s: %s: %s after the cell was taken over", cell_id, type(err).__name__, err)
                self._leave_taken_over(cell, run_id, summary)
                return
            log.exception("cell %s failed", cell_id)
            message = f"{type(err).__name__}: {err}"
            trial.set_user_attr("failure", message)
            self.tracker.end(run_id, "FAILED", message)
            self.optuna_study.tell(trial, state=TrialState.FAIL)
            summary.failed[self._label(trial, cell_id)] = message
            self.on_event("cell_end", {"cell": cell, "status": "FAILED", "error": message})
            return
        scalars = {**result.scalars(), **protocol, **latency}
        # Results live in MLflow only (see studies.record); Optuna gets the objective values.
        values = [objective_value(scalars, o.metric) for o in self.study.spec.objectives]
        status = "FINISHED"
        if any(math.isnan(v) for v in values):  # finished, but cannot be ranked: done, never re-run automatically
            metric = self.study.spec.objectives[[math.isnan(v) for v in values].index(True)].metric
            reason = not_comparable_reason(metric, scalars)
            if metric in latency_metric_names(tuple(self.study.spec.latency.resolutions)):
                reason += f" (latency not measured: {latency_tags.get(TAG_LATENCY_SKIPPED, 'unknown reason')})"
            log.warning("cell %s is %s: %s", cell_id, NOT_COMPARABLE, reason)
            self.tracker.mark_not_comparable(run_id, reason)
            trial.set_user_attr("not_comparable", reason)
            self.tracker.end(run_id, "FINISHED")
            self.optuna_study.tell(trial, state=TrialState.PRUNED)
            summary.not_comparable[self._label(trial, cell_id)] = reason
            status = NOT_COMPARABLE.upper()
        else:
            self.tracker.end(run_id, "FINISHED")
            self.optuna_study.tell(trial, values if len(values) > 1 else values[0])
        summary.completed.append(cell_id)
        seconds = time.perf_counter() - started
        self.on_event("cell_end", {"cell": cell, "status": status, "result": result, "seconds": seconds,
                                   "fit_seconds": fit_seconds, "runner_seconds": seconds - fit_seconds})

    def _evaluate_protocol(self, cell: Cell, checkpoint: Path, val_threshold: float | None,
                           should_stop: Callable[[], bool] | None = None,
                           test_sets: list | None = None, perturbations: list | None = None) -> dict[str, float]:
        """The study's extra test sets and robustness sweep on a cell's selected checkpoint
        (``bnn.protocol``); ``{}`` when the study has neither. ``val_threshold`` ``None``: taken
        from the validation split again (a cell finished before the threshold was logged)."""
        test_sets = self.study.test_sets if test_sets is None else test_sets
        perturbations = self.study.perturbations if perturbations is None else perturbations
        if not test_sets and not perturbations:
            return {}
        from bnn.protocol import evaluate_protocol
        from bnn.train import evaluate, load_detector, load_splits, make_loader

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

    def _measure_latency(self, cell: Cell, checkpoint: Path) -> tuple[dict[str, float], dict[str, str]]:
        """Latency metrics (``bnn.latency``) of a cell's selected checkpoint on this host, and the
        tags saying where and how they were measured; ``({}, {})`` when the study switched
        latency off, ``({}, {TAG_LATENCY_SKIPPED: why})`` when the engine is missing."""
        settings = self.study.spec.latency
        if not settings.enabled:
            return {}, {}
        if not settings.times(cell.config.seed):
            return {}, {TAG_LATENCY_SKIPPED: f"not timed: the study times only seeds {settings.seeds} (latency.seeds)"}
        from bnn.latency import EngineMissing, measure
        from bnn.train import load_detector

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

    def _complete_protocol(self) -> None:
        """Finished cells that lack metrics of the study's current ``evaluate``/``robustness``
        entries (added after they ran), or hold them for an earlier definition of the entry (the
        ``TAG_EVAL_PREFIX``/``TAG_ROBUST_PREFIX`` tags differ), get them from their kept
        checkpoint, without retraining; so do cells without latency metrics for the study's
        ``latency`` settings (finished before latency was measured, measured with other threads, or
        skipped because the engine was missing)."""
        latency = self.study.spec.latency
        latency_names = set(latency_metric_names(tuple(latency.resolutions))) if latency.enabled else set()
        if not self.study.test_sets and not self.study.perturbations and not latency_names:
            return
        from bnn.protocol import protocol_metric_names

        by_cell = self._trials_by_cell()
        done = {cell_id: t.user_attrs["mlflow_run_id"] for cell_id, trials in by_cell.items() for t in trials
                if cell_id in self.cells and is_finished(t) and "mlflow_run_id" in t.user_attrs}
        if not done:
            return

        def missing(have: dict[str, float], tags: dict[str, str], seed: int) -> tuple[list, list, bool]:
            """Entries without their metrics, or evaluated under another definition; and whether
            the latency is to be measured."""
            sets = [s for s in self.study.test_sets if not s.skip_reason and (
                not set(protocol_metric_names([s], [])) <= set(have)
                or tags.get(f"{TAG_EVAL_PREFIX}{s.name}") != s.definition())]
            perturbations = [p for p in self.study.perturbations
                             if not set(protocol_metric_names([], [p])) <= set(have)
                             or tags.get(f"{TAG_ROBUST_PREFIX}{p.key}") != p.describe()]
            timed = bool(latency_names) and latency.times(seed) and (
                not latency_names <= set(have) or tags.get(TAG_LATENCY_THREADS) != str(latency.threads))
            return sets, perturbations, timed

        records = self.tracker.protocol_records(done.values())
        lacking = [cell_id for cell_id, run_id in done.items()
                   if any(missing(*records.get(run_id, ({}, {})), self.cells[cell_id].config.seed))]
        # Workers sharing the study take the cells in different orders, and a cell's lock makes
        # the others skip what one of them added meanwhile.
        lacking.sort(key=lambda c: hashlib.sha256(f"{os.getpid()}:{c}".encode()).digest())
        engine = getattr(self.storage, "engine", None)
        for cell_id in lacking:
            self._check_signal()
            run_id = done[cell_id]
            with study_lock(self.study.storage, engine, f"protocol of {cell_id} in {self.study.name}"):
                run = self.tracker.client.get_run(run_id)
                have = dict(run.data.metrics)
                sets, perturbations, timed = missing(have, dict(run.data.tags), self.cells[cell_id].config.seed)
                if not sets and not perturbations and not timed:
                    continue
                added = ", ".join([s.name for s in sets] + [p.key for p in perturbations] + ["latency"] * timed)
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = self._kept_checkpoint(cell_id, run_id, Path(tmp))
                    if checkpoint is None:
                        log.warning("cell %s: cannot add %s: its checkpoint is neither in %s nor logged to MLflow "
                                    "(log_checkpoint)", cell_id, added, self.cells[cell_id].config.output_dir)
                        continue
                    log.info("cell %s: evaluating its checkpoint %s on %s (added to or changed in the study after it finished)",
                             cell_id, checkpoint, added)
                    scalars, tags = {}, protocol_tags(sets, perturbations)
                    if sets or perturbations:
                        scalars = self._evaluate_protocol(self.cells[cell_id], checkpoint,
                                                          have.get("val_eer_threshold"), lambda: bool(self.stop),
                                                          sets, perturbations)
                    if timed:
                        measured, latency_tags = self._measure_latency(self.cells[cell_id], checkpoint)
                        scalars, tags = {**scalars, **measured}, {**tags, **latency_tags}
                self.tracker.log_scalars(run_id, scalars, tags)
            self.on_event("cell_protocol", {"cell": self.cells[cell_id], "metrics": len(scalars)})

    def _kept_checkpoint(self, cell_id: str, run_id: str, tmp: Path) -> Path | None:
        """A finished cell's selected checkpoint: ``<runs_dir>/<cell>/best.pt`` on this machine, else
        the copy logged to its MLflow run (``log_checkpoint``, downloaded into ``tmp``), else None."""
        local = Path(self.cells[cell_id].config.output_dir) / "best.pt"
        if local.is_file():
            return local
        try:
            return Path(self.tracker.client.download_artifacts(run_id, f"{ARTIFACT_CHECKPOINT_DIR}/best.pt", str(tmp)))
        except Exception as err:  # MLflow raises its own or OSError types for a missing artifact
            log.debug("cell %s: no logged checkpoint: %s", cell_id, err)
            return None

    def _label(self, trial: optuna.Trial, cell_id: str) -> str:
        """How the summary names an attempt: the cell id, with the trial number in a search (two
        trials can draw the same cell)."""
        return f"trial {trial.number} (cell {cell_id})" if self.study.is_search else cell_id

    def _check_claim(self, trial: optuna.Trial) -> None:
        """Raises ``ClaimLost`` when ``trial`` is no longer RUNNING: another worker failed it as
        stale and runs its cell. Called right before each write into the cell's MLflow run (the
        stores have no conditional write, so a stall of a whole grace period between this check
        and the write is the one case it cannot exclude)."""
        if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            raise ClaimLost(trial.user_attrs.get("cell_id", ""))

    def _holds_claim(self, trial: optuna.Trial) -> bool:
        """Whether ``trial`` is still this worker's (True when the storage cannot say: the caller
        then records its failure as before)."""
        try:
            return self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING
        except Exception:
            return True

    def _leave_taken_over(self, cell: Cell, run_id: str, summary: RunSummary) -> None:
        """A worker whose trial was failed as stale leaves the cell, its trial and its MLflow run to
        the worker that took it over, writing nothing into either."""
        log.warning("cell %s: this worker's heartbeat expired and another worker took the cell over; "
                    "leaving it (and MLflow run %s) to that worker", cell.cell_id, run_id)
        summary.taken_over.append(cell.cell_id)
        self.on_event("cell_end", {"cell": cell, "status": "TAKEN OVER"})

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
            return
        states = cell_states(self.optuna_study)
        if all(states.get(c) in DONE_STATES for c in self.cells):
            self.tracker.finish_parent("FINISHED")
        elif summary.interrupted:
            self.tracker.finish_parent("KILLED")
        elif not any(s in ("running", "waiting") for s in states.values()):
            self.tracker.finish_parent("FAILED")


def epoch_text(stats: EpochStats) -> str:
    return f"epoch {stats.epoch}: val acc {stats.val_accuracy:.3f}, loss {stats.train_loss:.3f}"
