"""Safe creation of the shared databases (Optuna storage, MLflow store) by concurrent workers.

Several workers started together would each create or migrate the same schema. On SQLite that
is not just a lost race: MLflow's alembic migrations rebuild tables through temporary copies, and
two of them interleaved leave the file broken (``table _alembic_tmp_... already exists``). So on
SQLite the first open is serialised with a lock file beside the database; server databases
(PostgreSQL, MySQL) keep a retry for the benign races of concurrent creation.

A SQLite database is also created whole or not at all (``open_shared``'s ``initialise``): the
schema is built in a temporary file beside it, which is then renamed into place, so a worker
interrupted or killed while the schema is created leaves no half-migrated file behind. A
half-created file left by an older version (``is_half_created``) is moved aside and rebuilt.

A PostgreSQL URL needs the optional driver (``pip install -e ".[postgres]"``, psycopg 3, which
SQLAlchemy 2 uses for ``postgresql://`` and ``postgresql+psycopg://``): ``require_driver`` refuses
such a URL with one line naming the extra before anything is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_TIMEOUT_SECONDS = 600
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the MLflow store of a study that names none
# How long a new connection to a database server is retried (a restart, a fail-over) before the
# error reaches the command: a PostgreSQL restart takes seconds.
RECONNECT_SECONDS = 60


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, ``None`` for any other URL."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://")  # SQLAlchemy 2: both mean psycopg 3


class MissingDriverError(ValueError):
    """A database URL whose driver is not installed (a user error: exit code 2 in every CLI)."""


def require_driver(url: str) -> None:
    """Raises ``MissingDriverError`` when ``url`` is a PostgreSQL URL and psycopg is not installed."""
    if url.startswith(POSTGRES_SCHEMES) and importlib.util.find_spec("psycopg") is None:
        raise MissingDriverError('PostgreSQL needs the driver: pip install -e ".[postgres]"')


def open_shared(
    url: str, fn: Callable[[], T], what: str, attempts: int = 6, initialise: Callable[[str], None] | None = None
) -> T:
    """Runs ``fn`` (which opens or creates the database at ``url``) safely against other workers.

    Args:
        url: The database URL.
        fn: Opens it (creating the schema when missing).
        what: For log lines (``"opening the MLflow store"``).
        attempts: Tries of ``fn`` against races of concurrent creators (server databases).
        initialise: Builds the complete schema at a given ``sqlite:///`` URL; with it, a missing
            SQLite file is created atomically (``create_whole``) before ``fn`` runs.

    Raises:
        MissingDriverError: ``url`` is PostgreSQL and its driver is not installed.
    """
    require_driver(url)
    path = sqlite_path(url)
    if path is None:
        return retry_on_race(fn, what, attempts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_SECONDS):
        if initialise is None:
            return retry_on_race(fn, what, attempts)
        if path.exists() and is_half_created(path):
            aside = path.with_name(f"{path.name}.half-created-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("%s: '%s' was left half-created by an interrupted first run (its schema version is not "
                        "recorded; it holds no runs or trials); moved aside to '%s' and created again",
                        what, path, aside)
            os.replace(path, aside)
        if not path.exists():
            create_whole(path, initialise)
        return retry_on_race(fn, what, attempts)


def create_whole(path: Path, initialise: Callable[[str], None]) -> None:
    """Creates the SQLite database ``path`` by ``initialise``-ing a temporary file beside it and
    renaming it into place (atomic on POSIX and Windows): ``path`` is either absent or complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    tmp.unlink(missing_ok=True)
    try:
        initialise(f"sqlite:///{tmp.as_posix()}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_half_created(path: Path) -> bool:
    """Whether the SQLite file ``path`` is a schema whose creation was interrupted: tables but no
    recorded alembic version (MLflow and Optuna both record it when their migrations finish a
    step) or a leftover ``_alembic_tmp_*`` table, and no MLflow run or Optuna trial in it. A file
    that cannot be read as SQLite is not judged (opening it reports the error)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
            if not tables or any(db.execute(f"select count(*) from {t}").fetchone()[0]
                                 for t in ("runs", "trials") if t in tables):
                return False
            if "alembic_version" not in tables or not db.execute("select count(*) from alembic_version").fetchone()[0]:
                return True
            return any(t.startswith("_alembic_tmp_") for t in tables)
    except sqlite3.DatabaseError:
        return False


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


@contextlib.contextmanager
def study_lock(storage_url: str, engine, name: str) -> Iterator[None]:
    """Serialises a one-time set-up step of a study (creating its MLflow parent run) across the
    workers that share its Optuna storage: a file lock beside a SQLite storage, a session advisory
    lock on a PostgreSQL storage (released by the server if the worker dies), none elsewhere.

    Without it, workers starting together each create a parent run and keep the oldest one they
    can see; a run inserted late but stamped early made two workers keep different parents, one
    of them deleted by its creator (seen in the PostgreSQL + MLflow server e2e test).
    """
    path = sqlite_path(storage_url)
    if path is not None:
        with FileLock(f"{path}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock", timeout=LOCK_TIMEOUT_SECONDS):
            yield
        return
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text(f"set lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"))
        conn.execute(text("select pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(text("select pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()


def bridge_server_restarts(engine, seconds: float = RECONNECT_SECONDS) -> None:
    """Makes a SQLAlchemy engine of a database server outlive a restart: connections are checked
    before use (``pool_pre_ping`` at creation; a connection the restart cut is replaced) and a new
    connection that is refused is retried with a growing pause for at most ``seconds`` in all,
    one warning per outage. SQLite engines are left as they are.

    Args:
        engine: A ``sqlalchemy.Engine`` (Optuna's ``RDBStorage.engine``).
        seconds: The bound on retrying one connection.
    """
    from sqlalchemy import event, exc

    if engine.dialect.name == "sqlite":
        return

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, record, cargs, cparams):
        deadline, pause, warned = time.monotonic() + seconds, 0.5, False
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as err:
                if time.monotonic() + pause > deadline:
                    raise exc.OperationalError("connect", {}, err) from err
                if not warned:
                    log.warning("database server %s refused a connection (%s); retrying for up to %.0f s",
                                engine.url.render_as_string(hide_password=True), str(err).splitlines()[0], seconds)
                    warned = True
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
