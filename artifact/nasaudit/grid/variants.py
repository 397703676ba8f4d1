"""Named changes to how a search runs, for the tables that vary the search itself (Table 6).

A variant maps a profile to the profile its jobs' searches use; retraining always keeps the profile
as it is (paper App. B: architectures found without augmentation are retrained *with* it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nasaudit.config import AugmentConfig, Profile
from nasaudit.registry import Registry

VARIANTS: Registry[Callable[[Profile], Profile]] = Registry("search variant")

NO_AUGMENT = AugmentConfig(crop_padding=0, flip=False, cutout=0)


@VARIANTS.register("no_augment")
def no_augment(profile: Profile) -> Profile:
    """Every search sees its training data as stored: no crop, flip, cutout or AutoAugment (Table 6).

    Clean-label poisons are crafted on un-augmented images; augmentation at search time may wash them
    out (paper §4.2), which this variant removes for P-DARTS, TE-NAS's κ batches and NSGANetV2's
    supernet and candidate fine-tuning alike. RoBoT's search is un-augmented already. Every augmentation
    in a section a registered algorithm reads (``NAS.uses``) is switched off, so a new algorithm's is too;
    the retraining sections (``[train]``, ``[mbv3_train]``) no algorithm reads keep theirs.
    """
    from nasaudit.nas import NAS

    searched = {name for algorithm in NAS for name in NAS.uses(algorithm)}
    for section in sorted(searched):
        profile = _replace_at(profile, section.split("."), _without_augment)
    return profile


def _without_augment(config: Any) -> Any:
    """``config`` with each of its ``AugmentConfig`` values, at any depth, replaced by ``NO_AUGMENT``."""
    if isinstance(config, AugmentConfig):
        return NO_AUGMENT
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    fields = dataclasses.fields(config)
    return replace(config, **{f.name: _without_augment(getattr(config, f.name)) for f in fields})


def _replace_at(config: Any, path: list[str], change: Callable[[Any], Any]) -> Any:
    """``config`` with the section at the attribute ``path`` replaced by ``change`` of it."""
    if not path:
        return change(config)
    head, *rest = path
    value = _replace_at(getattr(config, head), rest, change)
    if isinstance(config, Profile) and head in config.plugins:
        return replace(config, plugins={**config.plugins, head: value})
    return replace(config, **{head: value})


def search_profile(profile: Profile, variant: str) -> Profile:
    """The profile a search of this variant runs with (``""``: the profile itself)."""
    return VARIANTS.get(variant)(profile) if variant else profile
