"""Poisons an analysis needs, made once into its output folder and reused (validated) on a rerun."""

from __future__ import annotations

from pathlib import Path

from nasaudit.attacks import AttackContext, run_attack
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import load_poison, npz_path, save_poison
from nasaudit.errors import NasauditError


def ensure_poison(
    attack: str, dataset: ImageDataset, budget: float, seed: int, context: AttackContext, path: Path
) -> Path:
    """``path``'s poison if it exists and is this attack at this budget on this data; else make it."""
    if npz_path(path).is_file() and Path(path).with_suffix(".json").is_file():
        poison = load_poison(path, dataset)
        if poison.attack != attack or len(poison.indices) != round(poison.n_train * budget):
            raise NasauditError(
                f"{npz_path(path)} holds {poison.attack} at p = {poison.budget:g}, not {attack} at "
                f"p = {budget:g}; remove it or choose another output folder"
            )
        return npz_path(path)
    return save_poison(run_attack(attack, dataset, budget, seed, context), path)
