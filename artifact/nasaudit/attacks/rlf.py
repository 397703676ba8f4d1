"""Random label flipping (RLF, paper §3.2): chosen samples get a label from the other C−1 classes."""

from __future__ import annotations

import numpy as np

from nasaudit.attacks.base import ATTACKS, AttackContext, attack, choose_indices, free
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison, make_poison


@ATTACKS.register("rlf")
@attack(label="RLF", cost=free)
def rlf(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    rng = np.random.default_rng(seed)
    indices = choose_indices(len(dataset.train), budget, rng)
    original = dataset.train.labels[indices]
    # An offset in 1..C-1 added modulo C is uniform over the other classes and never the original.
    offsets = rng.integers(1, dataset.num_classes, size=len(indices))
    labels = (original + offsets) % dataset.num_classes
    return make_poison("rlf", dataset, seed, indices, labels=labels)
