"""The defense protocol: (training data, seed, context) → a defended dataset (paper §6.1, Table 4).

A defense runs before the search and sees only the (poisoned) training split, never which samples
were poisoned. Defenses register in ``DEFENSES``, each as a ``Defense`` carrying its label and cost
model; the CLI, the grid, `nasaudit plan` and the tables read them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.defenses.files import DefendedData, poison_outcome, save_defended
from nasaudit.npzfile import manifest_path, npz_path
from nasaudit.registry import Registry
from nasaudit.runs import data_identity, fingerprint, profile_sections, reuse

if TYPE_CHECKING:
    from nasaudit.costs import Timer


@dataclass(frozen=True)
class DefenseContext:
    """Where a defense computes, its sizes, and a cache for what several defenses share."""

    profile: Profile
    device: torch.device
    cache_dir: Path  # surrogate models and features, keyed by the hash of the data they were computed on
    source: dict[str, Any] | None = None  # the poison behind the input split (recorded in the manifest)
    progress: bool = True


class Defend(Protocol):
    def __call__(self, data: ImageDataset, seed: int, context: DefenseContext) -> DefendedData: ...


# Seconds on the timer's device of one defense of a training set (profile, its size, timer).
DefenseCost = Callable[[Profile, int, "Timer"], float]


@dataclass(frozen=True)
class Defense:
    """A registered defense, everything the rest of the package asks of it: how it defends, its name
    in tables and figures, and its cost model for `nasaudit plan` (None: none). Called, it defends;
    keyword arguments reach the function (the injectable DDPM, losses or features of the tests)."""

    defend: Defend
    label: str
    cost: DefenseCost | None

    def __call__(
        self, data: ImageDataset, seed: int, context: DefenseContext, **injected: Any
    ) -> DefendedData:
        return self.defend(data, seed, context, **injected)


def defense(label: str, cost: DefenseCost | None) -> Callable[[Defend], Defense]:
    """Make a defending function a ``Defense``, beneath ``@DEFENSES.register`` (docs/extending.md)."""
    return lambda defend: Defense(defend, label, cost)


DEFENSES: Registry[Defense] = Registry("defense")


def run_defense(
    name: str,
    data: ImageDataset,
    seed: int,
    context: DefenseContext,
    poisoned: np.ndarray | None = None,
) -> DefendedData:
    """Run a defense; with the ``poisoned`` indices (known to the caller, never shown to the defense)
    its result records how many poisoned and clean samples it dropped and kept, per class."""
    defended = DEFENSES.get(name)(data, seed, context)
    if poisoned is None:
        return defended
    return replace(defended, poison_outcome=poison_outcome(defended.keep, data.train.labels, poisoned))


def defense_identity(name: str, data: ImageDataset, seed: int, context: DefenseContext) -> dict[str, Any]:
    """What a defended dataset depends on: the defense, its profile sections, the seed and the input
    data (by the provenance in ``context.source``: the clean split and the poison applied to it, which
    also fixes the ``poisoned`` indices whose outcome the manifest records)."""
    return fingerprint(
        "defend",
        defense=name,
        seed=seed,
        data=data_identity(data, context.source),
        profile=profile_sections(context.profile, DEFENSES.uses(name)),
    )


def make_defended_file(
    name: str,
    data: ImageDataset,
    seed: int,
    context: DefenseContext,
    out: Path,
    poisoned: np.ndarray | None = None,
) -> tuple[Path, bool]:
    """The defended dataset ``out`` (NAME.npz + NAME.json) of this run: reused when this run made it,
    else computed and saved. Returns the npz path and whether it was computed now."""
    identity = defense_identity(name, data, seed, context)
    if reuse(manifest_path(out), identity, "runs the defense again") is not None:
        return npz_path(out), False
    return save_defended(run_defense(name, data, seed, context, poisoned), out, identity), True
