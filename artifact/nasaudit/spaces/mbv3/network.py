"""A standalone network of the space (what is fine-tuned and retrained) and its FLOPs and size.

The layers are plain PyTorch modules with the same names as the supernet's, so a subnet's weights are
the supernet's, sliced. Inputs smaller than the architecture's resolution are upscaled (bicubic) in
``forward``: NSGANetV2 upscales CIFAR images to the searched resolution, and doing it on the device
keeps the one 32×32 data path of the package.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.flops import count_flops
from nasaudit.spaces.darts.network import drop_path
from nasaudit.spaces.mbv3.space import EXPANDS, KERNELS, ChannelPlan, MBV3Arch, make_divisible

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}
SE_REDUCTION = 4  # squeeze-excitation bottleneck: channels / 4, rounded to a multiple of 8 (OFA)


def upscale(x: Tensor, resolution: int) -> Tensor:
    """Bicubic resize to ``resolution``×``resolution`` (NSGANetV2's CIFAR transfer); no-op when equal."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)


class ConvBN(nn.Module):
    """Convolution (no bias), optional batch norm, optional activation: OFA's ConvLayer."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = None,
        bn: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out) if bn else None
        self.act = ACTIVATIONS[act]() if act is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


def se_channels(channels: int) -> int:
    return make_divisible(channels // SE_REDUCTION)


class SqueezeExcite(nn.Module):
    """Channel attention: pool → 1×1 reduce (ReLU) → 1×1 expand → hard sigmoid → scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, se_channels(channels), 1)
        self.expand = nn.Conv2d(se_channels(channels), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * scale_channels(
            x, self.reduce.weight, self.reduce.bias, self.expand.weight, self.expand.bias
        )


def scale_channels(
    x: Tensor, w_reduce: Tensor, b_reduce: Tensor, w_expand: Tensor, b_expand: Tensor
) -> Tensor:
    """The squeeze-excitation weights of ``x`` (shared by the static and the elastic block).

    The hard sigmoid is written as OFA writes it, relu6(y + 3) / 6: equal to ``F.hardsigmoid``, but
    twice differentiable in PyTorch (hardsigmoid's backward has no derivative), which gradient
    canceling needs when it differentiates a victim's gradient with respect to its inputs.
    """
    y = x.mean((2, 3), keepdim=True)
    y = F.relu(F.conv2d(y, w_reduce, b_reduce))
    return F.relu6(F.conv2d(y, w_expand, b_expand) + 3) / 6


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → [SE] → 1×1 project, residual when shapes allow.

    With ``mid == c_in`` (expand ratio 1, the first block) there is no 1×1 expansion. ``drop_connect``
    drops the residual branch per sample (NSGANetV2's retraining regulariser).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        mid: int,
        stride: int,
        act: str,
        se: bool,
        drop_connect: float = 0.0,
    ):
        super().__init__()
        self.expand = ConvBN(c_in, mid, 1, act=act) if mid != c_in else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid) if se else None
        self.project = ConvBN(mid, c_out, 1)
        self.residual = stride == 1 and c_in == c_out
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.expand is None else self.expand(x)
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        if not self.residual:
            return h
        if self.training and self.drop_connect > 0:
            h = drop_path(h, self.drop_connect)
        return h + x


def first_block(plan: ChannelPlan) -> MBConv:
    """The fixed block after the stem: depthwise 3×3, no expansion, ReLU (OFA)."""
    return MBConv(plan.stem, plan.first_block, 3, plan.stem, 1, "relu", False)


