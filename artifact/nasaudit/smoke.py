"""The kick-the-tires run: every capability that exists, end to end, on the embedded digits data, CPU.

Each step returns a flat dict of outputs; all of them are written to ``OUT/summary.json`` and checked
against ``expected_results/smoke/summary.json`` as ``nasaudit.smoke_checks`` describes: exact where no
floating point decides a value, ranges that any correct run satisfies for what training and search
produce, so the test passes on every CPU. The retrained networks learn for real (the smoke profile's
``[train]`` reaches well above chance on 128 digits), and their accuracy floors fail for a trainer that
does not learn. A capability joins the smoke test by adding one step function to ``STEPS``.

``--portability`` runs the smoke test under several CPU settings (PyTorch's plain kernels and the
machine's best, one and two threads) and reports which outputs differ between them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasaudit import threads, verbosity
from nasaudit.config import Profile, load_profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_arrays, write_json
from nasaudit.options import add_profile
from nasaudit.smoke_checks import (
    compare,
    differences,
    expectation,
    finite,
    kind,
    near,
    render_differences,
    value,
    within,
)

DATASET = "digits"
SEED = 0

logger = logging.getLogger(__name__)

#: Test accuracy (%) floor of the published P-DARTS genotype retrained by the smoke profile's
#: ``[train]`` on 128 digits: 87.5–91.7 % on seeds 0–3 (smoke.toml), so a few points
#: below; a trainer that does not learn stays near 10 %.
REFERENCE_FLOOR = 85.0
#: Floor of a searched architecture retrained the same way. Searches move with the CPU's floating
#: point and some picks learn less (TE-NAS's skips and dilated convolutions: about 65 %), so this only
#: says "learned": far above chance, which a non-learning trainer never reaches.
SEARCHED_FLOOR = 40.0


@dataclass
class SmokeRun:
    profile: Profile
    dataset: ImageDataset  # the embedded digits cut to the profile's ``[grid] train_subset``: every step's
    out: Path
    device: torch.device
    state: dict[str, Any] = field(default_factory=dict)  # what earlier steps hand to later ones


def step_data(run: SmokeRun) -> dict[str, Any]:
    """The embedded dataset as a whole, and the training subset every later step works on."""
    ds = load_dataset(DATASET)
    return {
        "n_subset": len(run.dataset.train),
        "subset_sha256": run.dataset.train.sha256,
        "n_train": len(ds.train),
        "n_test": len(ds.test),
        "classes": ds.num_classes,
        "train_sha256": ds.train.sha256,
    }


def step_stream(run: SmokeRun) -> dict[str, Any]:
    """The first epoch's batches, augmented on the device: data only, so near-exact."""
    from nasaudit.data.device import DeviceData

    data = DeviceData(run.dataset.train, run.dataset, run.device)
    cfg = run.profile.train
    batches = list(data.batches(cfg.batch_size, seed=SEED, augment=cfg.augment))
    first = batches[0][0]
    return {
        "batches": len(batches),
        "samples": sum(len(y) for _, y in batches),
        "first_batch_mean": near(round(float(first.mean()), 6), 1e-4),
        "first_batch_labels": [int(v) for v in batches[0][1][:8]],
    }


def _accuracy(result: dict[str, Any], floor: float) -> dict[str, Any]:
    return within(round(result["test_accuracy"], 2), floor, 100.0)


def step_retrain(run: SmokeRun) -> dict[str, Any]:
    """The published P-DARTS genotype retrained from scratch: a fixed architecture, so its size is exact
    and its accuracy says whether training works; it is also the GC victim of the poison step."""
    from nasaudit.models import retrain
    from nasaudit.spaces.darts import load

    out = run.out / "train" / "pdarts_reference"
    # as `nasaudit train` retrains: the result records the architecture, so the job can become a GC victim
    result = retrain("darts", load("pdarts"), run.dataset, run.profile, seed=SEED, device=run.device,
                     out_dir=out, progress=False)  # fmt: skip
    run.state["reference"] = out
    losses = [entry["train_loss"] for entry in result["log"]]
    run.state["accuracies"] = {"published P-DARTS genotype (fixed)": result["test_accuracy"]}
    return {
        "pdarts_reference.params": result["params"],
        "pdarts_reference.epochs": len(result["log"]),
        "pdarts_reference.test_accuracy": _accuracy(result, REFERENCE_FLOOR),
        # the last epoch's training loss as a fraction of the first's: finite and well below 1
        "pdarts_reference.train_loss_ratio": within(finite(round(losses[-1] / losses[0], 4)), 0.0, 0.5),
    }


