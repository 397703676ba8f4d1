"""NSGANetV2 (Lu et al., ECCV 2020) on the OFA MobileNetV3 space: surrogate-assisted NSGA-II (paper
App. A; as run: ztcoalson/nsganetv2 msunas.py).

The search keeps an archive of architectures whose accuracy was measured: each one inherits its
weights from the supernet, is fine-tuned on the search data and scored on a held-out split of it.
The archive starts with ``initial`` architectures (the smallest, the largest, random ones); each
iteration then fits every accuracy predictor in ``surrogates``, keeps the one with the best
cross-validated Kendall τ (mean − std over the folds, as the released code decides), runs NSGA-II
on (predicted top-1 error, FLOPs) over the integer encoding, starting from the archive's
non-dominated architectures, and evaluates ``per_iteration`` new architectures of its final
population, chosen by a small GA to spread evenly along FLOPs next to the archive's front. At the
end the archive's measured front gives the most accurate architecture plus the highest trade-off
points; the one returned has the ``pick_rank``-th highest FLOPs among them.

The supernet is OFA's ImageNet one where ``[nsganetv2.supernet] weights`` points to it; otherwise
its stand-in, the dataset's one supernet trained on the CLEAN training data and shared by every
search and the random baseline (:mod:`nasaudit.nas.mbv3_supernet`). Either way no poison touches the
inherited weights: poison reaches the search only through the fine-tunes and the held-out split, and
the pick is retrained from the supernet's weights, as in the original.

Job folder (resumable: the archive is the state; an iteration's chosen candidates are written before
they are evaluated)::

    archive.json           every evaluated architecture: encoding, accuracy, FLOPs, parameters
    iterations/NNN.json    per iteration: surrogate scores and winner, candidates, predicted errors
    pareto.json            the final front, the selected architectures and the pick
    search_state.json      the seed, configuration, data hash and supernet source the folder belongs to
    subnet.pt              the pick's inherited weights (what retraining starts from)
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.interpolate import RBFInterpolator
from scipy.spatial.distance import cdist
from scipy.stats import kendalltau
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor
from threadpoolctl import threadpool_limits
from torch import nn

from nasaudit import metrics_log
from nasaudit.config import NSGANetV2Config, Profile
from nasaudit.costs import NUM_CLASSES, Timer
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.extras import require
from nasaudit.io import jsonable, read_json, save_torch, write_json
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext
from nasaudit.nas.mbv3_supernet import middle_arch, shared_supernet, shrinking_seconds, supernet_source
from nasaudit.progress import bar as progress_bar
from nasaudit.registry import Registry
from nasaudit.runs import claim
from nasaudit.seeds import derive_seed
from nasaudit.spaces.mbv3 import (
    DEPTHS,
    EXPANDS,
    KERNELS,
    FlopsCounter,
    MBV3Arch,
    MBV3Net,
    MBV3SuperNet,
    channel_plan,
    count_params,
    decode,
    encode,
    initial_archs,
)
from nasaudit.train import train_model

ARCHIVE = "archive.json"
SUBNET = "subnet.pt"
FRONT = "pareto.json"
STATE = "search_state.json"
_RESTART = "restarts the search from its first evaluation (the supernet is reused)"

# --- accuracy predictors --------------------------------------------------------------------------


class Surrogate(Protocol):
    def fit(self, X: np.ndarray, y: np.ndarray) -> Any: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SurrogateKind:
    """How to build one predictor, and the fewest training points it can be fitted on."""

    make: Callable[[NSGANetV2Config, int], Surrogate]  # (config, seed) → an unfitted model
    min_samples: Callable[[NSGANetV2Config, int], int]  # (config, feature count) → fewest training points


SURROGATES: Registry[SurrogateKind] = Registry("surrogate")


class CubicRBF:
    """Cubic radial basis functions with a linear tail (pySOT's RBFInterpolant, as NSGANetV2 uses it)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> CubicRBF:
        self.model = RBFInterpolator(X.astype(float), y, kernel="cubic", degree=1)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model(X.astype(float))


class CartEnsemble:
    """NSGANetV2's CART predictor: full-depth regression trees, each on a random subset of the features."""

    def __init__(self, n_trees: int, seed: int):
        self.n_trees, self.seed = n_trees, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> CartEnsemble:
        rng = np.random.default_rng(self.seed)
        self.trees: list[tuple[np.ndarray, DecisionTreeRegressor]] = []
        for _ in range(self.n_trees):
            features = rng.permutation(X.shape[1])[: rng.integers(1, X.shape[1] + 1)]
            tree = DecisionTreeRegressor(random_state=int(rng.integers(2**31)))
            self.trees.append((features, tree.fit(X[:, features], y)))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([tree.predict(X[:, features]) for features, tree in self.trees], axis=0)


class Kriging:
    """NSGANetV2's GP predictor: DACE kriging as its acc_predictor/gp.py builds it with pydacefit 1.0.1.

    Inputs and targets are standardised (ddof 1; a constant input column is left unscaled, where
    pydacefit would divide by zero); a regression trend (``"linear"`` as theirs: 1 and every input,
    or ``"constant"``) is fitted by generalised least squares under a Gaussian correlation
    exp(−θ·‖Δx‖²) plus DACE's (10 + n)·ε nugget; the one θ is DACE's box search (boxmin) for the
    smallest σ²·|R|^(1/n) in [1e-5, 100] from θ = 1 (pydacefit dace.py:52-79, 146-165, fit.py,
    boxmin.py; Lophaven, Nielsen and Søndergaard 2002).
    """

    THETA, LOWER, UPPER = 1.0, 1e-5, 100.0

    def __init__(self, trend: str):
        self.trend = trend

    def _regressors(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(X)), X]) if self.trend == "linear" else np.ones((len(X), 1))

    def _fit_theta(self, theta: float) -> dict[str, Any] | None:
        """The GLS fit at one θ with its objective, or None where R is not positive definite."""
        n = len(self.X)
        R = np.exp(-theta * cdist(self.X, self.X, "sqeuclidean")) + np.eye(n) * (10 + n) * np.finfo(float).eps
        try:  # NumPy's solvers, as pydacefit's fit.py uses them
            C = np.linalg.cholesky(R)
        except np.linalg.LinAlgError:
            return None
        Ft = np.linalg.lstsq(C, self._regressors(self.X), rcond=None)[0]
        Yt = np.linalg.solve(C, self.y)
        Q, G = np.linalg.qr(Ft)
        beta = np.linalg.lstsq(G, Q.T @ Yt, rcond=None)[0]
        rho = Yt - Ft @ beta
        objective = np.sum(rho**2) / n * np.prod(np.diag(C) ** (2 / n))
        gamma = np.linalg.solve(C.T, rho)
        return {"theta": theta, "objective": objective, "beta": beta, "gamma": gamma}

    def _box_search(self) -> dict[str, Any]:
        """DACE's boxmin for one θ: from θ = 1, two rounds of an explore step (θ·d, else θ/d) and a
        pattern move (keep multiplying by the last gain, squared after each success)."""
        best = self._fit_theta(self.THETA)
        if best is None:
            raise NasauditError("the GP surrogate cannot be fitted at θ = 1 (singular correlation)")
        step = 2 ** (1 / 3)

        def better(theta: float) -> bool:
            nonlocal best
            fitted = self._fit_theta(theta)
            if fitted is not None and fitted["objective"] < best["objective"]:
                best = fitted
                return True
            return False

        for _ in range(2):
            start = t = best["theta"]
            if t == self.UPPER:
                better(t / np.sqrt(step))
            elif t == self.LOWER:
                better(t * np.sqrt(step))
            elif not better(min(self.UPPER, t * step)):
                better(max(self.LOWER, t / step))
            gain = best["theta"] / start
            if gain == 1:
                step **= 0.2
                continue
            while True:
                trial = float(np.clip(best["theta"] * gain, self.LOWER, self.UPPER))
                improved = better(trial)
                gain **= 2
                if not improved or trial in (self.LOWER, self.UPPER):
                    break
            step **= 0.25
        return best

    def fit(self, X: np.ndarray, y: np.ndarray) -> Kriging:
        X = np.asarray(X, float)
        self.mX, self.sX = X.mean(0), X.std(0, ddof=1)
        self.sX[self.sX == 0] = 1.0
        self.mY, self.sY = float(np.mean(y)), float(np.std(y, ddof=1)) or 1.0
        self.X, self.y = (X - self.mX) / self.sX, (np.asarray(y, float) - self.mY) / self.sY
        self.model = self._box_search()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, float) - self.mX) / self.sX
        r = np.exp(-self.model["theta"] * cdist(Z, self.X, "sqeuclidean"))
        return (self._regressors(Z) @ self.model["beta"] + r @ self.model["gamma"]) * self.sY + self.mY


