"""Which tasks are running or failed: small marker files beside the results, and an OS lock per task.

A task is done when its output file exists (outputs are written atomically, last). While a worker
runs a task it holds the job's exclusive lock (``runs.job_lock``, beside the task's output, the lock a
standalone command writing that output takes too) and a ``<task>.running`` marker says where; the
kernel drops the lock when the process dies, so a marker without its lock is a run that was killed
and counts as pending. A failure leaves ``<task>.failed`` holding the one-line error (and
``<task>.traceback`` for debugging); it is cleared when the task next starts. A finished task leaves
``<task>.done`` with the seconds its successful attempt took (the compute a report sets against the
plan's estimate). Two runners on one results folder (two containers, a local run beside a cluster
run, a standalone command) therefore never run a task twice. The Slurm runner also leaves
``<task>.slurm`` naming the job it submitted, so a restarted driver follows that job instead of
submitting the task again.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from nasaudit.grid.jobs import Task
from nasaudit.io import write_bytes, write_json
from nasaudit.runs import is_locked

DONE, RUNNING, FAILED, PENDING = "done", "running", "failed", "pending"


class TaskState:
    """The marker files of one grid's tasks, under ``Layout.state_dir``; ``output_of`` gives the file
    whose lock a task's runner holds."""

    def __init__(self, folder: Path, output_of: Callable[[Task], Path]) -> None:
        self.folder = Path(folder)
        self.output_of = output_of

    def _path(self, task: Task, suffix: str) -> Path:
        return self.folder / f"{task.id}.{suffix}"

    def is_locked(self, task: Task) -> bool:
        """Whether a live process is running the task right now."""
        return is_locked(self.output_of(task))

    def mark_running(self, task: Task, where: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path(task, "failed").unlink(missing_ok=True)
        self._path(task, "traceback").unlink(missing_ok=True)
        write_json(
            self._path(task, "running"),
            {"task": task.id, "host": socket.gethostname(), "pid": os.getpid(), "where": where},
        )

    def clear_running(self, task: Task) -> None:
        self._path(task, "running").unlink(missing_ok=True)

    def mark_failed(self, task: Task, error: str, traceback: str = "") -> None:
        write_bytes(self._path(task, "failed"), (one_line(error) + "\n").encode())
        if traceback:
            write_bytes(self._path(task, "traceback"), traceback.encode())

    def mark_done(self, task: Task, seconds: float, where: str, device: str) -> None:
        write_json(
            self._path(task, "done"),
            {
                "task": task.id,
                "seconds": seconds,
                "device": device,
                "host": socket.gethostname(),
                "where": where,
            },
        )

    def timing(self, task: Task) -> tuple[float, str] | None:
        """(seconds, device) of the attempt that finished the task; None when untimed (a task finished
        outside a grid runner, or before runners recorded times)."""
        path = self._path(task, "done")
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            return float(record["seconds"]), str(record["device"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def mark_submitted(self, task: Task, job_id: str, folder: Path) -> None:
        write_json(self._path(task, "slurm"), {"task": task.id, "job_id": job_id, "folder": str(folder)})

    def submitted(self, task: Task) -> dict | None:
        """The Slurm job last submitted for the task (job_id, submitit folder), whatever became of it."""
        path = self._path(task, "slurm")
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def failure(self, task: Task) -> str | None:
        """The one-line error of the task's last failed attempt, if that is its state."""
        path = self._path(task, "failed")
        return path.read_text().strip() if path.is_file() else None

    def running(self, task: Task) -> dict | None:
        """Where the task runs, if a live process runs it (a marker left by a killed run does not count)."""
        path = self._path(task, "running")
        if not path.is_file() or not self.is_locked(task):
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"task": task.id}


def one_line(message: str) -> str:
    """The first non-empty line of an error message (tracebacks stay in their own file)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else "failed without a message"


def error_line(exc: BaseException) -> str:
    """A user-facing one-liner: our own errors as they are, anything else with its type."""
    from nasaudit.errors import NasauditError

    text = one_line(str(exc)) if str(exc).strip() else ""
    if isinstance(exc, NasauditError):
        return text or "failed"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
