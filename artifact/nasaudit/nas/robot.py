"""RoBoT (He et al., 2024) as the paper ran it: BO over proxy weights, then a greedy phase
(ztcoalson/RoBoT darts_space/search.py).

A weight vector w ∈ [−1, 1]^M turns the pool's min-max normalised proxies into one score; its value
is the validation accuracy of the pool's top-scoring architecture under w after a short training (a
"query"). A Gaussian process with a UCB acquisition proposes the weight vectors (1 random point, then
24 proposals), as the bayesian-optimization 1.2.0 package the authors pinned does it; the pool is then
ranked under the best w (the last one that reached the best accuracy, as their ``>=`` keeps it) and
its unqueried architectures are trained in order until 25 distinct ones have been. The pick is the
queried architecture with the highest validation accuracy (the official code's min over dict keys
here is a bug we fix: docs/fidelity.md).

State lives in the job folder: ``robot_log.json`` (every evaluation, rewritten atomically after each)
and ``queries/<genotype hash>/`` (one resumable training run per architecture, never repeated). Every
random draw of step t comes from a generator seeded by (seed, t), so a resumed search proposes exactly
what an uninterrupted one would. The scored pool is shared by every job with the same data and seed,
under ``<shared cache>/robot_pool/<key>/`` (``SearchContext.cache_dir``, by default ``cache/`` beside
the job folder; see :mod:`nasaudit.nas.robot_pool`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasaudit import metrics_log
from nasaudit.config import Profile, RobotConfig
from nasaudit.costs import NUM_CLASSES, Timer
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.errors import NasauditError
from nasaudit.io import environment_manifest, read_json, write_json
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext, shared_cache
from nasaudit.nas.robot_pool import (
    check_stack_fits,
    normalise,
    pool_folder,
    pool_key,
    sample_pool,
    score_pool,
    weighted_scores,
)
from nasaudit.proxies import PROXIES
from nasaudit.runs import check_record
from nasaudit.seeds import rng
from nasaudit.spaces.darts import EvalNetwork, Genotype, random_genotype
from nasaudit.train import train_model

LOG = "robot_log.json"
RESULT = "robot_result.json"
LOG_FORMAT = "nasaudit-robot-log/2"
#: Where L-BFGS-B starts maximising the acquisition: "random", fresh uniform points (bayes_opt 1.2.0,
#: util.py:51-53 ``acq_max``, as run), or "best", the best of the random samples it was evaluated on.
ACQUISITION_SEEDS = ("random", "best")
GP_NU = 2.5  # Matern smoothness (the bayesian-optimization package's default)
GP_ALPHA = 1e-6  # GP observation noise (bayesian-optimization 1.2.0's default)

Query = Callable[[int], float]  # pool index -> validation accuracy (%)


# --- Bayesian optimisation over the proxy weights ---------------------------------------------------


def _step_rng(seed: int, step: int) -> np.random.Generator:
    return rng(seed, "robot", "acquisition", step)


def propose_weights(
    weights: np.ndarray, values: np.ndarray, step: int, seed: int, cfg: RobotConfig, dim: int
) -> np.ndarray:
    """The weight vector of BO step ``step``: uniform for the first ``bo_init`` steps, else GP-UCB.

    The GP (Matern ν = 2.5, α = 1e-6, normalised targets, ``gp_restarts`` restarts) is fitted to the
    evaluations so far; UCB = μ + κσ is maximised over ``acquisition_samples`` uniform points, then
    L-BFGS-B runs from ``acquisition_starts`` points (``acquisition_seeds``) inside the box [−1, 1]^dim;
    a run's optimum replaces the best so far when at least as good (bayes_opt 1.2.0, util.py:7-71).
    """
    rng = _step_rng(seed, step)
    if step < cfg.bo_init or len(values) == 0:
        return rng.uniform(-1.0, 1.0, dim)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # ≤ 25 points: extra BLAS threads only add synchronisation
        return _ucb_argmax(weights, values, rng, cfg)


def _ucb_argmax(
    weights: np.ndarray, values: np.ndarray, rng: np.random.Generator, cfg: RobotConfig
) -> np.ndarray:
    from scipy.optimize import minimize
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern

    gp = GaussianProcessRegressor(
        kernel=Matern(nu=GP_NU),
        alpha=GP_ALPHA,
        normalize_y=True,
        n_restarts_optimizer=cfg.gp_restarts,
        random_state=int(rng.integers(2**31 - 1)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(weights, values)

    def ucb(x: np.ndarray) -> np.ndarray:
        mean, std = gp.predict(np.atleast_2d(x), return_std=True)
        return mean + cfg.kappa * std

    dim = weights.shape[1]
    samples = rng.uniform(-1.0, 1.0, (cfg.acquisition_samples, dim))
    acquisition = ucb(samples)
    order = np.argsort(-acquisition, kind="stable")
    best_x, best_value = samples[order[0]], float(acquisition[order[0]])
    if cfg.acquisition_seeds == "random":
        starts = rng.uniform(-1.0, 1.0, (cfg.acquisition_starts, dim))
    else:
        starts = samples[order[: cfg.acquisition_starts]]
    for start in starts:
        res = minimize(lambda x: -ucb(x)[0], start, method="L-BFGS-B", bounds=[(-1.0, 1.0)] * dim)
        if res.success and -float(res.fun) >= best_value:
            best_x, best_value = res.x, -float(res.fun)
    return np.clip(best_x, -1.0, 1.0)


# --- the search loop --------------------------------------------------------------------------------


def _load_log(path: Path | None, header: dict[str, Any]) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    log = read_json(path, "restarts the search's queries (trained queries are reused)")
    check_record(path, log, header, key=None)
    return log["evaluations"]


def robot_search(
    normalised: np.ndarray,
    query: Query,
    cfg: RobotConfig,
    seed: int,
    log_path: Path | None = None,
    pool_id: str = "",
) -> dict[str, Any]:
    """BO over w, then the greedy phase, on a pool given by its normalised proxies (N × M).

    ``query(i)`` trains pool member i and returns its validation accuracy; it is called at most once
    per architecture. Returns the pick (pool index), its accuracy, the best weights and every
    evaluation; with ``log_path`` the evaluations are saved after each one and a rerun resumes (a log
    of another seed, pool size, proxy count or ``pool_id`` is refused).
    """
    n_pool, dim = normalised.shape
    header = {"format": LOG_FORMAT, "seed": seed, "pool": n_pool, "dim": dim, "pool_id": pool_id}
    evaluations = _load_log(log_path, header)
    accuracies: dict[int, float] = {}
    for e in evaluations:
        accuracies.setdefault(e["arch"], e["accuracy"])

    def record(phase: str, weights: np.ndarray | None, arch: int, **extra: Any) -> None:
        trained = arch not in accuracies
        if trained:
            accuracies[arch] = float(query(arch))
        evaluations.append(
            {
                "phase": phase,
                "weights": None if weights is None else [float(v) for v in weights],
                "arch": arch,
                "accuracy": accuracies[arch],
                "trained": trained,
                **extra,
            }
        )
        if log_path is not None:
            document = {**header, "evaluations": evaluations}
            metrics_log.record(log_path.parent, len(evaluations) - 1, evaluations[-1], log_path, document)

    def bo_history() -> tuple[np.ndarray, np.ndarray]:
        """The distinct weight vectors evaluated and their accuracies, in order: what the GP sees."""
        bo = [e for e in evaluations if e["weights"] is not None and not e.get("repeated")]
        return np.array([e["weights"] for e in bo]).reshape(-1, dim), np.array([e["accuracy"] for e in bo])

    steps_done = sum(e["weights"] is not None for e in evaluations)
    for step in range(steps_done, cfg.bo_init + cfg.bo_steps):
        w_seen, y_seen = bo_history()
        w = propose_weights(w_seen, y_seen, step, seed, cfg, dim)
        # bayes_opt 1.2.0 probes a point it has seen no second time (target_space.py:188-196): the step
        # is spent, but the GP and the best-w bookkeeping never see it again
        repeated = any(np.array_equal(w, seen) for seen in w_seen)
        arch = int(np.argmax(weighted_scores(normalised, w)))
        record("init" if step < cfg.bo_init else "bo", w, arch, repeated=repeated)

    w_seen, y_seen = bo_history()
    # the LAST w that reached the best accuracy: their search() keeps w whenever acc >= best so far
    # (ztcoalson/RoBoT darts_space/search.py:333-342); ties are common, the top architecture recurs
    best_weights = w_seen[int(np.flatnonzero(y_seen == y_seen.max())[-1])]
    ranking = np.argsort(-weighted_scores(normalised, best_weights), kind="stable")
    for arch in ranking:
        if len(accuracies) >= cfg.queries:
            break
        if int(arch) not in accuracies:
            record("greedy", None, int(arch))

    pick = max(accuracies, key=lambda a: accuracies[a])  # the first queried among equals
    return {
        "pick": pick,
        "accuracy": accuracies[pick],
        "best_weights": [float(v) for v in best_weights],
        "evaluations": evaluations,
        "queried": len(accuracies),
    }


# --- queries: short training on one half, accuracy on the other ---------------------------------------


def query_halves(data: ImageDataset) -> ImageDataset:
    """The training split as (first half → train, second half → test), DARTS's 50/50 search split.

    Both halves come from ``data.train``, so with poisoned search data both are poisoned.
    """
    train, n = data.train, len(data.train) // 2
    return dataclasses.replace(
        data,
        train=Split(train.images[:n], train.labels[:n]),
        test=Split(train.images[n:], train.labels[n:]),
    )


def genotype_key(genotype: Genotype) -> str:
    return hashlib.sha256(json.dumps(genotype.to_json(), sort_keys=True).encode()).hexdigest()[:16]


class QueryTrainer:
    """Trains pool members with the profile's query recipe; one resumable job folder per genotype."""

    def __init__(
        self,
        pool: Sequence[Genotype],
        data: ImageDataset,
        cfg: RobotConfig,
        seed: int,
        device: torch.device,
        folder: Path,
        progress: bool = False,
    ) -> None:
        self.pool, self.halves, self.cfg, self.seed = pool, query_halves(data), cfg, seed
        self.device, self.folder, self.progress = device, Path(folder), progress

    def __call__(self, index: int) -> float:
        genotype, cfg = self.pool[index], self.cfg

        def build() -> EvalNetwork:
            return EvalNetwork(genotype, cfg.channels, cfg.layers, self.halves.num_classes, auxiliary=False)

        result = train_model(
            build,
            self.halves,
            cfg.query,
            seed=self.seed,
            device=self.device,
            out_dir=self.folder / genotype_key(genotype),
            description={"role": "RoBoT query", "pool_index": index, "genotype": genotype.to_json()},
            progress=self.progress,
        )
        return float(result["test_accuracy"])


