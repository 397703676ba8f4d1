"""RoBoT: the pool, its proxy scores and their combination, BO, the greedy phase, resumption, poisoning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import nasaudit.nas.robot_pool as robot_pool
from nasaudit.config import load_profile
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.data.poison import apply_poison, make_poison
from nasaudit.errors import NasauditError
from nasaudit.nas import NAS, SearchContext, run_search
from nasaudit.nas.robot import LOG, RESULT, check_config, propose_weights, query_halves, robot_search
from nasaudit.nas.robot_pool import (
    architecture_seed,
    normalise,
    pool_folder,
    pool_key,
    proxy_batch,
    proxy_network,
    sample_pool,
    score_networks,
    score_pool,
    weighted_scores,
)
from nasaudit.proxies import PROXIES
from nasaudit.seeds import rng as seeded_rng

CPU = torch.device("cpu")
PROFILE = load_profile("smoke")
ALL_PROXIES = ["grad_norm", "snip", "grasp", "fisher", "synflow", "jacob_cov"]
# A tiny but complete RoBoT: every part runs, each in well under a second.
TINY = dataclasses.replace(
    PROFILE.robot,
    pool_size=5,
    pool_chunk=2,
    pool_stack=2,
    proxy_batch=8,
    channels=2,
    layers=3,
    queries=3,
    bo_init=1,
    bo_steps=2,
    acquisition_samples=200,
    acquisition_starts=2,
    gp_restarts=0,
    query=dataclasses.replace(PROFILE.robot.query, epochs=1, batch_size=8, checkpoint_every=1),
)
# The paper's BO, with a cheaper acquisition search so the synthetic runs stay fast.
BO = dataclasses.replace(
    load_profile("paper").robot, acquisition_samples=1000, acquisition_starts=2, gp_restarts=0
)


# --- combining proxies --------------------------------------------------------------------------------


def test_min_max_normalisation_and_weighted_score_by_hand() -> None:
    nan, inf = float("nan"), float("inf")
    scores = np.array(
        [
            [1.0, nan, 7.0, nan],
            [3.0, 10.0, 7.0, nan],
            [2.0, 20.0, 7.0, nan],
            [inf, 15.0, 7.0, nan],
        ]
    )
    norm = normalise(scores)
    expected = np.array([[0, nan, 0, nan], [1, 0, 0, nan], [0.5, 1, 0, nan], [nan, 0.5, 0, nan]])
    np.testing.assert_array_equal(norm, expected)
    weights = np.array([1.0, -0.5, 0.3, 1.0])
    # NaN terms are skipped: architecture 0 has no second proxy, architecture 3 no first one
    np.testing.assert_allclose(weighted_scores(norm, weights), [0.0, 1.0, 0.0, -0.25])


# --- the pool ------------------------------------------------------------------------------------------


def _ops(pool) -> set[str]:
    return {op for g in pool for op, _ in (*g.normal, *g.reduce)}


def test_pool_ops_as_run_never_samples_dil_conv_5x5_and_full_does() -> None:
    as_run, full = sample_pool(60, 0, "as_run"), sample_pool(60, 0, "full")
    assert _ops(as_run) == {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                            "dil_conv_3x3"}  # fmt: skip
    assert "dil_conv_5x5" in _ops(full) and "none" not in _ops(full)
    assert as_run == sample_pool(60, 0, "as_run") and as_run != sample_pool(60, 1, "as_run")
    assert sample_pool(20, 0, "as_run") == as_run[:20]  # one stream of draws


def test_duplicate_draws_collapse_in_first_seen_order(monkeypatch) -> None:
    distinct = sample_pool(3, 0, "as_run")
    draws = iter([distinct[1], distinct[0], distinct[1], distinct[2], distinct[0]])
    monkeypatch.setattr(robot_pool, "derive_genotype", lambda *args: next(draws))
    assert sample_pool(5, 0, "as_run") == [distinct[1], distinct[0], distinct[2]]


def test_stacked_scoring_equals_the_registered_proxies_on_each_network(tiny_dataset) -> None:
    inputs, targets = proxy_batch(tiny_dataset, 0, 8, CPU)
    nets = [
        proxy_network(genotype, 2, 3, tiny_dataset.num_classes, architecture_seed(0, index))
        for index, genotype in enumerate(sample_pool(3, 3, "full"))
    ]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
    # float64: the stacked math is the members' math, so only float64 rounding separates them
    exact = [net.double() for net in nets]
    stacked = score_networks(exact, inputs.double(), targets, ALL_PROXIES)
    one_by_one = [[PROXIES.get(name)(net, inputs.double(), targets) for name in ALL_PROXIES] for net in exact]
    assert stacked.shape == (3, 6) and np.isfinite(stacked).all()
    np.testing.assert_allclose(stacked, one_by_one, rtol=1e-9)
    np.testing.assert_allclose(score_networks(exact, inputs.double(), targets, ["synflow", "snip"]),
                               np.asarray(one_by_one)[:, [4, 1]], rtol=1e-9)  # fmt: skip
    for net, state in zip(exact, before, strict=True):
        assert net.training and net.drop_path_prob == 0.0 and net.auxiliary_head is None
        assert all(
            torch.equal(v, state[k].double()) for k, v in net.state_dict().items() if v.is_floating_point()
        )
    # float32, the pool's own precision, one network per stack: grasp's sum cancels, so 1e-3
    single = nets[0].float()
    np.testing.assert_allclose(score_networks([single], inputs, targets, ALL_PROXIES)[0],
                               [PROXIES.get(name)(single, inputs, targets) for name in ALL_PROXIES],
                               rtol=1e-3)  # fmt: skip


def test_pool_scoring_resumes_from_its_saved_chunks(tmp_path, tiny_dataset) -> None:
    cfg = dataclasses.replace(TINY, proxies=["snip", "synflow"])  # chunks of 2 = one stack of 2
    pool = sample_pool(cfg.pool_size, 0, cfg.pool_ops)
    stacks = []

    def scorer(nets, inputs, targets, proxies):
        if len(stacks) == 1:
            raise KeyboardInterrupt  # killed while scoring the second chunk
        stacks.append(len(nets))
        return score_networks(nets, inputs, targets, proxies)

    with pytest.raises(KeyboardInterrupt):
        score_pool(pool, tiny_dataset, 0, cfg, CPU, tmp_path / "pool", scorer=scorer)
    assert [p.name for p in sorted((tmp_path / "pool").glob("chunk_*.npz"))] == ["chunk_0000000_0000002.npz"]
    stacks_left = []

    def counting(nets, *rest):
        stacks_left.append(len(nets))
        return score_networks(nets, *rest)

    resumed = score_pool(pool, tiny_dataset, 0, cfg, CPU, tmp_path / "pool", scorer=counting)
    assert stacks_left == [2, 1]  # only the two missing chunks, in stacks that never straddle chunks
    fresh = score_pool(pool, tiny_dataset, 0, cfg, CPU, tmp_path / "fresh")
    np.testing.assert_array_equal(resumed, fresh)
    assert resumed.shape == (5, 2) and np.isfinite(resumed).all()
    assert not list((tmp_path / "pool").glob("chunk_*")) and (tmp_path / "pool" / "scores.npz").is_file()
    again = score_pool(pool, tiny_dataset, 0, cfg, CPU, tmp_path / "pool", scorer=lambda *a: pytest.fail())
    np.testing.assert_array_equal(again, fresh)
    # the stack size changes the scores by float rounding only
    alone = score_pool(pool, tiny_dataset, 0, dataclasses.replace(cfg, pool_stack=1), CPU, tmp_path / "alone")
    np.testing.assert_allclose(alone, fresh, rtol=1e-3)
    assert pool_key(tiny_dataset, 0, cfg) != pool_key(tiny_dataset, 0, dataclasses.replace(cfg, pool_stack=1))


def test_poisoned_data_changes_the_proxy_batch_both_halves_and_the_pool_key(tiny_dataset) -> None:
    n = len(tiny_dataset.train)
    everything = np.arange(n)
    flipped = apply_poison(make_poison("rlf", tiny_dataset, 0, everything,
                                       labels=(tiny_dataset.train.labels + 1) % 4), tiny_dataset)  # fmt: skip
    noisy_images = np.ascontiguousarray(255 - tiny_dataset.train.images)
    noised = apply_poison(
        make_poison("gaussian", tiny_dataset, 0, everything, images=noisy_images), tiny_dataset
    )
    x_clean, y_clean = proxy_batch(tiny_dataset, 0, 8, CPU)
    x_flip, y_flip = proxy_batch(flipped, 0, 8, CPU)
    x_noise, y_noise = proxy_batch(noised, 0, 8, CPU)
    assert torch.equal(x_flip, x_clean) and torch.equal(y_flip, (y_clean + 1) % 4)
    assert not torch.equal(x_noise, x_clean) and torch.equal(y_noise, y_clean)
    for poisoned in (flipped, noised):
        clean_halves, halves = query_halves(tiny_dataset), query_halves(poisoned)
        for part in ("train", "test"):
            ours, clean = getattr(halves, part), getattr(clean_halves, part)
            assert len(ours) == n // 2 and ours.sha256 != clean.sha256
        assert np.array_equal(
            np.concatenate([halves.train.labels, halves.test.labels]), poisoned.train.labels
        )
        assert pool_key(poisoned, 0, TINY) != pool_key(tiny_dataset, 0, TINY)


def test_proxy_batch_comes_from_the_half_the_queries_train_on(tiny_dataset) -> None:
    train, half = tiny_dataset.train, len(tiny_dataset.train) // 2
    images = train.images.copy()
    images[half:] = 255 - images[half:]
    other_second_half = tiny_dataset.with_train(Split(images, train.labels))
    x, y = proxy_batch(tiny_dataset, 0, half, CPU)  # the whole first half, in some order
    x2, y2 = proxy_batch(other_second_half, 0, half, CPU)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert sorted(y.tolist()) == sorted(query_halves(tiny_dataset).train.labels.tolist())


# --- BO and the greedy phase on synthetic pools ---------------------------------------------------------


def test_bo_beats_random_search_on_a_smooth_objective() -> None:
    target = np.array([0.5, -0.3, 0.7, -0.6, 0.1, 0.4])

    def objective(w: np.ndarray) -> float:
        return -float(np.sum((w - target) ** 2))

    weights, values = np.zeros((0, 6)), np.zeros(0)
    for step in range(BO.bo_init + BO.bo_steps):
        w = propose_weights(weights, values, step, 0, BO, 6)
        assert np.all(np.abs(w) <= 1.0)
        weights, values = np.vstack([weights, w]), np.append(values, objective(w))
    random_best = max(objective(w) for w in np.random.default_rng(0).uniform(-1, 1, (25, 6)))
    assert values.max() > -0.2 and values.max() > random_best + 0.2


def _synthetic_pool(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Normalised proxies and accuracies that are a hidden weighting of them: argmax lies at w*."""
    rng = np.random.default_rng(seed)
    norm = normalise(rng.normal(size=(n, 6)))
    return norm, weighted_scores(norm, rng.uniform(-1, 1, 6))


