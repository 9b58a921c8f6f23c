"""Shared fixtures: a fixed seed per test and the official BNext key/shape spec.

Study cells measure their latency by default (an OpenVINO export per cell, seconds each); the
suite switches that default off for every study, subprocesses included, and the latency tests
(``tests/test_latency.py``) switch it on in their study files or unset the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Copy of the design notes' spec/bnext_official_state_dict_keys.json (outside this repository): every key and shape of the official
# BNext ImageNet checkpoints ({tiny,small,middle,large}_checkpoint.pth.tar).
KEY_SPEC = Path(__file__).resolve().parent / "data" / "bnext_official_state_dict_keys.json"

os.environ.setdefault("BNN_LATENCY", "off")  # studies.spec.LATENCY_ENV


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def bnext_key_spec() -> dict[str, dict[str, list[int]]]:
    """size -> {key without 'module.': shape}."""
    data = json.loads(KEY_SPEC.read_text())
    return {size: {k.removeprefix("module."): v for k, v in keys.items()} for size, keys in data["sizes"].items()}
