"""Random sampling: an architecture drawn uniformly from a space (the paper's baseline, §4; App. A).

It ignores the data by design; retrained, its architectures give the reference accuracy that ΔImp.
is measured against, so they are retrained with the recipe the searched architectures get. In the
MobileNetV3 space that recipe (``[mbv3] init = "search"``) starts from weights inherited from a
supernet, so a random architecture inherits its own from a supernet trained by progressive shrinking
on the data the baseline is drawn for (the clean training set, in the grid and ``nasaudit
random-baseline``). That supernet does not depend on which architecture is drawn: it is trained once
per (data, space, supernet settings), with a seed fixed for all of them, and shared by every random
architecture from the shared cache (``SearchContext.cache_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.io import jsonable, save_torch, write_json
from nasaudit.nas.base import NAS, SearchContext, shared_cache
from nasaudit.nas.nsganetv2 import SUBNET  # the inherited weights' file, named as a search names its pick's
from nasaudit.runs import job_lock
from nasaudit.spaces.darts import random_genotype
from nasaudit.spaces.mbv3 import MBV3SuperNet, obtain_supernet, random_arch

SUPERNET_SEED = 0  # the baseline's supernet is one per dataset, whatever seed draws the architecture
SUPERNET_FORMAT = "nasaudit-baseline-supernet/1"


class RandomSampling:
    space = "darts"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        return random_genotype(np.random.default_rng(seed)).to_json()


NAS.register("random")(RandomSampling())


def supernet_key(data: ImageDataset, profile: Profile) -> dict[str, Any]:
    """Everything the baseline's supernet depends on; its hash names the cache folder."""
    return jsonable(
        {
            "format": SUPERNET_FORMAT,
            "dataset": data.name,
            "train_sha256": data.train.sha256,
            "mean": list(data.mean),
            "std": list(data.std),
            "num_classes": data.num_classes,
            "width_mult": profile.mbv3.width_mult,
            "resolutions": list(profile.mbv3.resolutions),
            "supernet": profile.nsganetv2.supernet,
            "seed": SUPERNET_SEED,
        }
    )


def supernet_folder(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "mbv3_supernet" / digest[:20]


def baseline_supernet(data: ImageDataset, context: SearchContext) -> MBV3SuperNet:
    """The supernet random architectures of ``data`` inherit from, trained on first use and cached."""
    profile = context.profile
    key = supernet_key(data, profile)
    folder = supernet_folder(shared_cache(context), key)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "key.json", key)
    # jobs started together wait for the one training the supernet and then load it, instead of each
    # training (and checkpointing over) the same one
    with job_lock(folder / "supernet"):
        return obtain_supernet(
            data,
            profile,
            seed=SUPERNET_SEED,
            folder=folder,
            device=context.device,
            progress=context.progress,
        )


class RandomMBV3:
    """The same baseline in NSGANetV2's space (paper App. A: 97.90% on CIFAR-10).

    When retraining inherits supernet weights, the drawn architecture's are written to the job folder
    (``subnet.pt``, named relative to it, as a search names its pick's); otherwise no supernet is needed.
    """

    space = "mbv3"

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        arch = random_arch(np.random.default_rng(seed), context.profile.mbv3.resolutions)
        if context.profile.mbv3.init != "search":
            return arch.to_json()
        supernet = baseline_supernet(data, context)
        save_torch(context.out_dir / SUBNET, {"state_dict": supernet.extract(arch).state_dict()})
        return dataclasses.replace(arch, weights=SUBNET).to_json()


NAS.register("random_mbv3", uses=("mbv3", "nsganetv2.supernet"))(RandomMBV3())
