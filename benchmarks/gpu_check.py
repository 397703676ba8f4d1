"""`make gpu-check`: the one command a person with a GPU runs first (at most 13 minutes: its limits).

Each section runs in its own child process with its own time limit, so a crash, an out-of-memory
error or a hang in one costs only that section; ``report.json`` and ``report.md`` are rewritten after
every section, so a run cut short still leaves what it measured.

- ``environment``: GPU, driver, torch, CUDA, cuDNN and the TF32 switches the fp32 stages run with.
- ``preflight``: every kind of task of every table at the paper profile's sizes for a few steps on
  synthetic CIFAR-shaped data (``nasaudit preflight``): seconds per step (timed first), ok/failed,
  peak memory.
- ``benchmarks``: ``make bench``'s GPU ratios against plain PyTorch (retraining step in fp32 and bf16,
  P-DARTS search step, κ_NTK batched vs per-sample, RoBoT pool scoring per stack size, GC step).
- ``precision``: the paper's retraining network trained in fp32 and in bf16 on the same short fixed
  run (the embedded digits, two seeds): loss curves and test accuracies side by side. The paper
  profile retrains in fp32 (as run); this measurement is the only thing that may justify bf16.
- ``concurrency``: 1, 2, 4, 8 retraining jobs on the one GPU at once: each job's peak memory, how many
  fit, and the total throughput (small DARTS networks do not fill a large GPU).
- ``projection``: ``nasaudit plan``'s GPU-hours of Tables 1 and 5 from the step times the preflight
  measured on this GPU (timed anew if it did not), and the retraining share divided by the measured
  concurrency gain.

Run: ``python -m benchmarks.gpu_check --out results/gpu-check`` (``make gpu-check``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasaudit import verbosity
from nasaudit.io import write_bytes, write_json
from nasaudit.preflight.report import REPORT as PREFLIGHT_REPORT

if TYPE_CHECKING:
    from nasaudit.config import Profile
    from nasaudit.grid.plan import Timer

logger = logging.getLogger(__name__)

REPORT = "report.json"
DIGITS_EPOCHS, DIGITS_SEEDS = 12, (0, 1)  # the precision section's fixed run (~20 s per run on an H200)
CONCURRENT_JOBS = (1, 2, 4, 8)
CONCURRENT_STEPS, CONCURRENT_WARMUP = 30, 5


@dataclass(frozen=True)
class Section:
    run: Callable[[Path, list[str]], dict[str, Any]]  # (report folder, benchmarks to run: [] all)
    limit_s: int  # wall-clock limit of its child process
    partial: str | None = None  # the JSON file (under the report folder) it rewrites as it goes


SECTIONS: dict[str, Section] = {}


def section(
    name: str, limit_s: int, partial: str | None = None
) -> Callable[[Callable[..., dict[str, Any]]], Callable]:
    def register(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        SECTIONS[name] = Section(fn, limit_s, partial)
        return fn

    return register


CUDA = torch.device("cuda")


# --- sections --------------------------------------------------------------------------------------


@section("environment", 30)
def environment(out: Path, only: list[str]) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "gpu": props.name,
        "gpu_memory_gib": props.total_memory / 2**30,
        "multiprocessors": props.multi_processor_count,
        "nvidia_smi": smi.stdout.strip(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


PREFLIGHT_PROFILE = "paper"


def so_far(name: str, out: Path) -> dict[str, Any] | None:
    """What section ``name`` had saved when it was cut short (its ``partial`` file), or None."""
    partial = SECTIONS[name].partial
    path = out / partial if partial else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


# the preflight's own report, rewritten after every task
@section("preflight", 330, partial=f"preflight/{PREFLIGHT_PROFILE}/{PREFLIGHT_REPORT}")
def preflight(out: Path, only: list[str]) -> dict[str, Any]:
    from nasaudit.config import load_profile
    from nasaudit.preflight import run_preflight

    # all_data=False: P-DARTS searches the first dataset only (its other data are six more searches,
    # minutes on a GPU); `make preflight PREFLIGHT_ARGS="--device cuda"` runs them all. Items run side by
    # side (preflight.run.CUDA_WORKERS): one after another they take far longer than the section's limit
    return run_preflight(load_profile(PREFLIGHT_PROFILE), CUDA, out / "preflight", all_data=False)


BENCHMARKS_SO_FAR = "benchmarks.partial.json"


@section("benchmarks", 150, partial=BENCHMARKS_SO_FAR)
def benchmarks(out: Path, only: list[str]) -> dict[str, Any]:
    """Each benchmark (``only``: these; [] all) on its own: one that fails is reported with its error,
    the others still run; each result is saved as it finishes, so a section cut short keeps them.
    Quick ones first; P-DARTS's supernets take longest."""
    from benchmarks import bench_gc, bench_pdarts, bench_proxies, bench_robot, bench_train
    from nasaudit.spaces.darts import PRIMITIVES

    pdarts = {"channels": 16, "batch_size": 96}  # the paper's search supernet (first and last stage)
    runs: dict[str, Callable[[], Any]] = {
        "retrain_fp32": lambda: bench_train.run(CUDA),
        "retrain_bf16": lambda: bench_train.run(CUDA, "bf16"),
        "kappa_ntk": lambda: bench_proxies.run(CUDA),
        "gc": lambda: bench_gc.run(CUDA),
        "robot_pool": lambda: bench_robot.run(CUDA, 50, [1, 10, 25, 50], loop_archs=10),
        "pdarts_stage1": lambda: bench_pdarts.run(CUDA, layers=5, ops=PRIMITIVES, batches=20, **pdarts),
        "pdarts_stage3": lambda: bench_pdarts.run(
            CUDA, layers=17, ops=bench_pdarts.STAGE3_OPS, batches=8, **pdarts
        ),
    }
    results: dict[str, Any] = {}
    (out / BENCHMARKS_SO_FAR).unlink(missing_ok=True)
    for name, run in runs.items():
        if only and name not in only:
            continue
        print(f"[gpu-check] benchmark {name}", flush=True)
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **run()}
        except Exception as exc:  # reported per benchmark; the section goes on
            results[name] = {"ok": False, "error": _one_line(exc)}
        results[name]["seconds"] = time.perf_counter() - start
        write_json(out / BENCHMARKS_SO_FAR, results)  # atomic: a section killed now leaves the last one
        torch.cuda.empty_cache()
    return results


