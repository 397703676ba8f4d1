"""The preflight's worker processes: spawned, one item each at a time, a dead one costing only its item.

On a CPU several single-threaded workers run independent items side by side (one per core): on a
shared machine two threads of one process wait on each other and slow down many times over, one
thread per process does not. On a GPU several workers share the GPU and the CPUs (its small
networks leave it mostly idle), each kept between its items (starting CUDA costs more than most
items). A worker that dies (a segfault, the kernel's
out-of-memory killer) is reported in its item's line and replaced for the next item.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from nasaudit.preflight.kinds import Item
from nasaudit.preflight.worker import LOG, Setup, serve

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class _Slot:
    process: Any = None
    conn: Any = None
    item: Item | None = None


class Pool:
    """``size`` worker slots; ``fresh`` starts a new process for every item; ``threads`` (if set) is
    each worker's thread count, fixed before it imports numpy and torch."""

    def __init__(self, setup: Setup, size: int, fresh: bool, threads: int | None) -> None:
        self.setup, self.fresh, self.threads = setup, fresh, threads
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot() for _ in range(size)]

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        for slot in self.slots:
            self._stop(slot)

    @property
    def free(self) -> bool:
        return any(slot.item is None for slot in self.slots)

    @property
    def busy(self) -> int:
        return sum(slot.item is not None for slot in self.slots)

    def start(self, item: Item) -> None:
        """Hand ``item`` to a free slot (``free`` must be true)."""
        slot = next(s for s in self.slots if s.item is None)
        if slot.process is not None and not slot.process.is_alive():
            self._stop(slot)
        if slot.process is None:
            self._spawn(slot)
        slot.conn.send(("item", item))
        slot.item = item

    def wait(self) -> list[tuple[Item, dict[str, Any]]]:
        """Block until at least one running item ends; its (item, result) pairs."""
        running = [s for s in self.slots if s.item is not None]
        wait([s.conn for s in running] + [s.process.sentinel for s in running])
        done = []
        for slot in running:
            result = self._result(slot)
            if result is not None:
                done.append((slot.item, result))
                slot.item = None
        return done

    def call(self, message: tuple[str, Any]) -> dict[str, Any]:
        """``message`` while no item runs (the timings, before the first item) on the first slot's
        worker, started for it; waited for, then the worker is stopped (the items start from a clean
        process and allocator)."""
        slot = self.slots[0]
        assert self.busy == 0, "call() waits for the items"
        if slot.process is not None and not slot.process.is_alive():
            self._stop(slot)
        if slot.process is None:
            self._spawn(slot)
        try:
            slot.conn.send(message)
            wait([slot.conn, slot.process.sentinel])
            return self._result(slot, keep=False) or {"ok": False, "error": "no reply"}
        finally:
            self._stop(slot)

    def _result(self, slot: _Slot, keep: bool = True) -> dict[str, Any] | None:
        """The slot's reply if it has one, a failure if its process died, else None (still running)."""
        if slot.conn.poll():
            result = slot.conn.recv()
            if result.pop("restart", False) or self.fresh or not keep:
                self._stop(slot)
            return result
        if slot.process.is_alive():
            return None
        code = slot.process.exitcode
        self._stop(slot)
        hint = "; signal 9 is often the kernel's out-of-memory killer" if code == -9 else ""
        log = self.setup.root / LOG
        return {"ok": False, "error": f"the worker process died (exit code {code}{hint}; see {log})"}

    def _spawn(self, slot: _Slot) -> None:
        slot.conn, child = self.context.Pipe()
        slot.process = self.context.Process(target=serve, args=(child, self.setup), daemon=True)
        with _environment({name: str(self.threads) for name in THREAD_VARIABLES} if self.threads else {}):
            slot.process.start()
        child.close()

    def _stop(self, slot: _Slot) -> None:
        if slot.process is None:
            return
        if slot.process.is_alive():
            with contextlib.suppress(OSError):  # a worker exiting meanwhile has closed its end
                slot.conn.send(None)
            slot.process.join(timeout=30)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
        slot.conn.close()
        slot.process, slot.conn = None, None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while a worker starts (it inherits them), the parent's afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_slots() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
