"""What each stage of a job does, and the one function every runner calls to run a task.

``execute`` is the whole life of a task in a worker (a local process, a Slurm array element): take
the task's lock (the one a standalone command writing the same output takes), skip it if its output
exists and was made by this run (``check_done``: the output's stored identity against
``Stage.identity``), run the stage, and on any error leave a ``.failed`` marker with the one-line
message instead of an output. It never raises, so a runner only has to look at the outcome it
returns; a task that raised is retried later, never recorded as a result.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import (
    CLEAN,
    JobKey,
    Layout,
    Task,
    defend_task,
    poison_task,
    shared_poison_attacks,
    task_seed,
)
from nasaudit.grid.state import TaskState, error_line
from nasaudit.io import read_json, write_json
from nasaudit.registry import Registry
from nasaudit.runs import IDENTITY

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
        """The file whose existence means the task is done (written last, atomically; it stores the
        identity of the run that made it)."""
        ...

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        """What the task's output depends on, computed from its inputs' files without running it."""
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
    return read_json(path, "recomputes that stage")


class PoisonStage:
    """Craft one poisoned training set; a victim attack reads the algorithm's victim record."""

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.poison(task).with_suffix(".json")  # the manifest is written after the arrays

    def _context(self, task: Task, env: Env) -> Any:
        from nasaudit.attacks import AttackContext

        victim = None
        if task.algorithm:
            record = _read_json(env.layout.victim_dir(task.dataset, task.algorithm) / VICTIM_RECORD)
            victim = env.layout.root / record["file"]
        return AttackContext(
            env.profile, env.device, env.layout.cache_dir(task.dataset), victim, env.progress
        )

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        from nasaudit.attacks import poison_identity

        dataset = grid_dataset(task.dataset, env)
        return poison_identity(task.attack, dataset, task.budget, task_seed(task), self._context(task, env))

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.attacks import make_poison_file

        dataset = grid_dataset(task.dataset, env)
        context = self._context(task, env)
        make_poison_file(task.attack, dataset, task.budget, task_seed(task), context, env.layout.poison(task))


class VictimStage:
    """The GC victim of an algorithm: its best clean trial (paper §4: highest accuracy across trials, by
    the accuracy ``[results] accuracy`` reports).

    A search that leaves ``supernet_victim.pt`` in its folder (P-DARTS: the converged supernet, whose
    architecture parameters GC targets) provides its victim itself; otherwise the victim is the
    retrained final architecture of that trial. The task's ``trial`` is the number of clean trials.
    The record names files relative to the grid's folder, which may be mounted elsewhere (containers).
    """

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.victim_dir(task.dataset, task.algorithm) / VICTIM_RECORD

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        from nasaudit.io import sha256_file
        from nasaudit.runs import fingerprint, profile_sections

        results = [env.layout.train_dir(k) / "result.json" for k in self._clean(task)]
        return fingerprint(
            "victim",
            dataset=task.dataset,
            algorithm=task.algorithm,
            train_results=[sha256_file(r) if r.is_file() else None for r in results],
            network=profile_sections(
                env.profile, ["darts_net", "results"]
            ),  # which accuracy picks the victim
        )

    @staticmethod
    def _clean(task: Task) -> list[JobKey]:
        return [JobKey(task.dataset, task.algorithm, CLEAN, 0.0, t) for t in range(task.trial)]

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.train import reported_accuracy

        keys, which = self._clean(task), env.profile.results.accuracy
        accuracies = {
            k.trial: reported_accuracy(_read_json(env.layout.train_dir(k) / "result.json"), which)
            for k in keys
        }
        best = max(keys, key=lambda k: (accuracies[k.trial], -k.trial))
        supernet = env.layout.search_dir(best) / SUPERNET_VICTIM
        folder = env.layout.victim_dir(task.dataset, task.algorithm)
        if supernet.is_file():
            file = supernet
        else:
            from nasaudit.attacks.victim import victim_from_train_job

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
                IDENTITY: self.identity(task, env),
            },
        )


class DefendStage:
    """Apply a defense to one poisoned training set (Table 4); the searches of every algorithm and trial
    on that poison share the defended file."""

    def output(self, task: Task, layout: Layout) -> Path:
        return layout.defended(task).with_suffix(".json")  # the manifest is written after the arrays

    def _context(self, task: Task, env: Env, source: dict[str, Any]) -> Any:
        from nasaudit.defenses import DefenseContext

        cache = env.layout.cache_dir(task.dataset)
        return DefenseContext(env.profile, env.device, cache, source=source, progress=env.progress)

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        from nasaudit.defenses import defense_identity

        clean, inputs = _inputs(task.key, env, defended=False)
        return defense_identity(task.defense, clean, task_seed(task), self._context(task, env, inputs))

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.data.poison import poisoned_data
        from nasaudit.defenses import make_defended_file

        clean = grid_dataset(task.key.searched_on, env)
        poisoned, source, indices = poisoned_data(clean, _poison_file(task.key, env))
        context = self._context(task, env, source)
        make_defended_file(
            task.defense, poisoned, task_seed(task), context, env.layout.defended(task), indices
        )


def _poison_file(key: JobKey, env: Env) -> Path | None:
    """The poison file the job's search data applies (None: the job searches on clean data)."""
    if key.clean:
        return None
    grid = env.profile.grid
    return env.layout.poison(poison_task(key, grid.victim_attacks, shared_poison_attacks(grid)))


def _defended_file(key: JobKey, env: Env) -> Path | None:
    """The defended file that replaces the job's poisoned search data (None: no defense)."""
    if not key.defense:
        return None
    grid = env.profile.grid
    return env.layout.defended(defend_task(key, grid.victim_attacks, shared_poison_attacks(grid)))


