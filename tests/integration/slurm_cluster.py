"""A throw-away single-node SLURM cluster for the tests: munged, slurmctld and slurmd started as root, without systemd.

Everything it writes (munge key and socket, ``slurm.conf``, the controller's
state, slurmd's spool, the daemons' logs) lives under one directory. The
daemons run in the foreground as children of the test process, on free ports,
and are stopped by pid, together with the job processes slurmd started (found
by the ``SLURM_CONF`` of this cluster in their environment). The config is the
one measured to work in a container (issue 17): ``NodeName=localhost
NodeAddr=127.0.0.1`` and ``slurmd -N localhost``, so nothing depends on the
host name; ``proctrack/linuxproc`` and ``task/none`` (no cgroups); no
accounting; ``select/cons_tres`` with ``CR_Core_Memory`` and ``DefMemPerCPU``,
so a job without ``--mem`` does not take the whole node's memory; no delay
before scheduling a batch job. The node has the CPUs and memory ``slurmd -C`` reports. The partition is ``debug``, the one
README's SLURM config names.

Loaded by ``tests/integration/conftest.py`` (fixture ``slurm_cluster``). Run
it as a script to keep one up by hand: ``python tests/integration/slurm_cluster.py DIR``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

PARTITION = "debug"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge (.ci/run does)"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the test cluster, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed here ({', '.join(missing)} not on PATH): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "the test SLURM cluster's daemons (munged, slurmctld, slurmd) must be started as root"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine as slurmd counts them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    cpus = int(re.search(r"\bCPUs=(\d+)", out).group(1))
    memory = int(re.search(r"\bRealMemory=(\d+)", out).group(1))
    return cpus, memory


class SlurmTestCluster:
    """The cluster's files and daemons; :meth:`start` it, :meth:`stop` it (idempotent)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self.processes: dict[str, subprocess.Popen] = {}
        self.cpus, self.memory_mb = 0, 0

    @property
    def env(self) -> dict[str, str]:
        """The environment SLURM's commands (and thresher's sbatch calls) need to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ----------------------------------------------------------------------------------------- start

    def start(self, timeout: float = 60.0) -> SlurmTestCluster:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "munge").chmod(0o700)
        socket_path = self.root / "munge" / "munge.socket"
        if len(str(socket_path)) > 100:
            raise RuntimeError(f"the munge socket path is too long for a unix socket: {socket_path}")
        self.cpus, self.memory_mb = _node_resources()
        self.conf.write_text(self._config(socket_path))
        # --force: the socket's parent directories are pytest's private (0700) temporary directories
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={socket_path}", f"--key-file={key}",
                               f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.logs / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self._wait(lambda: socket_path.exists(), "munged's socket", timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self._command("sinfo", "-h", check=False).returncode == 0, "slurmctld to answer", timeout)
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(lambda: self._command("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip() == "idle", "the node to be idle", timeout)
        return self

    def _config(self, socket_path: Path) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=thresher-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={socket_path}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",  # a job starts in ~0.8 s instead of ~2.7 s
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1000",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "MinJobAge=300",
            "KillWait=5",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.logs / f"{name}.stdout").open("wb") as out:
            self.processes[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def _wait(self, condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the test SLURM cluster did not start ({what}; exited: {dead or 'none'}):\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for f in sorted(self.logs.glob("*")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    # ----------------------------------------------------------------------------------------- use

    def _command(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=30, check=check)

    def queue(self) -> list[tuple[str, str, str]]:
        """``(job id, state, reason)`` of the jobs pending, running or completing."""
        out = self._command("squeue", "-h", "-o", "%i|%T|%r").stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def wait_until_queue_empty(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"the SLURM queue is not empty after {timeout:g} s: {self.queue()}")
            time.sleep(0.2)

    def submitted_job_ids(self) -> list[str]:
        """Every job id the controller accepted, from its log (no accounting database here)."""
        text = (self.logs / "slurmctld.log").read_text(errors="replace")
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)

    def job_state(self, job_id: str) -> str:
        out = self._command("scontrol", "show", "job", "-o", str(job_id), check=False).stdout
        match = re.search(r"\bJobState=(\S+)", out)
        return match.group(1) if match else "UNKNOWN"

    def cancel(self, job_id: str) -> None:
        self._command("scancel", str(job_id))

    # ----------------------------------------------------------------------------------------- stop

    def job_processes(self) -> list[psutil.Process]:
        """Processes of this cluster's jobs: what they ran (its environment names this cluster's config) and their
        slurmstepd (detached from slurmd; it holds this cluster's slurmd log open)."""
        mine, daemons = [], {p.pid for p in self.processes.values()}
        for proc in psutil.process_iter(["pid", "name"]):
            try:
                if proc.pid in daemons:
                    continue
                if proc.info["name"] == "slurmstepd":
                    if any(f.path.startswith(str(self.root)) for f in proc.open_files()):
                        mine.append(proc)
                elif proc.environ().get("SLURM_CONF") == str(self.conf):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return mine

    def stop(self) -> list[str]:
        """Cancel any job left, stop the daemons and their job processes by pid; return the jobs that were left (a test's leak)."""
        left = []
        if self.processes.get("slurmctld") is not None and self.processes["slurmctld"].poll() is None:
            try:
                left = [f"{i} {s} ({r})" for i, s, r in self.queue()]
                if left:
                    self._command("scancel", *[x.split()[0] for x in left], check=False)
                    self.wait_until_queue_empty(30)
            except (subprocess.SubprocessError, AssertionError):
                pass
        family = self.job_processes()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None:
                continue
            try:
                family += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return left


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":  # keep a cluster up by hand: export SLURM_CONF=DIR/slurm.conf in another shell
    import signal

    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = SlurmTestCluster(Path(sys.argv[1]).resolve()).start()
    print(f"export SLURM_CONF={cluster.conf}  # Ctrl-C (or SIGTERM to pid {os.getpid()}) stops the cluster", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("jobs left:", cluster.stop(), flush=True)
