"""RoBoT pool scoring: architectures per second for the six proxies, ours against a one-by-one loop.

The pool is RoBoT's dominant training-free cost (60,000 architectures: RoBoT's search.py --n_sample).
Each architecture is the C = 16, 5-cell DARTS evaluation network scored on one batch of 64 images. The
baseline is the straightforward loop: build the network, call the six registered proxies one after the
other (six forwards, each with its own backward). Ours is ``score_pool``'s path: a stack of
``pool_stack`` networks runs as one network, with one forward differentiated once for grad_norm, snip,
fisher and grasp's g, once more for grasp's Hessian-gradient product and once for jacob_cov's input
gradient, then synflow's float64 pass, with chunked saves. It is timed at several stack sizes; all give
the loop's numbers (checked here, to float32 rounding). The embedded digits data stand in for CIFAR: the
cost depends only on the tensor shapes.

Run: ``python -m benchmarks.bench_robot [--archs N] [--stacks 1,4]``
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasaudit.config import RobotConfig, load_profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.errors import NasauditError
from nasaudit.nas.robot_pool import (
    architecture_seed,
    check_stack_fits,
    proxy_batch,
    proxy_network,
    sample_pool,
    score_pool,
)
from nasaudit.proxies import PROXIES
from nasaudit.spaces.darts import Genotype

PAPER_POOL = 60_000


def _one_by_one(
    pool: list[Genotype], data: ImageDataset, cfg: RobotConfig, device: torch.device
) -> np.ndarray:
    inputs, targets = proxy_batch(data, 0, cfg.proxy_batch, device)
    rows = []
    for index, genotype in enumerate(pool):
        net = proxy_network(genotype, cfg.channels, cfg.layers, data.num_classes, architecture_seed(0, index))
        net = net.to(device)
        rows.append([PROXIES.get(name)(net, inputs, targets) for name in cfg.proxies])
    return np.array(rows, dtype=np.float64)


def _stacked(stack: int):  # type: ignore[no-untyped-def]
    def score(pool: list[Genotype], data: ImageDataset, cfg: RobotConfig, device: torch.device) -> np.ndarray:
        size = min(stack, len(pool))
        cfg = dataclasses.replace(cfg, pool_stack=size, pool_chunk=size * math.ceil(len(pool) / size))
        check_stack_fits(cfg, device)  # as a search does: a stack this GPU cannot hold is refused
        with tempfile.TemporaryDirectory() as folder:
            return score_pool(pool, data, 0, cfg, device, Path(folder))

    return score


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(score, pool, data, cfg, device: torch.device) -> tuple[float, np.ndarray, float]:  # type: ignore[no-untyped-def]
    score(pool[:1], data, cfg, device)  # warm-up: allocator, kernels, lazy imports
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    values = score(pool, data, cfg, device)
    _sync(device)
    rate = len(pool) / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return rate, values, peak


def _memory(peak: float) -> str:
    return "" if peak != peak else f"   peak {peak:.1f} GiB"  # NaN: not measured (CPU)


def _hours(rate: float) -> str:
    return f"{PAPER_POOL / rate / 3600:.1f} h"


def run(
    device: torch.device, archs: int, stacks: list[int], loop_archs: int | None = None
) -> dict[str, object]:
    """Architectures per second of the loop and of each stack size, with peak GPU memory (GiB).

    The loop times the first ``loop_archs`` architectures (default all ``archs``: its time per
    architecture does not depend on how many), each stack size at least one full stack of them."""
    cfg = load_profile("paper").robot
    data = load_dataset("digits")
    pool = sample_pool(archs, 0, cfg.pool_ops)[:archs]
    looped = min(loop_archs or archs, archs)
    print(
        f"RoBoT pool scoring on {device} ({torch.get_num_threads()} CPU threads): {len(pool)} architectures "
        f"({looped} in the loop), C={cfg.channels}, {cfg.layers} cells, batch {cfg.proxy_batch}, "
        f"{', '.join(cfg.proxies)}"
    )
    baseline, reference, peak = _rate(_one_by_one, pool[:looped], data, cfg, device)
    pool_time = f"60,000-architecture pool: {_hours(baseline)}"
    print(f"  one-by-one loop        {baseline:8.3f} arch/s   {pool_time}{_memory(peak)}")
    result: dict[str, object] = {
        "archs": len(pool),
        "loop_archs": looped,
        "loop_arch_per_s": baseline,
        "stacks": {},
    }
    for stack in stacks:
        try:
            ours, values, peak = _rate(_stacked(stack), pool[: max(stack, looped)], data, cfg, device)
        except (NasauditError, torch.cuda.OutOfMemoryError) as exc:  # too large for this GPU: the others
            why = " ".join(str(exc).split())[:300]
            print(f"  score_pool, stack {stack:3d} not run: {why}")
            result["stacks"][stack] = {"skipped": why}  # type: ignore[index]
            torch.cuda.empty_cache()
            continue
        same = np.allclose(values[:looped], reference, rtol=1e-2, atol=1e-6, equal_nan=True)
        print(
            f"  score_pool, stack {stack:3d} {ours:8.3f} arch/s   60,000-architecture pool: {_hours(ours)}"
            f"   {ours / baseline:.2f}× the loop; scores equal to the loop's: {same}{_memory(peak)}"
        )
        result["stacks"][stack] = {  # type: ignore[index]
            "arch_per_s": ours,
            "ratio": ours / baseline,
            "pool_hours": PAPER_POOL / ours / 3600,
            "peak_gib": peak,
            "equal_to_loop": bool(same),
        }
    return result


def main(archs: int | None = None, stacks: list[int] | None = None) -> None:
    run(torch.device("cpu"), archs or 4, stacks or [1, 4])
    if torch.cuda.is_available():
        run(torch.device("cuda"), archs or 100, stacks or [1, 10, 25, 50])


if __name__ == "__main__":
    from nasaudit import verbosity
    from nasaudit.threads import configure

    verbosity.configure()  # the thread choice is logged
    configure()  # as every nasaudit job: NASAUDIT_THREADS / OMP_NUM_THREADS, else the usable CPUs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", type=int, default=None, help="architectures to time (default 4 CPU, 100 GPU)"
    )
    parser.add_argument(
        "--stacks", default=None, help="comma-separated pool_stack sizes (default 1,4 CPU; 1,10,25,50 GPU)"
    )
    args = parser.parse_args()
    main(args.archs, [int(s) for s in args.stacks.split(",")] if args.stacks else None)
