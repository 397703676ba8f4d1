"""Where a results folder came from and what it cost, read from its files alone.

The profile's settings, the commit of the code rendering the page, the environments recorded in the
outputs' manifests (torch, CUDA, GPU, host), each grid's status per stage, and the compute its tasks
spent (the ``.done`` records the grid runners leave) next to the estimate `nasaudit plan` recorded.
The page does not time networks itself: an estimate costs about a minute per table on a CPU, so it
shows the one `nasaudit plan` last recorded, and says when there is none.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid import Layout, build_grid, grid_status, load_experiment
from nasaudit.grid.plan import record_path
from nasaudit.grid.stages import STAGES, task_state
from nasaudit.grid.state import DONE
from nasaudit.io import jsonable

ENVIRONMENT_KEYS = ("nasaudit", "torch", "cuda", "gpu", "python", "device", "host")
REPOSITORY = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class StageRecord:
    """One stage of one grid: its task states, the compute its finished tasks spent, the estimate."""

    stage: str
    counts: dict[str, int]  # done, running, failed, pending
    timed: int  # finished tasks with a recorded time
    seconds: float  # their seconds, summed
    devices: tuple[str, ...]  # the devices those seconds were spent on
    estimated_seconds: float | None  # the recorded plan's estimate for the tasks left when it ran
    estimated_tasks: int | None  # how many tasks that estimate covered

    @property
    def tasks(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class GridRecord:
    name: str
    stages: tuple[StageRecord, ...]
    failures: dict[str, str]  # task id -> its one-line error
    plan: dict[str, Any] | None  # the recorded estimate's header: device, created, selection
    error: str = ""  # why the grid could not be read (a profile section that cannot run)


@dataclass(frozen=True)
class Provenance:
    profile: str
    settings: dict[str, Any]  # the profile as data
    commit: str
    grids: tuple[GridRecord, ...]
    environments: tuple[tuple[dict[str, str], int], ...]  # distinct manifests, with how many outputs each


def provenance(profile: Profile, layout: Layout, grids: tuple[str, ...]) -> Provenance:
    """Everything the provenance section shows, for the named grid experiments."""
    records, environments, seen = [], Counter[tuple[str, ...]](), set()
    for name in grids:
        try:
            grid = build_grid(load_experiment(name, profile), layout)
        except NasauditError as exc:
            records.append(GridRecord(name, (), {}, None, str(exc)))
            continue
        status, state = grid_status(grid), task_state(layout)
        plan = _read_plan(layout, name)
        stages = []
        for stage, tasks in grid.by_stage().items():
            timings = [t for t in (state.timing(task) for task in tasks) if t is not None]
            estimate = next((s for s in (plan or {}).get("stages", []) if s["stage"] == stage), None)
            stages.append(
                StageRecord(
                    stage,
                    dict(status.counts[stage]),
                    len(timings),
                    sum(seconds for seconds, _ in timings),
                    tuple(sorted({device for _, device in timings})),
                    None if estimate is None else float(estimate["seconds"]),
                    None if estimate is None else int(estimate["tasks"]) - int(estimate["done"]),
                )
            )
            for task in tasks:
                output = STAGES.get(stage).output(task, layout)
                if status.counts[stage][DONE] and output not in seen and output.is_file():
                    seen.add(output)
                    manifest = _manifest(output)
                    if manifest is not None:
                        environments[
                            tuple(str(manifest.get(k, "not recorded")) for k in ENVIRONMENT_KEYS)
                        ] += 1
        failures = {task.id: error for task, error in status.failures.items()}
        header = None if plan is None else {k: v for k, v in plan.items() if k != "stages"}
        records.append(GridRecord(name, tuple(stages), failures, header))
    return Provenance(
        profile.name,
        jsonable(profile),
        code_commit(),
        tuple(records),
        tuple(
            (dict(zip(ENVIRONMENT_KEYS, values, strict=True)), n) for values, n in environments.most_common()
        ),
    )


def code_commit(repository: Path = REPOSITORY) -> str:
    """The commit of the code rendering the page (results may come from other commits: see the manifests)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repository), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def _read_plan(layout: Layout, experiment: str) -> dict[str, Any] | None:
    path = record_path(layout, experiment)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _manifest(output: Path) -> dict[str, Any] | None:
    """The environment manifest a stage's output carries (results and searches: ``manifest``; poisons
    and defended data: ``environment``; a victim record has none)."""
    try:
        record = json.loads(output.read_text())
    except (OSError, ValueError):
        return None
    manifest = record.get("manifest") or record.get("environment") if isinstance(record, dict) else None
    return manifest if isinstance(manifest, dict) else None
