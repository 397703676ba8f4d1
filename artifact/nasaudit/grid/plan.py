"""What a grid will cost before it runs: task counts per stage and an estimate of GPU-hours.

Each stage's cost model times, on this machine, the networks the stage runs at the profile's sizes
(a training step, or a forward pass where the stage only scores) and multiplies by the images the
stage pushes through them as the profile configures it: epochs × training set for a training, the
candidate evaluations of a search (TE-NAS's κ_NTK timed per call, as the search computes it), steps
× poisons for gradient canceling. On a machine without a GPU the CPU timings are converted with the
profile's reference GPU throughput of the retraining network, so only their ratios matter; they are
taken on one thread, which a busy shared machine slows far less than threads that wait on each
other. It is an estimate: data loading, CPU-side work (surrogates, NSGA-II, KMeans) and
reporting-only evaluation are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nasaudit.config import Profile
from nasaudit.costs import NUM_CLASSES, Timer, VictimNet
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Grid, Layout, Task
from nasaudit.grid.stages import is_done
from nasaudit.registry import Registry

# Cost models: seconds on the timer's device, per task and (second value) once for all the tasks that
# share the work: a search's per dataset, a poison's per (dataset, attack, victim algorithm, trial)
# (a GC poison's GradPC target and clean gradient, CLF's surrogate), which every budget reuses. A
# search's is its algorithm's ``cost`` (``nas.base.NasAlgorithm``), a poison's its attack's
# (``attacks.base.Attack``), a defense's its defense's (``defenses.base.Defense``); the spaces'
# retraining is here.
# The architecture a space's retraining is timed with.
REFERENCE_ARCHITECTURES: Registry[Callable[[Profile], Any]] = Registry("reference architecture")


# --- retraining ------------------------------------------------------------------------------------


@REFERENCE_ARCHITECTURES.register("darts")
def _darts_reference(profile: Profile) -> Any:
    """The P-DARTS genotype, the reference size of the paper's retraining (§4.1)."""
    from nasaudit.spaces.darts import load

    return load("pdarts")


@REFERENCE_ARCHITECTURES.register("mbv3")
def _mbv3_reference(profile: Profile) -> Any:
    """The largest network at the largest resolution: an upper bound of NSGANetV2's "large" pick."""
    from nasaudit.spaces.mbv3 import extreme_arch

    return extreme_arch(profile.mbv3.resolutions, largest=True)


def _retrain_network(profile: Profile, space: str) -> nn.Module:
    """The space's retraining network of its reference architecture.

    Weights never change a timing, so an mbv3 network starts from scratch rather than reading the
    inherited weights a search would have written.
    """
    from nasaudit.models import MODELS

    scratch = replace(profile, mbv3=replace(profile.mbv3, init="scratch"))
    return MODELS.get(space)(REFERENCE_ARCHITECTURES.get(space)(profile), NUM_CLASSES, scratch)


def retrain_seconds(profile: Profile, space: str, n_train: int, timer: Timer) -> float:
    from nasaudit.models import train_config

    return train_config(space, profile).epochs * n_train * _retrain_per_image(profile, space, timer)


def _retrain_per_image(profile: Profile, space: str, timer: Timer) -> float:
    from nasaudit.models import train_config

    cfg = train_config(space, profile)
    build = partial(_retrain_network, profile, space)
    return timer.per_image(f"retrain/{space}", build, cfg.batch_size, precision=cfg.precision)


def victim_net(profile: Profile, algorithm: str) -> VictimNet:
    """The network GC differentiates for ``algorithm``'s jobs: the one its search leaves
    (``NasAlgorithm.victim``, P-DARTS's supernet), else its space's retrained network."""
    from nasaudit.attacks.victim import JOB_VICTIMS
    from nasaudit.nas import NAS

    algo = NAS.get(algorithm)
    own = algo.victim(profile)
    if own is not None:
        return own
    return VictimNet(
        f"retrain/{algo.space}",
        JOB_VICTIMS.get(algo.space).kind,
        partial(_retrain_network, profile, algo.space),
    )


# --- the estimate ----------------------------------------------------------------------------------


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
            f"ESTIMATE: about {self.gpu_hours:,.0f} GPU-hours left (each stage's networks timed on "
            f"{self.device} at the profile's sizes × the images it processes"
            + ("" if self.device == "cuda" else ", converted at the profile's reference GPU rate")
            + "; data loading and CPU-side work not counted)"
        )
        for s in self.stages:
            if s.unestimated:
                lines.append(f"not estimated ({s.stage}, no cost model): {', '.join(s.unestimated)}")
        return "\n".join(lines)


