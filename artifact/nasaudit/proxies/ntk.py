"""Condition number of the empirical neural tangent kernel, TE-NAS's trainability score (SPEC §5).

κ = λ_max/λ_min of Θ = J·Jᵀ, where row i of J is the gradient of the sum of sample i's logits with
respect to the network's weights, all samples sharing ONE train-mode forward. Because BN couples the
batch, row i is not the Jacobian of a network run on sample i alone, so a per-sample ``vmap`` over
inputs would compute a different kernel.

Two equal implementations:

- ``batched=False`` is the reference: one backward per sample through the batch forward's graph.
- ``batched=True`` (default) runs the same single forward, then ONE backward that carries all N
  cotangents at once (``torch.func.vmap`` over ``torch.autograd.grad``). Only the cotangent is
  batched, so this is exactly the reference's N backwards, just vectorised.

Where the time goes: on TE-NAS's scoring net (C = 1, ~360 convolutions on 1- and 2-channel maps) it
is convolution backward. PyTorch's CPU kernels are slow on such thin maps, and vmap's rule folds the
cotangents into the batch dimension, which leaves them no faster than N separate calls. So while the
batched path runs, every ``conv2d`` goes through :class:`_Conv2d`, whose backward batches its own
way (:func:`_input_grads`, :func:`_weight_grads`). BN, pools and ReLU keep vmap's rules: they are
memory-bound and cost about the same either way, which bounds the speed-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from nasaudit.proxies.base import PROXIES, logits_of, scoring_mode

# Architecture parameters of a supernet are not network weights even if their names end in "weight".
_ARCH_TAGS = ("arch", "alpha")
# TE-NAS maps a NaN condition number to this value.
_NAN_KAPPA = 1e5


def ntk_weights(net: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the NTK differentiates: conv, BN γ and linear weights, never biases or α."""
    return {
        name: param
        for name, param in net.named_parameters()
        if name.endswith("weight") and param.requires_grad and not any(t in name.lower() for t in _ARCH_TAGS)
    }


def _jacobian_per_sample(net: nn.Module, inputs: Tensor) -> Tensor:
    """Reference Jacobian: one batch forward, then one retained-graph backward per sample."""
    weights = list(ntk_weights(net).values())
    logits = logits_of(net(inputs))
    rows = []
    for i in range(len(logits)):
        grads = torch.autograd.grad(logits[i].sum(), weights, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads if g is not None]))
    return torch.stack(rows)


