"""Which tasks a preflight runs: one per kind of task of every experiment's grid, with what they wait for.

A task's *kind* is what decides its code path, shapes and memory: the stage; the attack, and for an
attack crafted against a victim the victim's kind (a P-DARTS supernet, a DARTS network, an MBV3
network); the defense; the search algorithm with its variant and defense; the retrained space; and the
dataset the stage runs on (CIFAR-10 or CIFAR-100's 100 classes, Table 3's search datasets). Kinds are
read off the grids the experiments build (``grid.jobs.build_grid``), never listed by hand, so a new
table, attack or algorithm is preflighted as soon as a grid contains it.

Each kind is represented by one of its tasks: the largest budget (p = 50%: the most poisons, the most
memory), then the one that adds the fewest tasks it depends on, so the representatives share their
dependencies (a victim attack needs its victim, which needs clean retrains, which need searches). The
dependencies run too, in grid order, so the files passed between stages are checked as well. Table 2
(no grid) scores the architectures on the representatives' poisons of its attacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import EXPERIMENTS, STAGE_ORDER, Layout, Task, build_grid, load_experiment

TABLE2 = "table2"
# Searches whose runs on other data than the profile's first dataset (Table 1's CIFAR-100, Table 3's
# search datasets, Table 4's defended data) a CPU leaves to a GPU are those of the algorithms registered
# with ``preflight_other_data_on_cpu = False`` (P-DARTS: at the paper's sizes a bounded search takes
# about a minute of CPU, and the grids hold six of them). Each runs on the first dataset, and the
# data's path into a search (the dataset, its poison, its defense) runs with RoBoT and TE-NAS (whose
# bounded search scores a few removals per round: seconds) on every variant.


@dataclass(frozen=True)
class Item:
    """One task of the preflight: a grid task, or Table 2's scoring (``task`` None)."""

    kind: str
    id: str
    task: Task | None
    deps: tuple[str, ...]  # ids of the items it waits for
    tables: tuple[str, ...]  # the experiments whose grids hold it
    role: str  # "kind": it represents its kind; "dependency": it runs for another item's inputs
    poisons: dict[str, Task] = field(default_factory=dict)  # Table 2: attack -> the poison it scores


def victim_kind(profile: Profile, algorithm: str) -> str:
    """The kind of network GC differentiates for ``algorithm`` (``grid.plan.victim_net``)."""
    from nasaudit.grid.plan import victim_net

    return victim_net(profile, algorithm).kind


def kind_of(task: Task, profile: Profile) -> str:
    """``stage/what/dataset``, e.g. ``poison/nas_gc@darts_supernet/cifar10``, ``search/pdarts/svhn``."""
    from nasaudit.nas import NAS

    if task.stage == "poison":
        what = task.attack + (f"@{victim_kind(profile, task.algorithm)}" if task.algorithm else "")
    elif task.stage == "victim":
        what = victim_kind(profile, task.algorithm)
    elif task.stage == "defend":
        what = task.defense
    elif task.stage == "search":
        what = "+".join([task.algorithm, *[p for p in (task.variant, task.defense) if p]])
    else:
        what = NAS.get(task.algorithm).space
    dataset = task.key.searched_on if task.stage == "search" else task.dataset
    return f"{task.stage}/{what}/{dataset}"


@dataclass(frozen=True)
class Plan:
    items: list[Item]  # in an order that runs every dependency first
    left_out: dict[str, str]  # kind -> why this machine does not run it


