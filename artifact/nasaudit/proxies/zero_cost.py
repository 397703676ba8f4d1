"""RoBoT's zero-cost proxies (He et al. 2024; ztcoalson/RoBoT darts_space/search.py), with the
conventions of the zero-cost-nas code RoBoT ran.

Only ``nn.Conv2d`` and ``nn.Linear`` weights count; a network's score is the sum over those layers of
the sum over the layer's elements; losses are mean cross-entropy; networks run in train mode.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.proxies.base import PROXIES, logits_of, require_targets, scoring_mode

# Regulariser of jacob_cov's eigenvalue terms (Mellor et al.'s value).
_JACOB_COV_EPS = 1e-5


def _scored_layers(net: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [module for module in net.modules() if isinstance(module, nn.Conv2d | nn.Linear)]


def _total(terms: Iterable[Tensor]) -> float:
    """Σ over layers of Σ over elements, with one device sync per score instead of one per layer."""
    return torch.stack([term.sum() for term in terms]).sum().item()


def _grads(output: Tensor, inputs: list[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    """∂output/∂inputs, zeros where the graph never reaches an input (torch 2.0 has no materialize_grads)."""
    grads = torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _loss_gradients(
    net: nn.Module, inputs: Tensor, targets: Tensor, *, create_graph: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """The scored weights and ∂L/∂W for each (zeros for a layer the forward never uses)."""
    weights = [layer.weight for layer in _scored_layers(net)]
    loss = F.cross_entropy(logits_of(net(inputs)), targets)
    return weights, _grads(loss, weights, create_graph=create_graph)


@PROXIES.register("grad_norm")
def grad_norm(net: nn.Module, inputs: Tensor, targets: Tensor | None) -> float:
    """Σ over layers of ‖∂L/∂W‖_F."""
    targets = require_targets(targets, "grad_norm")
    with scoring_mode(net):
        _, grads = _loss_gradients(net, inputs, targets)
    return _total(g.norm() for g in grads)


@PROXIES.register("snip")
def snip(net: nn.Module, inputs: Tensor, targets: Tensor | None) -> float:
    """Σ |W ⊙ ∂L/∂W|: the loss's sensitivity to removing each connection."""
    targets = require_targets(targets, "snip")
    with scoring_mode(net):
        weights, grads = _loss_gradients(net, inputs, targets)
    return _total((w.detach() * g).abs() for w, g in zip(weights, grads, strict=True))


@PROXIES.register("grasp")
def grasp(net: nn.Module, inputs: Tensor, targets: Tensor | None) -> float:
    """Σ −W ⊙ Hg with Hg = ∂(Σ g·∂L/∂W)/∂W and g = ∂L/∂W held constant (double backward).

    zero-cost-nas takes g from a first forward and ∂L/∂W from a second, identical train-mode forward
    of the same batch; both give the same tensors, so one forward serves both roles here.
    """
    targets = require_targets(targets, "grasp")
    with scoring_mode(net):
        weights, grads = _loss_gradients(net, inputs, targets, create_graph=True)
        projection = sum((g.detach() * g).sum() for g in grads)
        hessian_grad = _grads(projection, weights)
    return _total(-w.detach() * h for w, h in zip(weights, hessian_grad, strict=True))


@PROXIES.register("fisher")
def fisher(net: nn.Module, inputs: Tensor, targets: Tensor | None) -> float:
    """Σ_layers Σ_k F_k·fan_in_k with F_k = ½·mean_n (Σ_spatial a·∂L/∂a)² over output channel k.

    Activations are the outputs of every conv/linear call, recorded by forward hooks.
    """
    targets = require_targets(targets, "fisher")
    activations: list[tuple[nn.Module, Tensor]] = []

    def record(layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        activations.append((layer, output))

    with scoring_mode(net):
        handles = [layer.register_forward_hook(record) for layer in _scored_layers(net)]
        try:
            loss = F.cross_entropy(logits_of(net(inputs)), targets)
        finally:
            for handle in handles:
                handle.remove()
        act_grads = _grads(loss, [act for _, act in activations])
    terms: list[Tensor] = []
    for (layer, act), grad in zip(activations, act_grads, strict=True):
        product = act.detach() * grad
        per_channel = product.reshape(product.shape[0], product.shape[1], -1).sum(dim=2)
        channel_fisher = 0.5 * per_channel.pow(2).mean(dim=0)
        terms.append(channel_fisher * layer.weight[0].numel())
    return _total(terms)


@PROXIES.register("synflow")
def synflow(net: nn.Module, inputs: Tensor, targets: Tensor | None = None) -> float:
    """Σ |W ⊙ ∂R/∂W| of the float64 all-positive network on an all-ones input, R = Σ logits.

    Labels and input values are unused (only the input shape). zero-cost-nas removes BN here; RoBoT's
    DARTS path keeps it in train mode, and so do we. Runs on a deep copy: the sign flip of every state
    tensor never touches the caller's network.
    """
    probe = copy.deepcopy(net).double().train()
    with torch.no_grad():
        for tensor in probe.state_dict().values():
            tensor.abs_()
    weights = [layer.weight for layer in _scored_layers(probe)]
    ones = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    with torch.enable_grad():
        flow = logits_of(probe(ones)).sum()
        grads = _grads(flow, weights)
    return _total((w.detach() * g).abs() for w, g in zip(weights, grads, strict=True))


def jacob_cov_of(jacobians: Tensor) -> Tensor:
    """jacob_cov of K networks from their per-sample input gradients (K, N, ...), as float64 (K,).

    The correlation is ``np.corrcoef``'s (clipped to [-1, 1]); NaN where it is degenerate (a sample
    whose input gradient is constant). Batched, so a stack of networks is scored in one call.
    """
    rows = jacobians.flatten(2).double()
    centred = rows - rows.mean(dim=2, keepdim=True)
    covariance = centred @ centred.transpose(1, 2)
    variance = covariance.diagonal(dim1=1, dim2=2)
    correlation = (covariance / (variance[:, :, None] * variance[:, None, :]).sqrt()).clamp(-1.0, 1.0)
    finite = torch.isfinite(correlation).all(dim=2).all(dim=1)
    eye = torch.eye(rows.shape[1], dtype=rows.dtype, device=rows.device)
    eigenvalues = torch.linalg.eigvalsh(torch.where(finite[:, None, None], correlation, eye))
    shifted = eigenvalues + _JACOB_COV_EPS
    score = -(shifted.log() + 1.0 / shifted).sum(dim=1)
    return torch.where(finite, score, torch.full_like(score, float("nan")))


@PROXIES.register("jacob_cov")
def jacob_cov(net: nn.Module, inputs: Tensor, targets: Tensor | None = None) -> float:
    """−Σ [log(v + ε) + 1/(v + ε)] over eigenvalues v of the correlation of per-sample input gradients.

    Labels unused. Each call differentiates a fresh copy of the inputs (RoBoT's code let input gradients
    accumulate across architectures, a bug we fix: docs/fidelity.md). NaN for a degenerate correlation
    matrix; RoBoT skips NaN terms when it combines proxies.
    """
    with scoring_mode(net):
        probe = inputs.detach().clone().requires_grad_(True)
        (jacobian,) = torch.autograd.grad(logits_of(net(probe)).sum(), probe)
    return jacob_cov_of(jacobian[None]).item()
