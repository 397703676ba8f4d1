"""The evaluation network: reference sizes, auxiliary head, drop-path, FLOPs and ``arch_info``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nasaudit.errors import NasauditError
from nasaudit.spaces.darts import (
    GENOTYPES,
    EvalNetwork,
    Genotype,
    arch_info,
    count_flops,
    count_parameters,
    load,
)
from nasaudit.spaces.darts.network import Cell, drop_path


@pytest.mark.parametrize(("name", "millions"), [("darts_v2", 3.3), ("pdarts", 3.4)])
def test_reference_parameter_counts_at_c36_l20(name: str, millions: float) -> None:
    model = EvalNetwork(load(name), 36, 20, 10, auxiliary=True)
    params = count_parameters(model)
    assert abs(params / 1e6 - millions) <= 0.05
    assert count_parameters(model, exclude_auxiliary=False) > params


def test_darts_v2_count_is_exactly_the_published_one() -> None:
    # 3.3M in the DARTS paper; pinned exactly so that a structural change cannot slip through.
    assert count_parameters(EvalNetwork(GENOTYPES.get("darts_v2"), 36, 20, 10)) == 3_349_342


def _small(auxiliary: bool = True, name: str = "pdarts") -> EvalNetwork:
    torch.manual_seed(0)
    return EvalNetwork(GENOTYPES.get(name), 4, 5, 10, auxiliary=auxiliary)


def test_layout_reductions_at_one_and_two_thirds() -> None:
    model = _small()
    assert [c.reduction for c in model.cells] == [False, True, False, True, False]
    assert model.stem[0].out_channels == 12


def test_auxiliary_head_runs_only_in_training() -> None:
    model = _small()
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (2, 10)
    logits, aux = model.eval()(x)
    assert logits.shape == (2, 10) and aux is None
    logits, aux = _small(auxiliary=False).train()(x)
    assert aux is None


def test_drop_path_active_only_in_training() -> None:
    model = _small(auxiliary=False)
    model.drop_path_prob = 0.5
    x = torch.randn(4, 3, 16, 16)
    model.train()
    torch.manual_seed(1)
    a, _ = model(x)
    torch.manual_seed(2)
    b, _ = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.manual_seed(1)
    c, _ = model(x)
    torch.manual_seed(2)
    d, _ = model(x)
    assert torch.equal(c, d)


def _cell(ops: list[str]) -> Cell:
    pairs = [[op, inp] for op, inp in zip(ops, [0, 1, 0, 1, 0, 1, 0, 1], strict=True)]
    genotype = Genotype.from_json({"normal": pairs, "reduce": pairs})
    torch.manual_seed(0)
    return Cell(genotype, 4, 4, 4, reduction=False, reduction_prev=False).train()


def test_drop_path_skips_identity_ops() -> None:
    x0, x1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    identity_cell = _cell(["skip_connect"] * 8)
    assert torch.equal(identity_cell(x0, x1, 0.5), identity_cell(x0, x1, 0.0))
    conv_cell = _cell(["sep_conv_3x3"] * 8)
    torch.manual_seed(3)
    assert not torch.allclose(conv_cell(x0, x1, 0.5), conv_cell(x0, x1, 0.0))


def test_drop_path_masks_whole_samples_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    assert 0 < kept.sum() < 64
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert not per_sample[~kept].any()


def test_count_flops_uses_the_graph_and_restores_the_mode() -> None:
    model = _small().train()
    flops = count_flops(model, (1, 3, 32, 32))
    assert isinstance(flops, int) and flops > 0
    assert model.training
    assert count_flops(model, (1, 3, 16, 16)) < flops
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 3, 4, 4)) == 2 * 8 * 4 * 4 * 3 * 3 * 3  # 2 FLOPs per multiply-add


def test_arch_info_reports_genotype_params_and_flops() -> None:
    genotype = GENOTYPES.get("darts_v1")
    info = arch_info(genotype, 4, 5, 10, image_size=16)
    assert set(info) == {"genotype", "params", "flops"}
    assert Genotype.from_json(info["genotype"]) == genotype
    assert info["params"] == count_parameters(EvalNetwork(genotype, 4, 5, 10, auxiliary=True))
    assert info["flops"] > 0
    json.dumps(info)


@pytest.mark.parametrize("kwargs", [{"channels": 0}, {"layers": -1}, {"image_size": 2.5}])
def test_arch_info_rejects_bad_sizes_in_one_line(kwargs: dict[str, object]) -> None:
    args = {"channels": 4, "layers": 5, "num_classes": 10, **kwargs}
    with pytest.raises(NasauditError, match="must be a positive integer") as info:
        arch_info(GENOTYPES.get("pdarts"), **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
