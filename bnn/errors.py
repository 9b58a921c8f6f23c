"""Exit codes and one-line messages for user errors, shared by ``python -m bnn``, ``python -m studies``
and ``python -m reports``.

Exit codes, the same in every command line:

- 0 ``EXIT_OK``: success.
- 1 ``EXIT_PARTIAL``: it ran, but part of it failed: some study cells failed, some input images were
  skipped, a report notebook cell failed, a write failed because the storage did (disk full:
  ``storage_fault``; re-running the same command resumes).
- 2 ``EXIT_INVALID``: invalid input (arguments, a study or run file, a key, a value, a missing or
  unreadable file, a dataset that is not where it was said to be); nothing was created.
- 130 ``EXIT_INTERRUPTED``: interrupted (Ctrl-C), 128 + SIGINT as shells report it.

A user error prints ``error: <message>`` on stderr, one line naming the file, line, key or name at
fault, and no traceback. Two kinds keep indented detail lines under that first line because they
are how to fix it: a ``DatasetLayoutError`` (the expected layout, the environment variable) and a
failed report notebook (the tail of the notebook's own traceback). Any other exception is a bug,
not a user error, and keeps its Python traceback.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import sys
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing or its folders do not match the expected layout
    (``bnn.data.layout.layout_error`` builds its message)."""


EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

# Further exception types of one command line (checked first, in order), each to a function giving
# its (message, exit code), or None when that instance is not a user error after all.
ExtraErrors = Mapping[type[BaseException], Callable[[BaseException], "tuple[str, int] | None"]]


def exit_status_help(partial: str) -> str:
    """The ``exit status:`` paragraph of a command line's ``--help``; ``partial`` says what 1 means."""
    return (
        f"exit status: {EXIT_OK} success; {EXIT_PARTIAL} {partial}; {EXIT_INVALID} invalid input "
        f"(arguments, file, key or value; one line 'error: ...', nothing created); "
        f"{EXIT_INTERRUPTED} interrupted."
    )


class KeyedValueError(ValueError):
    """A ``ValueError`` about one entry of a mapping value (``data_params.cout``).

    Raised inside a pydantic validator, the error's location is the field (``data_params``);
    ``validation_errors`` appends ``key`` to it and reports ``detail`` as the message.

    Attributes:
        key: The entry at fault, relative to the field.
        detail: What is wrong with it and what would be valid, without the key.
    """

    def __init__(self, message: str, *, key: str, detail: str) -> None:
        self.key, self.detail = key, detail
        super().__init__(message)


def validation_errors(err: Any) -> list[tuple[str, str]]:
    """(dotted key, message) of each error of a pydantic ``ValidationError``.

    ``Value error, `` prefixes are dropped, and a ``KeyedValueError`` names its entry
    (``data_params.cout: unknown parameter; valid: ...``).
    """
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            key, message = ".".join(filter(None, (key, cause.key))), cause.detail
        out.append((key or "(root)", message))
    return out


def validation_message(err: Any, source: str | None = None) -> str:
    """One line for a pydantic ``ValidationError``: ``[source: ]key: message``, the first error, and
    how many more there are (with their keys)."""
    errors = validation_errors(err)
    key, message = errors[0]
    more = f" (and {len(errors) - 1} more: {', '.join(k for k, _ in errors[1:])})" if len(errors) > 1 else ""
    prefix = f"{source}: " if source else ""
    return f"{prefix}{key}: {message}{more}"


def yaml_message(err: Any, source: str | None = None) -> str:
    """One line for a YAML syntax error: ``file:line: invalid YAML: problem``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    name = source or (mark.name if mark is not None and not str(mark.name).startswith("<") else None)
    where = f"{name}:{mark.line + 1}" if name and mark is not None else (name or "")
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: invalid YAML: {problem}" if where else f"invalid YAML: {problem}"


def os_message(err: OSError) -> str:
    """``path: No such file or directory`` for an OSError about a path, else its own message."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


# OSErrors that are about a path the user gave (not the machine failing).
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


# errno values that mean the storage, not the program, failed a write.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file too large for this file system or limit", errno.EROFS: "read-only file system",
                  errno.EIO: "input/output error"}
_SQLITE_FAULTS = ("database or disk is full", "disk i/o error", "attempt to write a readonly database")
RESUME_HINT = "free space (or fix the storage), then re-run the same command: it resumes"


class StorageError(OSError):
    """A write failed because of the storage (disk full, quota, read-only, I/O error); the message
    names the path and the cause. A subclass of ``OSError`` with its ``errno``."""


