"""Condition number of the empirical neural tangent kernel, TE-NAS's trainability score (SPEC §5).

κ = λ_max/λ_min of Θ = J·Jᵀ, where row i of J is the gradient of the sum of sample i's logits with
respect to the network's weights, all samples sharing ONE train-mode forward. Because BN couples the
batch, row i is not the Jacobian of a network run on sample i alone, so a per-sample ``vmap`` over
inputs would compute a different kernel.

Two equal implementations:

- ``batched=False`` is the reference: one backward per sample through the batch forward's graph.
- ``batched=True`` (default) runs the batch through N independent copies of the weights at once
  (``vmap`` over ``functional_call``; copies fold into grouped convolutions) and takes one backward of
  Σ_i Σ_k logits[copy i, sample i, k]. Copy i's weights only influence copy i's outputs, so the
  gradient of copy i's weights is exactly row i. Every kernel runs once on an N-times larger problem
  instead of N times; the price is N forwards instead of one (a forward costs about half a backward)
  and N times the activation memory.
  (``torch.func.jacrev`` or ``is_grads_batched`` would batch only the backward, but their batching
  rules for convolution and BN backward loop over the batch, so they are no faster.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

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
    """The same Jacobian from one forward and one backward over N weight copies (see module doc)."""
    n = len(inputs)
    selected = ntk_weights(net)
    copies = {name: p.detach().expand(n, *p.shape).clone().requires_grad_() for name, p in selected.items()}
    shared = {name: p.detach() for name, p in net.named_parameters() if name not in selected}
    # Each copy updates its own running statistics, so the network's buffers are never written. Counters
    # (BN's num_batches_tracked) stay one shared copy: BN with momentum=None reads them as a Python float.
    buffers = dict(net.named_buffers())
    statistics = {name: b.expand(n, *b.shape).clone() for name, b in buffers.items() if b.is_floating_point()}
    counters = {name: b.clone() for name, b in buffers.items() if not b.is_floating_point()}

    def forward(copy_weights: dict[str, Tensor], copy_statistics: dict[str, Tensor]) -> Tensor:
        tensors = (copy_weights, shared, copy_statistics, counters)
        return logits_of(functional_call(net, tensors, (inputs,)))

    # randomness="same": any dropout mask is shared by all copies, as it is by all rows of the reference.
    logits = vmap(forward, randomness="same")(copies, statistics)
    own = torch.arange(n, device=logits.device)
    grads = torch.autograd.grad(logits[own, own].sum(), list(copies.values()), allow_unused=True)
    return torch.cat([g.reshape(n, -1) for g in grads if g is not None], dim=1)


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
