"""Which worker runs a cell: claiming a queued trial, heartbeats, and losing a claim.

The claim protocol (in the manner of ``optuna.storages.BaseStorage``'s contract):

- A grid cell is enqueued as a WAITING trial whose user attribute ``cell_id`` names it. A cell
  with a finished trial (COMPLETE, or PRUNED as not comparable) is never enqueued again.
- A worker owns a cell while the trial it moved WAITING -> RUNNING (``claim_trial``, Optuna's
  atomic transition) stays RUNNING. It records a heartbeat at once and then in a thread
  (``Heartbeat``); a trial whose heartbeat is older than the grace period is failed as stale by
  any worker (``CellQueue.fail_stale``), and its cell is enqueued again.
- A worker whose trial is no longer RUNNING has lost its cell (``CellQueue.check_claim`` raises
  ``ClaimLost``): it writes nothing more into the cell's trial or MLflow run.
- When two workers enqueued the same cell concurrently, only the lowest-numbered live trial runs
  (``CellQueue.is_duplicate``; the caller prunes the other).
- A claim lost to another worker is not an error: ``claim_trial`` returns False when the trial is
  no longer WAITING, or already finished (``optuna.exceptions.UpdateFinishedTrialError``), and
  retries a bounded number of times when the database is busy (``is_busy``). Every other error
  is raised.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_ENV = "BNN_HEARTBEAT_SECONDS"
MIN_GRACE_SECONDS = 10  # a loaded machine can stall a heartbeat for seconds
CLAIM_TRIES = 5  # tries of one claim while the database is busy
SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
# PostgreSQL: serialization_failure (only under a stricter isolation level than Optuna's READ
# COMMITTED), deadlock_detected, lock_not_available (a lock_timeout set by the server or the user).
POSTGRES_BUSY = ("40001", "40P01", "55P03")


class ClaimLost(Exception):
    """This worker's trial was failed as stale (heartbeat expired) while its cell still ran."""


class TrialIds:
    """The storage id of each trial of one study, through Optuna's public storage API.

    ``optuna.storages.BaseStorage`` addresses a trial by its storage-wide id, which ``Trial`` and
    ``FrozenTrial`` keep private (``_trial_id``); their public ``number`` counts within the study.
    ``get_trial_id_from_study_id_trial_number`` maps one to the other; an id never changes, so
    each is asked once.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        self._storage = storage
        self._study_id = storage.get_study_id_from_name(study_name)
        self._ids: dict[int, int] = {}

    def __call__(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
        """The storage id of ``trial`` (a trial of this study)."""
        if trial.number not in self._ids:
            self._ids[trial.number] = self._storage.get_trial_id_from_study_id_trial_number(
                self._study_id, trial.number)
        return self._ids[trial.number]


def heartbeat_seconds() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, "10"))


def grace_seconds(interval: int) -> int:
    """How long a heartbeat may be missing before the trial counts as stale."""
    return max(3 * interval, MIN_GRACE_SECONDS)


def is_busy(err: BaseException) -> bool:
    """Whether ``err`` says only that the database is busy with another writer (worth a retry):
    SQLite's "database is locked" or PostgreSQL's serialization, deadlock and lock-timeout errors,
    raised by SQLAlchemy as ``OperationalError``, which Optuna's RDB storage wraps in
    ``StorageInternalError``."""
    if isinstance(err, StorageInternalError):
        err = err.__cause__
    if not isinstance(err, OperationalError):
        return False
    code = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
    return code in POSTGRES_BUSY or any(text in str(err.orig).lower() for text in SQLITE_BUSY)


def claim_trial(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    """Moves a WAITING trial to RUNNING for this worker and records its first heartbeat.

    A first heartbeat at once: Optuna finds stale only trials that have one, so a worker killed
    before its heartbeat thread starts (MLflow run creation comes first) would otherwise leave a
    RUNNING trial that no one fails.

    Returns:
        True when this worker now owns the trial; False when another worker took it first (the
        trial is no longer WAITING, or already finished), or the database stayed busy for
        ``CLAIM_TRIES`` tries (the trial stays WAITING for a later claim).

    Raises:
        Exception: Every error but a lost race and a busy database (``is_busy``).
    """
    try:
        answered, moved = _while_busy(
            lambda: storage.set_trial_state_values(trial_id, state=TrialState.RUNNING), "claim"
        )
    except UpdateFinishedTrialError:
        return False  # another worker took it and has finished it, or failed it as stale
    if not answered:
        log.warning("trial %d not claimed: the database stayed busy for %d tries", trial_id, CLAIM_TRIES)
        return False
    if not moved:
        return False  # another worker took it
    answered, _ = _while_busy(lambda: storage.record_heartbeat(trial_id), "first heartbeat")
    if not answered:
        log.warning("trial %d: no first heartbeat (the database stayed busy); the heartbeat thread records it",
                    trial_id)
    return True


def _while_busy(call: Callable[[], T], what: str) -> tuple[bool, T | None]:
    """``(True, call())``, retrying up to ``CLAIM_TRIES`` times while the database is busy
    (``is_busy``); ``(False, None)`` when it stayed busy. Any other error is raised."""
    for attempt in range(CLAIM_TRIES):
        try:
            return True, call()
        except (StorageInternalError, OperationalError) as err:
            if not is_busy(err):
                raise
            log.debug("%s retry %d: %s", what, attempt, err)
            time.sleep(0.2 * (attempt + 1))
    return False, None


class Heartbeat:
    """Records a trial's heartbeat in a thread while its cell runs, and notices when the trial is
    no longer RUNNING (failed as stale by another worker): ``lost`` is then set, which ``fit``'s
    ``should_stop`` polls, so a worker whose cell was taken over stops within a beat."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
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

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
