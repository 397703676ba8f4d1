"""RoBoT pool scoring: architectures per second for the six proxies, ours against a one-by-one loop.

The pool is RoBoT's dominant training-free cost (paper: 60,000 architectures, SPEC §6). Each
architecture is the C = 16, 5-cell DARTS evaluation network scored on one batch of 64 images. The
baseline is the straightforward loop: build the network, call the six registered proxies one after
the other (six forwards, each with its own backward). Ours is ``score_pool``'s path: one forward
differentiated once for grad_norm, snip, fisher and grasp's g, once more for grasp's Hessian-gradient
product and once for jacob_cov's input gradient (synflow needs its own float64 network), with chunked
saves. Both give the same numbers (checked here). The embedded digits data stand in for CIFAR: the
cost depends only on the tensor shapes.

Run: ``python -m benchmarks.bench_robot [--archs N]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasaudit.config import load_profile
from nasaudit.data.datasets import load_dataset
from nasaudit.nas.robot_pool import (
    architecture_seed,
    proxy_batch,
    proxy_network,
    sample_pool,
    score_pool,
)
from nasaudit.proxies import PROXIES

PAPER_POOL = 60_000


def _one_by_one(pool, data, cfg, device: torch.device) -> np.ndarray:  # type: ignore[no-untyped-def]
    inputs, targets = proxy_batch(data, 0, cfg.proxy_batch, device)
    rows = []
    for index, genotype in enumerate(pool):
        net = proxy_network(genotype, cfg.channels, cfg.layers, data.num_classes, architecture_seed(0, index))
        net = net.to(device)
        rows.append([PROXIES.get(name)(net, inputs, targets) for name in cfg.proxies])
    return np.array(rows, dtype=np.float64)


def _ours(pool, data, cfg, device: torch.device) -> np.ndarray:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as folder:
        return score_pool(pool, data, 0, cfg, device, Path(folder))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(score, pool, data, cfg, device: torch.device) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    score(pool[:1], data, cfg, device)  # warm-up: allocator, kernels, lazy imports
    _sync(device)
    start = time.perf_counter()
    values = score(pool, data, cfg, device)
    _sync(device)
    return len(pool) / (time.perf_counter() - start), values


def _hours(rate: float) -> str:
    return f"{PAPER_POOL / rate / 3600:.1f} h"


def run(device: torch.device, archs: int) -> None:
    cfg = load_profile("paper").robot
    data = load_dataset("digits")
    pool = sample_pool(archs, 0, cfg.pool_ops)[:archs]
    threads = torch.get_num_threads()
    print(
        f"RoBoT pool scoring on {device} ({threads} CPU threads): {len(pool)} architectures, "
        f"C={cfg.channels}, {cfg.layers} cells, batch {cfg.proxy_batch}, {', '.join(cfg.proxies)}"
    )
    baseline, reference = _rate(_one_by_one, pool, data, cfg, device)
    ours, values = _rate(_ours, pool, data, cfg, device)
    same = np.allclose(values, reference, rtol=1e-4, atol=1e-6, equal_nan=True)
    print(f"  one-by-one loop     {baseline:8.3f} arch/s   60,000-architecture pool: {_hours(baseline)}")
    print(f"  ours (score_pool)   {ours:8.3f} arch/s   60,000-architecture pool: {_hours(ours)}")
    print(f"  speed-up {ours / baseline:.2f}×; scores equal to the loop's: {same}")


def main(archs: int | None = None) -> None:
    run(torch.device("cpu"), archs or 3)
    if torch.cuda.is_available():
        run(torch.device("cuda"), archs or 50)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", type=int, default=None, help="architectures to time (default 3 CPU, 50 GPU)"
    )
    main(parser.parse_args().archs)