# Attacks whose poison is a function of the data and the seed alone: exactly checkable by hash. The
# others are crafted through a trained network and move with the machine's floating point.
DATA_ONLY_ATTACKS = ("gaussian", "rlf")


def step_poison(run: SmokeRun) -> dict[str, Any]:
    """Every attack at the first budget; GC's victim is the retrained published genotype (a fixed input,
    whatever the searches find), CLF trains its surrogate into the cache."""
    from nasaudit.attacks import ATTACKS, AttackContext, make_poison_file
    from nasaudit.attacks.victim import victim_from_train_job
    from nasaudit.data.poison import apply_poison, load_poison

    if "reference" not in run.state:
        step_retrain(run)
    net = run.profile.darts_net
    victim = victim_from_train_job(run.state["reference"], net.channels, net.layers, run.out / "victim.pt")
    context = AttackContext(run.profile, run.device, run.out / "cache", victim, progress=False)
    budget, epsilon = run.profile.experiment.budgets[0], run.profile.gc.epsilon_255
    outputs: dict[str, Any] = {}
    for name in ATTACKS:
        path, _ = make_poison_file(name, run.dataset, budget, SEED, context, run.out / "poisons" / name)
        poison = load_poison(path, run.dataset)
        poisoned = apply_poison(poison, run.dataset).train
        changed = (poisoned.labels != run.dataset.train.labels) | (
            poisoned.images != run.dataset.train.images
        ).any(axis=(1, 2, 3))
        n = len(poison.indices)
        outputs[f"{name}.n_poisoned"] = n
        if name in DATA_ONLY_ATTACKS:
            outputs[f"{name}.n_changed"] = int(changed.sum())
            outputs[f"{name}.sha256"] = sha256_arrays(poisoned.images, poisoned.labels)
        elif poison.images is not None:  # GC: a bounded perturbation that lowered its objective
            diff = poison.images.astype(int) - run.dataset.train.images[poison.indices].astype(int)
            outputs[f"{name}.n_changed"] = within(int(changed.sum()), 1, n)
            outputs[f"{name}.linf_255"] = within(int(np.abs(diff).max()), 1, epsilon)
            ratio = poison.params["best_loss"] / poison.params["initial_loss"]
            outputs[f"{name}.loss_ratio"] = within(finite(round(ratio, 4)), 0.0, 0.9999)
        else:  # CLF: the label of least confidence, rarely the true one even for a weak surrogate
            outputs[f"{name}.n_changed"] = within(int(changed.sum()), math.ceil(n / 2), n)
    return outputs


# --- the searches: checked on the smoke grid's clean trial 0 of each algorithm -----------------------

# The grid experiments the smoke runs, in one results folder so later tables reuse Table 1's jobs. Table 3
# searches on a second dataset, which the smoke cannot download; its plumbing is tested in test_grid.py.
SMOKE_TABLES = ("table1", "table4", "table6")


def _run_table(run: SmokeRun, name: str, algorithms: tuple[str, ...] = ()) -> Any:
    """Run (or find finished) the smoke grid of one table, optionally only some algorithms' jobs."""
    from nasaudit.grid import Layout, RunSpec, build_grid, load_experiment, run_grid

    experiment = load_experiment(name, run.profile)
    if algorithms:
        experiment = experiment.select(algorithms=algorithms)
    grid = build_grid(experiment, Layout.of(run.out / "grid", run.profile))
    report = run_grid(grid, RunSpec(run.profile, run.out / "grid", None, "cpu"), log=lambda _: None)
    for task, error in report.failed.items():
        logger.error(f"[smoke] grid task {task.id} failed: {error}")
    return experiment, grid, report


def _clean_job(run: SmokeRun, algorithm: str) -> tuple[Path, dict[str, Any]]:
    """The search folder and retraining result of Table 1's clean trial 0 of ``algorithm``."""
    from nasaudit.grid import CLEAN, JobKey, Layout

    layout = Layout.of(run.out / "grid", run.profile)
    key = JobKey(DATASET, algorithm, CLEAN, 0.0, 0)
    if not (layout.train_dir(key) / "result.json").is_file():
        _run_table(run, "table1", (algorithm,))
    if not (layout.train_dir(key) / "result.json").is_file():
        raise NasauditError(f"Table 1's clean trial 0 of {algorithm} did not finish (its error is above)")
    result = json.loads((layout.train_dir(key) / "result.json").read_text())
    from nasaudit.nas import NAS

    label = f"{NAS.get(algorithm).label}'s pick (grid: clean data, trial 0)"
    run.state.setdefault("accuracies", {})[label] = result["test_accuracy"]
    return layout.search_dir(key), result


