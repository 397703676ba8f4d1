"""TE-NAS: ranking, one op round and the edge stage, whole searches (determinism, labels unused, resume)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from tqdm import tqdm

from nasaudit import metrics_log
from nasaudit.attacks import AttackContext, run_attack
from nasaudit.batch_cap import batch_cap
from nasaudit.config import Profile, TenasConfig, load_profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import apply_poison
from nasaudit.errors import NasauditError
from nasaudit.nas import NAS, SearchContext, tenas
from nasaudit.proxies.ntk import ntk_cond
from nasaudit.seeds import derive_seed
from nasaudit.spaces.darts import CELL_TYPES, EDGES, NODES, Genotype

CPU = torch.device("cpu")
# One op per edge leaves only the edge stage (24 candidates in 6 rounds): a whole search in seconds. Op
# rounds are tested on their own below, and the smoke test runs one.
TINY = {"ops": ["skip_connect"], "batch_size": 4, "repeats": 1, "prune_number": 1,
        "lr_batch_size": 100, "lr_batches": 2}  # fmt: skip


def _profile(**changes: Any) -> Profile:
    base = load_profile("smoke")
    return dataclasses.replace(base, tenas=dataclasses.replace(base.tenas, **{**TINY, **changes}))


def _search(data: ImageDataset, folder: Path, profile: Profile, seed: int = 0) -> tuple[dict, list[dict]]:
    """The architecture and every round's log (wall times left out)."""
    arch = NAS.get("tenas")(data, seed, SearchContext(profile, CPU, folder, progress=False))
    logs = [json.loads(path.read_text()) for path in sorted(folder.glob("tenas_round_*.json"))]
    for log in logs:
        del log["seconds"]
    return arch, logs


