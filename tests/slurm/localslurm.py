"""A one-node Slurm cluster on localhost, owned by the process that starts it (``make test-slurm``).

``LocalSlurm`` writes munge's key and a slurm.conf for this machine (its CPUs and memory as ``slurmd -C``
reports them, cgroup-free process tracking, two fake GPUs, a default partition and one with a 1-minute
time limit) into a fresh temporary folder, starts munged, slurmctld and slurmd in the foreground as its
own child processes, and waits until ``sinfo`` shows the node idle. ``stop`` cancels the cluster's jobs,
ends exactly the processes it started (by pid), then any job process still carrying this cluster's
configuration, and removes the folder. Clients talk to it through ``env`` (``SLURM_CONF``); nothing is
installed as a service and nothing under /etc is touched.

``python tests/slurm/localslurm.py install`` installs Debian's slurm-wlm and munge when missing (root only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
SHORT_PARTITION = "short"  # MaxTime 1 minute: the time-limit check
MAIN_PARTITION = "main"
MAX_ARRAY_SIZE = 5  # small on purpose: an array larger than this is refused by sbatch
GPU_FILES = ("/dev/null", "/dev/zero")  # fake GPUs: jobs may ask for GPUs, Slurm allocates these


class Refusal(Exception):
    """Why the cluster cannot be set up here, in one line."""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def ensure_installed(run=subprocess.run) -> None:  # type: ignore[no-untyped-def]
    """Install slurm-wlm and munge with apt when a program is missing; only root may."""
    if not missing_programs():
        return
    if os.geteuid() != 0:
        raise Refusal(
            f"{', '.join(missing_programs())} missing and this is not root: install {' '.join(PACKAGES)} "
            "(apt-get install slurm-wlm munge) or run make test-slurm as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise Refusal(f"{' '.join(command)} failed: {lines[-1] if lines else result.returncode}")
    if missing_programs():
        raise Refusal(f"installed {' '.join(PACKAGES)} but {', '.join(missing_programs())} still missing")


@dataclass(frozen=True)
class Node:
    """This machine as slurmd sees it: the node line of the configuration."""

    cpus: int
    boards: int
    sockets_per_board: int
    cores_per_socket: int
    threads_per_core: int
    memory_mb: int

    @classmethod
    def parse(cls, text: str) -> Node:
        """``slurmd -C``'s first line: ``NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105``."""
        fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
        try:
            return cls(
                int(fields["CPUs"]),
                int(fields["Boards"]),
                int(fields["SocketsPerBoard"]),
                int(fields["CoresPerSocket"]),
                int(fields["ThreadsPerCore"]),
                int(fields["RealMemory"]),
            )
        except (KeyError, ValueError):
            raise Refusal(
                f"cannot read this machine's node line from `slurmd -C`: {text.strip()!r}"
            ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(folder: Path, node: Node, host: str, ports: tuple[int, int], user: str) -> str:
    """The configuration of a one-node cluster on localhost whose state lives in ``folder``.

    Memory is offered at 90% of what slurmd finds, so the node never drains for low memory; finished
    jobs stay visible to ``squeue`` for an hour (no accounting database here: the runner reads states
    from squeue, sacct being absent).
    """
    memory = int(node.memory_mb * 0.9)
    lines = [
        "ClusterName=nasaudit-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        f"AuthInfo=socket={folder / 'munge.socket'}",
        f"StateSaveLocation={folder / 'ctld'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        f"PlugStackConfig={folder / 'plugstack.conf'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "KillWait=5",
        "MinJobAge=3600",
        f"MaxArraySize={MAX_ARRAY_SIZE}",
        "GresTypes=gpu",
        f"NodeName=localhost NodeAddr=127.0.0.1 NodeHostname={host} CPUs={node.cpus} Boards={node.boards} "
        f"SocketsPerBoard={node.sockets_per_board} CoresPerSocket={node.cores_per_socket} "
        f"ThreadsPerCore={node.threads_per_core} RealMemory={memory} Gres=gpu:{len(GPU_FILES)} State=UNKNOWN",
        f"PartitionName={MAIN_PARTITION} Nodes=localhost Default=YES MaxTime=60 State=UP",
        f"PartitionName={SHORT_PARTITION} Nodes=localhost MaxTime=1 State=UP",
    ]
    return "\n".join(lines) + "\n"


def gres_conf() -> str:
    """Slurm 22.05 drains a node whose GPUs have no device file, so each fake GPU names a harmless one."""
    return "".join(f"NodeName=localhost Name=gpu File={file}\n" for file in GPU_FILES)


class LocalSlurm:
    """The cluster's folder, its daemons (Popen objects this process owns) and the clients' environment."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="nasaudit-slurm-"))
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        ensure_installed()
        if os.geteuid() != 0:
            raise Refusal("slurmd runs jobs as their users: start the test cluster as root")
        node = Node.parse(self._check(["slurmd", "-C"]).splitlines()[0])
        for sub in ("ctld", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        key = self.folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.folder / "plugstack.conf").write_text("")
        (self.folder / "gres.conf").write_text(gres_conf())
        user = _user()
        self.conf.write_text(
            slurm_conf(self.folder, node, socket.gethostname(), (free_port(), free_port()), user)
        )
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.folder / 'munge.socket'}",
            f"--pid-file={self.folder / 'munged.pid'}",
            f"--log-file={self.folder / 'munged.log'}",
            f"--seed-file={self.folder / 'munged.seed'}",
        )
        self._wait(lambda: (self.folder / "munge.socket").exists(), timeout, "munged never opened its socket")
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait(
            lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]),
            timeout,
            "slurmctld never answered `scontrol ping`",
        )
        self._daemon("slurmd", "-D", "-N", "localhost", "-f", str(self.conf))
        self._wait(lambda: self.node_state() == "idle", timeout, "the node never became idle in sinfo")

    def node_state(self) -> str:
        return self._out(["sinfo", "--noheader", "--nodes=localhost", "--format=%T"]).strip().rstrip("*")

    def stop(self, timeout: float = 30) -> None:
        """Cancel the jobs, end the daemons this object started, then stray job processes; remove the
        folder."""
        if self.conf.is_file() and self.daemons and all(d.poll() is None for d in self.daemons):
            self._ok(["scancel", "--full", f"--user={_user()}"])
            self._wait(lambda: not self._out(["squeue", "--noheader"]).strip(), timeout, None)
        for daemon in reversed(self.daemons):
            _end(daemon.pid, lambda d=daemon: d.poll() is not None, timeout)
        for pid in self._strays():
            _end(pid, lambda p=pid: not Path(f"/proc/{p}").exists(), timeout)
        self.daemons.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _strays(self) -> list[int]:
        """Job processes (slurmstepd and what it ran) still pointing at this cluster's configuration."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mine in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _daemon(self, *command: str) -> None:
        log = open(self.folder / f"{command[0]}.stdout", "ab")  # noqa: SIM115 (kept open by the child)
        self.daemons.append(
            subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        log.close()

    def _wait(self, ready, timeout: float, failure: str | None) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [d.args[0] for d in self.daemons if d.poll() is not None]
            if dead and failure:
                raise Refusal(f"{failure}: {dead[0]} exited ({self._log_tail(dead[0])})")
            time.sleep(0.5)
        if failure:
            raise Refusal(f"{failure} within {timeout:.0f} s ({self._log_tail()})")

    def _log_tail(self, name: str = "slurmd") -> str:
        for path in (self.folder / f"{name}.log", self.folder / f"{name}.stdout"):
            if path.is_file() and path.read_text().strip():
                return f"{path.name}: {path.read_text().strip().splitlines()[-1]}"
        return f"no log from {name}"

    def _ok(self, command: list[str]) -> bool:
        try:
            return subprocess.run(command, env=self.env, capture_output=True).returncode == 0
        except OSError:  # not installed
            return False

    def _out(self, command: list[str]) -> str:
        try:
            return subprocess.run(command, env=self.env, capture_output=True, text=True).stdout
        except OSError:
            return ""

    def _check(self, command: list[str]) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise Refusal(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _end(pid: int, gone, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM one process, SIGKILL it if it is still there after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not gone():
        time.sleep(0.2)
    if not gone():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if argv != ["install"]:
        print("usage: localslurm.py install", file=sys.stderr)
        return 2
    try:
        ensure_installed()
    except Refusal as exc:
        print(f"test-slurm: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
