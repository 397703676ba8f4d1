"""Confidence-based label flipping (CLF, paper §3.2 Algorithm 1).

A surrogate CIFAR ResNet-18, trained on the clean training set, scores every training sample; the
n·p samples with the largest maximum logit (the ones it is most confident about) get the label of
their smallest logit. The surrogate is trained by our trainer with the profile's ``[surrogate]``
recipe once per (dataset, seed, recipe) into ``cache_dir/surrogate``, so every budget reuses it and
an interrupted training resumes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

from nasaudit.attacks.base import ATTACKS, AttackContext, attack, check_budget
from nasaudit.batch_cap import fill_skipped
from nasaudit.config import Profile
from nasaudit.costs import Timer, VictimNet, surrogate_seconds
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import DeviceData
from nasaudit.data.poison import Poison, make_poison
from nasaudit.io import jsonable, load_torch
from nasaudit.models import MODELS
from nasaudit.train import train_model

SURROGATE = "resnet18_cifar"


@torch.no_grad()
def surrogate_logits(
    model: nn.Module, dataset: ImageDataset, device: torch.device, batch_size: int = 500
) -> np.ndarray:
    """Algorithm 1 lines 1–5: float32 logits of every training sample (eval mode, no augmentation)."""
    model.eval().to(device)
    data = DeviceData(dataset.train, dataset, device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    chunks = []
    for x, _ in data.batches(batch_size, shuffle=False):
        out = model(x)
        chunks.append((out[0] if isinstance(out, tuple) else out).float().cpu())
    return fill_skipped(torch.cat(chunks).numpy(), len(data))


def confidence_flip(logits: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 lines 6–12: (indices, new labels) of the round(n·p) highest maximum logits.

    Ties in the maximum logit go to the lower index; the new label is argmin of the sample's logits.
    """
    check_budget(budget)
    count = round(len(logits) * budget)
    order = np.argsort(-logits.max(axis=1), kind="stable")[:count].astype(np.int64)
    return order, logits[order].argmin(axis=1).astype(np.int64)


def clf_poison(
    dataset: ImageDataset, budget: float, seed: int, surrogate: nn.Module, device: torch.device, params: dict
) -> Poison:
    """The CLF poison of ``dataset`` under any surrogate network (its forward gives logits)."""
    indices, labels = confidence_flip(surrogate_logits(surrogate, dataset, device), budget)
    unchanged = int((labels == dataset.train.labels[indices]).sum())
    params = {**params, "labels_unchanged": unchanged}
    return make_poison("clf", dataset, seed, indices, labels=labels, params=params)


def train_surrogate(dataset: ImageDataset, seed: int, context: AttackContext) -> tuple[nn.Module, dict]:
    """The clean-data CIFAR ResNet-18 and its training result, trained once into the cache."""
    cfg = context.profile.surrogate
    recipe = json.dumps({"model": SURROGATE, "config": jsonable(cfg)}, sort_keys=True)
    key = hashlib.sha256((recipe + dataset.train.sha256).encode()).hexdigest()[:12]
    out_dir = context.cache_dir / "surrogate" / f"{dataset.name}-{key}-seed{seed}"

    def build() -> nn.Module:
        return MODELS.get(SURROGATE)(None, dataset.num_classes, context.profile)

    description = {"model": SURROGATE, "purpose": "CLF surrogate (paper Algorithm 1)"}
    result = train_model(build, dataset, cfg, seed=seed, device=context.device, out_dir=out_dir,
                         description=description, progress=context.progress)  # fmt: skip
    model = build()
    model.load_state_dict(load_torch(out_dir / "model.pt", "trains the surrogate again"))
    return model, {**result, "dir": str(out_dir)}


def cost(
    profile: Profile, budget: float, n_train: int, victim: VictimNet | None, timer: Timer
) -> tuple[float, float]:
    """One surrogate ResNet-18 (shared by every budget), then ranking is one pass (not counted)."""
    return 0.0, surrogate_seconds(profile, n_train, timer)


@ATTACKS.register("clf", uses=("surrogate",))
@attack(label="CLF", cost=cost)
def clf(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    check_budget(budget)
    model, result = train_surrogate(dataset, seed, context)
    params = {
        "surrogate": SURROGATE,
        "surrogate_dir": result["dir"],
        "surrogate_test_accuracy": result["test_accuracy"],
        "surrogate_epochs": result["epochs"],
    }
    return clf_poison(dataset, budget, seed, model, context.device, params)
