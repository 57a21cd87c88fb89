"""A throw-away single-node SLURM cluster on 127.0.0.1, for tests of the SLURM profiles.

Debian's ``slurm-wlm`` (``slurmctld``, ``slurmd``, ``slurm-client``) and ``munge``; no
``slurmdbd``: accounting is off (``AccountingStorageType=accounting_storage/none``), so
``sacct`` answers only "accounting storage is disabled" and job status comes from ``squeue``
(``MinJobAge`` is raised so that finished jobs stay visible to it) and from a job-completion
log (``JobCompType=jobcomp/filetxt``), which records every job that ran: see
:meth:`SlurmCluster.completed_jobs`.

Everything lives in one temporary folder: ``slurm.conf``, the munge key and socket, the state
and spool folders, the daemons' logs. Clients find the cluster through ``SLURM_CONF`` (see
:meth:`SlurmCluster.env`); nothing under ``/etc`` is read or written. The daemons run in the
foreground as children of the test process, on free TCP ports, and :meth:`SlurmCluster.stop`
(also the context manager's exit) cancels every job and ends them by PID.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env(), check=True)

``missing()`` lists what is not installed (the test skips with it); ``not_root()`` says why
it cannot run as another user (slurmd must start job steps as root here).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# where Debian puts the daemons (not always on a non-root PATH)
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

#: The apt packages that provide them (for skip messages and CI).
APT_PACKAGES = "slurmctld slurmd slurm-client munge"


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing() -> list[str]:
    """Programs a local SLURM cluster needs that are not installed."""
    return [n for n in (*DAEMONS, *CLIENTS) if which(n) is None]


def not_root() -> str | None:
    """Why this process cannot run the cluster, or None. slurmd launches each job step
    as the submitting user (setuid), which needs root."""
    if os.geteuid() != 0:
        return "slurmd must run as root to launch job steps (run the SLURM test as root, as CI does)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb() -> int:
    """The node's RealMemory: what ``slurmd -C`` reports, less 5% (a node configured with
    more memory than slurmd finds is drained as invalid)."""
    try:
        out = subprocess.run([which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        for tok in out.split():
            if tok.startswith("RealMemory="):
                return max(256, int(int(tok.split("=", 1)[1]) * 0.95))
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:")))
    return max(256, int(kb / 1024 * 0.95))


class ClusterError(RuntimeError):
    pass


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 2
    partition: str = "debug"
    cluster_name: str = "bafusion-test"
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    memory_mb: int = field(default_factory=real_memory_mb)
    start_timeout: float = 60.0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)

    # ---------------------------------------------------------------- paths
    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket.2"

    @property
    def jobcomp_log(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    @property
    def ctld_log(self) -> Path:
        return self.root / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.root / "log" / "slurmd.log"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue, snakemake's executor)."""
        e = dict(os.environ if base is None else base)
        e["SLURM_CONF"] = str(self.conf)
        extra = [d for d in SBIN if Path(d).is_dir()]
        e["PATH"] = os.pathsep.join([str(self.shim_dir), e.get("PATH", ""), *extra])
        return e

    @property
    def shim_dir(self) -> Path:
        """Holds an ``srun`` that sets SLURM_CONF and runs the real one. Needed because this
        cluster's slurm.conf is not in /etc/slurm: snakemake-executor-plugin-slurm-jobstep
        (>= 0.6) strips every SLURM_* variable, SLURM_CONF included, from the environment of
        the ``srun`` it starts inside each job (cf. snakemake-executor-plugin-slurm issue
        #164), so that srun would find no configuration. A real cluster keeps slurm.conf in
        /etc/slurm or runs configless, and needs no shim."""
        return self.root / "bin"

    # ---------------------------------------------------------------- config
    def write_config(self) -> None:
        for d in ("etc", "munge", "log", "state", "spool", "run", "bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o711)
        self.shim_dir.mkdir(parents=True, exist_ok=True)
        real_srun = which("srun")
        if real_srun:
            shim = self.shim_dir / "srun"
            shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf}\nexport SLURM_CONF\nexec {real_srun} "$@"\n')
            shim.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        user = _user()
        self.conf.write_text(f"""\
# Single-node test cluster written by tests/slurm_cluster.py
ClusterName={self.cluster_name}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (containers, CI): plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets this much per CPU, not the whole node
DefMemPerCPU=1000
# no slurmdbd: no accounting database; completed jobs go to a text log instead
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp_log}
# keep finished jobs in slurmctld (and so in squeue/scontrol) for 30 minutes
MinJobAge=1800
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    # ---------------------------------------------------------------- start/stop
    def start(self) -> "SlurmCluster":
        miss = missing()
        if miss:
            raise ClusterError(f"not installed: {', '.join(miss)} (apt-get install {APT_PACKAGES})")
        self.write_config()
        try:
            self._spawn("munged", [which("munged"), "--foreground", "--force",
                                   f"--socket={self.munge_socket}", f"--key-file={self.root / 'munge' / 'munge.key'}",
                                   f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                   f"--log-file={self.root / 'log' / 'munged.log'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
            self._wait(lambda: self.munge_socket.exists(), "munged to create its socket")
            # -i: ignore any state (fresh cluster); -D: foreground
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(self._ctld_up, "slurmctld to answer 'scontrol ping'")
            self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
            self._wait(self._node_idle, f"node {self.node} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, then end the daemons we started (by PID), slurmd first."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.client(["scancel", "--full", "--partition", self.partition], check=False, timeout=20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.active_jobs():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self._procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> dict[str, bool]:
        """Each daemon this object started, and whether it still runs."""
        return {n: p.poll() is None for n, p in self._procs.items()}

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items()}

    # ---------------------------------------------------------------- queries
    def client(self, cmd: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        exe = which(cmd[0]) or cmd[0]
        p = subprocess.run([exe, *cmd[1:]], env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout}{p.stderr}\n{self.logs()}")
        return p

    def active_jobs(self) -> list[str]:
        p = self.client(["squeue", "-h", "-o", "%i", "-t", "PD,R,CG,CF,S"], check=False)
        return p.stdout.split() if p.returncode == 0 else []

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (MinJobAge keeps finished ones): id, name, state,
        node, comment (the executor plugin writes rule and wildcards there), exit code."""
        fmt = "%i|%j|%T|%N|%k|%C"
        p = self.client(["squeue", "-h", "--states=all", "-o", fmt])
        keys = ("id", "name", "state", "nodes", "comment", "cpus")
        return [dict(zip(keys, line.split("|"))) for line in p.stdout.splitlines() if line.strip()]

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, ExitCode, Command, NumCPUs, ...)."""
        out = self.client(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        fields: dict[str, str] = {}
        for tok in out.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields.setdefault(k, v)
        return fields

    def completed_jobs(self) -> list[dict[str, str]]:
        """The job-completion log: one dict per finished job (JobId, UserId, Name, JobState,
        NodeList, ProcCnt, ExitCode, ...)."""
        if not self.jobcomp_log.exists():
            return []
        rows = []
        for line in self.jobcomp_log.read_text().splitlines():
            row: dict[str, str] = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    row[k] = v
            if row:
                rows.append(row)
        return rows

    def logs(self, tail: int = 40) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {f.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---------------------------------------------------------------- internals
    def _spawn(self, name: str, argv: list[str | None]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self._procs[name] = subprocess.Popen([str(a) for a in argv], env=self.env(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, preexec_fn=_die_with_parent)
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise ClusterError(f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{self.logs()}")

    def _ctld_up(self) -> bool:
        p = self.client(["scontrol", "ping"], check=False, timeout=10)
        return p.returncode == 0 and "UP" in p.stdout

    def _node_idle(self) -> bool:
        p = self.client(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=10)
        states = dict(line.split() for line in p.stdout.splitlines() if len(line.split()) == 2)
        return states.get(self.node, "").startswith("idle")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (even by SIGKILL,
    when no finally block runs), so that no daemon outlives the test. Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
