"""`nasaudit grid status`: where a grid stands, read from its files alone (no runner needs to be alive)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from nasaudit.grid.jobs import Grid, Task
from nasaudit.grid.stages import is_done, task_state
from nasaudit.grid.state import DONE, FAILED, PENDING, RUNNING

BAR = "{desc:<8} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt}"


@dataclass(frozen=True)
class GridStatus:
    counts: dict[str, Counter]  # stage -> {done, running, failed, pending: n}
    failures: dict[Task, str]  # task -> its one-line error
    running: dict[Task, str]  # task -> where it runs


def grid_status(grid: Grid) -> GridStatus:
    state = task_state(grid.layout)
    counts: dict[str, Counter] = {}
    failures: dict[Task, str] = {}
    running: dict[Task, str] = {}
    for stage, tasks in grid.by_stage().items():
        counts[stage] = Counter({DONE: 0, RUNNING: 0, FAILED: 0, PENDING: 0})
        for task in tasks:
            if is_done(task, grid.layout):
                counts[stage][DONE] += 1
            elif (where := state.running(task)) is not None:
                counts[stage][RUNNING] += 1
                running[task] = f"{where.get('where', '?')} on {where.get('host', '?')}"
            elif (error := state.failure(task)) is not None:
                counts[stage][FAILED] += 1
                failures[task] = error
            else:
                counts[stage][PENDING] += 1
    return GridStatus(counts, failures, running)


def render_status(grid: Grid, status: GridStatus, width: int = 60, max_listed: int = 20) -> str:
    """One progress bar per stage with its counts, then the failed tasks and their errors."""
    total = sum(sum(c.values()) for c in status.counts.values())
    done = sum(c[DONE] for c in status.counts.values())
    lines = [f"{grid.experiment.name}: {done}/{total} tasks done in {grid.layout.root}"]
    for stage, c in status.counts.items():
        n = sum(c.values())
        bar = tqdm.format_meter(c[DONE], n, 0, ncols=width, prefix=stage, bar_format=BAR)
        lines.append(f"{bar}  done {c[DONE]}, running {c[RUNNING]}, failed {c[FAILED]}, pending {c[PENDING]}")
    for task, where in list(status.running.items())[:max_listed]:
        lines.append(f"running {task.id} ({where})")
    for task, error in list(status.failures.items())[:max_listed]:
        lines.append(f"FAILED {task.id}: {error}")
    hidden = len(status.failures) - max_listed
    if hidden > 0:
        lines.append(f"... and {hidden} more failed tasks")
    return "\n".join(lines)