def train_size(dataset: str, data_root: Path | None, subset: int = 0) -> int:
    """The grid's training-set size: the data's when present, else the published one (its registered
    ``Shape``, for planning on a machine that does not have it yet); at most ``subset``."""
    from nasaudit.data.datasets import DATASETS, load_dataset

    try:
        size = len(load_dataset(dataset, data_root).train)
    except NasauditError:
        shape = DATASETS.get(dataset).shape
        if shape is None:
            raise
        size = shape.train
    return min(size, subset) if subset > 0 else size


@dataclass(frozen=True)
class _Charge:
    """What one task left costs: its cost model's name, its seconds and what it shares with other tasks."""

    what: str
    seconds: Callable[[], tuple[float, float] | None]  # (this task, shared); None: no cost model
    share: tuple[Any, ...]  # tasks with an equal ``share`` pay the shared time once


Sizes = dict[str, int]  # training-set size per dataset


def _poison(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    from nasaudit.attacks import ATTACKS

    n, share = sizes[task.dataset], (task.dataset, task.attack, task.algorithm, task.trial)
    attack = ATTACKS.get(task.attack)
    if attack.cost is None:
        return _Charge(task.attack, lambda: None, share)
    cost, victim = attack.cost, victim_net(profile, task.algorithm) if task.algorithm else None
    return _Charge(task.attack, lambda: cost(profile, task.budget, n, victim, timer), share)


def _defend(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    from nasaudit.defenses import DEFENSES

    n, cost = sizes[task.dataset], DEFENSES.get(task.defense).cost
    if cost is None:
        return _Charge(task.defense, lambda: None, ())
    return _Charge(task.defense, lambda: (cost(profile, n, timer), 0.0), ())


def _search(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    from nasaudit.nas import NAS

    data, algo = task.key.searched_on, NAS.get(task.algorithm)
    return _Charge(task.algorithm, lambda: algo.cost(profile, sizes[data], timer), (data,))


def _retrain(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    from nasaudit.nas import NAS

    n, space = sizes[task.dataset], NAS.get(task.algorithm).space
    if space not in REFERENCE_ARCHITECTURES:
        return _Charge(space, lambda: None, ())
    return _Charge(space, lambda: (retrain_seconds(profile, space, n, timer), 0.0), ())


# The stages that cost device time; a victim is picked from finished jobs.
CHARGES: dict[str, Callable[[Task, Profile, Sizes, Timer], _Charge]] = {
    "poison": _poison,
    "defend": _defend,
    "search": _search,
    "retrain": _retrain,
}


def estimate(
    grid: Grid,
    profile: Profile,
    data_root: Path | None,
    device: torch.device | None = None,
    timer: Timer | None = None,
) -> Estimate:
    """Count the grid's tasks per stage and estimate the device time of those not done yet.

    ``timer`` replaces timing on ``device``: a preflight's measured times (``plan --timings``).
    """
    timer = timer or Timer(device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = timer.device
    datasets = {d for t in grid.deps for d in (t.dataset, t.key.searched_on)}
    sizes = {d: train_size(d, data_root, profile.grid.train_subset) for d in datasets}
    stages, shared_done = [], set()
    for stage, tasks in grid.by_stage().items():
        left = [t for t in tasks if not is_done(t, grid.layout)]
        entry = StageEstimate(stage, len(tasks), len(tasks) - len(left), 0.0)
        missing: dict[str, int] = {}
        for task in left if stage in CHARGES else []:
            charge = CHARGES[stage](task, profile, sizes, timer)
            seconds = charge.seconds()
            if seconds is None:
                missing[charge.what] = missing.get(charge.what, 0) + 1
                continue
            per_task, shared = seconds
            key = (stage, charge.what, *charge.share)
            entry.seconds += per_task + (0.0 if key in shared_done else shared)
            shared_done.add(key)
        entry.unestimated = [f"{what} ({n} tasks)" for what, n in sorted(missing.items())]
        stages.append(entry)

    return Estimate(device.type, gpu_factor(profile, timer), stages)


def gpu_factor(profile: Profile, timer: Timer) -> float:
    """GPU seconds per second timed by ``timer``: 1 on a GPU; on a CPU, the profile's reference GPU rate
    of the DARTS evaluation network's retraining (paper §4.1) against the rate timed here."""
    if timer.device.type == "cuda":
        return 1.0
    return 1.0 / (profile.grid.reference_gpu_images_per_second * _retrain_per_image(profile, "darts", timer))


def record_path(layout: Layout, experiment: str) -> Path:
    """Where `nasaudit plan` keeps its latest estimate of an experiment: the report sets it against the
    compute spent without timing the networks again (a minute per table on a CPU)."""
    return layout.root / "plan" / f"{experiment}.json"
