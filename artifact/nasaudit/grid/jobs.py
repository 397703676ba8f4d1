"""Experiments as data: which jobs a table needs, where each job's files live and which seed it takes.

A job is keyed by (dataset, algorithm, attack, budget, trial); the clean search of a trial is the
job with attack "none" and budget 0 and serves every budget's comparison (the table's "None" row).
Each job runs in stages that are cached separately and shared where the paper shares them:

- ``poison``: one per (dataset, attack, budget, trial), shared by every algorithm; the attacks crafted
  against a victim (GC) get one per algorithm, and a deterministic attack (CLF: its one surrogate per
  dataset decides everything) gets one per (dataset, budget) shared by all trials;
- ``victim``: one per (dataset, algorithm) = the best clean trial, so it waits for all clean trials;
- ``search`` on the (poisoned) training set, then ``retrain`` of the found architecture on clean data.

Every path and seed is a pure function of the key, so a finished stage is found again by any run,
on any machine, and a grid that was killed resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nasaudit.config import Profile, RobustnessTableConfig
from nasaudit.errors import NasauditError
from nasaudit.registry import Registry

CLEAN = "none"  # the attack name of the clean search ("None" row)
STAGE_ORDER = ("poison", "victim", "search", "retrain")


@dataclass(frozen=True, order=True)
class JobKey:
    """One search + retrain: the unit a table cell averages over (its ``trial``)."""

    dataset: str
    algorithm: str
    attack: str
    budget: float
    trial: int

    @property
    def clean(self) -> bool:
        return self.attack == CLEAN


@dataclass(frozen=True, order=True)
class Task:
    """One cached stage. ``algorithm`` is empty for poisons shared by all algorithms, ``trial`` −1 for
    poisons shared by all trials; a victim's ``trial`` is the number of clean trials it is chosen from."""

    stage: str
    dataset: str
    algorithm: str = ""
    attack: str = CLEAN
    budget: float = 0.0
    trial: int = -1

    @property
    def id(self) -> str:
        """A readable name that is also a file name (marker files are named after it)."""
        parts = [self.stage, self.dataset, self.algorithm or "-", self.attack, f"p{self.budget:g}"]
        return ".".join([*parts, f"t{self.trial}"])

    @property
    def key(self) -> JobKey:
        return JobKey(self.dataset, self.algorithm, self.attack, self.budget, self.trial)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from a job's key: independent across keys, identical on every machine."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def task_seed(task: Task) -> int:
    """The seed of a stage.

    A poison's seed is its trial's: every budget of a trial shares it (and so the attack's cached
    surrogate or clean gradients), and the algorithm is left out so GC picks the same samples for
    every victim. A poison shared by all trials has one seed per dataset.
    """
    if task.stage == "poison":
        return derive_seed("poison", task.dataset, task.attack, *([task.trial] if task.trial >= 0 else []))
    return derive_seed(task.stage, task.dataset, task.algorithm, task.attack, f"{task.budget:g}", task.trial)


@dataclass(frozen=True)
class Layout:
    """Where every stage of a grid keeps its files: ``<results>/<profile>/<dataset>/...``."""

    root: Path

    @classmethod
    def of(cls, results: Path, profile: Profile) -> Layout:
        return cls(Path(results) / profile.name)

    def cache_dir(self, dataset: str) -> Path:
        """Artifacts shared by all poisons of a dataset (the CLF surrogate, clean gradients)."""
        return self.root / dataset / "cache"

    def poison(self, task: Task) -> Path:
        """The poison file stem (``.npz`` + ``.json`` manifest); per algorithm only for victim attacks."""
        folder = self.root / task.dataset / "poisons" / task.attack
        if task.algorithm:
            folder = folder / task.algorithm
        return folder / f"p{task.budget:g}" / (f"trial{task.trial:02d}" if task.trial >= 0 else "all_trials")

    def victim_dir(self, dataset: str, algorithm: str) -> Path:
        return self.root / dataset / "victims" / algorithm

    def job_dir(self, key: JobKey) -> Path:
        return (
            self.root
            / key.dataset
            / key.algorithm
            / key.attack
            / f"p{key.budget:g}"
            / f"trial{key.trial:02d}"
        )

    def search_dir(self, key: JobKey) -> Path:
        return self.job_dir(key) / "search"

    def train_dir(self, key: JobKey) -> Path:
        return self.job_dir(key) / "train"

    @property
    def state_dir(self) -> Path:
        """Marker files of running and failed tasks."""
        return self.root / ".grid"


