"""Poisoned-dataset files: which training samples an attack replaced, and with what.

A poison is stored as an ``npzfile``: ``NAME.npz`` (``indices`` plus ``labels`` or ``images``) and a
JSON manifest ``NAME.json`` holding the attack, its parameters, the seed, the sha256 of the npz and of
the clean training split it applies to. Applying it yields a training
set of the same size with those samples replaced; every inconsistency is caught on load with one line
naming the file, because a silently mis-applied poison would invalidate a whole experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit import npzfile
from nasaudit.data.datasets import IMAGE_SHAPE, ImageDataset, Split
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_file
from nasaudit.npzfile import NpzFormat, manifest_path, npz_path, write_npzfile

FORMAT = NpzFormat(
    tag="nasaudit-poison/1",
    noun="poison",
    command="nasaudit poison",
    manifest_types={"attack": str, "params": dict, "seed": int, "dataset": str, "n_train": int, "kind": str,
                    "clean_sha256": str, "npz_sha256": str},
    arrays=("indices",),
)  # fmt: skip


@dataclass(frozen=True)
class Poison:
    attack: str
    dataset: str
    clean_sha256: str  # of the clean training split (images + labels) the indices refer to
    n_train: int
    seed: int
    indices: np.ndarray  # int64, distinct, sorted
    labels: np.ndarray | None = None  # int64 replacement labels, or
    images: np.ndarray | None = None  # uint8 K×32×32×3 replacement images
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> float:
        return len(self.indices) / self.n_train

    @property
    def kind(self) -> str:
        return "labels" if self.labels is not None else "images"


def make_poison(
    attack: str,
    dataset: ImageDataset,
    seed: int,
    indices: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
) -> Poison:
    """Build a poison for ``dataset``'s training split, sorted by index and validated."""
    order = np.argsort(indices, kind="stable")
    poison = Poison(
        attack=attack,
        dataset=dataset.name,
        clean_sha256=dataset.train.sha256,
        n_train=len(dataset.train),
        seed=seed,
        indices=np.asarray(indices, dtype=np.int64)[order],
        labels=None if labels is None else np.asarray(labels, dtype=np.int64)[order],
        images=None if images is None else np.asarray(images)[order],
        params=dict(params or {}),
    )
    _validate(poison, dataset.num_classes, "poison")
    return poison


def _validate(p: Poison, num_classes: int, where: str) -> None:
    def fail(problem: str) -> None:
        raise NasauditError(f"{where}: {problem}; re-create it with `nasaudit poison`")

    if (p.labels is None) == (p.images is None):
        fail("it must replace either labels or images (exactly one)")
    if p.indices.ndim != 1 or p.indices.dtype != np.int64:
        fail(f"indices must be a 1-D int64 array, got {p.indices.dtype} {p.indices.shape}")
    if len(p.indices) and (p.indices.min() < 0 or p.indices.max() >= p.n_train):
        fail(f"an index is outside 0..{p.n_train - 1}")
    if len(np.unique(p.indices)) != len(p.indices):
        fail("an index appears twice")
    if p.labels is not None:
        if p.labels.dtype != np.int64:
            fail(f"labels must be int64 class indices, got {p.labels.dtype}")
        if p.labels.shape != p.indices.shape:
            fail(f"{len(p.labels)} labels for {len(p.indices)} indices")
        if len(p.labels) and (p.labels.min() < 0 or p.labels.max() >= num_classes):
            fail(f"a label is outside 0..{num_classes - 1}")
    if p.images is not None:
        expected = (len(p.indices), *IMAGE_SHAPE)
        if p.images.dtype != np.uint8 or p.images.shape != expected:
            fail(f"images must be uint8 {expected}, got {p.images.dtype} {p.images.shape}")


