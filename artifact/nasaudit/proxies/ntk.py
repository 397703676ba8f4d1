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

Where the time goes: on TE-NAS's scoring net (C = 1, ~360 convolutions on 1- and 2-channel maps) the
reference spends 85% of its time in convolution backward: PyTorch's CPU kernels are slow on such thin
maps, and vmap's rule, which folds the cotangents into the batch dimension, is no faster than N
separate calls. So while the batched path runs its forward, every ``conv2d`` is rerouted: a 1×1
convolution becomes a product over channels (:func:`_pointwise`), whose backward vmap batches well;
any other goes through :class:`_Conv2d`, whose backward batches its own way, with the cotangents as
the channels of one convolution (:func:`_input_grads`) and one matmul against the input's patches
(:func:`_weight_grads`). What remains is memory-bound (BN, pools and ReLU under vmap's rules, on
tensors N times the forward's) plus functorch's per-call overhead of the custom function; it bounds
the speed-up near 3× on one CPU core.
"""

from __future__ import annotations

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

    Which batching is fast was measured on CPU: the B cotangents become channels of ONE grouped
    convolution in channels-last layout, which oneDNN's depthwise kernels vectorise. Unstrided, it is
    a plain convolution with the flipped kernel, several times faster than a transposed one when
    dilated; a stride equal to the dilation (and dividing the padding) reads only a sub-grid, on
    which the convolution is unstrided. The result is made contiguous: the memory-bound backward
    ops that consume it run much slower on the permuted layout.
    """
    b, n, out_channels, *out_size = g.shape
    groups = spec.groups
    out_per_group, in_per_group = out_channels // groups, input_shape[1] // groups
    (s_h, s_w), (p_h, p_w) = spec.stride, spec.padding
    if spec.stride == spec.dilation != (1, 1) and p_h % s_h == p_w % s_w == 0:
        sub_shape = torch.Size([*input_shape[:2], -(-input_shape[2] // s_h), -(-input_shape[3] // s_w)])
        sub_spec = _ConvSpec((1, 1), (p_h // s_h, p_w // s_w), (1, 1), groups)
        sub_grads = _input_grads(g, sub_shape, w, sub_spec)
        grads = g.new_zeros(b, *input_shape)
        grads[..., ::s_h, ::s_w] = sub_grads
        return grads
    # Group-major channels (group, cotangent, channel in group) keep each group's channels together.
    folded = g.reshape(b, n, groups, out_per_group, *out_size).permute(1, 2, 0, 3, 4, 5)
    folded = folded.reshape(n, -1, *out_size).contiguous(memory_format=torch.channels_last)
    reach = [d * (k - 1) for d, k in zip(spec.dilation, w.shape[2:], strict=True)]
    if spec.stride == (1, 1) and p_h <= reach[0] and p_w <= reach[1]:
        kernels = w.reshape(groups, out_per_group, in_per_group, *w.shape[2:]).transpose(1, 2).flip(-2, -1)
        kernels = kernels[:, None].expand(-1, b, -1, -1, -1, -1).reshape(-1, out_per_group, *w.shape[2:])
        padding = [reach[0] - p_h, reach[1] - p_w]
        grads = F.conv2d(folded, kernels, None, 1, padding, spec.dilation, groups * b)
    else:
        # output_padding: the rows a strided forward dropped, so the result has the input's size again.
        sizes = zip(input_shape[2:], out_size, reach, spec.stride, spec.padding, strict=True)
        extra = [size - ((out - 1) * s - 2 * p + r + 1) for size, out, r, s, p in sizes]
        kernels = w.reshape(groups, 1, out_per_group, *w.shape[1:]).expand(-1, b, -1, -1, -1, -1)
        kernels = kernels.reshape(-1, *w.shape[1:])
        geometry = (spec.stride, spec.padding, extra, groups * b, spec.dilation)
        grads = F.conv_transpose2d(folded, kernels, None, *geometry)
    grads = grads.view(n, groups, b, in_per_group, *input_shape[2:]).permute(2, 0, 1, 3, 4, 5)
    return grads.reshape(b, *input_shape).contiguous()


def _weight_grads(g: Tensor, x: Tensor, w: Tensor, spec: _ConvSpec) -> Tensor:
    """∂/∂weight for cotangents ``g`` (B, N, O, h', w'), as (B, *w.shape): the input's patches are
    gathered once, then one matmul per group contracts them with all B cotangents."""
    b, n, out_channels = g.shape[:3]
    groups, in_per_group, (k_h, k_w) = spec.groups, w.shape[1], w.shape[2:]
    out_per_group = out_channels // groups
    (p_h, p_w), (s_h, s_w), (d_h, d_w) = spec.padding, spec.stride, spec.dilation
    padded = F.pad(x, (p_w, p_w, p_h, p_h))
    # (N, C, h', w', k_h, k_w): each output pixel's receptive field, a view of the padded input
    span_h, span_w = d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1
    windows = padded.unfold(2, span_h, s_h).unfold(3, span_w, s_w)[..., ::d_h, ::d_w]
    windows = windows.reshape(n, groups, in_per_group, *windows.shape[2:]).permute(1, 2, 5, 6, 0, 3, 4)
    patches = windows.reshape(groups, in_per_group * k_h * k_w, -1)  # pixels innermost: a fast copy
    per_group = g.reshape(b, n, groups, out_per_group, -1).permute(2, 0, 3, 1, 4)
    grads = per_group.reshape(groups, b * out_per_group, -1) @ patches.transpose(1, 2)
    return grads.view(groups, b, out_per_group, *w.shape[1:]).transpose(0, 1).reshape(b, *w.shape)


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


def _pointwise(x: Tensor, w: Tensor, bias: Tensor | None, spec: _ConvSpec) -> Tensor:
    """A 1×1 convolution as a product over channels, whose backward vmap batches natively, cheaper
    for so little work than a custom function's overhead."""
    x = x[:, :, :: spec.stride[0], :: spec.stride[1]]
    n, _, height, width = x.shape
    kernels = w.reshape(spec.groups, -1, w.shape[1])
    y = torch.einsum("goc,ngchw->ngohw", kernels, x.reshape(n, spec.groups, -1, height, width))
    y = y.reshape(n, -1, height, width)
    return y if bias is None else y + bias.reshape(-1, 1, 1)


class _RouteConv2d(TorchFunctionMode):
    """Send every ``F.conv2d`` of a forward through :class:`_Conv2d` or :func:`_pointwise`, without
    touching the modules."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _conv2d_call(*args, **kwargs) if func is F.conv2d else None
        if call is None:
            return func(*args, **kwargs)
        return _pointwise(*call) if _is_pointwise(call[1], call[3]) else _Conv2d.apply(*call)


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
