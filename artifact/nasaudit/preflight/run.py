"""The preflight end to end: plan the items, run each in a worker process, time them, report.

Files go under ``OUT/PROFILE/`` (``results/preflight/paper/`` by default), a folder marked as the
preflight's (``synthetic.MARKER``) and emptied at the start of every run, so a stage never reuses
what an earlier run left; a folder that holds anything else is refused. ``report.json`` and
``report.md`` there are rewritten after every item, so a run cut short still says how far it got.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Layout
from nasaudit.io import jsonable, write_bytes, write_json
from nasaudit.preflight.bounds import bounded_profile
from nasaudit.preflight.kinds import Item, plan_items
from nasaudit.preflight.standins import stand_in_models
from nasaudit.preflight.synthetic import MARKER, mark, synthetic_name
from nasaudit.preflight.worker import Setup, serve

FORMAT = "nasaudit-preflight/1"
REPORT = "report.json"
CPU_BATCHES, CUDA_BATCHES = 1, 2  # batches per loop: the fewest on a CPU; on a GPU a second, warm one
POLL_S = 1.0


def run_preflight(
    profile: Profile,
    device: torch.device | str,
    out: Path,
    *,
    only: tuple[str, ...] = (),
    batches: int | None = None,
    fresh_process: bool | None = None,
    seed: int = 0,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the preflight of ``profile`` on ``device`` into ``out/<profile>``; return the report.

    ``only`` keeps the kinds containing one of the substrings (and their dependencies); ``batches``
    caps every loop (default 1 on a CPU, 2 on a GPU); ``fresh_process`` starts a worker per item
    (default on a CPU, where a process's peak resident memory cannot be reset reliably) rather than
    one for all (on a GPU, where the allocator's peak can and process start-up costs more than most
    items). ``report["ok"]`` is False if any item failed.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    batches = batches or (CUDA_BATCHES if cuda else CPU_BATCHES)
    fresh_process = (not cuda) if fresh_process is None else fresh_process
    root = _claim(Path(out), profile)
    bounded, notes = bounded_profile(profile, device)
    items = plan_items(bounded, Layout(root), only)
    bounded, stand_in_notes = stand_in_models(bounded, root, _sections(items))
    notes.update(stand_in_notes)
    setup = Setup(bounded, profile, root, str(device), batches, seed)
    report: dict[str, Any] = {
        "format": FORMAT,
        "synthetic": True,
        "profile": profile.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "batches_per_loop": batches,
        "fresh_process_per_task": fresh_process,
        "datasets": {name: synthetic_name(name) for name in sorted({_dataset(i, bounded) for i in items})},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": str(root),
        "tasks": [],
    }
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with _Workers(setup, fresh_process) as workers:
        for item in items:
            failed = [d for d in item.deps if not results[d]["ok"]]
            if failed:
                outcome = {"ok": False, "error": f"not run: it needs {failed[0]}, which failed", "wall_s": 0.0}
            else:
                outcome = workers.run(("item", item))
            results[item.id] = {**_describe(item, notes), **outcome}
            report["tasks"].append(results[item.id])
            _progress(results[item.id], len(report["tasks"]), len(items), echo)
            _write(report, root, started)
        projections = workers.run(("timings", items), fresh=True)
    if "items" in projections:
        report["gpu_factor"] = projections["gpu_factor"]
        for entry in report["tasks"]:
            entry.update(projections["items"][entry["id"]])
    else:  # the timing worker itself failed
        report["projection_error"] = projections.get("error", "failed")
    _write(report, root, started)
    if echo:
        print(render_summary(report))
        print(f"preflight: report in {root / REPORT} and {root / 'report.md'}")
    return report


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


def _sections(items: list[Item]) -> set[str]:
    """The profile sections whose pretrained models the items load."""
    sections = set()
    for item in items:
        if item.kind.startswith("defend/denoise"):
            sections.add("defenses.denoise")
        if item.kind.startswith("defend/relabel"):
            sections.add("defenses.relabel")
        if item.kind.split("/")[0] == "search" and item.kind.split("/")[1] in ("nsganetv2", "random_mbv3"):
            sections.add("nsganetv2.supernet")
    return sections


def _describe(item: Item, notes: dict[str, list[str]]) -> dict[str, Any]:
    """The report line of an item before it runs: what it is and the notes of the sections it reads."""
    stage, what = item.kind.split("/")[:2]
    sections = {"robot": "robot", "defend/denoise": "defenses.denoise", "defend/relabel": "defenses.relabel"}
    mine = [s for key, s in sections.items() if key in item.kind]
    if stage == "search" and what.split("+")[0] in ("nsganetv2", "random_mbv3"):
        mine.append("nsganetv2.supernet")
    return {
        "kind": item.kind,
        "id": item.id,
        "stage": stage,
        "role": item.role,
        "tables": list(item.tables),
        "notes": [note for section in mine for note in notes.get(section, [])],
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


class _Workers:
    """Worker processes (spawned) that run one message at a time; a dead worker fails only its message."""

    def __init__(self, setup: Setup, fresh: bool) -> None:
        self.setup, self.fresh = setup, fresh
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.conn: Any = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def run(self, message: tuple[str, Any], fresh: bool = False) -> dict[str, Any]:
        if self.process is None:
            self.conn, child = self.context.Pipe()
            self.process = self.context.Process(target=serve, args=(child, self.setup), daemon=True)
            self.process.start()
            child.close()
        self.conn.send(message)
        while not self.conn.poll(POLL_S):
            if not self.process.is_alive():
                code = self.process.exitcode
                self._stop()
                hint = " (signal 9: often the kernel's out-of-memory killer)" if code == -9 else ""
                return {"ok": False, "error": f"the worker process died with exit code {code}{hint}"}
        result = self.conn.recv()
        if self.fresh or fresh:
            self._stop()
        return result

    def _stop(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()
        self.process, self.conn = None, None


# --- the report ------------------------------------------------------------------------------------


def _write(report: dict[str, Any], root: Path, started: float) -> None:
    report["wall_s"] = time.perf_counter() - started
    report["ok"] = all(t["ok"] for t in report["tasks"])
    report["failed"] = sum(not t["ok"] for t in report["tasks"])
    write_json(root / REPORT, jsonable(report))
    write_bytes(root / "report.md", render_markdown(report).encode())


def _progress(entry: dict[str, Any], done: int, total: int, echo: bool) -> None:
    if not echo:
        return
    state = "ok" if entry["ok"] else f"FAILED: {entry['error']}"
    memory = _memory(entry)
    print(f"[{done}/{total}] {entry['kind']} ({entry['id']}): {state}, {entry.get('wall_s', 0):.1f} s, {memory}",
          flush=True)  # fmt: skip


def _memory(entry: dict[str, Any]) -> str:
    if entry.get("peak_cuda_gib") is not None:
        return f"CUDA peak {entry['peak_cuda_gib']:.2f} GiB"
    if entry.get("peak_rss_gib") is not None:
        return f"peak RSS {entry['peak_rss_gib']:.2f} GiB"
    return "memory not measured"


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in report["tasks"]:
        step = t.get("step")
        hours = t.get("projected_hours")
        rows.append(
            [
                t["kind"] + ("" if t["role"] == "kind" else " (dependency)"),
                "ok" if t["ok"] else "FAILED",
                f"{t.get('wall_s', 0.0):.1f}",
                f"{step['seconds']:.3g} ({step['network']} @ {step['batch']})" if step else "-",
                _memory(t).replace("memory not measured", "-"),
                f"{hours:,.1f}" if hours is not None else "-",
                "; ".join(filter(None, [t.get("error") or "", *t.get("notes", [])])),
            ]
        )
    return rows


HEADERS = ["kind", "status", "wall s", "s/step (network @ batch)", "peak memory", "projected h", "notes"]


def render_summary(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    unit = "GPU-hours" if report["device"].startswith("cuda") else "GPU-hours (CPU timings converted)"
    lines = [
        tabulate(_rows(report), headers=HEADERS, tablefmt="simple"),
        f"preflight of profile {report['profile']!r} on {report['device']} ({report['device_name']}), "
        f"synthetic data, {report['batches_per_loop']} batch(es) per loop: "
        f"{len(report['tasks']) - report['failed']} of {len(report['tasks'])} tasks ok in "
        f"{report['wall_s']:.0f} s; projected hours are {unit}",
    ]
    if report["failed"]:
        lines.append(f"PREFLIGHT FAILED: {report['failed']} task(s); tracebacks in {report['folder']}/tracebacks")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    state = "ok" if report["ok"] else f"{report['failed']} FAILED"
    lines = [
        f"# Preflight of profile `{report['profile']}`: {state}",
        "",
        f"Synthetic data ({', '.join(report['datasets'].values())}), never a result. Device "
        f"{report['device']} ({report['device_name']}); {report['batches_per_loop']} batch(es) per loop; "
        f"started {report['started']}, {report.get('wall_s', 0.0):.0f} s. Seconds per step: "
        "`grid.plan.Timer` on this device; projected hours: `grid.plan`'s cost model of the full task"
        + ("" if report["device"].startswith("cuda") else ", CPU timings converted to GPU-hours")
        + " (docs/preflight.md).",
        "",
        tabulate(_rows(report), headers=HEADERS, tablefmt="github"),
        "",
    ]
    return "\n".join(lines)


# --- the command line -----------------------------------------------------------------------------


def cmd_preflight(args: argparse.Namespace) -> int:
    from nasaudit.cli import _device
    from nasaudit.config import load_profile

    profile = load_profile(args.profile)
    device = _device(args.device)
    if args.list:
        bounded, _ = bounded_profile(profile, device)
        for item in plan_items(bounded, Layout.of(Path(args.out), profile), tuple(args.only or ())):
            print(f"{item.kind:<45} {item.role:<10} {item.id}")
        return 0
    report = run_preflight(profile, device, Path(args.out), only=tuple(args.only or ()), batches=args.batches)
    return 0 if report["ok"] else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "preflight",
        help="every kind of task of every table at the profile's sizes, a few steps on synthetic data",
    )
    p.add_argument("--profile", default="paper", help="profile name (smoke, paper) or .toml path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default="results/preflight", help="folder (its PROFILE/ subfolder is rewritten)")
    p.add_argument(
        "--only", nargs="+", metavar="TEXT", help="only the kinds containing one of these (and their inputs)"
    )
    p.add_argument("--batches", type=int, default=None, help="batches per loop (default: 1 on CPU, 2 on GPU)")
    p.add_argument("--list", action="store_true", help="list the tasks it would run, and stop")
    p.set_defaults(func=cmd_preflight)

