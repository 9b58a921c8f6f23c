"""Where a study's MLflow record lives: the tracking URI, a client for it, the study's experiment.

The default URI and the reading of ``sqlite:///`` URLs are ``studies.db_setup``'s (the runner
writes there); this module adds what a reader needs: the ``$MLFLOW_TRACKING_URI`` fallback, a
client that refuses to create a missing SQLite file, the URI without its password for reports,
and finding a study's experiment by name or by its parent run's tag (``StudyNotFoundError``
otherwise, listing the experiments that exist).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient

from studies import record
from studies.db_setup import DEFAULT_TRACKING_URI, sqlite_path


class StudyNotFoundError(LookupError):
    """No experiment of that study at the tracking URI.

    Attributes:
        study: The name asked for.
        tracking_uri: Where it was looked for (credentials removed).
        experiments: Names of the experiments that exist there.
        reason: Why, when it is not simply a missing experiment (e.g. no database file).
    """

    def __init__(
        self, study: str, tracking_uri: str, experiments: list[str], reason: str = ""
    ) -> None:
        self.study = study
        self.tracking_uri = tracking_uri
        self.experiments = experiments
        self.reason = reason
        known = ", ".join(experiments) if experiments else "(none)"
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"no study {study!r} at {tracking_uri}{detail}; experiments there: {known}"
        )


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redact_uri(uri: str) -> str:
    """The URI without a password (``postgresql://user:***@host/db``), safe to print in reports."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _missing_sqlite(uri: str) -> str | None:
    """The path of a ``sqlite:///`` database file that does not exist (None otherwise)."""
    path = sqlite_path(uri)
    if path is None or str(path) in (".", ":memory:") or path.exists():
        return None
    return str(path)


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for the URI; a missing SQLite file is an error (it is not created)."""
    uri = resolve_tracking_uri(tracking_uri)
    missing = _missing_sqlite(uri)
    if missing:
        raise FileNotFoundError(f"no MLflow database at {missing} (tracking URI {uri})")
    return MlflowClient(tracking_uri=uri)


def find_experiment(study: str, tracking_uri: str | None = None):
    """The MLflow experiment of a study (by experiment name, else by its parent's ``TAG_STUDY`` tag).

    Raises:
        StudyNotFoundError: Listing the experiments that exist at the URI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    missing = _missing_sqlite(uri)
    if missing:
        raise StudyNotFoundError(
            study, redact_uri(uri), [], reason=f"no MLflow database at {missing}"
        )
    client = client_for(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is not None and experiment.lifecycle_stage == "active":
        return experiment
    experiments = client.search_experiments()
    if "'" not in study and experiments:  # a parent run tagged with the study, in one query
        found = client.search_runs(
            [e.experiment_id for e in experiments],
            filter_string=f"tags.`{record.TAG_STUDY}` = '{study}'",
            max_results=1,
        )
        if found:
            return client.get_experiment(found[0].info.experiment_id)
    raise StudyNotFoundError(study, redact_uri(uri), [e.name for e in experiments])