@pytest.fixture(scope="module")
def reference(digits: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    folder = tmp_path_factory.mktemp("tenas_reference")
    return (folder, *_search(digits, folder, _profile()))


# --- ranking -----------------------------------------------------------------------------------------


def test_dense_ranks_share_ties_and_compare_three_significant_figures() -> None:
    assert tenas.dense_ranks([0.5, 0.1, 0.5, 0.3], descending=True, figures=3) == [0, 2, 0, 1]
    assert tenas.dense_ranks([0.5, 0.1, 0.5, 0.3], descending=False, figures=3) == [2, 0, 2, 1]
    # 0.12344 and 0.12339 agree to 3 significant figures, 0.1236 does not; -0.0 ties with 0.
    values = [0.12344, 0.12339, 0.1236, -2.5e-4, 0.0, -0.0]
    assert tenas.dense_ranks(values, descending=True, figures=3) == [1, 1, 0, 3, 2, 2]
    assert tenas.significant(-0.00123456, 3) == -0.00123 and tenas.significant(98765.0, 2) == 99000.0


def _fake(cell: str, edge: int, op: str, delta_kappa: float, delta_regions: float) -> tenas.Score:
    return tenas.Score(tenas.Removal(cell, edge, (op,)), [], [], [delta_kappa], [delta_regions])


def test_rank_sums_order_pruning_and_ties_follow_the_kappa_rank() -> None:
    scores = [
        _fake("normal", 0, "a", 0.3, 0.2),
        _fake("normal", 0, "b", 0.1, 0.0),
        _fake("normal", 0, "c", 0.2, 0.1),
    ]
    ranked = tenas.rank(scores, precision=3)
    assert [(r.rank_kappa, r.rank_regions) for r in ranked] == [(0, 2), (2, 0), (1, 1)]
    # All sums are 2: the higher Δκ (lower κ rank) goes first, as the as-run stable sorts order them.
    assert [r.score.removal.ops[0] for r in sorted(ranked, key=tenas.Ranked.sort_key)] == ["a", "c", "b"]


def test_op_round_prunes_the_lowest_rank_sums_and_never_an_edges_last_op() -> None:
    rng = np.random.default_rng(0)
    candidates = {t: [["x"] for _ in EDGES] for t in CELL_TYPES}
    candidates["normal"][0] = [f"op{i}" for i in range(7)]
    candidates["reduce"][5] = ["op0", "op1"]
    round_ = tenas.OpRound(prune_number=3, ops=7)
    removals = round_.removals(candidates)
    assert len(removals) == 9
    scores = [tenas.Score(r, [], [], [float(rng.normal())], [float(rng.normal())]) for r in removals]
    ranked = tenas.rank(scores, precision=3)
    pruned = round_.prune(candidates, ranked)
    normal = sorted((r for r in ranked if r.score.removal.cell == "normal"), key=tenas.Ranked.sort_key)
    assert {r.score.removal for r in normal[:3]} <= pruned
    assert sum(r.cell == "normal" for r in pruned) == 3 and sum(r.cell == "reduce" for r in pruned) == 1
    after = tenas.apply(candidates, pruned)
    assert len(after["normal"][0]) == 4 and len(after["reduce"][5]) == 1 and after["normal"][1] == ["x"]


def test_edge_round_keeps_the_two_largest_rank_sums() -> None:
    candidates = {t: [["skip_connect"] for _ in EDGES] for t in CELL_TYPES}
    round_ = tenas.EdgeRound("reduce", 3)  # node 3: edges 9..13
    removals = round_.removals(candidates)
    assert [r.edge for r in removals] == [9, 10, 11, 12, 13] and round_.size == 5
    deltas = [(0.5, 0.0), (0.1, 0.3), (0.2, 0.2), (0.4, 0.1), (0.3, 0.4)]
    scores = [tenas.Score(r, [], [], [k], [g]) for r, (k, g) in zip(removals, deltas, strict=True)]
    pruned = round_.prune(candidates, tenas.rank(scores, precision=3))
    # rank sums: 0+0, 4+3, 3+2, 1+1, 2+4 → keep edges 10 (7) and 13 (6)
    assert sorted(r.edge for r in pruned) == [9, 11, 12]


# A port of the official ranking (ztcoalson/TENAS prune_tenas.py: round_to 53-64, ranks 148-170, rank
# sums 171-173, op choices 174-179, edge-group choices 312-313), kept apart from ours on purpose: it
# works on NumPy floats as theirs do (so Python's round() is NumPy's there), with their list-and-dict
# bookkeeping.
def _official_round_to(number: np.float64, precision: int, eps: float = 1e-8) -> float:
    if number == 0:
        return number
    sign = number / abs(number)
    number = abs(number) + eps
    power = math.floor(math.log(number, 10)) + 1
    return sign * round(number * 10 ** (-power), precision) * 10 ** (power)


def _official_rank_sums(scores: list[tenas.Score], precision: int = 3) -> list[tuple[tuple, list[int]]]:
    ntk = [(np.mean(s.delta_kappa), (s.removal.cell, s.removal.edge, s.removal.ops)) for s in scores]
    regions = [(np.mean(s.delta_regions), (s.removal.cell, s.removal.edge, s.removal.ops)) for s in scores]
    rankings: dict[tuple, list[int]] = {}
    for column, (values, descending) in enumerate(((ntk, True), (regions, False))):
        ordered = sorted(values, key=lambda t: _official_round_to(t[0], precision), reverse=descending)
        for i, (value, key) in enumerate(ordered):
            if i == 0:
                rank_ = 0
            else:
                previous_value, previous_key = ordered[i - 1]
                rank_ = rankings[previous_key][column] + (0 if value == previous_value else 1)
            rankings.setdefault(key, []).append(rank_)
    return sorted(rankings.items(), key=lambda item: sum(item[1]))


def _official_op_choices(scores: list[tenas.Score], prune_number: int) -> set[tuple]:
    chosen: dict[tuple, list[tuple]] = {}
    for key, _ in _official_rank_sums(scores):
        per_edge = chosen.setdefault(key[:2], [])
        if len(per_edge) < prune_number:
            per_edge.append(key)
    return {key for keys in chosen.values() for key in keys}


def _random_deltas(rng: np.random.Generator, repeats: int) -> list[float]:
    """Per-repeat deltas rounded to 3 decimals around a few bases: many exact and 3-s.f. ties."""
    base = rng.choice([0.5, 0.12, 0.05, 0.0061, 0.0, -0.003, -0.02])
    spread = rng.integers(-3, 4, repeats) * rng.choice([0.001, 0.0001])
    noise = rng.normal(0.0, 5e-4, repeats) * rng.integers(0, 2)
    return [round(float(v), 3) for v in base + spread + noise]


def _random_scores(rng: np.random.Generator, removals: list[tenas.Removal]) -> list[tenas.Score]:
    repeats = int(rng.integers(1, 4))
    return [
        tenas.Score(r, [], [], _random_deltas(rng, repeats), _random_deltas(rng, repeats)) for r in removals
    ]


def test_ranks_and_op_choices_match_the_official_code_on_random_scores() -> None:
    rng = np.random.default_rng(2024)
    ops = ["a", "b", "c", "d", "e", "f", "g"]
    differs_from_rounded = 0
    for _ in range(1000):
        width, prune_number = int(rng.integers(2, 8)), int(rng.integers(1, 4))
        candidates = {t: [[] for _ in EDGES] for t in CELL_TYPES}
        for cell in CELL_TYPES:
            for edge in rng.choice(len(EDGES), int(rng.integers(1, len(EDGES) + 1)), replace=False):
                candidates[cell][edge] = ops[:width]
        round_ = tenas.OpRound(prune_number, width)
        scores = _random_scores(rng, round_.removals(candidates))
        ours = round_.prune(candidates, tenas.rank(scores, 3, "as_run"))
        expected = _official_op_choices(scores, min(prune_number, width - 1))
        assert {(r.cell, r.edge, r.ops) for r in ours} == expected
        rounded = round_.prune(candidates, tenas.rank(scores, 3, "rounded"))
        differs_from_rounded += rounded != ours
    # the sets exercise the tie rule: treating 3-s.f. equals as ties changes many decisions
    assert differs_from_rounded > 100


def test_edge_choices_match_the_official_code_on_random_scores() -> None:
    rng = np.random.default_rng(7)
    candidates = {t: [["skip_connect"] for _ in EDGES] for t in CELL_TYPES}
    for _ in range(1000):
        round_ = tenas.EdgeRound(str(rng.choice(CELL_TYPES)), int(rng.integers(1, NODES)))
        scores = _random_scores(rng, round_.removals(candidates))
        ours = round_.prune(candidates, tenas.rank(scores, 3, "as_run"))
        expected = {key for key, _ in _official_rank_sums(scores)[:-2]}
        assert {(r.cell, r.edge, r.ops) for r in ours} == expected


def test_as_run_ranks_split_three_figure_ties_and_keep_exact_ones() -> None:
    # 0.12344 and 0.12339 are equal to 3 s.f.: sorted in scoring order, yet ranked apart; adjacent
    # exact duplicates share a rank, separated ones do not (the walk compares neighbours only).
    values = [0.12344, 0.12339, 0.1236, 0.12344, -2.5e-4, 0.0]
    assert tenas.as_run_ranks(values, True, 3) == [1, 2, 0, 3, 5, 4]
    assert tenas.as_run_ranks([0.12344, 0.12344, 0.12339], True, 3) == [0, 0, 1]
    assert tenas.as_run_key(0.1, 3) == _official_round_to(np.float64(0.1), 3)
    assert tenas.as_run_key(-0.0123456, 3) == -0.0123


def test_plan_of_the_paper_profile_scores_332_candidates() -> None:
    rounds = tenas.plan(load_profile("paper").tenas)
    assert [r.size for r in rounds] == [196, 112, 3, 4, 5, 3, 4, 5]
    assert [r.describe()["kind"] for r in rounds] == ["ops"] * 2 + ["edges"] * 6


# --- scoring networks ----------------------------------------------------------------------------------


def test_candidate_is_the_original_without_the_op_and_is_restored(digits: ImageDataset) -> None:
    cfg = dataclasses.replace(load_profile("smoke").tenas, batch_size=4)
    scorer = tenas.Scorer(digits, cfg, 0, CPU)
    candidates = tenas.initial_candidates(cfg)
    net = scorer.build(candidates, True, seed=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batch = scorer.ntk_batch(seed=2)
    removal = tenas.Removal("reduce", 2, ("dil_conv_3x3",))
    with tenas.without(net, removal):
        kappa_without = ntk_cond(net, batch)
        assert "dil_conv_3x3" not in net.candidates("reduce")[2]
    # The same candidate built on its own, with the original's weights copied in.
    pruned = tenas.apply(candidates, {removal})
    separate = scorer.build(pruned, True, seed=99)
    weights = {k: v for k, v in before.items() if k in separate.state_dict() and not k.startswith("active")}
    missing, unexpected = separate.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["active_normal", "active_reduce"] and not unexpected
    assert ntk_cond(separate, batch) == pytest.approx(kappa_without, rel=1e-4)
    assert net.candidates("reduce") == candidates["reduce"]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.state_dict().keys() == before.keys()


def test_region_inputs_are_normalised_single_channel_crops(digits: ImageDataset) -> None:
    scorer = tenas.Scorer(digits, _profile().tenas, 0, CPU)
    crops = scorer.region_inputs(seed=3)
    assert crops.shape == (200, 1, 3, 3)
    assert torch.equal(crops, scorer.region_inputs(seed=3)) and not torch.equal(
        crops, scorer.region_inputs(4)
    )
    pixels = torch.from_numpy(digits.train.images).float() / 255.0
    lowest = min((pixels[..., c].min() - digits.mean[c]) / digits.std[c] for c in range(3))
    assert crops.min() >= lowest - 1e-5


def test_kaiming_init_uses_the_fan_mode_and_default_keeps_the_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.Linear(8, 4))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    tenas.INITS["default"](net, "fan_in")
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    for mode, fan in (("fan_in", 16 * 9), ("fan_out", 32 * 9)):
        tenas.INITS["kaiming"](net, mode)
        assert float(net[0].weight.detach().std()) == pytest.approx((2 / fan) ** 0.5, rel=0.05)
    assert torch.equal(net[1].weight, torch.ones(32)) and torch.equal(net[2].bias, torch.zeros(4))


def test_init_option_changes_the_scores_deterministically(digits: ImageDataset) -> None:
    candidates = tenas.initial_candidates(_profile().tenas)
    removals = [tenas.Removal("normal", 3, ("skip_connect",)), tenas.Removal("reduce", 0, ("skip_connect",))]

    def kappas(init: str) -> list[tuple[float, float]]:
        scorer = tenas.Scorer(digits, _profile(init=init, repeats=2).tenas, 0, CPU)
        return [
            k for s in scorer.score(0, candidates, removals, progress=tqdm(disable=True)) for k in s.kappa
        ]

    default, kaiming = kappas("default"), kappas("kaiming")
    assert kaiming == kappas("kaiming")
    assert all(a != b for a, b in zip(default, kaiming, strict=True))


# --- whole searches ------------------------------------------------------------------------------------


def test_one_op_round_removes_prune_number_ops_from_each_multi_op_edge(digits: ImageDataset) -> None:
    candidates = {t: [["skip_connect"] for _ in EDGES] for t in CELL_TYPES}
    candidates["normal"][4] = ["avg_pool_3x3", "skip_connect", "dil_conv_3x3"]
    candidates["normal"][9] = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]
    candidates["reduce"][1] = ["skip_connect", "dil_conv_3x3"]
    scorer = tenas.Scorer(digits, _profile(prune_number=2).tenas, 0, CPU)
    after, log = tenas.run_round(scorer, 0, tenas.OpRound(2, 4), candidates, tqdm(disable=True))
    assert len(log["scores"]) == 9 and log["candidates_after"] == after
    for cell, edge, left in (("normal", 4, 1), ("normal", 9, 2), ("reduce", 1, 1)):
        entries = [e for e in log["scores"] if (e["cell"], e["edge"]) == (cell, edge)]
        order = sorted(
            range(len(entries)), key=lambda i: (entries[i]["rank_sum"], entries[i]["rank_kappa"], i)
        )
        pruned = len(entries) - left
        assert [entries[i]["pruned"] for i in order] == [True] * pruned + [False] * left
        assert sorted(after[cell][edge]) == sorted(entries[i]["ops"][0] for i in order[pruned:])
    single = [(c, e) for c in CELL_TYPES for e in range(len(EDGES)) if len(candidates[c][e]) == 1]
    assert all(after[c][e] == candidates[c][e] for c, e in single)


