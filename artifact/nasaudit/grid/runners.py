"""Runners: one dependency-aware scheduler, and backends that run tasks on local workers or on Slurm.

The scheduler submits a task when every task it waits for is done, keeps each backend busy, retries
a failed task ``grid.retries`` times within the run, and leaves the tasks that depend on a task that
kept failing for the next run. It never trusts its own memory over the files: done means the output
exists, so two runners on the same results folder, or a rerun after a crash, skip finished work.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import shutil
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from nasaudit import threads, verbosity
from nasaudit.config import SlurmConfig
from nasaudit.errors import NasauditError
from nasaudit.extras import require
from nasaudit.grid import slurm
from nasaudit.grid.jobs import CLEAN, STAGE_ORDER, Grid, Task
from nasaudit.grid.stages import Outcome, RunSpec, check_done, execute, is_done, task_state
from nasaudit.grid.state import TaskState, error_line
from nasaudit.registry import Registry

POLL_SECONDS = 30  # how often a local run looks at tasks another runner holds; does not change results

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """Where tasks run: ``capacity`` tasks at once at most; ``wait`` returns the finished ones."""

    capacity: int

    def submit(self, tasks: list[Task]) -> None: ...

    def adopt(self, tasks: list[Task]) -> list[Task]:
        """Take over those of ``tasks`` an earlier run submitted and that are still queued or running."""
        ...

    def wait(self) -> list[Outcome]:
        """Block until a submitted task finishes (or a poll interval passes) and return what finished."""
        ...

    def close(self) -> None: ...


@dataclass
class Report:
    """What a run did: counts by outcome and the tasks still failing, with their one-line errors."""

    total: int = 0
    already_done: int = 0
    done: int = 0
    failed: dict[Task, str] = field(default_factory=dict)
    blocked: list[Task] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def summary(self) -> str:
        text = f"{self.total} tasks: {self.done} run now, {self.already_done} done before"
        text += f", {len(self.failed)} failed"
        if self.blocked:
            text += f", {len(self.blocked)} waiting on failed tasks"
        return text


def _priority(task: Task) -> tuple:
    """Clean jobs first (GC victims wait for them), and later stages first (finish what was started)."""
    return (task.attack != CLEAN, -STAGE_ORDER.index(task.stage), task)


def schedule(grid: Grid, backend: Backend, retries: int, log: Callable[[str], None] = logger.info) -> Report:
    """Run every task of ``grid`` whose inputs exist, until nothing more can run."""
    report = Report(total=len(grid.deps))
    done = {t for t in grid.deps if is_done(t, grid.layout)}
    report.already_done = len(done)
    run = _Run(grid, task_state(grid.layout), retries, log, report, done)
    run.in_flight.update(backend.adopt([t for t in grid.deps if t not in done]))
    if run.in_flight:
        log(f"[grid] following {len(run.in_flight)} tasks an earlier run submitted (still queued or running)")
    try:
        while True:
            ready, elsewhere = run.ready(backend.capacity)
            if ready:
                backend.submit(ready)
                run.in_flight.update(ready)
            if not run.in_flight and not elsewhere:
                break
            for outcome in backend.wait():
                run.finished(outcome)
            done.update(t for t in elsewhere if is_done(t, grid.layout))  # another runner finished it
    finally:
        backend.close()
    report.blocked = sorted(_blocked(grid, run.given_up))
    return report


@dataclass
class _Run:
    """What ``schedule`` knows during one run: the tasks done, submitted, retried and given up."""

    grid: Grid
    state: TaskState
    retries: int
    log: Callable[[str], None]
    report: Report
    done: set[Task]
    in_flight: set[Task] = field(default_factory=set)
    given_up: set[Task] = field(default_factory=set)
    attempts: dict[Task, int] = field(default_factory=dict)

    def ready(self, capacity: int) -> tuple[list[Task], list[Task]]:
        """The tasks to submit now (every input done; by priority, as many as ``capacity`` leaves free)
        and the ready tasks another runner holds (their lock is taken)."""
        skip = self.done | self.in_flight | self.given_up | _blocked(self.grid, self.given_up)
        deps = self.grid.deps
        ready = sorted(
            (t for t in deps if t not in skip and all(d in self.done for d in deps[t])), key=_priority
        )
        elsewhere = [t for t in ready if self.state.is_locked(t)]
        held = set(elsewhere)
        free = [t for t in ready if t not in held]
        return free[: max(0, capacity - len(self.in_flight))], elsewhere

    def finished(self, outcome: Outcome) -> None:
        """Record how a submitted task ended; a task failing more than ``retries`` times is given up."""
        task = outcome.task
        self.in_flight.discard(task)
        if outcome.status in ("done", "skipped") or is_done(task, self.grid.layout):
            self.done.add(task)
            self.report.done += outcome.status == "done"
            self.log(f"[grid] {outcome.status:<7} {task.id}")
        elif outcome.status == "failed":
            # a worker killed by the cluster could not: its job log's last lines stand in for the traceback
            self.state.mark_failed(task, outcome.error, outcome.details)
            self.attempts[task] = self.attempts.get(task, 0) + 1
            self.log(f"[grid] failed  {task.id}: {outcome.error}")
            if outcome.details:
                self.log(textwrap.indent(outcome.details, "    "))
            if self.attempts[task] > self.retries:
                self.given_up.add(task)
                self.report.failed[task] = outcome.error


def _blocked(grid: Grid, failed: set[Task]) -> set[Task]:
    """Tasks that wait, directly or not, on a task that failed for good in this run."""
    blocked: set[Task] = set()
    for task, deps in grid.deps.items():  # listed in dependency order
        if any(d in failed or d in blocked for d in deps):
            blocked.add(task)
    return blocked


# --- local: worker processes ------------------------------------------------------------------------


def _init_worker(devices: multiprocessing.Queue, workers: int, level: int) -> None:
    """Pin a worker to its GPU before torch touches CUDA, size its thread pools as one of ``workers``, and
    log at the driver's verbosity (a spawned process starts unconfigured)."""
    verbosity.configure(level)
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    threads.configure(jobs=workers, log=None)  # the driver logged the choice


