"""The weight-sharing supernet of the space (Once-for-All, Cai et al. 2020) and subnet extraction.

Every elastic layer holds its largest version (kernel 7, expand ratio 6); a smaller one is a slice:

* elastic kernel: a k×k kernel is the centre of the next larger one, passed through a learned
  k²×k² transformation matrix (7→5, then 5→3), initialised to the identity;
* elastic width: an expand ratio keeps the first channels of the depthwise conv; ``sort_channels``
  reorders them by importance (L1 norm of the projection weights) before width is made elastic;
* elastic depth: a stage runs its first ``depth`` layers.

``extract`` copies the slices into a standalone ``MBV3Net``, which computes exactly what the supernet
computes for that configuration (tested). Checkpoints are state dicts under ``"state_dict"``; OFA's
released ``ofa_mbv3_*`` files load too, their keys mapped onto ours.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.config import MBV3Config
from nasaudit.errors import NasauditError
from nasaudit.io import save_torch
from nasaudit.spaces.mbv3.network import (
    ConvBN,
    Head,
    MBV3Net,
    SqueezeExcite,
    first_block,
    scale_channels,
    se_channels,
    upscale,
)
from nasaudit.spaces.mbv3.space import (
    EXPANDS,
    KERNELS,
    MAX_DEPTH,
    ChannelPlan,
    MBV3Arch,
    channel_plan,
    extreme_arch,
)


def _bn(bn: nn.BatchNorm2d, x: Tensor, channels: int) -> Tensor:
    """Batch norm over the first ``channels`` channels; training updates those running statistics."""
    if channels == bn.num_features:
        return bn(x)
    return F.batch_norm(
        x,
        bn.running_mean[:channels],
        bn.running_var[:channels],
        bn.weight[:channels],
        bn.bias[:channels],
        bn.training,
        bn.momentum if bn.momentum is not None else 0.0,
        bn.eps,
    )


def _bn_state(prefix: str, bn: nn.BatchNorm2d, channels: int) -> dict[str, Tensor]:
    return {
        f"{prefix}.weight": bn.weight[:channels],
        f"{prefix}.bias": bn.bias[:channels],
        f"{prefix}.running_mean": bn.running_mean[:channels],
        f"{prefix}.running_var": bn.running_var[:channels],
        f"{prefix}.num_batches_tracked": bn.num_batches_tracked,
    }


class ElasticMBConv(nn.Module):
    """One elastic layer: its largest inverted-residual block, run or extracted at any (kernel, expand)."""

    def __init__(self, plan: ChannelPlan, stage: int, layer: int):
        super().__init__()
        spec = plan.stages[stage]
        self.c_in, self.c_out = plan.layer_in_channels(stage, layer), spec.width
        self.stride = spec.stride if layer == 0 else 1
        self.act = spec.act
        self.mids = {e: plan.mid_channels(stage, layer, e) for e in EXPANDS}
        mid = self.mids[max(EXPANDS)]
        self.expand = ConvBN(self.c_in, mid, 1, act=spec.act)
        self.depthwise = ConvBN(mid, mid, max(KERNELS), self.stride, groups=mid, act=spec.act)
        self.kernel_transforms = nn.ParameterDict(
            {f"{big}to{small}": nn.Parameter(torch.eye(small * small)) for small, big in pairwise(KERNELS)}
        )
        self.se = SqueezeExcite(mid) if spec.se else None
        self.project = ConvBN(mid, self.c_out, 1)
        self.residual = self.stride == 1 and self.c_in == self.c_out

    def kernel(self, size: int, mid: int) -> Tensor:
        """The depthwise kernels of the first ``mid`` channels at ``size``: crop, transform, repeat."""
        w = self.depthwise.conv.weight[:mid]
        for big, small in pairwise(KERNELS[::-1]):
            if big <= size:
                break
            start = (big - small) // 2
            w = w[:, :, start : start + small, start : start + small]
            w = F.linear(w.reshape(mid, 1, small * small), self.kernel_transforms[f"{big}to{small}"])
            w = w.reshape(mid, 1, small, small)
        return w

    def forward(self, x: Tensor, kernel: int, expand: int) -> Tensor:
        mid = self.mids[expand]
        h = self.expand.act(_bn(self.expand.bn, F.conv2d(x, self.expand.conv.weight[:mid]), mid))
        h = F.conv2d(h, self.kernel(kernel, mid), None, self.stride, kernel // 2, 1, mid)
        h = self.depthwise.act(_bn(self.depthwise.bn, h, mid))
        if self.se is not None:
            s, se = se_channels(mid), self.se
            h = h * scale_channels(
                h,
                se.reduce.weight[:s, :mid],
                se.reduce.bias[:s],
                se.expand.weight[:mid, :s],
                se.expand.bias[:mid],
            )
        h = self.project.bn(F.conv2d(h, self.project.conv.weight[:, :mid]))
        return h + x if self.residual else h

    def subnet_state(self, kernel: int, expand: int) -> dict[str, Tensor]:
        """The weights of the standalone block for (kernel, expand), named as ``MBConv`` names them."""
        mid = self.mids[expand]
        state = {
            "expand.conv.weight": self.expand.conv.weight[:mid],
            **_bn_state("expand.bn", self.expand.bn, mid),
            "depthwise.conv.weight": self.kernel(kernel, mid),
            **_bn_state("depthwise.bn", self.depthwise.bn, mid),
            "project.conv.weight": self.project.conv.weight[:, :mid],
            **_bn_state("project.bn", self.project.bn, self.c_out),
        }
        if self.se is not None:
            s = se_channels(mid)
            state["se.reduce.weight"] = self.se.reduce.weight[:s, :mid]
            state["se.reduce.bias"] = self.se.reduce.bias[:s]
            state["se.expand.weight"] = self.se.expand.weight[:mid, :s]
            state["se.expand.bias"] = self.se.expand.bias[:mid]
        return {k: v.detach() for k, v in state.items()}

    @torch.no_grad()
    def sort_channels(self, boundaries: Sequence[int]) -> None:
        """Order the depthwise channels by importance, within [0, b1), [b1, b2), ... (OFA's width sort).

        Boundaries are the widths of expand ratios already trained as subnets, so their channel sets
        stay the same; squeeze-excitation channels are sorted by the L1 norm of their expand weights.
        The full-width network computes the same function before and after.
        """
        importance = self.project.conv.weight.abs().sum((0, 2, 3))
        edges = [0, *boundaries, len(importance)]
        order = torch.cat(
            [a + torch.argsort(importance[a:b], descending=True, stable=True) for a, b in pairwise(edges)]
        )
        for bn in (self.expand.bn, self.depthwise.bn):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.copy_(t[order])
        for t in (self.expand.conv.weight, self.depthwise.conv.weight):
            t.copy_(t[order])
        self.project.conv.weight.copy_(self.project.conv.weight[:, order])
        if self.se is not None:
            se = self.se
            se.reduce.weight.copy_(se.reduce.weight[:, order])
            se.expand.weight.copy_(se.expand.weight[order])
            se.expand.bias.copy_(se.expand.bias[order])
            se_order = torch.argsort(se.expand.weight.abs().sum((0, 2, 3)), descending=True, stable=True)
            se.expand.weight.copy_(se.expand.weight[:, se_order])
            se.reduce.weight.copy_(se.reduce.weight[se_order])
            se.reduce.bias.copy_(se.reduce.bias[se_order])


class MBV3SuperNet(nn.Module):
    """All architectures of the space in one network; ``set_active`` chooses which one ``forward`` runs."""

    def __init__(self, plan: ChannelPlan, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.plan = plan
        self.num_classes = num_classes
        self.stem = ConvBN(3, plan.stem, 3, 2, act="hswish")
        self.blocks = nn.ModuleList(
            [first_block(plan)]
            + [ElasticMBConv(plan, s, i) for s in range(len(plan.stages)) for i in range(MAX_DEPTH)]
        )
        self.head = Head(plan.stages[-1].width, plan, num_classes, dropout)
        self.active = extreme_arch([224], largest=True)  # OFA's default: the full network at 224

    def set_active(self, arch: MBV3Arch) -> None:
        self.active = arch

    def forward(self, x: Tensor) -> Tensor:
        arch = self.active
        x = self.blocks[0](self.stem(upscale(x, arch.resolution)))
        for stage, layer, kernel, expand in arch.active_layers():
            x = self.blocks[1 + stage * MAX_DEPTH + layer](x, kernel, expand)
        return self.head(x)

    def extract(self, arch: MBV3Arch, dropout: float = 0.0, drop_connect: float = 0.0) -> MBV3Net:
        """``arch`` as a standalone network with the weights it inherits (copies, not views)."""
        with torch.device(self.stem.conv.weight.device):
            net = MBV3Net(arch, self.plan, self.num_classes, dropout, drop_connect)
        net.stem.load_state_dict(self.stem.state_dict())
        net.blocks[0].load_state_dict(self.blocks[0].state_dict())
        net.head.load_state_dict(self.head.state_dict())
        for block, (stage, layer, kernel, expand) in zip(net.blocks[1:], arch.active_layers(), strict=True):
            block.load_state_dict(self.blocks[1 + stage * MAX_DEPTH + layer].subnet_state(kernel, expand))
        return net

    def sort_channels(self, keep_expands: Sequence[int]) -> None:
        """Sort every elastic layer's channels, keeping the channel sets of ``keep_expands`` intact."""
        for block in elastic_blocks(self):
            block.sort_channels(sorted({block.mids[e] for e in keep_expands if e != max(EXPANDS)}))


def elastic_blocks(net: MBV3SuperNet) -> list[ElasticMBConv]:
    """The 20 elastic layers, stage by stage."""
    return [b for b in net.blocks if isinstance(b, ElasticMBConv)]


# --- checkpoints ------------------------------------------------------------------------------------


def save_supernet(path: Path, net: MBV3SuperNet) -> Path:
    return save_torch(path, {"state_dict": net.state_dict()})


#: OFA's key names (ofa/imagenet_classification/elastic_nn: OFAMobileNetV3 with DynamicMBConvLayer)
#: → ours; applied after the duplicate wrappers (``.bn.bn.``, ``.conv.conv.``, ``.linear.linear.``)
#: and the old ``.mobile_inverted_conv.`` name are collapsed. Order matters: matrices before convs.
_OFA_KEYS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"first_conv\.(conv|bn)\.(\w+)", r"stem.\1.\2"),
        (r"blocks\.(\d+)\.conv\.inverted_bottleneck\.(conv|bn)\.(\w+)", r"blocks.\1.expand.\2.\3"),
        (r"blocks\.(\d+)\.conv\.depth_conv\.conv\.(\d+to\d+)_matrix", r"blocks.\1.kernel_transforms.\2"),
        (r"blocks\.(\d+)\.conv\.depth_conv\.(conv|bn)\.(\w+)", r"blocks.\1.depthwise.\2.\3"),
        (r"blocks\.(\d+)\.conv\.depth_conv\.se\.fc\.(reduce|expand)\.(\w+)", r"blocks.\1.se.\2.\3"),
        (r"blocks\.(\d+)\.conv\.point_linear\.(conv|bn)\.(\w+)", r"blocks.\1.project.\2.\3"),
        (r"final_expand_layer\.(conv|bn)\.(\w+)", r"head.final_expand.\1.\2"),
        (r"feature_mix_layer\.conv\.(\w+)", r"head.feature_mix.conv.\1"),
        (r"classifier\.linear\.(\w+)", r"head.classifier.\1"),
    )
)


