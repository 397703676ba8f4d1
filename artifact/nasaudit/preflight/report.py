"""The preflight's report: ``report.json`` (the schema is in docs/preflight.md), ``report.md`` and the
summary table printed at the end; rewritten after every item, so a run cut short still says how far
it got."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nasaudit.io import jsonable, write_bytes, write_json

REPORT = "report.json"
MARKDOWN = "report.md"
HEADERS = ["kind", "status", "wall s", "s/step (network @ batch)", "peak memory", "projected h", "notes"]


def write(report: dict[str, Any], root: Path, started: float, order: list[str]) -> None:
    """Both files, the finished tasks in the planned ``order`` of their ids."""
    position = {task_id: i for i, task_id in enumerate(order)}
    report["tasks"].sort(key=lambda t: position[t["id"]])
    report["wall_s"] = time.perf_counter() - started
    report["unfinished"] = len(order) - len(report["tasks"])  # > 0 while running, or in a run cut short
    report["ok"] = report["unfinished"] == 0 and all(t["ok"] for t in report["tasks"])
    report["failed"] = sum(not t["ok"] for t in report["tasks"])
    report["cpu_s"] = sum(t.get("cpu_s", 0.0) for t in report["tasks"])
    loads = [t["load_avg"] for t in report["tasks"] if t.get("load_avg") is not None]
    report["load_avg"] = [min(loads), max(loads)] if loads else None
    write_json(root / REPORT, jsonable(report))
    write_bytes(root / MARKDOWN, render_markdown(report).encode())


def start_line(kind: str, task_id: str) -> str:
    """Printed when a task starts, so a log cut short names the task that was running."""
    return f"[start] {kind} ({task_id})"


def progress_line(entry: dict[str, Any], done: int, total: int) -> str:
    state = "ok" if entry["ok"] else f"FAILED: {entry['error']}"
    seconds = entry.get("wall_s", 0.0)
    return f"[{done}/{total}] {entry['kind']} ({entry['id']}): {state}, {seconds:.1f} s, {_memory(entry)}"


def _memory(entry: dict[str, Any]) -> str:
    if entry.get("peak_cuda_gib") is not None:
        return f"CUDA peak {entry['peak_cuda_gib']:.2f} GiB"
    if entry.get("peak_rss_gib") is not None:
        return f"peak RSS {entry['peak_rss_gib']:.2f} GiB"
    return "memory not measured"


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in report["tasks"]:
        step, hours = t.get("step"), t.get("projected_hours")
        rows.append(
            [
                t["kind"] + ("" if t["role"] == "kind" else " (dependency)"),
                "ok" if t["ok"] else "FAILED",
                f"{t.get('wall_s', 0.0):.1f}",
                f"{step['seconds']:.3g} ({step['network']} @ {step['batch']})" if step else "-",
                _memory(t).replace("memory not measured", "-"),
                "-" if hours is None else f"{hours:,.1f}" if hours >= 1 else f"{hours:.2g}",
                "; ".join(filter(None, [t.get("error") or "", *t.get("notes", [])])),
            ]
        )
    return rows


def _cap_text(report: dict[str, Any]) -> str:
    images = report["images_per_batch"]
    size = f"of at most {images} images" if images else "at the profile's batch sizes"
    return f"{report['batches_per_loop']} batch(es) per loop {size}"


def _load_text(report: dict[str, Any]) -> str:
    load = report.get("load_avg")
    if not load:
        return ""
    return f"; machine load (1-min average) {load[0]:.1f}–{load[1]:.1f} on {report['cpus']} CPUs"


def render_summary(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    unit = "GPU-hours" if report["device"].startswith("cuda") else "GPU-hours (CPU timings converted)"
    lines = [
        tabulate(_rows(report), headers=HEADERS, tablefmt="simple"),
        f"preflight of profile {report['profile']!r} on {report['device']} ({report['device_name']}), "
        f"synthetic data, {_cap_text(report)}: {len(report['tasks']) - report['failed']} of "
        f"{len(report['tasks'])} tasks ok in {report['wall_s']:.0f} s ({report['cpu_s']:.0f} s of CPU)"
        f"{_load_text(report)}; projected "
        f"hours are {unit}",
    ]
    if report.get("left_out"):
        lines.append(f"not run on this machine ({len(report['left_out'])}): {', '.join(report['left_out'])}")
    if report["failed"]:
        folder = Path(report["folder"]) / "tracebacks"
        lines.append(f"PREFLIGHT FAILED: {report['failed']} task(s); tracebacks in {folder}")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    state = "ok" if report["ok"] else f"{report['failed']} FAILED"
    converted = "" if report["device"].startswith("cuda") else ", CPU timings converted to GPU-hours"
    lines = [
        f"# Preflight of profile `{report['profile']}`: {state}",
        "",
        f"Synthetic data ({', '.join(report['datasets'].values())}), never a result. Device "
        f"{report['device']} ({report['device_name']}); {_cap_text(report)}; started {report['started']}, "
        f"{report.get('wall_s', 0.0):.0f} s{_load_text(report)}. Seconds per step: `nasaudit.costs.Timer` on "
        f"this device; projected hours: the stage's cost model of the full task{converted} "
        "(docs/preflight.md).",
        "",
        tabulate(_rows(report), headers=HEADERS, tablefmt="github"),
        "",
    ]
    if report.get("left_out"):
        lines += ["Not run on this machine:", ""]
        lines += [f"- `{kind}`: {why}" for kind, why in report["left_out"].items()] + [""]
    return "\n".join(lines)
