"""The attack protocol and what every attack shares: the budget and the seeded choice of samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison, save_poison
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_file
from nasaudit.npzfile import manifest_path, npz_path
from nasaudit.registry import Registry
from nasaudit.runs import data_identity, fingerprint, profile_sections, reuse

if TYPE_CHECKING:
    from nasaudit.costs import Timer, VictimNet


@dataclass(frozen=True)
class AttackContext:
    """What an attack may need beyond the data: where to compute, sizes, a cache, a victim model."""

    profile: Profile
    device: torch.device
    cache_dir: Path  # shared artifacts (surrogates, clean gradients) computed once per dataset and seed
    victim: Path | None = None
    progress: bool = True  # progress bars on a terminal (the grid's workers turn them off)


class Craft(Protocol):
    def __call__(self, dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison: ...


# Seconds on the timer's device of one poison (profile, budget, training-set size, the network GC would
# differentiate (None for a poison crafted without a victim), timer), and of what its budgets share.
PoisonCost = Callable[[Profile, float, int, "VictimNet | None", "Timer"], tuple[float, float]]


@dataclass(frozen=True)
class Attack:
    """A registered attack, everything the rest of the package asks of it: how it crafts a poison, its
    name in tables and figures, and its cost model for `nasaudit plan` (None: none). Called, it crafts."""

    craft: Craft
    label: str
    cost: PoisonCost | None

    def __call__(self, dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
        return self.craft(dataset, budget, seed, context)


def attack(label: str, cost: PoisonCost | None) -> Callable[[Craft], Attack]:
    """Make a crafting function an ``Attack``, beneath ``@ATTACKS.register`` (docs/extending.md)."""
    return lambda craft: Attack(craft, label, cost)


def free(
    profile: Profile, budget: float, n_train: int, victim: VictimNet | None, timer: Timer
) -> tuple[float, float]:
    """The cost model of an attack without device work: a few seconds of numpy on the CPU."""
    return 0.0, 0.0


ATTACKS: Registry[Attack] = Registry("attack")


def check_budget(budget: float, n_train: int | None = None) -> None:
    """Refuse a budget outside (0, 1], or one that poisons no sample of ``n_train`` (round(n·p) = 0)."""
    if not 0.0 < budget <= 1.0:
        raise NasauditError(f"poisoning budget {budget} is outside (0, 1]; give a fraction such as 0.1")
    if n_train is not None and round(n_train * budget) < 1:
        digits = 1 - math.floor(math.log10(1 / n_train))  # two significant digits, rounded up
        smallest = math.ceil(10**digits / n_train) / 10**digits
        raise NasauditError(
            f"poisoning budget {budget} poisons none of the {n_train} training samples; "
            f"give at least {smallest:g} (one sample)"
        )


def choose_indices(n_train: int, budget: float, rng: np.random.Generator) -> np.ndarray:
    """round(n·p) distinct training indices drawn uniformly at random (paper §4), sorted."""
    check_budget(budget, n_train)
    count = round(n_train * budget)
    return np.sort(rng.choice(n_train, size=count, replace=False)).astype(np.int64)


def run_attack(name: str, dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    check_budget(budget, len(dataset.train))
    return ATTACKS.get(name)(dataset, budget, seed, context)


def poison_identity(
    attack: str, dataset: ImageDataset, budget: float, seed: int, context: AttackContext
) -> dict[str, Any]:
    """What a poison depends on: the attack, its profile sections, budget, seed, data and victim."""
    victim = context.victim
    return fingerprint(
        "poison",
        attack=attack,
        budget=budget,
        seed=seed,
        data=data_identity(dataset),
        profile=profile_sections(context.profile, ATTACKS.uses(attack)),
        victim_sha256=None
        if victim is None
        else sha256_file(victim)
        if Path(victim).is_file()
        else str(victim),
    )


def make_poison_file(
    attack: str, dataset: ImageDataset, budget: float, seed: int, context: AttackContext, out: Path
) -> tuple[Path, bool]:
    """The poison ``out`` (NAME.npz + NAME.json) of this run: reused when this run made it, else
    crafted and saved. Returns the npz path and whether it was crafted now."""
    identity = poison_identity(attack, dataset, budget, seed, context)
    if reuse(manifest_path(out), identity, "crafts the poison again") is not None:
        return npz_path(out), False
    return save_poison(run_attack(attack, dataset, budget, seed, context), out, identity), True
