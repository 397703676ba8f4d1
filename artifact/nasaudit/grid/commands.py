"""`nasaudit grid run|status` and `nasaudit plan`: thin wrappers over the grid (parsed here, run there)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasaudit.options import add_profile, add_root, add_tensorboard, output

logger = logging.getLogger(__name__)


def _grid(args: argparse.Namespace) -> tuple[Any, Any]:
    from nasaudit.config import load_profile
    from nasaudit.grid import Layout, build_grid, load_experiment

    profile = load_profile(args.profile, args.set)
    experiment = load_experiment(args.experiment, profile).select(args.algo or (), args.dataset or ())
    return build_grid(experiment, Layout.of(args.results, profile)), profile


def cmd_grid_run(args: argparse.Namespace) -> int:
    from nasaudit.errors import NasauditError
    from nasaudit.grid import RunnerOptions, RunSpec, run_grid

    if args.workers is not None and args.workers < 0:
        raise NasauditError(f"--workers must be ≥ 0 (0 runs tasks in this process), got {args.workers}")
    output(args.results, folder=True)
    grid, profile = _grid(args)
    overrides = {
        "partition": args.partition,
        "time_min": args.time_min,
        "gpus_per_task": args.gpus,
        "array_limit": args.array_limit,
    }
    slurm = replace(profile.grid.slurm, **{k: v for k, v in overrides.items() if v is not None})
    options = RunnerOptions(workers=args.workers, cluster=args.cluster, slurm=slurm)
    spec = RunSpec(profile, Path(args.results), args.root)
    where = f"{grid.layout.root} ({args.runner} runner)"
    logger.info(f"[grid] {args.experiment}: {len(grid.deps)} tasks in {where}")
    report = run_grid(grid, spec, args.runner, options)
    logger.info(f"[grid] {report.summary()}")
    for task, error in report.failed.items():
        logger.error(f"[grid] FAILED {task.id}: {error}")
    if not report.ok:
        logger.error("[grid] nothing failed is recorded as a result; rerun the same command to retry")
        return 1
    return 0


def cmd_grid_status(args: argparse.Namespace) -> int:
    from nasaudit.grid import grid_status, render_status

    grid, _ = _grid(args)
    print(render_status(grid, grid_status(grid)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import time

    from nasaudit import options
    from nasaudit.grid.plan import estimate, record_path
    from nasaudit.io import jsonable, write_json

    device = None if args.device == "auto" else options.device(args.device)
    grid, profile = _grid(args)
    timer = None
    if args.timings:
        from nasaudit.preflight.timings import MeasuredTimer

        timer = MeasuredTimer(Path(args.timings), profile)
    result = estimate(grid, profile, args.root, device, timer)
    print(result.render(args.experiment, profile.name))
    record = {
        "experiment": args.experiment,
        "profile": profile.name,
        "selection": {"algorithms": args.algo or [], "datasets": args.dataset or []},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **jsonable(result),
    }
    logger.info(
        f"recorded for `nasaudit report` -> {write_json(record_path(grid.layout, args.experiment), record)}"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Register `grid run`, `grid status` and `plan` on the main parser's subcommands."""

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment name: {EXPERIMENTS}")
        add_profile(p)
        p.add_argument("--results", default="results", help="results folder; jobs go to RESULTS/PROFILE/")
        p.add_argument(
            "--algo", nargs="+", action="extend", help="only these NAS algorithms (and their baseline): {NAS}"
        )
        p.add_argument("--dataset", nargs="+", action="extend", help="only these datasets: {DATASETS}")
        add_root(p)

    grid = sub.add_parser("grid", help="run an experiment's jobs (resumable), or show where they stand")
    grid_sub = grid.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = grid_sub.add_parser("run", help="run every job whose result is missing; a rerun resumes")
    selection(p)
    p.add_argument(
        "--runner",
        default="local",
        help="{RUNNERS} (local: worker processes, slurm: job arrays)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: worker processes (default: one per visible GPU, else the profile's cpu_workers; "
        "0 runs tasks in this process)",
    )
    p.add_argument(
        "--cluster",
        default="slurm",
        choices=["slurm", "local", "debug"],
        help="slurm runner: submitit's executor (local/debug run the array path on this machine)",
    )
    p.add_argument("--partition", default=None, help="slurm partition (default: the profile's)")
    p.add_argument("--time-min", type=int, default=None, help="slurm time limit per task in minutes")
    p.add_argument("--gpus", type=int, default=None, help="slurm GPUs per task")
    p.add_argument("--array-limit", type=int, default=None, help="slurm: largest job array submitted")
    add_tensorboard(p)
    p.set_defaults(func=cmd_grid_run)
    p = grid_sub.add_parser("status", help="done/running/failed/pending tasks per stage, and failures")
    selection(p)
    p.set_defaults(func=cmd_grid_status)

    p = sub.add_parser("plan", help="task counts per stage and an estimate of the GPU-hours left")
    selection(p)
    p.add_argument(
        "--device", default="auto", help="device to time the training steps on (auto, cpu, cuda:N)"
    )
    p.add_argument(
        "--timings",
        default=None,
        metavar="REPORT",
        help="a preflight's report.json: its measured step times (say, a GPU's) instead of timing here",
    )
    p.set_defaults(func=cmd_plan)
