"""K evaluation networks run as ONE network, so a pool of small networks fills a GPU (RoBoT's pool).

RoBoT scores 60,000 C = 16 networks on one 64-image batch. One such network is far too small to keep
a GPU busy: its time goes to launching thousands of tiny kernels. :class:`StackedNetworks` takes K
built :class:`EvalNetwork` s and copies their weights into one network whose activations hold all K
side by side along the channel dimension (member-major: channels ``[k·C, (k+1)·C)`` are member k's):

- every convolution becomes one grouped convolution (``groups × m`` over the m members that share it),
  every BatchNorm one BatchNorm over the members' channels; both keep each member's channels apart,
  and train-mode batch statistics are per channel, so they are each member's own statistics;
- a cell's edge ops differ between members: per edge slot, the members with the same op and stride
  form a group that runs as one stacked op, its input gathered from each member's own input state;
- the classifier is one batched matmul over per-member weights.

No value of one member ever reaches another, so the gradient of the SUM of the members' losses with
respect to a member's weights is that member's own gradient, and all gradient-based scores of the K
networks come from one forward and one backward. The stacked layers keep, in ``members``, which
member each block of output channels belongs to, to split per-layer scores back per network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.errors import NasauditError
from nasaudit.registry import Registry
from nasaudit.spaces.darts.genotype import NODES
from nasaudit.spaces.darts.network import Cell, EvalNetwork
from nasaudit.spaces.darts.ops import FactorizedReduce

Stacker = Callable[[Sequence[nn.Module], Tensor], nn.Module]
"""``(the members' modules, their member indices) -> one module computing all of them``."""

STACKERS: Registry[Stacker] = Registry("stackable module type")


def stack_modules(modules: Sequence[nn.Module], members: Tensor) -> nn.Module:
    """One module computing ``modules`` (one per member, same structure) on member-major channels."""
    kind = type(modules[0]).__name__
    if any(type(module) is not type(modules[0]) for module in modules):
        raise NasauditError(f"cannot stack modules of different types with a {kind}")
    return STACKERS.get(kind)(modules, members)


def _tag(module: nn.Module, members: Tensor) -> nn.Module:
    # Not persistent: a state_dict holds only the members' own tensors.
    module.register_buffer("members", members.clone(), persistent=False)
    return module


@STACKERS.register("Conv2d")
def _conv(convs: Sequence[nn.Module], members: Tensor) -> nn.Module:
    first = convs[0]
    assert isinstance(first, nn.Conv2d)
    m = len(convs)
    stacked = nn.Conv2d(
        first.in_channels * m,
        first.out_channels * m,
        first.kernel_size,  # type: ignore[arg-type]
        first.stride,  # type: ignore[arg-type]
        first.padding,  # type: ignore[arg-type]
        first.dilation,  # type: ignore[arg-type]
        first.groups * m,
        bias=first.bias is not None,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([conv.weight for conv in convs]))
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([conv.bias for conv in convs]))  # type: ignore[misc]
    return _tag(stacked, members)


@STACKERS.register("BatchNorm2d")
def _batch_norm(norms: Sequence[nn.Module], members: Tensor) -> nn.Module:
    first = norms[0]
    assert isinstance(first, nn.BatchNorm2d)
    stacked = nn.BatchNorm2d(
        first.num_features * len(norms), first.eps, first.momentum, first.affine,
        device=first.running_mean.device, dtype=first.running_mean.dtype,
    )  # fmt: skip
    with torch.no_grad():
        for name, tensor in stacked.state_dict().items():
            if name != "num_batches_tracked":
                tensor.copy_(torch.cat([norm.state_dict()[name] for norm in norms]))
    return stacked


def _sequential(sequences: Sequence[nn.Module], members: Tensor) -> nn.Module:
    layers = zip(*(list(sequence) for sequence in sequences), strict=True)
    return nn.Sequential(*(stack_modules(parts, members) for parts in layers))


for _name in ("Sequential", "ReLUConvBN", "ReLUSepConvBN"):  # the ops' subclasses add no behaviour
    STACKERS.register(_name)(_sequential)


