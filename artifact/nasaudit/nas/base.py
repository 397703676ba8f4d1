"""The search protocol and the one place that turns a search into its job-folder files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.io import environment_manifest, write_json
from nasaudit.registry import Registry
from nasaudit.runs import IDENTITY, claim, data_identity, fingerprint, profile_sections, reuse

if TYPE_CHECKING:
    from nasaudit.costs import Timer, VictimNet

ARCHITECTURE = "architecture.json"
CLAIM = "job.json"  # which run the folder's resumable state belongs to (runs.claim)


@dataclass(frozen=True)
class SearchContext:
    """Where a search runs and keeps its resumable state and logs.

    ``cache_dir`` holds artifacts shared across the jobs of one dataset (RoBoT's scored pool, the
    MobileNetV3 supernet); None means ``shared_cache``'s default beside the job folder. ``clean`` is
    the clean dataset the search data was made from (before any poison or defense), for what must
    never see the poison (NSGANetV2's supernet); None means the search data is clean itself.
    ``trial`` is the job's trial: the random baseline's trial k retrains the k-th published genotype.
    """

    profile: Profile
    device: torch.device
    out_dir: Path
    progress: bool = True
    cache_dir: Path | None = None
    clean: ImageDataset | None = None
    trial: int = 0

    def clean_of(self, data: ImageDataset) -> ImageDataset:
        """The clean data behind the search data ``data``."""
        return self.clean if self.clean is not None else data


def shared_cache(context: SearchContext) -> Path:
    """The folder shared across jobs: ``context.cache_dir``, else ``cache/`` beside the job folder.

    The default lets sibling jobs (``nasaudit random-baseline``'s arch_NNN folders, searches run
    side by side) share what they have in common without being told where.
    """
    return context.cache_dir if context.cache_dir is not None else context.out_dir.parent / "cache"


class NasAlgorithm:
    """A search algorithm, everything the rest of the package asks of it in one registered object:
    subclass, set the class attributes, implement ``__call__`` (and ``cost`` for `nasaudit plan`),
    register an instance in ``NAS`` (docs/extending.md)."""

    space: str  # the search space its architectures belong to (a key of nasaudit.models.MODELS)
    label: str  # its name in tables and figures
    image: str = ""  # the container it runs in (a Dockerfile target, mk/docker.mk); "" runs in any
    extras: tuple[str, ...] = ()  # distributions beyond the core (a built-in one: its nasaudit.extras)
    is_random_baseline: bool = False  # draws its space's architectures at random (`nasaudit random-baseline`)
    # A CPU preflight runs its searches on other data than the first dataset (another dataset, defended
    # data); False leaves those to a GPU run (preflight.kinds), for a search that takes minutes on a CPU.
    preflight_other_data_on_cpu: bool = True

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        """Search on ``data.train`` and return the architecture in its space's JSON form."""
        raise NotImplementedError

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float] | None:
        """Seconds on ``timer``'s device of one search on ``n_train`` images, and of the work every
        search of a dataset shares (paid once by `nasaudit plan`); None: no cost model."""
        return None

    def victim(self, profile: Profile) -> VictimNet | None:
        """The network GC differentiates when the search leaves its own (P-DARTS's supernet); None:
        its space's retrained network (``attacks.victim.JOB_VICTIMS``)."""
        return None


NAS: Registry[NasAlgorithm] = Registry("NAS algorithm")


def random_samplers() -> dict[str, str]:
    """The random sampler (a NAS registry name) of each space that has one (``is_random_baseline``)."""
    return {NAS.get(name).space: name for name in NAS if NAS.get(name).is_random_baseline}


def search_data(
    clean: ImageDataset, poison: Path | None = None, defense: Path | None = None
) -> tuple[ImageDataset, dict[str, Any]]:
    """The data a search runs on, and its provenance: ``clean`` with the poison file applied
    (``data.poison.poisoned_data``), then replaced by the defended file (``defenses.defended_data``).

    The provenance is what ``run_search`` records and ``runs.data_identity`` reads. The one composition
    behind `nasaudit search` and the grid's searches; a defense's input is ``poisoned_data``'s, which
    also gives the poisoned indices from the one read of the poison file.
    """
    from nasaudit.data.poison import poisoned_data

    data, provenance, _ = poisoned_data(clean, poison)
    if defense is None:
        return data, provenance
    from nasaudit.defenses import defended_data

    return defended_data(data, provenance, defense)


def search_identity(
    algorithm: str, seed: int, profile: Profile, data: dict[str, Any], trial: int = 0
) -> dict[str, Any]:
    """What a search's result depends on: the algorithm, its profile sections, the seed, the trial (the
    random baseline's trial picks its published genotype) and the data (``runs.data_identity``: the
    clean split's hash and the poison and defended files applied to it)."""
    return fingerprint(
        "search",
        algorithm=algorithm,
        seed=seed,
        trial=trial,
        data=data,
        profile=profile_sections(profile, NAS.uses(algorithm)),
    )


def run_search(
    algorithm: str, data: ImageDataset, seed: int, context: SearchContext, provenance: dict[str, Any]
) -> dict[str, Any]:
    """Run a search unless its job folder already holds its result; write ``architecture.json``.

    ``provenance`` records what the search data was (dataset, poison file and its hash). The folder is
    claimed (``job.json``) before the algorithm starts, so every checkpoint and log it resumes from was
    written by this same run; a folder of another run is refused with one line.
    """
    identity = search_identity(
        algorithm, seed, context.profile, data_identity(data, provenance), context.trial
    )
    path = context.out_dir / ARCHITECTURE
    record = reuse(path, identity, "resumes the search from the folder's saved state")
    if record is not None:
        return record
    claim(context.out_dir / CLAIM, identity, fresh=True)
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
        IDENTITY: identity,
        "manifest": environment_manifest(str(context.device)),
    }
    write_json(path, record)
    return record
