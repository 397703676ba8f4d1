"""NSGANetV2's evolutionary parts, on pymoo (the ``nsganetv2`` extra; ``nasaudit.extras``).

NSGA-II over the integer encoding of the OFA MobileNetV3 space on (predicted top-1 error, MFLOPs),
the small GA that picks the candidates spreading the front's FLOPs, and the final choice among the
measured front by trade-off; msunas.py of the released NSGANetV2 code is what they follow. Kept apart
from :mod:`nasaudit.nas.nsganetv2` so that importing the algorithms needs no pymoo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.crossover import Crossover
from pymoo.core.decision_making import NeighborFinder
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nasaudit.config import NSGANetV2Config
from nasaudit.spaces.mbv3 import N_VARS, FlopsCounter, decode, encode, upper_bounds

# --- NSGA-II and the choice of candidates --------------------------------------------------------


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (all objectives minimised)."""
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=np.int64)


class _ArchitectureProblem(Problem):
    """(predicted top-1 error, MFLOPs) of integer encodings; skipped layers are zeroed before predicting."""

    def __init__(
        self, predict: Callable[[np.ndarray], np.ndarray], flops: FlopsCounter, resolutions: list[int]
    ):
        super().__init__(n_var=N_VARS, n_obj=2, xl=0, xu=upper_bounds(resolutions), vtype=int)
        self.predict, self.flops, self.resolutions = predict, flops, resolutions

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        archs = [decode(np.rint(x).astype(np.int64), self.resolutions) for x in X]
        codes = np.stack([encode(a, self.resolutions) for a in archs])
        out["F"] = np.column_stack([self.predict(codes), [self.flops(a) / 1e6 for a in archs]])


def run_nsga2(
    predict: Callable[[np.ndarray], np.ndarray],
    flops: FlopsCounter,
    resolutions: list[int],
    initial: np.ndarray,
    cfg: NSGANetV2Config,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """NSGA-II from ``initial`` encodings (msunas.py's operators); returns the final population (X, F)."""
    algorithm = NSGA2(
        pop_size=cfg.pop_size,
        sampling=initial,
        crossover=TwoPointCrossover(prob=cfg.crossover_prob),
        mutation=PM(prob=1.0, eta=cfg.mutation_eta, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    problem = _ArchitectureProblem(predict, flops, resolutions)
    result = minimize(problem, algorithm, ("n_gen", cfg.generations), seed=seed, verbose=False)
    return np.rint(result.pop.get("X")).astype(np.int64), result.pop.get("F")


class _SubsetProblem(Problem):
    """Choose K candidates so that, with the front, their FLOPs are spread as evenly as possible."""

    def __init__(self, candidates: np.ndarray, front: np.ndarray, k: int):
        super().__init__(n_var=len(candidates), n_obj=1, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
        self.candidates, self.front, self.k = candidates, front, k

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        X = X.astype(bool)
        spread = [np.std(np.diff(np.sort(np.concatenate([self.front, self.candidates[x]])))) for x in X]
        out["F"] = np.asarray(spread)[:, None]
        out["G"] = ((self.k - X.sum(1)) ** 2)[:, None].astype(float)


class _ExactlyK(Sampling):
    def _do(
        self, problem: Problem, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any
    ) -> np.ndarray:
        X = np.zeros((n_samples, problem.n_var), dtype=bool)
        for row in X:
            row[random_state.permutation(problem.n_var)[: problem.k]] = True
        return X


class _KeepShared(Crossover):
    """One child: the parents' shared picks, topped up at random from the picks they disagree on."""

    def __init__(self) -> None:
        super().__init__(2, 1)

    def _do(
        self, problem: Problem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any
    ) -> np.ndarray:
        children = np.zeros((1, *X.shape[1:]), dtype=bool)
        for m in range(X.shape[1]):
            a, b = X[0, m].astype(bool), X[1, m].astype(bool)
            children[0, m, a & b] = True
            either = np.flatnonzero(a ^ b)
            children[0, m, random_state.permutation(either)[: problem.k - int((a & b).sum())]] = True
        return children


class _SwapOne(Mutation):
    """Swap one picked candidate for one not picked."""

    def _do(
        self, problem: Problem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any
    ) -> np.ndarray:
        X = X.astype(bool)
        for row in X:
            on, off = np.flatnonzero(row), np.flatnonzero(~row)
            if len(on) and len(off):
                row[random_state.choice(off)], row[random_state.choice(on)] = True, False
        return X


def spread_subset(
    candidates: np.ndarray, front: np.ndarray, k: int, cfg: NSGANetV2Config, seed: int
) -> np.ndarray:
    """Indices of ``k`` of the candidates' FLOPs that best fill the gaps of the front's (msunas.py's GA)."""
    if len(candidates) <= k:
        return np.arange(len(candidates))
    algorithm = GA(
        pop_size=cfg.subset_pop_size,
        sampling=_ExactlyK(),
        crossover=_KeepShared(),
        mutation=_SwapOne(),
        eliminate_duplicates=True,
    )
    problem = _SubsetProblem(np.asarray(candidates, float), np.asarray(front, float), k)
    result = minimize(problem, algorithm, ("n_gen", cfg.subset_generations), seed=seed, verbose=False)
    return np.flatnonzero(result.X.astype(bool))


def tradeoff(F: np.ndarray) -> np.ndarray:
    """Each point's trade-off: the least gain per unit sacrifice towards its neighbours (normalised F).

    NSGANetV2's post-search measure (pymoo's high-trade-off points); -inf where it is undefined.
    """
    span = F.max(0) - F.min(0)
    N = (F - F.min(0)) / np.where(span > 0, span, 1.0)
    finder = NeighborFinder(N, epsilon=0.125, n_min_neigbors="auto", consider_2d=False)
    mu = np.full(len(N), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(N)):
            diff = N[finder.find(i)] - N[i]
            ratio = np.maximum(0, diff).sum(1) / np.maximum(0, -diff).sum(1)
            ratio = ratio[np.isfinite(ratio)]
            if len(ratio):
                mu[i] = ratio.min()
    return mu


def select_final(errors: np.ndarray, flops: np.ndarray, n_tradeoff: int, pick_rank: int) -> dict[str, Any]:
    """Indices of the front, the selected architectures (FLOPs descending) and the pick among them.

    Selected = the most accurate architecture of the front plus the ``n_tradeoff`` others with the
    highest trade-off (fewer if the front is smaller); the pick has the ``pick_rank``-th highest FLOPs.
    """
    F = np.column_stack([errors, flops])
    front = non_dominated(F)
    front = front[np.lexsort((flops[front], errors[front]))]  # most accurate first
    mu = tradeoff(F[front]) if len(front) > 2 else np.zeros(len(front))
    order = [i for i in np.argsort(-mu, kind="stable") if i != 0]
    chosen = [front[0], *(front[i] for i in order[:n_tradeoff])]
    chosen.sort(key=lambda i: -flops[i])
    return {"front": front.tolist(), "selected": chosen, "pick": chosen[min(pick_rank, len(chosen)) - 1]}
