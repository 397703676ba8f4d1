"""The evaluation network a genotype is retrained as (CIFAR-sized inputs), and its size and cost.

This is the network every searched architecture is judged by, so it follows the DARTS/P-DARTS
evaluation network exactly: its parameter count is the reference (DARTS V2 ≈ 3.3M, P-DARTS ≈ 3.4M at
C=36, 20 cells) and a mismatch would shift every accuracy the paper compares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasaudit.errors import NasauditError
from nasaudit.flops import count_flops
from nasaudit.spaces.darts.genotype import NODES, Genotype
from nasaudit.spaces.darts.ops import OPS, FactorizedReduce, ReLUConvBN


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples of an op's output with probability ``drop_prob``, rescaling the rest by 1/keep
    so the expected output is unchanged."""
    keep = 1.0 - drop_prob
    mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """A discrete cell: each node sums two ops on two earlier states; the output concatenates nodes."""

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ):
        super().__init__()
        self.reduction = reduction
        pairs, self.concat = genotype.cell(reduction)
        self.preprocess0: nn.Module = (
            FactorizedReduce(c_prev_prev, channels, True)
            if reduction_prev
            else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, True)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, True)
        self.ops = nn.ModuleList(
            OPS.get(name)(channels, 2 if reduction and inp < 2 else 1, True) for name, inp in pairs
        )
        self.op_names = [name for name, _ in pairs]
        self.inputs = [inp for _, inp in pairs]
        self.channels = channels
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(NODES):
            total = 0
            for k in (2 * node, 2 * node + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Extra classifier on the 8×8 features at 2/3 depth; its loss (weight 0.4) helps train deep nets."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class EvalNetwork(nn.Module):
    """Stem (3×3 conv, 3C channels, BN) → L cells, reductions at L//3 and 2L//3 → pool → linear.

    ``drop_path_prob`` is an attribute the training loop ramps per epoch. ``forward`` returns
    ``(logits, logits_aux)``; ``logits_aux`` is None unless the head exists and the net is training.
    """

    def __init__(self, genotype: Genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False):
        super().__init__()
        self.drop_path_prob = 0.0
        self.aux_index = 2 * layers // 3
        reductions = {layers // 3, 2 * layers // 3}
        c_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, channels, reduction_prev = c_stem, c_stem, C, False
        c_aux = c_prev
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            channels = channels * 2 if reduction else channels
            cell = Cell(genotype, c_prev_prev, c_prev, channels, reduction, reduction_prev)
            self.cells.append(cell)
            c_prev_prev, c_prev, reduction_prev = c_prev, cell.out_channels, reduction
            if i == self.aux_index:
                c_aux = c_prev
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return self.classifier(self.pool(s1).flatten(1)), logits_aux


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Parameter count as papers report it: the auxiliary head, used only in training, left out."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not (exclude_auxiliary and name.startswith("auxiliary_head."))
    )


def arch_info(
    genotype: Genotype, channels: int, layers: int, num_classes: int, image_size: int = 32
) -> dict[str, Any]:
    """What ``nasaudit arch info`` prints: the genotype, its parameters (no auxiliary head) and FLOPs."""
    for name, value in (
        ("channels", channels),
        ("layers", layers),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise NasauditError(
                f"{name} must be a positive integer, got {value!r}; e.g. channels 36, layers 20"
            )
    model = EvalNetwork(genotype, channels, layers, num_classes)
    return {
        "genotype": genotype.to_json(),
        "params": count_parameters(model),
        "flops": count_flops(model, (1, 3, image_size, image_size)),
    }