def test_bo_then_greedy_finds_the_pool_optimum_without_requerying() -> None:
    norm, accuracy = _synthetic_pool(104)
    calls: list[int] = []

    def query(i: int) -> float:
        calls.append(i)
        return float(accuracy[i])

    result = robot_search(norm, query, BO, seed=4)
    evaluations = result["evaluations"]
    bo = [e for e in evaluations if e["phase"] != "greedy"]
    assert len(bo) == 25 and [e["phase"] for e in bo[:2]] == ["init", "bo"]
    assert max(e["accuracy"] for e in bo) == accuracy.max()  # BO reaches the optimum itself
    assert accuracy[bo[0]["arch"]] < accuracy.max()  # where the random start did not
    assert result["pick"] == int(np.argmax(accuracy))
    # the BO re-proposed already-trained architectures; they were answered from the cache
    assert any(not e["trained"] for e in bo)
    assert (
        len(calls)
        == len(set(calls))
        == result["queried"]
        == BO.queries
        == sum(e["trained"] for e in evaluations)
    )
    # the greedy phase walks the ranking under the best w, skipping what BO already trained
    best = np.array(result["best_weights"])
    ranking = list(np.argsort(-weighted_scores(norm, best), kind="stable"))
    greedy = [e["arch"] for e in evaluations if e["phase"] == "greedy"]
    assert greedy == [a for a in ranking if a not in {e["arch"] for e in bo}][: len(greedy)]


