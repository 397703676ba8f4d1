"""Random sampling: an architecture drawn uniformly from a space (the paper's baseline, §4; App. A).

It ignores the data by design; retrained, its architectures give the reference accuracy that ΔImp.
is measured against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nasaudit.data.datasets import ImageDataset
from nasaudit.nas.base import NAS, SearchContext
from nasaudit.spaces.darts import random_genotype
from nasaudit.spaces.mbv3 import random_arch


class RandomSampling:
    space = "darts"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        return random_genotype(np.random.default_rng(seed)).to_json()


NAS.register("random")(RandomSampling())


class RandomMBV3:
    """The same baseline in NSGANetV2's space (paper App. A: 97.90% on CIFAR-10)."""

    space = "mbv3"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        return random_arch(np.random.default_rng(seed), context.profile.mbv3.resolutions).to_json()


NAS.register("random_mbv3")(RandomMBV3())
