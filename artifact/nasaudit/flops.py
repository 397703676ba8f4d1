"""FLOPs of one forward pass, measured by PyTorch itself on every torch the package supports.

FLOPs are NSGANetV2's second objective and part of ``nasaudit arch info``, so they must not depend on
the torch a run happens to use. ``torch.utils.flop_counter.FlopCounterMode`` (torch ≥ 2.1) counts 2
FLOPs per multiply-add of convolutions and matrix products. The images pin torch 2.0.1, which has no
flop_counter; there the profiler's FLOP estimates give the same numbers once restricted to the same
ops: it also counts element-wise ``mul`` and ``add``, which FlopCounterMode does not. None of those
ops calls another of them (convolutions and matrix products go straight to their kernels), so their
sum counts every product once. The profiler's event tree is not used: under torch 2.0.1 it loses
parents at random. The profiler cannot count convolutions other than ``aten::conv2d`` with numeric
padding; those are refused rather than silently left out. Both measurements are compared on both
search spaces' networks (tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.util import find_spec

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from nasaudit.errors import NasauditError

PROFILED_OPS = {"aten::conv2d", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def flop_counter_mode_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of ``model(x)`` by FlopCounterMode (torch ≥ 2.1)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def profiler_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of ``model(x)`` by the profiler's estimates, counted as FlopCounterMode counts them."""
    # Read when the profiler first starts: without it, torch 2.0's logs 3 lines for each of the hundreds
    # of measurements a search makes. A value the user set is kept.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        model(x)
    events = prof.events()
    conv2d = [event.flops for event in events if event.name == "aten::conv2d"]
    convolutions = sum(event.name == "aten::convolution" for event in events)  # every convolution's path
    if convolutions != len(conv2d) or not all(conv2d):
        raise NasauditError(
            "FLOPs on torch < 2.1 are counted only for 2-D convolutions with numeric padding, "
            "and this network has another convolution (1-D, 3-D, transposed or padding='same')"
        )
    return sum(event.flops for event in events if event.name in PROFILED_OPS)


MEASURE: Callable[[nn.Module, Tensor], int] = (
    flop_counter_mode_flops if find_spec("torch.utils.flop_counter") else profiler_flops
)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one eval-mode forward of a zero input of ``input_shape`` (batch dimension included).

    Zeros, because values do not change a count; eval mode, because that is the network deployed
    (no drop-path, no auxiliary head). The model's mode is restored afterwards.
    """
    param = next(model.parameters())
    x = torch.zeros(input_shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        return MEASURE(model, x)
    finally:
        model.train(was_training)
