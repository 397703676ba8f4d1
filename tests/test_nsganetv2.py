"""NSGANetV2: surrogate switching, NSGA-II, candidate choice, final selection, the search job folder."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import nasaudit.nas.nsganetv2 as nsga
import nasaudit.nas.nsganetv2_ga as ga
import nasaudit.spaces.mbv3.shrink as shrink
from nasaudit import metrics_log
from nasaudit.config import load_profile
from nasaudit.data.datasets import Split
from nasaudit.errors import NasauditError
from nasaudit.models import MODELS, load_architecture
from nasaudit.nas import NAS, SearchContext, run_search
from nasaudit.spaces.mbv3 import (
    FlopsCounter,
    MBV3Arch,
    MBV3SuperNet,
    channel_plan,
    decode,
    encode,
    initial_archs,
    load_supernet,
    random_arch,
    upper_bounds,
)

PROFILE = load_profile("smoke")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The predictors' small matrix products are fastest on one thread (and 20× slower when 2 fight)."""
    with threadpool_limits(1):
        yield


CFG = dataclasses.replace(
    PROFILE.nsganetv2, cv_folds=5, cart_trees=10, mlp_max_iter=50, pop_size=10, generations=4
)
RES = [32, 36]


class _Fixed:
    """A 'predictor' that ignores training and predicts f(X): a controllable correlation."""

    def __init__(self, f):
        self.f = f

    def fit(self, X, y):
        return self

    def predict(self, X):
        return self.f(X)


def _synthetic(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 3, size=(n, 46))
    y = X[:, :10].sum(1) + 0.3 * rng.standard_normal(n)
    return X, y


def test_surrogate_switching_picks_the_better_correlated_predictor() -> None:
    X, y = _synthetic()
    noise = np.random.default_rng(1)
    kinds = {
        "good": nsga.SurrogateKind(lambda cfg, seed: _Fixed(lambda Z: Z[:, :10].sum(1)), lambda cfg, d: 2),
        "noisy": nsga.SurrogateKind(
            lambda cfg, seed: _Fixed(lambda Z: noise.standard_normal(len(Z))), lambda cfg, d: 2
        ),
        "greedy": nsga.SurrogateKind(lambda cfg, seed: _Fixed(lambda Z: Z.sum(1)), lambda cfg, d: 10_000),
    }
    for order in (["noisy", "good", "greedy"], ["good", "noisy", "greedy"]):
        result = nsga.select_surrogate(X, y, order, CFG, seed=0, kinds=kinds.__getitem__)
        assert result["winner"] == "good" and result["skipped"] == ["greedy"]
        assert result["scores"]["good"]["tau_mean"] > 0.5 > abs(result["scores"]["noisy"]["tau_mean"])


def test_registered_surrogates_learn_a_smooth_function() -> None:
    X, y = _synthetic(80)
    X_test, y_test = _synthetic(40, seed=2)
    from scipy.stats import kendalltau

    taus = {}
    for name in ("rbf", "gp", "cart", "mlp"):
        taus[name] = kendalltau(nsga.fit_surrogate(name, X, y, CFG, seed=0).predict(X_test), y_test).statistic
    assert min(taus.values()) > 0.25 and taus["rbf"] > 0.6 and taus["gp"] > 0.6, taus  # y is linear in X
    result = nsga.select_surrogate(X, y, ["rbf", "gp", "cart", "mlp"], CFG, seed=0)
    assert result["winner"] in ("rbf", "gp", "cart", "mlp") and result["skipped"] == []
    constant = dataclasses.replace(CFG, gp_trend="constant")  # the linear trend needs d + 2 points too
    assert nsga.select_surrogate(X[:30], y[:30], ["rbf", "gp"], constant, seed=0)["skipped"] == ["rbf"]
    with pytest.raises(NasauditError, match="no surrogate"):
        nsga.select_surrogate(X[:30], y[:30], ["rbf", "gp"], CFG, seed=0)
    with pytest.raises(NasauditError, match="unknown surrogate 'svm'"):
        nsga.select_surrogate(X, y, ["svm"], CFG, seed=0)