def storage_fault(err: BaseException) -> str | None:
    """``path: cause`` when ``err`` or an exception it was raised from is a storage fault: an
    ``OSError`` with a ``STORAGE_ERRNOS`` errno, SQLite's "database or disk is full" (through
    SQLAlchemy, MLflow or Optuna) or PostgreSQL's ``disk_full`` (SQLSTATE 53100); else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current.strerror
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            where = f"cannot write '{current.filename}'" if current.filename else "a write failed"
            return f"{where}: {STORAGE_ERRNOS[current.errno]}"
        if isinstance(current, sqlite3.OperationalError) and str(current).lower().startswith(_SQLITE_FAULTS):
            return f"the SQLite store cannot be written: {current}"
        if getattr(current, "pgcode", None) == "53100":
            return f"the PostgreSQL server cannot write: {str(current).splitlines()[0]}"
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return None


class StorageFaultLogFilter(logging.Filter):
    """Logs a storage fault as one line: a record whose exception is a ``storage_fault`` (MLflow's
    and SQLAlchemy's loggers log a full SQLite store with two tracebacks and the SQL) keeps its
    first line and the fault, without the traceback. Install it on the handlers of a command line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        fault = storage_fault(error) if error is not None else None
        if fault is not None:
            first = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
            record.msg, record.args, record.exc_info, record.exc_text = f"{first} ({fault})", None, None, None
        return True


# Loggers of the libraries under the stores that log a failed write with its traceback themselves
# (MLflow's own handler does not pass through the root logger's).
_STORE_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "optuna.storages._rdb.storage")


def quiet_storage_faults() -> None:
    """Adds ``StorageFaultLogFilter`` to every handler of the root logger and to the store loggers."""
    targets = [*logging.getLogger().handlers, *(logging.getLogger(name) for name in _STORE_LOGGERS)]
    for target in targets:
        if not any(isinstance(f, StorageFaultLogFilter) for f in target.filters):
            target.addFilter(StorageFaultLogFilter())


def user_error(err: BaseException, extra: ExtraErrors | None = None) -> tuple[str, int] | None:
    """The message and exit code of a user error, or ``None`` for a bug (keep the traceback).

    Args:
        err: The exception that ended the command.
        extra: A command line's own error types (e.g. ``ReportError``), checked first.
    """
    for kind, describe in (extra or {}).items():
        if isinstance(err, kind):
            mapped = describe(err)
            if mapped is not None:
                return mapped
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    fault = storage_fault(err)
    if fault is not None:  # not the user's input, and not a bug: the machine's storage
        return f"{fault}; {RESUME_HINT}", EXIT_PARTIAL
    if isinstance(err, ValidationError):
        return validation_message(err), EXIT_INVALID
    if isinstance(err, yaml.YAMLError):
        return yaml_message(err), EXIT_INVALID
    if isinstance(err, DatasetLayoutError):
        return f"data missing: {err}", EXIT_INVALID
    if isinstance(err, PATH_ERRORS):
        return os_message(err), EXIT_INVALID
    if isinstance(err, KeyError):
        # A registry's "unknown backbone 'x'; registered: ..." is a user error; a bare key
        # (KeyError('model') from a dict lookup) is a bug.
        message = err.args[0] if len(err.args) == 1 else None
        if isinstance(message, str) and " " in message.strip():
            return message, EXIT_INVALID
        return None
    if isinstance(err, ValueError):  # StudyFileError, DatasetParamError, bad --set, bad values
        return str(err), EXIT_INVALID
    return None


def format_message(message: str) -> str:
    """``error: first line``; further lines (a layout error's how-to-fix) indented under it."""
    first, *rest = message.strip("\n").splitlines() or [""]
    detail = ["  " + line if not line.startswith(" ") else line for line in rest if line.strip()]
    return "\n".join([f"error: {first}", *detail])


def run_cli(command: Callable[[], int], extra: ExtraErrors | None = None) -> int:
    """Runs a command line's command and maps user errors to one message on stderr and an exit code.

    Args:
        command: Runs the parsed command; returns its exit code.
        extra: Further exception types of this command line (checked before the shared ones).

    Returns:
        The command's exit code, or the user error's (``EXIT_INVALID``, ``EXIT_INTERRUPTED``, ...).

    Raises:
        Exception: Anything that is not a user error (a bug), with its traceback.
    """
    try:
        return command()
    except (Exception, KeyboardInterrupt) as err:
        mapped = user_error(err, extra)
        if mapped is None:
            raise
        message, code = mapped
        print("interrupted" if code == EXIT_INTERRUPTED else format_message(message), file=sys.stderr)
        return code