def test_final_pick_is_the_most_accurate_queried_architecture() -> None:
    norm, _ = _synthetic_pool(7, n=60)
    accuracy = np.random.default_rng(1).uniform(0, 100, 60)  # unrelated to the proxies
    cfg = dataclasses.replace(BO, bo_steps=4, queries=10)
    result = robot_search(norm, lambda i: float(accuracy[i]), cfg, seed=0)
    queried = {e["arch"] for e in result["evaluations"]}
    assert len(queried) == 10
    assert result["pick"] == max(queried, key=lambda a: accuracy[a])
    assert result["accuracy"] == accuracy[list(queried)].max()
    top_under_best_w = int(np.argmax(weighted_scores(norm, np.array(result["best_weights"]))))
    assert result["pick"] != top_under_best_w  # the fix: the pick is by accuracy, not by score


def test_best_weights_are_the_last_to_reach_the_best_accuracy_and_repeats_are_not_reprobed(
    monkeypatch,
) -> None:
    # archs: 0 = A (top under w1, w4), 1 = B (top under w2, w3), then D, C under w2 but E, D under w3
    norm = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.9, 0.0], [0.0, 0.9]])
    w1, w2, w3, w4 = [0.0, -1.0], [1.0, 0.1], [0.1, 1.0], [-1.0, -1.0]
    accuracy = {0: 50.0, 1: 70.0, 2: 60.0, 3: 10.0, 4: 20.0}
    script = iter([w1, w2, w3, w2, w4])  # w2 comes back: bayes_opt would not probe it again
    seen: list[np.ndarray] = []

    def scripted(weights, values, step, seed, cfg, dim):
        seen.append(weights.copy())
        return np.array(next(script))

    monkeypatch.setattr("nasaudit.nas.robot.propose_weights", scripted)
    cfg = dataclasses.replace(BO, bo_init=1, bo_steps=4, queries=4)
    result = robot_search(norm, lambda i: accuracy[i], cfg, seed=0)
    bo = [e for e in result["evaluations"] if e["phase"] != "greedy"]
    assert [e["arch"] for e in bo] == [0, 1, 1, 1, 0]
    assert [e["repeated"] for e in bo] == [False, False, False, True, False]
    np.testing.assert_array_equal(seen[-1], [w1, w2, w3])  # the GP never saw the repeat
    # w2 and w3 both reached 70 (w2 also when it came back): as run, the last evaluated one wins,
    # so the greedy phase walks the ranking under w3 and trains E, D (under w2 it would be D, C)
    assert result["best_weights"] == w3
    assert [e["arch"] for e in result["evaluations"] if e["phase"] == "greedy"] == [4, 3]


