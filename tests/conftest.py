"""Shared fixtures: a fixed seed per test, the official BNext key/shape spec, ``isolated`` (a test
that runs studies in its own folder) and ``study_records`` (MLflow records written once a session).

Study cells measure their latency by default (an OpenVINO export per cell, seconds each); the
suite switches that default off for every study, subprocesses included, and the latency tests
(``tests/test_latency.py``) switch it on in their study files or unset the variable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks.feature_reference: not installed (see its docstring)
    sys.path.append(str(REPO))

from image_files import make_dffd_tree  # noqa: E402  (tests/, a helper module)
from mlflow_records import StudyRecord, make_shared_records  # noqa: E402  (tests/, a helper module)

# Copy of the design notes' spec/bnext_official_state_dict_keys.json (outside this repository): every key and shape of the official
# BNext ImageNet checkpoints ({tiny,small,middle,large}_checkpoint.pth.tar).
KEY_SPEC = Path(__file__).resolve().parent / "data" / "bnext_official_state_dict_keys.json"

os.environ.setdefault("BNN_LATENCY", "off")  # studies.schema.LATENCY_ENV


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def bnext_key_spec() -> dict[str, dict[str, list[int]]]:
    """size -> {key without 'module.': shape}."""
    data = json.loads(KEY_SPEC.read_text())
    return {size: {k.removeprefix("module."): v for k, v in keys.items()} for size, keys in data["sizes"].items()}


@pytest.fixture
def isolated(tmp_path, tmp_path_factory, monkeypatch) -> Path:
    """The test runs in ``tmp_path`` (relative study paths, ``mlflow.db``, ``runs/`` land there);
    synthetic datasets are cached once per session (``BNN_CACHE_DIR``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bnn-cache"))
    return tmp_path


@pytest.fixture
def fast_heartbeat(monkeypatch) -> None:
    """Workers renew their claim on a cell every second (``studies.runner.HEARTBEAT_ENV``)."""
    monkeypatch.setenv("BNN_HEARTBEAT_SECONDS", "1")


@pytest.fixture(scope="session")
def study_records(tmp_path_factory) -> dict[str, StudyRecord]:
    """One SQLite MLflow store for the session holding the studies of ``make_shared_records``."""
    return make_shared_records(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def dffd_root(tmp_path) -> Path:
    """A tiny DFFD tree in ``tmp_path / "dffd"`` (``image_files.make_dffd_tree``)."""
    return make_dffd_tree(tmp_path / "dffd")
