"""``benchmarks.results``: a benchmark's ``--record`` keeps what it printed as a dated,
commit-stamped file with its command, host and versions."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys

import pytest

from benchmarks import results


def test_a_record_names_the_date_and_commit_and_holds_the_output_verbatim(tmp_path):
    output = "row        ms\nsobel   0.123\n"
    path = results.write_record("features", output, ["benchmarks/features.py", "--batch", "8"], tmp_path,
                                today=dt.date(2026, 12, 7))
    stamp = results.commit_stamp()
    assert path == tmp_path / f"features-2026-12-07-{stamp}.md"
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", stamp)
    text = path.read_text()
    assert text.startswith(f"# benchmarks/features.py, 2026-12-07, commit {stamp}\n")
    assert "- command: `python benchmarks/features.py --batch 8`" in text
    assert "torch threads" in text and "torch 2." in text
    assert "```text\nrow        ms\nsobel   0.123\n```\n" in text


def test_recorded_prints_as_usual_and_writes_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    with results.recorded("training", record=False):
        print("not kept")
    assert capsys.readouterr().out == "not kept\n" and not list(tmp_path.iterdir())
    with results.recorded("training", record=True):
        print("train img/s 70.1")
    shown = capsys.readouterr().out
    (path,) = tmp_path.iterdir()
    assert shown.startswith("train img/s 70.1\nrecorded: ") and path.name.startswith("training-")
    assert "train img/s 70.1" in path.read_text()


def test_commit_stamp_outside_a_repository_says_unknown(tmp_path):
    assert results.commit_stamp(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert results.commit_stamp(tmp_path) == "unknown"  # no commit yet


@pytest.mark.integration
def test_every_benchmark_offers_record():
    for name in ("features", "inference", "training", "scaleout"):
        done = subprocess.run([sys.executable, str(results.REPO / "benchmarks" / f"{name}.py"), "--help"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "--record" in done.stdout, (name, done.stderr[-2000:])
