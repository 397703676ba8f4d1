"""Experiments as data: which jobs a table needs, where each job's files live and which seed it takes.

A job is keyed by (dataset, algorithm, attack, budget, trial); the clean search of a trial is the
job with attack "none" and budget 0 and serves every budget's comparison (the table's "None" row).
Three optional parts of the key make the other tables' jobs: ``search_dataset`` (Table 3: search on
another dataset, retrain on ``dataset``), ``defense`` (Table 4: a defense cleans the poisoned data
before the search) and ``variant`` (Table 6: a named change of the search's settings). A key without
them is a Table 1 job, so every table that needs one of those jobs shares its files.
Each job runs in stages that are cached separately and shared where the paper shares them:

- ``poison``: one per (dataset, attack, budget), shared by every trial and algorithm, as the authors
  ran it (their scripts point every trial at one poison file); the attacks crafted against a victim
  (GC) get one per algorithm. With ``[grid] per_trial_poisons`` each trial draws its own, except the
  deterministic ``trial_shared_attacks`` (CLF: its one surrogate per dataset decides everything);
- ``victim``: one per (dataset, algorithm) = the best clean trial, so it waits for all clean trials;
- ``defend``: the defense applied to a poison (Table 4), one per (defense, poison);
- ``search`` on the (poisoned, defended) training set, then ``retrain`` of the found architecture on
  clean data.

Every path and seed is a pure function of the key, so a finished stage is found again by any run,
on any machine, and a grid that was killed resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from nasaudit.config import DefenseTableConfig, GridConfig, OODTableConfig, Profile, RobustnessTableConfig
from nasaudit.errors import NasauditError
from nasaudit.registry import Registry
from nasaudit.seeds import derive_seed

CLEAN = "none"  # the attack name of the clean search ("None" row)
STAGE_ORDER = ("poison", "victim", "defend", "search", "retrain")


@dataclass(frozen=True, order=True)
class JobKey:
    """One search + retrain: the unit a table cell averages over (its ``trial``).

    ``dataset`` is what the architecture is retrained and tested on; the empty optional parts mean
    "as in Table 1": search on ``dataset``, no defense, the profile's search settings.
    """

    dataset: str
    algorithm: str
    attack: str
    budget: float
    trial: int
    search_dataset: str = ""
    defense: str = ""
    variant: str = ""

    @property
    def clean(self) -> bool:
        return self.attack == CLEAN

    @property
    def canonical(self) -> bool:
        """A plain Table 1 job: searched on its own dataset, undefended, with the profile's settings."""
        return not (self.search_dataset or self.defense or self.variant)

    @property
    def searched_on(self) -> str:
        return self.search_dataset or self.dataset


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
    search_dataset: str = ""
    defense: str = ""
    variant: str = ""

    @property
    def id(self) -> str:
        """A readable name that is also a file name (marker files are named after it)."""
        parts = [self.stage, self.dataset, self.algorithm or "-", self.attack.replace("/", "+")]
        return ".".join([*parts, f"p{self.budget:g}", f"t{self.trial}", *_extras(self)])

    @property
    def key(self) -> JobKey:
        return JobKey(*(getattr(self, f.name) for f in fields(JobKey)))


def _extras(item: JobKey | Task) -> list[str]:
    """The optional parts of a key that are set, as readable tokens (``search-mnist``, ...)."""
    parts = (("search", item.search_dataset), ("defense", item.defense), ("variant", item.variant))
    return [f"{name}-{value}" for name, value in parts if value]


def shared_poison_attacks(grid: GridConfig) -> frozenset[str]:
    """The attacks whose poison all trials share: every attack as run (per_trial_poisons false: their
    run_search.sh gives every trial the same poison file), else only ``trial_shared_attacks``."""
    if grid.per_trial_poisons:
        return frozenset(grid.trial_shared_attacks)
    from nasaudit.attacks import ATTACKS

    return frozenset(ATTACKS.names())


