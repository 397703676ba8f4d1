"""TE-NAS (Chen et al., 2021) as the paper ran it (ztcoalson/TENAS prune_tenas.py): pruning without training.

A tiny DARTS supernet starts with every candidate op on every edge. Two training-free scores judge
removing a piece of it: trainability, the condition number κ of the empirical NTK on one augmented
batch, and expressivity, the number R of linear regions over 3×3 one-channel crops. An op round scores
removing each remaining op of each multi-op edge (both cell types together), ranks Δκ descending and
ΔR ascending (as prune_tenas.py ranks: ``rank_ties``), and drops the ``prune_number`` ops of each edge
with the lowest rank sum; once every edge holds one op, each node keeps the 2 incoming edges whose
removal would cost most. Labels are never read, so label-flipping poisons cannot change the result.

How randomness is planned (our choice; the as-run code drew from shared loaders): every draw is seeded
by (seed, round, candidate, repeat, purpose), so a round depends only on the candidate sets it starts
from. The state saved after each round (those sets) is therefore all a killed search needs to resume
and end exactly as an uninterrupted one. Within a round, as run:

- the κ_NTK net is built once; the linear-region net (no stem, 1-channel input) once per candidate;
- each repeat draws a new batch; the candidate is the original net itself with the op (or edge) taken
  out and put back afterwards, so both see the same batch with identical weights;
- weights: ``init = "default"`` keeps PyTorch's construction-time init for all repeats (the released
  code's re-init never fires); ``"kaiming"`` re-draws them before every repeat (fan_out for the NTK
  net, fan_in for the linear-region net).

The edge stage is one round per node (normal cell then reduction, node 0 has only 2 edges), applied
greedily so later nodes are scored on the already pruned cell. As run (``edge_reference = "as_run"``),
its κ reference is one net of the cell the stage starts from, all 14 edges, built and weighted once
for all its candidates; each candidate is that net minus the edges pruned so far and the edge scored.
The linear-region nets are built per candidate on the pruned cell, as in the op rounds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from nasaudit import metrics_log
from nasaudit.batch_cap import capped
from nasaudit.config import Profile, TenasConfig
from nasaudit.costs import NUM_CLASSES, Timer, seeded_candidates
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import DeviceData, unit_pixels
from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, read_json, write_json
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext
from nasaudit.progress import bar
from nasaudit.proxies.linear_regions import linear_regions
from nasaudit.proxies.ntk import ntk_cond
from nasaudit.runs import check_record
from nasaudit.seeds import derive_seed
from nasaudit.spaces.darts import CELL_TYPES, CONCAT, EDGE_OPS, EDGES, NODES, Genotype, SuperNet

STATE = "tenas_state.json"
FORMAT = "nasaudit-tenas/2"
#: κ reference of the edge stage: "as_run", one net of the cell the stage starts from (all 14 edges,
#: prune_tenas.py:202-211), or "pruned", each node's round rebuilt on the cell pruned so far.
EDGE_REFERENCES = ("as_run", "pruned")

Candidates = dict[str, list[list[str]]]
"""Per cell type, the op names still present on each of the 14 edges (an empty list: edge removed)."""


# --- initialisation -----------------------------------------------------------------------------------

Initialiser = Callable[[nn.Module, str], None]
"""``(net, fan_mode)``: re-draws a scoring net's weights before each repeat (from the torch RNG)."""


def keep_default_init(net: nn.Module, mode: str) -> None:
    """As run: the released code's Kaiming re-init never fires, so PyTorch's construction init stays."""


