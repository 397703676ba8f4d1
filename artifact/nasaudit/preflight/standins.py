"""Pretrained models the preflight cannot download, replaced by the same architecture with random weights.

Shapes, memory and time do not depend on the weights, so a stand-in checks what the real model would
(except what the weights compute). A model that is available offline (a local folder or file, or a
download already in the Hugging Face or torch hub cache) is used as it is. Each replacement is noted
in the report line of every task that uses it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nasaudit.config import Profile

STAND_INS = "stand-ins"  # the folder, under the preflight's, holding the stand-in weights


def stand_in_models(
    profile: Profile, folder: Path, sections: set[str]
) -> tuple[Profile, dict[str, list[str]]]:
    """``profile`` with every unavailable pretrained model of the named ``sections`` replaced (written
    under ``folder``), and a note per replaced section."""
    notes: dict[str, list[str]] = {}
    folder = Path(folder) / STAND_INS
    if "defenses.denoise" in sections:
        profile = _denoise(profile, folder, notes)
    if "defenses.relabel" in sections:
        profile = _relabel(profile, notes)
    if "nsganetv2.supernet" in sections:
        profile = _supernet(profile, folder, notes)
    return profile, notes


def _denoise(profile: Profile, folder: Path, notes: dict[str, list[str]]) -> Profile:
    """The DDPM: a local folder or a cached hub download as is, else google/ddpm-cifar10-32's UNet
    (``defenses.denoise.DDPM_CIFAR10_UNET``) with random weights and the linear 1000-step schedule
    (Ho et al. 2020)."""
    cfg = profile.defenses.denoise
    if Path(cfg.model).is_dir():
        return profile
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(cfg.model, local_files_only=True)
        source, note = local, ""
    except Exception:  # not in the cache (or no hub client): the stand-in
        from nasaudit.defenses.denoise import DDPM_CIFAR10_UNET, import_diffusers

        diffusers = import_diffusers("the preflight's stand-in DDPM")
        source = str(folder / "ddpm")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            diffusers.UNet2DModel(**DDPM_CIFAR10_UNET).save_pretrained(source)
        diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(source)
        note = (
            f"DDPM {cfg.model!r} is not available offline: google/ddpm-cifar10-32's UNet with random "
            "weights stands in (same architecture and schedule)"
        )
    if note:
        notes.setdefault("defenses.denoise", []).append(note)
    return replace(profile, defenses=replace(profile.defenses, denoise=replace(cfg, model=source)))


def _relabel(profile: Profile, notes: dict[str, list[str]]) -> Profile:
    """The feature extractor's pretrained weights: used when torchvision's cache has them, else random."""
    import torchvision

    cfg = profile.defenses.relabel
    if not cfg.weights:
        return profile
    url = torchvision.models.get_model_weights(cfg.model)[cfg.weights].url
    if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return profile
    notes.setdefault("defenses.relabel", []).append(
        f"{cfg.model} {cfg.weights} weights are not downloaded here: the same network with random "
        "weights stands in"
    )
    return replace(profile, defenses=replace(profile.defenses, relabel=replace(cfg, weights="")))


def _supernet(profile: Profile, folder: Path, notes: dict[str, list[str]]) -> Profile:
    """A configured supernet file that is missing: a random supernet of the profile's space."""
    from nasaudit.spaces.mbv3 import MBV3SuperNet, channel_plan, save_supernet

    cfg = profile.nsganetv2.supernet
    if not cfg.weights or Path(cfg.weights).is_file():
        return profile
    path = folder / "supernet.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), 1000, cfg.dropout)
    save_supernet(path, net)
    notes.setdefault("nsganetv2.supernet", []).append(
        f"supernet weights {cfg.weights!r} are not here: a supernet of the same space with random "
        "weights stands in"
    )
    nsganetv2 = replace(profile.nsganetv2, supernet=replace(cfg, weights=str(path)))
    return replace(profile, nsganetv2=nsganetv2)
