"""StackedNetworks: K DARTS evaluation networks computed as one, each member exactly as alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nasaudit.errors import NasauditError
from nasaudit.spaces.darts import GENOTYPES, EvalNetwork, random_genotype
from nasaudit.spaces.darts.stacked import StackedNetworks, scored_layers


def _nets(count: int, seed: int = 0) -> list[EvalNetwork]:
    rng = np.random.default_rng(seed)
    nets = []
    for k in range(count):
        torch.manual_seed(100 + k)
        nets.append(EvalNetwork(random_genotype(rng), 3, 3, 5).double().train())
    return nets


def test_each_member_of_the_stack_computes_its_own_network_in_train_mode() -> None:
    nets = _nets(4)
    ops = {tuple(cell.op_names) for net in nets for cell in net.cells}
    assert len(ops) == 8  # 4 normal and 4 reduction cells: different ops, inputs and strides per slot
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    expected = torch.stack([net(x)[0] for net in nets], dim=1)
    stack = StackedNetworks(nets).train()
    out = stack(x[:, None].expand(-1, 4, -1, -1, -1))
    assert out.shape == (6, 4, 5)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # member k's logits depend on member k's input copy only
    probe = x[:, None].expand(-1, 4, -1, -1, -1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(stack(probe)[:, 1].sum(), probe)
    assert grad[:, 1].abs().sum() > 0 and grad[:, [0, 2, 3]].abs().sum() == 0


def test_stacking_copies_the_members_and_tags_every_scored_layer() -> None:
    nets = _nets(3, seed=1)
    before = [copy.deepcopy(net.state_dict()) for net in nets]
    stack = StackedNetworks(nets)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(1.0)
    for net, state in zip(nets, before, strict=True):
        for name, tensor in net.state_dict().items():
            assert torch.equal(tensor, state[name]), name
    members_seen = set()
    for layer in scored_layers(stack):
        assert len(layer.weight) % len(layer.members) == 0  # whole blocks of output channels per member
        members_seen |= set(layer.members.tolist())
    assert members_seen == {0, 1, 2}
    assert not any(name.endswith("members") for name in stack.state_dict())


def test_networks_that_cannot_be_stacked_are_refused() -> None:
    with pytest.raises(NasauditError, match="at least one network"):
        StackedNetworks([])
    small, big = (
        EvalNetwork(GENOTYPES.get("darts_v2"), 3, 3, 5),
        EvalNetwork(GENOTYPES.get("darts_v2"), 3, 4, 5),
    )
    with pytest.raises(NasauditError, match="different sizes"):
        StackedNetworks([small, big])
    with pytest.raises(NasauditError, match="auxiliary head"):
        StackedNetworks([EvalNetwork(GENOTYPES.get("darts_v2"), 3, 3, 5, auxiliary=True)])