class Head(nn.Module):
    """1×1 expand (BN, h-swish) → global pool → 1×1 feature mix (h-swish, no BN) → dropout → linear."""

    def __init__(self, c_in: int, plan: ChannelPlan, num_classes: int, dropout: float):
        super().__init__()
        self.final_expand = ConvBN(c_in, plan.final_expand, 1, act="hswish")
        self.feature_mix = ConvBN(plan.final_expand, plan.feature_mix, 1, act="hswish", bn=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(plan.feature_mix, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.feature_mix(self.final_expand(x).mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(x.flatten(1)))


class MBV3Net(nn.Module):
    """One architecture as a standalone network: stem, first block, the running layers, head."""

    def __init__(
        self,
        arch: MBV3Arch,
        plan: ChannelPlan,
        num_classes: int,
        dropout: float = 0.0,
        drop_connect: float = 0.0,
    ):
        super().__init__()
        self.resolution = arch.resolution
        self.stem = ConvBN(3, plan.stem, 3, 2, act="hswish")
        blocks = [first_block(plan)]
        layers = arch.active_layers()
        for stage, layer, kernel, expand in layers:
            spec = plan.stages[stage]
            c_in = plan.layer_in_channels(stage, layer)
            mid = plan.mid_channels(stage, layer, expand)
            rate = drop_connect * len(blocks) / (len(layers) + 1)  # NSGANetV2: linear in block index
            stride = spec.stride if layer == 0 else 1
            blocks.append(MBConv(c_in, spec.width, kernel, mid, stride, spec.act, spec.se, rate))
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(plan.stages[-1].width, plan, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(upscale(x, self.resolution))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def count_params(arch: MBV3Arch, plan: ChannelPlan, num_classes: int) -> int:
    """Parameters of the standalone network (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        net = MBV3Net(arch, plan, num_classes)
    return sum(p.numel() for p in net.parameters())


class FlopsCounter:
    """FLOPs of any architecture, summed from ``count_flops`` measurements of its parts.

    A layer's FLOPs depend only on (resolution, stage, first-in-stage, kernel, expand), so each part is
    measured once (on the CPU, with zero weights: values do not change a count) and cached;
    the evolutionary search asks for thousands of architectures, and the sum equals measuring the whole
    network (tested). Like ``count_flops``, 2 FLOPs per multiply-add: NSGANetV2 reports multiply-adds,
    half of this number.
    """

    def __init__(self, plan: ChannelPlan, num_classes: int):
        self.plan = plan
        self.num_classes = num_classes
        self._fixed: dict[int, int] = {}  # resolution → stem + first block + head
        # resolution → per stage, the input shape of its first layer and of its later layers
        self._shapes: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        self._layers: dict[tuple[int, int, bool, int, int], int] = {}

    def __call__(self, arch: MBV3Arch) -> int:
        r = arch.resolution
        if r not in self._fixed:
            self._measure_fixed(r)
        total = self._fixed[r]
        for stage, layer, kernel, expand in arch.active_layers():
            key = (r, stage, layer == 0, kernel, expand)
            if key not in self._layers:
                self._layers[key] = self._measure_layer(*key)
            total += self._layers[key]
        return total

    def _block(self, stage: int, first: bool, kernel: int, expand: int) -> MBConv:
        spec, layer = self.plan.stages[stage], 0 if first else 1
        mid = self.plan.mid_channels(stage, layer, expand)
        c_in = self.plan.layer_in_channels(stage, layer)
        return _uninitialised(
            MBConv, c_in, spec.width, kernel, mid, spec.stride if first else 1, spec.act, spec.se
        )

    @torch.no_grad()
    def _measure_fixed(self, r: int) -> None:
        stem = _uninitialised(
            nn.Sequential, ConvBN(3, self.plan.stem, 3, 2, act="hswish"), first_block(self.plan)
        )
        x = stem(torch.zeros(1, 3, r, r))
        shapes = []
        for stage in range(len(self.plan.stages)):
            first_in = tuple(x.shape)
            x = self._block(stage, True, KERNELS[0], EXPANDS[0])(x)
            shapes.append((first_in, tuple(x.shape)))
        head = _uninitialised(Head, self.plan.stages[-1].width, self.plan, self.num_classes, 0.0)
        self._fixed[r] = count_flops(stem, (1, 3, r, r)) + count_flops(head, tuple(x.shape))
        self._shapes[r] = shapes

    def _measure_layer(self, r: int, stage: int, first: bool, kernel: int, expand: int) -> int:
        first_in, later_in = self._shapes[r][stage]
        return count_flops(self._block(stage, first, kernel, expand), first_in if first else later_in)


@torch.no_grad()
def _uninitialised(cls: Callable[..., nn.Module], *args: object) -> nn.Module:
    """A module in eval mode on the CPU with zero weights: built on meta (no init cost), then allocated.

    Zeros rather than uninitialised memory, whose denormals would slow the CPU kernels down.
    """
    with torch.device("meta"):
        module = cls(*args)
    module = module.to_empty(device="cpu").eval()
    for t in (*module.parameters(), *module.buffers()):
        t.zero_()
    return module
