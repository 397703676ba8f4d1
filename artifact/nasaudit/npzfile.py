"""Artifact files: arrays in ``NAME.npz`` beside a JSON manifest ``NAME.json`` that holds their sha256.

Poisons (``data.poison``) and defended datasets (``defenses.files``) are stored this way. The npz is
written first and the manifest last, so a manifest means a complete file; the manifest names its
format, the npz's hash, the run that made it (``runs.IDENTITY``) and the environment. Reading checks,
each failure one line naming the file and how to re-create it: both files exist, the manifest is
complete and typed, the npz matches its hash, is an npz archive (not a bare ``.npy`` array, loaded
with ``allow_pickle=False``) and holds the arrays its format requires.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.errors import NasauditError
from nasaudit.io import check_types, environment_manifest, sha256_file, write_json, write_npz
from nasaudit.runs import IDENTITY


@dataclass(frozen=True)
class NpzFormat:
    """One kind of artifact file: what its manifest must hold and what readers are told to do."""

    tag: str  # the manifest's "format" value, versioned ("nasaudit-poison/1")
    noun: str  # what messages call a file ("poison", "defended-dataset")
    command: str  # the command that (re-)creates one
    manifest_types: Mapping[str, type]  # keys every manifest has, and their types
    arrays: tuple[str, ...]  # arrays every npz has

    @property
    def fix(self) -> str:
        return f"re-create it with `{self.command}`"


def npz_path(path: Path) -> Path:
    """``NAME.npz`` of an artifact given as NAME, NAME.npz or NAME.json."""
    return Path(path).with_suffix(".npz")


def manifest_path(path: Path) -> Path:
    """``NAME.json`` of an artifact given as NAME, NAME.npz or NAME.json."""
    return Path(path).with_suffix(".json")


def write_npzfile(
    fmt: NpzFormat,
    path: Path,
    arrays: Mapping[str, np.ndarray],
    fields: Mapping[str, Any],
    identity: Mapping[str, Any] | None,
) -> Path:
    """Write NAME.npz, then NAME.json holding ``fields``, the npz's hash, ``identity`` and the environment."""
    npz = npz_path(path)
    write_npz(npz, arrays)
    manifest = {
        "format": fmt.tag,
        **fields,
        "npz_sha256": sha256_file(npz),
        IDENTITY: identity,
        "environment": environment_manifest(),
    }
    write_json(manifest_path(path), manifest)
    return npz


def read_manifest(fmt: NpzFormat, path: Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, after checking both files exist and its keys' types."""
    npz, man = npz_path(path), manifest_path(path)
    for f in (npz, man):
        if not f.is_file():
            raise NasauditError(f"{f}: no such {fmt.noun} file; create it with `{fmt.command}`")
    try:
        manifest = json.loads(man.read_text())
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != fmt.tag
        or not set(manifest) >= set(fmt.manifest_types)
    ):
        raise NasauditError(f"{man}: not a complete nasaudit {fmt.noun} manifest; {fmt.fix}")
    wrong = check_types(manifest, fmt.manifest_types)
    if wrong:
        raise NasauditError(f"{man}: {wrong}; {fmt.fix}")
    return manifest


def read_arrays(fmt: NpzFormat, path: Path, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the artifact at ``path``, after checking the npz against ``manifest``'s hash."""
    npz = npz_path(path)
    if sha256_file(npz) != manifest["npz_sha256"]:
        raise NasauditError(
            f"{npz}: sha256 differs from its manifest {manifest_path(path).name}; "
            f"the file was changed or truncated, {fmt.fix}"
        )
    try:
        loaded = np.load(npz, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array has no named members
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise NasauditError(f"{npz}: not a readable .npz {fmt.noun} file ({exc})") from None
    missing = [name for name in fmt.arrays if name not in arrays]
    if missing:
        raise NasauditError(f"{npz}: missing the {missing[0]!r} array; {fmt.fix}")
    return arrays