def _channelwise(modules: Sequence[nn.Module], members: Tensor) -> nn.Module:
    """Parameter-free ops that treat every channel alike compute all members as they are."""
    if any(repr(module) != repr(modules[0]) for module in modules):
        raise NasauditError(f"cannot stack differently configured {type(modules[0]).__name__} modules")
    return modules[0]


for _name in ("ReLU", "MaxPool2d", "AvgPool2d", "Identity", "AdaptiveAvgPool2d", "Zero"):
    STACKERS.register(_name)(_channelwise)


class StackedFactorizedReduce(nn.Module):
    """:class:`FactorizedReduce` of m members: the two half-convolutions are concatenated per member."""

    def __init__(self, reduces: Sequence[FactorizedReduce], members: Tensor):
        super().__init__()
        self.m = len(reduces)
        self.relu = nn.ReLU()
        self.conv_even = stack_modules([r.conv_even for r in reduces], members)
        self.conv_odd = stack_modules([r.conv_odd for r in reduces], members)
        self.bn = stack_modules([r.bn for r in reduces], members)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        even, odd = self.conv_even(x), self.conv_odd(shifted)
        n, _, h, w = even.shape
        halves = torch.cat([even.view(n, self.m, -1, h, w), odd.view(n, self.m, -1, h, w)], dim=2)
        return self.bn(halves.view(n, -1, h, w))


STACKERS.register("FactorizedReduce")(StackedFactorizedReduce)  # type: ignore[arg-type]


class StackedLinear(nn.Module):
    """m linear layers on (N, m·in) inputs, giving (N, m, out)."""

    def __init__(self, linears: Sequence[nn.Linear], members: Tensor):
        super().__init__()
        self.in_features = linears[0].in_features
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in linears]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in linears]))
        _tag(self, members)

    def forward(self, x: Tensor) -> Tensor:
        per_member = x.view(len(x), len(self.weight), self.in_features)
        return torch.einsum("nki,koi->nko", per_member, self.weight) + self.bias


def _sources(reduction: bool, node: int, stride: int) -> tuple[int, ...]:
    """The states an edge of ``node`` may read, given its stride; they all have the same size."""
    if not reduction:
        return tuple(range(node + 2))
    return (0, 1) if stride == 2 else tuple(range(2, node + 2))


