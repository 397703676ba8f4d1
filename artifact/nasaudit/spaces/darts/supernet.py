"""The DARTS weight-sharing supernet, configurable to serve as P-DARTS's search network and as the
tiny TE-NAS scoring networks.

How α are represented: each cell type has one parameter ``alpha_<type>`` of shape
``(14 edges, len(primitives))``, columns in the order of ``primitives`` (the space's op list), and a
boolean buffer ``active_<type>`` of the same shape saying which ops are still candidates on each edge.
Mixing weights are computed over the active entries only, so candidate sets can differ per edge and
shrink in place (``keep_ops``) without reshaping α: P-DARTS drops its weakest ops by reading
``mixing_weights`` and calling ``keep_ops``, TE-NAS prunes an op or a whole edge the same way, and the
NAS-specific gradient-canceling attack still sees α as two plain tensors. An edge with no candidates
left contributes nothing to its node. Entries of inactive ops get no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from nasaudit.spaces.darts.genotype import EDGES, NODES, Genotype, derive_genotype
from nasaudit.spaces.darts.ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN, Zero

CELL_TYPES = ("normal", "reduce")

Mixing = Callable[[Tensor, Tensor], Tensor]
"""``(alpha, active) -> per-op weights`` of shape (edges, ops), zero where an op is inactive."""


def softmax_mixing(alpha: Tensor, active: Tensor) -> Tensor:
    """DARTS / P-DARTS: softmax over each edge's active ops."""
    weights = torch.softmax(alpha.masked_fill(~active, float("-inf")), dim=-1)
    return torch.where(active, weights, torch.zeros_like(weights))  # an all-masked row's softmax is NaN


def mean_mixing(alpha: Tensor, active: Tensor) -> Tensor:
    """TE-NAS as run: the plain mean of each edge's surviving ops (α values play no part)."""
    weights = active.to(alpha.dtype)
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=1)


#: How a supernet mixes an edge's ops: fixed by the algorithm building it (P-DARTS, TE-NAS), no setting.
MIXINGS: dict[str, Mixing] = {"softmax": softmax_mixing, "mean": mean_mixing}