def task_seed(task: Task) -> int:
    """The seed of a stage.

    A poison's seed is its trial's: every budget of a trial shares it (and so the attack's cached
    surrogate or clean gradients), and the algorithm is left out so GC picks the same samples for
    every victim. A poison shared by all trials has one seed per dataset.
    """
    if task.stage == "poison":
        return derive_seed("poison", task.dataset, task.attack, *([task.trial] if task.trial >= 0 else []))
    parts = (task.stage, task.dataset, task.algorithm, task.attack, f"{task.budget:g}", task.trial)
    return derive_seed(*parts, *_extras(task))  # a Table 1 job's seed does not depend on the other tables


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
        return self._data_file(self.root / task.dataset / "poisons", task)

    def defended(self, task: Task) -> Path:
        """The defended-data file stem of a ``defend`` task: laid out as its poison, under the defense."""
        return self._data_file(self.root / task.dataset / "defended" / task.defense, task)

    @staticmethod
    def _data_file(folder: Path, task: Task) -> Path:
        """``FOLDER/ATTACK[/ALGORITHM]/pBUDGET/trialNN`` (``all_trials`` for a poison every trial shares)."""
        folder = folder / task.attack.replace("/", "+")
        if task.algorithm:
            folder = folder / task.algorithm
        return folder / f"p{task.budget:g}" / (f"trial{task.trial:02d}" if task.trial >= 0 else "all_trials")

    def victim_dir(self, dataset: str, algorithm: str) -> Path:
        return self.root / dataset / "victims" / algorithm

    def job_dir(self, key: JobKey) -> Path:
        """``DATASET/ALGORITHM[/search-D+defense-X+variant-V]/ATTACK/pBUDGET/trialNN``."""
        folder = self.root / key.dataset / key.algorithm
        if not key.canonical:
            folder = folder / "+".join(_extras(key))
        return folder / key.attack.replace("/", "+") / f"p{key.budget:g}" / f"trial{key.trial:02d}"

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
    columns: tuple[str, ...] = ()  # key parts the table reports besides (dataset, algorithm, attack, budget)
    accuracy: str = "best"  # which test accuracy a trial reports ([results] accuracy)

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
    """Tables 1, 5 and 6: every (dataset, algorithm, attack, budget, trial) plus the clean row.

    A ``variant`` (Table 6) changes the search settings of every job, clean row included, so the
    table compares searches that differ only by the poison.
    """
    from nasaudit.attacks import ATTACKS

    algorithms = _algorithms(cfg.algorithms, profile)
    attacks = cfg.attacks or ATTACKS.names()
    _check(name, attacks=attacks, datasets=cfg.datasets, budgets=cfg.budgets, trials=cfg.trials)
    if cfg.variant:
        from nasaudit.grid.variants import VARIANTS

        VARIANTS.get(cfg.variant)
    excluded = _excluded(name, cfg.exclude)
    conditions = [
        JobKey(dataset, algorithm, attack, budget, trial, variant=cfg.variant)
        for dataset in cfg.datasets
        for algorithm in algorithms
        for attack, budget in [(CLEAN, 0.0)]
        + [(a, b) for a in attacks if (algorithm, a) not in excluded for b in cfg.budgets]
        for trial in range(cfg.trials)
    ]
    return _experiment(name, conditions, algorithms, cfg.datasets, profile)


def ood_experiment(name: str, cfg: OODTableConfig, profile: Profile) -> Experiment:
    """Table 3 (paper §5.3): clean searches on each search dataset, retrained and tested on ``dataset``.

    The row searched on ``dataset`` itself is Table 1's clean row (the same jobs), the reference.
    """
    algorithms = _algorithms(cfg.algorithms, profile)
    _check(name, datasets=[*cfg.datasets, *cfg.search_datasets], trials=cfg.trials)
    conditions = [
        JobKey(dataset, algorithm, CLEAN, 0.0, trial, search_dataset="" if searched == dataset else searched)
        for dataset in cfg.datasets
        for algorithm in algorithms
        for searched in cfg.search_datasets
        for trial in range(cfg.trials)
    ]
    return _experiment(name, conditions, algorithms, cfg.datasets, profile, columns=("search_dataset",))