class _Read(nn.Module):
    """One edge slot's members with the same stride: one gather of each member's input, then one
    stacked op per group of members sharing an op."""

    def __init__(self, cells: Sequence[Cell], slot: int, stride: int, ks: list[int], channels: int):
        super().__init__()
        self.sources = _sources(cells[0].reduction, slot // 2, stride)
        self.channels = channels
        by_op: dict[str, list[int]] = {}
        for k in ks:
            by_op.setdefault(cells[k].op_names[slot], []).append(k)
        self.order = [k for group in by_op.values() for k in group]
        self.sizes = [len(group) for group in by_op.values()]
        self.ops = nn.ModuleList(
            stack_modules([cells[k].ops[slot] for k in group], torch.tensor(group))
            for group in by_op.values()
        )
        read = {cells[k].inputs[slot] for k in self.order}
        # All members reading one state (always so for K = 1): gather from it alone, or not at all
        # when they are all of its members in order. Otherwise from the sources' states stacked.
        self.source = read.pop() if len(read) == 1 else None
        if self.source is not None:
            index = None if self.order == list(range(len(cells))) else torch.tensor(self.order)
        else:
            index = torch.tensor(
                [self.sources.index(cells[k].inputs[slot]) * len(cells) + k for k in self.order]
            )
        self.register_buffer("index", index, persistent=False)

    def forward(self, states: list[Tensor], stacked: Callable[[tuple[int, ...]], Tensor]) -> list[Tensor]:
        """The groups' outputs, each (N, m, C, H', W'), from the cell's ``states`` so far (N, K·C, H, W);
        ``stacked(sources)`` gives those states stacked along the member dimension."""
        if self.source is None:
            chosen = stacked(self.sources)
        else:
            n, _, h, w = states[self.source].shape
            chosen = states[self.source].view(n, -1, self.channels, h, w)
        if self.index is not None:
            chosen = chosen.index_select(1, self.index)
        n, _, _, h, w = chosen.shape
        outputs = []
        for op, x, m in zip(self.ops, chosen.split(self.sizes, dim=1), self.sizes, strict=True):
            out = op(x.reshape(n, m * self.channels, h, w))
            outputs.append(out.view(n, m, self.channels, *out.shape[2:]))
        return outputs


class StackedCell(nn.Module):
    """K members' versions of one cell position (same reduction, channels and concat; any ops)."""

    def __init__(self, cells: Sequence[Cell]):
        super().__init__()
        if any(cell.concat != cells[0].concat for cell in cells):
            raise NasauditError("cannot stack genotypes whose cells concatenate different nodes")
        everyone = torch.arange(len(cells))
        self.k, self.channels, self.concat = len(cells), cells[0].channels, list(cells[0].concat)
        self.preprocess0 = stack_modules([cell.preprocess0 for cell in cells], everyone)
        self.preprocess1 = stack_modules([cell.preprocess1 for cell in cells], everyone)
        self.slots = nn.ModuleList()
        unsort = []
        for slot in range(2 * NODES):
            by_stride: dict[int, list[int]] = {}
            for k, cell in enumerate(cells):
                by_stride.setdefault(2 if cell.reduction and cell.inputs[slot] < 2 else 1, []).append(k)
            reads = nn.ModuleList(
                _Read(cells, slot, stride, ks, self.channels) for stride, ks in by_stride.items()
            )
            self.slots.append(reads)
            unsort.append(torch.tensor([k for read in reads for k in read.order]).argsort())
        # A slot's reads produce members in their own order; this puts them back in member order.
        self.register_buffer("unsort", torch.stack(unsort), persistent=False)
        self.in_order = [bool((order == everyone).all()) for order in unsort]

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        stacks: dict[tuple[int, ...], Tensor] = {}  # the states a read gathers from, stacked once

        def stacked(sources: tuple[int, ...]) -> Tensor:
            if sources not in stacks:
                n, _, h, w = states[sources[0]].shape
                both = torch.stack([states[j] for j in sources], dim=1)
                stacks[sources] = both.view(n, len(sources) * self.k, self.channels, h, w)
            return stacks[sources]

        for node in range(NODES):
            total: Tensor | int = 0
            for slot in (2 * node, 2 * node + 1):
                outputs = [out for read in self.slots[slot] for out in read(states, stacked)]
                out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
                total = total + (out if self.in_order[slot] else out.index_select(1, self.unsort[slot]))
            n, _, _, h, w = total.shape  # type: ignore[union-attr]
            states.append(total.view(n, -1, h, w))  # type: ignore[union-attr]
        n, _, h, w = states[-1].shape
        nodes = [states[i].view(n, self.k, self.channels, h, w) for i in self.concat]
        return torch.cat(nodes, dim=2).view(n, -1, h, w)


class StackedNetworks(nn.Module):
    """K :class:`EvalNetwork` s (same C, cells and classes; no auxiliary head, no drop-path) as one.

    ``forward`` takes (N, K, 3, H, W), each member's own copy of the input (so input gradients stay
    per member), and returns logits (N, K, classes).
    """

    def __init__(self, nets: Sequence[EvalNetwork]):
        super().__init__()
        if not nets:
            raise NasauditError("StackedNetworks needs at least one network")
        if any(net.auxiliary_head is not None or net.drop_path_prob > 0 for net in nets):
            raise NasauditError(
                "only networks without an auxiliary head and without drop-path can be stacked"
            )
        shapes = {(len(net.cells), net.classifier.in_features, net.classifier.out_features) for net in nets}
        if len(shapes) > 1:
            raise NasauditError(f"cannot stack networks of different sizes: {sorted(shapes)}")
        self.k = len(nets)
        everyone = torch.arange(self.k)
        self.stem = stack_modules([net.stem for net in nets], everyone)
        self.cells = nn.ModuleList(
            StackedCell([net.cells[i] for net in nets]) for i in range(len(nets[0].cells))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = StackedLinear([net.classifier for net in nets], everyone)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x.flatten(1, 2))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))


def scored_layers(net: nn.Module) -> list[nn.Module]:
    """The stacked convolutions and linear layers, the layers RoBoT's proxies score."""
    return [module for module in net.modules() if isinstance(module, nn.Conv2d | StackedLinear)]
