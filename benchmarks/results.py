"""Recorded benchmark runs: what a benchmark printed, kept as a dated, commit-stamped file.

Figures that benchmarks measure are not copied into prose by hand: ``--record`` makes a benchmark
write everything it printed to ``docs/results/<benchmark>-<YYYY-MM-DD>-<commit>.md``, headed by
the command, the commit (``-dirty`` when tracked files outside ``docs/`` had uncommitted
changes), the host (CPU
model, cores, torch threads) and the versions of the libraries that set the speed. The docs link
to these files; a newer run is a new file beside the older ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from bnn.host import host_summary

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
VERSIONED = ("torch", "numpy", "numba", "openvino", "opencv-python-headless", "scikit-image", "mlflow", "optuna")


def commit_stamp(repo: Path = REPO) -> str:
    """The short commit of ``repo``, ``-dirty`` when tracked files outside ``docs/`` changed,
    ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        # Edits under docs/ (where these records go) do not change what a benchmark measures.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def write_record(benchmark: str, output: str, argv: list[str], folder: Path | None = None,
                 today: dt.date | None = None) -> Path:
    """Writes ``output`` (what the benchmark printed) with its header; returns the file.

    Args:
        benchmark: The benchmark's name (its file stem, e.g. ``features``).
        output: Its printed text.
        argv: The command line (``sys.argv``).
        folder: Where records go (default ``RESULTS``, ``docs/results``).
        today: The date in the name (default: today, UTC).
    """
    today = today or dt.datetime.now(dt.UTC).date()
    folder = RESULTS if folder is None else folder
    stamp = commit_stamp()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{benchmark}-{today.isoformat()}-{stamp}.md"
    header = (
        f"# benchmarks/{benchmark}.py, {today.isoformat()}, commit {stamp}\n\n"
        f"- command: `python {shlex.join(argv)}`\n"
        f"- host: {host_summary()}\n"
        f"- versions: {_versions()}\n\n"
        "Written by the benchmark itself (`--record`); not edited by hand.\n\n"
    )
    path.write_text(header + "```text\n" + output.rstrip("\n") + "\n```\n")
    return path


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def recorded(benchmark: str, record: bool) -> Iterator[None]:
    """Prints as usual; with ``record``, also keeps what was printed and writes it
    (``write_record``) when the block finishes without an error."""
    if not record:
        yield
        return
    kept = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, kept)):
        yield
    path = write_record(benchmark, kept.getvalue(), sys.argv)
    print(f"recorded: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


RECORD_HELP = "also write the printed results to docs/results/<benchmark>-<date>-<commit>.md"