def test_a_batch_cap_scores_only_the_first_removals_and_the_round_still_prunes(digits: ImageDataset) -> None:
    """The preflight's cap: each round measures its first removals only, the others rank as Δ = 0."""
    candidates = {t: [["skip_connect"] for _ in EDGES] for t in CELL_TYPES}
    candidates["normal"][4] = ["avg_pool_3x3", "skip_connect", "dil_conv_3x3"]
    candidates["reduce"][1] = ["skip_connect", "dil_conv_3x3"]
    scorer = tenas.Scorer(digits, _profile(prune_number=2).tenas, 0, CPU)
    progress = tqdm(total=5, file=io.StringIO())  # counts (a disabled bar does not)
    with batch_cap(2):
        after, log = tenas.run_round(scorer, 0, tenas.OpRound(2, 3), candidates, progress)
    measured = [e for e in log["scores"] if e["kappa"]]
    assert len(log["scores"]) == 5 and len(measured) == 2 and progress.n == 5
    assert [(e["cell"], e["edge"]) for e in measured] == [("normal", 4)] * 2  # the first two, in order
    assert all(e["delta_kappa"] == [0.0] and not e["regions"] for e in log["scores"] if not e["kappa"])
    assert len(after["normal"][4]) == 1 and len(after["reduce"][1]) == 1