def test_gp_linear_trend_carries_a_plane_that_the_constant_trend_leaves_to_the_correlation() -> None:
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 2, (60, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 1.0
    far = rng.uniform(8, 10, (10, 4))  # well outside the data
    truth = far @ np.array([1.0, -2.0, 0.5, 3.0]) + 1.0
    linear = nsga.Kriging("linear").fit(X, y)
    # DACE's regr_linear: 1 + 4 coefficients, the GLS fit takes the whole plane, no residual is left
    assert linear.model["beta"].shape == (5,) and np.abs(linear.model["gamma"]).max() < 1e-6
    assert np.allclose(linear.predict(far), truth, atol=1e-6) and np.allclose(linear.predict(X), y, atol=1e-6)
    assert nsga.Kriging.LOWER <= linear.model["theta"] <= nsga.Kriging.UPPER
    constant = nsga.Kriging("constant").fit(X, y)
    assert constant.model["beta"].shape == (1,) and np.abs(constant.model["gamma"]).max() > 1e-3
    assert np.allclose(constant.predict(X), y, atol=1e-3)  # still an interpolator


def test_box_search_only_accepts_a_better_likelihood() -> None:
    X, y = _synthetic(50)
    model = nsga.Kriging("constant").fit(X[:, :6], y)
    at_one = model._fit_theta(1.0)["objective"]
    assert model.model["objective"] <= at_one and model.model["theta"] != 1.0  # it moved, downhill


def _dominates(a, b) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def test_nsga2_returns_a_population_whose_front_is_non_dominated() -> None:
    flops = FlopsCounter(channel_plan(0.25), 10)
    initial = np.stack([encode(a, RES) for a in initial_archs(4, np.random.default_rng(0), RES)])
    upper = upper_bounds(RES)

    def predict(codes):  # bigger networks predicted more accurate: a real trade-off with FLOPs
        return 100.0 - 10.0 * (codes / np.maximum(upper, 1)).sum(1)

    X, F = ga.run_nsga2(predict, flops, RES, initial, CFG, seed=0)
    assert X.shape == (CFG.pop_size, 46) and F.shape == (CFG.pop_size, 2)
    assert np.all((X >= 0) & (upper >= X))
    codes = np.stack([encode(decode(x, RES), RES) for x in X])
    assert np.allclose(F[:, 0], predict(codes))
    assert np.allclose(F[:, 1], [flops(decode(x, RES)) / 1e6 for x in X])
    front = ga.non_dominated(F)
    assert all(not _dominates(F[i], F[j]) for i in front for j in front)
    assert all(any(_dominates(F[i], F[j]) for i in front) for j in set(range(len(F))) - set(front))
    again = ga.run_nsga2(predict, flops, RES, initial, CFG, seed=0)
    assert np.array_equal(again[0], X)


def test_candidates_fill_the_gaps_of_the_front() -> None:
    cfg = dataclasses.replace(CFG, subset_pop_size=20, subset_generations=20)
    chosen = ga.spread_subset(np.array([1.0, 9.0, 5.0, 5.2, 2.0]), np.array([0.0, 10.0]), 1, cfg, seed=0)
    assert chosen.tolist() == [2]
    chosen = ga.spread_subset(np.array([1.0, 9.0, 5.0, 5.2, 2.0, 7.5]), np.array([0.0, 10.0]), 3, cfg, seed=0)
    assert chosen.tolist() == [2, 4, 5]
    assert ga.spread_subset(np.array([3.0]), np.array([0.0]), 2, cfg, seed=0).tolist() == [0]


def test_final_selection_keeps_the_most_accurate_and_high_tradeoff_points() -> None:
    # a front with a clear knee at (2, 2), plus dominated points
    errors = np.array([0.0, 1.0, 2.0, 6.0, 10.0, 5.0, 9.0])
    flops = np.array([10.0, 6.0, 2.0, 1.0, 0.0, 9.0, 9.0])
    mu = ga.tradeoff(np.column_stack([errors[:5], flops[:5]]))
    assert int(np.argmax(mu)) == 2
    final = ga.select_final(errors, flops, n_tradeoff=3, pick_rank=3)
    assert sorted(final["front"]) == [0, 1, 2, 3, 4] and final["front"][0] == 0
    assert final["selected"][0] == 0 and len(final["selected"]) == 4 and 2 in final["selected"]
    assert list(flops[final["selected"]]) == sorted(flops[final["selected"]], reverse=True)
    assert final["pick"] == final["selected"][2]
    assert ga.select_final(errors[:2], flops[:2], 3, 3)["pick"] == 1  # fewer than 3 selected: the last


# --- the search job --------------------------------------------------------------------------------------


def _tiny_profile():
    shrink = PROFILE.nsganetv2.supernet
    nsganetv2 = dataclasses.replace(
        PROFILE.nsganetv2,
        val_size=40,
        initial=4,
        iterations=1,
        per_iteration=2,
        cv_folds=2,
        cart_trees=3,
        mlp_max_iter=5,
        pop_size=6,
        generations=2,
        subset_pop_size=4,
        subset_generations=2,
        bn_calibration=16,
        finetune=dataclasses.replace(PROFILE.nsganetv2.finetune, batch_size=40),
        supernet=dataclasses.replace(
            shrink, batch_size=40, phases=[shrink.phases[0], dataclasses.replace(shrink.phases[-1], epochs=0)]
        ),
    )
    return dataclasses.replace(
        PROFILE, nsganetv2=nsganetv2, mbv3=dataclasses.replace(PROFILE.mbv3, resolutions=[32])
    )


@pytest.fixture(scope="module")
def search_data(digits):
    train = digits.train
    return digits.with_train(Split(train.images[:120], train.labels[:120]))


def _search(out, data, profile=None, seed=0, clean=None, cache=None):
    context = SearchContext(profile or _tiny_profile(), torch.device("cpu"), out, progress=False,
                            cache_dir=cache or out / "cache", clean=clean)  # fmt: skip
    return run_search("nsganetv2", data, seed, context, {"dataset": data.name, "poison": None})


def test_search_writes_a_resumable_job_folder(tmp_path, search_data, monkeypatch, tensorboard) -> None:
    assert NAS.get("nsganetv2").space == "mbv3"
    record = _search(tmp_path, search_data)
    archive = json.loads((tmp_path / "archive.json").read_text())
    assert [e["iteration"] for e in archive] == [0, 0, 0, 0, 1, 1]
    assert len({tuple(e["encoding"]) for e in archive}) == 6
    assert all(0 <= e["val_accuracy"] <= 100 and e["mflops"] > 0 and e["params"] > 0 for e in archive)
    plan = json.loads((tmp_path / "iterations" / "001.json").read_text())
    assert (
        plan["archive_size"] == 4
        and len(plan["candidates"]) == 2
        and plan["surrogate"]["skipped"] == ["rbf", "gp"]
    )
    front = json.loads((tmp_path / "pareto.json").read_text())
    selected = [e["mflops"] for e in front["selected"]]
    assert selected == sorted(selected, reverse=True)
    assert front["pick"] == front["selected"][min(3, len(selected)) - 1]
    assert record["space"] == "mbv3" and record["architecture"]["weights"] == "subnet.pt"
    supernet = Path(json.loads((tmp_path / "search_state.json").read_text())["supernet"]["folder"])
    assert supernet.parent == tmp_path / "cache" / "mbv3_supernet"  # the dataset's shared one
    assert (supernet / "supernet.pt").is_file() and not (supernet / "supernet" / "checkpoint.pt").exists()
    space, arch = load_architecture(str(tmp_path / "architecture.json"))
    assert space == "mbv3" and arch == MBV3Arch.from_json(front["pick"]["architecture"])
    assert arch.weights == str(tmp_path / "subnet.pt")

    # --tensorboard: per iteration (0: the initial architectures) the archive, and the surrogate chosen
    scalars = tensorboard[str(tmp_path / "tb" / metrics_log.run_name(tmp_path))]
    accuracies = [e["val_accuracy"] for e in archive]
    assert scalars["archive_size"] == [(0, 4.0), (1, 6.0)]
    assert scalars["best_val_accuracy"] == [(0, max(accuracies[:4])), (1, max(accuracies))]
    winner, scores = plan["surrogate"]["winner"], plan["surrogate"]["scores"]
    assert scalars[f"surrogate/{winner}/tau_mean"] == [(1, scores[winner]["tau_mean"])]
    for name in scores:  # the predictors that could be fitted; skipped ones have no point
        assert scalars[f"surrogates/{name}/tau_std"] == [(1, scores[name]["tau_std"])]
    assert scalars["plan_seconds"] == [(1, plan["seconds"])]
    recorded = copy.deepcopy(tensorboard)

    # resumable: with the result removed, a rerun evaluates nothing and writes the same pick
    (tmp_path / "architecture.json").unlink()
    monkeypatch.setattr(nsga.Evaluator, "__call__", lambda *a: pytest.fail("re-evaluated an architecture"))
    monkeypatch.setattr(shrink, "train_supernet", lambda *a, **k: pytest.fail("retrained the supernet"))
    assert _search(tmp_path, search_data)["architecture"] == record["architecture"]
    assert tensorboard == recorded  # and records no second copy of what it did not redo


def test_retraining_starts_from_clean_weights_whatever_the_poison(tmp_path, search_data, monkeypatch) -> None:
    """Paper and code: the supernet is one no poison touches, and the pick is retrained from it."""
    from nasaudit.attacks import AttackContext, run_attack
    from nasaudit.data.poison import apply_poison
    from nasaudit.nas.mbv3_supernet import SUPERNET_SEED
    from nasaudit.spaces.mbv3 import obtain_supernet

    profile, cache, cpu = _baseline_profile("search"), tmp_path / "cache", torch.device("cpu")
    context = AttackContext(profile=profile, device=cpu, cache_dir=tmp_path / "attack")
    flipped = apply_poison(run_attack("rlf", search_data, 0.5, 0, context), search_data)
    assert (flipped.train.labels != search_data.train.labels).mean() > 0.4
    seen = []
    real = shrink.train_supernet
    monkeypatch.setattr(
        shrink, "train_supernet", lambda net, data, *a, **k: seen.append(data) or real(net, data, *a, **k)
    )
    _search(tmp_path / "clean", search_data, profile, cache=cache)
    _search(tmp_path / "rlf", flipped, profile, clean=search_data, cache=cache)
    # one supernet for both searches, trained once, on the clean labels
    assert len(seen) == 1 and torch.equal(seen[0].labels.cpu(), torch.as_tensor(search_data.train.labels))
    sources = [
        json.loads((tmp_path / job / "search_state.json").read_text())["supernet"] for job in ("clean", "rlf")
    ]
    assert sources[0] == sources[1] and sources[0]["key"]["train_sha256"] == search_data.train.sha256
    # the same weights as a supernet trained from the clean data alone, in another folder
    alone = obtain_supernet(search_data, profile, seed=SUPERNET_SEED, folder=tmp_path / "alone", device=cpu,
                            progress=False)  # fmt: skip
    shared = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), search_data.num_classes)
    load_supernet(shared, Path(sources[0]["folder"]) / "supernet.pt")
    assert all(torch.equal(v, shared.state_dict()[k]) for k, v in alone.state_dict().items())
    for job in ("clean", "rlf"):  # what `nasaudit train` retrains each pick from
        space, arch = load_architecture(str(tmp_path / job / "architecture.json"))
        start = MODELS.get(space)(arch, search_data.num_classes, profile).state_dict()
        inherited = alone.extract(arch).state_dict()
        assert all(torch.equal(v, inherited[k]) for k, v in start.items() if "classifier" not in k)


