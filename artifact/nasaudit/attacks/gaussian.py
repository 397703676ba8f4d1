"""Gaussian noise (paper §3.2): N(0, σ²) per pixel, clipped to ℓ∞ ≤ ε, image clamped to [0, 1].

Stored as uint8 by rounding to the nearest of the 256 levels (round half to even, numpy's rint);
because the clean pixel is already on that grid and |noise| ≤ ε = 16/255, the stored image still
satisfies the ℓ∞ bound exactly.
"""

from __future__ import annotations

import numpy as np

from nasaudit.attacks.base import ATTACKS, AttackContext, attack, choose_indices, free
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison, make_poison

SIGMA = 16 / 255
EPSILON = 16 / 255


@ATTACKS.register("gaussian")
@attack(label="Gaussian Noise", cost=free)
def gaussian(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    rng = np.random.default_rng(seed)
    indices = choose_indices(len(dataset.train), budget, rng)
    clean = dataset.train.images[indices].astype(np.float64) / 255.0
    noise = np.clip(rng.normal(0.0, SIGMA, size=clean.shape), -EPSILON, EPSILON)
    noisy = np.clip(clean + noise, 0.0, 1.0)
    images = np.rint(noisy * 255.0).astype(np.uint8)
    params = {"sigma": SIGMA, "epsilon": EPSILON, "rounding": "nearest uint8 level (numpy rint)"}
    return make_poison("gaussian", dataset, seed, indices, images=images, params=params)
