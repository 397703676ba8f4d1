"""The eight candidate operations of the DARTS search space and the two adapters cells need.

Every operation maps C channels to C channels (stride 2 halves the spatial size), so a cell can sum
any of them on any edge. ``affine=False`` is the supernet setting, where the architecture weights
rather than BatchNorm scale each operation. Spatial sizes may be odd (TE-NAS feeds 3×3 inputs): every
stride-2 operation then rounds up, so all of them still agree on the output shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.registry import Registry

#: The canonical order of the DARTS operations; architecture-weight columns follow it.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

OpFactory = Callable[[int, int, bool], nn.Module]
"""``(channels, stride, affine) -> module``: how every candidate operation is built."""

OPS: Registry[OpFactory] = Registry("DARTS operation")


class ReLUConvBN(nn.Sequential):
    """ReLU → conv → BN: the cells' 1×1 input preprocessing (pre-activation, as in DARTS)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class ReLUSepConvBN(nn.Sequential):
    """ReLU → depthwise k×k (optionally dilated) → pointwise 1×1 → BN.

    One of these with dilation 2 is a ``dil_conv``; two stacked with dilation 1 are a ``sep_conv``.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, dilation: int, affine: bool):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                channels,
                channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=channels,
                bias=False,
            ),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two 1×1 stride-2 convolutions on pixel grids offset by one.

    A single strided 1×1 conv would see only every other pixel; the offset second half covers the
    rest. The offset grid is zero-padded at the far edge, which changes nothing for even sizes and
    makes odd sizes round up like the other stride-2 operations.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_even = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_odd = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_even(x), self.conv_odd(shifted)], dim=1))


class Zero(nn.Module):
    """The 'none' operation: zeros of the output shape, so a cell can sum it like any other edge."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def extra_repr(self) -> str:
        return f"stride={self.stride}"

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


@OPS.register("none")
def _none(channels: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@OPS.register("max_pool_3x3")
def _max_pool(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@OPS.register("avg_pool_3x3")
def _avg_pool(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@OPS.register("skip_connect")
def _skip(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)


@OPS.register("sep_conv_3x3")
def _sep3(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        ReLUSepConvBN(channels, 3, stride, 1, affine), ReLUSepConvBN(channels, 3, 1, 1, affine)
    )


@OPS.register("sep_conv_5x5")
def _sep5(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        ReLUSepConvBN(channels, 5, stride, 1, affine), ReLUSepConvBN(channels, 5, 1, 1, affine)
    )


@OPS.register("dil_conv_3x3")
def _dil3(channels: int, stride: int, affine: bool) -> nn.Module:
    return ReLUSepConvBN(channels, 3, stride, 2, affine)


@OPS.register("dil_conv_5x5")
def _dil5(channels: int, stride: int, affine: bool) -> nn.Module:
    return ReLUSepConvBN(channels, 5, stride, 2, affine)
