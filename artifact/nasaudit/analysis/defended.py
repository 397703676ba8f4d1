"""Table 4's inputs (paper §6.1): one defended dataset per (defense, attack) cell of the profile.

For every ``"defense:attack"`` in ``[defenses] conditions`` the attack's poison (at the profile's
budget) is made once into ``OUT/poisons/`` and the defense applied to the poisoned training split,
written to ``OUT/defended/DEFENSE-ATTACK.npz`` with its manifest. A finished file is validated and
kept on a rerun. ``OUT/defended.json`` lists the cells with their files, which the search takes as
``nasaudit search --poison POISON --defense DEFENDED``; the searches, retrains and the Table 4
statistics (``report.defenses.defense_significance``) are the grid's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nasaudit.analysis.poisons import ensure_poison
from nasaudit.attacks import ATTACKS, AttackContext
from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import apply_poison, load_poison
from nasaudit.defenses import DEFENSES, DefenseContext, load_defended, run_defense, save_defended
from nasaudit.errors import NasauditError
from nasaudit.io import environment_manifest, sha256_file, write_json

INDEX = "defended.json"


def parse_conditions(conditions: list[str]) -> list[tuple[str, str]]:
    """``"defense:attack"`` strings as (defense, attack), each name checked against its registry."""
    pairs = []
    for item in conditions:
        defense, sep, attack = item.partition(":")
        if not sep:
            raise NasauditError(f"[defenses] condition {item!r} must be written 'defense:attack'")
        DEFENSES.get(defense)
        ATTACKS.get(attack)
        pairs.append((defense, attack))
    return pairs


def make_defended_datasets(
    profile: Profile,
    dataset: ImageDataset,
    *,
    seed: int,
    device: torch.device,
    out_dir: Path,
    cache_dir: Path,
    victim: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Make (or reuse) every condition's poison and defended dataset; returns and writes the index."""
    cfg = profile.defenses
    out_dir = Path(out_dir)
    attack_context = AttackContext(profile=profile, device=device, cache_dir=cache_dir, victim=victim)
    cells = []
    for defense, attack in parse_conditions(cfg.conditions):
        poison_path = ensure_poison(
            attack, dataset, cfg.budget, seed, attack_context, out_dir / "poisons" / attack
        )
        poison = load_poison(poison_path, dataset)
        poisoned = apply_poison(poison, dataset)
        path = (out_dir / "defended" / f"{defense}-{attack}").with_suffix(".npz")
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            source = {
                "poison": str(poison_path),
                "poison_sha256": sha256_file(poison_path),
                "attack": attack,
                "budget": poison.budget,
            }
            context = DefenseContext(profile, device, cache_dir, source=source, progress=progress)
            save_defended(run_defense(defense, poisoned, seed, context), path)
        defended = load_defended(path, poisoned)
        cells.append(
            {
                "defense": defense,
                "attack": attack,
                "budget": poison.budget,
                "poison": str(poison_path),
                "defended": str(path),
                "n_train": len(defended.keep),
                "kind": defended.kind,
            }
        )
    write_json(
        out_dir / INDEX,
        {
            "dataset": dataset.name,
            "seed": seed,
            "profile": profile.name,
            "cells": cells,
            "environment": environment_manifest(str(device)),
        },
    )
    return cells