def plan_items(profile: Profile, layout: Layout, only: Iterable[str] = (), cpu: bool = False) -> Plan:
    """The preflight's items: one per kind of every grid, their dependencies, Table 2's scoring.

    ``only``: keep the kinds containing one of these substrings (and what they depend on). ``cpu``:
    leave the searches of algorithms without ``preflight_other_data_on_cpu`` on other data than the
    first dataset to a GPU run (unless another kind needs one).
    """
    deps: dict[Task, tuple[Task, ...]] = {}
    tables: dict[Task, list[str]] = {}
    for name in EXPERIMENTS.names():
        grid = build_grid(load_experiment(name, profile), layout)
        for task, waits in grid.deps.items():
            deps[task] = _inputs(task, waits)
            tables.setdefault(task, []).append(name)
    kinds: dict[str, list[Task]] = {}
    for task in deps:
        kinds.setdefault(kind_of(task, profile), []).append(task)
    wanted = {k: _candidates(tasks) for k, tasks in kinds.items() if not only or any(p in k for p in only)}
    table2 = _table2_kind(profile)
    run_table2 = not only or any(part in table2 for part in only)
    if not wanted and not run_table2:
        raise NasauditError(f"no kind of task matches --only {' '.join(only)}; `--list` shows them all")
    first = profile.experiment.datasets[0]
    left_out = {
        kind: f"left to a GPU run: {tasks[0].algorithm} on other data than {first} (on a CPU it runs on "
        f"{first}, and RoBoT and TE-NAS on these data)"
        for kind, tasks in wanted.items()
        if cpu and _data_variant(tasks[0], first)
    }
    wanted = {k: tasks for k, tasks in wanted.items() if k not in left_out}

    chosen: dict[Task, str] = {}  # task -> the kind it represents
    selected: set[Task] = set()

    def closure(task: Task) -> set[Task]:
        found, todo = set(), [task]
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo.extend(deps[current])
        return found

    stage_rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    # The most constrained kinds choose first, so the others can share what those had to add.
    for kind in sorted(wanted, key=lambda k: (len(wanted[k]), stage_rank[k.split("/")[0]], k)):
        best = min(wanted[kind], key=lambda t: (len(closure(t) - selected), -t.budget, t))
        chosen[best] = kind
        selected |= closure(best)

    poisons: dict[str, Task] = {}
    if run_table2:
        poisons = _table2_poisons(profile, deps, tables, selected)
        for poison in poisons.values():
            selected |= closure(poison)

    order = {task: i for i, task in enumerate(deps)}  # the grids' topological order
    for task in selected:  # a left-out kind that another one needs runs after all
        kind = kind_of(task, profile)
        if kind in left_out:
            del left_out[kind]
            chosen[task] = kind
    items = [
        Item(
            chosen.get(task) or kind_of(task, profile),
            task.id,
            task,
            tuple(dep.id for dep in deps[task]),
            tuple(tables[task]),
            "kind" if task in chosen else "dependency",
        )
        for task in sorted(selected, key=lambda t: (_depth(t, deps), order[t]))
    ]
    if run_table2:
        items.append(
            Item(table2, table2, None, tuple(p.id for p in poisons.values()), (TABLE2,), "kind", poisons)
        )
    return Plan(items, left_out)


def _data_variant(task: Task, first: str) -> bool:
    """A search a CPU leaves to a GPU (its algorithm's ``preflight_other_data_on_cpu`` is false) on other
    data than ``first``: another dataset or defended."""
    from nasaudit.nas import NAS

    if task.stage != "search" or NAS.get(task.algorithm).preflight_other_data_on_cpu:
        return False
    return task.key.searched_on != first or bool(task.defense)


def _inputs(task: Task, waits: tuple[Task, ...]) -> tuple[Task, ...]:
    """What ``task`` reads: a poison's wait for the poison that fills their shared cache first is left
    out (it saves time in a grid, not inputs), so each preflight poison computes its own."""
    return tuple(w for w in waits if not (task.stage == "poison" and w.stage == "poison"))


def _candidates(tasks: list[Task]) -> list[Task]:
    """The tasks that may represent a kind: of poisons and defended data, those of the largest budget
    (the most poisoned samples, the most memory)."""
    if tasks[0].stage not in ("poison", "defend"):
        return tasks
    largest = max(t.budget for t in tasks)
    return [t for t in tasks if t.budget == largest]


def _depth(task: Task, deps: dict[Task, tuple[Task, ...]]) -> int:
    """Longest chain of dependencies below ``task``: running by depth runs every dependency first."""
    return 1 + max((_depth(d, deps) for d in deps[task]), default=-1)


def _table2_kind(profile: Profile) -> str:
    return f"{TABLE2}/sensitivity/{profile.experiment.datasets[0]}"


def _table2_poisons(
    profile: Profile, deps: dict[Task, tuple[Task, ...]], tables: dict[Task, list[str]], selected: set[Task]
) -> dict[str, Task]:
    """Per attack Table 2 compares, a grid poison of its dataset at its budget: one already selected,
    and of Table 1's grid (DARTS-space victims, the space Table 2's metrics score), when there is one.
    Table 2 reads poisons as the grids write them."""
    cfg, dataset = profile.sensitivity, profile.experiment.datasets[0]
    poisons = {}
    for attack in cfg.attacks:
        candidates = [
            t
            for t in deps
            if t.stage == "poison" and t.dataset == dataset and t.attack == attack and t.budget == cfg.budget
        ]
        if not candidates:
            raise NasauditError(
                f"Table 2 compares {attack} at p = {cfg.budget:g} on {dataset}, but no grid makes that "
                "poison; add the attack and budget to a table of the profile"
            )
        poisons[attack] = min(candidates, key=lambda t: (t not in selected, "table1" not in tables[t], t))
    return poisons