def kaiming_init(net: nn.Module, mode: str) -> None:
    """Kaiming-normal conv and linear weights (ReLU gain), zero biases, BN γ = 1 and β = 0."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


#: [tenas] init -> how scoring nets are (re-)initialised (config.TenasConfig.init lists the choices)
INITS: dict[str, Initialiser] = {"default": keep_default_init, "kaiming": kaiming_init}


# --- seeds and scoring networks ---------------------------------------------------------------------


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body on the torch RNG of ``device`` seeded with ``seed``; the caller's RNG is untouched."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None or not cuda else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.manual_seed(seed)
        yield


def scoring_net(candidates: Candidates, cfg: TenasConfig, num_classes: int, stem: bool) -> SuperNet:
    """TE-NAS's scoring supernet (prune_tenas.py): C channels, a normal then a reduction cell, mean of the
    surviving ops per edge, pools without BN, affine BN with running statistics, final BN + ReLU, linear head.
    Without a stem (the linear-region net) its input has one channel.
    """
    return SuperNet(
        cfg.channels,
        2,
        num_classes,
        primitives=EDGE_OPS,
        candidates_normal=candidates["normal"],
        candidates_reduce=candidates["reduce"],
        reduction_cells=(1,),
        mixing="mean",
        affine=True,
        pool_bn=False,
        stem=stem,
        stem_multiplier=1,
        final_bn_relu=True,
    )


@dataclass(frozen=True)
class Removal:
    """Taking ``ops`` off one edge of every cell of a type (all of its ops: the edge itself)."""

    cell: str
    edge: int
    ops: tuple[str, ...]


@contextmanager
def without(net: SuperNet, removal: Removal) -> Iterator[None]:
    """``net`` minus ``removal`` inside the body, whole again afterwards.

    The candidate network is the original one with some modules taken out, so the two share every
    other weight and buffer exactly, with no copy (a deep copy of the 7-op supernet's ~700 modules
    takes ~0.1 s of CPU, per candidate and repeat).
    """
    active = net.active(removal.cell)
    mask = active[removal.edge].clone()
    edges = [cell.edges[removal.edge] for cell in net.cells if cell.reduction == (removal.cell == "reduce")]
    saved = [dict(edge.ops) for edge in edges]
    keep = [name for name in net.candidates(removal.cell)[removal.edge] if name not in removal.ops]
    net.keep_ops(removal.cell, removal.edge, keep)
    try:
        yield
    finally:
        active[removal.edge] = mask
        for edge, ops in zip(edges, saved, strict=True):
            edge.ops = nn.ModuleDict(ops)


# --- scoring -------------------------------------------------------------------------------------------


@dataclass
class Score:
    """One candidate removal's measurements: per repeat (original, without) κ and R, and the deltas."""

    removal: Removal
    kappa: list[tuple[float, float]]
    regions: list[tuple[float, float]]
    delta_kappa: list[float]
    delta_regions: list[float]

    @property
    def mean_delta_kappa(self) -> float:
        return float(np.mean(self.delta_kappa))

    @property
    def mean_delta_regions(self) -> float:
        return float(np.mean(self.delta_regions))


