"""Condition number of the empirical neural tangent kernel, TE-NAS's trainability score (Chen et al.
2021; as run: ztcoalson/TENAS lib/procedures/ntk.py).

κ = λ_max/λ_min of Θ = J·Jᵀ, where row i of J is the gradient of the sum of sample i's logits with
respect to the network's weights, all samples sharing ONE train-mode forward. Because BN couples the
batch, row i is not the Jacobian of a network run on sample i alone, so a per-sample ``vmap`` over
inputs would compute a different kernel.

Two equal implementations:

- ``batched=False`` is the reference: one backward per sample through the batch forward's graph.
- ``batched=True`` (default) runs the same single forward, then ONE backward that carries all N
  cotangents at once (``torch.func.vmap`` over ``torch.autograd.grad``). Only the cotangent is
  batched, so this is exactly the reference's N backwards, just vectorised.

The batched forward runs under :class:`~nasaudit.proxies.ntk_backward.BatchCotangents`, which gives
convolutions, BN and pools backwards that batch the cotangents faster than vmap's own rules; that
module says where the time goes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from nasaudit.proxies.base import PROXIES, logits_of, scoring_mode
from nasaudit.proxies.ntk_backward import BatchCotangents

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
    with BatchCotangents():
        logits = logits_of(net(inputs))
    n, classes = logits.shape
    # Cotangent i is 1 on every logit of sample i: its backward is the gradient of that sample's sum.
    cotangents = torch.eye(n, dtype=logits.dtype, device=logits.device)[:, :, None].expand(n, n, classes)

    def row(cotangent: Tensor) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(logits, weights, cotangent, allow_unused=True)
        return tuple(g for g in grads if g is not None)

    return torch.cat([g.reshape(n, -1) for g in vmap(row)(cotangents)], dim=1)


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