#: The GP's regression trends: "linear" as NSGANetV2's gp.py (regr_linear), or "constant".
GP_TRENDS = ("linear", "constant")

SURROGATES.register("rbf")(SurrogateKind(lambda cfg, seed: CubicRBF(), lambda cfg, d: d + 2))
SURROGATES.register("gp")(
    SurrogateKind(
        lambda cfg, seed: Kriging(cfg.gp_trend),
        lambda cfg, d: d + 2 if cfg.gp_trend == "linear" else 2,  # the linear trend has d + 1 coefficients
    )
)
SURROGATES.register("cart")(
    SurrogateKind(lambda cfg, seed: CartEnsemble(cfg.cart_trees, seed), lambda cfg, d: 2)
)
SURROGATES.register("mlp")(
    SurrogateKind(
        lambda cfg, seed: make_pipeline(
            StandardScaler(),
            MLPRegressor(
                hidden_layer_sizes=(400, 400),
                learning_rate_init=8e-4,
                max_iter=cfg.mlp_max_iter,
                random_state=seed,
            ),
        ),
        lambda cfg, d: 2,
    )
)


def select_surrogate(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    cfg: NSGANetV2Config,
    seed: int,
    kinds: Callable[[str], SurrogateKind] = SURROGATES.get,
) -> dict[str, Any]:
    """NSGANetV2's adaptive switching: k-fold Kendall τ of every predictor; the winner maximises mean − std.

    A predictor that cannot be fitted on a fold's training part (an RBF with a linear tail needs more
    points than variables) sits the round out and is listed under ``skipped``.
    """
    folds = np.array_split(
        np.random.default_rng(seed).permutation(len(X)), max(2, min(cfg.cv_folds, len(X) // 2))
    )
    n_train = len(X) - max(len(f) for f in folds)
    usable = [n for n in names if kinds(n).min_samples(cfg, X.shape[1]) <= n_train]
    if not usable:
        raise NasauditError(
            f"no surrogate in {list(names)} can be fitted on {n_train} architectures; evaluate more initially"
        )
    taus = {name: [] for name in usable}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fold, test in enumerate(folds):
            train = np.setdiff1d(np.arange(len(X)), test)
            for name in usable:
                model = kinds(name).make(cfg, derive_seed(seed, "nsganetv2", "fold", fold))
                model.fit(X[train], y[train])
                tau = kendalltau(model.predict(X[test]), y[test]).statistic
                taus[name].append(0.0 if np.isnan(tau) else float(tau))  # constant predictions: no ranking
    scores = {n: {"tau_mean": float(np.mean(t)), "tau_std": float(np.std(t))} for n, t in taus.items()}
    winner = max(usable, key=lambda n: scores[n]["tau_mean"] - scores[n]["tau_std"])
    return {"winner": winner, "scores": scores, "skipped": [n for n in names if n not in usable]}


def fit_surrogate(name: str, X: np.ndarray, y: np.ndarray, cfg: NSGANetV2Config, seed: int) -> Surrogate:
    model = SURROGATES.get(name).make(cfg, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model


# --- candidate evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_bn(net: nn.Module, data: DeviceData, batch_size: int = 100) -> None:
    """Re-estimate every BN layer's statistics as the average over ``data`` (OFA's reset before scoring)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    net.train()
    for x, _ in data.batches(batch_size, shuffle=False):
        net(x)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum


#: As OFA's data providers (base_provider.py VALID_SEED, SUB_SEED), the held-out split and the images
#: that recalibrate BN are drawn with fixed seeds: the same for every search of the same data.
VALIDATION_SEED = 0
CALIBRATION_SEED = 1


def split_validation(data: ImageDataset, val_size: int) -> ImageDataset:
    """The search data as (train = what remains, test = ``val_size`` held-out training images)."""
    n = len(data.train)
    if not 0 < val_size < n:
        raise NasauditError(
            f"[nsganetv2] val_size = {val_size} must be between 1 and {n - 1} for {data.name}"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    val, rest = np.sort(order[:val_size]), np.sort(order[val_size:])
    train = data.train
    return dataclasses.replace(
        data,
        train=Split(train.images[rest], train.labels[rest]),
        test=Split(train.images[val], train.labels[val]),
    )


class Evaluator:
    """Inherit → new classifier → recalibrate BN → fine-tune on the search data → held-out accuracy.

    As their evaluator.py does it (lines 152-166): a fresh classifier for the target classes (dropout
    ``[mbv3] dropout``) unless ``reset_classifier`` is off, BN statistics re-estimated on a fixed subset
    of training images, then ``finetune``'s recipe (msunas.py passes batch 128; OFA's run manager uses
    Nesterov momentum and a per-step cosine).
    """

    def __init__(self, supernet: MBV3SuperNet, data: ImageDataset, profile: Profile, device: torch.device):
        self.supernet, self.data, self.profile, self.device = supernet, data, profile, device
        rng = np.random.default_rng(CALIBRATION_SEED)
        subset = rng.permutation(len(data.train))[: profile.nsganetv2.bn_calibration]
        self.calibration = DeviceData(
            Split(data.train.images[subset], data.train.labels[subset]), data, device
        )

    def __call__(self, arch: MBV3Arch, seed: int) -> dict[str, Any]:
        cfg = self.profile.nsganetv2

        def build() -> nn.Module:
            net = self.supernet.extract(arch, dropout=self.profile.mbv3.dropout)
            if cfg.reset_classifier:  # drawn from the training run's seed, like the rest of its draws
                net.head.classifier.reset_parameters()
            if cfg.bn_calibration > 0:
                recalibrate_bn(net, self.calibration)
            return net

        result = train_model(build, self.data, cfg.finetune, seed=seed, device=self.device, progress=False)
        return {
            "val_accuracy": result["test_accuracy"],
            "top1_error": 100.0 - result["test_accuracy"],
            "params": count_params(arch, self.supernet.plan, self.data.num_classes),
            "seconds": result["wall_time"],
        }


# --- the search ---------------------------------------------------------------------------------


class Archive:
    """Every evaluated architecture, in evaluation order; rewritten atomically after each one."""

    def __init__(self, path: Path, resolutions: list[int]):
        self.path, self.resolutions = path, resolutions
        self.entries: list[dict[str, Any]] = read_json(path, _RESTART) if path.is_file() else []
        self.keys = {tuple(e["encoding"]) for e in self.entries}

    def __contains__(self, arch: MBV3Arch) -> bool:
        return tuple(encode(arch, self.resolutions).tolist()) in self.keys

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self.keys.add(tuple(entry["encoding"]))
        write_json(self.path, self.entries)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(encodings, top-1 errors, MFLOPs)."""
        X = np.array([e["encoding"] for e in self.entries], dtype=np.int64)
        return (
            X,
            np.array([e["top1_error"] for e in self.entries]),
            np.array([e["mflops"] for e in self.entries]),
        )


def iteration_metrics(archive: Archive, plan: dict[str, Any] | None) -> dict[str, Any]:
    """What an iteration's TensorBoard scalars show (``metrics_log``), from what the search already
    computed: the archive's size and best held-out accuracy after it, and, from its plan (None: the
    initial architectures), the surrogate chosen (``surrogate/NAME/tau_mean``, ``tau_std``), every
    predictor's cross-validated Kendall τ (``surrogates/NAME/...``) and the planning's seconds."""
    metrics: dict[str, Any] = {
        "archive_size": len(archive.entries),
        "best_val_accuracy": max(entry["val_accuracy"] for entry in archive.entries),
    }
    if plan is not None:
        selection = plan["surrogate"]
        metrics["surrogate"] = {selection["winner"]: selection["scores"][selection["winner"]]}
        metrics["surrogates"] = selection["scores"]
        metrics["plan_seconds"] = plan["seconds"]
    return metrics


def check_config(profile: Profile) -> None:
    cfg, space = profile.nsganetv2, profile.mbv3
    for name in cfg.surrogates:
        SURROGATES.get(name)
    if cfg.gp_trend not in GP_TRENDS:
        raise NasauditError(
            f"[nsganetv2] gp_trend must be one of {', '.join(GP_TRENDS)}, got {cfg.gp_trend!r}"
        )
    if (
        not space.resolutions
        or min(space.resolutions) < 32
        or len(set(space.resolutions)) != len(space.resolutions)
    ):
        raise NasauditError(f"[mbv3] resolutions = {space.resolutions} must be distinct integers ≥ 32")
    for key in ("initial", "per_iteration", "pop_size", "pick_rank", "cv_folds"):
        if getattr(cfg, key) < 1:
            raise NasauditError(f"[nsganetv2] {key} must be at least 1")
    if cfg.initial < 2 and cfg.iterations > 0:
        raise NasauditError("[nsganetv2] initial must be at least 2 to fit a surrogate")


def claim_folder(
    out: Path, seed: int, data: ImageDataset, profile: Profile, supernet: dict[str, Any] | None = None
) -> None:
    """Record what the job folder's state belongs to (with ``supernet``, where the weights come from);
    refuse a folder holding another search."""
    state = jsonable(
        {
            "seed": seed,
            "train_sha256": data.train.sha256,
            "mbv3": profile.mbv3,
            "nsganetv2": profile.nsganetv2,
            "supernet": supernet,
        }
    )
    claim(out / STATE, state)


class NSGANetV2(NasAlgorithm):
    space, label, image = "mbv3", "NSGANetV2", "nsganetv2"
    extras = ("pymoo",)  # its NSGA-II and candidate-subset GA (nsganetv2_ga)

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        profile, out = context.profile, context.out_dir
        cfg, resolutions = profile.nsganetv2, list(profile.mbv3.resolutions)
        require("pymoo", "the NSGANetV2 search")  # its GAs (nsganetv2_ga) are pymoo's
        check_config(profile)
        split = split_validation(data, cfg.val_size)  # a bad val_size is refused before any file
        clean = context.clean_of(data)
        claim_folder(out, seed, data, profile, supernet_source(clean, context))
        # the dataset's one supernet, of the CLEAN data: no poison reaches the weights inherited
        supernet, _ = shared_supernet(clean, context)
        flops = FlopsCounter(supernet.plan, data.num_classes)
        evaluate = Evaluator(supernet, split, profile, context.device)
        archive = Archive(out / ARCHIVE, resolutions)

        def run(archs: list[MBV3Arch], iteration: int) -> int:
            """Evaluate what the archive lacks of ``archs``; how many that was."""
            todo = [a for a in archs if a not in archive]
            bar = progress_bar(len(todo), desc=f"nsganetv2 iteration {iteration}", unit="arch",
                               enabled=context.progress)  # fmt: skip
            for arch in todo:
                measured = evaluate(arch, derive_seed(seed, "nsganetv2", "candidate", len(archive.entries)))
                archive.add(
                    {"index": len(archive.entries), "iteration": iteration, "architecture": arch.to_json(),
                     "encoding": encode(arch, resolutions).tolist(), "mflops": flops(arch) / 1e6, **measured}
                )  # fmt: skip
                bar.update(1)
            bar.close()
            return len(todo)

        # an iteration is recorded by the process that worked on it, so a resumed search adds no copies
        if run(initial_archs(cfg.initial, np.random.default_rng(seed), resolutions), 0):
            metrics_log.record(out, 0, iteration_metrics(archive, None))
        for iteration in range(1, cfg.iterations + 1):
            path = out / "iterations" / f"{iteration:03d}.json"
            planned = not path.is_file()
            if planned:
                write_json(
                    path,
                    self.propose(
                        archive,
                        flops,
                        profile,
                        derive_seed(seed, "nsganetv2", "iteration", iteration),
                        iteration,
                    ),
                )
            plan = read_json(path, "plans that iteration again")
            if run([MBV3Arch.from_json(a) for a in plan["candidates"]], iteration) or planned:
                metrics_log.record(out, iteration, iteration_metrics(archive, plan))
        return self.finish(archive, supernet, profile, out)

    def propose(
        self, archive: Archive, flops: FlopsCounter, profile: Profile, seed: int, iteration: int
    ) -> dict[str, Any]:
        """One iteration's plan: surrogate selection, NSGA-II, the spread-out choice of new candidates.

        The predictors' matrices are small: one BLAS thread is fastest and leaves the cores alone.
        """
        from nasaudit.nas.nsganetv2_ga import non_dominated, run_nsga2, spread_subset

        cfg, resolutions = profile.nsganetv2, list(profile.mbv3.resolutions)
        start = time.perf_counter()
        X, errors, mflops = archive.arrays()
        with threadpool_limits(1):
            selection = select_surrogate(X, errors, cfg.surrogates, cfg, seed)
            model = fit_surrogate(selection["winner"], X, errors, cfg, seed)
            front = non_dominated(np.column_stack([errors, mflops]))
            pop_X, pop_F = run_nsga2(model.predict, flops, resolutions, X[front], cfg, seed)
        new, seen = [], set()
        for i, x in enumerate(pop_X):
            arch = decode(x, resolutions)
            key = tuple(encode(arch, resolutions).tolist())
            if arch not in archive and key not in seen:
                seen.add(key)
                new.append(i)
        chosen = [new[j] for j in spread_subset(pop_F[new, 1], mflops[front], cfg.per_iteration, cfg, seed)]
        return {
            "iteration": iteration,
            "archive_size": len(X),
            "surrogate": selection,
            "candidates": [decode(pop_X[i], resolutions).to_json() for i in chosen],
            "predicted_top1_error": [float(pop_F[i, 0]) for i in chosen],
            "mflops": [float(pop_F[i, 1]) for i in chosen],
            "seconds": time.perf_counter() - start,
        }

    def finish(self, archive: Archive, supernet: MBV3SuperNet, profile: Profile, out: Path) -> dict[str, Any]:
        """Write the front, the selected architectures and the pick's inherited weights; return the pick."""
        from nasaudit.nas.nsganetv2_ga import select_final

        cfg = profile.nsganetv2
        _, errors, mflops = archive.arrays()
        final = select_final(errors, mflops, cfg.tradeoff_points, cfg.pick_rank)
        entries = archive.entries
        write_json(
            out / FRONT,
            {"front": [entries[i] for i in final["front"]],
             "selected": [entries[i] for i in final["selected"]],
             "pick": entries[final["pick"]], "pick_rank": cfg.pick_rank},
        )  # fmt: skip
        pick = MBV3Arch.from_json(entries[final["pick"]]["architecture"])
        save_torch(out / SUBNET, {"state_dict": supernet.extract(pick).state_dict()})
        return dataclasses.replace(pick, weights=SUBNET).to_json()

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """Per evaluated candidate: fine-tuning, BN recalibration and validation; shared by every search
        of the dataset, its supernet on the clean training set (counted again for the random baseline's)."""
        cfg = profile.nsganetv2
        n_search = max(n_train - cfg.val_size, 0)
        build = partial(_timing_candidate, profile)
        step = timer.per_image(
            "nsganetv2/candidate", build, cfg.finetune.batch_size, precision=cfg.finetune.precision
        )
        forward = timer.forward_per_image("nsganetv2/candidate", build, cfg.finetune.batch_size)
        evaluation = cfg.finetune.epochs * n_search * step + (cfg.bn_calibration + cfg.val_size) * forward
        evaluations = cfg.initial + cfg.iterations * cfg.per_iteration
        return evaluations * evaluation, shrinking_seconds(profile, n_train, timer)


def _timing_candidate(profile: Profile) -> MBV3Net:
    """A candidate as NSGANetV2 fine-tunes it, as `nasaudit plan` times it: the space's middle
    network, extracted standalone."""
    arch = middle_arch(KERNELS, DEPTHS, EXPANDS, profile.mbv3.resolutions)
    return MBV3Net(arch, channel_plan(profile.mbv3.width_mult), NUM_CLASSES, profile.mbv3.dropout)


NAS.register("nsganetv2", uses=("mbv3", "nsganetv2"))(NSGANetV2())
