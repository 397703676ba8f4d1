"""Time batched against per-sample κ_NTK on TE-NAS's own scoring supernet (CPU, and GPU if present).

A TE-NAS search's cost is dominated by κ_NTK on its scoring supernet (prune_tenas.py: C = 1, a normal and a
reduction cell, all 7 candidate ops on each of 14 edges) with a batch of 14 CIFAR-sized images. The
net is the one ``nasaudit.nas.tenas`` builds for its first round from the paper profile. Both paths
score the same net and batch, taking turns, so a change of load hits both alike.

On a shared machine run it with OMP_NUM_THREADS=1: with more threads than idle cores, every parallel
region waits for a descheduled thread, which inflates the per-sample path (thousands of small ops)
far more than the batched one, and the ratio flatters batching.

Run: ``python -m benchmarks.bench_proxies``
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from nasaudit.config import load_profile
from nasaudit.nas.tenas import initial_candidates, scoring_net
from nasaudit.proxies.ntk import ntk_cond

IMAGE_SIZE, CLASSES = 32, 10
REPEATS = 3
PATHS = {"per-sample": False, "batched": True}


def _seconds_per_call(net: nn.Module, inputs: Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """(wall, CPU) seconds per call of each path, the paths taking turns."""
    wall, cpu = dict.fromkeys(PATHS, 0.0), dict.fromkeys(PATHS, 0.0)
    for _ in range(REPEATS):  # ntk_cond returns a float, so GPU work has finished when it returns
        for label, batched in PATHS.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            ntk_cond(net, inputs, batched=batched)
            wall[label] += (time.perf_counter() - start) / REPEATS
            cpu[label] += (time.process_time() - start_cpu) / REPEATS
    return wall, cpu


def run(device: torch.device) -> dict[str, float]:
    """Seconds per κ_NTK call of each path on ``device``, their ratio and the relative κ difference."""
    cfg = load_profile("paper").tenas
    torch.manual_seed(0)
    net = scoring_net(initial_candidates(cfg), cfg, CLASSES, stem=True).to(device)
    inputs = torch.randn(cfg.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    print(f"κ_NTK, TE-NAS scoring supernet ({sum(p.numel() for p in net.parameters())} parameters), "
          f"batch {cfg.batch_size}×3×{IMAGE_SIZE}×{IMAGE_SIZE}, {device}, "
          f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    kappa = {label: ntk_cond(net, inputs, batched=batched) for label, batched in PATHS.items()}  # warm-up
    wall, cpu = _seconds_per_call(net, inputs)
    for label in PATHS:
        print(f"  {label:10s} {wall[label]:6.3f} s wall {cpu[label]:6.3f} s CPU  κ = {kappa[label]:.6g}")
    error = abs(kappa["batched"] - kappa["per-sample"]) / kappa["per-sample"]
    print(f"  speed-up batched / per-sample: {wall['per-sample'] / wall['batched']:.2f}× wall, "
          f"{cpu['per-sample'] / cpu['batched']:.2f}× CPU; κ differs by {error:.1e}")  # fmt: skip
    return {
        "per_sample_s": wall["per-sample"],
        "batched_s": wall["batched"],
        "ratio": wall["per-sample"] / wall["batched"],
        "kappa_rel_diff": error,
    }


def main() -> None:
    run(torch.device("cpu"))
    if torch.cuda.is_available():
        run(torch.device("cuda"))


if __name__ == "__main__":
    from nasaudit import verbosity
    from nasaudit.threads import configure

    verbosity.configure()  # the thread choice is logged
    configure()  # as every nasaudit job: NASAUDIT_THREADS / OMP_NUM_THREADS, else the usable CPUs
    main()