@dataclass(frozen=True)
class Experiment:
    """The jobs behind one table: its condition jobs and the random-sampling jobs of ΔImp."""

    name: str
    conditions: tuple[JobKey, ...]  # every (dataset, algorithm, attack, budget, trial) of the table
    baselines: tuple[JobKey, ...]  # algorithm = a sampler: random architectures of its space, retrained
    sampler_of: dict[str, str] = field(default_factory=dict)  # table algorithm -> its space's sampler
    unsampled: dict[str, str] = field(default_factory=dict)  # table algorithm -> space without a sampler
    victim_attacks: frozenset[str] = frozenset()
    trial_shared_attacks: frozenset[str] = frozenset()

    @property
    def jobs(self) -> tuple[JobKey, ...]:
        return self.conditions + self.baselines

    def select(self, algorithms: Iterable[str] = (), datasets: Iterable[str] = ()) -> Experiment:
        """Keep the named algorithms (with their space's baseline) and datasets; empty keeps all.

        A registered name this experiment does not run selects nothing (``make docker-grid`` runs every
        algorithm's image for every experiment); a name nobody registered is a one-line error.
        """
        from nasaudit.data.datasets import DATASETS
        from nasaudit.nas import NAS

        algorithms, datasets = set(algorithms), set(datasets)
        for name in sorted(algorithms):
            NAS.get(name)
        for name in sorted(datasets):
            DATASETS.get(name)
        keep = algorithms or set(self.algorithms)
        samplers = {self.sampler_of[a] for a in keep if a in self.sampler_of}

        def kept(key: JobKey, names: set[str]) -> bool:
            return key.algorithm in names and (not datasets or key.dataset in datasets)

        return replace(
            self,
            conditions=tuple(k for k in self.conditions if kept(k, keep)),
            baselines=tuple(k for k in self.baselines if kept(k, samplers)),
            sampler_of={a: s for a, s in self.sampler_of.items() if a in keep},
            unsampled={a: s for a, s in self.unsampled.items() if a in keep},
        )

    @property
    def algorithms(self) -> list[str]:
        return sorted({k.algorithm for k in self.conditions})

    @property
    def datasets(self) -> list[str]:
        return sorted({k.dataset for k in self.conditions})


EXPERIMENTS: Registry[Callable[[Profile], Experiment]] = Registry("experiment")


def robustness_experiment(name: str, cfg: RobustnessTableConfig, profile: Profile) -> Experiment:
    """Tables 1 and 5: every (dataset, algorithm, attack, budget, trial) plus the clean row and baselines."""
    from nasaudit.attacks import ATTACKS
    from nasaudit.data.datasets import DATASETS
    from nasaudit.nas import NAS

    samplers = list(profile.grid.samplers)
    for sampler in samplers:
        NAS.get(sampler)
    algorithms = cfg.algorithms or [a for a in NAS.names() if a not in samplers]
    attacks = cfg.attacks or ATTACKS.names()
    for algorithm in algorithms:
        NAS.get(algorithm)
    for attack in attacks:
        ATTACKS.get(attack)
    for dataset in cfg.datasets:
        DATASETS.get(dataset)
    excluded = set()
    for pair in cfg.exclude:
        if pair.count("/") != 1:
            raise NasauditError(f"[{name}] exclude entry {pair!r} must read 'algorithm/attack'")
        excluded.add(tuple(pair.split("/")))
    if cfg.trials < 1 or any(not 0 < b <= 1 for b in cfg.budgets):
        raise NasauditError(f"[{name}] needs trials ≥ 1 and budgets in (0, 1]")

    conditions = []
    for dataset in cfg.datasets:
        for algorithm in algorithms:
            rows = [(CLEAN, 0.0)] + [
                (attack, budget)
                for attack in attacks
                if (algorithm, attack) not in excluded
                for budget in cfg.budgets
            ]
            conditions += [
                JobKey(dataset, algorithm, attack, budget, trial)
                for attack, budget in rows
                for trial in range(cfg.trials)
            ]
    space_sampler = {NAS.get(s).space: s for s in samplers}
    sampler_of, unsampled = {}, {}
    for algorithm in algorithms:
        space = NAS.get(algorithm).space
        if space in space_sampler:
            sampler_of[algorithm] = space_sampler[space]
        else:
            unsampled[algorithm] = space
    baselines = [
        JobKey(dataset, sampler, CLEAN, 0.0, trial)
        for dataset in cfg.datasets
        for sampler in sorted(set(sampler_of.values()))
        for trial in range(profile.random_baseline.n)
    ]
    return Experiment(
        name,
        tuple(conditions),
        tuple(baselines),
        sampler_of,
        unsampled,
        frozenset(profile.grid.victim_attacks),
        frozenset(profile.grid.trial_shared_attacks),
    )


