"""Throw-away one-node Slurm cluster for tests of ``python -m studies submit --slurm``.

``slurm_cluster()`` (a context manager usable anywhere) and the module-scoped pytest fixture
``slurm`` built on it:

- a private MUNGE daemon: a fresh random key, its socket, pid, seed and log files in a new
  temporary folder (``munged --foreground --force``: it runs as this user, root included), so the
  machine's own ``/etc/munge`` and any running ``munged`` are left alone;
- ``slurm.conf`` in that folder: ``ClusterName=bnntest``, the controller and one node named after
  this host (``hostname -s``) at 127.0.0.1, ``SlurmctldPort``/``SlurmdPort`` on free ports,
  ``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny`` (the daemons bind 127.0.0.1, not every
  address), ``AuthInfo=socket=<the private munged>``, one partition ``debug`` (default,
  ``MaxTime=INFINITE``), ``select/cons_tres`` with ``CR_CPU`` so that several one-CPU tasks share
  the node (declared with at least 4 CPUs, ``SlurmdParameters=config_overrides``, so that three
  workers run at once on a 2-core machine), ``proctrack/linuxproc``, ``task/none``, no
  accounting, ``KillWait=10`` (SIGTERM, then SIGKILL 10 s later), ``MinJobAge=120``; state,
  spool, pid and log files in the folder; ``SlurmUser`` and ``SlurmdUser`` this user;
- ``slurmctld -D`` and ``slurmd -D``, each in its own process group, waited for (``scontrol
  ping``, then ``sinfo`` showing the node idle) with a bound.

At the end, also on failure: every job left is cancelled and waited for (bounded), the daemons
are stopped by process group (SIGTERM, SIGKILL after a few seconds), any process of a job that
outlived them (``slurmstepd`` daemonises: found by its ``SLURM_CONF``, which names this folder) is
killed by its pid, and the folder is removed. Every Slurm command of the test must carry
``SLURM_CONF`` (``SlurmCluster.env``). When Slurm or MUNGE is missing or cannot start, the test
fails with the reason when ``CI`` is set (``.ci/run`` installs ``slurm-wlm`` and ``munge``) and
is skipped with the reason otherwise (``pg_mlflow.unavailable``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pg_mlflow import free_port, stop_process_group, unavailable

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
START_TIMEOUT_SECONDS = 90
COMMAND_TIMEOUT_SECONDS = 30
KILL_WAIT_SECONDS = 10


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` (this environment plus ``SLURM_CONF``) for every Slurm command."""

    root: Path
    conf: Path
    node: str
    env: dict[str, str]

    def command(self, *args: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
        """Runs a Slurm client command against this cluster; its stdout (raises on failure)."""
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {out.returncode}: {(out.stdout + out.stderr).strip()}")
        return out.stdout

    def tasks(self, job_id: str) -> dict[str, str]:
        """``squeue`` of one array job: array task id (or ``"0-2"`` for tasks not started) -> state."""
        lines = self.command("squeue", "-h", "-j", job_id, "-o", "%K %T").split()
        return dict(zip(lines[::2], lines[1::2], strict=True))

    def job_records(self, job_id: str) -> dict[str, dict[str, str]]:
        """``scontrol show job``: array task id -> its fields (``JobState``: ``COMPLETED``,
        ``FAILED``, ``TIMEOUT``, ``CANCELLED``, ...; ``StartTime``, ``EndTime``, ``ExitCode``,
        ``TimeLimit``), while slurmctld keeps the record (``MinJobAge``)."""
        records = {}
        for line in self.command("scontrol", "-o", "show", "job", job_id).splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields:
                records[fields["ArrayTaskId"]] = fields
        return records

    def job_states(self, job_id: str) -> dict[str, str]:
        """Array task id -> ``JobState`` (``job_records``)."""
        return {task: fields.get("JobState", "?") for task, fields in self.job_records(job_id).items()}

    def wait_gone(self, job_id: str, timeout: float, task: str | None = None) -> None:
        """Returns once the job (or its array task ``task``) is no longer in ``squeue``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(job_id if task is None else f"{job_id}_{task}")
            if not tasks:
                return
            time.sleep(1)
        raise AssertionError(f"job {job_id}{'' if task is None else '_' + task} still queued after {timeout:.0f} s: "
                             f"{self.tasks(job_id)}\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the daemons' logs, for assertion messages."""
        return "\n".join(f"--- {name}:\n{_tail(self.root / name, chars)}" for name in ("slurmctld.log", "slurmd.log"))

    def cancel_all(self, timeout: float = KILL_WAIT_SECONDS + 20) -> None:
        """``scancel`` every job of this user (the cluster is ours alone); returns once none is
        left in ``squeue`` or after ``timeout``."""
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            self.command("scancel", "-u", getpass.getuser())
            deadline = time.monotonic() + timeout
            while self.command("squeue", "-h").strip() and time.monotonic() < deadline:
                time.sleep(1)


def _kill_leftover_job_processes(conf: Path) -> None:
    """SIGKILL to each process whose environment holds ``SLURM_CONF=conf`` (this cluster's jobs)."""
    import psutil

    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid != os.getpid() and process.environ().get("SLURM_CONF") == str(conf):
                process.kill()


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(none)"


def _slurm_conf(root: Path, node: str, user: str, ctld_port: int, slurmd_port: int, cpus: int) -> str:
    return f"""\
ClusterName=bnntest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait={KILL_WAIT_SECONDS}
MinJobAge=120
SchedulerParameters=sched_interval=2
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        try:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            unavailable(f"{command[0]} could not be started: {err}")
            raise  # not reached: unavailable raises


def _wait(check, what: str, processes: list[tuple[str, subprocess.Popen, Path]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for name, process, log in processes:
            if process.poll() is not None:
                unavailable(f"{name} exited with {process.returncode} while waiting for {what}: {_tail(log)}")
        if time.monotonic() > deadline:
            logs = "; ".join(f"{name}: {_tail(log, 800)}" for name, _, log in processes)
            unavailable(f"{what} not within {timeout:.0f} s: {logs}")
        time.sleep(0.5)


def _succeeds(command: list[str], env: dict[str, str], expect: str = "") -> bool:
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and expect in out.stdout


@contextlib.contextmanager
def slurm_cluster(timeout: float = START_TIMEOUT_SECONDS) -> Iterator[SlurmCluster]:
    """Starts MUNGE, slurmctld and slurmd in a new temporary folder; stops and removes it all at
    the end (see the module docstring)."""
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        unavailable(f"Slurm or MUNGE is not installed ({', '.join(missing)} not found; "
                    "apt-get install slurm-wlm munge)")
    root = Path(tempfile.mkdtemp(prefix="bnn-slurm-"))
    node = socket.gethostname().split(".")[0]
    user = getpass.getuser()
    conf = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):  # when the tests run in a job
        env.pop(name, None)
    processes: list[tuple[str, subprocess.Popen, Path]] = []
    cluster = None
    try:
        for folder in ("state", "spool"):
            (root / folder).mkdir()
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge_log = root / "munged.out"
        processes.append(("munged", _start(
            [shutil.which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
             f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed", f"--log-file={root}/munged.log"],
            munge_log, env), munge_log))
        _wait(lambda: (root / "munge.socket").exists(), "the MUNGE socket", processes, timeout)
        conf.write_text(_slurm_conf(root, node, user, free_port(), free_port(), max(os.cpu_count() or 1, 4)))
        for name, args in (("slurmctld", ["-D", "-c", "-f", str(conf)]), ("slurmd", ["-D", "-N", node, "-f", str(conf)])):
            log = root / f"{name}.out"
            processes.append((name, _start([shutil.which(name), *args], log, env), log))
        _wait(lambda: _succeeds(["scontrol", "ping"], env, "UP"), "slurmctld (scontrol ping)", processes, timeout)
        _wait(lambda: _succeeds(["sinfo", "-h", "-N", "-o", "%t"], env, "idle"), "the node idle in sinfo",
              processes, timeout)
        cluster = SlurmCluster(root=root, conf=conf, node=node, env=env)
        yield cluster
    finally:
        if cluster is not None:
            cluster.cancel_all()
        for _, process, _ in reversed(processes):
            stop_process_group(process, timeout=5)
        _kill_leftover_job_processes(conf)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", name="slurm")
def slurm_fixture() -> Iterator[SlurmCluster]:
    """A throw-away one-node cluster (``slurm_cluster``)."""
    with slurm_cluster() as cluster:
        yield cluster