class MixedOp(nn.Module):
    """One supernet edge: the weighted sum of its candidate ops, whose set can shrink."""

    def __init__(
        self,
        channels: int,
        stride: int,
        primitives: Sequence[str],
        names: Iterable[str],
        affine: bool,
        pool_bn: bool,
        skip_dropout: float,
    ):
        super().__init__()
        self.column = {name: i for i, name in enumerate(primitives)}
        self.empty = Zero(stride)
        self.ops = nn.ModuleDict()
        for name in names:
            op = OPS.get(name)(channels, stride, affine)
            if pool_bn and "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=affine))
            elif isinstance(op, nn.Identity):
                op = nn.Dropout(skip_dropout)  # P-DARTS's dropout on the identity skip-connect
            self.ops[name] = op

    def keep(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [n for n in self.ops if n not in keep]:
            del self.ops[name]

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        if not self.ops:
            return self.empty(x)
        return sum(weights[self.column[name]] * op(x) for name, op in self.ops.items())


class SearchCell(nn.Module):
    """A supernet cell: each of the 4 nodes sums one MixedOp per earlier state (14 edges in all)."""

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[str],
        candidates: Sequence[Sequence[str]],
        affine: bool,
        pool_bn: bool,
        skip_dropout: float,
    ):
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (
            FactorizedReduce(c_prev_prev, channels, affine)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine)
        self.edges = nn.ModuleList(
            MixedOp(
                channels, 2 if reduction and inp < 2 else 1, primitives, names, affine, pool_bn, skip_dropout
            )
            for (_, inp), names in zip(EDGES, candidates, strict=True)
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        first = 0
        for _ in range(NODES):
            node = sum(self.edges[first + j](h, weights[first + j]) for j, h in enumerate(states))
            first += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    """Stem → cells (reductions double the channels) → [BN-ReLU] → global pool → linear.

    Defaults are P-DARTS's search network (softmax mixing, BN without affine, pools followed by BN,
    reductions at L//3 and 2L//3). TE-NAS's scoring nets are ``SuperNet(1, 2, classes,
    primitives=EDGE_OPS, reduction_cells=(1,), mixing="mean", affine=True, pool_bn=False,
    stem_multiplier=1, final_bn_relu=True)``, with ``stem=False`` for the linear-region net. Without a
    stem the input goes straight into the first cell and must have ``C * stem_multiplier`` channels.
    """

    def __init__(
        self,
        C: int,
        layers: int,
        num_classes: int,
        *,
        primitives: Sequence[str] = PRIMITIVES,
        candidates_normal: Sequence[Sequence[str]] | None = None,
        candidates_reduce: Sequence[Sequence[str]] | None = None,
        reduction_cells: Sequence[int] | None = None,
        mixing: Literal["softmax", "mean"] = "softmax",
        affine: bool = False,
        pool_bn: bool = True,
        skip_dropout: float = 0.0,
        stem: bool = True,
        stem_multiplier: int = 3,
        final_bn_relu: bool = False,
        alpha_std: float = 1e-3,
    ):
        super().__init__()
        self.primitives = tuple(primitives)
        unknown = [p for p in self.primitives if p not in OPS]
        if unknown:
            raise ValueError(f"unknown primitives {unknown}; choose from {PRIMITIVES}")
        self._mix = MIXINGS[mixing]
        reductions = set(reduction_cells if reduction_cells is not None else (layers // 3, 2 * layers // 3))
        if not reductions <= set(range(layers)):
            raise ValueError(f"reduction cells {sorted(reductions)} are outside 0..{layers - 1}")

        full = [self.primitives] * len(EDGES)
        sets = {
            "normal": full if candidates_normal is None else candidates_normal,
            "reduce": full if candidates_reduce is None else candidates_reduce,
        }
        for cell_type, cell_sets in sets.items():
            if len(cell_sets) != len(EDGES) or any(n not in self.primitives for s in cell_sets for n in s):
                raise ValueError(
                    f"{cell_type} candidates need {len(EDGES)} lists of names from {self.primitives}"
                )
            active = torch.tensor([[p in s for p in self.primitives] for s in cell_sets])
            self.register_buffer(f"active_{cell_type}", active)
            alpha = nn.Parameter(alpha_std * torch.randn(len(EDGES), len(self.primitives)))
            self.register_parameter(f"alpha_{cell_type}", alpha)

        c_stem = C * stem_multiplier
        self.stem: nn.Module = (
            nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
            if stem
            else nn.Identity()
        )
        c_prev_prev, c_prev, channels, reduction_prev = c_stem, c_stem, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            channels = channels * 2 if reduction else channels
            cell = SearchCell(
                c_prev_prev,
                c_prev,
                channels,
                reduction,
                reduction_prev,
                self.primitives,
                self.candidates("reduce" if reduction else "normal"),
                affine,
                pool_bn,
                skip_dropout,
            )
            self.cells.append(cell)
            c_prev_prev, c_prev, reduction_prev = c_prev, NODES * channels, reduction
        self.final: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(c_prev, affine=affine), nn.ReLU())
            if final_bn_relu
            else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def alpha(self, cell_type: str) -> nn.Parameter:
        # getattr, not get_parameter: under torch.func.functional_call (the batched κ_NTK) α is a plain
        # tensor, which get_parameter rejects.
        return getattr(self, f"alpha_{_check(cell_type)}")

    def active(self, cell_type: str) -> Tensor:
        return self.get_buffer(f"active_{_check(cell_type)}")

    def arch_parameters(self) -> list[nn.Parameter]:
        """α_normal, α_reduce: optimised by the architecture step (and targeted by NAS-specific GC)."""
        return [self.alpha(t) for t in CELL_TYPES]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: optimised by the weight step."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def mixing_weights(self, cell_type: str) -> Tensor:
        """Per-op weights of each edge, (14, len(primitives)), zero for ops no longer candidates."""
        return self._mix(self.alpha(cell_type), self.active(cell_type))

    def candidates(self, cell_type: str) -> list[list[str]]:
        """The names still present on each of the 14 edges, in primitives order."""
        return [
            [p for p, on in zip(self.primitives, row, strict=True) if on]
            for row in self.active(cell_type).tolist()
        ]

    def keep_ops(self, cell_type: str, edge: int, names: Iterable[str]) -> None:
        """Shrink one edge of every cell of a type to ``names`` (empty removes the edge), in place.

        The dropped ops' modules are deleted, so optimisers built before the call must be rebuilt.
        """
        names = list(names)
        current = self.candidates(cell_type)[edge]
        if not set(names) <= set(current):
            raise ValueError(f"{cell_type} edge {edge} can only keep a subset of {current}, got {names}")
        active = self.active(cell_type)
        active[edge] = torch.tensor([p in names for p in self.primitives], device=active.device)
        for cell in self.cells:
            if cell.reduction == (cell_type == "reduce"):
                cell.edges[edge].keep(names)

    def set_skip_dropout(self, p: float) -> None:
        """P-DARTS sets the identity skip-connect dropout per stage and decays it within the stage."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p

    def genotype(self) -> Genotype:
        """The DARTS discretisation of the current α over the current candidate sets."""
        rows = {}
        for t in CELL_TYPES:
            alpha, active = self.alpha(t).detach(), self.active(t)
            rows[t] = [alpha[e][active[e]] for e in range(len(EDGES))]
        return derive_genotype(
            rows["normal"], rows["reduce"], self.candidates("normal"), self.candidates("reduce")
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = {t: self.mixing_weights(t) for t in CELL_TYPES}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"])
        return self.classifier(self.pool(self.final(s1)).flatten(1))


def _check(cell_type: str) -> str:
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell type must be one of {CELL_TYPES}, got {cell_type!r}")
    return cell_type
