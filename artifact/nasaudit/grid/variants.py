"""Named changes to how a search runs, for the tables that vary the search itself (Table 6).

A variant maps a profile to the profile its jobs' searches use; retraining always keeps the profile
as it is (paper App. B: architectures found without augmentation are retrained *with* it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from nasaudit.config import AugmentConfig, Profile
from nasaudit.registry import Registry

VARIANTS: Registry[Callable[[Profile], Profile]] = Registry("search variant")

NO_AUGMENT = AugmentConfig(crop_padding=0, flip=False, cutout=0)


@VARIANTS.register("no_augment")
def no_augment(profile: Profile) -> Profile:
    """Every search sees its training data as stored: no crop, flip, cutout or AutoAugment (Table 6).

    Clean-label poisons are crafted on un-augmented images; augmentation at search time may wash them
    out (paper §4.2), which this variant removes for P-DARTS, TE-NAS's κ batches and NSGANetV2's
    supernet and candidate fine-tuning alike. RoBoT's search is un-augmented already.
    """
    nsga = profile.nsganetv2
    return replace(
        profile,
        pdarts=replace(profile.pdarts, augment=NO_AUGMENT),
        tenas=replace(profile.tenas, augment=NO_AUGMENT),
        robot=replace(profile.robot, query=replace(profile.robot.query, augment=NO_AUGMENT)),
        nsganetv2=replace(
            nsga,
            finetune=replace(nsga.finetune, augment=NO_AUGMENT),
            supernet=replace(nsga.supernet, augment=NO_AUGMENT),
        ),
    )


def search_profile(profile: Profile, variant: str) -> Profile:
    """The profile a search of this variant runs with (``""``: the profile itself)."""
    return VARIANTS.get(variant)(profile) if variant else profile