def ofa_key(key: str) -> str | None:
    """Our name for a key of an OFA MobileNetV3 checkpoint, or None if it is not one."""
    k = key.replace(".mobile_inverted_conv.", ".conv.")
    for wrapper in ("bn", "conv", "linear"):
        k = k.replace(f".{wrapper}.{wrapper}.", f".{wrapper}.")
    for pattern, target in _OFA_KEYS:
        if pattern.fullmatch(k):
            return pattern.sub(target, k)
    return None


def load_supernet(net: MBV3SuperNet, path: Path) -> dict[str, Any]:
    """Load our checkpoint or OFA's into ``net``; a classifier of another class count is left as initialised.

    Any other mismatch (a missing or unknown key, a shape that differs) is a one-line error.
    """
    path = Path(path)
    state = _read_state(path, "supernet", "supernet", net.stem.conv.weight.device)
    ours = net.state_dict()
    source = "nasaudit"
    if not set(state) <= set(ours):
        source, state = "ofa", _from_ofa(state, ours, path)
    missing = sorted(k for k in set(ours) - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise NasauditError(f"{path.name}: has no {missing[0]!r}; is it a MobileNetV3 (OFA) supernet?")
    reset = _classifier_to_reset(state, ours, path)
    net.load_state_dict({k: v for k, v in state.items() if k not in reset}, strict=False)
    return {"source": source, "classifier_reset": bool(reset)}


def _from_ofa(state: dict[str, Tensor], ours: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """An OFA MobileNetV3 supernet's state under our names (``ofa_key``); any other key is refused."""
    mapped = {}
    for key, value in state.items():
        name = ofa_key(key)
        if name is None or name not in ours:
            raise NasauditError(
                f"{path.name}: key {key!r} is neither ours nor an OFA MobileNetV3 supernet key"
            )
        mapped[name] = value
    return mapped


def _classifier_to_reset(state: dict[str, Tensor], ours: dict[str, Tensor], path: Path) -> set[str]:
    """The classifier tensors shaped for another class count (left as initialised); any other tensor of
    another shape is refused."""
    reset = {k for k, v in state.items() if v.shape != ours[k].shape and k.startswith("head.classifier.")}
    for key, value in state.items():
        if value.shape != ours[key].shape and key not in reset:
            raise NasauditError(
                f"{path.name}: {key} has shape {tuple(value.shape)} in the file but {tuple(ours[key].shape)} "
                f"here; check [mbv3] width_mult (OFA's w1.0 and w1.2 files need 1.0 and 1.2)"
            )
    return reset


# --- the network nasaudit train retrains ------------------------------------------------------------


def _read_state(path: Path, weights: str, kind: str, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The state dict of tensors in ``path`` (bare, or under ``state_dict`` as OFA stores it); the
    one-line errors name the ``weights`` and the ``kind`` of checkpoint expected."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasauditError(f"cannot read {weights} weights {path}: {first}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise NasauditError(f"{path} is not a {kind} checkpoint (expected a state dict of tensors)")
    return state


def retrain_network(arch: MBV3Arch, num_classes: int, cfg: MBV3Config) -> MBV3Net:
    """The network ``nasaudit train`` retrains; ``cfg.init`` says where its weights start.

    "search": the weights the architecture inherited from its search's supernet (``arch.weights``);
    "scratch": PyTorch's default initialisation; anything else: a supernet file (ours or OFA's) the
    architecture is extracted from. The classifier always starts fresh, as NSGANetV2 resets it for the
    target dataset.
    """
    plan = channel_plan(cfg.width_mult)
    net = MBV3Net(arch, plan, num_classes, cfg.dropout, cfg.drop_connect)
    if cfg.init == "scratch":
        return net
    if cfg.init == "search":
        if arch.weights is None:
            raise NasauditError(
                "this mbv3 architecture names no inherited weights (a search writes them); "
                "set [mbv3] init to "
                'a supernet file or to "scratch"'
            )
        source, state = Path(arch.weights), _read_state(Path(arch.weights), "inherited", "network")
    else:
        source, supernet = Path(cfg.init), MBV3SuperNet(plan, num_classes)
        load_supernet(supernet, source)
        state = supernet.extract(arch).state_dict()
    ours = net.state_dict()
    for key, value in ours.items():
        if key.startswith("head.classifier."):
            continue
        if key not in state or state[key].shape != value.shape:
            found = "missing" if key not in state else f"of shape {tuple(state[key].shape)}"
            raise NasauditError(
                f"{source.name}: {key} is {found}, the architecture needs {tuple(value.shape)}; "
                f"were the weights made for this architecture and [mbv3] width_mult?"
            )
    net.load_state_dict({k: (ours[k] if k.startswith("head.classifier.") else state[k]) for k in ours})
    return net