def test_candidates_get_a_fresh_classifier_unless_told_otherwise(search_data, monkeypatch) -> None:
    profile = _tiny_profile()
    supernet = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), search_data.num_classes)
    arch = random_arch(np.random.default_rng(0), [32])
    built = []
    monkeypatch.setattr(nsga, "train_model", lambda build, *a, **k: built.append(build()) or {
        "test_accuracy": 50.0, "wall_time": 0.0})  # fmt: skip
    split = nsga.split_validation(search_data, 40)
    for reset in (True, False):
        cfg = dataclasses.replace(profile.nsganetv2, reset_classifier=reset)
        nsga.Evaluator(supernet, split, dataclasses.replace(profile, nsganetv2=cfg), torch.device("cpu"))(
            arch, 0
        )
    inherited = supernet.extract(arch).head.classifier.weight
    assert not torch.equal(built[0].head.classifier.weight, inherited)  # evaluator.py:155-158
    assert torch.equal(built[1].head.classifier.weight, inherited)
    # the held-out split is one for every search of the data (OFA's fixed VALID_SEED)
    assert nsga.split_validation(search_data, 40).test.sha256 == split.test.sha256


@pytest.mark.slow
def test_search_is_deterministic_and_an_interrupted_iteration_resumes(
    tmp_path, search_data, monkeypatch
) -> None:
    _search(tmp_path / "a", search_data)
    real = nsga.Evaluator.__call__
    calls = []

    def dies_on_the_fifth(self, arch, seed):
        calls.append(arch)
        if len(calls) == 5:  # the first candidate of iteration 1
            raise KeyboardInterrupt
        return real(self, arch, seed)

    monkeypatch.setattr(nsga.Evaluator, "__call__", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path / "b", search_data)
    assert len(json.loads((tmp_path / "b" / "archive.json").read_text())) == 4
    monkeypatch.setattr(nsga.Evaluator, "__call__", real)
    _search(tmp_path / "b", search_data)
    for name in ("archive.json", "pareto.json", "iterations/001.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in "ab")
        if name == "archive.json":
            for entries in (a, b):
                for e in entries:
                    e.pop("seconds")
        elif name == "pareto.json":
            a, b = a["pick"]["encoding"], b["pick"]["encoding"]
        else:
            a.pop("seconds"), b.pop("seconds")
        assert a == b, name


def test_bad_search_settings_are_one_line_errors(tmp_path, search_data) -> None:
    profile = _tiny_profile()
    bad = dataclasses.replace(profile, nsganetv2=dataclasses.replace(profile.nsganetv2, val_size=500))
    with pytest.raises(NasauditError, match="val_size = 500 must be between 1 and 119"):
        _search(tmp_path, search_data, bad)
    bad = dataclasses.replace(profile, mbv3=dataclasses.replace(profile.mbv3, resolutions=[16]))
    with pytest.raises(NasauditError, match="resolutions"):
        _search(tmp_path, search_data, bad)


def test_a_folder_holding_another_search_is_refused(tmp_path, search_data) -> None:
    profile = _tiny_profile()
    nsga.claim_folder(tmp_path, 0, search_data, profile)
    nsga.claim_folder(tmp_path, 0, search_data, profile)  # the same search resumes
    other = dataclasses.replace(profile, nsganetv2=dataclasses.replace(profile.nsganetv2, initial=5))
    for seed, prof in ((1, profile), (0, other)):
        with pytest.raises(NasauditError, match=r"search_state\.json: made by another run"):
            nsga.claim_folder(tmp_path, seed, search_data, prof)


# --- the random baseline of the space ------------------------------------------------------------------


def _baseline_profile(init: str):
    profile = _tiny_profile()
    return dataclasses.replace(profile, mbv3=dataclasses.replace(profile.mbv3, init=init))


def test_random_architectures_inherit_from_one_shared_supernet(tmp_path, search_data, monkeypatch) -> None:
    trained, real = [], shrink.train_supernet
    monkeypatch.setattr(shrink, "train_supernet", lambda *a, **k: trained.append(1) or real(*a, **k))
    profile, cache = _baseline_profile("search"), tmp_path / "shared"
    networks = []
    for seed, job in [(0, tmp_path / "a" / "arch_000"), (1, tmp_path / "b" / "arch_001")]:
        context = SearchContext(profile, torch.device("cpu"), job, progress=False, cache_dir=cache)
        record = run_search("random_mbv3", search_data, seed, context, {"dataset": search_data.name})
        assert record["architecture"]["weights"] == "subnet.pt"
        space, arch = load_architecture(str(job / "architecture.json"))
        assert arch == random_arch(np.random.default_rng(seed), [32])  # the draw is the plain sampler's
        networks.append((arch, MODELS.get(space)(arch, search_data.num_classes, profile)))  # as retrained
    assert trained == [1] and networks[0][0] != networks[1][0]
    (folder,) = (cache / "mbv3_supernet").iterdir()
    assert json.loads((folder / "key.json").read_text())["train_sha256"] == search_data.train.sha256
    assert not (folder / "supernet" / "checkpoint.pt").exists()
    supernet = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), search_data.num_classes)
    load_supernet(supernet, folder / "supernet.pt")
    for arch, net in networks:
        inherited = supernet.extract(arch).state_dict()
        assert all(torch.equal(v, inherited[k]) for k, v in net.state_dict().items() if "classifier" not in k)


def test_random_architectures_retrained_from_scratch_need_no_supernet(
    tmp_path, search_data, monkeypatch
) -> None:
    monkeypatch.setattr(shrink, "train_supernet", lambda *a, **k: pytest.fail("trained a supernet"))
    context = SearchContext(
        _baseline_profile("scratch"), torch.device("cpu"), tmp_path / "job", progress=False
    )
    arch = NAS.get("random_mbv3")(search_data, 0, context)
    assert "weights" not in arch and not any(tmp_path.iterdir())  # no cache, no subnet.pt
