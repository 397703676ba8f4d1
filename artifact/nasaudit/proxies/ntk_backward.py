"""Backwards that carry a batch of cotangents faster than vmap's own rules, for the batched κ_NTK.

κ_NTK's batched path (:mod:`nasaudit.proxies.ntk`) runs N backwards of one forward as one vmapped
backward. Where the time goes, measured on TE-NAS's scoring net (C = 1, ~360 convolutions, 182 BNs
and 56 pools on 1- and 2-channel maps), and what this module does about each:

- Convolution backward, 85% of the reference's time: PyTorch's CPU kernels are slow on such thin
  maps, and vmap's rule, which folds the cotangents into the batch dimension, is no faster than N
  separate calls. A 1×1 convolution becomes a product over channels (:func:`_pointwise`), whose
  backward vmap batches well; any other goes through :class:`_Conv2d`, whose backward makes each
  (cotangent, sample) map a group of ONE convolution of a single image (:func:`_input_grads`) and
  contracts the input's patches with all cotangents in one matmul (:func:`_weight_grads`).
- BN backward: vmap's rule repeats the input per cotangent and was slower than N separate calls;
  :class:`_BatchNorm`'s backward is its closed form in five plain ops, which vmap batches natively.
- Pool backward: the CPU kernel of the average pool's backward is slow at any batch; it becomes the
  same batched convolution with a ones kernel, and the max pool's a single scatter-add.

These backwards take the cotangents out of vmap's batched tensor and put the gradients back
(:func:`_per_cotangent`), sparing functorch's machinery for custom functions (~0.3 ms a call). What
remains is the routed forward's own overhead, convolution kernels on thin maps, and memory-bound
elementwise work on tensors N times the forward's.
:class:`BatchCotangents` reroutes the calls while a forward runs, without touching the modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C import _functorch
from torch.overrides import TorchFunctionMode

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

    Which batching is fast was measured on CPU: each of the B·N (cotangent, sample) maps becomes a
    group of ONE convolution of a single image, so the contiguous cotangents are its input as they
    lie and its output is the result as it lies, with no copy either side (a channels-last copy
    costs as much as the convolution). Unstrided, it is a plain convolution with the flipped kernel,
    several times faster than a transposed one when dilated; a stride equal to the dilation (and
    dividing the padding) reads only a sub-grid, on which the convolution is unstrided.
    """
    b, n, out_channels, *out_size = g.shape
    images, groups = b * n, spec.groups
    out_per_group, in_per_group = out_channels // groups, input_shape[1] // groups
    (s_h, s_w), (p_h, p_w) = spec.stride, spec.padding
    if spec.stride == spec.dilation != (1, 1) and p_h % s_h == p_w % s_w == 0:
        sub_shape = torch.Size([*input_shape[:2], -(-input_shape[2] // s_h), -(-input_shape[3] // s_w)])
        sub_spec = _ConvSpec((1, 1), (p_h // s_h, p_w // s_w), (1, 1), groups)
        sub_grads = _input_grads(g, sub_shape, w, sub_spec)
        grads = g.new_zeros(b, *input_shape)
        grads[..., ::s_h, ::s_w] = sub_grads
        return grads
    single = g.reshape(1, images * out_channels, *out_size)
    reach = [d * (k - 1) for d, k in zip(spec.dilation, w.shape[2:], strict=True)]
    if spec.stride == (1, 1) and p_h <= reach[0] and p_w <= reach[1]:
        kernels = w.reshape(groups, out_per_group, in_per_group, *w.shape[2:]).transpose(1, 2).flip(-2, -1)
        kernels = kernels.reshape(-1, out_per_group, *w.shape[2:]).repeat(images, 1, 1, 1)
        padding = [reach[0] - p_h, reach[1] - p_w]
        grads = F.conv2d(single, kernels, None, 1, padding, spec.dilation, groups * images)
    else:
        # output_padding: the rows a strided forward dropped, so the result has the input's size again.
        sizes = zip(input_shape[2:], out_size, reach, spec.stride, spec.padding, strict=True)
        extra = [size - ((out - 1) * s - 2 * p + r + 1) for size, out, r, s, p in sizes]
        geometry = (spec.stride, spec.padding, extra, groups * images, spec.dilation)
        grads = F.conv_transpose2d(single, w.repeat(images, 1, 1, 1), None, *geometry)
    return grads.view(b, *input_shape)


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


def _conv_grads(g: Tensor, x: Tensor, w: Tensor, spec: _ConvSpec) -> tuple[Tensor, Tensor]:
    return _input_grads(g, x.shape, w, spec), _weight_grads(g, x, w, spec)


def _per_cotangent(g: Tensor, batched: Callable[..., tuple[Tensor, ...]], *args: Any) -> tuple[Tensor, ...]:
    """``batched(cotangents, *args)`` (cotangents (B, *g.shape) → gradients (B, …)) applied to a
    backward's ``g``.

    Under κ_NTK's vmap, ``g`` is functorch's BatchedTensor of all B cotangents: it is unwrapped, so
    ``batched`` sees them as one plain tensor and vmap's per-op rules never run, and the gradients are
    wrapped back. An autograd.Function with a ``vmap`` rule does the same, but its Python machinery
    cost ~0.3 ms a call, more than most of these kernels. (``torch._C._functorch`` is private; the
    functions used here exist from torch 2.0 on, which the compat tests cover.) The saved ``args``
    are plain tensors: PyTorch refuses to run these functions' forwards under a transform. Anywhere
    else ``g`` is one cotangent: a batch of one.
    """
    if not _functorch.is_batchedtensor(g):
        return tuple(grad[0] for grad in batched(g[None], *args))
    level = _functorch.maybe_get_level(g)
    cotangents, dim = _functorch._unwrap_batched(g, level)
    return tuple(
        _functorch._add_batch_dim(grad, 0, level) for grad in batched(cotangents.movedim(dim, 0), *args)
    )


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` with the same forward, whose backward computes (∂/∂input, ∂/∂weight) for all
    cotangents at once by :func:`_input_grads` and :func:`_weight_grads`, where vmap's own rule folds
    the cotangents into the batch dimension, in which PyTorch's kernels for thin maps are no faster
    than one call per cotangent. Both are always computed (an input gradient nobody needs is the
    stem's, a negligible cost)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, bias: Tensor | None, spec: _ConvSpec) -> Tensor:
        ctx.spec = spec
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, bias, spec.stride, spec.padding, spec.dilation, spec.groups)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, w = ctx.saved_tensors
        needs_x, needs_w, needs_bias = ctx.needs_input_grad[:3]
        dx, dw = _per_cotangent(g, _conv_grads, x, w, ctx.spec) if needs_x or needs_w else (None, None)
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


# --- batch norm and pools ---------------------------------------------------------------------------


class _BatchNorm(torch.autograd.Function):
    """Train-mode ``F.batch_norm``, running statistics included, with a backward in a few plain ops:

        ∂β = Σ g,  ∂γ = Σ g·x̂,  ∂x = γ·rstd·(g − (∂β + x̂·∂γ) / count),  sums per channel.

    vmap batches each of these natively over the cotangents, where its rule for BN's own backward
    repeats the input per cotangent and runs slower than one call per cotangent. The forward saves
    x̂ and γ·rstd for it."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None,
        bias: Tensor | None, momentum: float, eps: float,
    ) -> Tensor:  # fmt: skip
        statistics = (running_mean, running_var, True, momentum, eps)
        out, mean, rstd = torch.native_batch_norm(x, weight, bias, *statistics)
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - mean.view(per_channel)) * rstd.view(per_channel)
        ctx.save_for_backward(x_hat, rstd if weight is None else rstd * weight)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x_hat, scale = ctx.saved_tensors
        per_channel = (1, -1) + (1,) * (g.dim() - 2)
        summed = [0, *range(2, g.dim())]
        count = g.numel() // g.shape[1]
        bias_grads, weight_grads = g.sum(summed), (g * x_hat).sum(summed)
        centred = g - (bias_grads / count).view(per_channel)
        grads = torch.addcmul(centred, x_hat, (weight_grads / count).view(per_channel), value=-1)
        needs_w, needs_b = ctx.needs_input_grad[3:5]
        return (
            grads * scale.view(per_channel), None, None,
            weight_grads if needs_w else None, bias_grads if needs_b else None, None, None,
        )  # fmt: skip


def _batch_norm(
    x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
    bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
) -> Tensor | None:  # fmt: skip
    """Train-mode BN through :class:`_BatchNorm`; None in eval mode, where BN is an affine map."""
    if not training:
        return None
    return _BatchNorm.apply(x, running_mean, running_var, weight, bias, momentum, eps)


@dataclass(frozen=True, eq=False)
class _Pool:
    """One pooling call: its geometry and what its backward needs (the max's argmax indices, the
    average's divisor per output pixel)."""

    spec: _ConvSpec
    kernel: tuple[int, int]
    indices: Tensor | None = None
    divisor: Tensor | None = None

    def input_grads(self, g: Tensor, x: Tensor) -> Tensor:
        if self.indices is None:
            ones = g.new_ones(x.shape[1], 1, *self.kernel)
            return _input_grads(g / self.divisor, x.shape, ones, self.spec)
        b, n, c = g.shape[:3]
        grads = g.new_zeros(b, n, c, x[0, 0].numel())
        indices = self.indices.flatten(2).expand(b, -1, -1, -1)
        return grads.scatter_add_(3, indices, g.flatten(3)).view(b, *x.shape)


class _Pool2d(torch.autograd.Function):
    """A pool's output, computed by the caller, with a backward for all cotangents at once: the
    average's as the convolution :func:`_input_grads` with a ones kernel, the max's as one
    scatter-add."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out: Tensor, pool: _Pool) -> Tensor:
        ctx.pool = pool
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        (grads,) = _per_cotangent(g, lambda cotangents, x: (ctx.pool.input_grads(cotangents, x),), x)
        return grads, None, None


def _avg_pool2d(
    x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
    count_include_pad: bool = True, divisor_override: int | None = None,
) -> Tensor | None:  # fmt: skip
    """Average pool through :class:`_Pool2d`; None where the ones-kernel convolution is not its
    backward (ceil mode, whose windows can leave the padded input; an unbatched input)."""
    if ceil_mode or x.dim() != 4:
        return None
    spec = _ConvSpec(_pair(stride or kernel_size), _pair(padding), (1, 1), x.shape[1])
    kernel = _pair(kernel_size)
    with torch.no_grad():  # the graph is _Pool2d's alone
        out = F.avg_pool2d(x, kernel, spec.stride, spec.padding, False, count_include_pad, divisor_override)
        if divisor_override:
            divisor = x.new_tensor(float(divisor_override))
        elif count_include_pad:
            divisor = x.new_tensor(float(kernel[0] * kernel[1]))
        else:  # the window's pixels inside the input: a ones-kernel convolution of a ones map
            ones = x.new_ones(1, 1, *x.shape[2:])
            divisor = F.conv2d(ones, x.new_ones(1, 1, *kernel), None, spec.stride, spec.padding)
    return _Pool2d.apply(x, out, _Pool(spec, kernel, divisor=divisor))


def _max_pool2d(
    x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
    ceil_mode: bool = False, return_indices: bool = False,
) -> Tensor | None:  # fmt: skip
    """Max pool through :class:`_Pool2d`; None where indices are asked for or the input is unbatched."""
    if return_indices or x.dim() != 4:
        return None
    spec = _ConvSpec(_pair(stride or kernel_size), _pair(padding), _pair(dilation), x.shape[1])
    kernel = _pair(kernel_size)
    with torch.no_grad():  # the graph is _Pool2d's alone
        out, indices = F.max_pool2d(x, kernel, spec.stride, spec.padding, spec.dilation, ceil_mode, True)
    return _Pool2d.apply(x, out, _Pool(spec, kernel, indices=indices))


def _conv2d(*args: Any, **kwargs: Any) -> Tensor | None:
    call = _conv2d_call(*args, **kwargs)
    if call is None:
        return None
    return _pointwise(*call) if _is_pointwise(call[1], call[3]) else _Conv2d.apply(*call)


_ROUTES = {F.conv2d: _conv2d, F.batch_norm: _batch_norm, F.avg_pool2d: _avg_pool2d, F.max_pool2d: _max_pool2d}


class BatchCotangents(TorchFunctionMode):
    """Send every convolution, train-mode BN and 2-d pool of a forward through the functions above,
    whose backwards batch the cotangents, without touching the modules."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        out = None if route is None else route(*args, **kwargs)
        return func(*args, **kwargs) if out is None else out
