"""Defended-dataset files: what a defense kept of a (poisoned) training split, and with what.

A defense sees a training split (usually a poisoned one) and returns another: a subset of its samples
(sanitisation), or every sample with replaced labels (relabelling) or images (denoising). One format
covers all three: ``NAME.npz`` holds ``keep`` (sorted distinct int64 indices into the input split)
and optionally ``labels`` and/or ``images`` replacing the kept samples' values, in ``keep`` order
(uint8 levels, or float32 in [0, 1] for a denoising stored unquantised, as the authors stored theirs);
``NAME.json`` is the manifest (defense, parameters, seed, the sha256 of the npz and of the input split,
which poison made that split and, when the caller knew the poisoned samples (``run_defense``),
``poison_outcome``: per class of the input split, how many of the poisoned and of the clean samples
were dropped and kept, so a reader sees whether the defense found the poison; the defense itself never
sees them). Applying it yields a training split of ``len(keep)`` samples.
Like poison files, every inconsistency is caught on load with one line naming the file: a defended
set applied to other data than it was computed on would silently invalidate a Table 4 cell.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.data.datasets import IMAGE_SHAPE, ImageDataset, Split
from nasaudit.errors import NasauditError
from nasaudit.io import check_types, environment_manifest, sha256_file, write_json, write_npz
from nasaudit.runs import IDENTITY

FORMAT = "nasaudit-defense/1"
_MANIFEST_TYPES = {"defense": str, "params": dict, "seed": int, "dataset": str, "n_input": int,
                   "input_sha256": str, "npz_sha256": str, "source": dict}  # fmt: skip
_MANIFEST_KEYS = set(_MANIFEST_TYPES)


@dataclass(frozen=True)
class DefendedData:
    defense: str
    dataset: str
    input_sha256: str  # of the training split (images + labels) the defense was computed on
    n_input: int
    seed: int
    keep: np.ndarray  # int64, distinct, sorted indices into the input split
    labels: np.ndarray | None = None  # int64 replacement labels of the kept samples, and/or
    images: np.ndarray | None = None  # K×32×32×3 replacement images: uint8, or float32 in [0, 1]
    params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the poison behind the input split, if any
    poison_outcome: dict[str, Any] | None = None  # poisoned/clean samples dropped and kept, per class

    @property
    def kind(self) -> str:
        """``subset`` when only samples were dropped, else what was replaced."""
        replaced = [name for name in ("labels", "images") if getattr(self, name) is not None]
        return "+".join(replaced) or "subset"


def poison_outcome(keep: np.ndarray, labels: np.ndarray, poisoned: np.ndarray) -> dict[str, Any]:
    """How a defense treated the poison: samples, poisoned ones and how many of the poisoned and of the
    clean samples it dropped and kept, in all and per class (by the label the defense saw)."""
    kept = np.zeros(len(labels), dtype=bool)
    kept[keep] = True
    hit = np.zeros(len(labels), dtype=bool)
    hit[poisoned] = True

    def counts(members: np.ndarray) -> dict[str, int]:
        return {
            "samples": int(members.sum()),
            "poisoned": int((members & hit).sum()),
            "poisoned_dropped": int((members & hit & ~kept).sum()),
            "poisoned_kept": int((members & hit & kept).sum()),
            "clean_dropped": int((members & ~hit & ~kept).sum()),
            "clean_kept": int((members & ~hit & kept).sum()),
        }

    every = np.ones(len(labels), dtype=bool)
    return {**counts(every), "per_class": {str(int(c)): counts(labels == c) for c in np.unique(labels)}}


def make_defended(
    defense: str,
    data: ImageDataset,
    seed: int,
    keep: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> DefendedData:
    """Build and validate the result of a defense applied to ``data.train``."""
    defended = DefendedData(
        defense=defense,
        dataset=data.name,
        input_sha256=data.train.sha256,
        n_input=len(data.train),
        seed=seed,
        keep=np.asarray(keep, dtype=np.int64),
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        images=None if images is None else np.asarray(images),
        params=dict(params or {}),
        source=dict(source or {}),
    )
    _validate(defended, data.num_classes, "defended data")
    return defended


def _validate(d: DefendedData, num_classes: int, where: str) -> None:
    def fail(problem: str) -> None:
        raise NasauditError(f"{where}: {problem}; re-create it with `nasaudit defend`")

    if d.keep.ndim != 1 or d.keep.dtype != np.int64 or not len(d.keep):
        fail(f"keep must be a non-empty 1-D int64 array, got {d.keep.dtype} {d.keep.shape}")
    if d.keep.min() < 0 or d.keep.max() >= d.n_input:
        fail(f"an index is outside 0..{d.n_input - 1}")
    if np.any(np.diff(d.keep) <= 0):
        fail("keep must be sorted without repeats")
    if d.labels is not None:
        if d.labels.dtype != np.int64:
            fail(f"labels must be int64 class indices, got {d.labels.dtype}")
        if d.labels.shape != d.keep.shape:
            fail(f"{len(d.labels)} labels for {len(d.keep)} kept samples")
        if d.labels.min() < 0 or d.labels.max() >= num_classes:
            fail(f"a label is outside 0..{num_classes - 1}")
    if d.images is not None:
        expected = (len(d.keep), *IMAGE_SHAPE)
        if d.images.dtype not in (np.uint8, np.float32) or d.images.shape != expected:
            fail(f"images must be uint8 or float32 {expected}, got {d.images.dtype} {d.images.shape}")
        if d.images.dtype == np.float32 and not (d.images.min() >= 0.0 and d.images.max() <= 1.0):
            fail("float32 images must lie in [0, 1]")


def save_defended(defended: DefendedData, path: Path, identity: dict[str, Any] | None = None) -> Path:
    """Write NAME.npz then NAME.json (the manifest last: a manifest means a complete file);
    ``identity`` (``defenses.defense_identity``) records which run made it."""
    npz = Path(path).with_suffix(".npz")
    arrays = {"keep": defended.keep}
    for name in ("labels", "images"):
        if getattr(defended, name) is not None:
            arrays[name] = getattr(defended, name)
    write_npz(npz, arrays)
    manifest = {
        "format": FORMAT,
        "defense": defended.defense,
        "params": defended.params,
        "seed": defended.seed,
        "dataset": defended.dataset,
        "n_input": defended.n_input,
        "n_kept": len(defended.keep),
        "kind": defended.kind,
        "input_sha256": defended.input_sha256,
        "source": defended.source,
        "poison_outcome": defended.poison_outcome,
        "npz_sha256": sha256_file(npz),
        IDENTITY: identity,
        "environment": environment_manifest(),
    }
    write_json(npz.with_suffix(".json"), manifest)
    return npz


def read_defended_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the defended dataset at ``path`` (NAME, NAME.npz or NAME.json), checked."""
    npz, man = Path(path).with_suffix(".npz"), Path(path).with_suffix(".json")
    for f in (npz, man):
        if not f.is_file():
            raise NasauditError(f"{f}: no such defended-dataset file; create it with `nasaudit defend`")
    try:
        manifest = json.loads(man.read_text())
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not set(manifest) >= _MANIFEST_KEYS
    ):
        raise NasauditError(f"{man}: not a complete nasaudit defended-dataset manifest; re-create it")
    wrong = check_types(manifest, _MANIFEST_TYPES)
    if wrong:
        raise NasauditError(f"{man}: {wrong}; re-create it with `nasaudit defend`")
    return manifest


