"""Genotypes: references, JSON round trip, validation messages, derivation from α, random sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nasaudit.errors import NasauditError
from nasaudit.io import write_json
from nasaudit.spaces.darts import (
    CONCAT,
    EDGE_OPS,
    EDGES,
    GENOTYPES,
    PRIMITIVES,
    Genotype,
    derive_genotype,
    load,
    random_genotype,
)


def _pairs(*items: str) -> list[list[object]]:
    return [[op, int(inp)] for op, inp in (item.split() for item in items)]


def _valid_json() -> dict[str, object]:
    return GENOTYPES.get("darts_v2").to_json()


def test_references_are_registered_and_valid() -> None:
    authors_random = [f"random_{k}" for k in range(1, 11)]
    assert GENOTYPES.names() == sorted(["darts_v1", "darts_v2", "pdarts", "tenas", *authors_random])
    for name in GENOTYPES:
        g = load(name)
        assert len(g.normal) == len(g.reduce) == 8
        assert g.normal_concat == g.reduce_concat == CONCAT


def test_published_genotypes_match_their_papers() -> None:
    pdarts = GENOTYPES.get("pdarts")
    assert pdarts.normal[6] == ("sep_conv_3x3", 0)  # P-DARTS keeps 2 skip-connects in the normal cell
    assert sum(op == "skip_connect" for op, _ in pdarts.normal) == 2
    tenas = GENOTYPES.get("tenas")
    assert tenas.normal[:2] == (("dil_conv_3x3", 0), ("sep_conv_5x5", 1))
    assert tenas.reduce[-1] == ("sep_conv_3x3", 4)
    assert GENOTYPES.get("darts_v2").normal[-1] == ("dil_conv_3x3", 2)


@pytest.mark.parametrize("name", ["darts_v1", "darts_v2", "pdarts", "tenas"])
def test_json_round_trip_through_a_file(tmp_path: Path, name: str) -> None:
    g = GENOTYPES.get(name)
    path = write_json(tmp_path / "g.json", g.to_json())
    assert load(path) == g
    assert load(str(path)) == g
    assert Genotype.from_json(json.loads(json.dumps(g.to_json()))) == g


def test_load_accepts_a_result_file_with_a_genotype_key(tmp_path: Path) -> None:
    path = write_json(tmp_path / "search.json", {"genotype": _valid_json(), "seed": 3})
    assert load(path) == GENOTYPES.get("darts_v2")


def test_concat_defaults_to_all_nodes() -> None:
    data = _valid_json()
    del data["normal_concat"], data["reduce_concat"]
    assert Genotype.from_json(data).normal_concat == CONCAT


def test_genotype_is_immutable_and_hashable() -> None:
    g = GENOTYPES.get("pdarts")
    with pytest.raises(AttributeError):
        g.normal = ()  # type: ignore[misc]
    assert len({g, load("pdarts")}) == 1


def _one_line_error(match: str, call: object) -> None:
    with pytest.raises(NasauditError, match=match) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_load_missing_file_is_one_line(tmp_path: Path) -> None:
    _one_line_error("neither a known name", lambda: load(tmp_path / "nope.json"))
    _one_line_error("darts_v2", lambda: load("darts_v9"))


def test_load_bad_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    _one_line_error("cannot read genotype file", lambda: load(path))


def test_load_invalid_genotype_names_the_file(tmp_path: Path) -> None:
    data = _valid_json()
    data["normal"] = data["normal"][:7]
    path = write_json(tmp_path / "short.json", data)
    _one_line_error(r"short\.json: genotype normal cell has 7 edges", lambda: load(path))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(normal=d["normal"][:6]), "normal cell has 6 edges; a DARTS cell needs exactly 8"),
        (lambda d: d.update(reduce=d["reduce"] + [["skip_connect", 0]]), "reduce cell has 9 edges"),
        (lambda d: d.update(normal="sep_conv_3x3"), "normal cell is 'sep_conv_3x3'"),
        (lambda d: d["normal"].__setitem__(3, ["conv_9x9", 1]), "op 'conv_9x9' on edge 3, not an edge op"),
        (lambda d: d["reduce"].__setitem__(5, ["none", 1]), "op 'none' on edge 5, not an edge operation"),
        (lambda d: d["normal"].__setitem__(3, ["sep_conv_3x3"]), "edge 3 is .* an \\[op, input\\] pair"),
        (lambda d: d["normal"].__setitem__(2, ["sep_conv_3x3", 3]), "node 1 takes input 3, .* inputs 0..2"),
        (lambda d: d["reduce"].__setitem__(7, ["sep_conv_3x3", 5]), "node 3 takes input 5"),
        (lambda d: d["reduce"].__setitem__(0, ["sep_conv_3x3", -1]), "node 0 takes input -1"),
        (lambda d: d["reduce"].__setitem__(0, ["sep_conv_3x3", "0"]), "node 0 takes input '0'"),
        (lambda d: d.update(normal_concat=[2, 2, 3]), "normal_concat .* is invalid"),
        (lambda d: d.update(reduce_concat=[1, 2]), "reduce_concat .* is invalid"),
        (lambda d: d.update(colour="blue"), "unknown key\\(s\\) colour"),
        (lambda d: d.pop("reduce"), "lacks reduce"),
    ],
)
def test_each_validation_error_is_one_line(change: object, match: str) -> None:
    data = _valid_json()
    change(data)  # type: ignore[operator]
    _one_line_error(match, lambda: Genotype.from_json(data))


def test_from_json_rejects_a_non_object() -> None:
    _one_line_error("must be a JSON object", lambda: Genotype.from_json([1, 2]))


def _alpha(edge_op_weights: dict[int, dict[str, float]], names: tuple[str, ...] = PRIMITIVES) -> np.ndarray:
    """α rows that are 0 except the given logits."""
    alpha = np.zeros((len(EDGES), len(names)))
    for e, ops in edge_op_weights.items():
        for op, value in ops.items():
            alpha[e, names.index(op)] = value
    return alpha


def test_derive_keeps_the_two_strongest_edges_per_node() -> None:
    # node 0: edges 0, 1; node 1: edges 2-4; node 2: edges 5-8; node 3: edges 9-13
    spec = {
        0: {"sep_conv_3x3": 2.0},
        1: {"max_pool_3x3": 3.0},
        2: {"dil_conv_5x5": 1.0},
        3: {"skip_connect": 4.0},
        4: {"avg_pool_3x3": 2.0},
        7: {"sep_conv_5x5": 5.0},
        8: {"dil_conv_3x3": 4.0},
        9: {"sep_conv_3x3": 1.0},
        13: {"skip_connect": 2.0},
    }
    g = derive_genotype(_alpha(spec), torch.tensor(_alpha(spec)))
    expected = _pairs(
        "max_pool_3x3 1",
        "sep_conv_3x3 0",
        "skip_connect 1",
        "avg_pool_3x3 2",
        "sep_conv_5x5 2",
        "dil_conv_3x3 3",
        "skip_connect 4",
        "sep_conv_3x3 0",
    )
    assert [list(p) for p in g.normal] == expected
    assert g.reduce == g.normal


def test_derive_ignores_none_when_ranking_edges_and_ops() -> None:
    # 'none' takes almost all of edge 0's softmax mass: edge 0 still gets its best real op (skip), and
    # ranks by that op's small weight, below edge 1's conv.
    normal = _alpha({0: {"none": 9.0, "skip_connect": 3.0}, 1: {"sep_conv_3x3": 0.5}})
    g = derive_genotype(normal, normal)
    assert g.normal[:2] == (("sep_conv_3x3", 1), ("skip_connect", 0))


def test_derive_with_shrunk_and_differing_candidate_sets() -> None:
    names = [["none", "sep_conv_3x3", "skip_connect"]] * len(EDGES)
    names[0] = ["dil_conv_5x5"]  # a single survivor: weight 1.0, strongest possible
    names[5] = []  # a removed edge (TE-NAS edge pruning) is never picked
    alpha = [np.zeros(len(n)) for n in names]
    alpha[1] = np.array([0.0, 5.0, 0.0])
    alpha[6] = np.array([-1.0, 0.0, 1.0])
    reduce_names = [["max_pool_3x3", "none"]] * len(EDGES)
    reduce_alpha = np.zeros((len(EDGES), 2))
    g = derive_genotype(alpha, reduce_alpha, names, reduce_names)
    assert g.normal[:2] == (("dil_conv_5x5", 0), ("sep_conv_3x3", 1))
    assert g.normal[4] == ("skip_connect", 1)  # edge 6 = (node 2, input 1)
    assert all(op == "max_pool_3x3" for op, _ in g.reduce)
    assert [inp for _, inp in g.reduce] == [0, 1, 0, 1, 0, 1, 0, 1]  # ties go to the lower edge


def test_derive_ties_pick_the_earlier_op() -> None:
    names = [list(EDGE_OPS)] * len(EDGES)
    g = derive_genotype(np.zeros((14, 7)), np.zeros((14, 7)), names)
    assert all(op == EDGE_OPS[0] for op, _ in g.normal)


def test_derive_rejects_mismatched_rows_and_nodes_without_candidates() -> None:
    with pytest.raises(ValueError, match="shape"):
        derive_genotype(np.zeros((14, 7)), np.zeros((14, 7)))
    only_none = [["none"]] * len(EDGES)
    with pytest.raises(ValueError, match="fewer than 2"):
        derive_genotype(np.zeros((14, 1)), np.zeros((14, 1)), only_none)


def test_random_genotype_is_deterministic_per_seed() -> None:
    a = random_genotype(np.random.default_rng(7))
    b = random_genotype(np.random.default_rng(7))
    assert a == b
    assert random_genotype(np.random.default_rng(8)) != a


def test_a_node_may_read_one_input_twice() -> None:
    """As the authors' random genotypes do (RANDOM_3's node 3 reads input 1 twice)."""
    data = _valid_json()
    data["normal"][1] = ["sep_conv_3x3", 0]
    assert Genotype.from_json(data).normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 0))
    assert GENOTYPES.get("random_3").normal[6:] == (("dil_conv_5x5", 1), ("dil_conv_5x5", 1))


def test_the_as_run_sampler_shares_a_nodes_input_as_their_random_genotype_py_does() -> None:
    """Their random_genotype.py draws each edge's input uniformly from 0..node+1 independently (and the
    op uniformly from the 7 non-'none' ops): node k repeats an input with probability 1/(k+2), every
    input is equally likely, and every op too. The "distinct" sampler never repeats one."""
    rng = np.random.default_rng(0)
    draws = 4000
    repeats, inputs, ops = np.zeros(4), np.zeros((4, 5)), {op: 0 for op in EDGE_OPS}
    for _ in range(draws):
        g = random_genotype(rng, sampling="as_run")
        for cell in (g.normal, g.reduce):
            for node in range(4):
                (op_a, in_a), (op_b, in_b) = cell[2 * node], cell[2 * node + 1]
                repeats[node] += in_a == in_b
                inputs[node, in_a] += 1
                inputs[node, in_b] += 1
                ops[op_a] += 1
                ops[op_b] += 1
    cells = 2 * draws
    expected = np.array([1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert np.all(np.abs(repeats / cells - expected) < 0.02)  # binomial sd ≤ 0.0056
    for node in range(4):
        share = inputs[node, : node + 2] / (2 * cells)
        assert np.all(np.abs(share - 1 / (node + 2)) < 0.02) and inputs[node, node + 2 :].sum() == 0
    share = np.array(list(ops.values())) / (8 * cells)
    assert np.all(np.abs(share - 1 / 7) < 0.01)
    distinct = [random_genotype(rng, sampling="distinct") for _ in range(200)]
    assert all(
        c[2 * k][1] != c[2 * k + 1][1] for g in distinct for c in (g.normal, g.reduce) for k in range(4)
    )


def test_random_genotypes_are_valid_and_use_every_op_but_none() -> None:
    rng = np.random.default_rng(0)
    seen_ops: set[str] = set()
    seen_inputs: set[tuple[int, int]] = set()
    for _ in range(200):
        g = random_genotype(rng)
        for cell in (g.normal, g.reduce):
            for node in range(4):
                (op_a, in_a), (op_b, in_b) = cell[2 * node], cell[2 * node + 1]
                assert in_a < in_b <= node + 1
                seen_ops |= {op_a, op_b}
                seen_inputs |= {(node, in_a), (node, in_b)}
    assert seen_ops == set(EDGE_OPS)
    assert seen_inputs == set(EDGES)


def test_random_genotype_draws_only_from_the_given_ops() -> None:
    g = random_genotype(np.random.default_rng(1), ops=("sep_conv_3x3", "max_pool_3x3"))
    assert {op for op, _ in g.normal + g.reduce} <= {"sep_conv_3x3", "max_pool_3x3"}
