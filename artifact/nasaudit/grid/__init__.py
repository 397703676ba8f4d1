"""The experiment grid: jobs keyed by (dataset, attack, budget, algorithm, trial), cached stage by stage,
run by a dependency-aware scheduler on local workers or Slurm, resumable at any point.

``jobs`` expands an experiment into tasks, ``stages`` runs one task, ``runners`` schedules them,
``status`` reads where a grid stands, ``plan`` estimates what it will cost.
"""

from nasaudit.grid.jobs import (
    CLEAN,
    EXPERIMENTS,
    Experiment,
    Grid,
    JobKey,
    Layout,
    Task,
    build_grid,
    load_experiment,
    task_seed,
)
from nasaudit.grid.runners import RUNNERS, Report, RunnerOptions, run_grid, schedule
from nasaudit.grid.stages import STAGES, Outcome, RunSpec, execute, is_done
from nasaudit.grid.status import grid_status, render_status

__all__ = [
    "CLEAN",
    "EXPERIMENTS",
    "RUNNERS",
    "STAGES",
    "Experiment",
    "Grid",
    "JobKey",
    "Layout",
    "Outcome",
    "Report",
    "RunSpec",
    "RunnerOptions",
    "Task",
    "build_grid",
    "execute",
    "grid_status",
    "is_done",
    "load_experiment",
    "render_status",
    "run_grid",
    "schedule",
    "task_seed",
]