def _inputs(key: JobKey, env: Env, defended: bool) -> tuple[ImageDataset, dict[str, Any]]:
    """The clean search dataset and the hashes of the poison (and defended) files applied to it, read
    from their manifests: what ``runs.data_identity`` needs, without loading or applying them."""
    from nasaudit.data.poison import read_manifest
    from nasaudit.defenses import read_defended_manifest

    clean = grid_dataset(key.searched_on, env)
    inputs: dict[str, Any] = {"clean_sha256": clean.train.sha256}
    poison = _poison_file(key, env)
    if poison is not None:
        inputs["poison_sha256"] = read_manifest(poison)["npz_sha256"]
    defense = _defended_file(key, env) if defended else None
    if defense is not None:
        inputs["defended_sha256"] = read_defended_manifest(defense)["npz_sha256"]
    return clean, inputs


class SearchStage:
    """Run the algorithm on the job's search data (poisoned, then defended, when the key says so) with
    the search settings of its variant; its folder keeps the search's resumable state."""

    def output(self, task: Task, layout: Layout) -> Path:
        from nasaudit.nas.base import ARCHITECTURE

        return layout.search_dir(task.key) / ARCHITECTURE

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        from nasaudit.grid.variants import search_profile
        from nasaudit.nas.base import search_identity
        from nasaudit.runs import data_identity

        clean, inputs = _inputs(task.key, env, defended=True)
        profile = search_profile(env.profile, task.variant)
        return search_identity(
            task.algorithm, task_seed(task), profile, data_identity(clean, inputs), task.trial
        )

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.grid.variants import search_profile
        from nasaudit.nas import SearchContext, run_search
        from nasaudit.nas.base import search_data

        clean = grid_dataset(task.key.searched_on, env)
        dataset, provenance = search_data(clean, _poison_file(task.key, env), _defended_file(task.key, env))
        if task.variant:
            provenance["variant"] = task.variant
        context = SearchContext(
            search_profile(env.profile, task.variant),
            env.device,
            env.layout.search_dir(task.key),
            progress=env.progress,
            cache_dir=env.layout.cache_dir(task.key.searched_on),
            clean=clean,
            trial=task.trial,
        )
        run_search(task.algorithm, dataset, task_seed(task), context, provenance)


class RetrainStage:
    """Train the found architecture from scratch on the clean training set and test it (paper §4)."""

    def output(self, task: Task, layout: Layout) -> Path:
        from nasaudit.train import RESULT

        return layout.train_dir(task.key) / RESULT

    def identity(self, task: Task, env: Env) -> dict[str, Any]:
        from nasaudit.models import load_architecture, retrain_identity

        space, arch = load_architecture(str(STAGES.get("search").output(task, env.layout)))
        dataset = grid_dataset(task.dataset, env)
        return retrain_identity(space, arch, dataset, env.profile, task_seed(task))

    def run(self, task: Task, env: Env) -> None:
        from nasaudit.models import retrain_file

        retrain_file(
            STAGES.get("search").output(task, env.layout),
            grid_dataset(task.dataset, env),
            env.profile,
            seed=task_seed(task),
            device=env.device,
            out_dir=env.layout.train_dir(task.key),
            progress=env.progress,
            job=task.key,
        )


STAGES.register("poison")(PoisonStage())
STAGES.register("victim")(VictimStage())
STAGES.register("defend")(DefendStage())
STAGES.register("search")(SearchStage())
STAGES.register("retrain")(RetrainStage())


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a task ended: ``done``, ``skipped`` (already done), ``busy`` (another
    process holds it) or ``failed`` with the one-line error, and ``details`` where the worker died
    before it could leave a traceback (the last lines of a cluster job's log)."""

    task: Task
    status: str
    error: str = ""
    details: str = ""


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
    """Whether the task's output exists (cheap: ``check_done`` says whether this run made it)."""
    return STAGES.get(task.stage).output(task, layout).is_file()


def check_done(task: Task, env: Env) -> None:
    """Refuse, with one line, a task's existing output that another run made (other profile sections,
    seed, input files, or a file from an older nasaudit)."""
    from nasaudit.runs import reuse

    stage = STAGES.get(task.stage)
    reuse(stage.output(task, env.layout), stage.identity(task, env), "recomputes that task")


def task_state(layout: Layout) -> TaskState:
    """The markers of a grid's tasks, with each task's lock beside its output (``runs.job_lock``)."""
    return TaskState(layout.state_dir, lambda task: STAGES.get(task.stage).output(task, layout))


def execute(task: Task, spec: RunSpec, where: str = "local") -> Outcome:
    """Run one task in this process, unless it is done or running elsewhere; never raises."""
    from nasaudit.runs import job_lock

    env = spec.env()
    state = task_state(env.layout)
    stage = STAGES.get(task.stage)
    output = stage.output(task, env.layout)
    with job_lock(output, wait=False) as claimed:
        if not claimed:
            return Outcome(task, "busy")
        state.mark_running(task, where)
        start = time.perf_counter()
        try:
            if output.is_file():
                check_done(task, env)
                return Outcome(task, "skipped")
            stage.run(task, env)
            if not output.is_file():
                raise NasauditError(f"{task.id} finished without writing {output}")
            state.mark_done(task, time.perf_counter() - start, where, str(env.device))
        except Exception as exc:  # any failure is this task's, reported and retried
            error = error_line(exc)
            state.mark_failed(task, error, traceback.format_exc())
            return Outcome(task, "failed", error)
        finally:
            state.clear_running(task)
    return Outcome(task, "done")
