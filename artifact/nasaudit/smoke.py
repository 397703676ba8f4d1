"""The kick-the-tires run: every capability that exists, end to end, on the embedded digits data, CPU.

Each step returns a flat dict of outputs; all of them are written to ``OUT/summary.json`` and compared
with ``expected_results/smoke/summary.json``, where an entry is either a plain value (must match
exactly: counts, hashes) or ``{"value": v, "tol": t}`` (floats that may move in the last digits
across machines). A capability joins the smoke test by adding one step function to ``STEPS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasaudit import threads
from nasaudit.config import Profile, load_profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_arrays, write_json
from nasaudit.options import add_profile

DATASET = "digits"
SEED = 0


@dataclass
class SmokeRun:
    profile: Profile
    dataset: (
        ImageDataset  # the embedded digits cut to the profile's ``[grid] train_subset``: every step's data
    )
    out: Path
    device: torch.device
    state: dict[str, Any]  # what earlier steps produced for later ones (paths, genotypes)


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


# Poisons crafted through a trained network move with the machine's floating point, so they are
# summarised with tolerances instead of hashes.
LEARNED_ATTACKS = ("clf", "gc", "nas_gc")


def step_poison(run: SmokeRun) -> dict[str, Any]:
    """Every attack at the first budget; GC's victim is the smoke-trained P-DARTS network (shared with
    the retrain step, which then finds the job finished), CLF trains its surrogate into the cache."""
    from nasaudit.attacks import ATTACKS, AttackContext, make_poison_file
    from nasaudit.data.poison import apply_poison, load_poison
    from nasaudit.spaces.darts import load
    from nasaudit.victim import victim_from_train_job

    _retrain(run, "pdarts_reference", load("pdarts"))
    net = run.profile.darts_net
    victim = victim_from_train_job(run.out / "train" / "pdarts_reference", net.channels, net.layers,
                                   run.out / "victim.pt")  # fmt: skip
    context = AttackContext(run.profile, run.device, run.out / "cache", victim, progress=False)
    budget = run.profile.experiment.budgets[0]
    outputs: dict[str, Any] = {}
    for name in ATTACKS:
        path, _ = make_poison_file(name, run.dataset, budget, SEED, context, run.out / "poisons" / name)
        poison = load_poison(path, run.dataset)
        poisoned = apply_poison(poison, run.dataset).train
        changed = (poisoned.labels != run.dataset.train.labels) | (
            poisoned.images != run.dataset.train.images
        ).any(axis=(1, 2, 3))
        outputs[f"{name}.n_poisoned"] = len(poison.indices)
        run.state[f"poison.{name}"] = path
        if name not in LEARNED_ATTACKS:
            outputs[f"{name}.n_changed"] = int(changed.sum())
            outputs[f"{name}.sha256"] = sha256_arrays(poisoned.images, poisoned.labels)
            continue
        outputs[f"{name}.n_changed"] = {"value": int(changed.sum()), "tol": round(0.2 * len(poison.indices))}
        if poison.images is not None:
            diff = poison.images.astype(int) - run.dataset.train.images[poison.indices].astype(int)
            outputs[f"{name}.linf_255"] = int(np.abs(diff).max())
            ratio = poison.params["best_loss"] / poison.params["initial_loss"]
            outputs[f"{name}.loss_ratio"] = {"value": round(ratio, 4), "tol": 0.5}
        else:
            accuracy = poison.params["surrogate_test_accuracy"]
            outputs[f"{name}.surrogate_test_accuracy"] = {"value": round(accuracy, 2), "tol": 15.0}
    return outputs


def step_stream(run: SmokeRun) -> dict[str, Any]:
    from nasaudit.data.device import DeviceData

    data = DeviceData(run.dataset.train, run.dataset, run.device)
    cfg = run.profile.train
    batches = list(data.batches(cfg.batch_size, seed=SEED, augment=cfg.augment))
    first = batches[0][0]
    return {
        "batches": len(batches),
        "samples": sum(len(y) for _, y in batches),
        "first_batch_mean": {"value": round(float(first.mean()), 6), "tol": 1e-4},
        "first_batch_labels": [int(v) for v in batches[0][1][:8]],
    }


def _retrain(run: SmokeRun, name: str, genotype: Any) -> dict[str, Any]:
    from nasaudit.models import retrain

    # as `nasaudit train` retrains: the result records the architecture, so the job can become a GC victim
    result = retrain("darts", genotype, run.dataset, run.profile, seed=SEED, device=run.device,
                     out_dir=run.out / "train" / name, progress=False)  # fmt: skip
    return {
        f"{name}.params": result["params"],
        f"{name}.epochs": len(result["log"]),
        f"{name}.test_accuracy": {"value": round(result["test_accuracy"], 2), "tol": 10.0},
    }


def step_retrain(run: SmokeRun) -> dict[str, Any]:
    """A random architecture (the baseline's sampler, through the search path) and the P-DARTS one."""
    from nasaudit.nas import SearchContext, run_search
    from nasaudit.spaces.darts import Genotype, load

    context = SearchContext(run.profile, run.device, run.out / "search" / "random", progress=False)
    record = run_search("random", run.dataset, SEED, context, {"dataset": run.dataset.name, "poison": None})
    outputs = _retrain(run, "random", Genotype.from_json(record["architecture"]))
    outputs.update(_retrain(run, "pdarts_reference", load("pdarts")))
    return outputs


def step_robot(run: SmokeRun) -> dict[str, Any]:
    """A tiny RoBoT search (small pool, few 1-epoch queries) through the search path; its pick retrained."""
    from nasaudit.nas import SearchContext, run_search
    from nasaudit.spaces.darts import Genotype

    context = SearchContext(run.profile, run.device, run.out / "search" / "robot", progress=False)
    record = run_search("robot", run.dataset, SEED, context, {"dataset": run.dataset.name, "poison": None})
    log = json.loads((context.out_dir / "robot_result.json").read_text())
    with np.load(Path(log["pool"]["folder"]) / "scores.npz", allow_pickle=False) as z:
        means = np.nanmean(z["scores"], axis=0)
    outputs: dict[str, Any] = {
        "pool_unique": log["pool"]["n_unique"],
        "queried": log["queried"],
        "best_query_accuracy": {"value": round(log["accuracy"], 2), "tol": 10.0},
    }
    for name, mean in zip(run.profile.robot.proxies, means.tolist(), strict=True):
        outputs[f"pool_mean.{name}"] = {"value": round(mean, 6), "tol": 1e-3 * max(1.0, abs(mean))}
    outputs.update(_retrain(run, "pick", Genotype.from_json(record["architecture"])))
    return outputs


def step_tenas(run: SmokeRun) -> dict[str, Any]:
    """A tiny TE-NAS search (2 ops per edge: one op round, then the edge stage); its genotype retrained."""
    import hashlib

    from nasaudit.nas import SearchContext, run_search
    from nasaudit.spaces.darts import Genotype

    context = SearchContext(run.profile, run.device, run.out / "search" / "tenas", progress=False)
    record = run_search("tenas", run.dataset, SEED, context, {"dataset": run.dataset.name, "poison": None})
    logs = [json.loads(p.read_text()) for p in sorted(context.out_dir.glob("tenas_round_*.json"))]
    genotype = json.dumps(record["architecture"], sort_keys=True).encode()
    first = [entry["mean_delta_kappa"] for entry in logs[0]["scores"]]
    regions = [entry["mean_delta_regions"] for entry in logs[0]["scores"]]
    outputs: dict[str, Any] = {
        "rounds": len(logs),
        "candidates_scored": sum(len(log["scores"]) for log in logs),
        "genotype_sha256": hashlib.sha256(genotype).hexdigest(),
        "round0_mean_delta_kappa": {"value": round(float(np.mean(first)), 6), "tol": 1e-3},
        "round0_mean_delta_regions": {"value": round(float(np.mean(regions)), 6), "tol": 1e-3},
    }
    outputs.update(_retrain(run, "tenas", Genotype.from_json(record["architecture"])))
    return outputs


def step_pdarts(run: SmokeRun) -> dict[str, Any]:
    """A tiny P-DARTS search (3 stages, 8 → 5 → 3 → 1 ops); its genotype retrained."""
    import hashlib

    from nasaudit.nas import SearchContext, run_search
    from nasaudit.spaces.darts import Genotype

    context = SearchContext(run.profile, run.device, run.out / "search" / "pdarts", progress=False)
    provenance = {"dataset": run.dataset.name, "poison": None, "train_sha256": run.dataset.train.sha256}
    record = run_search("pdarts", run.dataset, SEED, context, provenance)
    log = json.loads((context.out_dir / "pdarts_log.json").read_text())
    last = log["epochs"][-1]
    genotype = Genotype.from_json(record["architecture"])
    encoded = json.dumps(genotype.to_json(), sort_keys=True).encode()
    outputs: dict[str, Any] = {
        "epochs": len(log["epochs"]),
        "ops_per_edge": [len(s["candidates"]["normal"][0]) for s in log["stages"]],
        "skips_normal": [op for op, _ in genotype.normal].count("skip_connect"),
        "genotype_sha256": hashlib.sha256(encoded).hexdigest(),
        "last_arch_loss": {"value": round(last["arch_loss"], 4), "tol": 0.05},
        "last_val_acc": {"value": round(last["val_acc"], 2), "tol": 10.0},
        "victim": (context.out_dir / "supernet_victim.pt").is_file(),
    }
    outputs.update(_retrain(run, "pdarts", genotype))
    return outputs


def step_analyses(run: SmokeRun) -> dict[str, Any]:
    """Table 2 (metric sensitivity, the profile's architectures and attacks) and relabelling of RLF data."""
    import math

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
    for row in table.itertuples():  # exactly 0 where a metric cannot see the difference (e.g. labels)
        mean = round(float(row.mean), 2) if math.isfinite(row.mean) else None
        exact = mean is None or row.mean == 0.0
        outputs[f"table2.{row.metric}.{row.attack}"] = (
            mean if exact else {"value": mean, "tol": round(1.0 + 0.25 * abs(mean), 2)}
        )
    poisoned = apply_poison(load_poison(poisons["rlf"], run.dataset), run.dataset)
    context = DefenseContext(run.profile, run.device, run.out / "cache", progress=False)
    defended = run_defense("relabel", poisoned, SEED, context)
    outputs["relabel.n_kept"] = len(defended.keep)
    outputs["relabel.clusters"] = len(np.unique(defended.labels))
    agreement = adjusted_rand_score(run.dataset.train.labels, defended.labels)
    outputs["relabel.rand_index_vs_clean"] = {"value": round(float(agreement), 3), "tol": 0.1}
    return outputs


# The grid experiments the smoke runs, in one results folder so later tables reuse Table 1's jobs. Table 3
# searches on a second dataset, which the smoke cannot download; its plumbing is tested in test_grid.py.
SMOKE_TABLES = ("table1", "table4", "table6")


def step_grid(run: SmokeRun) -> dict[str, Any]:
    """The profile's Table 1, 4 and 6 grids on the local runner (CPU workers), their tables and means.

    The cells' means land in the summary, so expected_results/smoke/summary.json is also the expected
    table; the significance count may move by one mark across machines (2 trials per cell).
    """
    from nasaudit.grid import Layout, RunSpec, build_grid, load_experiment, run_grid
    from nasaudit.report.experiment import experiment_table
    from nasaudit.report.tables import to_markdown, write_table

    results = run.out / "grid"
    outputs: dict[str, Any] = {}
    for name in SMOKE_TABLES:
        experiment = load_experiment(name, run.profile)
        grid = build_grid(experiment, Layout.of(results, run.profile))
        report = run_grid(grid, RunSpec(run.profile, results, None, "cpu"), log=lambda _: None)
        outputs[f"{name}.tasks"] = len(grid.deps)
        outputs[f"{name}.tasks_unfinished"] = len(report.failed) + len(report.blocked)
        for task, error in report.failed.items():
            print(f"[smoke] grid task {task.id} failed: {error}")
        if not report.ok:
            continue
        table = experiment_table(experiment, grid.layout).table
        write_table(name, table, results / "tables")
        print(to_markdown(table), end="")
        outputs[f"{name}.cells"] = len(table)
        outputs[f"{name}.cells_significant"] = {"value": int(table["significant"].sum()), "tol": 1}
        for row in table.to_dict("records"):
            defense = [row["defense"]] if "defense" in row else []
            cell = ".".join([row["algorithm"], *defense, row["attack"]])
            outputs[f"{name}.{cell}.p{row['budget']:g}"] = {"value": round(row["mean"], 2), "tol": 10.0}
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
    plan, space = channel_plan(run.profile.mbv3.width_mult), run.profile.mbv3
    largest = extreme_arch(space.resolutions, largest=True)
    return {
        "largest_flops": FlopsCounter(plan, run.dataset.num_classes)(largest),
        "largest_params": count_params(largest, plan, run.dataset.num_classes),
        "supernet_epochs": len(json.loads((Path(supernet["folder"]) / "supernet" / "log.json").read_text())),
        "evaluated": len(archive),
        "best_val_accuracy": {"value": round(max(e["val_accuracy"] for e in archive), 2), "tol": 15.0},
        "pick_mflops": {"value": round(pick["mflops"], 3), "tol": 5.0},
    }


STEPS: dict[str, Callable[[SmokeRun], dict[str, Any]]] = {
    "data": step_data,
    "poison": step_poison,
    "stream": step_stream,
    "retrain": step_retrain,
    "robot": step_robot,
    "tenas": step_tenas,
    "pdarts": step_pdarts,
    "analyses": step_analyses,
    "grid": step_grid,
    "nsganetv2": step_nsganetv2,
}


def compare(ours: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Every mismatch as one line; an empty list means the run reproduced the expected outputs."""
    problems = []
    for key in sorted(set(ours) | set(expected)):
        if key not in expected:
            problems.append(f"{key}: produced {ours[key]!r} but not in the expected results")
        elif key not in ours:
            problems.append(f"{key}: expected {expected[key]!r} but not produced")
        else:
            want, got = expected[key], ours[key]
            if isinstance(want, dict) and "tol" in want:
                ok = isinstance(got, dict) and abs(got["value"] - want["value"]) <= want["tol"]
            else:
                ok = got == want
            if not ok:
                problems.append(f"{key}: expected {want!r}, got {got!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/smoke"))
    parser.add_argument("--expected", type=Path, default=Path("expected_results/smoke/summary.json"))
    add_profile(parser, default="smoke")
    parser.add_argument("--bless", action="store_true", help="write this run's outputs as the expected ones")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job (default: automatic)")
    args = parser.parse_args(argv)
    try:
        threads.configure(requested=args.threads)
    except NasauditError as exc:
        parser.error(str(exc))

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    profile = load_profile(args.profile, args.set)
    run = SmokeRun(
        profile, load_dataset(DATASET).first(profile.grid.train_subset), args.out, torch.device("cpu"), {}
    )
    summary: dict[str, Any] = {}
    for name, step in STEPS.items():
        start = time.perf_counter()
        outputs = step(run)
        print(
            f"[smoke] {name:<12} {time.perf_counter() - start:6.1f}s  "
            + ", ".join(f"{k}={v}" for k, v in outputs.items())
        )
        summary.update({f"{name}.{k}": v for k, v in outputs.items()})
    write_json(args.out / "summary.json", summary)
    from nasaudit.report.html import write_report  # the results page a reviewer opens

    page = write_report(profile, run.out / "grid", out=run.out / "report", table2=run.out / "table2")
    print(f"[smoke] results page (every table against the paper, plots, provenance) -> {page}")
    if args.bless:
        write_json(args.expected, summary)
        print(f"[smoke] wrote {args.expected}")
        return 0
    problems = compare(summary, json.loads(args.expected.read_text()))
    for line in problems:
        print(f"[smoke] MISMATCH {line}")
    print(
        f"[smoke] {'FAILED' if problems else 'OK'}: "
        f"{len(summary) - len(problems)} of {len(summary)} outputs as expected"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