def defense_experiment(name: str, cfg: DefenseTableConfig, profile: Profile) -> Experiment:
    """Table 4 (paper §6.1): searches on defended poisoned data, and the undefended ones they must beat.

    A condition is ``"defense:attack"``; ``"relabel:rlf/clf"`` is one cell defending against both
    label attacks (relabelling discards the labels, so it sees the same images either way) and runs
    on the first attack's poison. The references are Table 1's poisoned jobs at the same budget.
    """
    from nasaudit.attacks import ATTACKS
    from nasaudit.defenses import DEFENSES

    algorithms = _algorithms(cfg.algorithms, profile)
    _check(name, datasets=cfg.datasets, budgets=[cfg.budget], trials=cfg.trials)
    excluded = _excluded(name, cfg.exclude)
    cells = []
    for item in cfg.conditions:
        defense, sep, attack = item.partition(":")
        if not sep or not defense or not attack:
            raise NasauditError(f"[{name}] condition {item!r} must read 'defense:attack' (or 'defense:a/b')")
        DEFENSES.get(defense)
        for part in attack.split("/"):
            ATTACKS.get(part)
        cells.append((defense, attack))
    conditions: list[JobKey] = []
    for dataset in cfg.datasets:
        for algorithm in algorithms:
            for defense, attack in cells:
                parts = attack.split("/")
                if any((algorithm, a) in excluded for a in parts):
                    continue
                for trial in range(cfg.trials):
                    conditions.append(JobKey(dataset, algorithm, attack, cfg.budget, trial, defense=defense))
                    conditions += [JobKey(dataset, algorithm, a, cfg.budget, trial) for a in parts]
    unique = list(dict.fromkeys(conditions))  # a reference serves every defense of its attack
    return _experiment(name, unique, algorithms, cfg.datasets, profile, columns=("defense",))


EXPERIMENTS.register("table1")(lambda profile: robustness_experiment("table1", profile.table1, profile))
EXPERIMENTS.register("table3")(lambda profile: ood_experiment("table3", profile.table3, profile))
EXPERIMENTS.register("table4")(lambda profile: defense_experiment("table4", profile.table4, profile))
EXPERIMENTS.register("table5")(lambda profile: robustness_experiment("table5", profile.table5, profile))
EXPERIMENTS.register("table6")(lambda profile: robustness_experiment("table6", profile.table6, profile))


def _algorithms(names: list[str], profile: Profile) -> list[str]:
    """The table's NAS algorithms (every registered non-sampler one when none are named), checked."""
    from nasaudit.nas import NAS

    samplers = set(profile.grid.samplers)
    for sampler in samplers:
        NAS.get(sampler)
    algorithms = names or [a for a in NAS.names() if a not in samplers]
    for algorithm in algorithms:
        NAS.get(algorithm)
    return algorithms


def _check(
    name: str,
    *,
    datasets: list[str],
    trials: int,
    attacks: Sequence[str] = (),
    budgets: Sequence[float] = (),
) -> None:
    from nasaudit.attacks import ATTACKS
    from nasaudit.data.datasets import DATASETS

    for attack in attacks:
        ATTACKS.get(attack)
    for dataset in datasets:
        DATASETS.get(dataset)
    if trials < 1 or any(not 0 < b <= 1 for b in budgets):
        raise NasauditError(f"[{name}] needs trials ≥ 1 and budgets in (0, 1]")


def _excluded(name: str, exclude: list[str]) -> set[tuple[str, str]]:
    excluded = set()
    for pair in exclude:
        if pair.count("/") != 1:
            raise NasauditError(f"[{name}] exclude entry {pair!r} must read 'algorithm/attack'")
        algorithm, attack = pair.split("/")
        excluded.add((algorithm, attack))
    return excluded


def _experiment(
    name: str,
    conditions: list[JobKey],
    algorithms: list[str],
    datasets: list[str],
    profile: Profile,
    columns: tuple[str, ...] = (),
) -> Experiment:
    """The experiment with the random-sampling baselines of its algorithms' spaces (the ΔImp. reference)."""
    from nasaudit.nas import NAS

    space_sampler = {NAS.get(s).space: s for s in profile.grid.samplers}
    sampler_of, unsampled = {}, {}
    for algorithm in algorithms:
        space = NAS.get(algorithm).space
        if space in space_sampler:
            sampler_of[algorithm] = space_sampler[space]
        else:
            unsampled[algorithm] = space
    if any(NAS.get(s).space == "darts" for s in sampler_of.values()):
        from nasaudit.nas.random_sampling import check_random_baseline

        check_random_baseline(profile.random_baseline, profile.random_baseline.n)
    baselines = [
        JobKey(dataset, sampler, CLEAN, 0.0, trial)
        for dataset in datasets
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
        shared_poison_attacks(profile.grid),
        columns,
        profile.results.accuracy,
    )


