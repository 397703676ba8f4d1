"""Which tasks are running or failed: small marker files beside the results, and an OS lock per task.

A task is done when its output file exists (outputs are written atomically, last). While a worker
runs a task it holds an exclusive ``flock`` on ``<task>.lock`` and a ``<task>.running`` marker says
where; the kernel drops the lock when the process dies, so a marker without its lock is a run that
was killed and counts as pending. A failure leaves ``<task>.failed`` holding the one-line error (and
``<task>.traceback`` for debugging); it is cleared when the task next starts. A finished task leaves
``<task>.done`` with the seconds its successful attempt took (the compute a report sets against the
plan's estimate). Two runners on one
results folder (two containers, a local run beside a cluster run) therefore never run a task twice.
The Slurm runner also leaves ``<task>.slurm`` naming the job it submitted, so a restarted driver
follows that job instead of submitting the task again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nasaudit.grid.jobs import Task
from nasaudit.io import write_bytes, write_json

DONE, RUNNING, FAILED, PENDING = "done", "running", "failed", "pending"


class TaskState:
    """The marker files of one grid's tasks, under ``Layout.state_dir``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, task: Task, suffix: str) -> Path:
        return self.folder / f"{task.id}.{suffix}"

    @contextmanager
    def claim(self, task: Task) -> Iterator[bool]:
        """Hold the task's lock for the block; yields False (and holds nothing) if another process has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(task, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def is_locked(self, task: Task) -> bool:
        """Whether a live process is running the task right now."""
        if not self._path(task, "lock").exists():
            return False
        with self.claim(task) as claimed:
            return not claimed

    def mark_running(self, task: Task, where: str) -> None:
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
