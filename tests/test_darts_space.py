"""DARTS operations and the search supernet, in its P-DARTS and TE-NAS configurations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasaudit.spaces.darts import CELL_TYPES, EDGE_OPS, EDGES, MIXINGS, OPS, PRIMITIVES, Genotype, SuperNet
from nasaudit.spaces.darts.ops import FactorizedReduce


def test_ops_registry_holds_exactly_the_primitives() -> None:
    assert PRIMITIVES[0] == "none" and len(PRIMITIVES) == 8
    assert set(OPS.names()) == set(PRIMITIVES)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize(("size", "stride", "out"), [(8, 1, 8), (8, 2, 4), (3, 2, 2), (5, 1, 5)])
def test_every_op_keeps_channels_and_agrees_on_the_output_size(
    name: str, size: int, stride: int, out: int
) -> None:
    op = OPS.get(name)(4, stride, True)
    y = op(torch.randn(2, 4, size, size))
    assert y.shape == (2, 4, out, out)


def test_none_outputs_zeros_of_the_reduced_shape() -> None:
    y = OPS.get("none")(4, 2, False)(torch.randn(2, 4, 8, 8))
    assert y.shape == (2, 4, 4, 4) and not y.any()


def test_skip_connect_is_identity_or_factorized_reduce() -> None:
    assert isinstance(OPS.get("skip_connect")(4, 1, True), nn.Identity)
    assert isinstance(OPS.get("skip_connect")(4, 2, True), FactorizedReduce)


def test_avg_pool_excludes_padding_from_the_average() -> None:
    y = OPS.get("avg_pool_3x3")(1, 1, False)(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))  # border windows would be < 1 if padding counted


def test_sep_conv_is_two_stacked_separable_halves_and_dil_conv_one_dilated() -> None:
    sep = OPS.get("sep_conv_5x5")(4, 1, True)
    convs = [m for m in sep.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.groups) for c in convs] == [((5, 5), 4), ((1, 1), 1)] * 2
    dil = OPS.get("dil_conv_3x3")(4, 1, True)
    convs = [m for m in dil.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.dilation, c.groups) for c in convs] == [
        ((3, 3), (2, 2), 4),
        ((1, 1), (1, 1), 1),
    ]


def test_affine_flag_reaches_batchnorm() -> None:
    for affine in (True, False):
        bns = [m for m in OPS.get("sep_conv_3x3")(4, 1, affine).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bn.affine == affine for bn in bns)


def _pdarts(**kwargs: object) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(2, 5, 10, **kwargs)  # type: ignore[arg-type]


def test_supernet_forward_shape_and_layout() -> None:
    net = _pdarts()
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert net.alpha("normal").shape == net.alpha("reduce").shape == (len(EDGES), len(PRIMITIVES))
    assert all(len(cell.edges) == 14 for cell in net.cells)


def test_supernet_pdarts_defaults() -> None:
    net = _pdarts()
    bns = [m for m in net.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.affine for bn in bns)
    pool = net.cells[0].edges[0].ops["max_pool_3x3"]
    assert isinstance(pool, nn.Sequential) and isinstance(pool[1], nn.BatchNorm2d)
    stem_conv = net.stem[0]
    assert stem_conv.out_channels == 6 and stem_conv.kernel_size == (3, 3)


def test_arch_and_weight_parameters_are_disjoint_and_complete() -> None:
    net = _pdarts()
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert len(arch) == 2 and not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}


def test_softmax_mixing_is_over_active_ops_only() -> None:
    net = _pdarts()
    net.keep_ops("normal", 3, ["none", "sep_conv_3x3", "skip_connect"])
    w = net.mixing_weights("normal")
    assert torch.allclose(w.sum(dim=1), torch.ones(14))
    assert (w[3] > 0).tolist() == [p in ("none", "sep_conv_3x3", "skip_connect") for p in PRIMITIVES]


def test_keep_ops_shrinks_every_cell_of_that_type_in_place() -> None:
    net = _pdarts()
    before = sum(p.numel() for p in net.weight_parameters())
    net.keep_ops("reduce", 0, ["max_pool_3x3", "sep_conv_5x5"])
    for cell in net.cells:
        expected = ["max_pool_3x3", "sep_conv_5x5"] if cell.reduction else list(PRIMITIVES)
        assert list(cell.edges[0].ops) == expected
    assert net.candidates("reduce")[0] == ["max_pool_3x3", "sep_conv_5x5"]
    assert net.candidates("normal")[0] == list(PRIMITIVES)
    assert sum(p.numel() for p in net.weight_parameters()) < before
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="subset"):
        net.keep_ops("reduce", 0, ["dil_conv_3x3"])


def test_removed_edge_contributes_nothing_and_gradients_stay_finite() -> None:
    net = _pdarts()
    net.keep_ops("normal", 2, [])  # edge 2 = (node 1, input 0)
    assert net.candidates("normal")[2] == []
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    for alpha in net.arch_parameters():
        assert alpha.grad is not None and torch.isfinite(alpha.grad).all()
    assert not net.alpha("normal").grad[2].any()
    assert {inp for _, inp in net.genotype().normal[2:4]} == {1, 2}
    net.keep_ops("normal", 0, [])
    with pytest.raises(ValueError, match="fewer than 2"):
        net.genotype()  # node 0 is left with one edge


def test_genotype_follows_alpha_and_candidate_sets() -> None:
    net = _pdarts()
    with torch.no_grad():
        for t in CELL_TYPES:
            net.alpha(t).zero_()
            net.alpha(t)[:, PRIMITIVES.index("sep_conv_3x3")] = 1.0
            net.alpha(t)[:, PRIMITIVES.index("none")] = 5.0
        net.alpha("normal")[1, PRIMITIVES.index("dil_conv_5x5")] = 3.0
    g = net.genotype()
    assert isinstance(g, Genotype)
    assert g.normal[0] == ("dil_conv_5x5", 1)
    assert all(op == "sep_conv_3x3" for op, _ in g.reduce)
    net.keep_ops("normal", 1, ["none", "avg_pool_3x3"])
    assert net.genotype().normal[0] == ("sep_conv_3x3", 0)


def test_supernet_accepts_initial_candidate_sets_per_cell_type() -> None:
    normal = [["none", "sep_conv_3x3", "skip_connect"]] * 14
    reduce = [["max_pool_3x3", "dil_conv_5x5"]] * 14
    net = _pdarts(candidates_normal=normal, candidates_reduce=reduce)
    assert net.candidates("normal") == [["none", "skip_connect", "sep_conv_3x3"]] * 14  # primitives order
    assert list(net.cells[1].edges[5].ops) == ["max_pool_3x3", "dil_conv_5x5"]
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_skip_dropout_is_settable_and_only_on_identity_skips() -> None:
    net = _pdarts(skip_dropout=0.4)
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    normal_skip = net.cells[0].edges[0].ops["skip_connect"]
    assert normal_skip in dropouts and all(d.p == 0.4 for d in dropouts)
    assert isinstance(net.cells[1].edges[0].ops["skip_connect"], FactorizedReduce)  # stride 2: no dropout
    net.set_skip_dropout(0.7)
    assert all(d.p == 0.7 for d in dropouts)
    x = torch.ones(1, 2, 4, 4)
    normal_skip.train()
    assert (normal_skip(x) == 0).any()
    normal_skip.eval()
    assert torch.equal(normal_skip(x), x)


def _tenas(stem: bool = True) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(
        1,
        2,
        10,
        primitives=EDGE_OPS,
        reduction_cells=(1,),
        mixing="mean",
        affine=True,
        pool_bn=False,
        stem=stem,
        stem_multiplier=1,
        final_bn_relu=True,
    )


def test_tenas_scoring_net_layout() -> None:
    net = _tenas()
    assert "none" not in net.primitives and net.alpha("normal").shape == (14, 7)
    assert [c.reduction for c in net.cells] == [False, True]
    assert [len(c.edges[0].ops) for c in net.cells] == [7, 7]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.affine and bn.track_running_stats for bn in bns)
    assert isinstance(net.cells[0].edges[0].ops["avg_pool_3x3"], nn.AvgPool2d)  # no BN after pools
    assert isinstance(net.final[0], nn.BatchNorm2d) and net.final[0].num_features == 8
    assert net.classifier.in_features == 8
    assert net(torch.randn(3, 3, 8, 8)).shape == (3, 10)


def test_mean_mixing_is_the_plain_mean_of_surviving_ops() -> None:
    net = _tenas()
    with torch.no_grad():
        net.alpha("normal").normal_()  # α values play no part in mean mixing
    net.keep_ops("normal", 2, ["sep_conv_3x3", "skip_connect", "max_pool_3x3"])
    net.keep_ops("normal", 4, [])
    w = net.mixing_weights("normal")
    assert torch.allclose(w[0], torch.full((7,), 1 / 7))
    assert torch.allclose(w[2].sum(), torch.tensor(1.0)) and (w[2] > 0).sum() == 3
    assert not w[4].any()
    assert sorted(MIXINGS) == ["mean", "softmax"]


def test_mean_mixed_edge_equals_mean_of_its_ops() -> None:
    net = _tenas().eval()
    net.keep_ops("normal", 0, ["avg_pool_3x3", "max_pool_3x3"])
    edge = net.cells[0].edges[0]
    x = torch.randn(2, 1, 4, 4)
    expected = (nn.AvgPool2d(3, 1, 1, count_include_pad=False)(x) + nn.MaxPool2d(3, 1, 1)(x)) / 2
    assert torch.allclose(edge(x, net.mixing_weights("normal")[0]), expected)


def test_stemless_net_takes_single_channel_3x3_inputs() -> None:
    net = _tenas(stem=False)
    assert isinstance(net.stem, nn.Identity)
    assert net(torch.randn(5, 1, 3, 3)).shape == (5, 10)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert relus  # the linear-region counter hooks these modules


def test_bad_supernet_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        SuperNet(1, 2, 10, reduction_cells=(2,))
    with pytest.raises(ValueError, match="candidates"):
        SuperNet(1, 2, 10, primitives=EDGE_OPS, candidates_normal=[["none"]] * 14)
    with pytest.raises(ValueError, match="cell type"):
        SuperNet(1, 2, 10).alpha("reduction")
