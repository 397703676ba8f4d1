"""Time TE-NAS candidate evaluations at paper sizes and estimate a paper-profile search from them.

A TE-NAS search's cost is its candidate evaluations (prune_tenas.py: 196 + 112 in the op rounds, 24 in the
edge stage), each repeated 3 times, each repeat two κ_NTK (batch 14) and two linear-region counts
(3000 crops) on the original and the candidate net. One repeat is timed on scoring nets holding 7, 4
and 1 op per edge (the nets of the two op rounds and the edge stage; the costliest ops are kept, so the
estimate errs high). The data are the embedded digits: the cost does not depend on pixel values.
Wall time and this process's CPU time are both printed: on a shared machine the CPU time (one thread)
is what an idle core would take.

Run: ``python -m benchmarks.bench_tenas``
"""

from __future__ import annotations

import dataclasses
import time

import torch
from tqdm import tqdm

from nasaudit.config import load_profile
from nasaudit.data.datasets import load_dataset
from nasaudit.nas.tenas import EdgeRound, OpRound, Removal, Scorer, plan
from nasaudit.spaces.darts import CELL_TYPES, EDGE_OPS, EDGES


def _seconds_per_repeat(scorer: Scorer, ops_per_edge: int, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one candidate's repeat on nets with ``ops_per_edge`` ops per edge."""
    ops = list(EDGE_OPS[-ops_per_edge:])  # the convolutions first: the costliest nets
    candidates = {cell: [list(ops) for _ in EDGES] for cell in CELL_TYPES}
    removal = Removal("normal", 4, (ops[0],) if ops_per_edge > 1 else tuple(ops))
    bar = tqdm(disable=True)
    scorer.score(0, candidates, [removal], bar)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    scorer.score(1, candidates, [removal], bar)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def run(device: torch.device) -> dict[str, float]:
    """Seconds per candidate repeat at 7, 4 and 1 op(s) per edge, and the paper search they add up to."""
    cfg = load_profile("paper").tenas
    scorer = Scorer(load_dataset("digits"), dataclasses.replace(cfg, repeats=1), 0, device)
    print(f"TE-NAS at paper sizes on {device} ({torch.get_num_threads()} CPU threads):")
    wall = cpu = 0.0
    cost: dict[int, tuple[float, float]] = {}
    for round_ in plan(cfg):
        ops = round_.ops if isinstance(round_, OpRound) else 1
        if ops not in cost:
            cost[ops] = _seconds_per_repeat(scorer, ops, device)
            print(f"  {ops} op(s) per edge: {cost[ops][0]:6.2f} s wall, {cost[ops][1]:6.2f} s CPU "
                  f"per candidate and repeat")  # fmt: skip
        wall += round_.size * cfg.repeats * cost[ops][0]
        cpu += round_.size * cfg.repeats * cost[ops][1]
    edges = sum(r.size for r in plan(cfg) if isinstance(r, EdgeRound))
    evaluations = sum(r.size for r in plan(cfg))
    print(
        f"  estimated search: {evaluations} candidates ({evaluations - edges} ops + {edges} edges) "
        f"× {cfg.repeats} repeats ≈ {wall / 60:.0f} min wall ({cpu / 60:.0f} min CPU)"
    )
    result = {f"repeat_{ops}ops_wall_s": w for ops, (w, _) in cost.items()}
    result.update({f"repeat_{ops}ops_cpu_s": c for ops, (_, c) in cost.items()})
    return {**result, "search_wall_min": wall / 60, "search_cpu_min": cpu / 60}


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
