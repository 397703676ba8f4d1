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

from nasaudit.config import Profile, load_profile
from nasaudit.data.datasets import ImageDataset, load_dataset
from nasaudit.io import sha256_arrays, write_json

DATASET = "digits"
SEED = 0


@dataclass
class SmokeRun:
    profile: Profile
    dataset: ImageDataset
    out: Path
    device: torch.device
    state: dict[str, Any]  # what earlier steps produced for later ones (paths, genotypes)


def step_data(run: SmokeRun) -> dict[str, Any]:
    ds = run.dataset
    return {
        "n_train": len(ds.train),
        "n_test": len(ds.test),
        "classes": ds.num_classes,
        "train_sha256": ds.train.sha256,
    }


def step_poison(run: SmokeRun) -> dict[str, Any]:
    from nasaudit.attacks import ATTACKS, AttackContext, run_attack
    from nasaudit.data.poison import apply_poison, load_poison, save_poison

    context = AttackContext(profile=run.profile, device=run.device, cache_dir=run.out / "cache")
    budget = run.profile.experiment.budgets[0]
    outputs: dict[str, Any] = {}
    for name in ATTACKS:
        path = save_poison(run_attack(name, run.dataset, budget, SEED, context), run.out / "poisons" / name)
        poison = load_poison(path, run.dataset)
        poisoned = apply_poison(poison, run.dataset).train
        changed = (poisoned.labels != run.dataset.train.labels) | (
            poisoned.images != run.dataset.train.images
        ).any(axis=(1, 2, 3))
        outputs[f"{name}.n_poisoned"] = len(poison.indices)
        outputs[f"{name}.n_changed"] = int(changed.sum())
        outputs[f"{name}.sha256"] = sha256_arrays(poisoned.images, poisoned.labels)
        run.state[f"poison.{name}"] = path
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
    from nasaudit.models import MODELS
    from nasaudit.train import train_model

    def build() -> torch.nn.Module:
        return MODELS.get("darts")(genotype, run.dataset.num_classes, run.profile)

    cfg = run.profile.train
    result = train_model(
        build, run.dataset, cfg, seed=SEED, device=run.device, out_dir=run.out / "train" / name
    )
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


STEPS: dict[str, Callable[[SmokeRun], dict[str, Any]]] = {
    "data": step_data,
    "poison": step_poison,
    "stream": step_stream,
    "retrain": step_retrain,
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
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--bless", action="store_true", help="write this run's outputs as the expected ones")
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    run = SmokeRun(load_profile(args.profile), load_dataset(DATASET), args.out, torch.device("cpu"), {})
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