@section("precision", 120)
def precision(out: Path, only: list[str]) -> dict[str, Any]:
    """The P-DARTS evaluation network at paper size, trained on the embedded digits in fp32 and bf16."""
    import dataclasses

    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.models import MODELS
    from nasaudit.spaces.darts import load
    from nasaudit.train import train_model

    profile, data = load_profile("paper"), load_dataset("digits")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in ("fp32", "bf16"):
        cfg = dataclasses.replace(profile.train, epochs=DIGITS_EPOCHS, eval_every=1, precision=name)
        runs[name] = []
        for seed in DIGITS_SEEDS:
            result = train_model(
                lambda: MODELS.get("darts")(load("pdarts"), data.num_classes, profile),
                data,
                cfg,
                seed=seed,
                device=CUDA,
                progress=False,
            )
            runs[name].append(
                {
                    "seed": seed,
                    "test_accuracy": result["test_accuracy"],
                    "wall_s": result["wall_time"],
                    "train_loss": [e["train_loss"] for e in result["log"]],
                    "test_acc": [e["test_acc"] for e in result["log"]],
                }
            )
    return {"dataset": "digits", "epochs": DIGITS_EPOCHS, "runs": runs, **precision_summary(runs)}


def precision_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """bf16 against fp32: the mean accuracy difference next to fp32's seed-to-seed spread, the largest
    per-epoch gap of the mean loss curves, and the speed-up."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    acc = {k: [r["test_accuracy"] for r in v] for k, v in runs.items()}
    curves = {
        k: [mean(list(epoch)) for epoch in zip(*(r["train_loss"] for r in v), strict=True)]
        for k, v in runs.items()
    }
    return {
        "fp32_accuracy": mean(acc["fp32"]),
        "bf16_accuracy": mean(acc["bf16"]),
        "accuracy_difference": mean(acc["bf16"]) - mean(acc["fp32"]),
        "fp32_seed_spread": max(acc["fp32"]) - min(acc["fp32"]),
        "max_loss_gap": max(abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"], strict=True)),
        "bf16_speedup": mean([r["wall_s"] for r in runs["fp32"]]) / mean([r["wall_s"] for r in runs["bf16"]]),
    }


@section("concurrency", 120)
def concurrency(out: Path, only: list[str]) -> dict[str, Any]:
    """k retraining jobs (separate processes, as the grid runs them) at once, for k = 1, 2, 4, 8."""
    total = torch.cuda.get_device_properties(0).total_memory
    results: dict[str, Any] = {"jobs": {}}
    for jobs in CONCURRENT_JOBS:
        if jobs > 1 and jobs * results["jobs"]["1"]["peak_reserved_gib"] * 2**30 > 0.9 * total:
            break  # would not fit: the per-job peak says so before trying
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--concurrent-job", str(jobs)]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        outputs = [p.communicate()[0].strip().splitlines() for p in procs]
        if any(p.returncode != 0 or not o for p, o in zip(procs, outputs, strict=True)):
            results["jobs"][str(jobs)] = {"error": "a job failed (see the log above)"}
            break
        measured = [json.loads(o[-1]) for o in outputs]
        results["jobs"][str(jobs)] = {
            "images_per_s": sum(m["images_per_s"] for m in measured),
            "per_job_images_per_s": [m["images_per_s"] for m in measured],
            "peak_reserved_gib": max(m["peak_reserved_gib"] for m in measured),
        }
    single = results["jobs"]["1"]
    done = [k for k, v in results["jobs"].items() if "images_per_s" in v]
    best = max(done, key=lambda k: results["jobs"][k]["images_per_s"])
    results["fit"] = int(0.9 * total / (single["peak_reserved_gib"] * 2**30))
    results["best_jobs"] = int(best)
    results["gain"] = results["jobs"][best]["images_per_s"] / single["images_per_s"]
    return results


def concurrent_job(jobs: int) -> None:
    """One of ``jobs`` simultaneous retraining jobs: paper network and batch, synthetic CIFAR batches;
    the jobs start timing together (a file barrier) and print their images/s and peak memory."""
    from nasaudit.config import load_profile
    from nasaudit.models import MODELS
    from nasaudit.spaces.darts import load

    profile = load_profile("paper")
    cfg = profile.train
    model = MODELS.get("darts")(load("pdarts"), 10, profile).to(CUDA, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,), device=CUDA)

    def step() -> None:
        logits, aux = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + cfg.auxiliary_weight * (
            torch.nn.functional.cross_entropy(aux, y)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(CONCURRENT_WARMUP):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CONCURRENT_STEPS):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_reserved() / 2**30
    print(
        json.dumps({"images_per_s": CONCURRENT_STEPS * cfg.batch_size / seconds, "peak_reserved_gib": peak})
    )


@section("projection", 30)
def projection(out: Path, only: list[str]) -> dict[str, Any]:
    """Plan's GPU-hours of Tables 1 and 5 (no results counted as done), from the step times this run's
    preflight section measured on this GPU (``plan --timings``), else timed here."""
    import tempfile

    from nasaudit.config import load_profile
    from nasaudit.errors import NasauditError
    from nasaudit.grid.jobs import Layout, build_grid, load_experiment
    from nasaudit.grid.plan import Timer, estimate
    from nasaudit.preflight.timings import MeasuredTimer

    profile = load_profile("paper")
    timer = preflight_timer(out, profile)
    tables: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as empty:
        for name in ("table1", "table5"):
            grid = build_grid(load_experiment(name, profile), Layout.of(Path(empty), profile))
            try:
                plan = estimate(grid, profile, None, timer=timer)
            except NasauditError:  # the preflight did not time a network this table needs
                timer = Timer(CUDA)
                plan = estimate(grid, profile, None, timer=timer)
            hours = {
                s.stage: {"tasks": s.tasks, "gpu_hours": s.seconds * plan.gpu_factor / 3600}
                for s in plan.stages
            }
            timed = "by the preflight section" if isinstance(timer, MeasuredTimer) else "here"
            tables[name] = {"gpu_hours": plan.gpu_hours, "stages": hours, "timed": timed}
    return tables


def preflight_timer(out: Path, profile: Profile) -> Timer:
    """The step times the preflight section of this run measured (it times them before its items, so
    one cut short has them too), or a ``Timer`` of this GPU if that section did not run this time."""
    from nasaudit.errors import NasauditError
    from nasaudit.grid.plan import Timer
    from nasaudit.preflight.timings import MeasuredTimer

    report = out / REPORT  # this run's: run_all writes it before the first section
    ran = json.loads(report.read_text())["sections"] if report.is_file() else {}
    path = out / str(SECTIONS["preflight"].partial)
    if "preflight" in ran and path.is_file():
        try:
            return MeasuredTimer(path, profile)
        except NasauditError:
            pass
    return Timer(CUDA)


# --- driver ----------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def run_section(name: str, out: Path, bench: list[str]) -> None:
    """In the child: run one section and write its JSON (or its error) next to the report."""
    start = time.perf_counter()
    try:
        entry = {"ok": True, "result": SECTIONS[name].run(out, bench)}
    except Exception as exc:  # the parent reports it; the other sections still run
        entry = {"ok": False, "error": _one_line(exc)}
    entry["seconds"] = time.perf_counter() - start
    write_bytes(out / f"{name}.json", json.dumps(entry, indent=1, default=str).encode())


def run_all(out: Path, only: list[str], bench: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    write_report(out, report)  # a section reads which sections this run has run (the projection)
    for name, sec in SECTIONS.items():
        if only and name not in only:
            continue
        logger.info(f"[gpu-check] {name} (limit {sec.limit_s} s)")
        (out / f"{name}.json").unlink(missing_ok=True)
        start = time.perf_counter()
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--section", name, "--out", str(out)]
        command += ["--bench", *bench] if bench else []
        try:
            subprocess.run(command, timeout=sec.limit_s, check=False)
            entry = json.loads((out / f"{name}.json").read_text())
        except subprocess.TimeoutExpired:
            entry = {"ok": False, "error": f"did not finish within {sec.limit_s} s"}
            if (saved := so_far(name, out)) is not None:
                entry["partial"] = saved
        except (OSError, ValueError) as exc:  # the child died without writing its result
            entry = {"ok": False, "error": f"the section's process died ({_one_line(exc)})"}
        entry["wall_s"] = time.perf_counter() - start
        report["sections"][name] = entry
        write_report(out, report)
    return report


def write_report(out: Path, report: dict[str, Any]) -> None:
    from benchmarks.gpu_check_report import headline, render

    report["headline"] = headline(report["sections"])
    # atomic, as every file here: the projection section reads the report while the check runs
    write_bytes(out / REPORT, json.dumps(report, indent=1, default=str).encode())
    write_bytes(out / "report.md", render(report).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check"), help="report folder")
    parser.add_argument("--only", nargs="+", default=[], choices=list(SECTIONS), help="only these sections")
    parser.add_argument("--bench", nargs="+", default=[], help="only these benchmarks (default: all)")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # a child's section
    parser.add_argument("--concurrent-job", type=int, help=argparse.SUPPRESS)  # a concurrency child
    verbosity.add_arguments(parser)
    args = parser.parse_args()
    verbosity.configure(verbosity.level_of(args))
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible; run it on a GPU machine (on a CPU, use `make preflight`)")
        return 2
    if args.concurrent_job:
        concurrent_job(args.concurrent_job)
        return 0
    if args.section:
        run_section(args.section, args.out, args.bench)
        return 0
    report = run_all(args.out, args.only, args.bench)
    print((args.out / "report.md").read_text())
    return 0 if all(s["ok"] for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