def _acquisition_run(monkeypatch, seeds: str) -> dict[str, np.ndarray]:
    """One GP-UCB proposal on a synthetic objective: the L-BFGS-B starts it used, the random samples
    the acquisition was evaluated on, the fresh points drawn after them, and the proposal."""
    import scipy.optimize

    starts: list[np.ndarray] = []
    real = scipy.optimize.minimize

    def recording(fun, x0, **kwargs):
        if np.size(x0) == 3:  # the acquisition's runs (the GP's kernel fit has one parameter)
            starts.append(np.array(x0))
        return real(fun, x0, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", recording)
    rng = np.random.default_rng(5)
    weights = rng.uniform(-1, 1, (6, 3))
    values = -np.sum((weights - 0.3) ** 2, axis=1)
    cfg = dataclasses.replace(BO, acquisition_samples=50, acquisition_starts=4, acquisition_seeds=seeds)
    proposal = propose_weights(weights, values, 3, 11, cfg, 3)
    replay = seeded_rng(11, "robot", "acquisition", 3)  # the step's generator: GP seed, samples, then starts
    replay.integers(2**31 - 1)
    samples = replay.uniform(-1.0, 1.0, (50, 3))
    fresh = replay.uniform(-1.0, 1.0, (4, 3))
    return {"starts": np.array(starts), "samples": samples, "fresh": fresh, "proposal": proposal}


def test_acquisition_is_refined_from_fresh_random_points_as_bayes_opt_1_2_0(monkeypatch) -> None:
    run = _acquisition_run(monkeypatch, "random")
    np.testing.assert_array_equal(run["starts"], run["fresh"])  # acq_max: new uniform seeds ...
    assert not any(np.all(run["samples"] == start, axis=1).any() for start in run["starts"])  # ... only
    assert np.all(np.abs(run["proposal"]) <= 1.0)
    run = _acquisition_run(monkeypatch, "best")
    assert all(np.all(run["samples"] == start, axis=1).any() for start in run["starts"])


def test_acquisition_keeps_the_last_optimum_among_equals(monkeypatch) -> None:
    import scipy.optimize

    # every L-BFGS-B run "finds" its own start with the same, unbeatable value: ">=" keeps the last
    real = scipy.optimize.minimize

    def unbeatable(fun, x0, **kwargs):
        if np.size(x0) != 2:  # the GP's kernel fit
            return real(fun, x0, **kwargs)
        return scipy.optimize.OptimizeResult(x=np.array(x0), fun=-1e9, success=True)

    monkeypatch.setattr(scipy.optimize, "minimize", unbeatable)
    weights = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    cfg = dataclasses.replace(BO, acquisition_samples=20, acquisition_starts=3)
    proposal = propose_weights(weights, weights.sum(1), 2, 0, cfg, 2)
    replay = seeded_rng(0, "robot", "acquisition", 2)
    replay.integers(2**31 - 1)
    replay.uniform(-1.0, 1.0, (20, 2))
    np.testing.assert_array_equal(proposal, replay.uniform(-1.0, 1.0, (3, 2))[-1])


def test_search_resumes_from_its_log_without_retraining(tmp_path) -> None:
    norm, accuracy = _synthetic_pool(3, n=80)
    cfg = dataclasses.replace(BO, bo_steps=5, queries=8)
    uninterrupted = robot_search(norm, lambda i: float(accuracy[i]), cfg, seed=1)
    calls: list[int] = []

    def dies_at_the_fourth(i: int) -> float:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(i)
        return float(accuracy[i])

    with pytest.raises(KeyboardInterrupt):
        robot_search(norm, dies_at_the_fourth, cfg, seed=1, log_path=tmp_path / LOG)
    done = list(calls)
    resumed = robot_search(norm, lambda i: calls.append(i) or float(accuracy[i]), cfg, seed=1,
                           log_path=tmp_path / LOG)  # fmt: skip
    assert resumed == uninterrupted
    assert len(calls) == len(set(calls)) == 8 and calls[:3] == done
    assert json.loads((tmp_path / LOG).read_text())["evaluations"] == uninterrupted["evaluations"]
    with pytest.raises(NasauditError, match=r"robot_log\.json: made by another run \(its seed differs"):
        robot_search(norm, lambda i: 0.0, cfg, seed=2, log_path=tmp_path / LOG)


# --- the registered algorithm on real (tiny) data --------------------------------------------------------


def _context(out, cfg=TINY, cache_dir=None) -> SearchContext:
    return SearchContext(
        dataclasses.replace(PROFILE, robot=cfg), CPU, out, progress=False, cache_dir=cache_dir
    )


def test_robot_search_end_to_end_is_deterministic_and_shares_its_pool(
    tmp_path, tiny_dataset, monkeypatch
) -> None:
    provenance = {"dataset": tiny_dataset.name, "poison": None}
    first = run_search("robot", tiny_dataset, 0, _context(tmp_path / "a" / "job"), provenance)
    second = run_search("robot", tiny_dataset, 0, _context(tmp_path / "b" / "job"), provenance)
    assert first["architecture"] == second["architecture"] and first["space"] == "darts"
    log_a = json.loads((tmp_path / "a" / "job" / RESULT).read_text())
    log_b = json.loads((tmp_path / "b" / "job" / RESULT).read_text())
    assert log_a["evaluations"] == log_b["evaluations"] and log_a["queried"] == TINY.queries
    picked = max(log_a["evaluations"], key=lambda e: e["accuracy"])
    assert first["architecture"] == picked["genotype"]
    assert len(list((tmp_path / "a" / "job" / "queries").glob("*/result.json"))) == TINY.queries
    # by default the pool is cached beside the job; a job elsewhere told that cache_dir reuses it
    cache = tmp_path / "a" / "cache"
    assert (pool_folder(cache, pool_key(tiny_dataset, 0, TINY)) / "scores.npz").is_file()
    monkeypatch.setattr(robot_pool, "proxy_network", lambda *a: pytest.fail("pool scored twice"))
    third = run_search(
        "robot", tiny_dataset, 0, _context(tmp_path / "c" / "job", cache_dir=cache), provenance
    )
    assert third["architecture"] == first["architecture"] and not (tmp_path / "c" / "cache").exists()


def test_registered_and_bad_settings_are_one_line_errors(tiny_dataset: ImageDataset) -> None:
    assert NAS.get("robot").space == "darts"
    check_config(TINY, tiny_dataset)
    for change, message in [
        ({"proxies": ["snip", "snap"]}, "unknown proxy 'snap'"),
        ({"proxies": ["snip", "snip"]}, "distinct proxy names"),
        ({"bo_init": 0}, r"\[robot\] bo_init must be ≥ 1"),
        ({"pool_stack": 0}, r"\[robot\] pool_stack must be ≥ 1"),
        ({"pool_stack": 3}, "pool_stack 3 must divide pool_chunk 2"),
        ({"proxy_batch": 41}, "40 training images are too few"),
    ]:
        with pytest.raises(NasauditError, match=message):
            check_config(dataclasses.replace(TINY, **change), tiny_dataset)


def test_a_stack_too_large_for_the_gpu_is_one_line_naming_one_that_fits(monkeypatch) -> None:
    paper = load_profile("paper").robot  # 25 networks at once, about 40 GiB; chunks of 500
    gpu = torch.device("cuda")
    memory = {"total_memory": 24 * 2**30}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), memory)())
    with pytest.raises(NasauditError, match=r"pool_stack = 25 .*\(about 40 GiB\) and cuda has 24 GiB: add "
                       r"--set robot.pool_stack=10 "):  # fmt: skip
        robot_pool.check_stack_fits(paper, gpu)
    memory["total_memory"] = 48 * 2**30
    robot_pool.check_stack_fits(paper, gpu)  # fits: nothing said
    robot_pool.check_stack_fits(dataclasses.replace(paper, pool_stack=500), torch.device("cpu"))


@pytest.mark.slow
def test_cli_search_runs_robot_through_the_registry(tmp_path, capsys) -> None:
    from nasaudit.cli import main
    from nasaudit.config import PROFILE_DIR

    text = (PROFILE_DIR / "smoke.toml").read_text()
    for old, new in [
        ("pool_size = 8", "pool_size = 3"),
        ("queries = 3", "queries = 2"),
        ("bo_steps = 2", "bo_steps = 1"),
    ]:
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "tiny.toml").write_text(text)
    argv = ["search", "--algo", "robot", "--dataset", "digits", "--profile", str(tmp_path / "tiny.toml"),
            "--device", "cpu", "--out", str(tmp_path / "job")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "job" / "architecture.json").read_text())
    result = json.loads((tmp_path / "job" / RESULT).read_text())
    assert record["algorithm"] == "robot" and result["queried"] == 2 and result["pool"]["n_unique"] == 3
    assert record["architecture"] == next(
        e["genotype"] for e in result["evaluations"] if e["arch"] == result["pick"]
    )
    assert (tmp_path / "cache" / "robot_pool").is_dir()
