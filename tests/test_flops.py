"""FLOP counting: the profiler path (torch < 2.1) gives FlopCounterMode's numbers on both spaces."""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import torch
from torch import nn

from nasaudit.errors import NasauditError
from nasaudit.flops import MEASURE, count_flops, flop_counter_mode_flops, profiler_flops
from nasaudit.spaces.darts import GENOTYPES, EvalNetwork
from nasaudit.spaces.mbv3 import MBV3Net, channel_plan, extreme_arch, random_arch

HAS_FLOP_COUNTER = find_spec("torch.utils.flop_counter") is not None
MEASUREMENTS = [profiler_flops] + ([flop_counter_mode_flops] if HAS_FLOP_COUNTER else [])
RES = [32, 36, 40]
# FlopCounterMode's totals (torch 2.14.1): what the profiler must also give where torch is older.
FLOPS = {
    "darts_v2": 14_785_024,
    "pdarts": 18_360_832,
    "mbv3-smallest": 956_976,
    "mbv3-largest": 8_420_832,
    "mbv3-random": 2_636_288,
}
NETWORKS = list(FLOPS)


def _network(name: str) -> nn.Module:
    """One of both spaces' networks, in eval mode; all are measured on 32×32 inputs, so the mbv3
    architectures at 36 and 40 are upscaled inside forward, which neither measurement counts."""
    torch.manual_seed(0)
    if not name.startswith("mbv3-"):
        return EvalNetwork(GENOTYPES.get(name), 8, 5, 10, auxiliary=True).eval()
    archs = {
        "mbv3-smallest": extreme_arch(RES, False),
        "mbv3-largest": extreme_arch(RES, True),
        "mbv3-random": random_arch(np.random.default_rng(0), RES),
    }
    return MBV3Net(archs[name], channel_plan(0.25), 10).eval()


@pytest.mark.skipif(not HAS_FLOP_COUNTER, reason="torch < 2.1 has no FlopCounterMode to compare with")
@pytest.mark.parametrize("name", NETWORKS)
def test_profiler_and_flop_counter_mode_agree_on_both_spaces(name: str) -> None:
    model, x = _network(name), torch.zeros(1, 3, 32, 32)
    assert profiler_flops(model, x) == flop_counter_mode_flops(model, x) > 0


@pytest.mark.parametrize("name", NETWORKS)
def test_count_flops_gives_flop_counter_modes_totals_on_this_torch(name: str) -> None:
    assert count_flops(_network(name), (1, 3, 32, 32)) == FLOPS[name]


@pytest.mark.parametrize("measure", MEASUREMENTS, ids=lambda f: f.__name__)
def test_two_flops_per_multiply_add_of_convolutions_and_matrix_products(measure) -> None:
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4)  # output 12×4×4; bias not counted
    assert measure(conv, torch.zeros(1, 8, 8, 8)) == 2 * 12 * 4 * 4 * (8 // 4) * 3 * 3
    linear = nn.Linear(6, 5)  # addmm; the bias addition is not counted
    assert measure(linear, torch.zeros(3, 6)) == 2 * 3 * 6 * 5
    batched = nn.Linear(6, 5, bias=False)  # a matrix product over a 3-D input
    assert measure(batched, torch.zeros(2, 3, 6)) == 2 * 2 * 3 * 6 * 5
    elementwise = nn.Sequential(nn.Hardswish(), nn.AdaptiveAvgPool2d(1))
    assert measure(elementwise, torch.zeros(1, 4, 8, 8)) == 0


@pytest.mark.parametrize(
    ("conv", "shape"),
    [(nn.Conv1d(3, 4, 3), (1, 3, 8)), (nn.Conv2d(3, 4, 3, padding="same"), (1, 3, 8, 8))],
    ids=["conv1d", "padding-same"],
)
def test_profiler_refuses_a_convolution_it_cannot_count(conv: nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(NasauditError, match="another convolution"):
        profiler_flops(conv, torch.zeros(shape))


def test_count_flops_uses_flop_counter_mode_where_torch_has_it() -> None:
    assert MEASURE is (flop_counter_mode_flops if HAS_FLOP_COUNTER else profiler_flops)
    assert count_flops(nn.Conv2d(3, 4, 1, bias=False), (2, 3, 5, 5)) == 2 * 2 * 4 * 5 * 5 * 3
