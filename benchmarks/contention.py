"""The smoke TE-NAS search alone, beside a busy process and beside a second nasaudit job, with automatic
thread sizing and with PyTorch's default (a benchmark, not a test: it loads the machine on purpose).

Each run is ``nasaudit search --algo tenas --dataset digits --profile smoke`` in a fresh folder; its
search time is read from the ``architecture.json`` it writes, with the threads its manifest recorded.
PyTorch's default is what torch picks when nothing is set, the CPUs of the affinity mask, so those runs
pass ``--threads`` that count; automatic runs pass nothing. The busy process is a Python loop that
spins on one core. A job "given 1 CPU" gets ``SLURM_CPUS_PER_TASK=1``, as Slurm tells a task its CPUs
(a container's CPU quota is read the same way, from its cgroup); the ``cgroup`` case (root, cgroup
v1, not run by default) runs the job in a real cgroup with one CPU of quota. Each case also runs with
``--threads 1``, the manual fix. The thread counts take turns, so a change of the machine's load hits
them alike; the load average is printed before and after. A run still going at ``--limit`` seconds is
stopped and counted as the limit (shown as ≥).

Run: ``python -m benchmarks.contention [--repeats 3] [--limit 900] [--only alone,busy,...,cgroup]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.threads import ENV, Allotment, affinity_cpus, allotment, decide

SEARCH = ["search", "--algo", "tenas", "--dataset", "digits", "--profile", "smoke", "--seed", "0"]
CLEARED = (ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SLURM_CPUS_PER_TASK")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


@dataclass(frozen=True)
class Case:
    key: str  # for --only
    name: str
    busy: int = 0  # spinning processes beside the job
    jobs: int = 1  # identical searches at once (all timed)
    env: dict[str, str] = field(default_factory=dict)  # what the job is told about its CPUs
    cgroup: bool = False  # run the jobs in a cgroup with one CPU of quota


ONE_CPU = {"SLURM_CPUS_PER_TASK": "1"}
CASES = [
    Case("alone", "alone"),
    Case("busy", "beside a busy process (shared machine, no allotment)", busy=1),
    Case("busy-1cpu", "beside a busy process, job given 1 CPU", busy=1, env=ONE_CPU),
    Case("second-job", "beside a second nasaudit job, each given 1 CPU", jobs=2, env=ONE_CPU),
    Case("cgroup", "beside a busy process, job in a cgroup with 1 CPU of quota", busy=1, cgroup=True),
]
COLUMNS = {"default": "PyTorch default", "auto": "automatic", "one": "`--threads 1`"}


@contextlib.contextmanager
def _one_cpu_cgroup() -> Iterator[Path]:
    """A cgroup v1 ``cpu`` group with 100 ms of CPU per 100 ms: one CPU, as ``docker run --cpus=1``."""
    folder = CGROUP_V1 / f"nasaudit-contention-{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text("100000")
        yield folder
    finally:
        folder.rmdir()  # empty again: its processes have ended


def _search(out: Path, threads: int | None, env: dict[str, str], cgroup: Path | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "nasaudit.cli", *SEARCH, "--out", str(out)]
    command += [] if threads is None else ["--threads", str(threads)]
    if cgroup is not None:  # join the group, then become the search
        command = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *command]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _timed(case: Case, threads: int | None, folder: Path, limit: float) -> list[dict[str, Any]]:
    """Run ``case`` once; the search time and recorded threads of each of its jobs (``limit`` seconds at
    most: a search still running then is stopped and counted as ``limit``)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | case.env
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(case.busy)]
    timings = []
    try:
        with _one_cpu_cgroup() if case.cgroup else contextlib.nullcontext() as cgroup:
            outs = [Path(tempfile.mkdtemp(dir=folder)) for _ in range(case.jobs)]
            jobs = [_search(out, threads, env, cgroup) for out in outs]
            start = time.perf_counter()
            try:
                for job, out in zip(jobs, outs, strict=True):
                    try:
                        _, err = job.communicate(timeout=max(1.0, limit - (time.perf_counter() - start)))
                    except subprocess.TimeoutExpired:
                        timings.append({"seconds": limit, "threads": threads or _planned(case)})
                        continue
                    if job.returncode:
                        raise RuntimeError(f"search failed ({job.returncode}): {err.strip()[-500:]}")
                    record = json.loads((out / "architecture.json").read_text())
                    threads_used = record["manifest"]["threads"]["torch"]
                    timings.append({"seconds": record["search_time"], "threads": threads_used})
            finally:
                _stop(jobs)  # before the cgroup goes: it must be empty
    finally:
        _stop(spinners)
    return timings


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def _planned(case: Case) -> int:
    """The threads automatic sizing gives the case's jobs (the same function the jobs call)."""
    allot = Allotment(affinity_cpus(), 1.0 if case.cgroup else None, allotment(case.env).slurm)
    return decide(environ=case.env, allot=allot).threads


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def run(repeats: int = 3, keys: list[str] | None = None, limit: float = 900.0) -> dict[str, Any]:
    """Median search seconds (range, threads used) per case: PyTorch's default threads, automatic
    sizing and ``--threads 1``. Columns with the same thread count are the same computation, run once
    (automatic sizing, when it gives that count)."""
    default = affinity_cpus()
    cases = [case for case in CASES if case.key in (keys or [c.key for c in CASES if not c.cgroup])]
    print(f"smoke TE-NAS search, {repeats} runs per cell (at most {limit:.0f} s each); PyTorch's default "
          f"here is {default} threads; load average (1, 5, 15 min) before: {_load()}")  # fmt: skip
    result: dict[str, Any] = {
        "default_threads": default,
        "limit_s": limit,
        "load_before": _load(),
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="nasaudit-contention-") as tmp:
        for case in cases:
            auto = _planned(case)
            counts = {"default": default, "auto": auto, "one": 1}
            seconds: dict[int, list[float]] = {n: [] for n in counts.values()}
            used: dict[int, set[int]] = {n: set() for n in counts.values()}
            for _ in range(repeats):  # the thread counts take turns
                for n in seconds:
                    for job in _timed(case, None if n == auto else n, Path(tmp), limit):
                        seconds[n].append(job["seconds"])
                        used[n].add(job["threads"])
            by_count = {n: _summary(seconds[n], used[n], limit) for n in seconds}
            cell = {column: by_count[n] for column, n in counts.items()}
            result["cases"][case.name] = cell
            print(f"  {case.name}: " + ", ".join(f"{COLUMNS[c]} {_cell(cell[c])}" for c in COLUMNS))
    result["load_after"] = _load()
    print(f"load average after: {result['load_after']}")
    print(markdown(result))
    return result