def load_experiment(name: str, profile: Profile) -> Experiment:
    return EXPERIMENTS.get(name)(profile)


@dataclass(frozen=True)
class Grid:
    """An experiment's tasks and what each waits for."""

    experiment: Experiment
    layout: Layout
    deps: dict[Task, tuple[Task, ...]]

    def by_stage(self) -> dict[str, list[Task]]:
        """The tasks of each stage this grid has, in stage order."""
        stages: dict[str, list[Task]] = {s: [] for s in STAGE_ORDER}
        for task in self.deps:
            stages[task.stage].append(task)
        return {stage: tasks for stage, tasks in stages.items() if tasks}


def search_task(key: JobKey) -> Task:
    return Task("search", *_fields(key))


def retrain_task(key: JobKey) -> Task:
    return Task("retrain", *_fields(key))


def _fields(key: JobKey) -> tuple:
    return tuple(getattr(key, f.name) for f in fields(JobKey))


def poison_task(key: JobKey, victim_attacks: Iterable[str], trial_shared_attacks: Iterable[str]) -> Task:
    """The poison a job searches on (a compound attack ``a/b`` of Table 4 uses the poison of ``a``)."""
    attack = key.attack.split("/")[0]
    algorithm = key.algorithm if attack in victim_attacks else ""
    trial = -1 if attack in trial_shared_attacks else key.trial
    return Task("poison", key.dataset, algorithm, attack, key.budget, trial)


def defend_task(key: JobKey, victim_attacks: Iterable[str], trial_shared_attacks: Iterable[str]) -> Task:
    """The defended data a Table 4 job searches on: its defense applied to its poison."""
    poison = poison_task(key, victim_attacks, trial_shared_attacks)
    return replace(poison, stage="defend", attack=key.attack, defense=key.defense)


def victim_task(dataset: str, algorithm: str, trials: int) -> Task:
    return Task("victim", dataset, algorithm, trial=trials)


def build_grid(experiment: Experiment, layout: Layout) -> Grid:
    """All tasks of an experiment with their dependencies (a DAG, listed in a valid order).

    A victim is the best of an algorithm's Table 1 clean trials (paper §4), whichever table needs it,
    so those jobs join any grid with a victim attack.
    """
    deps: dict[Task, tuple[Task, ...]] = {}
    rules = (experiment.victim_attacks, experiment.trial_shared_attacks)
    jobs = list(experiment.jobs)
    poisons = sorted({poison_task(k, *rules) for k in jobs if not k.clean})
    trials: dict[tuple[str, str], int] = {}
    for key in experiment.conditions:
        trials[key.dataset, key.algorithm] = max(trials.get((key.dataset, key.algorithm), 0), key.trial + 1)
    # Poisons with one seed share the attack's cache (the CLF surrogate, GC's clean gradients): the
    # first runs alone and fills it, the others then read it instead of each computing its own copy.
    leaders: dict[tuple[str, str, int], Task] = {}
    for poison in poisons:
        leader = leaders.setdefault((poison.algorithm, poison.attack, task_seed(poison)), poison)
        wait = [] if leader == poison else [leader]
        if poison.algorithm:
            n = trials[poison.dataset, poison.algorithm]
            clean = [JobKey(poison.dataset, poison.algorithm, CLEAN, 0.0, t) for t in range(n)]
            jobs += [k for k in clean if k not in jobs]
            victim = victim_task(poison.dataset, poison.algorithm, n)
            deps[victim] = tuple(retrain_task(k) for k in clean)
            wait.append(victim)
        deps[poison] = tuple(wait)
    for key in jobs:
        search = search_task(key)
        if key.defense:
            defend = defend_task(key, *rules)
            deps[defend] = (poison_task(key, *rules),)
            deps[search] = (defend,)
        else:
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
