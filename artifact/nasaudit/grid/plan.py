"""What a grid will cost before it runs: task counts per stage and an estimate of GPU-hours.

The estimate times a few training steps, on this machine, of the network each stage trains, at the
profile's sizes, and multiplies by the number of images the stage pushes through it (epochs × training
set). On a machine without a GPU the CPU timings are converted with the profile's reference GPU
throughput of the retraining network. It is an estimate: it ignores evaluation passes, data loading
and everything a stage does besides training steps; a stage without a cost model is listed as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Grid, Task
from nasaudit.grid.stages import is_done
from nasaudit.registry import Registry

# Training-set sizes of the downloadable datasets, for planning on a machine that does not have them
# yet (SPEC §1: CIFAR 50k; MNIST/FashionMNIST 60k; SVHN's train split 73,257).
PUBLISHED_TRAIN_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "mnist": 60_000,
    "fashionmnist": 60_000,
    "svhn": 73_257,
}
NUM_CLASSES = 10  # the class count barely changes a step's time; the head is one linear layer


class Timer:
    """Seconds per training image of a network at a batch size on one device, measured once each.

    A GPU is timed at the real batch size over a few steps; a CPU, whose time grows linearly with the
    batch, on one step of a small batch, so that planning a paper-sized grid takes seconds, not hours.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = 3 if device.type == "cuda" else 1
        self._cache: dict[tuple[str, int], float] = {}

    def per_image(self, network: str, build: Callable[[], nn.Module], batch: int) -> float:
        """``network`` names what ``build`` returns; one measurement serves every use at one probe batch."""
        probe = batch if self.device.type == "cuda" else min(batch, 8)
        if (network, probe) not in self._cache:
            self._cache[(network, probe)] = self._measure(build, probe)
        return self._cache[(network, probe)]

    def _measure(self, build: Callable[[], nn.Module], probe: int) -> float:
        model = build().to(self.device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(probe, 3, 32, 32, device=self.device)
        y = torch.randint(0, NUM_CLASSES, (probe,), device=self.device)
        elapsed = 0.0
        for step in range(self.steps + 1):  # the first step warms up (allocations, cuDNN autotuning)
            _sync(self.device)
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                output = model(x)
                loss = sum(
                    F.cross_entropy(o, y)
                    for o in (output if isinstance(output, tuple) else (output,))
                    if o is not None
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            _sync(self.device)
            if step:
                elapsed += time.perf_counter() - start
        return elapsed / (self.steps * probe)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Cost models: seconds of one task on the timer's device. Algorithms and attacks register theirs.
SearchCost = Callable[[Profile, int, Timer], float]  # (profile, training-set size, timer)
PoisonCost = Callable[[Profile, int, Timer], tuple[float, float]]  # -> (per poison, once per dataset)
DefenseCost = Callable[[Profile, int, Timer], float]  # (profile, poisoned training-set size, timer)
SEARCH_COSTS: Registry[SearchCost] = Registry("search cost model")
POISON_COSTS: Registry[PoisonCost] = Registry("poison cost model")
DEFENSE_COSTS: Registry[DefenseCost] = Registry("defense cost model")
# The architecture a space's retraining is timed with (the DARTS space: the P-DARTS genotype, SPEC §3).
REFERENCE_ARCHITECTURES: Registry[Callable[[], Any]] = Registry("reference architecture")


@REFERENCE_ARCHITECTURES.register("darts")
def _darts_reference() -> Any:
    from nasaudit.spaces.darts import load

    return load("pdarts")


def retrain_seconds(profile: Profile, space: str, n_train: int, timer: Timer) -> float:
    from nasaudit.models import train_config

    return train_config(space, profile).epochs * n_train * _retrain_per_image(profile, space, timer)


def _retrain_per_image(profile: Profile, space: str, timer: Timer) -> float:
    from nasaudit.models import MODELS, train_config

    arch = REFERENCE_ARCHITECTURES.get(space)()
    batch = train_config(space, profile).batch_size
    return timer.per_image(f"retrain/{space}", lambda: MODELS.get(space)(arch, NUM_CLASSES, profile), batch)


@SEARCH_COSTS.register("random")
def _random_search(profile: Profile, n_train: int, timer: Timer) -> float:
    return 0.0  # sampling a genotype; its retraining is counted with the other retrains


@SEARCH_COSTS.register("robot")
def _robot_search(profile: Profile, n_train: int, timer: Timer) -> float:
    """Queries train on half of the data; scoring the pool costs about two passes per proxy (SPEC §6)."""
    from nasaudit.spaces.darts import EvalNetwork, random_genotype

    cfg = profile.robot
    genotype = random_genotype(np.random.default_rng(0))

    def build() -> nn.Module:
        return EvalNetwork(genotype, cfg.channels, cfg.layers, NUM_CLASSES)

    query = timer.per_image("robot", build, cfg.query.batch_size)
    proxy = timer.per_image("robot", build, cfg.proxy_batch)
    return (
        cfg.queries * cfg.query.epochs * (n_train // 2) * query
        + cfg.pool_size * len(cfg.proxies) * 2 * cfg.proxy_batch * proxy
    )


def _free(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    return 0.0, 0.0  # a few seconds of numpy on the CPU


POISON_COSTS.register("rlf")(_free)
POISON_COSTS.register("gaussian")(_free)


def _surrogate_seconds(profile: Profile, n_train: int, timer: Timer) -> float:
    """Training the CIFAR ResNet-18 of ``[surrogate]`` once on ``n_train`` images."""
    from nasaudit.models import MODELS

    cfg = profile.surrogate
    per_image = timer.per_image(
        "surrogate", lambda: MODELS.get("resnet18_cifar")(None, NUM_CLASSES, profile), cfg.batch_size
    )
    return cfg.epochs * n_train * per_image


@POISON_COSTS.register("clf")
def _clf(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """One surrogate ResNet-18 per dataset (shared by every CLF poison), then ranking is one pass."""
    return 0.0, _surrogate_seconds(profile, n_train, timer)


@DEFENSE_COSTS.register("sanitize")
def _sanitize(profile: Profile, n_train: int, timer: Timer) -> float:
    """A ResNet-18 trained on each poisoned set; scoring the losses is one more pass (not counted)."""
    return _surrogate_seconds(profile, n_train, timer)


@dataclass
class StageEstimate:
    stage: str
    tasks: int
    done: int
    seconds: float  # of the tasks left, on the timer's device
    unestimated: list[str] = field(default_factory=list)  # "what (n tasks)" without a cost model


@dataclass
class Estimate:
    device: str
    gpu_factor: float  # GPU seconds per second measured here (1 on a GPU)
    stages: list[StageEstimate]

    @property
    def gpu_hours(self) -> float:
        return sum(s.seconds for s in self.stages) * self.gpu_factor / 3600

    def render(self, name: str, profile: str) -> str:
        unit = "GPU-hours" if self.device == "cuda" else f"{self.device}-hours"
        lines = [
            f"{name} with profile {profile!r}: {sum(s.tasks for s in self.stages)} tasks",
            f"{'stage':<8} {'tasks':>7} {'done':>7} {unit + ' left':>16}",
        ]
        for s in self.stages:
            lines.append(f"{s.stage:<8} {s.tasks:>7} {s.done:>7} {s.seconds / 3600:>16,.1f}")
        lines.append(
            f"ESTIMATE: about {self.gpu_hours:,.0f} GPU-hours left (training steps timed on "
            f"{self.device} at the profile's sizes × images to process"
            + ("" if self.device == "cuda" else ", converted at the profile's reference GPU rate")
            + "; evaluation, I/O and other work not counted)"
        )
        for s in self.stages:
            if s.unestimated:
                lines.append(f"not estimated ({s.stage}, no cost model): {', '.join(s.unestimated)}")
        return "\n".join(lines)


def train_size(dataset: str, data_root: Path | None, subset: int = 0) -> int:
    """The grid's training-set size: the data's when present, else the published one; at most ``subset``."""
    from nasaudit.data.datasets import load_dataset

    try:
        size = len(load_dataset(dataset, data_root).train)
    except NasauditError:
        if dataset not in PUBLISHED_TRAIN_SIZES:
            raise
        size = PUBLISHED_TRAIN_SIZES[dataset]
    return min(size, subset) if subset > 0 else size


def estimate(
    grid: Grid, profile: Profile, data_root: Path | None, device: torch.device | None = None
) -> Estimate:
    """Count the grid's tasks per stage and estimate the device time of those not done yet."""
    from nasaudit.nas import NAS

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = Timer(device)
    datasets = {d for t in grid.deps for d in (t.dataset, t.key.searched_on)}
    sizes = {d: train_size(d, data_root, profile.grid.train_subset) for d in datasets}
    left: dict[str, list[Task]] = {}
    stages = []
    for stage, tasks in grid.by_stage().items():
        left[stage] = [t for t in tasks if not is_done(t, grid.layout)]
        stages.append(StageEstimate(stage, len(tasks), len(tasks) - len(left[stage]), 0.0))
    by_name = {s.stage: s for s in stages}
    missing: dict[tuple[str, str], int] = {}

    shared_done: set[tuple[str, str]] = set()
    for task in left.get("poison", []):
        if task.attack not in POISON_COSTS:
            missing[("poison", task.attack)] = missing.get(("poison", task.attack), 0) + 1
            continue
        per_poison, shared = POISON_COSTS.get(task.attack)(profile, sizes[task.dataset], timer)
        by_name["poison"].seconds += per_poison + (
            shared if (task.dataset, task.attack) not in shared_done else 0
        )
        shared_done.add((task.dataset, task.attack))
    for task in left.get("defend", []):
        if task.defense not in DEFENSE_COSTS:
            missing[("defend", task.defense)] = missing.get(("defend", task.defense), 0) + 1
            continue
        by_name["defend"].seconds += DEFENSE_COSTS.get(task.defense)(profile, sizes[task.dataset], timer)
    for task in left.get("search", []):
        if task.algorithm not in SEARCH_COSTS:
            missing[("search", task.algorithm)] = missing.get(("search", task.algorithm), 0) + 1
            continue
        size = sizes[task.key.searched_on]
        by_name["search"].seconds += SEARCH_COSTS.get(task.algorithm)(profile, size, timer)
    for task in left.get("retrain", []):
        space = NAS.get(task.algorithm).space
        if space not in REFERENCE_ARCHITECTURES:
            missing[("retrain", space)] = missing.get(("retrain", space), 0) + 1
            continue
        by_name["retrain"].seconds += retrain_seconds(profile, space, sizes[task.dataset], timer)
    for (stage, what), n in sorted(missing.items()):
        by_name[stage].unestimated.append(f"{what} ({n} tasks)")

    factor = 1.0
    if device.type != "cuda":  # the reference rate is that of the DARTS evaluation network (SPEC §3)
        factor = 1.0 / (
            profile.grid.reference_gpu_images_per_second * _retrain_per_image(profile, "darts", timer)
        )
    return Estimate(device.type, factor, stages)
