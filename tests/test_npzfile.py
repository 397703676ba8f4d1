"""Poisons and defended datasets are one artifact format (``npzfile``): the same files, the same checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nasaudit.data.poison import load_poison, make_poison, save_poison
from nasaudit.defenses.files import load_defended, make_defended, save_defended
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_file, write_npz


def _poison(dataset, folder: Path) -> tuple[Path, Callable]:
    poison = make_poison("rlf", dataset, 3, np.array([7, 2, 5]), labels=np.array([0, 1, 2]))
    return save_poison(poison, folder / "p", identity={"job": "poison"}), load_poison


def _defended(dataset, folder: Path) -> tuple[Path, Callable]:
    defended = make_defended("test", dataset, 0, np.arange(10), labels=np.zeros(10, dtype=np.int64))
    return save_defended(defended, folder / "d", identity={"job": "defend"}), load_defended


KINDS = {"poison": _poison, "defended-dataset": _defended}

# What each file holds on disk: files written before the formats shared one module load unchanged.
MANIFEST_KEYS = {
    "poison": {"format", "attack", "params", "seed", "dataset", "n_train", "n_poisoned", "budget", "kind",
               "clean_sha256", "npz_sha256", "identity", "environment"},
    "defended-dataset": {"format", "defense", "params", "seed", "dataset", "n_input", "n_kept", "kind",
                         "input_sha256", "source", "poison_outcome", "npz_sha256", "identity", "environment"},
}  # fmt: skip
FORMATS = {"poison": "nasaudit-poison/1", "defended-dataset": "nasaudit-defense/1"}
ARRAYS = {"poison": {"indices", "labels"}, "defended-dataset": {"keep", "labels"}}


def _refit(npz: Path) -> None:
    """Make the manifest's hash match the (replaced) npz, so the check under test is the one reached."""
    manifest = json.loads(npz.with_suffix(".json").read_text())
    manifest["npz_sha256"] = sha256_file(npz)
    npz.with_suffix(".json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", KINDS)
def test_the_files_on_disk(tmp_path, tiny_dataset, kind) -> None:
    npz, load = KINDS[kind](tiny_dataset, tmp_path)
    manifest = json.loads(npz.with_suffix(".json").read_text())
    assert set(manifest) == MANIFEST_KEYS[kind] and manifest["format"] == FORMATS[kind]
    assert manifest["npz_sha256"] == sha256_file(npz) and manifest["identity"]["job"] in ("poison", "defend")
    with np.load(npz, allow_pickle=False) as z:
        assert set(z.files) == ARRAYS[kind]
    load(npz, tiny_dataset)  # and it loads


@pytest.mark.parametrize("kind", KINDS)
def test_a_bare_npy_behind_a_matching_manifest_is_one_line(tmp_path, tiny_dataset, kind) -> None:
    npz, load = KINDS[kind](tiny_dataset, tmp_path)
    with npz.open("wb") as f:
        np.save(f, np.arange(3))
    _refit(npz)
    with pytest.raises(NasauditError, match=rf"not a readable \.npz {kind} file \(a single \.npy array"):
        load(npz, tiny_dataset)


@pytest.mark.parametrize("kind", KINDS)
def test_every_check_names_the_file_and_the_fix(tmp_path, tiny_dataset, kind) -> None:
    npz, load = KINDS[kind](tiny_dataset, tmp_path)
    command = "nasaudit poison" if kind == "poison" else "nasaudit defend"
    write_npz(npz, {"other": np.arange(3)})
    with pytest.raises(NasauditError, match=rf"sha256 differs from its manifest {npz.stem}.json"):
        load(npz, tiny_dataset)
    _refit(npz)
    missing = rf"{npz}: missing the '\w+' array; re-create it with `{command}`"
    with pytest.raises(NasauditError, match=missing):
        load(npz, tiny_dataset)
    npz.with_suffix(".json").write_text('{"format": "other"}')
    with pytest.raises(NasauditError, match=rf"not a complete nasaudit {kind} manifest"):
        load(npz, tiny_dataset)
    npz.unlink()
    with pytest.raises(NasauditError, match=rf"{npz}: no such {kind} file; create it with `{command}`"):
        load(npz, tiny_dataset)