def test_search_keeps_two_single_op_edges_per_node(reference: tuple[Path, dict, list]) -> None:
    folder, arch, logs = reference
    genotype = Genotype.from_json(arch)
    assert [(log["kind"], len(log["scores"])) for log in logs] == [("edges", n) for n in (3, 4, 5) * 2]
    for cell in CELL_TYPES:
        final = logs[-1]["candidates_after"][cell]
        for node in range(NODES):
            kept = [e for e, (n, _) in enumerate(EDGES) if n == node and final[e]]
            assert len(kept) == 2 and all(len(final[e]) == 1 for e in kept)
        pairs = [(final[e][0], inp) for e, (_, inp) in enumerate(EDGES) if final[e]]
        assert list(getattr(genotype, cell)) == pairs
    state = json.loads((folder / tenas.STATE).read_text())
    assert state["rounds_done"] == 6 and state["candidates"] == logs[-1]["candidates_after"]


def test_edge_stage_kappa_reference_is_one_net_of_all_14_edges(
    digits: ImageDataset, reference: tuple[Path, dict, list]
) -> None:
    folder, _, logs = reference
    start = json.loads((folder / tenas.STATE).read_text())["edge_reference"]
    assert start == tenas.initial_candidates(_profile().tenas)  # TINY: the edge stage starts at once
    scorer = tenas.Scorer(digits, _profile().tenas, 0, CPU)
    net = scorer.build(start, True, derive_seed(0, "tenas", "edge_reference"))
    pruned_before = 0
    for index, log in enumerate(logs):
        assert log["kappa_reference"] == start
        gone = tenas.missing(start, log["candidates_before"])
        assert sum(len(r.ops) for r in gone) == pruned_before  # the cell keeps losing edges ...
        for i, entry in enumerate(log["scores"]):
            batch = scorer.ntk_batch(derive_seed(0, "tenas", index, i, 0, "ntk_batch"))
            removal = tenas.Removal(entry["cell"], entry["edge"], tuple(entry["ops"]))
            with contextlib.ExitStack() as stack:
                for taken in (*gone, removal):
                    stack.enter_context(tenas.without(net, taken))
                without = ntk_cond(net, batch)
            # ... while κ is always that of the same full net, the candidate's with the same weights
            assert entry["kappa"][0] == [ntk_cond(net, batch), without]
        pruned_before += sum(entry["pruned"] for entry in log["scores"])


