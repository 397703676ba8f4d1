"""Trainable models by name: what the one trainer can retrain (from scratch; mbv3 from inherited weights).

A builder takes the architecture description (a genotype for search spaces, nothing for fixed
models), the class count and the profile, and returns an ``nn.Module`` whose forward gives logits or
``(logits, auxiliary_logits_or_None)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn
import torchvision

from nasaudit.config import Profile, TrainConfig
from nasaudit.registry import Registry

ModelBuilder = Callable[[Any, int, Profile], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")

#: A search space's architecture from its JSON form; the folder resolves relative paths in it.
ArchitectureReader = Callable[[Any, Path], Any]
ARCHITECTURES: Registry[ArchitectureReader] = Registry("architecture format")

#: The profile section holding a space's retraining recipe; spaces not listed use ``[train]``.
TRAIN_RECIPES: dict[str, str] = {"mbv3": "mbv3_train"}


def train_config(space: str, profile: Profile) -> TrainConfig:
    """The recipe architectures of ``space`` are retrained with."""
    return getattr(profile, TRAIN_RECIPES.get(space, "train"))


def load_architecture(name_or_path: str) -> tuple[str, Any]:
    """(space, architecture) from a reference name, a genotype file or a search's architecture.json."""
    import json

    from nasaudit.spaces.darts import load

    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict) and "space" in record and "architecture" in record:
            MODELS.get(record["space"])  # an unknown space is a one-line error
            return record["space"], ARCHITECTURES.get(record["space"])(record["architecture"], path.parent)
    return "darts", load(name_or_path)


@MODELS.register("darts")
def darts_network(genotype: Any, num_classes: int, profile: Profile) -> nn.Module:
    """The DARTS evaluation network (SPEC §3) sized by ``[darts_net]``; auxiliary head if weighted."""
    from nasaudit.spaces.darts import EvalNetwork, Genotype

    assert isinstance(genotype, Genotype)
    auxiliary = profile.train.auxiliary_weight > 0
    return EvalNetwork(genotype, profile.darts_net.channels, profile.darts_net.layers, num_classes, auxiliary)


@ARCHITECTURES.register("darts")
def darts_architecture(data: Any, _: Path) -> Any:
    from nasaudit.spaces.darts import Genotype

    return Genotype.from_json(data)


@MODELS.register("mbv3")
def mbv3_network(arch: Any, num_classes: int, profile: Profile) -> nn.Module:
    """An architecture of NSGANetV2's space (SPEC §7); its weights start as ``[mbv3] init`` says."""
    from nasaudit.spaces.mbv3 import MBV3Arch, retrain_network

    assert isinstance(arch, MBV3Arch)
    return retrain_network(arch, num_classes, profile.mbv3)


@ARCHITECTURES.register("mbv3")
def mbv3_architecture(data: Any, folder: Path) -> Any:
    from nasaudit.spaces.mbv3 import MBV3Arch

    return MBV3Arch.from_json(data, folder)


@MODELS.register("resnet18_cifar")
def resnet18_cifar(_: Any, num_classes: int, profile: Profile) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32×32 inputs: 3×3 stride-1 stem, no max-pool (SPEC §2)."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
