"""The search protocol and the one place that turns a search into its job-folder files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.io import environment_manifest, write_json
from nasaudit.registry import Registry

ARCHITECTURE = "architecture.json"


@dataclass(frozen=True)
class SearchContext:
    """Where a search runs and keeps its resumable state and logs.

    ``cache_dir`` holds artifacts shared across the jobs of one dataset (RoBoT's scored pool, the
    MobileNetV3 supernet); None means ``shared_cache``'s default beside the job folder. ``clean`` is
    the clean dataset the search data was made from (before any poison or defense), for what must
    never see the poison (NSGANetV2's supernet); None means the search data is clean itself.
    """

    profile: Profile
    device: torch.device
    out_dir: Path
    progress: bool = True
    cache_dir: Path | None = None
    clean: ImageDataset | None = None

    def clean_of(self, data: ImageDataset) -> ImageDataset:
        """The clean data behind the search data ``data``."""
        return self.clean if self.clean is not None else data


def shared_cache(context: SearchContext) -> Path:
    """The folder shared across jobs: ``context.cache_dir``, else ``cache/`` beside the job folder.

    The default lets sibling jobs (``nasaudit random-baseline``'s arch_NNN folders, searches run
    side by side) share what they have in common without being told where.
    """
    return context.cache_dir if context.cache_dir is not None else context.out_dir.parent / "cache"


class NasAlgorithm(Protocol):
    space: str  # the search space its architectures belong to (a key of nasaudit.models.MODELS)

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        """Search on ``data.train`` and return the architecture in its space's JSON form."""
        ...


NAS: Registry[NasAlgorithm] = Registry("NAS algorithm")


def run_search(
    algorithm: str, data: ImageDataset, seed: int, context: SearchContext, provenance: dict[str, Any]
) -> dict[str, Any]:
    """Run a search unless its job folder already holds the result; write ``architecture.json``.

    ``provenance`` records what the search data was (dataset, poison file and its hash).
    """
    path = context.out_dir / ARCHITECTURE
    if path.is_file():
        return json.loads(path.read_text())
    algo = NAS.get(algorithm)
    start = time.perf_counter()
    arch = algo(data, seed, context)
    record = {
        "algorithm": algorithm,
        "space": algo.space,
        "architecture": arch,
        "seed": seed,
        "search_time": time.perf_counter() - start,
        "search_data": provenance,
        "profile": context.profile.name,
        "manifest": environment_manifest(str(context.device)),
    }
    write_json(path, record)
    return record
