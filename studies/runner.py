"""Executes a study: one Optuna study per study file, each grid cell exactly once.

Exactly-once across workers (several terminals, or several machines on one PostgreSQL storage and
one MLflow server): grid cells are enqueued as WAITING trials tagged with their ``cell_id``; a worker
claims one with Optuna's atomic WAITING -> RUNNING transition; a cell with a COMPLETE trial is never
run again, and when two workers enqueued the same cell concurrently only the lowest-numbered trial
runs (the other is pruned as a duplicate). A running cell records a heartbeat; a worker killed with
SIGKILL leaves a trial whose heartbeat goes stale, which any worker fails and enqueues again. A
worker that was only stalled past the grace period finds, at its next epoch end, that its trial is
no longer RUNNING; it then leaves the cell (and its MLflow run) to whichever worker took it over.
SIGINT/SIGTERM end the current cell: its MLflow run becomes KILLED and its trial FAIL, and the next
invocation runs it again, resuming training from the cell's last finished epoch.

Distillation (``studies.distill``): a student cell is claimed only once its teacher cell has a
COMPLETE trial, in this study or in the teacher's own study on the same storage. Until then the
worker runs other cells, and waits while the teacher is waiting or running here, or running in its
own study (a stale teacher there is failed like a stale trial here, so the wait is bounded). When
the teacher can no longer finish in this invocation (its trial failed with a recorded failure, or
its own study is not being run), the student is claimed and failed at once with the reason; the
next invocation enqueues both again.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bnn.config import FitConfig
from bnn.train import EpochStats, fit
from studies.db_setup import open_shared, sqlite_path
from studies.distill import Teacher
from studies.spec import Cell, Study, set_dotted
from studies.tracking import Tracker

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ENV = "BNN_HEARTBEAT_SECONDS"
MIN_GRACE_SECONDS = 10  # a loaded machine can stall a heartbeat for seconds
WAIT = "wait"  # a student's teacher is not done but may still finish


class StudyInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a cell ran."""


class ClaimLost(Exception):
    """This worker's trial was failed as stale (heartbeat expired) while its cell still ran."""


@dataclass
class RunSummary:
    """What one ``run_study`` invocation did."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    taken_over: list[str] = field(default_factory=list)
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
    )


def load_optuna_study(study: Study, create: bool = True) -> optuna.Study | None:
    """The study's Optuna study; ``None`` when it does not exist and ``create`` is false."""
    storage = open_storage(study.storage, create=create)
    if storage is None:
        return None
    direction = study.spec.objective.direction
    sampler = optuna.samplers.TPESampler(seed=study.spec.search.sampler_seed) if study.spec.search else None
    if create:
        return open_shared(
            study.storage,
            lambda: optuna.create_study(
                study_name=study.name, storage=storage, direction=direction, load_if_exists=True, sampler=sampler
            ),
            "creating the Optuna study",
        )
    try:
        return optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
    except KeyError:
        return None


def cell_states(optuna_study: optuna.Study | None) -> dict[str, str]:
    """cell_id -> "done" | "running" | "waiting" | "failed" from the trials (pruned duplicates ignored)."""
    states: dict[str, str] = {}
    if optuna_study is None:
        return states
    rank = {"done": 4, "running": 3, "waiting": 2, "failed": 1}
    names = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
             TrialState.FAIL: "failed"}
    for trial in optuna_study.get_trials(deepcopy=False):
        cell_id = trial.user_attrs.get("cell_id")
        name = names.get(trial.state)
        if cell_id and name and rank[name] > rank.get(states.get(cell_id, ""), 0):
            states[cell_id] = name
    return states


def check_inputs(study: Study) -> None:
    """Fails before anything is created when a cell's dataset or pretrained weights are missing."""
    from bnn.data import create_dataset
    from bnn.pretrained import resolve_weights

    configs = [cell.config for cell in study.cells] or [study.base]
    datasets = {(c.dataset, c.data_root, repr(sorted(c.data_params.items()))): c for c in configs}
    for c in datasets.values():
        create_dataset(c.dataset, "train", root=c.data_root, resolution=c.resolution, **c.data_params)
    for c in configs:
        if c.pretrained:
            resolve_weights(c.backbone, c.pretrained)
        if c.distill and not c.distill.teacher_id and not Path(c.distill.teacher).is_file():
            raise FileNotFoundError(f"distill.teacher: teacher checkpoint '{c.distill.teacher}' not found "
                                    "(a best.pt written by `python -m bnn train` or a study cell)")