def _summary(seconds: list[float], threads: set[int], limit: float) -> dict[str, Any]:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
            "threads": sorted(threads), "stopped": sum(s >= limit for s in seconds)}  # fmt: skip


def _cell(cell: dict[str, Any]) -> str:
    """Median seconds, range and threads; ≥ where runs were stopped at the limit."""
    at_least = "≥ " if cell["stopped"] else ""
    threads = "/".join(map(str, cell["threads"]))
    return f"{at_least}{cell['median']:.0f} s ({cell['min']:.0f}–{cell['max']:.0f}), {threads} thr."


def markdown(result: dict[str, Any]) -> str:
    """The table of docs/threads.md."""
    lines = [
        f"| smoke TE-NAS search | {' | '.join(COLUMNS.values())} | default / automatic |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, cell in result["cases"].items():
        if cell["default"]["threads"] == cell["auto"]["threads"]:  # one run: nothing to compare
            ratio = "same threads"
        else:
            at_least = "≥ " if cell["default"]["stopped"] else ""
            ratio = f"{at_least}{cell['default']['median'] / cell['auto']['median']:.1f}×"
        lines.append(f"| {name} | {' | '.join(_cell(cell[c]) for c in COLUMNS)} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case and thread count (default 3)")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds a run may take (default 900)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated cases (default: all but cgroup): {', '.join(c.key for c in CASES)}",
    )
    args = parser.parse_args(argv)
    keys = args.only.split(",") if args.only else None
    if unknown := set(keys or ()) - {c.key for c in CASES}:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "cgroup" in (keys or ()) and not os.access(CGROUP_V1, os.W_OK):
        parser.error(f"the cgroup case needs write access to {CGROUP_V1} (root, cgroup v1's cpu controller)")
    return run(args.repeats, keys, args.limit)


if __name__ == "__main__":
    main()
