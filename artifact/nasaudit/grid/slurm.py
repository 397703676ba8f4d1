"""What the Slurm runner asks the cluster: job states, a partition's time limit, the largest job array.

States come from ``squeue --states=all``, which also lists jobs that ended within the cluster's
MinJobAge (5 minutes by default), and, for jobs it no longer knows, from ``sacct`` where the cluster
keeps accounting. A cluster without accounting ("Slurm accounting storage is disabled") works too: the
driver polls far more often than squeue forgets. Submission itself is submitit's (``runners.py``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from nasaudit.config import SlurmConfig
from nasaudit.errors import NasauditError

# Job states after which the job may still run (squeue/sacct spell them so); any other state is final.
ACTIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
    }
)
TIMEOUT = "TIMEOUT"
UNKNOWN = "UNKNOWN"  # neither squeue nor sacct knows the job


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


def parse_states(text: str) -> dict[str, str]:
    """``JOBID|STATE`` lines of squeue or sacct -> {job id: state}; array ranges expanded, steps skipped.

    sacct writes "CANCELLED by 0" and lists a pending array as ``12_[3-5%2]``; squeue ``--array`` one
    line per element.
    """
    states: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = (part.strip() for part in line.split("|")[:2])
        if not job or "." in job or not state:
            continue
        state = state.split()[0].rstrip("+")
        ranges = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job)
        if ranges is None:
            states[job] = state
            continue
        for part in ranges.group(2).split(","):
            first, _, last = part.partition("-")
            for index in range(int(first), int(last or first) + 1):
                states[f"{ranges.group(1)}_{index}"] = state
    return states


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """The state of each job (``123`` or array element ``123_4``); None if squeue cannot reach the cluster.

    A job neither squeue nor sacct knows any more is ``UNKNOWN``.
    """
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    arrays = ",".join(sorted({job.split("_")[0] for job in wanted}))
    queue = _run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--jobs={arrays}"])
    if queue.returncode != 0 and "Invalid job id" not in queue.stderr:  # that one: all of them forgotten
        return None
    states = parse_states(queue.stdout)
    missing = [job for job in wanted if job not in states]
    if missing:
        ids = ",".join(sorted({job.split("_")[0] for job in missing}))
        accounted = _run(["sacct", "--noheader", "--parsable2", "--format=JobID,State", f"--jobs={ids}"])
        if accounted.returncode == 0:
            states.update({k: v for k, v in parse_states(accounted.stdout).items() if k not in states})
    return {job: states.get(job, UNKNOWN) for job in wanted}


def parse_minutes(text: str) -> int | None:
    """A Slurm duration (``UNLIMITED``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole
    minutes; None when unlimited."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        hours += 24 * int(days)
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return hours * 60 + minutes + seconds // 60


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def check_request(cfg: SlurmConfig) -> int:
    """Refuse, before anything is submitted, what the cluster would keep pending forever; returns the
    largest array to submit (``array_limit`` capped at the cluster's MaxArraySize).

    A job asking for more time than its partition's MaxTime stays PENDING (PartitionTimeLimit) unless
    the cluster enforces partition limits at submission, so the driver would wait for nothing.
    """
    shown = _run(["scontrol", "show", "partition", "--oneliner"])
    if shown.returncode != 0:
        reason = (shown.stderr or shown.stdout).strip().splitlines()
        raise NasauditError(
            f"cannot ask the Slurm controller for its partitions ({reason[0] if reason else 'no answer'}); "
            "run the slurm runner where `sinfo` works"
        )
    partitions = {f.get("PartitionName", ""): f for f in map(_fields, shown.stdout.splitlines()) if f}
    name = cfg.partition or next((n for n, f in partitions.items() if f.get("Default") == "YES"), "")
    if name not in partitions:
        known = ", ".join(sorted(partitions)) or "none"
        what = f"no partition {name!r}" if name else "no default partition"
        raise NasauditError(f"Slurm has {what} (partitions: {known}); choose one with --partition")
    limit = parse_minutes(partitions[name].get("MaxTime", "UNLIMITED"))
    if limit is not None and cfg.time_min > limit:
        raise NasauditError(
            f"time limit {cfg.time_min} min is over partition {name}'s MaxTime of {limit} min, so Slurm "
            f"would keep every task pending; pass --time-min {limit} or less, or another --partition"
        )
    config = _run(["scontrol", "show", "config"])
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", config.stdout, flags=re.M)
    return max(1, min(cfg.array_limit, int(found.group(1)) if found else cfg.array_limit))


def log_tail(path: Path, lines: int = 10) -> str:
    """The last lines of a job's log, for a failure report ('' if it was never written)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
