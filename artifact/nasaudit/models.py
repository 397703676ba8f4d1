"""Trainable models by name: what the one trainer can retrain (from scratch; mbv3 from inherited weights).

A builder takes the architecture description (a genotype for search spaces, nothing for fixed
models), the class count and the profile, and returns an ``nn.Module`` whose forward gives logits or
``(logits, auxiliary_logits_or_None)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision

from nasaudit.config import Profile, TrainConfig
from nasaudit.data.datasets import ImageDataset
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_file
from nasaudit.registry import Registry
from nasaudit.runs import profile_sections
from nasaudit.train import train_identity, train_model

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
    from nasaudit.io import damaged
    from nasaudit.spaces.darts import load

    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(
                path, str(exc), "(for a search's file: rerunning that search) rewrites it"
            ) from None
        if isinstance(record, dict) and "space" in record and "architecture" in record:
            try:
                MODELS.get(record["space"])  # an unknown space is a one-line error
                return record["space"], ARCHITECTURES.get(record["space"])(
                    record["architecture"], path.parent
                )
            except NasauditError as exc:
                raise NasauditError(f"{path}: {exc}") from None
    return "darts", load(name_or_path)


def retrain_description(space: str, arch: Any, profile: Profile) -> dict[str, Any]:
    """What retraining ``arch`` trains: its space, its JSON form, the network sizes (the profile
    sections the space's builder reads) and the hash of the weights it inherits, if any."""
    description = {
        "space": space,
        "architecture": arch.to_json(),
        "network": profile_sections(profile, MODELS.uses(space)),
    }
    weights = getattr(arch, "weights", None)
    if weights is not None:
        description["weights_sha256"] = sha256_file(Path(weights)) if Path(weights).is_file() else None
    return description


def retrain(
    space: str,
    arch: Any,
    dataset: ImageDataset,
    profile: Profile,
    *,
    seed: int,
    device: torch.device,
    out_dir: Path,
    progress: bool = True,
    **provenance: Any,
) -> dict[str, Any]:
    """Train ``arch`` from scratch (or its inherited weights) with its space's recipe: paper §4's
    retraining, shared by ``nasaudit train``, the random baseline and the grid. ``provenance`` (where
    the architecture came from) is recorded in the result but is not part of the run's identity."""
    build = MODELS.get(space)
    return train_model(
        lambda: build(arch, dataset.num_classes, profile),
        dataset,
        train_config(space, profile),
        seed=seed,
        device=device,
        out_dir=out_dir,
        description={**retrain_description(space, arch, profile), **provenance},
        progress=progress,
    )


def retrain_file(
    source: str | Path, dataset: ImageDataset, profile: Profile, **kwargs: Any
) -> dict[str, Any]:
    """``retrain`` the architecture ``source`` names (a reference name, a genotype file or a search's
    architecture.json), recorded as the result's ``source``: `nasaudit train` and the grid's retrain."""
    space, arch = load_architecture(str(source))
    return retrain(space, arch, dataset, profile, source=str(source), **kwargs)


def retrain_identity(
    space: str, arch: Any, dataset: ImageDataset, profile: Profile, seed: int
) -> dict[str, Any]:
    """The identity ``retrain`` records for these arguments (the grid checks finished jobs with it)."""
    return train_identity(
        train_config(space, profile), seed, dataset, retrain_description(space, arch, profile)
    )


@MODELS.register("darts", uses=("darts_net",))
def darts_network(genotype: Any, num_classes: int, profile: Profile) -> nn.Module:
    """The DARTS evaluation network (pdarts model.py) sized by ``[darts_net]``; auxiliary head if weighted."""
    from nasaudit.spaces.darts import EvalNetwork, Genotype

    assert isinstance(genotype, Genotype)
    auxiliary = profile.train.auxiliary_weight > 0
    return EvalNetwork(genotype, profile.darts_net.channels, profile.darts_net.layers, num_classes, auxiliary)


@ARCHITECTURES.register("darts")
def darts_architecture(data: Any, _: Path) -> Any:
    from nasaudit.spaces.darts import Genotype

    return Genotype.from_json(data)


@MODELS.register("mbv3", uses=("mbv3",))
def mbv3_network(arch: Any, num_classes: int, profile: Profile) -> nn.Module:
    """An architecture of NSGANetV2's space (paper App. A); its weights start as ``[mbv3] init`` says."""
    from nasaudit.spaces.mbv3 import MBV3Arch, retrain_network

    assert isinstance(arch, MBV3Arch)
    return retrain_network(arch, num_classes, profile.mbv3)


@ARCHITECTURES.register("mbv3")
def mbv3_architecture(data: Any, folder: Path) -> Any:
    from nasaudit.spaces.mbv3 import MBV3Arch

    return MBV3Arch.from_json(data, folder)


@MODELS.register("resnet18_cifar")
def resnet18_cifar(_: Any, num_classes: int, profile: Profile) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32×32 inputs: 3×3 stride-1 stem, no max-pool (paper §4)."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
