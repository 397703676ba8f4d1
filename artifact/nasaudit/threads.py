"""How many CPU threads a job computes with: decided here, once, for every entry point.

PyTorch's default, like OpenMP's, is the number of CPUs the process may be scheduled on (its affinity
mask). It does not see a container's CPU quota, the CPUs Slurm granted when it does not bind tasks to
cores (``SLURM_CPUS_PER_TASK``), nor the other jobs this process runs at once. With more busy threads
than CPUs, every parallel region waits for a sibling thread that is not scheduled: the smoke TE-NAS
search took 66 s instead of 22 s beside one busy process with 2 threads on 2 cores (docs/threads.md).

So a job computes with the CPUs it may really use (the least of affinity, quota and Slurm's grant)
divided among the jobs run at once, unless it is told otherwise: ``--threads N`` (which sets
``NASAUDIT_THREADS`` for the processes it starts; ``make THREADS=N`` sets it too), else
``OMP_NUM_THREADS`` as PyTorch reads it. The count depends on the allotment only, never on the
machine's momentary load: the thread count can change the last bits of floating-point results, and the
same seed on the same allotment must give the same outputs. The NumPy/SciPy BLAS and OpenMP pools
follow the same number (threadpoolctl).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasaudit.errors import NasauditError

ENV = "NASAUDIT_THREADS"  # the override, inherited by worker processes and Slurm tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Allotment:
    """The CPUs a process may use, by source; None where a source sets no limit."""

    affinity: int  # CPUs in the scheduler's affinity mask (os.cpu_count() where there is none)
    quota: float | None  # cgroup CPU bandwidth limit, in CPUs (a container's --cpus)
    slurm: int | None  # SLURM_CPUS_PER_TASK

    @property
    def cpus(self) -> int:
        """The least of the limits; a fractional quota rounds down (never more threads than CPU time)."""
        limits = [self.affinity, self.slurm, None if self.quota is None else max(1, math.floor(self.quota))]
        return min(n for n in limits if n is not None)

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g}"
        slurm = "unset" if self.slurm is None else str(self.slurm)
        return f"affinity {self.affinity}, cgroup quota {quota}, SLURM_CPUS_PER_TASK {slurm}"


@dataclass(frozen=True)
class ThreadChoice:
    """Threads per job, why, and for how many jobs at once."""

    threads: int
    source: str  # "--threads", "NASAUDIT_THREADS", "OMP_NUM_THREADS" or "auto"
    jobs: int
    allotment: Allotment

    def describe(self) -> str:
        cpus = self.allotment.cpus
        text = f"{self.threads} CPU thread{'s' * (self.threads != 1)}"
        text += f" per job, {self.jobs} jobs at once" if self.jobs > 1 else ""
        text += "" if self.source == "auto" else f" (set by {self.source})"
        return f"{text}; {cpus} usable CPU{'s' * (cpus != 1)}: {self.allotment.describe()}"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no masks)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_quota(cgroup: str, mountinfo: str) -> float | None:
    """The tightest CPU bandwidth limit on this process's cgroup and its ancestors, in CPUs.

    ``cgroup`` is /proc/self/cgroup's text, ``mountinfo`` /proc/self/mountinfo's: the cgroup's folder is
    its path made relative to the mount's root (a container sees only its own subtree). cgroup v2 reads
    ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), v1 ``cpu.cfs_quota_us`` (-1: none) over
    ``cpu.cfs_period_us``.
    """
    limits = []
    for folder, top, v2 in _cpu_cgroup_folders(cgroup, mountinfo):
        while True:
            limit = _read_limit(folder, v2)
            if limit is not None:
                limits.append(limit)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _cpu_cgroup_folders(cgroup: str, mountinfo: str) -> list[tuple[Path, Path, bool]]:
    """(this process's cgroup folder, its mount point, is v2) for each hierarchy with the cpu controller."""
    paths: dict[str, str] = {}  # "v2" or "v1" -> the cgroup's path
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    folders = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        root, mount = fields[3], Path(fields[4])
        fstype, *rest = line.split(" - ", 1)[1].split()
        options = rest[1].split(",") if len(rest) > 1 else []
        version = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "cpu" in options else None
        if version is None or version not in paths:
            continue
        inside = Path(paths[version]).is_relative_to(root)  # else the mount is the cgroup itself
        relative = Path(paths[version]).relative_to(root) if inside else Path()
        folders.append((mount / relative, mount, version == "v2"))
    return folders


def _read_limit(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):  # no such file here: no limit at this level
        return None


def allotment(environ: Mapping[str, str] | None = None) -> Allotment:
    """The CPUs this process may use: affinity mask, cgroup quota and ``SLURM_CPUS_PER_TASK``."""
    environ = os.environ if environ is None else environ
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux
        cgroup = mountinfo = ""
    return Allotment(
        affinity_cpus(), cgroup_quota(cgroup, mountinfo), _positive(environ, "SLURM_CPUS_PER_TASK")
    )


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    """A positive count from the environment; None when unset or not a count (OMP_NUM_THREADS may list
    one count per nesting level, "4,2": the first is ours)."""
    value = environ.get(name, "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def decide(
    jobs: int = 1,
    requested: int | None = None,
    environ: Mapping[str, str] | None = None,
    allot: Allotment | None = None,
) -> ThreadChoice:
    """Threads for each of ``jobs`` jobs run at once: ``requested`` (``--threads``), else
    ``NASAUDIT_THREADS``, else ``OMP_NUM_THREADS``, else the usable CPUs divided among the jobs."""
    environ = os.environ if environ is None else environ
    allot = allot or allotment(environ)
    if requested is not None:
        if requested < 1:
            raise NasauditError(f"--threads must be at least 1, got {requested}")
        return ThreadChoice(requested, "--threads", jobs, allot)
    if environ.get(ENV, "").strip():
        override = _positive(environ, ENV)
        if override is None:
            raise NasauditError(
                f"{ENV} must be a positive whole number, got {environ[ENV]!r}; unset it for auto"
            )
        return ThreadChoice(override, ENV, jobs, allot)
    omp = _positive(environ, "OMP_NUM_THREADS")
    if omp is not None:
        return ThreadChoice(omp, "OMP_NUM_THREADS", jobs, allot)
    return ThreadChoice(max(1, allot.cpus // max(1, jobs)), "auto", jobs, allot)


def local_workers(asked: int, gpus: int, log: Callable[[str], None] | None = logger.info) -> int:
    """How many local workers run at once, so that workers × threads ≤ usable CPUs; logs the choice once.

    CPU workers beyond what fits are not started (their tasks wait); GPU workers are one per GPU, each
    with its share of the CPUs. Each worker then calls ``configure(jobs=workers)``.
    """
    choice = decide(jobs=asked)
    workers = asked if gpus else min(asked, max(1, choice.allotment.cpus // choice.threads))
    if workers < asked:
        choice = decide(jobs=workers)
    fewer = f" of {asked} asked (workers × threads ≤ usable CPUs)" if workers < asked else ""
    _log_once(f"[threads] local runner: {workers} worker(s){fewer}, {choice.describe()}", log)
    return workers


_current: ThreadChoice | None = None
_logged: set[str] = set()


def configure(
    jobs: int = 1, requested: int | None = None, log: Callable[[str], None] | None = logger.info
) -> ThreadChoice:
    """Decide, then size PyTorch's intra-op pool and the BLAS/OpenMP pools; log each distinct choice once.

    ``requested`` (``--threads``) is also put into ``NASAUDIT_THREADS``, so the worker processes and
    Slurm tasks this process starts use it too.
    """
    global _current
    choice = decide(jobs, requested)
    if requested is not None:
        os.environ[ENV] = str(requested)
    apply(choice.threads)
    _current = choice
    _log_once(f"[threads] {choice.describe()}", log)
    return choice


def _log_once(message: str, log: Callable[[str], None] | None) -> None:
    if log is not None and message not in _logged:
        _logged.add(message)
        log(message)


def apply(threads: int) -> None:
    """Set PyTorch's intra-op threads and the NumPy/SciPy BLAS and OpenMP pools to ``threads``."""
    # threadpoolctl limits the runtimes loaded so far: load NumPy's and SciPy's OpenBLAS and
    # scikit-learn's OpenMP (KMeans, trees) now, or they would start later with all CPUs.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # not a context: the limits stay until set again


def manifest() -> dict[str, Any]:
    """What a result's manifest records: the threads it ran with, and the choice that set them."""
    import torch
    from threadpoolctl import threadpool_info

    record: dict[str, Any] = {
        "torch": torch.get_num_threads(),
        "blas": sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}),
    }
    if _current is None:
        record["source"] = "PyTorch default (not configured)"
    else:
        record.update(source=_current.source, jobs=_current.jobs, usable_cpus=_current.allotment.cpus,
                      allotment=asdict(_current.allotment))  # fmt: skip
    return record


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Give every command of ``parser`` (each parser, at any depth, that runs a handler) ``--threads``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                add_argument(child)
    if parser.get_default("func") is not None:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help=f"CPU threads per job (default: ${ENV}, else $OMP_NUM_THREADS, else the CPUs this "
            "process may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK) shared among its jobs)",
        )