EXPERIMENTS.register("table1")(lambda profile: robustness_experiment("table1", profile.table1, profile))
EXPERIMENTS.register("table5")(lambda profile: robustness_experiment("table5", profile.table5, profile))


def load_experiment(name: str, profile: Profile) -> Experiment:
    return EXPERIMENTS.get(name)(profile)


@dataclass(frozen=True)
class Grid:
    """An experiment's tasks and what each waits for."""

    experiment: Experiment
    layout: Layout
    deps: dict[Task, tuple[Task, ...]]

    def by_stage(self) -> dict[str, list[Task]]:
        stages: dict[str, list[Task]] = {s: [] for s in STAGE_ORDER}
        for task in self.deps:
            stages[task.stage].append(task)
        return stages


def search_task(key: JobKey) -> Task:
    return Task("search", key.dataset, key.algorithm, key.attack, key.budget, key.trial)


def retrain_task(key: JobKey) -> Task:
    return Task("retrain", key.dataset, key.algorithm, key.attack, key.budget, key.trial)


def poison_task(key: JobKey, victim_attacks: Iterable[str], trial_shared_attacks: Iterable[str]) -> Task:
    """The poison a job searches on."""
    algorithm = key.algorithm if key.attack in victim_attacks else ""
    trial = -1 if key.attack in trial_shared_attacks else key.trial
    return Task("poison", key.dataset, algorithm, key.attack, key.budget, trial)


def victim_task(dataset: str, algorithm: str, trials: int) -> Task:
    return Task("victim", dataset, algorithm, trial=trials)


def build_grid(experiment: Experiment, layout: Layout) -> Grid:
    """All tasks of an experiment with their dependencies (a DAG, listed in a valid order)."""
    deps: dict[Task, tuple[Task, ...]] = {}
    rules = (experiment.victim_attacks, experiment.trial_shared_attacks)
    poisons = sorted({poison_task(k, *rules) for k in experiment.jobs if not k.clean})
    # Poisons with one seed share the attack's cache (the CLF surrogate, GC's clean gradients): the
    # first runs alone and fills it, the others then read it instead of each computing its own copy.
    leaders: dict[tuple[str, str, int], Task] = {}
    for poison in poisons:
        leader = leaders.setdefault((poison.algorithm, poison.attack, task_seed(poison)), poison)
        wait = [] if leader == poison else [leader]
        if poison.algorithm:
            clean = [
                k
                for k in experiment.conditions
                if k.clean and k.algorithm == poison.algorithm and k.dataset == poison.dataset
            ]
            victim = victim_task(poison.dataset, poison.algorithm, len(clean))
            deps[victim] = tuple(retrain_task(k) for k in clean)
            wait.append(victim)
        deps[poison] = tuple(wait)
    for key in experiment.jobs:
        search = search_task(key)
        deps[search] = () if key.clean else (poison_task(key, *rules),)
        deps[retrain_task(key)] = (search,)
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    # Victims are listed before the clean retrains they wait for; a stable topological order fixes that.
    return Grid(experiment, layout, _topological(deps, key=lambda t: (order[t.stage], t)))


def _topological(
    deps: dict[Task, tuple[Task, ...]], key: Callable[[Task], object]
) -> dict[Task, tuple[Task, ...]]:
    ordered: dict[Task, tuple[Task, ...]] = {}

    def visit(task: Task) -> None:
        if task in ordered:
            return
        for dep in deps[task]:
            visit(dep)
        ordered[task] = deps[task]

    for task in sorted(deps, key=key):  # type: ignore[arg-type]
        visit(task)
    return ordered
