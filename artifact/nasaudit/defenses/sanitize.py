"""Loss-based sanitisation (Koh et al. 2021; paper §6.1): drop what a classifier trained on it fits worst.

A CIFAR ResNet-18 is trained on the (poisoned) training split with the profile's ``[surrogate]``
recipe; then, within each class, the ``drop_fraction`` of samples with the highest training loss are
removed. The loss is each sample's cross-entropy under the trained model in eval mode, without
augmentation. The trained surrogate is cached (keyed by the data's hash, the recipe and the seed), so
a rerun or a second defense on the same data never trains it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nasaudit.batch_cap import fill_skipped
from nasaudit.config import Profile
from nasaudit.costs import Timer, surrogate_seconds
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import DeviceData
from nasaudit.defenses.base import DEFENSES, DefenseContext, defense
from nasaudit.defenses.files import DefendedData, make_defended
from nasaudit.errors import NasauditError
from nasaudit.io import load_torch
from nasaudit.models import MODELS
from nasaudit.train import train_model

SURROGATE = "resnet18_cifar"

LossFunction = Callable[[ImageDataset, int, DefenseContext], np.ndarray]


def surrogate_losses(data: ImageDataset, seed: int, context: DefenseContext) -> np.ndarray:
    """Per-sample training loss of a surrogate trained on ``data.train`` (float64, one per sample)."""
    cfg = context.profile.surrogate
    recipe = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    folder = context.cache_dir / "sanitize" / f"{data.name}-{data.train.sha256[:16]}-{recipe}-seed{seed}"

    def build() -> torch.nn.Module:
        return MODELS.get(SURROGATE)(None, data.num_classes, context.profile)

    train_model(
        build,
        data,
        cfg,
        seed=seed,
        device=context.device,
        out_dir=folder,
        description={"model": SURROGATE, "purpose": "loss-based sanitisation surrogate"},
        progress=context.progress,
    )
    model = build().to(context.device)
    model.load_state_dict(load_torch(folder / "model.pt", "trains the surrogate again", context.device))
    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in DeviceData(data.train, data, context.device).batches(500, shuffle=False):
            losses.append(F.cross_entropy(model(x).float(), y, reduction="none").cpu())
    return fill_skipped(torch.cat(losses).double().numpy(), len(data.train))


def keep_lowest_loss(losses: np.ndarray, labels: np.ndarray, drop_fraction: float) -> np.ndarray:
    """Sorted indices kept when each class drops round(n_c · drop_fraction) of its highest losses.

    Ties keep the lower index; a NaN loss counts as the highest.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise NasauditError(f"sanitisation drop_fraction {drop_fraction} is outside [0, 1)")
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranked = members[np.argsort(losses[members], kind="stable")]
        n_drop = math.floor(len(members) * drop_fraction + 0.5)
        keep.append(ranked[: len(members) - n_drop])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def cost(profile: Profile, n_train: int, timer: Timer) -> float:
    """A ResNet-18 trained on each poisoned set; scoring the losses is one more pass (not counted)."""
    return surrogate_seconds(profile, n_train, timer)


@DEFENSES.register("sanitize", uses=("surrogate", "defenses.sanitize"))
@defense(label="Loss-Based Sanitization", cost=cost)
def sanitize(
    data: ImageDataset, seed: int, context: DefenseContext, *, losses: LossFunction = surrogate_losses
) -> DefendedData:
    """Keep, per class, the samples with the lowest surrogate training loss (``losses`` is injectable)."""
    fraction = context.profile.defenses.sanitize.drop_fraction
    values = np.asarray(losses(data, seed, context), dtype=np.float64)
    if values.shape != (len(data.train),):
        raise ValueError(f"need one loss per training sample ({len(data.train)}), got {values.shape}")
    keep = keep_lowest_loss(values, data.train.labels, fraction)
    params = {
        "drop_fraction": fraction,
        "losses": losses.__name__,
        "surrogate": SURROGATE,
        "recipe": dataclasses.asdict(context.profile.surrogate),
    }
    return make_defended("sanitize", data, seed, keep, params=params, source=context.source)