def _genotype_ops(architecture: dict[str, Any]) -> set[str]:
    return {op for cell in ("normal", "reduce") for op, _ in architecture[cell]}


def step_pdarts(run: SmokeRun) -> dict[str, Any]:
    """P-DARTS (3 stages, 8 → 5 → 3 → 1 ops per edge): its schedule exactly, its pick by invariants."""
    from nasaudit.spaces.darts import Genotype
    from nasaudit.spaces.darts.genotype import EDGES, NODES

    folder, result = _clean_job(run, "pdarts")
    log = json.loads((folder / "pdarts_log.json").read_text())
    genotype = Genotype.from_json(json.loads((folder / "architecture.json").read_text())["architecture"])
    last = log["stages"][-1]["candidates"]
    from_last_stage = all(
        op in last[cell][EDGES.index((i // 2, inp))]
        for cell in ("normal", "reduce")
        for i, (op, inp) in enumerate(getattr(genotype, cell))
    )
    arch_losses = [e["arch_loss"] for e in log["epochs"] if e["arch_loss"] is not None]
    ops = [sorted({len(c) for cell in s["candidates"].values() for c in cell}) for s in log["stages"]]
    inputs = [{inp for _, inp in genotype.normal[2 * n : 2 * n + 2]} for n in range(NODES)]
    cfg = run.profile.pdarts
    return {
        "epochs": len(log["epochs"]),
        "ops_per_edge": ops,
        "nodes_with_two_inputs": sum(len(i) == 2 for i in inputs),
        "ops_from_last_stage": from_last_stage,
        "skips_normal": within([op for op, _ in genotype.normal].count("skip_connect"), 0, cfg.max_skips),
        "last_arch_loss": within(finite(round(arch_losses[-1], 4)), 0.0, 10.0),
        "victim": (folder / "supernet_victim.pt").is_file(),
        "pick.epochs": len(result["log"]),
        "pick.test_accuracy": _accuracy(result, SEARCHED_FLOOR),
    }


def step_robot(run: SmokeRun) -> dict[str, Any]:
    """RoBoT (a proxy-scored pool, BO over the proxy weights, a greedy phase): counts exactly, the pool's
    proxies by what their definitions guarantee (sums of magnitudes are ≥ 0, all are finite)."""
    folder, result = _clean_job(run, "robot")
    log = json.loads((folder / "robot_result.json").read_text())
    with np.load(Path(log["pool"]["folder"]) / "scores.npz", allow_pickle=False) as z:
        scores = z["scores"]
    outputs: dict[str, Any] = {"pool_unique": log["pool"]["n_unique"], "queried": log["queried"]}
    for name, column in zip(run.profile.robot.proxies, scores.T, strict=True):
        low = 0.0 if name in NONNEGATIVE_PROXIES else None
        outputs[f"pool_min.{name}"] = within(finite(round(float(column.min()), 6)), low, None)
    outputs["pick.epochs"] = len(result["log"])
    outputs["pick.test_accuracy"] = _accuracy(result, SEARCHED_FLOOR)
    return outputs


#: Proxies defined as sums of norms or magnitudes (``nasaudit.proxies.zero_cost``).
NONNEGATIVE_PROXIES = ("grad_norm", "snip", "fisher", "synflow")


def step_tenas(run: SmokeRun) -> dict[str, Any]:
    """TE-NAS (2 ops per edge: one op round, then the edge rounds): its rounds exactly, its scores by
    definition (a condition number is ≥ 1; linear regions are at least 1 and at most the samples)."""
    folder, result = _clean_job(run, "tenas")
    logs = [json.loads(p.read_text()) for p in sorted(folder.glob("tenas_round_*.json"))]
    scores = [entry for log in logs for entry in log["scores"]]
    kappas = np.array([k for entry in scores for k in np.ravel(entry["kappa"])], dtype=float)
    regions = np.array([r for entry in scores for r in np.ravel(entry["regions"])], dtype=float)
    cfg = run.profile.tenas
    architecture = json.loads((folder / "architecture.json").read_text())["architecture"]
    return {
        "rounds": len(logs),
        "candidates_scored": len(scores),
        "ops_from_search_space": sorted(_genotype_ops(architecture) - set(cfg.ops)) == [],
        "kappa_min": within(finite(round(float(kappas.min()), 4)), 1.0, None),
        "kappa_max": within(finite(round(float(kappas.max()), 4)), 1.0, None),
        "regions_min": within(float(regions.min()), 1.0, cfg.lr_batch_size * cfg.lr_batches),
        "regions_max": within(float(regions.max()), 1.0, cfg.lr_batch_size * cfg.lr_batches),
        "pick.epochs": len(result["log"]),
        "pick.test_accuracy": _accuracy(result, SEARCHED_FLOOR),
    }


#: Table 2 metrics that read no labels, and those that read no data at all: their change under an
#: attack that leaves what they read untouched is exactly 0 on any machine.
LABEL_FREE_METRICS = ("ntk", "linear_regions", "jacob_cov", "synflow")
DATA_FREE_METRICS = ("synflow",)


def step_analyses(run: SmokeRun) -> dict[str, Any]:
    """Table 2 (metric sensitivity, the profile's architectures and attacks) and relabelling of RLF data."""
    from sklearn.metrics import adjusted_rand_score

    from nasaudit.analysis.sensitivity import run_sensitivity
    from nasaudit.attacks import AttackContext, make_poison_file
    from nasaudit.data.poison import apply_poison, load_poison
    from nasaudit.defenses import DefenseContext, run_defense

    cfg, folder = run.profile.sensitivity, run.out / "table2"
    context = AttackContext(run.profile, run.device, run.out / "cache", progress=False)
    poisons = {a: make_poison_file(a, run.dataset, cfg.budget, SEED, context, folder / "poisons" / a)[0]
               for a in {*cfg.attacks, "rlf"}}  # fmt: skip
    table = run_sensitivity(run.dataset, {a: poisons[a] for a in cfg.attacks}, cfg, seed=SEED,
                            pool_ops=run.profile.robot.pool_ops, device=run.device, out_dir=folder,
                            progress=False)  # fmt: skip
    outputs: dict[str, Any] = {"table2.cells": len(table), "table2.architectures": int(table["n"].max())}
    for row in table.itertuples():
        label_only = load_poison(poisons[row.attack], run.dataset).images is None
        untouched = row.metric in DATA_FREE_METRICS or (label_only and row.metric in LABEL_FREE_METRICS)
        mean = finite(round(float(row.mean), 2))  # in % of the clean value
        outputs[f"table2.{row.metric}.{row.attack}"] = mean if untouched else within(mean, None, None)
    poisoned = apply_poison(load_poison(poisons["rlf"], run.dataset), run.dataset)
    context = DefenseContext(run.profile, run.device, run.out / "cache", progress=False)
    defended = run_defense("relabel", poisoned, SEED, context)
    outputs["relabel.n_kept"] = len(defended.keep)
    outputs["relabel.clusters"] = len(np.unique(defended.labels))
    agreement = adjusted_rand_score(run.dataset.train.labels, defended.labels)
    outputs["relabel.rand_index_vs_clean"] = within(round(float(agreement), 3), 0.1, 1.0)
    return outputs


def step_grid(run: SmokeRun) -> dict[str, Any]:
    """The profile's Table 1, 4 and 6 grids on the local runner (CPU workers), their tables and means.

    Every cell is an architecture searched on (poisoned) data and retrained on the clean 128 digits, so
    each mean must show learning; which cells differ significantly is the experiment's finding, not a
    property of the code, and is not checked.
    """
    from nasaudit.report.experiment import experiment_table
    from nasaudit.report.tables import write_table

    outputs: dict[str, Any] = {}
    for name in SMOKE_TABLES:
        experiment, grid, report = _run_table(run, name)
        outputs[f"{name}.tasks"] = len(grid.deps)
        outputs[f"{name}.tasks_unfinished"] = len(report.failed) + len(report.blocked)
        if not report.ok:
            continue
        result = experiment_table(experiment, grid.layout)
        table = result.table
        write_table(name, table, run.out / "grid" / "tables")
        run.state.setdefault("tables", {})[name] = result
        outputs[f"{name}.cells"] = len(table)
        for row in table.to_dict("records"):
            defense = [row["defense"]] if "defense" in row else []
            cell = ".".join([row["algorithm"], *defense, row["attack"]])
            mean = within(round(row["mean"], 2), SEARCHED_FLOOR, 100.0)
            outputs[f"{name}.{cell}.p{row['budget']:g}"] = mean
    return outputs


def step_nsganetv2(run: SmokeRun) -> dict[str, Any]:
    """A tiny NSGANetV2 search: the dataset's shared small supernet (2 shrinking phases), a few
    evaluated archs."""
    from nasaudit.nas import SearchContext, run_search
    from nasaudit.spaces.mbv3 import FlopsCounter, channel_plan, count_params, extreme_arch

    out = run.out / "search" / "nsganetv2"
    context = SearchContext(run.profile, run.device, out, progress=False)
    run_search("nsganetv2", run.dataset, SEED, context, {"dataset": run.dataset.name, "poison": None})
    archive = json.loads((out / "archive.json").read_text())
    pick = json.loads((out / "pareto.json").read_text())["pick"]
    supernet = json.loads((out / "search_state.json").read_text())["supernet"]
    plan, space, cfg = channel_plan(run.profile.mbv3.width_mult), run.profile.mbv3, run.profile.nsganetv2
    flops = FlopsCounter(plan, run.dataset.num_classes)
    biggest = extreme_arch(space.resolutions, largest=True)
    largest, smallest = flops(biggest), flops(extreme_arch(space.resolutions, largest=False))
    return {
        "largest_flops": largest,
        "largest_params": count_params(biggest, plan, run.dataset.num_classes),
        "supernet_epochs": len(json.loads((Path(supernet["folder"]) / "supernet" / "log.json").read_text())),
        # the initial sample, then up to per_iteration new archs an iteration: the search's candidates
        # move with the floating point and one already in the archive is not evaluated again
        "evaluated": within(len(archive), cfg.initial, cfg.initial + cfg.iterations * cfg.per_iteration),
        "pick_mflops": within(round(pick["mflops"], 3), round(smallest / 1e6, 3), round(largest / 1e6, 3)),
    }


STEPS: dict[str, Callable[[SmokeRun], dict[str, Any]]] = {
    "data": step_data,
    "stream": step_stream,
    "retrain": step_retrain,
    "poison": step_poison,
    "grid": step_grid,
    "pdarts": step_pdarts,
    "robot": step_robot,
    "tenas": step_tenas,
    "analyses": step_analyses,
    "nsganetv2": step_nsganetv2,
}


def _selected(names: str | None) -> list[str]:
    """The steps to run, in the pipeline's order (all when none are named)."""
    chosen = [n.strip() for n in (names or "").split(",") if n.strip()] or list(STEPS)
    unknown = [n for n in chosen if n not in STEPS]
    if unknown:
        raise NasauditError(f"unknown smoke step {unknown[0]!r}; choose from: {', '.join(STEPS)}")
    return [n for n in STEPS if n in chosen]


MARKER = ".nasaudit-smoke"  # marks a folder as a smoke run's output, which the next run may clear


def _fresh(out: Path) -> None:
    """Start from an empty ``out``: a smoke test reuses nothing an earlier run (of older code) left."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise NasauditError(f"{out} is not empty and not a smoke run's output; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def machine() -> dict[str, Any]:
    """What decides a run's floating point: the PyTorch build, its CPU kernels and threads."""
    cpu = getattr(torch.backends, "cpu", None)  # torch >= 2.1; the images' torch 2.0 has no such module
    capability = getattr(cpu, "get_cpu_capability", lambda: "unknown")()
    return {"torch": torch.__version__, "cpu_capability": capability, "threads": torch.get_num_threads()}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the grid's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_steps(run: SmokeRun, steps: list[str]) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """Run ``steps`` in order, printing each one's outputs; the outputs (keyed STEP.NAME) and each
    step's (wall, CPU) seconds: CPU well below twice the wall time means a busy machine.

    A step that raises is reported with its traceback and produces nothing, so its outputs count as
    missing while the other steps still run and are checked.
    """
    summary: dict[str, Any] = {}
    times: dict[str, tuple[float, float]] = {}
    for name in steps:
        start, cpu = time.perf_counter(), _cpu_seconds()
        try:
            outputs = STEPS[name](run)
        except Exception as exc:
            logger.exception(f"[smoke] {name} FAILED: {type(exc).__name__}: {exc}")  # with its traceback
            outputs = {}
        times[name] = (time.perf_counter() - start, _cpu_seconds() - cpu)
        shown = ", ".join(f"{k}={value(v)}" for k, v in outputs.items())
        logger.info(f"[smoke] {name:<10} {times[name][0]:6.1f}s  {shown}")
        summary.update({f"{name}.{k}": v for k, v in outputs.items()})
    return summary, times


def render_summary(
    run: SmokeRun, times: dict[str, tuple[float, float]], summary: dict[str, Any], problems: list[str]
) -> str:
    """The reviewer's ending: each step's time and checks, the accuracies, Table 1, where things lie."""
    from nasaudit.report.experiment import describe_baselines
    from nasaudit.report.tables import to_markdown

    failed = {line.split(":", 1)[0] for line in problems}
    kinds = [kind(v) for v in summary.values()]
    lines = ["", "=" * 100, f"{'step':<10} {'time':>8} {'CPU':>8}   outputs as expected"]
    for name, (wall, cpu) in times.items():
        keys = [k for k in summary if k.startswith(f"{name}.")]
        good = sum(k not in failed for k in keys)
        lines.append(f"{name:<10} {wall:7.1f}s {cpu:7.1f}s   {good} of {len(keys)}")
    wall, cpu = (sum(t[i] for t in times.values()) for i in (0, 1))
    lines.append(
        f"{'all':<10} {wall:7.1f}s {cpu:7.1f}s   {len(summary) - len(failed & set(summary))} of "
        f"{len(summary)} ({kinds.count('exact')} exact, {kinds.count('near')} near, "
        f"{kinds.count('within')} within a range)"
    )
    m = machine()
    lines.append(f"machine: torch {m['torch']}, CPU kernels {m['cpu_capability']}, {m['threads']} thread(s)")
    if run.state.get("accuracies"):
        lines += ["", f"Test accuracy of networks retrained on the {len(run.dataset.train)} training digits "
                      f"({len(run.dataset.test)} test digits; chance is 10 %):"]  # fmt: skip
        lines += [f"  {label:<42} {acc:6.2f} %" for label, acc in run.state["accuracies"].items()]
    table1 = run.state.get("tables", {}).get("table1")
    if table1 is not None:
        lines += [
            "",
            f"Smoke Table 1 ({run.profile.table1.trials} trials a cell; Acc. = test accuracy, mean ± std "
            "over trials; ΔImp. = Acc. minus the mean of random architectures retrained alike; bold "
            "underlined = significantly below the clean row: one-sided Welch t-test, Benjamini–Hochberg "
            "per algorithm):",
            to_markdown(table1.table).rstrip(),
            describe_baselines(table1.baselines),
        ]
    where = [f"{path} ({what})" for path, what in OUTPUTS.items() if (run.out / path).exists()]
    lines += ["", f"Outputs in {run.out}: " + ", ".join(where)]
    return "\n".join(lines)


#: What a reviewer finds in a smoke run's folder (the ending lists those this run wrote).
OUTPUTS = {
    "report/index.html": "the results page: open it in a browser",
    "summary.json": "every output",
    "train": "the retrained published genotype",
    "poisons": "every attack's poison",
    "grid": "the grid's jobs",
    "grid/tables": "Tables 1, 4 and 6 as csv, md, tex",
    "table2": "Table 2's sensitivity runs",
    "search/nsganetv2": "the NSGANetV2 search",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasaudit.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/smoke"), help="emptied first")
    parser.add_argument("--expected", type=Path, default=Path("expected_results/smoke/summary.json"))
    add_profile(parser, default="smoke")
    parser.add_argument("--steps", help=f"comma-separated subset of: {', '.join(STEPS)}")
    parser.add_argument("--bless", action="store_true", help="write this run's outputs as the expected ones")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job (default: automatic)")
    parser.add_argument(
        "--portability", action="store_true", help="run once per CPU setting; report which outputs differ"
    )
    verbosity.add_arguments(parser)
    args = parser.parse_args(argv)
    verbosity.configure(verbosity.level_of(args))
    try:
        if not args.portability:  # the portability runs set each child's threads themselves
            threads.configure(requested=args.threads)
        steps = _selected(args.steps)
        profile = load_profile(args.profile, args.set)
        merge = not args.bless or (args.steps and args.expected.is_file())  # --bless --steps: update those
        expected = _read_expected(args.expected) if merge else {}
        if args.portability:
            return portability(args, steps, expected)
        _fresh(args.out)
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        write_json(args.out / "machine.json", machine())
        logger.info(f"[smoke] {', '.join(f'{k} {v}' for k, v in machine().items())}; outputs in {args.out}")
        dataset = load_dataset(DATASET).first(profile.grid.train_subset)
        run = SmokeRun(profile, dataset, args.out, torch.device("cpu"))
        summary, times = run_steps(run, steps)
    except NasauditError as exc:
        print(f"nasaudit.smoke: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out / "summary.json", summary)
    if {"grid", "analyses"} & set(steps):  # the results page a reviewer opens, once there are results
        from nasaudit.report.html import write_report

        page = write_report(profile, run.out / "grid", out=run.out / "report", table2=run.out / "table2")
        logger.info(f"[smoke] results page (every table against the paper, plots, provenance) -> {page}")
    if args.bless:
        kept = {k: v for k, v in expected.items() if k.split(".", 1)[0] not in steps}
        write_json(args.expected, {**kept, **{k: expectation(v) for k, v in summary.items()}})
        logger.info(f"[smoke] wrote {args.expected}")
        return 0
    wanted = {k: v for k, v in expected.items() if k.split(".", 1)[0] in steps}
    problems = compare(summary, wanted)
    print(render_summary(run, times, summary, problems))
    for line in problems:
        print(f"[smoke] MISMATCH {line}")
    verdict = "FAILED" if problems else "OK"
    print(f"[smoke] {verdict}: {len(summary) - len(problems)} of {len(summary)} outputs as expected")
    return 1 if problems else 0


def _read_expected(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NasauditError(f"cannot read expected outputs {path} ({exc}); pass --expected FILE") from None


#: The CPU settings ``--portability`` compares: PyTorch's plain kernels ("default") and the best ones the
#: CPU has (ATEN_CPU_CAPABILITY unset), each on one and two threads.
SETTINGS: dict[str, dict[str, str]] = {
    "best-1thread": {"OMP_NUM_THREADS": "1"},
    "best-2threads": {"OMP_NUM_THREADS": "2"},
    "default-1thread": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
    "default-2threads": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"},
}


def portability(args: argparse.Namespace, steps: list[str], expected: dict[str, Any]) -> int:
    """Run the smoke test once per setting (each in OUT/SETTING, its log in OUT/SETTING.log), then
    report each run's verdict and every output that differs between them."""
    _fresh(args.out)
    runs: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, str] = {}
    for name, settings in SETTINGS.items():
        unset = ("ATEN_CPU_CAPABILITY", "NASAUDIT_THREADS")  # each setting decides kernels and threads
        env = {k: v for k, v in os.environ.items() if k not in unset} | settings
        folder, log = args.out / name, args.out / f"{name}.log"
        command = [sys.executable, "-m", "nasaudit.smoke", "--out", str(folder), "--expected",
                   str(args.expected), "--profile", args.profile, "--steps", ",".join(steps),
                   "--threads", settings["OMP_NUM_THREADS"]]  # fmt: skip
        command += [part for override in args.set or () for part in ("--set", override)]
        command += verbosity.flags(verbosity.level_of(args))
        logger.info(f"[smoke] portability: {name} ({' '.join(f'{k}={v}' for k, v in settings.items())}) ...")
        start = time.perf_counter()
        with log.open("w") as stream:
            code = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
        done = (folder / "summary.json").is_file()
        runs[name] = json.loads((folder / "summary.json").read_text()) if done else {}
        kernels = json.loads((folder / "machine.json").read_text())["cpu_capability"] if done else "?"
        verdicts[name] = f"{'OK' if code == 0 else f'FAILED (exit {code}, see {log})'}, CPU kernels {kernels}"
        logger.info(f"[smoke] portability: {name}: {time.perf_counter() - start:.0f}s, {verdicts[name]}")
    wanted = {k: v for k, v in expected.items() if k.split(".", 1)[0] in steps}
    rows = differences(runs, wanted)
    print(render_differences(rows, verdicts, len(set().union(*runs.values()))))
    bad = [r for r in rows if r["kind"] == "exact" or not r["all_pass"]]
    ok = all(v.startswith("OK") for v in verdicts.values()) and not bad
    print(f"[smoke] portability {'OK' if ok else 'FAILED'}: {len(rows)} outputs differ between settings, "
          f"{len(bad)} of them exact or failing their check")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