def test_pruned_edge_reference_rebuilds_kappa_nets_on_the_pruned_cell(
    digits: ImageDataset, reference: tuple[Path, dict, list], tmp_path: Path
) -> None:
    _, logs = _search(digits, tmp_path, _profile(edge_reference="pruned"))
    assert all(log["kappa_reference"] is None for log in logs)
    # later rounds measure κ on a cell with fewer edges than the as-run reference (all 14 edges)
    as_run = [entry["kappa"][0][0] for entry in reference[2][-1]["scores"]]
    assert [entry["kappa"][0][0] for entry in logs[-1]["scores"]] != as_run


def test_search_is_deterministic_and_its_rounds_go_to_tensorboard(
    digits: ImageDataset, reference: tuple, tmp_path: Path, tensorboard: dict
) -> None:
    torch.manual_seed(1234)  # the global RNG state must not matter
    assert _search(digits, tmp_path, _profile()) == reference[1:]  # round files as without --tensorboard
    logs = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("tenas_round_*.json"))]
    recorded = tensorboard[str(tmp_path / "tb" / metrics_log.run_name(tmp_path))]

    def per_round(values: list[float]) -> list[tuple[int, float]]:
        return list(enumerate(values))

    assert recorded["candidates_scored"] == per_round([3.0, 4.0, 5.0] * 2)  # a node's edges
    assert recorded["pruned"] == per_round([1.0, 2.0, 3.0] * 2)  # all but the 2 kept
    assert recorded["ops_left"] == per_round([27.0, 25.0, 22.0, 21.0, 19.0, 16.0])  # of 2 cells × 14 edges
    assert recorded["seconds"] == per_round([log["seconds"] for log in logs])
    for key in ("kappa", "regions"):
        pruned = [[e[f"mean_delta_{key}"] for e in log["scores"] if e["pruned"]] for log in logs]
        expected = per_round([pytest.approx(sum(means) / len(means)) for means in pruned])
        assert recorded[f"pruned_mean_delta_{key}"] == expected
    assert set(recorded) == {"candidates_scored", "pruned", "ops_left", "seconds", "pruned_mean_delta_kappa",
                             "pruned_mean_delta_regions"}  # fmt: skip


