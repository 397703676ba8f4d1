"""The attack protocol and what every attack shares: the budget and the seeded choice of samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison
from nasaudit.errors import NasauditError
from nasaudit.registry import Registry


@dataclass(frozen=True)
class AttackContext:
    """What an attack may need beyond the data: where to compute, sizes, a cache, a victim model."""

    profile: Profile
    device: torch.device
    cache_dir: Path  # shared artifacts (surrogates, clean gradients) computed once per dataset and seed
    victim: Path | None = None


class Attack(Protocol):
    def __call__(self, dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison: ...


ATTACKS: Registry[Attack] = Registry("attack")


def check_budget(budget: float) -> None:
    if not 0.0 < budget <= 1.0:
        raise NasauditError(f"poisoning budget {budget} is outside (0, 1]; give a fraction such as 0.1")


def choose_indices(n_train: int, budget: float, rng: np.random.Generator) -> np.ndarray:
    """round(n·p) distinct training indices drawn uniformly at random (paper §4), sorted."""
    check_budget(budget)
    count = round(n_train * budget)
    return np.sort(rng.choice(n_train, size=count, replace=False)).astype(np.int64)


def run_attack(name: str, dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    check_budget(budget)
    return ATTACKS.get(name)(dataset, budget, seed, context)