# --- the registered algorithm -------------------------------------------------------------------------


def check_config(cfg: RobotConfig, data: ImageDataset) -> None:
    """One-line errors for a [robot] section that cannot run on ``data``."""
    if cfg.acquisition_seeds not in ACQUISITION_SEEDS:
        raise NasauditError(
            f"profile [robot] acquisition_seeds must be one of {', '.join(ACQUISITION_SEEDS)}, "
            f"got {cfg.acquisition_seeds!r}"
        )
    for name in cfg.proxies:
        PROXIES.get(name)
    if not cfg.proxies or len(set(cfg.proxies)) != len(cfg.proxies):
        raise NasauditError(f"profile [robot] proxies must list distinct proxy names, got {cfg.proxies}")
    minimum = {"pool_size": 1, "pool_chunk": 1, "pool_stack": 1, "proxy_batch": 2, "channels": 1, "layers": 1,
               "queries": 1, "bo_init": 1, "bo_steps": 0, "acquisition_samples": 1,
               "acquisition_starts": 0, "gp_restarts": 0}  # fmt: skip
    for key, low in minimum.items():
        if getattr(cfg, key) < low:
            raise NasauditError(f"profile [robot] {key} must be ≥ {low}, got {getattr(cfg, key)}")
    if cfg.pool_chunk % cfg.pool_stack:
        raise NasauditError(
            f"profile [robot] pool_stack {cfg.pool_stack} must divide pool_chunk {cfg.pool_chunk}, "
            "so that no stack straddles two saved chunks"
        )
    if cfg.proxy_batch > len(data.train) // 2 or len(data.train) < 4:
        raise NasauditError(
            f"{data.name}: {len(data.train)} training images are too few for RoBoT "
            f"(two halves for the queries, proxy_batch {cfg.proxy_batch} from the first)"
        )


