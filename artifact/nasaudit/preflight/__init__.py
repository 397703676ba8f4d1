"""`nasaudit preflight`: every kind of task of every table, at the profile's real sizes, for a few steps
on synthetic data, before a grid spends GPU-days on it (docs/preflight.md).

- ``synthetic``: in-memory stand-ins of the datasets and the marker that keeps them out of tables;
- ``bounds``: the profile with its counts bounded (epochs, steps, pool sizes), one function per section;
- ``kinds``: the tasks to run, derived from the experiments' grids, one per kind of task;
- ``worker``: one task in a child process, with its time and peak memory;
- ``run``: the whole preflight and its report (``run_preflight``), and the command line.

``run_preflight`` is imported lazily, so the marker check (``synthetic``) stays light for ``table``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_preflight"]


def __getattr__(name: str) -> Any:
    if name == "run_preflight":
        from nasaudit.preflight.run import run_preflight

        return run_preflight
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