def _run_local(task: Task, spec: RunSpec) -> Outcome:
    return execute(task, spec, f"local pid {os.getpid()}")


class _InlineExecutor(cf.Executor):
    """Runs each task in the calling process when submitted: ``--workers 0``, for debugging."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # execute() never raises; this keeps KeyboardInterrupt visible
            future.set_exception(exc)
            raise
        return future


class LocalBackend:
    """One worker process per visible GPU (or ``workers`` on the CPU), each running one task at a time."""

    def __init__(self, spec: RunSpec, workers: int | None, gpus: list[str], cpu_workers: int) -> None:
        self.spec = spec
        self.futures: dict[cf.Future, Task] = {}
        if workers == 0:
            self.capacity, self.pool = 1, _InlineExecutor()
            return
        asked = workers or (len(gpus) if gpus else cpu_workers)
        self.capacity = threads.local_workers(asked, len(gpus))
        context = multiprocessing.get_context("spawn")
        devices = context.Queue()
        for i in range(self.capacity):
            devices.put(gpus[i % len(gpus)] if gpus else None)
        if not gpus:
            self.spec = replace(spec, device="cpu")
        self.pool = cf.ProcessPoolExecutor(
            self.capacity,
            mp_context=context,
            initializer=_init_worker,
            initargs=(devices, self.capacity, verbosity.level()),
        )

    def submit(self, tasks: list[Task]) -> None:
        for task in tasks:
            self.futures[self.pool.submit(_run_local, task, self.spec)] = task

    def adopt(self, tasks: list[Task]) -> list[Task]:
        return []  # a local run's workers die with it

    def wait(self) -> list[Outcome]:
        if not self.futures:  # only tasks that another runner holds: look again in a while
            time.sleep(POLL_SECONDS)
            return []
        finished, _ = cf.wait(list(self.futures), timeout=POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for future in finished:
            task = self.futures.pop(future)
            try:
                outcomes.append(future.result())
            except Exception as exc:  # a worker that died (killed, out of memory)
                outcomes.append(Outcome(task, "failed", f"worker died: {error_line(exc)}"))
        return outcomes

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def visible_gpus() -> list[str]:
    """The GPU ids workers are pinned to: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


# --- slurm: job arrays through submitit ---------------------------------------------------------------


# submitit always asks Slurm for a warning signal before the time limit (USR2, on which it raises inside
# the running stage, or kills a process still starting when the limit is short). We ask for SIGURG
# instead, which a process ignores unless it asks for it: Slurm ends a task at its limit, recorded as
# TIMEOUT, with the stage's checkpoints on disk for the resubmission.
WARNING_SIGNAL = "URG@90"