class Scorer:
    """Δκ and ΔR of candidate removals, with every draw seeded by its place in the search."""

    def __init__(self, data: ImageDataset, cfg: TenasConfig, seed: int, device: torch.device) -> None:
        self.cfg, self.seed, self.device = cfg, seed, device
        self.num_classes = data.num_classes
        self.train = DeviceData(data.train, data, device)
        self.mean = torch.tensor(data.mean, device=device)
        self.std = torch.tensor(data.std, device=device)
        self.init = INITS[cfg.init]

    def ntk_batch(self, seed: int) -> Tensor:
        """One augmented, normalised batch of training images (labels unused)."""
        images, _ = next(iter(self.train.batches(self.cfg.batch_size, seed=seed, augment=self.cfg.augment)))
        return images

    def region_inputs(self, seed: int) -> Tensor:
        """Random size×size crops of training images, one random channel each, normalised (n×1×s×s).

        Images are drawn without replacement, reshuffled whenever the split runs out, like a loader.
        """
        g = torch.Generator().manual_seed(seed)
        n, size = self.cfg.lr_batch_size * self.cfg.lr_batches, self.cfg.lr_input_size
        total, height, width, _ = self.train.images.shape
        index = torch.cat([torch.randperm(total, generator=g) for _ in range(-(-n // total))])[:n]
        top = torch.randint(0, height - size + 1, (n,), generator=g)
        left = torch.randint(0, width - size + 1, (n,), generator=g)
        channel = torch.randint(0, 3, (n,), generator=g)
        offsets = torch.arange(size)
        rows = (top[:, None] + offsets)[:, :, None]
        cols = (left[:, None] + offsets)[:, None, :]
        index, rows, cols, channel = (t.to(self.device) for t in (index, rows, cols, channel))
        crops = unit_pixels(self.train.images[index[:, None, None], rows, cols, channel[:, None, None]])
        x = (crops - self.mean[channel, None, None]) / self.std[channel, None, None]
        return x[:, None]

    def build(self, candidates: Candidates, stem: bool, seed: int) -> SuperNet:
        """A scoring net drawn on the CPU (the same weights on every device), then moved to the device."""
        with seeded(seed, torch.device("cpu")):
            net = scoring_net(candidates, self.cfg, self.num_classes, stem)
        return net.to(self.device)

    def score(
        self,
        round_index: int,
        candidates: Candidates,
        removals: Sequence[Removal],
        progress: tqdm,
        reference: Candidates | None = None,
    ) -> list[Score]:
        """Δκ = (κ − κ_without)/κ and ΔR = (R − R_without)/R of each removal, per repeat.

        With ``reference`` (the as-run edge stage), κ is that of the reference cell, whose net (and
        weights) depend on the reference alone, and κ_without that of the same net minus whatever
        ``candidates`` already lack and minus the removal; R is always measured on ``candidates``.
        """
        cfg, seed = self.cfg, self.seed
        if reference is None:
            ntk_net = self.build(candidates, True, derive_seed(seed, "tenas", round_index, "ntk_net"))
            pruned: list[Removal] = []
        else:
            ntk_net = self.build(reference, True, derive_seed(seed, "tenas", "edge_reference"))
            pruned = missing(reference, candidates)
        scores = []
        # all of them, unless the preflight's batch cap bounds the loop: each removal runs the same
        # nets and shapes, so a few per round exercise a round; the rest rank as unchanged (Δ = 0)
        scored = list(capped(removals))
        for i, removal in enumerate(scored):
            region_net = self.build(
                candidates, False, derive_seed(seed, "tenas", round_index, i, "region_net")
            )
            score = Score(removal, [], [], [], [])
            for repeat in range(cfg.repeats):
                key = (seed, "tenas", round_index, i, repeat)
                with seeded(derive_seed(*key, "ntk_init"), self.device):
                    self.init(ntk_net, "fan_out")
                batch = self.ntk_batch(derive_seed(*key, "ntk_batch"))
                kappa = ntk_cond(ntk_net, batch)
                with ExitStack() as stack:
                    for taken in (*pruned, removal):
                        stack.enter_context(without(ntk_net, taken))
                    kappa_without = ntk_cond(ntk_net, batch)
                with seeded(derive_seed(*key, "region_init"), self.device):
                    self.init(region_net, "fan_in")
                crops = self.region_inputs(derive_seed(*key, "region_inputs"))
                regions = linear_regions(region_net, crops, batch_size=cfg.lr_batch_size)
                with without(region_net, removal):
                    regions_without = linear_regions(region_net, crops, batch_size=cfg.lr_batch_size)
                score.kappa.append((kappa, kappa_without))
                score.regions.append((regions, regions_without))
                # As run: κ is a NumPy float there (np.nan_to_num, lib/procedures/ntk.py:65), so its
                # delta is rounded by NumPy; the region count is a Python float (prune_tenas.py:112,136).
                delta_kappa = np.float64((kappa - kappa_without) / kappa)
                score.delta_kappa.append(float(np.round(delta_kappa, cfg.precision)))
                score.delta_regions.append(round((regions - regions_without) / regions, cfg.precision))
                progress.update(1)
            scores.append(score)
        for removal in removals[len(scored) :]:  # measured nothing: kappa and regions stay empty
            scores.append(Score(removal, [], [], [0.0] * cfg.repeats, [0.0] * cfg.repeats))
            progress.update(cfg.repeats)
        return scores


def missing(reference: Candidates, candidates: Candidates) -> list[Removal]:
    """What ``candidates`` lack of ``reference``, as one removal per edge that lost ops."""
    out = []
    for cell in CELL_TYPES:
        for edge, (before, now) in enumerate(zip(reference[cell], candidates[cell], strict=True)):
            gone = tuple(op for op in before if op not in now)
            if gone:
                out.append(Removal(cell, edge, gone))
    return out


# --- ranking and rounds --------------------------------------------------------------------------------


def significant(value: float, figures: int) -> float:
    """``value`` rounded to ``figures`` significant figures (0 and non-finite values unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, figures - 1 - math.floor(math.log10(abs(value))))


def as_run_key(value: float, figures: int) -> float:
    """The sort key of ztcoalson/TENAS prune_tenas.py (``round_to``, lines 53-64, applied at 148 and 160).

    The magnitude plus 1e-8 is scaled into [0.1, 1) with ``math.log(x, 10)`` (not ``log10``: they differ
    at exact powers of ten) and rounded to ``figures`` decimals by NumPy's rounding, which is what
    Python's ``round`` does to the NumPy floats their means are. Reproduced arithmetic for arithmetic,
    so that equal and unequal keys fall exactly as theirs.
    """
    if value == 0:
        return value
    magnitude = abs(value) + 1e-8
    power = math.floor(math.log(magnitude, 10)) + 1
    scaled = float(np.round(np.float64(magnitude * 10.0**-power), figures))
    return math.copysign(1.0, value) * scaled * 10.0**power


Ranker = Callable[[Sequence[float], bool, int], list[int]]
"""``(values, descending, figures)`` → each value's rank from 0 (0 = first to prune)."""


def as_run_ranks(values: Sequence[float], descending: bool, figures: int) -> list[int]:
    """Ranks as prune_tenas.py gives them (lines 148-170): the values are stably sorted by
    :func:`as_run_key`, then walked in that order, each one sharing the previous one's rank only if
    the two unrounded values are exactly equal, else taking the next rank. Values equal to
    ``figures`` significant figures therefore keep their scoring order but get distinct ranks.
    """
    order = sorted(range(len(values)), key=lambda i: as_run_key(values[i], figures), reverse=descending)
    ranks = [0] * len(values)
    for previous, current in pairwise(order):
        ranks[current] = ranks[previous] + (values[current] != values[previous])
    return ranks


def dense_ranks(values: Sequence[float], descending: bool, figures: int) -> list[int]:
    """Dense ranks from 0 (equal values share a rank, the next value gets the next rank), comparing
    values rounded to ``figures`` significant figures: values equal at that precision tie."""
    keys = [significant(v, figures) for v in values]
    position = {key: rank for rank, key in enumerate(sorted(set(keys), reverse=descending))}
    return [position[key] for key in keys]


#: [tenas] rank_ties -> the rank rule (config.TenasConfig.rank_ties lists the choices)
RANK_TIES: dict[str, Ranker] = {"as_run": as_run_ranks, "rounded": dense_ranks}


@dataclass
class Ranked:
    """A scored removal with its two ranks (0 = first to prune) and its place in the scoring order."""

    score: Score
    rank_kappa: int
    rank_regions: int
    order: int

    @property
    def rank_sum(self) -> int:
        return self.rank_kappa + self.rank_regions

    def sort_key(self) -> tuple[int, int, int]:
        """Ascending = first to prune. Equal sums go by the Δκ rank, then the scoring order: the order
        of the as-run code's stable sorts (prune_tenas.py:172-173 sorts the ranks, kept in Δκ order)."""
        return (self.rank_sum, self.rank_kappa, self.order)


def rank(scores: Sequence[Score], precision: int, ties: str = "as_run") -> list[Ranked]:
    """Rank Δκ descending (a removal that lowers κ most ranks first, i.e. is pruned first) and ΔR
    ascending (a removal that costs the fewest regions ranks first); ``ties`` names the rank rule."""
    ranks = RANK_TIES[ties]
    by_kappa = ranks([s.mean_delta_kappa for s in scores], True, precision)
    by_regions = ranks([s.mean_delta_regions for s in scores], False, precision)
    return [Ranked(*entry, i) for i, entry in enumerate(zip(scores, by_kappa, by_regions, strict=True))]


class Round(Protocol):
    @property
    def size(self) -> int:
        """How many candidate removals the round scores."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def removals(self, candidates: Candidates) -> list[Removal]: ...

    def prune(self, candidates: Candidates, ranked: list[Ranked]) -> set[Removal]:
        """Which of the scored removals to carry out."""
        ...


@dataclass(frozen=True)
class OpRound:
    """Remove ``prune_number`` ops from every edge that has more than one (never its last op)."""

    prune_number: int
    ops: int  # per edge before the round

    @property
    def size(self) -> int:
        return len(CELL_TYPES) * len(EDGES) * self.ops

    def describe(self) -> dict[str, Any]:
        return {"kind": "ops", "prune_number": self.prune_number}

    def removals(self, candidates: Candidates) -> list[Removal]:
        return [
            Removal(cell, edge, (op,))
            for cell in CELL_TYPES
            for edge, ops in enumerate(candidates[cell])
            if len(ops) > 1
            for op in ops
        ]

    def prune(self, candidates: Candidates, ranked: list[Ranked]) -> set[Removal]:
        chosen: set[Removal] = set()
        per_edge: Counter[tuple[str, int]] = Counter()
        for item in sorted(ranked, key=Ranked.sort_key):
            removal = item.score.removal
            edge = (removal.cell, removal.edge)
            if per_edge[edge] < min(self.prune_number, len(candidates[removal.cell][removal.edge]) - 1):
                chosen.add(removal)
                per_edge[edge] += 1
        return chosen


@dataclass(frozen=True)
class EdgeRound:
    """Keep the 2 incoming edges of one node whose removal ranks last (largest rank sum)."""

    cell: str
    node: int

    @property
    def size(self) -> int:
        return self.node + 2

    def describe(self) -> dict[str, Any]:
        return {"kind": "edges", "cell": self.cell, "node": self.node}

    def removals(self, candidates: Candidates) -> list[Removal]:
        return [
            Removal(self.cell, edge, tuple(candidates[self.cell][edge]))
            for edge, (node, _) in enumerate(EDGES)
            if node == self.node and candidates[self.cell][edge]
        ]

    def prune(self, candidates: Candidates, ranked: list[Ranked]) -> set[Removal]:
        return {item.score.removal for item in sorted(ranked, key=Ranked.sort_key)[:-2]}


def plan(cfg: TenasConfig) -> list[Round]:
    """Op rounds until one op per edge (7 → 4 → 1 with prune_number 3), then one round per node."""
    rounds: list[Round] = []
    ops = len(cfg.ops)
    while ops > 1:
        rounds.append(OpRound(cfg.prune_number, ops))
        ops -= min(cfg.prune_number, ops - 1)
    rounds += [EdgeRound(cell, node) for cell in CELL_TYPES for node in range(1, NODES)]
    return rounds


def apply(candidates: Candidates, removals: set[Removal]) -> Candidates:
    out = {cell: [list(ops) for ops in edges] for cell, edges in candidates.items()}
    for removal in removals:
        ops = out[removal.cell][removal.edge]
        out[removal.cell][removal.edge] = [op for op in ops if op not in removal.ops]
    return out


def genotype_of(candidates: Candidates) -> Genotype:
    """Per node its 2 surviving edges (inputs ascending), each with its single op."""
    cells = {}
    for cell in CELL_TYPES:
        pairs = [(ops[0], inp) for (_, inp), ops in zip(EDGES, candidates[cell], strict=True) if ops]
        assert len(pairs) == 2 * NODES and all(len(ops) <= 1 for ops in candidates[cell]), candidates[cell]
        cells[cell] = pairs
    return Genotype(cells["normal"], CONCAT, cells["reduce"], CONCAT)


# --- the search ------------------------------------------------------------------------------------------


def check_config(cfg: TenasConfig, data: ImageDataset) -> None:
    """One-line errors for a [tenas] section that cannot run on ``data``."""
    if cfg.edge_reference not in EDGE_REFERENCES:
        raise NasauditError(
            f"profile [tenas] edge_reference must be one of {', '.join(EDGE_REFERENCES)}, "
            f"got {cfg.edge_reference!r}"
        )
    unknown = [op for op in cfg.ops if op not in EDGE_OPS]
    if not cfg.ops or unknown or len(set(cfg.ops)) != len(cfg.ops):
        raise NasauditError(
            f"profile [tenas] ops must list distinct names from {', '.join(EDGE_OPS)}; got {cfg.ops}"
        )
    minimum = {"channels": 1, "batch_size": 2, "repeats": 1, "prune_number": 1, "precision": 1,
               "lr_input_size": 1, "lr_batch_size": 1, "lr_batches": 1}  # fmt: skip
    for key, low in minimum.items():
        if getattr(cfg, key) < low:
            raise NasauditError(f"profile [tenas] {key} must be ≥ {low}, got {getattr(cfg, key)}")
    if cfg.lr_input_size > data.train.images.shape[1]:
        raise NasauditError(f"profile [tenas] lr_input_size {cfg.lr_input_size} exceeds the image size")
    if cfg.batch_size > len(data.train):
        raise NasauditError(f"{data.name}: {len(data.train)} training images, fewer than one κ_NTK batch")


def initial_candidates(cfg: TenasConfig) -> Candidates:
    ops = [op for op in EDGE_OPS if op in cfg.ops]
    return {cell: [list(ops) for _ in EDGES] for cell in CELL_TYPES}


def _identity(cfg: TenasConfig, data: ImageDataset, seed: int) -> dict[str, Any]:
    """What a job folder's state must match to be resumed."""
    return {"format": FORMAT, "seed": seed, "config": jsonable(cfg), "train_sha256": data.train.sha256}


def _load_state(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = read_json(path, "restarts the search from its first round")
    check_record(path, state, identity, key=None)
    return state


def run_round(
    scorer: Scorer,
    index: int,
    round_: Round,
    candidates: Candidates,
    progress: tqdm,
    reference: Candidates | None = None,
) -> tuple[Candidates, dict[str, Any]]:
    """Score, rank and prune one round (κ against ``reference``, if given; see :meth:`Scorer.score`);
    return the new candidate sets and the round's log."""
    start = time.perf_counter()
    removals = round_.removals(candidates)
    scores = scorer.score(index, candidates, removals, progress, reference)
    ranked = rank(scores, scorer.cfg.precision, scorer.cfg.rank_ties)
    pruned = round_.prune(candidates, ranked)
    after = apply(candidates, pruned)
    entries = [
        {
            "cell": item.score.removal.cell,
            "edge": item.score.removal.edge,
            "ops": list(item.score.removal.ops),
            "kappa": item.score.kappa,
            "regions": item.score.regions,
            "delta_kappa": item.score.delta_kappa,
            "delta_regions": item.score.delta_regions,
            "mean_delta_kappa": item.score.mean_delta_kappa,
            "mean_delta_regions": item.score.mean_delta_regions,
            "rank_kappa": item.rank_kappa,
            "rank_regions": item.rank_regions,
            "rank_sum": item.rank_sum,
            "pruned": item.score.removal in pruned,
        }
        for item in ranked
    ]
    log = {
        "round": index,
        **round_.describe(),
        "candidates_before": candidates,
        "kappa_reference": reference,
        "candidates_after": after,
        "scores": entries,
        "seconds": time.perf_counter() - start,
    }
    return after, log


def round_metrics(log: dict[str, Any]) -> dict[str, float]:
    """What a round's TensorBoard scalars show (``metrics_log``), from its log: the removals it scored
    and pruned, the pruned ones' mean Δκ and ΔR, the candidate ops left, and its seconds."""
    pruned = [entry for entry in log["scores"] if entry["pruned"]]
    metrics = {
        "candidates_scored": len(log["scores"]),
        "pruned": len(pruned),
        "ops_left": sum(len(ops) for edges in log["candidates_after"].values() for ops in edges),
        "seconds": log["seconds"],
    }
    if pruned:  # a mean of nothing is no point to plot
        metrics["pruned_mean_delta_kappa"] = float(np.mean([e["mean_delta_kappa"] for e in pruned]))
        metrics["pruned_mean_delta_regions"] = float(np.mean([e["mean_delta_regions"] for e in pruned]))
    return metrics


class TeNas(NasAlgorithm):
    space, label, image = "darts", "TE-NAS", "tenas"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        cfg, out = context.profile.tenas, context.out_dir
        check_config(cfg, data)
        identity = _identity(cfg, data, seed)
        rounds = plan(cfg)
        state = _load_state(out / STATE, identity) or {
            **identity,
            "rounds_done": 0,
            "candidates": initial_candidates(cfg),
        }
        candidates = state["candidates"]
        scorer = Scorer(data, cfg, seed, context.device)
        progress = bar(  # one step per repeat of a candidate's κ_NTK and linear-region measurement
            sum(r.size for r in rounds) * cfg.repeats,
            initial=sum(r.size for r in rounds[: state["rounds_done"]]) * cfg.repeats,
            enabled=context.progress,
            desc="tenas",
            unit="repeat",
        )
        for index in range(state["rounds_done"], len(rounds)):
            reference = None
            if isinstance(rounds[index], EdgeRound) and cfg.edge_reference == "as_run":
                # the cell the edge stage starts from, kept in the state for a resumed search
                reference = state.setdefault("edge_reference", candidates)
            candidates, log = run_round(scorer, index, rounds[index], candidates, progress, reference)
            metrics_log.record(out, index, round_metrics(log), out / f"tenas_round_{index:02d}.json", log)
            state = {**state, "rounds_done": index + 1, "candidates": candidates}
            write_json(out / STATE, state)
        progress.close()
        return genotype_of(candidates).to_json()

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """Each round's candidates × repeats × (κ_NTK + linear regions) of the net with and without one."""
        cfg = profile.tenas
        crops = (1, cfg.lr_input_size, cfg.lr_input_size)
        seconds = 0.0
        for round_ in plan(cfg):
            ops = round_.ops if isinstance(round_, OpRound) else 1  # the edge rounds: one op per edge
            kappa = timer.kappa(f"tenas/ntk{ops}", partial(_timing_net, cfg, ops, True), cfg.batch_size)
            regions = timer.forward_per_image(
                f"tenas/regions{ops}", partial(_timing_net, cfg, ops, False), cfg.lr_batch_size, shape=crops
            )
            seconds += round_.size * cfg.repeats * 2 * (kappa + cfg.lr_batches * cfg.lr_batch_size * regions)
        return seconds, 0.0


def _timing_net(cfg: TenasConfig, ops: int, stem: bool) -> SuperNet:
    """The scoring net with ``ops`` candidates per edge as `nasaudit plan` times it (``stem=False``: the
    linear-region net)."""
    return scoring_net(seeded_candidates(cfg.ops, ops, ops), cfg, NUM_CLASSES, stem)


NAS.register("tenas", uses=("tenas",))(TeNas())