def load_defended(path: Path, data: ImageDataset) -> DefendedData:
    """Read a defended dataset and check that ``data.train`` is the split it was computed on."""
    npz = Path(path).with_suffix(".npz")
    manifest = read_defended_manifest(path)
    if sha256_file(npz) != manifest["npz_sha256"]:
        raise NasauditError(f"{npz}: sha256 differs from its manifest; the file was changed or truncated")
    if manifest["dataset"] != data.name:
        raise NasauditError(f"{npz}: defended data of {manifest['dataset']!r}, not {data.name!r}")
    if manifest["input_sha256"] != data.train.sha256 or manifest["n_input"] != len(data.train):
        attack = (manifest["source"] or {}).get("attack", "none")
        raise NasauditError(
            f"{npz}: computed on another training split (made from poison {attack!r}); "
            "search with the poison it was made from (--poison), or re-create it"
        )
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise NasauditError(f"{npz}: not a readable .npz defended-dataset file ({exc})") from None
    if "keep" not in arrays:
        raise NasauditError(f"{npz}: missing the 'keep' array")
    defended = DefendedData(
        defense=manifest["defense"],
        dataset=manifest["dataset"],
        input_sha256=manifest["input_sha256"],
        n_input=manifest["n_input"],
        seed=manifest["seed"],
        keep=arrays["keep"],
        labels=arrays.get("labels"),
        images=arrays.get("images"),
        params=manifest["params"],
        source=manifest["source"],
        poison_outcome=manifest.get("poison_outcome"),
    )
    _validate(defended, data.num_classes, str(npz))
    return defended


def defended_data(
    data: ImageDataset, provenance: dict[str, Any], path: Path
) -> tuple[ImageDataset, dict[str, Any]]:
    """``data`` (described by ``provenance``, from ``poisoned_data``) replaced by the defended split at
    ``path``, and the provenance extended by it."""
    npz = Path(path).with_suffix(".npz")
    defended = load_defended(npz, data)
    data = apply_defended(defended, data)
    provenance = {**provenance, "defense": defended.defense, "defended": str(npz),
                  "defended_sha256": sha256_file(npz), "train_sha256": data.train.sha256,
                  "n_train": len(data.train)}  # fmt: skip
    return data, provenance


def apply_defended(defended: DefendedData, data: ImageDataset) -> ImageDataset:
    """The dataset whose training split is the defended one (normalisation stays the clean data's)."""
    images = defended.images if defended.images is not None else data.train.images[defended.keep]
    labels = defended.labels if defended.labels is not None else data.train.labels[defended.keep]
    return data.with_train(Split(np.ascontiguousarray(images), np.ascontiguousarray(labels)))