def _run_slurm(task: Task, spec: RunSpec, level: int) -> Outcome:
    """One array element, logging at the driver's ``level`` (its ``-v``/``-q``) to the task's Slurm log,
    with as many threads as the job has CPUs: without cgroups nothing else stops torch from using every
    core of the node (``threads``: SLURM_CPUS_PER_TASK, the cpus_per_task the task asked for, unless the
    submission's environment overrides it as anywhere else)."""
    verbosity.configure(level)  # the thread choice and any warning go to the task's Slurm log
    threads.configure()
    where = f"slurm job {os.environ.get('SLURM_JOB_ID', '?')}"
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        where = f"slurm job {os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return execute(task, spec, where)


class SlurmBackend:
    """Ready tasks go out as Slurm job arrays (chunked to the array limit); this process polls them.

    ``cluster`` is submitit's: "slurm" on a cluster, "local" or "debug" to exercise the same path on
    one machine. Killing this driver leaves submitted tasks running; each task's ``.slurm`` marker names
    its job, so a rerun follows the jobs still queued or running and submits only the others. On a
    cluster, states come from squeue/sacct (``grid.slurm``), and a job that ended without a result
    (time limit, killed, node failure) is reported with its state, its log and the log's last lines.
    """

    def __init__(self, spec: RunSpec, cfg: SlurmConfig, state: TaskState, cluster: str) -> None:
        submitit = require("submitit", "the slurm runner")

        # jobs start in the directory sbatch ran in: absolute paths keep them independent of it
        root = spec.data_root.resolve() if spec.data_root else None
        self.spec = replace(spec, results=spec.results.resolve(), data_root=root)
        self.cfg, self.state, self.cluster = cfg, state, cluster
        self.array_size = slurm.check_request(cfg) if cluster == "slurm" else max(1, cfg.array_limit)
        self.capacity = 10**9  # everything ready is submitted; Slurm queues it
        self.jobs: dict[object, Task] = {}
        self.ended: set[str] = set()  # jobs seen final without a result once: the file may be in transit
        self.folder = (state.folder / "submitit").resolve()
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        params = {
            "timeout_min": cfg.time_min,
            "gpus_per_node": cfg.gpus_per_task,
            "cpus_per_task": cfg.cpus_per_task,
            "mem_gb": cfg.mem_gb,
            "name": f"nasaudit-{spec.profile.name}",
            "slurm_array_parallelism": cfg.array_parallelism,
            "slurm_additional_parameters": {"signal": WARNING_SIGNAL},
        }
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        self.executor.update_parameters(**params)

    def submit(self, tasks: list[Task]) -> None:
        for start in range(0, len(tasks), self.array_size):
            chunk = tasks[start : start + self.array_size]
            try:
                jobs = self.executor.map_array(
                    _run_slurm, chunk, [self.spec] * len(chunk), [verbosity.level()] * len(chunk)
                )
            except Exception as exc:  # sbatch refused: its own words, not submitit's traceback
                lines = [ln for ln in str(exc).splitlines() if "error" in ln.lower()] or [error_line(exc)]
                raise NasauditError(
                    f"sbatch refused an array of {len(chunk)} tasks: {lines[-1].strip()}"
                ) from None
            self.jobs.update(zip(jobs, chunk, strict=True))
            if self.cluster == "slurm":
                for job, task in zip(jobs, chunk, strict=True):
                    self.state.mark_submitted(task, job.job_id, self.folder)

    def adopt(self, tasks: list[Task]) -> list[Task]:
        if self.cluster != "slurm":
            return []
        submitit = require("submitit", "the slurm runner")

        records = {t: r for t in tasks if (r := self.state.submitted(t))}
        states = slurm.job_states(r["job_id"] for r in records.values()) or {}
        adopted = []
        for task, record in records.items():
            if states.get(record["job_id"]) in slurm.ACTIVE:
                self.jobs[submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])] = task
                adopted.append(task)
        return adopted

    def wait(self) -> list[Outcome]:
        while True:
            outcomes = self._poll()
            if outcomes:
                return outcomes
            time.sleep(self.cfg.poll_seconds)
            if not self.jobs:  # only tasks that another runner holds
                return []

    def _poll(self) -> list[Outcome]:
        """The outcomes of the jobs that ended since the last poll."""
        if self.cluster != "slurm":  # submitit's local executors know their processes
            return [self._result(job) for job in list(self.jobs) if job.done()]  # type: ignore[attr-defined]
        running = [job for job in self.jobs if not job.paths.result_pickle.exists()]  # type: ignore[attr-defined]
        states = slurm.job_states(job.job_id for job in running) or {}  # type: ignore[attr-defined]
        outcomes = []
        for job in list(self.jobs):
            if job.paths.result_pickle.exists():  # type: ignore[attr-defined]
                outcomes.append(self._result(job))
                continue
            state = states.get(job.job_id)  # type: ignore[attr-defined]
            if state is None or state in slurm.ACTIVE:
                continue
            if job.job_id not in self.ended:  # type: ignore[attr-defined]
                self.ended.add(job.job_id)  # type: ignore[attr-defined]
                continue
            outcomes.append(self._ended(job, state))
        return outcomes

    def _result(self, job: object) -> Outcome:
        task = self.jobs.pop(job)
        try:
            outcome = job.result()  # type: ignore[attr-defined]
        except Exception as exc:  # the job's Python failed outside the task: an import error on the node
            return Outcome(task, "failed", f"slurm: {error_line(exc)}", self._log(job))
        if outcome.status == "failed" and self.cluster == "slurm":
            outcome = replace(outcome, error=f"{outcome.error} (log {job.paths.stderr})")  # type: ignore[attr-defined]
        return outcome

    def _ended(self, job: object, state: str) -> Outcome:
        """A job that ended without a result: timed out, killed, its node lost, or gone from the queue."""
        task = self.jobs.pop(job)
        name, log = job.job_id, job.paths.stderr  # type: ignore[attr-defined]
        if state == slurm.TIMEOUT:
            limit = f"{self.cfg.time_min}-minute limit"
            error = f"timed out: Slurm job {name} ended {state} at its {limit}; log {log}"
        else:
            error = f"Slurm job {name} ended {state} without a result; log {log}"
        return Outcome(task, "failed", error, self._log(job))

    def _log(self, job: object) -> str:
        if self.cluster != "slurm":
            return ""
        paths = job.paths  # type: ignore[attr-defined]
        for log in (paths.stderr, paths.stdout):  # srun's and Python's errors, else submitit's progress
            if tail := slurm.log_tail(log):
                return f"last lines of {log}:\n{tail}"
        return f"no log at {paths.stderr}"

    def close(self) -> None:
        self.jobs.clear()


