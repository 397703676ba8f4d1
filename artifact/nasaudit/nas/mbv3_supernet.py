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
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from nasaudit.config import Profile
from nasaudit.costs import NUM_CLASSES, Timer
from nasaudit.data.datasets import ImageDataset
from nasaudit.io import jsonable, write_json
from nasaudit.nas.base import SearchContext, shared_cache
from nasaudit.runs import job_lock
from nasaudit.spaces.mbv3 import MBV3SuperNet, channel_plan, extreme_arch, obtain_supernet
from nasaudit.spaces.mbv3.space import N_LAYERS, N_STAGES, MBV3Arch

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


# --- the cost model (nasaudit plan) ----------------------------------------------------------------


def _middle(values: Sequence[int]) -> int:
    return sorted(values)[len(values) // 2]


def middle_arch(
    kernels: Sequence[int], depths: Sequence[int], expands: Sequence[int], resolutions: Sequence[int]
) -> MBV3Arch:
    """The middle choice everywhere: the typical cost of networks drawn uniformly from those choices
    (what `nasaudit plan` times)."""
    return MBV3Arch(
        _middle(resolutions),
        (_middle(depths),) * N_STAGES,
        (_middle(kernels),) * N_LAYERS,
        (_middle(expands),) * N_LAYERS,
    )


def _timing_supernet(profile: Profile, arch: MBV3Arch) -> MBV3SuperNet:
    """NSGANetV2's supernet running ``arch``."""
    net = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), NUM_CLASSES, profile.nsganetv2.supernet.dropout)
    net.set_active(arch)
    return net


def shrinking_seconds(profile: Profile, n_train: int, timer: Timer) -> float:
    """Progressive shrinking on ``n_train`` images, or nothing when ``[nsganetv2.supernet] weights`` is set.

    Per phase: epochs × images × (subnets_per_step steps of the phase's middle subnet + the full
    network's forward as the teacher, from the second phase on when ``kd_ratio`` > 0); what `nasaudit
    plan` charges once per dataset, for NSGANetV2 and the space's random baseline alike.
    """
    cfg, resolutions = profile.nsganetv2.supernet, profile.mbv3.resolutions
    if cfg.weights:
        return 0.0
    full = extreme_arch([_middle(resolutions)], largest=True)
    build = partial(_timing_supernet, profile, full)
    teacher = timer.forward_per_image("mbv3/teacher", build, cfg.batch_size, precision=cfg.precision)
    seconds = 0.0
    for i, phase in enumerate(cfg.phases):
        subnet = middle_arch(phase.kernels, phase.depths, phase.expands, resolutions)
        build = partial(_timing_supernet, profile, subnet)
        step = timer.per_image(f"mbv3/phase{i}", build, cfg.batch_size, precision=cfg.precision)
        distil = teacher if i > 0 and cfg.kd_ratio > 0 else 0.0
        seconds += phase.epochs * n_train * (phase.subnets_per_step * step + distil)
    return seconds