class Robot(NasAlgorithm):
    space, label, image = "darts", "RoBoT", "robot"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        cfg = context.profile.robot
        check_config(cfg, data)
        check_stack_fits(cfg, context.device)
        pool = sample_pool(cfg.pool_size, seed, cfg.pool_ops)
        key = pool_key(data, seed, cfg)
        folder = pool_folder(shared_cache(context), key)
        scores = score_pool(pool, data, seed, cfg, context.device, folder, progress=context.progress)
        normalised = normalise(scores)
        queries = QueryTrainer(pool, data, cfg, seed, context.device, context.out_dir / "queries",
                               context.progress)  # fmt: skip
        result = robot_search(normalised, queries, cfg, seed, context.out_dir / LOG, pool_id=folder.name)
        write_json(
            context.out_dir / RESULT,
            {
                "pick": result["pick"],
                "accuracy": result["accuracy"],
                "best_weights": dict(zip(cfg.proxies, result["best_weights"], strict=True)),
                "queried": result["queried"],
                "evaluations": [
                    {**e, "genotype": pool[e["arch"]].to_json(), "proxies": scores[e["arch"]].tolist()}
                    for e in result["evaluations"]
                ],
                "pool": {"folder": str(folder), "key": key, "n_unique": len(pool)},
                "seed": seed,
                "config": cfg,
                "manifest": environment_manifest(str(context.device)),
            },
        )
        return pool[result["pick"]].to_json()

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """Queries train on half of the data; scoring the pool costs about two passes per proxy."""
        cfg = profile.robot
        genotype = random_genotype(np.random.default_rng(0))

        def build() -> nn.Module:
            return EvalNetwork(genotype, cfg.channels, cfg.layers, NUM_CLASSES)

        query = timer.per_image("robot", build, cfg.query.batch_size, precision=cfg.query.precision)
        proxy = timer.per_image("robot", build, cfg.proxy_batch)
        seconds = (
            cfg.queries * cfg.query.epochs * (n_train // 2) * query
            + cfg.pool_size * len(cfg.proxies) * 2 * cfg.proxy_batch * proxy
        )
        return seconds, 0.0


NAS.register("robot", uses=("robot",))(Robot())