@dataclass(frozen=True)
class RunnerOptions:
    """Command-line choices of a run; None keeps the profile's value."""

    workers: int | None = None
    cluster: str = "slurm"
    slurm: SlurmConfig | None = None


RUNNERS: Registry[Callable[[Grid, RunSpec, RunnerOptions], Backend]] = Registry("runner")


@RUNNERS.register("local")
def local_runner(grid: Grid, spec: RunSpec, options: RunnerOptions) -> Backend:
    gpus = visible_gpus()
    profile = spec.profile
    if not gpus and profile.grid.require_gpu and not all(is_done(t, grid.layout) for t in grid.deps):
        from nasaudit.grid.plan import estimate

        hours, name = estimate(grid, profile, spec.data_root).gpu_hours, grid.experiment.name
        raise NasauditError(
            f"{name} with profile {profile.name!r} needs about {hours:,.0f} GPU-hours (estimate) and this "
            f"machine has no GPU; run the CPU-sized grid with `make {name} PROFILE=smoke`, or submit to "
            f"Slurm with `make {name} RUNNER=slurm`"
        )
    return LocalBackend(spec, options.workers, gpus, profile.grid.cpu_workers)


@RUNNERS.register("slurm")
def slurm_runner(grid: Grid, spec: RunSpec, options: RunnerOptions) -> Backend:
    cfg = options.slurm or spec.profile.grid.slurm
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise NasauditError(
            "no `sbatch` here: run the slurm runner on the cluster's login node (or --cluster local to "
            "try the job-array path on this machine)"
        )
    return SlurmBackend(spec, cfg, task_state(grid.layout), options.cluster)


def check_finished(grid: Grid, spec: RunSpec) -> None:
    """Refuse the grid when a finished output was made by another run; the line names the first."""
    env = spec.env()
    stale: list[str] = []
    for task in grid.deps:
        if is_done(task, grid.layout):
            try:
                check_done(task, env)
            except NasauditError as exc:
                stale.append(str(exc))
    if stale:
        more = f" ({len(stale) - 1} more outputs like it)" if len(stale) > 1 else ""
        raise NasauditError(f"{stale[0]}{more}")


def run_grid(
    grid: Grid,
    spec: RunSpec,
    runner: str = "local",
    options: RunnerOptions | None = None,
    log: Callable[[str], None] = logger.info,
) -> Report:
    """Run an experiment's grid with the named runner and report what happened.

    Before anything runs, every finished output is checked to come from this run (``check_done``):
    a results folder holding another profile's or another version's outputs is refused with one line
    instead of being built upon.
    """
    check_finished(grid, spec)
    backend = RUNNERS.get(runner)(grid, spec, options or RunnerOptions())
    return schedule(grid, backend, spec.profile.grid.retries, log)
