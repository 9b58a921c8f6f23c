"""A study as a Slurm array job: the script that ``python -m studies submit FILE --slurm`` writes.

Each array task is one worker (``python -m studies run FILE --quiet``, the same ``--set`` values)
on the study's shared stores, so the tasks split the cells between them, each cell exactly once;
submitting again resumes whatever is left. The script is a plain, editable file
(``<runs_dir>/slurm/<study>.sbatch``, logs ``<runs_dir>/slurm/<job name>-<job id>_<task>.out``)
that ``sbatch`` accepts as it is.

Contract of the script:

- ``#SBATCH --chdir`` is the directory ``submit`` ran in, so relative paths in the study (SQLite
  stores, ``runs_dir``, data roots) resolve the same in every task; the study file is named by
  its absolute path.
- ``#SBATCH --signal=B:TERM@<lead>``: Slurm sends SIGTERM to the batch shell ``lead`` seconds
  (``signal_lead``) before the time limit; the shell ``exec``s Python, so the worker itself gets
  it, stops its cell at the next batch boundary (MLflow run KILLED, Optuna trial failed) and exits
  130. ``scancel`` (SIGTERM, then SIGKILL after the cluster's ``KillWait``) ends the same way, or,
  killed before it stopped, leaves a stale trial that the next worker fails and runs again.
- The interpreter is the one that ran ``submit`` (absolute path), after activating its virtual
  environment when it runs in one.
- Local stores (SQLite files, an MLflow file store) are refused for more than one worker unless
  the job is pinned to one node (``nodelist``): array tasks may land on several nodes, and SQLite
  files on a shared file system are not safe to write from several machines.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from studies.db_setup import sqlite_path
from studies.spec import Study

SBATCH_TIMEOUT_SECONDS = 60
MAX_SIGNAL_LEAD_SECONDS = 300  # SIGTERM 5 min before a long job's limit
MIN_SIGNAL_LEAD_SECONDS = 10   # a batch and the two store writes, even for a one-minute job
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_TIME = re.compile(r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")
_NAME = re.compile(r"^[A-Za-z0-9_.:,=+\-\[\]]+$")  # partition, gres, node names: nothing to quote


class SlurmError(ValueError):
    """An option or a study that cannot make a working Slurm job, or ``sbatch`` refusing it
    (a user error: one line, exit code 2)."""


def parse_time(text: str) -> int:
    """Seconds of a Slurm time limit (``--time``: minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``); raises ``SlurmError`` for anything else or zero."""
    match = _TIME.match(text.strip())
    if match is None:
        raise SlurmError(f"--time {text!r}: not a Slurm time limit ({TIME_FORMATS})")
    g = {k: int(v) if v is not None else 0 for k, v in match.groupdict().items()}
    if match.group("days") is not None:
        seconds = ((g["days"] * 24 + g["dh"]) * 60 + g["dm"]) * 60 + g["ds"]
    elif match.group("c") is not None:  # HH:MM:SS
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    elif match.group("b") is not None:  # MM:SS
        seconds = g["a"] * 60 + g["b"]
    else:  # minutes
        seconds = g["a"] * 60
    if seconds <= 0:
        raise SlurmError(f"--time {text!r}: the time limit must be more than zero")
    return seconds


def format_time(seconds: int) -> str:
    """``HH:MM:SS`` (``D-HH:MM:SS`` from one day on), as ``#SBATCH --time`` takes it."""
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def signal_lead(limit_seconds: int | None) -> int:
    """Seconds before the time limit at which the worker gets SIGTERM: a tenth of the limit,
    between 10 s and 5 min (5 min without ``--time``: the partition's default limit applies).
    Slurm checks limits about every 30 s, so the signal may come up to that much earlier."""
    if limit_seconds is None:
        return MAX_SIGNAL_LEAD_SECONDS
    return max(MIN_SIGNAL_LEAD_SECONDS, min(MAX_SIGNAL_LEAD_SECONDS, limit_seconds // 10))


@dataclass(frozen=True)
class SlurmOptions:
    """What ``submit --slurm`` was asked for (``None``: the cluster's default)."""

    workers: int = 1
    time: str | None = None
    gres: str | None = None
    partition: str | None = None
    cpus_per_task: int | None = None
    nodelist: str | None = None

    def time_seconds(self) -> int | None:
        return None if self.time is None else parse_time(self.time)

    def check(self) -> None:
        """Raises ``SlurmError`` for a bad value (before anything is written)."""
        if self.workers < 1:
            raise SlurmError(f"--workers must be 1 or more, not {self.workers}")
        self.time_seconds()
        for option, value in (("--gres", self.gres), ("--partition", self.partition), ("--nodelist", self.nodelist)):
            if value is not None and not _NAME.match(value):
                raise SlurmError(f"{option} {value!r}: not a Slurm name (letters, digits and _.:,=+-[] only)")

    def one_node(self) -> bool:
        """The job is pinned to a single named node (``--nodelist node1``, not a list or range)."""
        return self.nodelist is not None and not re.search(r"[,\[]", self.nodelist)


@dataclass(frozen=True)
class SlurmJob:
    """One study's array job: its script's text and where it and its logs go."""

    study_name: str
    script_path: Path
    log_dir: Path
    text: str

    def log_pattern(self, job_id: str = "%A", task: str = "%a") -> Path:
        """The log of one array task (``%x-%A_%a.out`` with the job name filled in)."""
        return self.log_dir / f"{self.study_name}-{job_id}_{task}.out"


def local_stores(study: Study) -> list[str]:
    """The study's stores that are files on this machine: SQLite URLs, MLflow file stores."""
    local = []
    for url in (study.tracking_uri, study.storage):
        if sqlite_path(url) is not None or url.startswith("file:") or "://" not in url:
            local.append(url)
    return local


def check_stores(study: Study, options: SlurmOptions) -> None:
    """Refuses local stores shared by several array tasks that may run on several nodes."""
    local = local_stores(study)
    if local and options.workers > 1 and not options.one_node():
        raise SlurmError(
            f"study {study.name} keeps its stores in local files ({', '.join(dict.fromkeys(local))}): "
            f"{options.workers} array tasks may run on different nodes, and SQLite files are not safe to share "
            "between machines; use shared stores (--set storage=postgresql://... --set tracking_uri=http://..., "
            "docs/scaling_out.md), pin the job to one node (--nodelist NODE), or use --workers 1")


def _directive_path(path: Path) -> str:
    """A path as an ``#SBATCH`` value: in double quotes when it holds a space (sbatch's own
    parser reads them); a double quote or a line break cannot be written there."""
    text = str(path)
    if any(c in text for c in '"\n\r'):
        raise SlurmError(f"{text!r}: a path with a double quote or a line break cannot go in an sbatch script")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _masked(url: str) -> str:
    """A store URL with its password (if any) replaced by ``***``, for a comment."""
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", url)


def build_job(study: Study, sets: list[str], options: SlurmOptions, max_cells: int | None = None,
              cwd: Path | None = None, python: str | None = None) -> SlurmJob:
    """The array job of ``study`` (loaded with ``sets``): checks the options and the stores, and
    renders the script (see the module docstring). ``max_cells`` is passed on when given."""
    options.check()
    check_stores(study, options)
    cwd = (cwd or Path.cwd()).absolute()
    python = python or sys.executable
    runs_dir = study.runs_dir if study.runs_dir.is_absolute() else cwd / study.runs_dir
    log_dir = runs_dir / "slurm"
    script_path = log_dir / f"{study.name}.sbatch"
    study_file = study.path if study.path.is_absolute() else cwd / study.path
    limit = options.time_seconds()
    lead = signal_lead(limit)
    output = str(log_dir).replace("%", "%%") + "/%x-%A_%a.out"  # %% is a literal % in sbatch's file names
    lines = [
        "#!/bin/bash",
        f"# Slurm array job of study '{study.name}' ({study_file}), written by `python -m studies submit --slurm`.",
        f"# Each array task is one worker on the study's shared stores (Optuna: {_masked(study.storage)};",
        f"# MLflow: {_masked(study.tracking_uri)}), so each cell runs once; edit this file freely and",
        "# submit it again (sbatch FILE, or the same submit command) to resume whatever is left.",
        f"#SBATCH --job-name={study.name}",
        f"#SBATCH --array=0-{options.workers - 1}",
        f"#SBATCH --chdir={_directive_path(cwd)}",
        f"#SBATCH --output={_directive_path(Path(output))}",
    ]
    if limit is not None:
        lines.append(f"#SBATCH --time={format_time(limit)}")
    lines.append(f"# SIGTERM to the worker {lead} s before the time limit: its cell stops cleanly (MLflow run")
    lines.append("# KILLED) and the next submission resumes it from its last finished epoch")
    lines.append(f"#SBATCH --signal=B:TERM@{lead}")
    for option, value in (("partition", options.partition), ("gres", options.gres),
                          ("cpus-per-task", options.cpus_per_task), ("nodelist", options.nodelist)):
        if value is not None:
            lines.append(f"#SBATCH --{option}={value}")
    lines.append("set -eu")
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file():
        lines.append(f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}")
    lines += [
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}" PYTHONUNBUFFERED=1',
        "# exec: Python replaces this shell, so Slurm's signals to the batch shell reach the worker",
    ]
    command = [python, "-m", "studies", "run", str(study_file), "--quiet"]
    for item in sets:
        command += ["--set", item]
    if max_cells is not None:
        command += ["--max-cells", str(max_cells)]
    words = [shlex.quote(w) for w in command]
    # one `--set KEY=VALUE` per continuation line: readable and easy to edit
    head = " ".join(words[:6])
    rest = [" ".join(words[i:i + 2]) for i in range(6, len(words), 2)]
    lines.append("exec " + " \\\n    ".join([head, *rest]))
    return SlurmJob(study.name, script_path, log_dir, "\n".join(lines) + "\n")


def submit(job: SlurmJob, timeout: float = SBATCH_TIMEOUT_SECONDS) -> str:
    """Writes the script and submits it with ``sbatch --parsable``; returns the job id.

    Raises:
        SlurmError: ``sbatch`` is not on PATH, fails (its message) or does not answer in time.
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch not found on PATH: install Slurm (its client commands) or load its module, "
                         "or use --dry-run to print the script")
    job.log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder
    tmp = job.script_path.with_name(f".{job.script_path.name}.{os.getpid()}")
    tmp.write_text(job.text)
    tmp.chmod(0o755)
    tmp.replace(job.script_path)
    try:
        out = subprocess.run([sbatch, "--parsable", str(job.script_path)], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"sbatch did not answer within {timeout:.0f} s (is slurmctld up? `scontrol ping`); "
                         f"the script is {job.script_path}") from None
    if out.returncode != 0:
        message = " ".join((out.stderr or out.stdout).split()) or "no message"
        raise SlurmError(f"sbatch refused {job.script_path} (exit {out.returncode}): {message}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id for {job.script_path}: {out.stdout.strip()!r}")
    return job_id
