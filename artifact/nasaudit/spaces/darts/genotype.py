"""DARTS architectures as data: the Genotype, its JSON form, derivation from α, random sampling.

A genotype is what every search in this package hands to retraining, so it is immutable, validated
on construction (a bad file fails at load time, not 600 epochs later) and round-trips through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasaudit.errors import NasauditError
from nasaudit.registry import Registry
from nasaudit.spaces.darts.ops import PRIMITIVES

#: Intermediate nodes per cell; node i may take the two cell inputs (0, 1) and nodes 0..i-1 (2..i+1).
NODES = 4

#: ``(node, input)`` of each of the 14 supernet edges, in the order α rows use: node by node, inputs
#: ascending.
EDGES: tuple[tuple[int, int], ...] = tuple((node, inp) for node in range(NODES) for inp in range(node + 2))

#: All four nodes are concatenated into the cell output.
CONCAT: tuple[int, ...] = (2, 3, 4, 5)

#: The operations a discrete architecture may use on an edge ('none' means "no edge").
EDGE_OPS: tuple[str, ...] = tuple(op for op in PRIMITIVES if op != "none")

Pair = tuple[str, int]
AlphaLike = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray | Sequence[float]]

_JSON_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


@dataclass(frozen=True)
class Genotype:
    """Two cells, each 8 ``(op, input)`` pairs (2 per node) plus the nodes concatenated as output.

    A node's two edges may read the same input: the evaluation network applies both ops to it and sums
    them (the authors' model.py ``Cell.forward`` does the same), and the authors' random genotypes
    RANDOM_1..10 have such nodes. Derivation from α never produces one (it keeps 2 distinct edges).
    """

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in ("normal", "reduce"):
            object.__setattr__(self, cell, _validate_pairs(cell, getattr(self, cell)))
            concat = f"{cell}_concat"
            object.__setattr__(self, concat, _validate_concat(concat, getattr(self, concat)))

    def cell(self, reduction: bool) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
        """The pairs and concat of the reduction or the normal cell."""
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    def to_json(self) -> dict[str, list[Any]]:
        return {
            "normal": [[op, inp] for op, inp in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, inp] for op, inp in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_json(cls, data: Any) -> Genotype:
        """Build from the dict form; the concat lists may be omitted (all four nodes)."""
        if not isinstance(data, dict):
            raise NasauditError(
                f"a genotype must be a JSON object with keys {', '.join(_JSON_KEYS)}; "
                f"got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_JSON_KEYS))
        if unknown:
            raise NasauditError(
                f"genotype has unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_JSON_KEYS)}"
            )
        missing = [key for key in ("normal", "reduce") if key not in data]
        if missing:
            raise NasauditError(f"genotype lacks {' and '.join(missing)}; give 8 [op, input] pairs for each")
        return cls(
            normal=data["normal"],
            normal_concat=data.get("normal_concat", CONCAT),
            reduce=data["reduce"],
            reduce_concat=data.get("reduce_concat", CONCAT),
        )


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _validate_pairs(cell: str, pairs: Any) -> tuple[Pair, ...]:
    if not _is_list(pairs):
        raise NasauditError(
            f"genotype {cell} cell is {pairs!r}; give a list of {2 * NODES} [op, input] pairs"
        )
    if len(pairs) != 2 * NODES:
        raise NasauditError(
            f"genotype {cell} cell has {len(pairs)} edges; a DARTS cell needs exactly {2 * NODES} "
            f"[op, input] pairs, 2 per node"
        )
    out: list[Pair] = []
    for k, pair in enumerate(pairs):
        node = k // 2
        if not _is_list(pair) or len(pair) != 2:
            raise NasauditError(
                f"genotype {cell} cell: edge {k} is {pair!r}; write it as an [op, input] pair"
            )
        op, inp = pair
        if op not in EDGE_OPS:  # 'none' means "no edge": a chosen edge always carries an operation
            raise NasauditError(
                f"genotype {cell} cell uses op {op!r} on edge {k}, not an edge operation; "
                f"choose one of: {', '.join(EDGE_OPS)}"
            )
        if not _is_int(inp) or not 0 <= inp <= node + 1:
            raise NasauditError(
                f"genotype {cell} cell: node {node} takes input {inp!r}, but node {node} can only take "
                f"inputs 0..{node + 1} (the two cell inputs, then earlier nodes)"
            )
        out.append((str(op), int(inp)))
    return tuple(out)


def _validate_concat(name: str, concat: Any) -> tuple[int, ...]:
    ok = (
        _is_list(concat)
        and len(concat) > 0
        and all(_is_int(i) for i in concat)
        and len(set(concat)) == len(concat)
        and set(concat) <= set(CONCAT)
    )
    if not ok:
        raise NasauditError(
            f"genotype {name} {concat!r} is invalid; list distinct node indices from "
            f"{CONCAT[0]}..{CONCAT[-1]}, e.g. {list(CONCAT)}"
        )
    return tuple(int(i) for i in concat)


GENOTYPES: Registry[Genotype] = Registry("genotype")


def _published(normal: str, reduce: str) -> Genotype:
    """Parse the compact "op input, op input, ..." notation the published genotypes are listed in."""

    def pairs(text: str) -> tuple[Pair, ...]:
        return tuple((op, int(inp)) for op, inp in (item.split() for item in text.split(",")))

    return Genotype(normal=pairs(normal), normal_concat=CONCAT, reduce=pairs(reduce), reduce_concat=CONCAT)


# DARTS (Liu et al., 2019), first-order search, CIFAR-10.
GENOTYPES.register("darts_v1")(
    _published(
        "sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 0, sep_conv_3x3 1,"
        "skip_connect 0, sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 0,"
        "max_pool_3x3 0, skip_connect 2, skip_connect 2, avg_pool_3x3 0",
    )
)
# DARTS (Liu et al., 2019), second-order search, CIFAR-10: 2.76% error, 3.3M parameters.
GENOTYPES.register("darts_v2")(
    _published(
        "sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 0, sep_conv_3x3 1,"
        "sep_conv_3x3 1, skip_connect 0, skip_connect 0, dil_conv_3x3 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 1,"
        "max_pool_3x3 0, skip_connect 2, skip_connect 2, max_pool_3x3 1",
    )
)
# P-DARTS (Chen et al., 2019), CIFAR-10: 2.50% error, 3.4M parameters.
GENOTYPES.register("pdarts")(
    _published(
        "skip_connect 0, dil_conv_3x3 1, skip_connect 0, sep_conv_3x3 1,"
        "sep_conv_3x3 1, sep_conv_3x3 3, sep_conv_3x3 0, dil_conv_5x5 4",
        "avg_pool_3x3 0, sep_conv_5x5 1, sep_conv_3x3 0, dil_conv_5x5 2,"
        "max_pool_3x3 0, dil_conv_3x3 1, dil_conv_3x3 1, dil_conv_5x5 3",
    )
)
# TE-NAS (Chen et al., 2021), TENAS_cifar10: 2.63% error, 3.8M parameters.
GENOTYPES.register("tenas")(
    _published(
        "dil_conv_3x3 0, sep_conv_5x5 1, sep_conv_3x3 0, sep_conv_3x3 2,"
        "skip_connect 0, dil_conv_5x5 1, sep_conv_3x3 1, sep_conv_5x5 3",
        "sep_conv_5x5 0, sep_conv_5x5 1, sep_conv_5x5 1, sep_conv_5x5 2,"
        "sep_conv_3x3 1, sep_conv_3x3 3, sep_conv_5x5 2, sep_conv_3x3 4",
    )
)

# The ten random architectures the paper's authors retrained as the random-sampling baseline (paper §4:
# 96.73% CIFAR-10, 80.70% CIFAR-100): RANDOM_1..RANDOM_10 of ztcoalson/pdarts genotypes.py (lines 83-92,
# commit 3a0beff), drawn by its random_genotype.py; run_train.sh trains them by name (--arch RANDOM_k).
AUTHORS_RANDOM: dict[str, tuple[str, str]] = {
    "random_1": (
        "sep_conv_5x5 1, max_pool_3x3 1, skip_connect 0, sep_conv_5x5 0, max_pool_3x3 0,"
        " dil_conv_5x5 1, max_pool_3x3 0, dil_conv_5x5 4",
        "sep_conv_5x5 1, sep_conv_3x3 1, dil_conv_3x3 1, skip_connect 1, max_pool_3x3 3,"
        " skip_connect 0, max_pool_3x3 1, dil_conv_5x5 2",
    ),
    "random_2": (
        "dil_conv_3x3 0, skip_connect 0, max_pool_3x3 1, dil_conv_5x5 1, sep_conv_3x3 0,"
        " avg_pool_3x3 0, dil_conv_3x3 3, sep_conv_3x3 0",
        "dil_conv_3x3 1, sep_conv_5x5 1, sep_conv_3x3 0, skip_connect 0, max_pool_3x3 2,"
        " skip_connect 1, max_pool_3x3 4, sep_conv_3x3 0",
    ),
    "random_3": (
        "avg_pool_3x3 1, dil_conv_5x5 1, dil_conv_5x5 2, skip_connect 0, avg_pool_3x3 2,"
        " max_pool_3x3 3, dil_conv_5x5 1, dil_conv_5x5 1",
        "dil_conv_3x3 0, max_pool_3x3 1, sep_conv_5x5 1, sep_conv_5x5 0, skip_connect 0,"
        " dil_conv_3x3 2, sep_conv_3x3 1, max_pool_3x3 3",
    ),
    "random_4": (
        "skip_connect 0, dil_conv_3x3 0, avg_pool_3x3 2, max_pool_3x3 1, skip_connect 3,"
        " dil_conv_5x5 0, sep_conv_3x3 1, max_pool_3x3 0",
        "sep_conv_3x3 1, skip_connect 1, dil_conv_5x5 2, max_pool_3x3 2, dil_conv_5x5 3,"
        " avg_pool_3x3 3, dil_conv_5x5 3, dil_conv_5x5 2",
    ),
    "random_5": (
        "dil_conv_3x3 0, sep_conv_3x3 0, dil_conv_5x5 1, sep_conv_3x3 1, sep_conv_5x5 2,"
        " avg_pool_3x3 0, sep_conv_5x5 1, avg_pool_3x3 3",
        "avg_pool_3x3 0, dil_conv_5x5 1, dil_conv_5x5 2, dil_conv_5x5 2, avg_pool_3x3 2,"
        " sep_conv_3x3 3, sep_conv_3x3 3, sep_conv_5x5 3",
    ),
    "random_6": (
        "sep_conv_5x5 0, avg_pool_3x3 1, sep_conv_3x3 2, dil_conv_5x5 0, sep_conv_3x3 2,"
        " dil_conv_5x5 1, dil_conv_3x3 2, sep_conv_5x5 3",
        "sep_conv_3x3 0, dil_conv_5x5 1, dil_conv_3x3 0, max_pool_3x3 2, avg_pool_3x3 2,"
        " sep_conv_5x5 0, sep_conv_5x5 1, sep_conv_3x3 3",
    ),
    "random_7": (
        "dil_conv_3x3 0, sep_conv_3x3 0, skip_connect 1, max_pool_3x3 2, sep_conv_3x3 2,"
        " sep_conv_5x5 3, sep_conv_5x5 4, skip_connect 1",
        "dil_conv_5x5 1, max_pool_3x3 0, skip_connect 2, sep_conv_3x3 2, skip_connect 1,"
        " sep_conv_3x3 2, skip_connect 0, dil_conv_3x3 4",
    ),
    "random_8": (
        "sep_conv_3x3 1, avg_pool_3x3 0, dil_conv_3x3 0, dil_conv_5x5 1, sep_conv_5x5 1,"
        " avg_pool_3x3 1, dil_conv_3x3 0, skip_connect 0",
        "skip_connect 0, sep_conv_5x5 0, max_pool_3x3 1, dil_conv_3x3 2, dil_conv_3x3 1,"
        " dil_conv_5x5 2, sep_conv_5x5 4, max_pool_3x3 2",
    ),
    "random_9": (
        "dil_conv_3x3 0, sep_conv_5x5 0, skip_connect 0, sep_conv_5x5 0, dil_conv_5x5 1,"
        " max_pool_3x3 2, dil_conv_3x3 0, dil_conv_3x3 3",
        "max_pool_3x3 1, sep_conv_3x3 1, max_pool_3x3 2, sep_conv_3x3 2, max_pool_3x3 3,"
        " skip_connect 3, sep_conv_5x5 1, skip_connect 3",
    ),
    "random_10": (
        "skip_connect 1, dil_conv_5x5 1, skip_connect 1, dil_conv_3x3 2, max_pool_3x3 1,"
        " sep_conv_3x3 2, sep_conv_5x5 4, avg_pool_3x3 2",
        "sep_conv_5x5 0, skip_connect 1, dil_conv_5x5 1, dil_conv_3x3 1, dil_conv_5x5 2,"
        " skip_connect 2, sep_conv_5x5 2, sep_conv_3x3 0",
    ),
}
for _name, (_normal, _reduce) in AUTHORS_RANDOM.items():
    GENOTYPES.register(_name)(_published(_normal, _reduce))


def load(name_or_path: str | Path) -> Genotype:
    """A registered reference genotype by name, or one read from a JSON file.

    The file holds the genotype object itself or any result object with a ``"genotype"`` key (a
    search result), so a search's output can be passed on as-is.
    """
    if isinstance(name_or_path, str) and name_or_path in GENOTYPES:
        return GENOTYPES.get(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise NasauditError(
            f"genotype {str(name_or_path)!r} is neither a known name ({', '.join(GENOTYPES.names())}) "
            f"nor an existing file; pass one of those names or the path of a genotype JSON file"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NasauditError(f"cannot read genotype file {path}: {err}; it must be a JSON object") from None
    if isinstance(data, dict) and "genotype" in data:
        data = data["genotype"]
    try:
        return Genotype.from_json(data)
    except NasauditError as err:
        raise NasauditError(f"{path}: {err}") from None


def derive_genotype(
    alpha_normal: AlphaLike,
    alpha_reduce: AlphaLike,
    candidates_normal: Sequence[Sequence[str]] | None = None,
    candidates_reduce: Sequence[Sequence[str]] | None = None,
) -> Genotype:
    """Discretise architecture weights the DARTS way.

    Row ``e`` of an α holds one logit per name in ``candidates[e]`` (the edge's *current* candidate
    set, which may have shrunk, may differ between edges and may be empty). Per edge the weights are
    the softmax over that row; per node the 2 incoming edges whose strongest non-'none' weight is
    largest are kept, each with its strongest non-'none' op. Ties go to the lower edge and the earlier
    op. Candidate sets default to all of PRIMITIVES; the reduce cell's default to the normal cell's.
    """
    normal_sets = candidates_normal if candidates_normal is not None else [PRIMITIVES] * len(EDGES)
    reduce_sets = candidates_reduce if candidates_reduce is not None else normal_sets
    return Genotype(
        normal=_derive_cell(_rows(alpha_normal), normal_sets),
        normal_concat=CONCAT,
        reduce=_derive_cell(_rows(alpha_reduce), reduce_sets),
        reduce_concat=CONCAT,
    )


def _rows(alpha: AlphaLike) -> list[np.ndarray]:
    """One float64 array per edge; rows may be tensors (on any device) of different lengths."""
    return [
        row.detach().to("cpu", torch.float64).numpy()
        if isinstance(row, torch.Tensor)
        else np.asarray(row, dtype=np.float64)
        for row in alpha
    ]


def _derive_cell(rows: list[np.ndarray], candidates: Sequence[Sequence[str]]) -> tuple[Pair, ...]:
    if len(rows) != len(EDGES) or len(candidates) != len(EDGES):
        raise ValueError(
            f"need {len(EDGES)} α rows and candidate sets, got {len(rows)} and {len(candidates)}"
        )
    best: dict[int, tuple[float, str]] = {}  # edge -> (weight, op) of its strongest non-'none' op
    for e, (row, names) in enumerate(zip(rows, candidates, strict=True)):
        if row.shape != (len(names),):
            raise ValueError(f"edge {e}: α row has shape {row.shape} but {len(names)} candidate ops")
        if not len(names):
            continue
        weights = np.exp(row - row.max())
        weights /= weights.sum()
        scored = [(float(w), name) for w, name in zip(weights, names, strict=True) if name != "none"]
        if scored:
            best[e] = max(scored, key=lambda s: s[0])
    pairs: list[Pair] = []
    first = 0
    for node in range(NODES):
        edges = [e for e in range(first, first + node + 2) if e in best]
        if len(edges) < 2:
            raise ValueError(f"node {node} has fewer than 2 incoming edges with a non-'none' candidate")
        for e in sorted(edges, key=lambda e: -best[e][0])[:2]:
            pairs.append((best[e][1], EDGES[e][1]))
        first += node + 2
    return tuple(pairs)


NodeSampler = Callable[[np.random.Generator, int, Sequence[str]], list[Pair]]
"""``(rng, node, ops) -> the node's 2 (op, input) pairs``: one way of drawing a random cell."""

SAMPLINGS: Registry[NodeSampler] = Registry("random_baseline sampling")


@SAMPLINGS.register("as_run")
def _independent_inputs(rng: np.random.Generator, node: int, ops: Sequence[str]) -> list[Pair]:
    """The authors' random_genotype.py (ztcoalson/pdarts, line 21): each edge draws its op uniformly
    and its input uniformly from 0..node+1, independently, so a node's 2 edges share an input with
    probability 1/(node+2)."""
    return [(ops[int(rng.integers(len(ops)))], int(rng.integers(node + 2))) for _ in range(2)]


@SAMPLINGS.register("distinct")
def _distinct_inputs(rng: np.random.Generator, node: int, ops: Sequence[str]) -> list[Pair]:
    """Per node 2 distinct inputs (ascending), then an op drawn uniformly per edge: the space as
    derivation produces it."""
    inputs = sorted(rng.choice(node + 2, size=2, replace=False).tolist())
    return [(ops[int(rng.integers(len(ops)))], int(inp)) for inp in inputs]


def random_genotype(
    rng: np.random.Generator, ops: Sequence[str] = EDGE_OPS, sampling: str = "distinct"
) -> Genotype:
    """A random genotype: each node's 2 edges drawn by ``SAMPLINGS[sampling]``, normal cell first.

    This is the random-sampling baseline's sampler; the same generator state gives the same genotype.
    """
    if not ops:
        raise ValueError("random_genotype needs at least one op to draw from")
    draw = SAMPLINGS.get(sampling)

    def cell() -> tuple[Pair, ...]:
        return tuple(pair for node in range(NODES) for pair in draw(rng, node, ops))

    normal = cell()
    return Genotype(normal=normal, normal_concat=CONCAT, reduce=cell(), reduce_concat=CONCAT)
