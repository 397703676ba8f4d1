"""What each stage of a job does, and the one function every runner calls to run a task.

``execute`` is the whole life of a task in a worker (a local process, a Slurm array element): take
the task's lock, skip it if its output exists, run the stage, and on any error leave a ``.failed``
marker with the one-line message instead of an output. It never raises, so a runner only has to
look at the outcome it returns; a task that raised is retried later, never recorded as a result.
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import CLEAN, JobKey, Layout, Task, defend_task, poison_task, task_seed
from nasaudit.grid.state import TaskState, error_line
from nasaudit.io import write_json
from nasaudit.registry import Registry

VICTIM_RECORD = "victim.json"
SUPERNET_VICTIM = "supernet_victim.pt"  # written by searches whose GC victim is their supernet (P-DARTS)


@dataclass(frozen=True)
class Env:
    """What a stage needs besides its task: sizes, file layout, data and device.

    ``datasets`` hands the stages in-memory datasets by registry name instead of reading them from
    ``data_root`` (the preflight's synthetic stand-ins, ``nasaudit.preflight``).
    """

    profile: Profile
    layout: Layout
    data_root: Path | None
    device: torch.device
    progress: bool = False
    datasets: Mapping[str, ImageDataset] | None = None


class Stage(Protocol):
    def output(self, task: Task, layout: Layout) -> Path:
        """The file whose existence means the task is done (written last, atomically)."""
        ...

    def run(self, task: Task, env: Env) -> None: ...


STAGES: Registry[Stage] = Registry("stage")


@functools.lru_cache(maxsize=4)
def _load(name: str, root: Path | None) -> ImageDataset:
    """Each worker reads a dataset once, however many tasks it runs on it."""
    return load_dataset(name, root)


def grid_dataset(name: str, env: Env) -> ImageDataset:
    """The data every stage of a grid works on: the training set cut to ``grid.train_subset`` images."""
    data = _load(name, env.data_root) if env.datasets is None else env.datasets[name]
    return data.first(env.profile.grid.train_subset)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NasauditError(f"{path}: cannot read it ({exc}); delete it to recompute that stage") from None


class PoisonStage:
    """Craft one poisoned training set; a victim attack reads the algorithm's victim record."""

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.poison(task).with_suffix(".json")  # the manifest is written after the arrays

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.attacks import AttackContext, run_attack
        from nasaudit.data.poison import save_poison

        victim = None
        if task.algorithm:
            record = _read_json(env.layout.victim_dir(task.dataset, task.algorithm) / VICTIM_RECORD)
            victim = env.layout.root / record["file"]
        context = AttackContext(env.profile, env.device, env.layout.cache_dir(task.dataset), victim)
        dataset = grid_dataset(task.dataset, env)
        save_poison(
            run_attack(task.attack, dataset, task.budget, task_seed(task), context), env.layout.poison(task)
        )


class VictimStage:
    """The GC victim of an algorithm: its best clean trial (paper §4: highest accuracy across trials).

    A search that leaves ``supernet_victim.pt`` in its folder (P-DARTS: the converged supernet, whose
    architecture parameters GC targets) provides its victim itself; otherwise the victim is the
    retrained final architecture of that trial. The task's ``trial`` is the number of clean trials.
    The record names files relative to the grid's folder, which may be mounted elsewhere (containers).
    """

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.victim_dir(task.dataset, task.algorithm) / VICTIM_RECORD

    def run(self, task: Task, env: Env) -> None:
        keys = [JobKey(task.dataset, task.algorithm, CLEAN, 0.0, t) for t in range(task.trial)]
        accuracies = {
            k.trial: _read_json(env.layout.train_dir(k) / "result.json")["test_accuracy"] for k in keys
        }
        best = max(keys, key=lambda k: (accuracies[k.trial], -k.trial))
        supernet = env.layout.search_dir(best) / SUPERNET_VICTIM
        folder = env.layout.victim_dir(task.dataset, task.algorithm)
        if supernet.is_file():
            file = supernet
        else:
            from nasaudit.victim import victim_from_train_job

            net = env.profile.darts_net
            file = victim_from_train_job(
                env.layout.train_dir(best), net.channels, net.layers, folder / "victim.pt"
            )
        write_json(
            folder / VICTIM_RECORD,
            {
                "file": str(Path(file).relative_to(env.layout.root)),
                "trial": best.trial,
                "accuracies": accuracies,
                "source": str(env.layout.job_dir(best).relative_to(env.layout.root)),
            },
        )


class DefendStage:
    """Apply a defense to one poisoned training set (Table 4); the searches of every algorithm and trial
    on that poison share the defended file."""

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.defended(task).with_suffix(".json")  # the manifest is written after the arrays

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.defenses import DefenseContext, run_defense, save_defended

        poisoned, source = _poisoned(task.key, env)
        context = DefenseContext(
            env.profile, env.device, env.layout.cache_dir(task.dataset), source=source, progress=env.progress
        )
        save_defended(
            run_defense(task.defense, poisoned, task_seed(task), context), env.layout.defended(task)
        )


def _poisoned(key: JobKey, env: Env) -> tuple[ImageDataset, dict[str, Any]]:
    """The job's search data before any defense: its search dataset, with its poison applied."""
    from nasaudit.data.poison import apply_poison, load_poison
    from nasaudit.io import sha256_file

    dataset = grid_dataset(key.searched_on, env)
    if key.clean:
        return dataset, {"dataset": dataset.name, "poison": None, "train_sha256": dataset.train.sha256}
    grid = env.profile.grid
    stem = env.layout.poison(poison_task(key, grid.victim_attacks, grid.trial_shared_attacks))
    poison = load_poison(stem, dataset)
    poisoned = apply_poison(poison, dataset)
    provenance = {
        "dataset": dataset.name,
        "poison": str(stem.with_suffix(".npz")),
        "poison_sha256": sha256_file(stem.with_suffix(".npz")),
        "attack": poison.attack,
        "budget": poison.budget,
        "train_sha256": poisoned.train.sha256,
    }
    return poisoned, provenance


class SearchStage:
    """Run the algorithm on the job's search data (poisoned, then defended, when the key says so) with
    the search settings of its variant; its folder keeps the search's resumable state."""

    def output(self, task: Task, layout: Layout) -> Path:
        from nasaudit.nas.base import ARCHITECTURE

        return layout.search_dir(task.key) / ARCHITECTURE

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.grid.variants import search_profile
        from nasaudit.nas import SearchContext, run_search

        dataset, provenance = _poisoned(task.key, env)
        if task.defense:
            from nasaudit.defenses import apply_defended, load_defended
            from nasaudit.io import sha256_file

            grid = env.profile.grid
            stem = env.layout.defended(defend_task(task.key, grid.victim_attacks, grid.trial_shared_attacks))
            dataset = apply_defended(load_defended(stem, dataset), dataset)
            provenance.update(
                {
                    "defense": task.defense,
                    "defended": str(stem.with_suffix(".npz")),
                    "defended_sha256": sha256_file(stem.with_suffix(".npz")),
                    "train_sha256": dataset.train.sha256,
                    "n_train": len(dataset.train),
                }
            )
        if task.variant:
            provenance["variant"] = task.variant
        context = SearchContext(
            search_profile(env.profile, task.variant),
            env.device,
            env.layout.search_dir(task.key),
            progress=env.progress,
            cache_dir=env.layout.cache_dir(task.key.searched_on),
        )
        run_search(task.algorithm, dataset, task_seed(task), context, provenance)


class RetrainStage:
    """Train the found architecture from scratch on the clean training set and test it (paper §4)."""

    def output(self, task: Task, layout: Layout) -> Path:
        from nasaudit.train import RESULT

        return layout.train_dir(task.key) / RESULT

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.models import MODELS, load_architecture, train_config
        from nasaudit.train import train_model

        source = STAGES.get("search").output(task, env.layout)
        space, arch = load_architecture(str(source))
        build = MODELS.get(space)
        dataset = grid_dataset(task.dataset, env)
        description = {"space": space, "architecture": arch.to_json(), "source": str(source), "job": task.key}
        train_model(
            lambda: build(arch, dataset.num_classes, env.profile),
            dataset,
            train_config(space, env.profile),
            seed=task_seed(task),
            device=env.device,
            out_dir=env.layout.train_dir(task.key),
            description=description,
            progress=env.progress,
        )


STAGES.register("poison")(PoisonStage())
STAGES.register("victim")(VictimStage())
STAGES.register("defend")(DefendStage())
STAGES.register("search")(SearchStage())
STAGES.register("retrain")(RetrainStage())


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a task ended: ``done``, ``skipped`` (already done), ``busy`` (another
    process holds it) or ``failed`` with the one-line error."""

    task: Task
    status: str
    error: str = ""


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to rebuild its ``Env``; plain data, so it pickles to any worker."""

    profile: Profile
    results: Path
    data_root: Path | None
    device: str = "auto"  # auto: the (one) visible GPU, else the CPU

    def env(self) -> Env:
        name = self.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return Env(self.profile, Layout.of(self.results, self.profile), self.data_root, torch.device(name))


def is_done(task: Task, layout: Layout) -> bool:
    return STAGES.get(task.stage).output(task, layout).is_file()


def execute(task: Task, spec: RunSpec, where: str = "local") -> Outcome:
    """Run one task in this process, unless it is done or running elsewhere; never raises."""
    env = spec.env()
    state = TaskState(env.layout.state_dir)
    stage = STAGES.get(task.stage)
    with state.claim(task) as claimed:
        if not claimed:
            return Outcome(task, "busy")
        if stage.output(task, env.layout).is_file():
            return Outcome(task, "skipped")
        state.mark_running(task, where)
        try:
            stage.run(task, env)
            if not stage.output(task, env.layout).is_file():
                raise NasauditError(f"{task.id} finished without writing {stage.output(task, env.layout)}")
        except Exception as exc:  # any failure is this task's, reported and retried
            error = error_line(exc)
            state.mark_failed(task, error, traceback.format_exc())
            return Outcome(task, "failed", error)
        finally:
            state.clear_running(task)
    return Outcome(task, "done")