class _Heartbeat:
    """Records a trial's heartbeat in a thread while its cell runs."""

    def __init__(self, storage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
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

    def __init__(self, study: Study, on_event: Callable[[str, dict], None] | None = None) -> None:
        self.study = study
        self.on_event = on_event or (lambda kind, info: None)
        self.optuna_study = load_optuna_study(study, create=True)
        self.storage = self.optuna_study._storage
        self.tracker = open_shared(study.tracking_uri, lambda: Tracker(study), "opening the MLflow store")
        self.cells = {cell.cell_id: cell for cell in study.cells}
        self._signal: str | None = None  # name of a SIGINT/SIGTERM received
        self._other_studies: dict[str, optuna.Study] = {}  # teachers' own studies, by name
        self._unrunnable: dict[int, str] = {}  # claimed trial id -> why its teacher cannot finish
        self._waiting_for_teacher = False  # a WAITING student's teacher may still finish
        self._in_training = False  # a signal interrupts training at once, anything else at its end

    def _on_signal(self, signum, frame) -> None:
        """Interrupts a cell's training immediately; between cells, stops before the next claim."""
        self._signal = signal.Signals(signum).name
        if self._in_training:
            self._in_training = False
            raise StudyInterrupted(self._signal)

    def _check_signal(self) -> None:
        if self._signal:
            raise StudyInterrupted(self._signal)

    # --- queue -------------------------------------------------------------------------------
    def _trials_by_cell(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        by_cell: dict[str, list] = {}
        for trial in self.optuna_study.get_trials(deepcopy=False):
            if "cell_id" in trial.user_attrs:
                by_cell.setdefault(trial.user_attrs["cell_id"], []).append(trial)
        return by_cell

    def _fail_stale(self) -> None:
        """Fails trials whose worker stopped beating; their MLflow runs become KILLED."""
        optuna.storages.fail_stale_trials(self.optuna_study)
        for trial in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id and "failure" not in trial.user_attrs:
                self.tracker.mark_killed_if_running(run_id)

    def _enqueue(self, only_stale: bool) -> None:
        """Enqueues cells that have no complete, running or waiting trial.

        With ``only_stale``, a failed cell is enqueued again only when its worker died (no
        recorded failure); cells that raised stay failed until the next invocation.
        """
        by_cell = self._trials_by_cell()
        for cell_id in self.cells:
            trials = [t for t in by_cell.get(cell_id, []) if t.state != TrialState.PRUNED]
            if any(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials):
                continue
            if only_stale and trials and "failure" in trials[-1].user_attrs:
                continue
            self.optuna_study.enqueue_trial({}, user_attrs={"cell_id": cell_id})

    def _teacher_verdict(self, teacher: Teacher, by_cell: dict[str, list]) -> str | None:
        """``None`` when the teacher cell is done, ``WAIT`` while it may still finish, else why not."""
        name = f"teacher cell {teacher.cell_id} ({teacher.label})"
        if teacher.study == self.study.name:
            trials = [t for t in by_cell.get(teacher.cell_id, []) if t.state != TrialState.PRUNED]
            if any(t.state == TrialState.COMPLETE for t in trials):
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
            states = {t.state for t in other.get_trials(deepcopy=False) if t.user_attrs.get("cell_id") == teacher.cell_id}
            if TrialState.COMPLETE in states:
                return None
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
            if other.state == TrialState.COMPLETE:
                return True
            if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
                return True
        return False

    # --- execution ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Runs cells until none is left to this worker; returns what happened."""
        summary = RunSummary()
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        try:
            self._fail_stale()
            states = cell_states(self.optuna_study)
            summary.skipped_done = sum(1 for c in self.cells if states.get(c) == "done")
            if self.study.is_search:
                self._run_search(summary)
                return summary
            self._enqueue(only_stale=False)
            while True:
                self._check_signal()
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
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._close_parent(summary)
        return summary

    def _sleep(self) -> None:
        """One heartbeat interval; a signal interrupts it (nothing to clean up while waiting)."""
        self._in_training = True
        try:
            time.sleep(self.storage.get_heartbeat_interval())
        finally:
            self._in_training = False

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
        """TPE trials until the budget of started trials is used (finished or running)."""
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
            used = self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if len(used) >= search.trials:
                return
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

    def _execute(self, trial: optuna.Trial, cell: Cell, summary: RunSummary) -> None:
        cell_id = cell.cell_id
        run_id = self.tracker.cell_run(cell)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("axes", cell.axes_label())
        self.on_event("cell_start", {"cell": cell, "run_id": run_id})
        callbacks = [
            self.tracker.epoch_logger(run_id),
            lambda s: self.on_event("epoch", {"cell": cell, "stats": s}),
            lambda s: self._check_claim(trial),
        ]
        try:
            with _Heartbeat(self.storage, trial._trial_id):
                self._in_training = True
                try:
                    self._check_signal()
                    result = fit(cell.config, callbacks=callbacks)
                finally:
                    self._in_training = False
                self._check_claim(trial)
                self.tracker.log_result(run_id, result)
        except ClaimLost:
            log.warning("cell %s: this worker's heartbeat expired and another worker took the cell over; "
                        "leaving it (and MLflow run %s) to that worker", cell_id, run_id)
            summary.taken_over.append(cell_id)
            self.on_event("cell_end", {"cell": cell, "status": "TAKEN OVER"})
            return
        except StudyInterrupted as err:
            trial.set_user_attr("failure", f"interrupted by {err}")
            self.tracker.end(run_id, "KILLED", f"interrupted by {err}")
            self.optuna_study.tell(trial, state=TrialState.FAIL)
            self.on_event("cell_end", {"cell": cell, "status": "KILLED"})
            raise
        except Exception as err:
            log.exception("cell %s failed", cell_id)
            message = f"{type(err).__name__}: {err}"
            trial.set_user_attr("failure", message)
            self.tracker.end(run_id, "FAILED", message)
            self.optuna_study.tell(trial, state=TrialState.FAIL)
            summary.failed[cell_id] = message
            self.on_event("cell_end", {"cell": cell, "status": "FAILED", "error": message})
            return
        metric = self.study.spec.objective.metric
        value = getattr(result.val, metric.removeprefix("val_"), None) if metric.startswith("val_") else None
        if value is None:
            value = getattr(result.test, metric.removeprefix("test_"), float("nan"))
        for key, val in {**result.val.scalars("val_"), **result.test.scalars("test_"), "ops": result.cost.ops}.items():
            trial.set_user_attr(key, val)
        self.tracker.end(run_id, "FINISHED")
        if value is None or math.isnan(value):
            trial.set_user_attr("failure", f"objective {metric} is NaN")  # not enqueued again in this run
            self.optuna_study.tell(trial, state=TrialState.FAIL)
        else:
            self.optuna_study.tell(trial, float(value))
        summary.completed.append(cell_id)
        self.on_event("cell_end", {"cell": cell, "status": "FINISHED", "result": result})

    def _check_claim(self, trial: optuna.Trial) -> None:
        if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            raise ClaimLost(trial.user_attrs.get("cell_id", ""))

    def _close_parent(self, summary: RunSummary) -> None:
        if self.study.is_search:
            self.tracker.finish_parent("KILLED" if summary.interrupted else "FINISHED")
            return
        states = cell_states(self.optuna_study)
        if all(states.get(c) == "done" for c in self.cells):
            self.tracker.finish_parent("FINISHED")
        elif summary.interrupted:
            self.tracker.finish_parent("KILLED")
        elif not any(s in ("running", "waiting") for s in states.values()):
            self.tracker.finish_parent("FAILED")


def epoch_text(stats: EpochStats) -> str:
    return f"epoch {stats.epoch}: val acc {stats.val_accuracy:.3f}, loss {stats.train_loss:.3f}"