def _jacobian_batched(net: nn.Module, inputs: Tensor) -> Tensor:
    """The same Jacobian from the same forward and one backward over all N cotangents."""
    weights = list(ntk_weights(net).values())
    with _RouteConv2d():
        logits = logits_of(net(inputs))
    n, classes = logits.shape
    # Cotangent i is 1 on every logit of sample i: its backward is the gradient of that sample's sum.
    cotangents = torch.eye(n, dtype=logits.dtype, device=logits.device)[:, :, None].expand(n, n, classes)

    def row(cotangent: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(logits, weights, cotangent, allow_unused=True)
        return tuple(g for g in grads if g is not None)

    return torch.cat([g.reshape(n, -1) for g in vmap(row)(cotangents)], dim=1)


# --- convolution backward for a batch of cotangents -------------------------------------------------


@dataclass(frozen=True)
class _ConvSpec:
    """One ``conv2d`` call's settings. A single pytree leaf: functorch flattens every argument of a
    custom function on every call, and lists of ints made that cost more than some kernels."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _is_pointwise(w: Tensor, spec: _ConvSpec) -> bool:
    return w.shape[2:] == (1, 1) and spec.padding == (0, 0)


def _input_grads(g: Tensor, input_shape: torch.Size, w: Tensor, spec: _ConvSpec) -> Tensor:
    """∂/∂input for cotangents ``g`` (B, N, O, h', w'), as (B, N, C, H, W): a transposed convolution.

    Which batching is fast was measured on CPU: a 1×1 convolution is a matmul; otherwise the B
    cotangents become channels of ONE grouped convolution in channels-last layout, which oneDNN's
    depthwise kernels vectorise, except strided dilated ones, which run faster with B folded into N.
    """
    b, n, out_channels, *out_size = g.shape
    groups = spec.groups
    out_per_group, in_per_group = out_channels // groups, input_shape[1] // groups
    if _is_pointwise(w, spec):
        mixing = w.reshape(groups, out_per_group, in_per_group).transpose(1, 2)
        sampled = mixing @ g.reshape(b, n, groups, out_per_group, -1)
        sampled = sampled.reshape(b, n, input_shape[1], *out_size)
        if spec.stride == (1, 1):
            return sampled
        grads = g.new_zeros(b, *input_shape)
        grads[..., :: spec.stride[0], :: spec.stride[1]] = sampled
        return grads
    # output_padding: the rows a strided forward dropped, so the result has the input's size again.
    shapes = zip(input_shape[2:], out_size, w.shape[2:], strict=True)
    sizes = zip(shapes, spec.stride, spec.padding, spec.dilation, strict=True)
    extra = [size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for (size, out, k), s, p, d in sizes]
    geometry = (spec.stride, spec.padding, extra)
    if spec.stride != (1, 1) and spec.dilation != (1, 1):
        flat = F.conv_transpose2d(g.flatten(0, 1), w, None, *geometry, groups, spec.dilation)
        return flat.view(b, *input_shape)
    # Group-major channels (group, cotangent, channel in group) keep each group's channels together.
    folded = g.reshape(b, n, groups, out_per_group, *out_size).permute(1, 2, 0, 3, 4, 5)
    folded = folded.reshape(n, -1, *out_size).contiguous(memory_format=torch.channels_last)
    kernels = w.reshape(groups, 1, out_per_group, *w.shape[1:]).expand(-1, b, -1, -1, -1, -1)
    kernels = kernels.reshape(-1, *w.shape[1:])
    grads = F.conv_transpose2d(folded, kernels, None, *geometry, groups * b, spec.dilation)
    grads = grads.view(n, groups, b, in_per_group, *input_shape[2:]).permute(2, 0, 1, 3, 4, 5)
    return grads.reshape(b, *input_shape)


def _weight_grads(g: Tensor, x: Tensor, w: Tensor, spec: _ConvSpec) -> Tensor:
    """∂/∂weight for cotangents ``g`` (B, N, O, h', w'), as (B, *w.shape): the input's patches are
    unfolded once, then one matmul contracts them with all B cotangents."""
    b, n, out_channels = g.shape[:3]
    if _is_pointwise(w, spec):  # the patches of a 1×1 convolution are the (strided) input itself
        patches = x[..., :: spec.stride[0], :: spec.stride[1]]
    else:
        patches = F.unfold(x, w.shape[2:], spec.dilation, spec.padding, spec.stride)
    patches = patches.reshape(n, spec.groups, -1, math.prod(g.shape[3:]))
    per_group = g.reshape(b, n, spec.groups, out_channels // spec.groups, -1)
    return torch.einsum("bngop,ngkp->bgok", per_group, patches).reshape(b, *w.shape)


class _Conv2dVJP(torch.autograd.Function):
    """(∂/∂input, ∂/∂weight) of a convolution for one cotangent; under vmap, for all of them at once
    by the two functions above, where vmap's own rule folds the cotangents into the batch dimension,
    in which PyTorch's kernels for thin maps are no faster than one call per cotangent.

    Both are always computed (an input gradient nobody needs is the stem's, a negligible cost), so no
    output is ever None.
    """

    @staticmethod
    def forward(g: Tensor, x: Tensor, w: Tensor, spec: _ConvSpec) -> tuple[Tensor, Tensor]:
        geometry = (spec.stride, spec.padding, spec.dilation, False, [0, 0], spec.groups)
        dx, dw, _ = torch.ops.aten.convolution_backward(g, x, w, None, *geometry, [True, True, False])
        return dx, dw

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        """Required for functorch support; the gradients are never differentiated again."""

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], g: Tensor, x: Tensor, w: Tensor, spec: _ConvSpec
    ) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
        if in_dims[1] is not None or in_dims[2] is not None:
            raise NotImplementedError("κ_NTK batches only the cotangents of a convolution")
        g = g.movedim(in_dims[0], 0)
        return (_input_grads(g, x.shape, w, spec), _weight_grads(g, x, w, spec)), (0, 0)


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` with the same forward, whose backward goes through :class:`_Conv2dVJP`."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, bias: Tensor | None, spec: _ConvSpec) -> Tensor:
        return F.conv2d(x, w, bias, spec.stride, spec.padding, spec.dilation, spec.groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, w, _, ctx.spec = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, w = ctx.saved_tensors
        needs_x, needs_w, needs_bias = ctx.needs_input_grad[:3]
        dx, dw = _Conv2dVJP.apply(g, x, w, ctx.spec) if needs_x or needs_w else (None, None)
        return (
            dx if needs_x else None,
            dw if needs_w else None,
            g.sum((0, 2, 3)) if needs_bias else None,
            None,
        )


def _conv2d_call(
    x: Tensor, w: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, _ConvSpec] | None:  # fmt: skip
    """``F.conv2d``'s arguments as :class:`_Conv2d` takes them; None where it does not apply (string
    padding such as 'same', an unbatched 3-d input)."""
    if isinstance(padding, str) or x.dim() != 4:
        return None
    return x, w, bias, _ConvSpec(_pair(stride), _pair(padding), _pair(dilation), groups)


class _RouteConv2d(TorchFunctionMode):
    """Send every ``F.conv2d`` of a forward through :class:`_Conv2d`, without touching the modules."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _conv2d_call(*args, **kwargs) if func is F.conv2d else None
        return func(*args, **kwargs) if call is None else _Conv2d.apply(*call)


# --- the score -----------------------------------------------------------------------------------------


def condition_number(jacobian: Tensor) -> float:
    """κ of Θ = J·Jᵀ (fp32 product, float64 eigenvalues).

    As TE-NAS's ``np.nan_to_num`` did, NaN becomes 1e5 and ±inf the largest float, so a degenerate
    network still ranks (as badly trainable) instead of poisoning the ranking with NaN.
    """
    rows = jacobian.float()
    theta = rows @ rows.T
    if not torch.isfinite(theta).all():
        return _NAN_KAPPA
    eigenvalues = torch.linalg.eigvalsh(theta.double())
    return float(np.nan_to_num((eigenvalues[-1] / eigenvalues[0]).item(), nan=_NAN_KAPPA))


@PROXIES.register("ntk_cond")
def ntk_cond(net: nn.Module, inputs: Tensor, targets: Tensor | None = None, *, batched: bool = True) -> float:
    """κ_NTK of ``net`` on one batch (labels unused); lower means easier to train."""
    with scoring_mode(net):
        jacobian = _jacobian_batched(net, inputs) if batched else _jacobian_per_sample(net, inputs)
    return condition_number(jacobian)