def test_label_flipping_cannot_change_the_search(
    digits: ImageDataset, reference: tuple, tmp_path: Path
) -> None:
    context = AttackContext(profile=load_profile("smoke"), device=CPU, cache_dir=tmp_path / "cache")
    flipped = apply_poison(run_attack("rlf", digits, 0.5, 0, context), digits)
    assert (flipped.train.labels != digits.train.labels).mean() > 0.4
    assert _search(flipped, tmp_path / "search", _profile()) == reference[1:]


def test_killed_search_resumes_at_the_last_finished_round(
    digits: ImageDataset, reference: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def dies_in_round_one(*args: Any, **kwargs: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 2 * (3 + 4) + 3:  # rounds 0, 1 make 2 κ calls per candidate; die in round 2
            raise KeyboardInterrupt
        return ntk_cond(*args, **kwargs)

    monkeypatch.setattr(tenas, "ntk_cond", dies_in_round_one)
    with pytest.raises(KeyboardInterrupt):
        _search(digits, tmp_path, _profile())
    assert json.loads((tmp_path / tenas.STATE).read_text())["rounds_done"] == 2
    assert len(list(tmp_path.glob("tenas_round_*"))) == 2

    rounds_run: list[int] = []
    run_round = tenas.run_round

    def counted(scorer: tenas.Scorer, index: int, *args: Any) -> Any:
        rounds_run.append(index)
        return run_round(scorer, index, *args)

    monkeypatch.setattr(tenas, "ntk_cond", ntk_cond)
    monkeypatch.setattr(tenas, "run_round", counted)
    assert _search(digits, tmp_path, _profile()) == reference[1:]
    assert rounds_run == [2, 3, 4, 5]


def test_job_folder_of_another_search_is_refused(digits: ImageDataset, reference: tuple) -> None:
    refused = r"tenas_state\.json: made by another run \(its seed differs"
    with pytest.raises(NasauditError, match=refused) as err:
        _search(digits, reference[0], _profile(), seed=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ops": ["none", "skip_connect"]}, "ops must list distinct names"),
        ({"ops": ["skip_connect", "skip_connect"]}, "ops must list distinct names"),
        ({"edge_reference": "fresh"}, "edge_reference must be one of as_run, pruned"),
        ({"batch_size": 1}, "batch_size must be ≥ 2"),
        ({"lr_input_size": 33}, "exceeds the image size"),
    ],
)
def test_bad_config_is_one_line(digits: ImageDataset, changes: dict, message: str) -> None:
    cfg: TenasConfig = _profile(**changes).tenas
    with pytest.raises(NasauditError, match=message) as err:
        tenas.check_config(cfg, digits)
    assert "\n" not in str(err.value)