def save_poison(poison: Poison, path: Path, identity: dict[str, Any] | None = None) -> Path:
    """Write NAME.npz and its manifest NAME.json (``npzfile``).

    ``identity`` (``attacks.poison_identity``) records which run made it, so a rerun can reuse it.
    """
    arrays = {"indices": poison.indices}
    arrays[poison.kind] = poison.labels if poison.labels is not None else poison.images  # type: ignore[assignment]
    fields = {
        "attack": poison.attack,
        "params": poison.params,
        "seed": poison.seed,
        "dataset": poison.dataset,
        "n_train": poison.n_train,
        "n_poisoned": len(poison.indices),
        "budget": poison.budget,
        "kind": poison.kind,
        "clean_sha256": poison.clean_sha256,
    }
    return write_npzfile(FORMAT, path, arrays, fields, identity)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the poison at ``path`` (either NAME.npz or NAME.json), checked for completeness."""
    manifest = npzfile.read_manifest(FORMAT, path)
    if manifest["kind"] not in ("labels", "images"):
        raise NasauditError(f"{manifest_path(path)}: kind must be labels or images; {FORMAT.fix}")
    return manifest


def load_poison(path: Path, dataset: ImageDataset) -> Poison:
    """Read and check a poison against the clean dataset it is about to be applied to."""
    npz = npz_path(path)
    manifest = read_manifest(path)
    arrays = npzfile.read_arrays(FORMAT, path, manifest)
    if manifest["dataset"] != dataset.name:
        raise NasauditError(f"{npz}: poison made for dataset {manifest['dataset']!r}, not {dataset.name!r}")
    if manifest["clean_sha256"] != dataset.train.sha256 or manifest["n_train"] != len(dataset.train):
        raise NasauditError(
            f"{npz}: made for another copy of {dataset.name!r} (clean training-set hash differs); "
            f"re-create the poison against this copy"
        )
    if manifest["kind"] not in arrays:
        raise NasauditError(f"{npz}: missing the {manifest['kind']!r} array; {FORMAT.fix}")
    poison = Poison(
        attack=manifest["attack"],
        dataset=manifest["dataset"],
        clean_sha256=manifest["clean_sha256"],
        n_train=manifest["n_train"],
        seed=manifest["seed"],
        indices=arrays["indices"],
        labels=arrays.get("labels"),
        images=arrays.get("images"),
        params=manifest["params"],
    )
    _validate(poison, dataset.num_classes, str(npz))
    return poison


def poisoned_data(
    dataset: ImageDataset, path: Path | None
) -> tuple[ImageDataset, dict[str, Any], np.ndarray | None]:
    """``dataset`` with the poison at ``path`` applied (None: clean), its provenance (what a search or a
    defense records of its data, and what ``runs.data_identity`` reads), and the training samples the
    poison replaced (None: clean): known to the caller of a defense, never shown to it, so that the
    defended set's manifest can record what became of them. The file is read once, here."""
    provenance: dict[str, Any] = {
        "dataset": dataset.name,
        "poison": None,
        "clean_sha256": dataset.train.sha256,
    }
    if path is None:
        return dataset, {**provenance, "train_sha256": dataset.train.sha256}, None
    poison = load_poison(path, dataset)
    poisoned = apply_poison(poison, dataset)
    provenance.update(
        {
            "poison": str(npz_path(path)),
            "poison_sha256": sha256_file(npz_path(path)),
            "attack": poison.attack,
            "budget": poison.budget,
            "train_sha256": poisoned.train.sha256,
        }
    )
    return poisoned, provenance, poison.indices


def apply_poison(poison: Poison, dataset: ImageDataset) -> ImageDataset:
    """The dataset whose training split has the poisoned samples replaced (same size, same order)."""
    images, labels = dataset.train.images, dataset.train.labels
    if poison.images is not None:
        images = images.copy()
        images[poison.indices] = poison.images
    if poison.labels is not None:
        labels = labels.copy()
        labels[poison.indices] = poison.labels
    return dataset.with_train(Split(images, labels))
