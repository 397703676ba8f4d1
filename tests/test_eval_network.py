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


def _reference_count(genotype: Genotype, C: int, layers: int, classes: int) -> int:
    """Parameters of the authors' NetworkCIFAR without its auxiliary head, counted from the structure
    of their model.py and operations.py (ztcoalson/pdarts): stem 3×3 conv + BN; per cell the two
    preprocessing ops (FactorizedReduce after a reduction, else ReLU-Conv1×1-BN), then one op per edge
    (SepConv = 2 × [depthwise k×k, pointwise, BN], DilConv = depthwise + pointwise + BN, pools and the
    identity none, skip at stride 2 = FactorizedReduce); BN is affine; the classifier has a bias."""

    def bn(c: int) -> int:
        return 2 * c

    def factorized(c_in: int, c_out: int) -> int:
        return 2 * c_in * (c_out // 2) + bn(c_out)

    def op(name: str, c: int, stride: int) -> int:
        kind, _, size = name.partition("_conv_")
        k = int(size[0]) if size else 0
        if kind == "sep":
            return 2 * (k * k * c + c * c + bn(c))
        if kind == "dil":
            return k * k * c + c * c + bn(c)
        return factorized(c, c) if name == "skip_connect" and stride == 2 else 0

    c_stem = 3 * C
    total = 3 * 9 * c_stem + bn(c_stem)
    c_pp, c_p, c, reduction_prev = c_stem, c_stem, C, False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if reduction else c
        pairs, concat = genotype.cell(reduction)
        total += factorized(c_pp, c) if reduction_prev else c_pp * c + bn(c)
        total += c_p * c + bn(c)
        total += sum(op(name, c, 2 if reduction and inp < 2 else 1) for name, inp in pairs)
        c_pp, c_p, reduction_prev = c_p, len(concat) * c, reduction
    return total + c_p * classes + classes


# RANDOM_1..10 at C = 36, L = 20 on CIFAR-10, from ``_reference_count``.
AUTHORS_RANDOM_PARAMS = {
    "random_1": 2_827_702, "random_2": 2_911_510, "random_3": 2_453_158, "random_4": 2_323_990,
    "random_5": 3_562_318, "random_6": 3_794_734, "random_7": 3_312_190, "random_8": 2_943_910,
    "random_9": 3_107_206, "random_10": 2_824_030,
}  # fmt: skip


def test_the_reference_count_reproduces_the_published_sizes() -> None:
    assert _reference_count(GENOTYPES.get("darts_v2"), 36, 20, 10) == 3_349_342  # DARTS: 3.3M
    assert _reference_count(GENOTYPES.get("pdarts"), 36, 20, 10) == 3_433_798  # P-DARTS: 3.4M


@pytest.mark.parametrize("name", sorted(AUTHORS_RANDOM_PARAMS))
def test_the_authors_random_genotypes_have_their_networks_size(name: str) -> None:
    genotype = GENOTYPES.get(name)
    for classes in (10, 100):
        ours = count_parameters(EvalNetwork(genotype, 36, 20, classes, auxiliary=True))
        assert ours == _reference_count(genotype, 36, 20, classes)
    assert count_parameters(EvalNetwork(genotype, 36, 20, 10)) == AUTHORS_RANDOM_PARAMS[name]


def test_a_node_reading_one_input_twice_applies_both_ops() -> None:
    genotype = GENOTYPES.get("random_3")  # normal node 3: dil_conv_5x5 on input 1, twice
    torch.manual_seed(0)
    net = EvalNetwork(genotype, 4, 3, 10).eval()
    cell = net.cells[0]
    assert cell.inputs[6] == cell.inputs[7] == 1 and cell.ops[6] is not cell.ops[7]
    x = torch.randn(2, 3, 32, 32)
    out, _ = net(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


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
