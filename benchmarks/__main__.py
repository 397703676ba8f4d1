"""`make bench`: every benchmark on the CPU several times with its median and range, then once on a GPU.

On a shared machine one run's ratio lands anywhere in a wide band (κ_NTK batched over per-sample: 4.41×
in one run, 4.8–5.8× over ten), so a CPU figure is judged on its median over the runs, never on one.
Threads are sized as for every nasaudit job (``nasaudit.threads``; ``--threads N``, ``make bench
THREADS=N``).

Run: ``python -m benchmarks [--repeats N] [--only kappa_ntk,train] [--threads N]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import (
    bench_gc,
    bench_nsganetv2,
    bench_pdarts,
    bench_proxies,
    bench_robot,
    bench_tenas,
    bench_train,
)
from nasaudit import threads, verbosity
from nasaudit.errors import NasauditError
from nasaudit.spaces.darts import PRIMITIVES

logger = logging.getLogger(__name__)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
Run = Callable[[], dict[str, Any]]

#: name -> (its CPU run, its GPU runs)
BENCHMARKS: dict[str, tuple[Run, list[Run]]] = {
    "train": (lambda: bench_train.run(CPU), [lambda: bench_train.run(CUDA)]),
    "pdarts": (
        lambda: bench_pdarts.run(CPU, channels=4, layers=5, ops=PRIMITIVES, batch_size=16, batches=3),
        [  # the paper's stages 1 and 3
            lambda: bench_pdarts.run(CUDA, channels=16, layers=5, ops=PRIMITIVES, batch_size=96, batches=40),
            lambda: bench_pdarts.run(
                CUDA, channels=16, layers=17, ops=bench_pdarts.STAGE3_OPS, batch_size=96, batches=40
            ),
        ],
    ),
    "kappa_ntk": (lambda: bench_proxies.run(CPU), [lambda: bench_proxies.run(CUDA)]),
    "gc": (lambda: bench_gc.run(CPU), [lambda: bench_gc.run(CUDA)]),
    "robot": (lambda: bench_robot.run(CPU, 4, [1, 4]), [lambda: bench_robot.run(CUDA, 100, [1, 10, 25, 50])]),
    "tenas": (lambda: bench_tenas.run(CPU), [lambda: bench_tenas.run(CUDA)]),
    "nsganetv2": (lambda: bench_nsganetv2.run(CPU), [lambda: bench_nsganetv2.run(CUDA)]),
}


def numbers(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a benchmark's (nested) result, keyed by their dotted path."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
            flat[f"{prefix}{key}"] = float(value)
    return flat


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, minimum and maximum of each quantity over the runs."""
    return {
        key: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
        for key in runs[0]
        if (v := [run[key] for run in runs if key in run])
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each CPU benchmark (default 5)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: automatic)")
    verbosity.add_arguments(parser)
    args = parser.parse_args(argv)
    verbosity.configure(verbosity.level_of(args))
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    if unknown := set(chosen) - set(BENCHMARKS):
        parser.error(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}"
        )
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    try:
        threads.configure(requested=args.threads)
    except NasauditError as exc:  # --threads 0: one line, as every entry point
        parser.error(str(exc))
    report: dict[str, Any] = {"threads": threads.manifest(), "cpu": {}, "cuda": {}}
    for name in chosen:
        runs = []
        for i in range(args.repeats):
            logger.info(f"[bench] {name}: CPU run {i + 1} of {args.repeats}")
            runs.append(numbers(BENCHMARKS[name][0]()))
        report["cpu"][name] = summary = summarise(runs)
        print(f"[bench] {name} on the CPU, median (min–max) of {args.repeats} runs:")
        for key, s in summary.items():
            print(f"  {key:40s} {s['median']:10.4g}  ({s['min']:.4g}–{s['max']:.4g})")
    if torch.cuda.is_available():
        for name in chosen:
            report["cuda"][name] = [run() for run in BENCHMARKS[name][1]]
    return report


if __name__ == "__main__":
    main()
