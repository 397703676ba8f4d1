"""One preflight task in a child process: run it under the batch cap, time it, take its peak memory.

The parent (``preflight.run``) starts a worker with ``multiprocessing``'s spawn and sends it items one
at a time; a crash or an out-of-memory kill of the worker costs only the item it was running. A
worker measures each item from a clean slate: the peak resident set size is reset before the item
(Linux ``clear_refs``), the CUDA allocator's peak too, and the synthetic data the item reads are
generated before its clock starts. The first message, before any item runs, asks for the timings
of every item (``preflight.timings``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from nasaudit.batch_cap import batch_cap
from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Layout, Task
from nasaudit.grid.stages import STAGES, Env, grid_dataset
from nasaudit.grid.state import error_line
from nasaudit.io import write_bytes
from nasaudit.preflight.bounds import GIB
from nasaudit.preflight.kinds import Item
from nasaudit.preflight.synthetic import SyntheticDatasets
from nasaudit.preflight.timings import timings

TRACEBACKS = "tracebacks"
LOG = "workers.log"  # the workers' own output


@dataclass(frozen=True)
class Setup:
    """What a worker needs besides the items: plain data, pickled to the spawned process."""

    profile: Profile  # bounded, with its stand-in models
    full: Profile  # the profile as given: what the projections are of
    root: Path  # the preflight's layout root
    device: str
    batches: int  # the batch cap: batches per loop,
    images: int | None  # and images per batch (None: the profile's batch sizes)
    seed: int


def serve(conn: Connection, setup: Setup) -> None:
    """The worker's loop: ``("item", Item)`` → its result, ``("timings", items)`` → theirs, None → exit.

    An error outside an item's own run (a CUDA error sticks to the process's context) is sent back
    with ``restart``, and the worker exits: the parent starts a fresh one for the next item.
    """
    _die_with_parent()
    _output_to(setup.root / LOG)
    device = torch.device(setup.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    while (message := conn.recv()) is not None:
        what, payload = message
        try:
            reply = run_item(payload, setup) if what == "item" else timings(payload, setup.full, device)
        except Exception as exc:
            conn.send({"ok": False, "error": error_line(exc), "restart": True})
            return
        conn.send(reply)


def _output_to(path: Path) -> None:
    """Send this process's stdout and stderr (progress bars, warnings, a crash's last words) to ``path``:
    the parent prints one line per item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (a killed preflight leaves no worker
    holding the GPU); elsewhere the worker ends at its next message, when the pipe is closed."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):  # no prctl: the pipe ends the worker
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def environment(setup: Setup) -> Env:
    datasets = SyntheticDatasets(setup.seed, setup.profile.grid.train_subset)
    return Env(setup.profile, Layout(setup.root), None, torch.device(setup.device), datasets=datasets)


def run_item(item: Item, setup: Setup) -> dict[str, Any]:
    """Run one item; never raises: a failure is ``ok: False`` with the grid's one-line error."""
    env = environment(setup)
    device = env.device
    result: dict[str, Any] = {"ok": False, "error": None}
    try:
        for name in _datasets(item, env):
            grid_dataset(name, env)  # generated before the clock starts
        rss_is_the_items = _reset_peaks(device)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            with batch_cap(setup.batches, setup.images):
                if item.task is None:
                    _table2(item, env)
                else:
                    _stage(item.task, env)
            result["ok"] = True
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result["wall_s"] = time.perf_counter() - start
            result["cpu_s"] = time.process_time() - cpu  # all its threads: what the load does not change
            result["load_avg"] = os.getloadavg()[0]  # the machine's: other work slows the item down
            result.update(_peaks(device, rss_is_the_items))
    except Exception as exc:  # reported as this item's failure; the worker goes on
        result["error"] = error_line(exc)
        name = item.id.replace("/", "+") + ".txt"
        write_bytes(setup.root / TRACEBACKS / name, traceback.format_exc().encode())
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _datasets(item: Item, env: Env) -> list[str]:
    if item.task is None:
        return [env.profile.experiment.datasets[0]]
    return sorted({item.task.dataset, item.task.key.searched_on})


def _stage(task: Task, env: Env) -> None:
    stage = STAGES.get(task.stage)
    stage.run(task, env)
    if not stage.output(task, env.layout).is_file():
        raise NasauditError(f"{task.id} finished without writing {stage.output(task, env.layout)}")


def _table2(item: Item, env: Env) -> None:
    """Table 2's scoring (``nasaudit sensitivity``) on the grid poisons the item names."""
    from nasaudit.analysis.sensitivity import run_sensitivity

    dataset = grid_dataset(env.profile.experiment.datasets[0], env)
    poisons = {attack: env.layout.poison(task) for attack, task in item.poisons.items()}
    table = run_sensitivity(
        dataset,
        poisons,
        env.profile.sensitivity,
        seed=0,
        pool_ops=env.profile.robot.pool_ops,
        device=env.device,
        out_dir=env.layout.root / "table2",
        progress=False,
    )
    if table is None:
        raise NasauditError("Table 2's scoring finished without writing its table")


# --- memory ----------------------------------------------------------------------------------------


_ITEMS_RUN = [0]  # items this worker process has started


def _reset_peaks(device: torch.device) -> bool:
    """Start the item's peak memory from what the process holds now; False if the resident-set peak
    could not be reset (then it is the process's, the item's only for its first item)."""
    _ITEMS_RUN[0] += 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size (VmHWM)
        return True
    except OSError:
        return _ITEMS_RUN[0] == 1


def _peaks(device: torch.device, rss_is_the_items: bool) -> dict[str, float | None]:
    rss = _peak_rss() / GIB if rss_is_the_items else None
    peaks: dict[str, float | None] = {"peak_rss_gib": rss, "peak_cuda_gib": None}
    if device.type == "cuda":
        peaks["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        peaks["peak_cuda_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return peaks


def _peak_rss() -> int:
    """Bytes: VmHWM of /proc/self/status, else ``getrusage`` (kilobytes on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
