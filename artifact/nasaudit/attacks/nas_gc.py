"""NAS-specific gradient canceling (paper §3.2, §4): GC aimed at what the search optimises.

For a training-based search (P-DARTS) the victim is the converged last-stage supernet and θ is its
architecture parameters (α_normal, α_reduce): the poisons cancel the gradient that drives the
architecture choice. For TE-NAS, RoBoT and NSGANetV2 the victim is the best clean final architecture,
fully trained, and θ is its weights and biases. In both cases θ is first moved by GradPC (paper §3.2:
"In both cases, we first perturb the target parameters θ using GradPC"; the authors' check_norms.py in
their P-DARTS fork loads ``gradpc-pdarts-eps=1.0-arch/target_model.pth``, GradPC on α at radius 1.0).
Which parameters are targeted is a property of the victim's kind, looked up in ``NAS_TARGETS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from nasaudit.attacks.base import ATTACKS, AttackContext, attack
from nasaudit.attacks.gc import cost, gradient_canceling, require_victim, weights_and_biases
from nasaudit.attacks.victim import read_victim
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison
from nasaudit.registry import Registry


def architecture_parameters(model: nn.Module) -> list[str]:
    """α_normal and α_reduce of a DARTS supernet."""
    from nasaudit.spaces.darts import CELL_TYPES

    return [f"alpha_{cell_type}" for cell_type in CELL_TYPES]


@dataclass(frozen=True)
class TargetRule:
    """Which parameters of a victim kind NAS-specific GC targets."""

    parameters: Callable[[nn.Module], list[str]]
    target: str  # recorded in the poison's parameters


NAS_TARGETS: Registry[TargetRule] = Registry("nas_gc victim kind")
NAS_TARGETS.register("darts_supernet")(TargetRule(architecture_parameters, "architecture"))
NAS_TARGETS.register("darts_network")(TargetRule(weights_and_biases, "weights_and_biases"))
NAS_TARGETS.register("mbv3_network")(TargetRule(weights_and_biases, "weights_and_biases"))
NAS_TARGETS.register("resnet18_cifar")(TargetRule(weights_and_biases, "weights_and_biases"))


@ATTACKS.register("nas_gc", uses=("gc",))
@attack(label="GC", cost=cost)  # the paper's tables' "GC" is this one (expected_results/README.md)
def nas_gc(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    victim = read_victim(require_victim(context, "nas_gc"), dataset)
    rule = NAS_TARGETS.get(victim.kind)
    names = rule.parameters(victim.model)
    return gradient_canceling("nas_gc", dataset, budget, seed, context, victim, names, target=rule.target)
