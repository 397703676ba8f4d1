"""Random sampling: an architecture drawn at random from a space (the paper's baseline, §4; App. A).

It ignores the data by design; retrained, its architectures give the reference accuracy that ΔImp.
is measured against, so they are retrained with the recipe the searched architectures get. In the
DARTS space the paper profile retrains the authors' own ten random genotypes (RANDOM_1..10 of their
genotypes.py, registered as ``random_1``..``random_10``): trial k takes the k-th name of
``[random_baseline] genotypes``. With none listed, a genotype is drawn by ``[random_baseline]
sampling``: "as_run" is their random_genotype.py (each edge's input independent), "distinct" draws 2
distinct inputs per node. In the
MobileNetV3 space that recipe (``[mbv3] init = "search"``) starts from weights inherited from a
supernet: a random architecture inherits its own from the dataset's one shared supernet
(:mod:`nasaudit.nas.mbv3_supernet`), the one NSGANetV2's searches inherit from, trained once on the
clean training data and shared from the cache (``SearchContext.cache_dir``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nasaudit.config import Profile, RandomBaselineConfig
from nasaudit.costs import Timer
from nasaudit.data.datasets import ImageDataset
from nasaudit.errors import NasauditError
from nasaudit.io import save_torch
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext
from nasaudit.nas.mbv3_supernet import shared_supernet, shrinking_seconds
from nasaudit.nas.nsganetv2 import SUBNET  # the inherited weights' file, named as a search names its pick's
from nasaudit.spaces.darts import GENOTYPES, Genotype, random_genotype
from nasaudit.spaces.mbv3 import random_arch


def check_random_baseline(cfg: RandomBaselineConfig, n: int) -> None:
    """One line before any work if the DARTS baseline's settings cannot give ``n`` architectures."""
    for name in cfg.genotypes:
        GENOTYPES.get(name)
    if cfg.genotypes and n > len(cfg.genotypes):
        raise NasauditError(
            f"the random baseline retrains {n} architectures but [random_baseline] genotypes lists "
            f"{len(cfg.genotypes)}; list more, lower n, or set genotypes = [] to draw them"
        )


def baseline_genotype(cfg: RandomBaselineConfig, seed: int, trial: int) -> Genotype:
    """Trial ``trial``'s architecture: the listed published genotype, else one drawn from ``seed``."""
    if not cfg.genotypes:
        return random_genotype(np.random.default_rng(seed), sampling=cfg.sampling)
    check_random_baseline(cfg, trial + 1)
    return GENOTYPES.get(cfg.genotypes[trial])


class RandomSampling(NasAlgorithm):
    space, label, is_random_baseline = "darts", "random", True

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """Nothing: sampling a genotype; its retraining is counted with the other retrains."""
        return 0.0, 0.0

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        return baseline_genotype(context.profile.random_baseline, seed, context.trial).to_json()


NAS.register("random", uses=("random_baseline",))(RandomSampling())


class RandomMBV3(NasAlgorithm):
    """The same baseline in NSGANetV2's space (paper App. A: 97.90% on CIFAR-10).

    When retraining inherits supernet weights, the drawn architecture's are written to the job folder
    (``subnet.pt``, named relative to it, as a search names its pick's); otherwise no supernet is needed.
    """

    space, label, is_random_baseline = "mbv3", "random_mbv3", True

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """With inherited weights (``[mbv3] init = "search"``), one shrinking supernet per dataset."""
        shared = shrinking_seconds(profile, n_train, timer) if profile.mbv3.init == "search" else 0.0
        return 0.0, shared

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        arch = random_arch(np.random.default_rng(seed), context.profile.mbv3.resolutions)
        if context.profile.mbv3.init != "search":
            return arch.to_json()
        supernet, _ = shared_supernet(context.clean_of(data), context)
        save_torch(context.out_dir / SUBNET, {"state_dict": supernet.extract(arch).state_dict()})
        return dataclasses.replace(arch, weights=SUBNET).to_json()


NAS.register("random_mbv3", uses=("mbv3", "nsganetv2.supernet"))(RandomMBV3())
