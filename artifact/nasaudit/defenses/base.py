"""The defense protocol: (training data, seed, context) → a defended dataset (paper §6.1, Table 4).

A defense runs before the search and sees only the (poisoned) training split, never which samples
were poisoned. Defenses register in ``DEFENSES``; the CLI and the tests enumerate it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.defenses.files import DefendedData, poison_outcome
from nasaudit.registry import Registry


@dataclass(frozen=True)
class DefenseContext:
    """Where a defense computes, its sizes, and a cache for what several defenses share."""

    profile: Profile
    device: torch.device
    cache_dir: Path  # surrogate models and features, keyed by the hash of the data they were computed on
    source: dict[str, Any] | None = None  # the poison behind the input split (recorded in the manifest)
    progress: bool = True


class Defense(Protocol):
    def __call__(self, data: ImageDataset, seed: int, context: DefenseContext) -> DefendedData: ...


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
