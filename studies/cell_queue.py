"""The queue of a study's cells on its Optuna storage: opening it, cell states, ``CellQueue``.

The claim protocol that decides which worker runs a cell is ``studies.claim``'s; this module
enqueues the cells, fails stale trials, decides which waiting trial a worker may claim and reads
the cell states that ``python -m studies status`` shows.

Distillation (``studies.teachers``): a student cell is claimed only once its teacher cell has a
COMPLETE trial, in this study or in the teacher's own study on the same storage. Until then the
worker runs other cells, and waits while the teacher is waiting or running here, or running in its
own study (a stale teacher there is failed like a stale trial here, so the wait is bounded). When
the teacher can no longer finish in this invocation (its trial failed with a recorded failure, or
its own study is not being run), the student is claimed and failed at once with the reason; the
next invocation enqueues both again.
"""

from __future__ import annotations

import logging
import warnings

import optuna
from optuna.trial import TrialState

from studies.claim import ClaimLost, TrialIds, claim_trial, grace_seconds, heartbeat_seconds
from studies.db_setup import bridge_server_restarts, open_shared, sqlite_path
from studies.spec import Cell, Study
from studies.teachers import Teacher
from studies.yaml_lines import StudyFileError

log = logging.getLogger(__name__)

WAIT = "wait"  # a student's teacher is not done but may still finish
MAX_ATTEMPTS = 3  # starts of one cell per invocation (workers that died included)
NOT_COMPARABLE = "not comparable"  # the cell state of a finished cell whose objective is NaN
DONE_STATES = ("done", NOT_COMPARABLE)  # cell states that are final: not run again


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
    else:  # a server: replace connections a restart cut (db_setup.bridge_server_restarts)
        engine_kwargs = {"pool_pre_ping": True}
    interval = heartbeat_seconds()

    def heartbeat_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # Optuna marks heartbeats experimental; the claim protocol needs them
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace_seconds(interval)
            )
        bridge_server_restarts(storage.engine)
        return storage

    return open_shared(
        url,
        heartbeat_storage,
        "opening the Optuna storage",
        initialise=_create_optuna_schema,
    )


def _create_optuna_schema(url: str) -> None:
    """Builds Optuna's complete schema at the SQLite ``url`` (for ``open_shared``)."""
    optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}}).engine.dispose()


def load_optuna_study(study: Study, create: bool = True,
                      storage: optuna.storages.RDBStorage | None = None) -> optuna.Study | None:
    """The study's Optuna study; ``None`` when it does not exist and ``create`` is false.

    Its directions are the study file's objectives (``StudyFile.objectives``): one for a
    single-objective study, several for a multi-objective one, whose search samples with Optuna's
    multi-objective TPE (``TPESampler`` handles several objectives) and whose ``best_trials`` are
    the Pareto set.

    Args:
        study: The loaded study file.
        create: Create the storage and the Optuna study when missing.
        storage: The study's storage, opened by the caller (``open_storage``); opened here if not given.

    Raises:
        StudyFileError: ``create`` and the stored study was created with other directions (the
            objective list of the study file changed in number or direction).
    """
    if storage is None:
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




