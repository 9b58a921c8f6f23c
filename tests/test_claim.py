"""The claim protocol (``studies.claim``) on a real SQLite storage: a lost race is not an error, a
busy database is retried a bounded number of times, and every other error surfaces at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from studies.claim import CLAIM_TRIES, TrialIds, claim_trial, is_busy


def _storage(tmp_path: Path, timeout: float = 120) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db", engine_kwargs={"connect_args": {"timeout": timeout}},
                                      heartbeat_interval=1, grace_period=10)


def _waiting_trial(storage: optuna.storages.RDBStorage) -> int:
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({}, user_attrs={"cell_id": "c"})
    return TrialIds(storage, "s")(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0])


class _Calls:
    """Counts the calls of one method of a real storage (the database is not replaced)."""

    def __init__(self, storage, name: str) -> None:
        self.count, self._method = 0, getattr(storage, name)
        setattr(storage, name, self)

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self._method(*args, **kwargs)


def test_a_claim_takes_a_waiting_trial_and_records_its_first_heartbeat(tmp_path):
    storage = _storage(tmp_path)
    trial_id = _waiting_trial(storage)
    assert claim_trial(storage, trial_id)
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # Optuna has no public reader of heartbeats
        assert db.execute("select count(*) from trial_heartbeats where trial_id = ?", (trial_id,)).fetchone() == (1,)
    assert not claim_trial(storage, trial_id)  # lost race: another worker (here: this one) holds it


def test_a_claim_of_a_finished_trial_is_a_lost_race_not_an_error(tmp_path):
    storage = _storage(tmp_path)
    trial_id = _waiting_trial(storage)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)  # e.g. failed as stale meanwhile
    calls = _Calls(storage, "set_trial_state_values")
    assert not claim_trial(storage, trial_id)  # UpdateFinishedTrialError: not retried
    assert calls.count == 1


def test_an_unexpected_error_in_the_claim_surfaces_instead_of_being_retried(tmp_path):
    storage = _storage(tmp_path)
    _waiting_trial(storage)
    calls = _Calls(storage, "set_trial_state_values")
    with pytest.raises(KeyError):  # no such trial: a bug, not a race
        claim_trial(storage, 10_000)
    assert calls.count == 1


def test_a_broken_database_surfaces_from_the_claim_instead_of_being_retried(tmp_path):
    storage = _storage(tmp_path)
    trial_id = _waiting_trial(storage)
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # an OperationalError that is not "locked"
        db.execute("alter table trial_heartbeats rename to gone")
    calls = _Calls(storage, "record_heartbeat")
    with pytest.raises(StorageInternalError) as info:
        claim_trial(storage, trial_id)
    assert isinstance(info.value.__cause__, OperationalError) and "no such table" in str(info.value.__cause__)
    assert calls.count == 1


def _lock(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("begin exclusive")
    return db


def test_a_busy_database_is_retried_until_the_claim_goes_through(tmp_path):
    storage = _storage(tmp_path, timeout=0.05)
    trial_id = _waiting_trial(storage)
    db = _lock(tmp_path / "optuna.db")
    threading.Timer(0.3, db.rollback).start()  # the other writer finishes during the retries
    calls = _Calls(storage, "set_trial_state_values")
    assert claim_trial(storage, trial_id)
    assert 1 < calls.count <= CLAIM_TRIES
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    db.close()


@pytest.mark.integration
def test_a_database_that_stays_busy_leaves_the_trial_waiting_after_a_bounded_number_of_tries(tmp_path):
    storage = _storage(tmp_path, timeout=0.05)
    trial_id = _waiting_trial(storage)
    db = _lock(tmp_path / "optuna.db")
    calls = _Calls(storage, "set_trial_state_values")
    try:
        assert not claim_trial(storage, trial_id)
    finally:
        db.rollback()
        db.close()
    assert calls.count == CLAIM_TRIES
    assert storage.get_trial(trial_id).state == TrialState.WAITING


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("orig", "busy"), [
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.OperationalError("no such table: trials"), False),
    (_PgError("40001"), True),  # serialization_failure
    (_PgError("40P01"), True),  # deadlock_detected
    (_PgError("55P03"), True),  # lock_not_available
    (_PgError("42P01"), False),  # undefined_table
])
def test_only_lock_and_serialization_errors_count_as_busy(orig, busy):
    err = OperationalError("update trials ...", {}, orig)
    assert is_busy(err) is busy
    try:
        raise StorageInternalError("commit failed") from err  # as Optuna's RDB storage wraps it
    except StorageInternalError as wrapped:
        assert is_busy(wrapped) is busy
    assert not is_busy(RuntimeError("database is locked"))  # not the storage's error type
