"""The preflight end to end: plan the items, time their networks, run them in worker processes, report.

Files go under ``OUT/PROFILE/`` (``results/preflight/paper/`` by default), a folder marked as the
preflight's (``synthetic.MARKER``) and emptied at the start of every run, so a stage never reuses
what an earlier run left; a folder that holds anything else is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Layout
from nasaudit.options import add_device, add_profile, positive
from nasaudit.preflight import report as reporting
from nasaudit.preflight.bounds import bounded_profile
from nasaudit.preflight.kinds import Item, plan_items
from nasaudit.preflight.pool import Pool, cpu_slots
from nasaudit.preflight.standins import stand_in_models
from nasaudit.preflight.synthetic import MARKER, mark, synthetic_name
from nasaudit.preflight.worker import Setup

FORMAT = "nasaudit-preflight/1"
CPU_BATCHES, CUDA_BATCHES = 1, 2  # batches per loop: the fewest on a CPU; on a GPU a second, warm one
# Items side by side on a GPU: its small networks leave it mostly idle, so workers overlap their launches
# (on an H200 with 16 CPUs, 6 workers ran 39 of the paper's 53 items in 290 s; one worker ran 4 in 47 s
# and did not finish the fifth in the minutes left); each worker gets an equal share of the CPUs.
CUDA_WORKERS = 6
OUT_OF_MEMORY = "out of memory"  # in torch's CUDA out-of-memory error: such an item is retried alone
CPU_IMAGES = 8  # images per batch on a CPU, where the profile's batches take hours (docs/preflight.md)

logger = logging.getLogger(__name__)


def run_preflight(
    profile: Profile,
    device: torch.device | str,
    out: Path,
    *,
    only: tuple[str, ...] = (),
    batches: int | None = None,
    images: int | None = None,
    workers: int | None = None,
    all_data: bool | None = None,
    fresh_process: bool | None = None,
    seed: int = 0,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the preflight of ``profile`` on ``device`` into ``out/<profile>``; return the report.

    ``only`` keeps the kinds containing one of the substrings (and their dependencies). ``batches``
    caps every loop (default 1 on a CPU, 2 on a GPU) and ``images`` every batch (default 8 on a CPU,
    0 on a GPU; 0 keeps the profile's batch sizes). ``workers`` run items side by side (default: one
    per core on a CPU, each on one thread; on a GPU up to ``CUDA_WORKERS``, one per two CPUs, sharing
    the CPUs; an item that runs out of GPU memory beside others is run again alone before it counts).
    ``all_data`` runs P-DARTS on every dataset and defended data (default on a GPU; a CPU
    leaves those to a GPU: ``NasAlgorithm.preflight_other_data_on_cpu``, ``kinds``).
    ``fresh_process`` starts a worker per item (default on a CPU, where a process's peak resident
    memory is only its own in a fresh process) rather than keeping it (on a GPU, where the
    allocator's peak resets and starting CUDA costs more than most items). ``report["ok"]`` is False
    if any item failed.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    batches = batches or (CUDA_BATCHES if cuda else CPU_BATCHES)
    images = (0 if cuda else CPU_IMAGES) if images is None else images
    workers = workers or (max(1, min(CUDA_WORKERS, cpu_slots() // 2)) if cuda else cpu_slots())
    threads = (max(1, cpu_slots() // workers) if workers > 1 else None) if cuda else 1
    fresh_process = (not cuda) if fresh_process is None else fresh_process
    root = _claim(Path(out), profile)
    bounded, notes = bounded_profile(profile, device)
    plan = plan_items(bounded, Layout(root), only, cpu=not (cuda if all_data is None else all_data))
    items = plan.items
    bounded, stand_in_notes = stand_in_models(bounded, root, {s for i in items for s in _sections(i)})
    notes.update(stand_in_notes)
    setup = Setup(bounded, profile, root, str(device), batches, images or None, seed)
    report: dict[str, Any] = {
        "format": FORMAT,
        "synthetic": True,
        "profile": profile.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "cpus": os.cpu_count(),
        "batches_per_loop": batches,
        "images_per_batch": images or None,  # None: every batch as large as the profile makes it
        "workers": workers,
        "fresh_process_per_task": fresh_process,
        "datasets": {name: synthetic_name(name) for name in sorted({_dataset(i, bounded) for i in items})},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": str(root),
        "left_out": plan.left_out,  # kind -> why this machine does not run it (a CPU's data variants)
        "running": {},  # id -> kind of the tasks started and not finished: what a run cut short was doing
        "tasks": [],
    }
    started, order = time.perf_counter(), [item.id for item in items]
    results: dict[str, dict[str, Any]] = {}
    alone: set[str] = set()  # ids retried without other items beside them (they ran out of GPU memory)

    def record(item: Item, outcome: dict[str, Any]) -> None:
        results[item.id] = {**_describe(item, notes), **outcome, **projections.get(item.id, {})}
        report["running"].pop(item.id, None)
        report["tasks"].append(results[item.id])
        if echo:
            logger.info(reporting.progress_line(results[item.id], len(results), len(items)))
        reporting.write(report, root, started, order)

    depth: dict[str, int] = {}
    for item in items:  # deeper items first once ready: chains (search, retrain, victim, GC) start early
        depth[item.id] = 1 + max((depth[d] for d in item.deps), default=-1)
    pending = sorted(items, key=lambda i: -depth[i.id])
    with Pool(setup, workers, fresh_process, threads) as pool:
        # timed first, alone on the device (no item beside them), so a run cut short keeps every item's
        # step time and projection, and `plan --timings` can read them from its report
        projections = _timings(pool.call(("timings", items)), report, root, started, order)
        while pending or pool.busy:
            for item in [i for i in pending if all(d in results for d in i.deps)]:
                failed = [d for d in item.deps if not results[d]["ok"]]
                if failed:
                    pending.remove(item)
                    record(item, {"ok": False, "error": f"not run: it needs {failed[0]}, which failed"})
                elif pool.free and not (pool.busy and (item.id in alone or alone & set(report["running"]))):
                    pending.remove(item)
                    pool.start(item)
                    report["running"][item.id] = item.kind
                    if echo:
                        logger.info(reporting.start_line(item.kind, item.id))
                    reporting.write(report, root, started, order)
            if pool.busy:
                for item, outcome in pool.wait():
                    if workers > 1 and item.id not in alone and OUT_OF_MEMORY in str(outcome.get("error")):
                        alone.add(item.id)  # the others' memory may have been what it lacked
                        report["running"].pop(item.id, None)
                        pending.insert(0, item)
                        if echo:
                            logger.info(
                                f"[retry] {item.kind} ({item.id}): out of GPU memory beside others; run alone"
                            )
                    else:
                        record(item, outcome)
    reporting.write(report, root, started, order)
    if echo:
        print(reporting.render_summary(report))
        logger.info(f"preflight: report in {root / reporting.REPORT} and {root / reporting.MARKDOWN}")
    return report


def _timings(
    reply: dict[str, Any], report: dict[str, Any], root: Path, started: float, order: list[str]
) -> dict[str, dict[str, Any]]:
    """The timing worker's reply into the report: its GPU factor, or why there are no projections;
    returns the projection of each item id (merged into the item's line when it is recorded)."""
    if "items" in reply:
        report["gpu_factor"] = reply["gpu_factor"]
    else:  # the timing worker itself failed; the items still run
        report["projection_error"] = reply.get("error", "failed")
    reporting.write(report, root, started, order)
    return reply.get("items", {})


def _claim(out: Path, profile: Profile) -> Path:
    """The run's folder ``out/<profile>``, emptied; ``out`` must be new, empty or the preflight's own."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise NasauditError(
            f"{out} holds files that are not a preflight's (no {MARKER}); the preflight writes synthetic "
            "files only into an empty folder or its own (default results/preflight)"
        )
    root = Layout.of(out, profile).root
    if root.exists():
        shutil.rmtree(root)
    out.mkdir(parents=True, exist_ok=True)
    mark(out)
    root.mkdir(parents=True)
    return root


def _sections(item: Item) -> set[str]:
    """The profile sections behind an item's notes: RoBoT's stack, the pretrained models it loads."""
    stage, what = item.kind.split("/")[:2]
    algorithm = what.split("+")[0]
    sections = {"defenses.denoise"} if stage == "defend" and what == "denoise" else set()
    if stage == "defend" and what == "relabel":
        sections.add("defenses.relabel")
    if stage == "search" and algorithm == "robot":
        sections.add("robot")
    if stage == "search" and algorithm in ("nsganetv2", "random_mbv3"):
        sections.add("nsganetv2.supernet")
    return sections


def _describe(item: Item, notes: dict[str, list[str]]) -> dict[str, Any]:
    """The report line of an item before it runs: what it is and the notes of the sections it reads."""
    return {
        "kind": item.kind,
        "id": item.id,
        "stage": item.kind.split("/")[0],
        "role": item.role,
        "tables": list(item.tables),
        "notes": [note for section in sorted(_sections(item)) for note in notes.get(section, [])],
    }


def _dataset(item: Item, profile: Profile) -> str:
    return profile.experiment.datasets[0] if item.task is None else item.task.key.searched_on


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


# --- the command line -----------------------------------------------------------------------------


def cmd_preflight(args: argparse.Namespace) -> int:
    from nasaudit import options
    from nasaudit.config import load_profile

    if args.images is not None and args.images < 0:
        raise NasauditError(f"--images must be ≥ 0 (0: the profile's batch sizes), got {args.images}")
    profile = load_profile(args.profile, args.set)
    device = options.device(args.device)
    if args.list:
        bounded, _ = bounded_profile(profile, device)
        cpu = not (device.type == "cuda" if args.all_data is None else args.all_data)
        plan = plan_items(bounded, Layout.of(Path(args.out), profile), tuple(args.only or ()), cpu)
        for item in plan.items:
            print(f"{item.kind:<45} {item.role:<10} {item.id}")
        for kind, reason in plan.left_out.items():
            print(f"{kind:<45} {'not run':<10} {reason}")
        return 0
    report = run_preflight(
        profile,
        device,
        options.output(args.out, folder=True),
        only=tuple(args.only or ()),
        batches=args.batches,
        images=args.images,
        workers=args.workers,
        all_data=args.all_data,
    )
    return 0 if report["ok"] else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "preflight",
        help="every kind of task of every table at the profile's sizes, a few steps on synthetic data",
    )
    add_profile(p, "the sizes to preflight")
    add_device(p)
    p.add_argument("--out", default="results/preflight", help="folder (its PROFILE/ subfolder is rewritten)")
    p.add_argument(
        "--only", nargs="+", metavar="TEXT", help="only the kinds containing one of these (and their inputs)"
    )
    p.add_argument(
        "--batches", type=positive, default=None, help="batches per loop (default: 1 on CPU, 2 on GPU)"
    )
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"images per batch at most (default {CPU_IMAGES} on CPU; 0: the profile's sizes, GPU default)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=None,
        help="items run side by side (default: cores on CPU, up to 6 on GPU)",
    )
    p.add_argument(
        "--all-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="P-DARTS on every dataset and defended data (default: on a GPU, not on a CPU)",
    )
    p.add_argument("--list", action="store_true", help="list the tasks it would run, and stop")
    p.set_defaults(func=cmd_preflight)
