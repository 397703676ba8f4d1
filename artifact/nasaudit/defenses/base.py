"""The defense protocol: (training data, seed, context) → a defended dataset (paper §6.1, Table 4).

A defense runs before the search and sees only the (poisoned) training split, never which samples
were poisoned. Defenses register in ``DEFENSES``; the CLI and the tests enumerate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.defenses.files import DefendedData
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


def run_defense(name: str, data: ImageDataset, seed: int, context: DefenseContext) -> DefendedData:
    return DEFENSES.get(name)(data, seed, context)
