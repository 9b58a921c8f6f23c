"""Safe creation of the shared databases (Optuna storage, MLflow store) by concurrent workers.

Several workers started together would each create or migrate the same schema. On SQLite that
is not just a lost race: MLflow's alembic migrations rebuild tables through temporary copies, and
two of them interleaved leave the file broken (``table _alembic_tmp_... already exists``). So on
SQLite the first open is serialised with a lock file beside the database; server databases
(PostgreSQL, MySQL) keep a retry for the benign races of concurrent creation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_TIMEOUT_SECONDS = 600


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, ``None`` for any other URL."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def open_shared(url: str, fn: Callable[[], T], what: str, attempts: int = 6) -> T:
    """Runs ``fn`` (which opens or creates the database at ``url``) safely against other workers."""
    path = sqlite_path(url)
    if path is None:
        return retry_on_race(fn, what, attempts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_SECONDS):
        return retry_on_race(fn, what, attempts)


def retry_on_race(fn: Callable[[], T], what: str, attempts: int = 6) -> T:
    """Retries ``fn`` when workers starting together race to create the same database schema."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # IntegrityError / "database is locked" from a concurrent creator
            if attempt == attempts - 1:
                raise
            log.info("%s: retrying after %s", what, type(err).__name__)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
