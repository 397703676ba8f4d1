"""Random sampling: an architecture drawn uniformly from the DARTS space (the paper's baseline, §4).

It ignores the data by design; retrained, its architectures give the reference accuracy that ΔImp.
is measured against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nasaudit.data.datasets import ImageDataset
from nasaudit.nas.base import NAS, SearchContext
from nasaudit.spaces.darts import random_genotype


class RandomSampling:
    space = "darts"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        return random_genotype(np.random.default_rng(seed)).to_json()


NAS.register("random")(RandomSampling())
