"""Time batched against per-sample κ_NTK on a TE-NAS-sized DARTS supernet, on CPU.

TE-NAS's search cost is dominated by κ_NTK on its scoring supernet (C = 1, one normal and one
reduction cell, 7 candidate ops on each of 14 edges; SPEC §5) with a batch of 14 CIFAR images. The
supernet below reproduces that shape so the timings transfer; it is self-contained so the benchmark
does not depend on nasaudit.spaces.

Run: ``python benchmarks/bench_proxies.py``
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from nasaudit.proxies.ntk import ntk_cond

BATCH, IMAGE_SIZE, CLASSES = 14, 32, 10
WARMUP, REPEATS = 1, 3


def _separable(c: int, kernel: int, stride: int, dilation: int = 1) -> list[nn.Module]:
    """The DARTS separable unit: ReLU, depthwise k×k, pointwise 1×1, BN."""
    padding = dilation * (kernel // 2)
    return [
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, stride, padding, dilation, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
    ]


def _sep_conv(c: int, kernel: int, stride: int) -> nn.Module:
    return nn.Sequential(*_separable(c, kernel, stride), *_separable(c, kernel, 1))


def _dil_conv(c: int, kernel: int, stride: int) -> nn.Module:
    return nn.Sequential(*_separable(c, kernel, stride, dilation=2))


def _relu_conv_bn(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class _FactorizedReduce(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))


class _MixedEdge(nn.Module):
    """TE-NAS's edge: the plain mean of its 7 candidate ops ('none' is never a candidate)."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        skip = nn.Identity() if stride == 1 else _FactorizedReduce(c, c)
        pools = [nn.MaxPool2d(3, stride, 1), nn.AvgPool2d(3, stride, 1, count_include_pad=False)]
        convs = [make(c, kernel, stride) for make in (_sep_conv, _dil_conv) for kernel in (3, 5)]
        self.ops = nn.ModuleList([*pools, skip, *convs])

    def forward(self, x: Tensor) -> Tensor:
        return sum(op(x) for op in self.ops) / len(self.ops)


class _Cell(nn.Module):
    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, nodes: int = 4) -> None:
        super().__init__()
        self.pre0 = _relu_conv_bn(c_prev_prev, c)
        self.pre1 = _relu_conv_bn(c_prev, c)
        self.edges = nn.ModuleList(
            _MixedEdge(c, 2 if reduction and j < 2 else 1) for i in range(nodes) for j in range(2 + i)
        )
        self.nodes = nodes

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        edges = iter(self.edges)
        for _ in range(self.nodes):
            states.append(sum(next(edges)(state) for state in states))
        return torch.cat(states[2:], dim=1)


class TenasLikeSupernet(nn.Module):
    """Stem, a normal cell (4·C channels), a reduction cell (8·C), BN + ReLU, pool, linear head."""

    def __init__(self, c: int = 1, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c))
        self.normal = _Cell(3 * c, 3 * c, c, reduction=False)
        self.reduce = _Cell(3 * c, 4 * c, 2 * c, reduction=True)
        self.head = nn.Sequential(
            nn.BatchNorm2d(8 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * c, classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        s0 = self.stem(x)
        s1 = self.normal(s0, s0)
        return self.head(self.reduce(s0, s1))


def _seconds_per_call(net: nn.Module, inputs: Tensor, batched: bool) -> tuple[float, float]:
    for _ in range(WARMUP):
        kappa = ntk_cond(net, inputs, None, batched=batched)
    start = time.perf_counter()
    for _ in range(REPEATS):
        ntk_cond(net, inputs, None, batched=batched)
    return (time.perf_counter() - start) / REPEATS, kappa


def main() -> None:
    torch.manual_seed(0)
    net = TenasLikeSupernet()
    inputs = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    print(f"κ_NTK, TE-NAS-like supernet ({sum(p.numel() for p in net.parameters())} parameters), "
          f"batch {BATCH}×3×{IMAGE_SIZE}×{IMAGE_SIZE}, CPU, {torch.get_num_threads()} threads")  # fmt: skip
    results = {}
    for label, batched in (("per-sample", False), ("batched", True)):
        seconds, kappa = _seconds_per_call(net, inputs, batched)
        results[label] = seconds
        print(f"  {label:10s}  {1 / seconds:7.2f} calls/s  {BATCH / seconds:8.1f} images/s  κ = {kappa:.6g}")
    print(f"  speed-up batched / per-sample: {results['per-sample'] / results['batched']:.2f}×")


if __name__ == "__main__":
    main()