class CellQueue:
    """The cells of one study as trials of its Optuna study, seen by one worker.

    Attributes:
        optuna_study: The study's Optuna study.
        storage: Its storage, as opened by the caller (``open_storage``).
        cells: cell_id -> ``Cell`` of this version of the study file (a search adds its trials' cells).
        started: When this invocation began; attempts of it are trials started after it.
        waiting_for_teacher: After ``claim``: a WAITING student's teacher may still finish.
        unrunnable: Claimed trial id -> why its teacher cannot finish (``claim`` fills it, the
            runner pops it and fails the trial with the reason).
    """

    def __init__(self, study: Study, optuna_study: optuna.Study, storage: optuna.storages.RDBStorage,
                 cells: dict[str, Cell], started: float) -> None:
        self.study = study
        self.optuna_study = optuna_study
        self.storage = storage
        self.trial_id = TrialIds(storage, optuna_study.study_name)
        self.cells = cells
        self.started = started
        self.waiting_for_teacher = False
        self.unrunnable: dict[int, str] = {}
        self._other_studies: dict[str, optuna.Study] = {}  # teachers' own studies, by name

    def trials_by_cell(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        by_cell: dict[str, list] = {}
        for trial in self.optuna_study.get_trials(deepcopy=False):
            if "cell_id" in trial.user_attrs:
                by_cell.setdefault(trial.user_attrs["cell_id"], []).append(trial)
        return by_cell

    def fail_stale(self) -> list[str]:
        """Fails trials whose worker stopped beating; returns the MLflow run ids to mark KILLED:
        those of failed trials without a recorded failure, unless the cell has a newer trial (a
        retry reuses the cell's run, which then belongs to it)."""
        optuna.storages.fail_stale_trials(self.optuna_study)
        trials = self.optuna_study.get_trials(deepcopy=False)
        newest: dict[str, int] = {}
        for trial in trials:
            cell_id = trial.user_attrs.get("cell_id")
            if cell_id:
                newest[cell_id] = max(newest.get(cell_id, -1), trial.number)
        return [trial.user_attrs["mlflow_run_id"] for trial in trials
                if trial.state == TrialState.FAIL and trial.user_attrs.get("mlflow_run_id")
                and "failure" not in trial.user_attrs
                and newest.get(trial.user_attrs.get("cell_id")) == trial.number]

    def enqueue(self, only_stale: bool) -> None:
        """Enqueues cells that have no finished, running or waiting trial.

        With ``only_stale``, a failed cell is enqueued again only when its worker died (no
        recorded failure) and the cell was started fewer than ``MAX_ATTEMPTS`` times since this
        invocation began; cells that raised stay failed until the next invocation.
        """
        by_cell = self.trials_by_cell()
        for cell_id in self.cells:
            trials = [t for t in by_cell.get(cell_id, []) if is_finished(t) or t.state != TrialState.PRUNED]
            if any(is_finished(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                continue
            if only_stale and trials:
                if "failure" in trials[-1].user_attrs:
                    continue
                if self.attempts_here(trials) >= MAX_ATTEMPTS:
                    log.error("cell %s: %d attempts in this invocation ended without a result (its worker "
                              "died each time); not retried until the next invocation", cell_id, MAX_ATTEMPTS)
                    continue
            self.optuna_study.enqueue_trial({}, user_attrs={"cell_id": cell_id})

    def attempts_here(self, trials: list[optuna.trial.FrozenTrial]) -> int:
        """How many of ``trials`` were started since this invocation began."""
        return sum(1 for t in trials if t.datetime_start is not None and t.datetime_start.timestamp() >= self.started)

    def teacher_verdict(self, teacher: Teacher, by_cell: dict[str, list]) -> str | None:
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

    def teacher_verdicts(self) -> dict[str, str]:
        """cell_id -> ``WAIT`` or a failure reason, for the students whose teacher is not done."""
        students = [c for c in self.cells.values() if c.teacher is not None]
        if not students:
            return {}
        by_cell = self.trials_by_cell()
        verdicts = {c.cell_id: self.teacher_verdict(c.teacher, by_cell) for c in students}
        return {cell_id: v for cell_id, v in verdicts.items() if v is not None}

    def claim(self) -> optuna.Trial | None:
        """Takes one WAITING trial of this study version (``claim_trial``); ``None`` when there is none.

        Students whose teacher is not done are skipped while it may still finish; one whose
        teacher cannot finish is taken, with the reason in ``unrunnable``.

        Raises:
            Exception: What ``claim_trial`` raises: every error but a lost race and a busy database.
        """
        verdicts = self.teacher_verdicts()
        self.waiting_for_teacher = WAIT in verdicts.values()
        for frozen in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            cell_id = frozen.user_attrs.get("cell_id")
            if cell_id not in self.cells:
                continue  # a cell of another version of this study file (other --set values)
            if verdicts.get(cell_id) == WAIT:
                continue  # its teacher is not done yet
            trial_id = self.trial_id(frozen)
            if claim_trial(self.storage, trial_id):
                if cell_id in verdicts:
                    self.unrunnable[trial_id] = verdicts[cell_id]
                return optuna.Trial(self.optuna_study, trial_id)
        return None

    def is_duplicate(self, trial: optuna.Trial, cell_id: str) -> bool:
        """Another trial of the cell is complete, or is live with a lower number."""
        for other in self.trials_by_cell().get(cell_id, []):
            if other.number == trial.number:
                continue
            if is_finished(other):
                return True
            if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
                return True
        return False

    def check_claim(self, trial: optuna.Trial) -> None:
        """Raises ``ClaimLost`` when ``trial`` is no longer RUNNING: another worker failed it as
        stale and runs its cell. Called right before each write into the cell's MLflow run (the
        stores have no conditional write, so a stall of a whole grace period between this check
        and the write is the one case it cannot exclude)."""
        if self.storage.get_trial(self.trial_id(trial)).state != TrialState.RUNNING:
            raise ClaimLost(trial.user_attrs.get("cell_id", ""))

    def holds_claim(self, trial: optuna.Trial) -> bool:
        """Whether ``trial`` is still this worker's (True when the storage cannot say: the caller
        then records its failure as before)."""
        try:
            return self.storage.get_trial(self.trial_id(trial)).state == TrialState.RUNNING
        except Exception:
            return True

    def running_here(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials of this study version's cells (any worker)."""
        return [t for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("cell_id") in self.cells]
