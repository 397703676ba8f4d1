"""The GPU check's headline figures and its Markdown report, from the sections' JSON (see gpu_check.py).

Kept apart from the measuring code so that it can be tested on a machine without a GPU, on recorded
section results, and so that a partial run (a section failed or timed out) still renders.
"""

from __future__ import annotations

from typing import Any

PRECISION_KEYS = (
    "fp32_accuracy",
    "bf16_accuracy",
    "accuracy_difference",
    "fp32_seed_spread",
    "max_loss_gap",
    "bf16_speedup",
)


def _result(sections: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A section's result, or what it had saved when it was cut short (``partial``), or None."""
    entry = sections.get(name)
    if not entry:
        return None
    return entry["result"] if entry.get("ok") else entry.get("partial")


def headline(sections: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader wants first; a section that failed or did not run is left out."""
    head: dict[str, Any] = {}
    if env := _result(sections, "environment"):
        head["gpu"] = (
            f"{env['gpu']} ({env['gpu_memory_gib']:.0f} GiB), torch {env['torch']}, CUDA {env['cuda']}"
        )
    pre = _result(sections, "preflight")
    if pre:
        tasks = pre.get("tasks", [])
        head["preflight"] = {
            "ok": sum(1 for t in tasks if t.get("ok")),
            "failed": [t.get("kind", "?") for t in tasks if not t.get("ok")],
            "unfinished": pre.get("unfinished", 0),  # a preflight cut short: tasks it did not finish
            "running": sorted(pre.get("running", {}).values()),  # ... and those it was running then
        }
    if bench := _result(sections, "benchmarks"):
        head["ratios"] = {name: b["ratio"] for name, b in bench.items() if b.get("ok") and "ratio" in b}
        if "gc" in bench and bench["gc"].get("ok"):
            head["ratios"]["gc_step"] = bench["gc"]["step_ratio"]
        robot = bench.get("robot_pool", {})
        measured = {k: v for k, v in robot.get("stacks", {}).items() if "arch_per_s" in v}  # not skipped
        if robot.get("ok") and measured:
            stack, best = max(measured.items(), key=lambda item: item[1]["arch_per_s"])
            head["robot_pool"] = {
                "best_stack": int(stack),
                "arch_per_s": best["arch_per_s"],
                "pool_hours": best["pool_hours"],
                "peak_gib": best["peak_gib"],
            }
    if prec := _result(sections, "precision"):
        head["precision"] = {k: prec[k] for k in PRECISION_KEYS}
    conc = _result(sections, "concurrency")
    if conc:
        head["concurrency"] = {k: conc[k] for k in ("fit", "best_jobs", "gain")}
    if proj := _result(sections, "projection"):
        gain = conc["gain"] if conc else 1.0
        head["gpu_hours"] = {
            name: {
                "one_job_per_gpu": table["gpu_hours"],
                "retraining_shared": table["gpu_hours"]
                - table["stages"].get("retrain", {}).get("gpu_hours", 0.0) * (1 - 1 / gain),
                "timed": table.get("timed", "here"),  # step times: the preflight section's, or timed here
            }
            for name, table in proj.items()
        }
    return head


def _status(entry: dict[str, Any]) -> str:
    state = "ok" if entry.get("ok") else f"FAILED: {entry.get('error', '?')}"
    return f"{state} ({entry.get('wall_s', entry.get('seconds', 0.0)):.0f} s)"


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: headline, then one part per section that ran."""
    sections, head = report["sections"], report.get("headline", {})
    lines = ["# GPU check", "", f"Started {report.get('started', '?')}.", ""]
    lines += ["| section | status |", "|---|---|"]
    lines += [f"| {name} | {_status(entry)} |" for name, entry in sections.items()]
    lines += ["", "## Headline", ""]
    if "gpu" in head:
        lines.append(f"- GPU: {head['gpu']}")
    if "preflight" in head:
        pre = head["preflight"]
        failed = f"; failed: {', '.join(pre['failed'])}" if pre["failed"] else ""
        cut = ""
        if pre["unfinished"]:
            running = f", running {', '.join(pre['running'])}" if pre["running"] else ""
            cut = f"; cut short with {pre['unfinished']} tasks unfinished{running}"
        lines.append(f"- Preflight (paper profile): {pre['ok']} tasks ok{failed}{cut}")
    for name, ratio in head.get("ratios", {}).items():
        lines.append(f"- {name}: {ratio:.2f}× a plain PyTorch baseline")
    if robot := head.get("robot_pool"):
        lines.append(
            f"- RoBoT pool: {robot['arch_per_s']:.2f} architectures/s at stack {robot['best_stack']} "
            f"(peak {robot['peak_gib']:.1f} GiB): the 60,000 pool in {robot['pool_hours']:.1f} GPU-hours"
        )
    if prec := head.get("precision"):
        lines.append(
            f"- Retraining precision (digits, paper network): fp32 {prec['fp32_accuracy']:.2f}% vs bf16 "
            f"{prec['bf16_accuracy']:.2f}% (difference {prec['accuracy_difference']:+.2f} points; fp32 seeds "
            f"spread {prec['fp32_seed_spread']:.2f}); largest mean-loss gap {prec['max_loss_gap']:.3f}; "
            f"bf16 {prec['bf16_speedup']:.2f}× as fast"
        )
    if conc := head.get("concurrency"):
        lines.append(
            f"- Concurrent retraining jobs: {conc['fit']} fit in memory; {conc['best_jobs']} at once give "
            f"{conc['gain']:.2f}× one job's throughput"
        )
    for name, hours in head.get("gpu_hours", {}).items():
        lines.append(
            f"- {name}: about {hours['one_job_per_gpu']:,.0f} GPU-hours one job per GPU, "
            f"{hours['retraining_shared']:,.0f} with retraining jobs sharing a GPU (step times timed "
            f"{hours['timed']})"
        )
    for name, entry in sections.items():
        if entry.get("ok") and name != "environment":
            lines += ["", f"## {name}", "", "```", _compact(entry["result"]), "```"]
    return "\n".join(lines) + "\n"


def _compact(value: Any, indent: int = 0) -> str:
    """Nested results, one leaf per line, floats to 4 significant figures; long lists summarised."""
    pad = "  " * indent
    if isinstance(value, dict):
        return "\n".join(
            f"{pad}{k}:\n{_compact(v, indent + 1)}" if isinstance(v, dict) else f"{pad}{k}: {_leaf(v)}"
            for k, v in value.items()
        )
    return pad + _leaf(value)


def _leaf(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > 8 or any(isinstance(v, dict | list) for v in value):
            return f"[{len(value)} entries, in report.json]"
        return "[" + ", ".join(_leaf(v) for v in value) + "]"
    return str(value)
