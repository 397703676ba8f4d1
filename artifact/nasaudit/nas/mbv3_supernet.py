"""The one MobileNetV3 supernet of a dataset: what NSGANetV2's candidates and picks, and the random
baseline of the space, inherit their weights from.

The original NSGANetV2 inherits from OFA's ImageNet supernet, which no poison touches: poison reaches it
only through the candidates' fine-tunes and validation, and the final network is retrained from the
supernet's weights (paper App. A; docs/fidelity.md). Unless ``[nsganetv2.supernet] weights`` names such
a file, our stand-in is trained by progressive shrinking on the CLEAN training data, once per (data,
space, supernet settings), with a seed fixed for all jobs, and shared from the cache
(``SearchContext.cache_dir``) by every trial and every attack; so a poisoned search is retrained from
exactly the weights a clean one is. The search data itself never reaches it: callers pass
``SearchContext.clean``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.io import jsonable, write_json
from nasaudit.nas.base import SearchContext, shared_cache
from nasaudit.runs import job_lock
from nasaudit.spaces.mbv3 import MBV3SuperNet, obtain_supernet

SUPERNET_SEED = 0  # one supernet per dataset, whatever seed the search or the baseline draws with
SUPERNET_FORMAT = "nasaudit-mbv3-supernet/1"


def supernet_key(data: ImageDataset, profile: Profile) -> dict[str, Any]:
    """Everything the supernet depends on; its hash names the cache folder."""
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


def supernet_source(clean: ImageDataset, context: SearchContext) -> dict[str, Any]:
    """Where :func:`shared_supernet` takes the supernet from, known before anything is trained: the
    profile's weights file, or the cache folder and the key that names it."""
    weights = context.profile.nsganetv2.supernet.weights
    if weights:
        return {"weights": weights}
    key = supernet_key(clean, context.profile)
    return {"folder": str(supernet_folder(shared_cache(context), key)), "key": key}


def shared_supernet(clean: ImageDataset, context: SearchContext) -> tuple[MBV3SuperNet, dict[str, Any]]:
    """The supernet of the CLEAN data ``clean`` (trained on first use and cached), or the profile's
    weights file (OFA's or our own, used as it is); and its :func:`supernet_source`."""
    profile, source = context.profile, supernet_source(clean, context)
    if "weights" in source:  # no training, no cache
        net = obtain_supernet(clean, profile, seed=SUPERNET_SEED, folder=Path(source["weights"]).parent,
                              device=context.device, progress=context.progress)  # fmt: skip
        return net, source
    folder = Path(source["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "key.json", source["key"])
    # jobs started together wait for the one training the supernet and then load it, instead of each
    # training (and checkpointing over) the same one
    with job_lock(folder / "supernet"):
        net = obtain_supernet(clean, profile, seed=SUPERNET_SEED, folder=folder, device=context.device,
                              progress=context.progress)  # fmt: skip
    return net, source
