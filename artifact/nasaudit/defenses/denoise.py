"""Diffusion denoising (Hong et al. 2024; paper §6.1): one-shot DDPM denoising of every image.

Denoised smoothing as Carlini et al. (2023) and Hong et al. (2024) do it: scale the image to
[−1, 1], add Gaussian noise of std 2σ (σ in [0, 1] pixel units, so 2σ in the DDPM's units), and read
the result as the DDPM state x_t = √ᾱ_t·(x + 2σ·δ) = √ᾱ_t·x + √(1−ᾱ_t)·δ at the timestep t whose
√(1−ᾱ_t)/√ᾱ_t is closest to 2σ (t = 57 in diffusers' 0-based indexing for σ = 0.1 and the linear
1000-step schedule; t = 58 counting from 1). One call of the noise predictor gives ε̂ and the
estimate x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, clamped to [−1, 1] and stored as ``[defenses.denoise]
store`` says: "float32" in [0, 1] as the authors stored theirs (their RoBoT fork's
darts_space/diffusion_denoise_utils.py hands the stored ``tdata`` tensors straight to ``Normalize``,
no ``ToTensor``: floats, never quantised), or the nearest "uint8" level. With ``add_noise = false``
the image itself is scaled into x_t = √ᾱ_t·x (paper §6.1 read literally).

The defender does not know which samples are poisoned, so every training image is denoised. The
noise δ is drawn per sample in dataset order from one seeded generator, so the result does not depend
on the batch size. The DDPM (diffusers' ``UNet2DModel`` + ``DDPMScheduler``, ``google/ddpm-cifar10-32``
in the paper profile) is downloaded by diffusers on first use, or read from a local folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nasaudit.batch_cap import capped, capped_size
from nasaudit.config import DenoiseConfig, Profile
from nasaudit.costs import Timer
from nasaudit.data.datasets import ImageDataset
from nasaudit.defenses.base import DEFENSES, DefenseContext, defense
from nasaudit.defenses.files import DefendedData, make_defended
from nasaudit.errors import NasauditError
from nasaudit.extras import require
from nasaudit.progress import bar as progress_bar

NoisePredictor = Callable[[Tensor, Tensor], Tensor]
"""``(x_t, timesteps) -> ε̂``: a DDPM's noise prediction for a batch (N×3×H×W in [−1, 1] units)."""


def unet_predictor(unet: nn.Module) -> NoisePredictor:
    """A diffusers ``UNet2DModel`` as a noise predictor."""

    def predict(x_t: Tensor, timesteps: Tensor) -> Tensor:
        return unet(x_t, timesteps).sample

    return predict


def import_diffusers(needed_for: str) -> ModuleType:
    """diffusers, with ``safetensors.torch`` imported first: diffusers 0.31 (the images' pin, under torch
    2.0) saves and loads weights through it without importing it."""
    require("safetensors.torch", needed_for)
    return require("diffusers", needed_for)


def load_ddpm(source: str, device: torch.device) -> tuple[NoisePredictor, Tensor]:
    """The UNet (on ``device``, eval mode) and ᾱ of a diffusers DDPM given by hub id or folder."""
    diffusers = import_diffusers("the denoise defense")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(source)
        scheduler = diffusers.DDPMScheduler.from_pretrained(source)
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NasauditError(
            f"cannot load the DDPM {source!r} ({first}); diffusers downloads a hub id on first use (internet "
            "needed), or set [defenses.denoise] model to a local folder holding it"
        ) from None
    if scheduler.config.prediction_type != "epsilon":
        raise NasauditError(f"DDPM {source!r} predicts {scheduler.config.prediction_type!r}, not the noise ε")
    return unet_predictor(unet.to(device).eval()), scheduler.alphas_cumprod.double()


def denoising_timestep(alphas_cumprod: Tensor, sigma: float) -> int:
    """The timestep whose noise-to-signal ratio √(1−ᾱ_t)/√ᾱ_t is closest to 2σ."""
    ratio = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    return int(torch.argmin((ratio - 2 * sigma).abs()))


def denoise_images(
    images: np.ndarray,
    predict: NoisePredictor,
    alphas_cumprod: Tensor,
    cfg: DenoiseConfig,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
) -> np.ndarray:
    """One-shot denoised copies of uint8 N×H×W×3 ``images``, in ``cfg.store``'s dtype (module doc)."""
    t = denoising_timestep(alphas_cumprod, cfg.sigma)
    signal = math.sqrt(float(alphas_cumprod[t]))
    noise_scale = math.sqrt(1.0 - float(alphas_cumprod[t]))
    rng = np.random.default_rng(seed)
    store = STORES[cfg.store]
    out = np.zeros(images.shape, dtype=store.dtype)  # a batch cap (preflight) leaves skipped rows zero
    size = capped_size(cfg.batch_size)
    starts = list(capped(range(0, len(images), size)))
    with torch.no_grad():
        for start in progress_bar(
            len(starts), desc="denoise", unit="batch", enabled=progress, iterable=starts
        ):
            batch = torch.from_numpy(images[start : start + size]).to(device)
            x = batch.permute(0, 3, 1, 2).double() / 127.5 - 1.0
            if cfg.add_noise:
                delta = torch.from_numpy(rng.standard_normal(x.shape)).to(device)
                x = x + 2 * cfg.sigma * delta
            x_t = (signal * x).float()
            timesteps = torch.full((len(x_t),), t, device=device, dtype=torch.long)
            eps = predict(x_t, timesteps).double()
            x0 = ((x_t.double() - noise_scale * eps) / signal).clamp(-1.0, 1.0)
            pixels = store.convert(x0).permute(0, 2, 3, 1)
            out[start : start + len(pixels)] = pixels.cpu().numpy()
    return out


@dataclass(frozen=True)
class Store:
    """How denoised images (x̂_0 in [−1, 1]) are stored."""

    dtype: type
    convert: Callable[[Tensor], Tensor]


#: [defenses.denoise] store -> how x̂_0 is stored; "float32" is as run (unquantised)
STORES = {
    "float32": Store(np.float32, lambda x0: ((x0 + 1.0) / 2.0).float()),
    "uint8": Store(np.uint8, lambda x0: torch.round((x0 + 1.0) * 127.5).to(torch.uint8)),
}


# google/ddpm-cifar10-32's UNet (its config.json). Built with random weights, it costs what the
# pretrained one does and needs no download; a different [defenses.denoise] model is timed as this one.
DDPM_CIFAR10_UNET: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
}


class _OneShotDenoiser(nn.Module):
    """The UNet called as the denoiser calls it: one noise prediction per image at one timestep."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = require("diffusers", "the denoise defense's cost").UNet2DModel(**DDPM_CIFAR10_UNET)

    def forward(self, x: Tensor) -> Tensor:
        return self.unet(x, torch.zeros(len(x), dtype=torch.long, device=x.device)).sample


def cost(profile: Profile, n_train: int, timer: Timer) -> float:
    """One UNet forward per training image (every image is denoised)."""
    batch = profile.defenses.denoise.batch_size
    return n_train * timer.forward_per_image("denoise", _OneShotDenoiser, batch)


@DEFENSES.register("denoise", uses=("defenses.denoise",))
@defense(label="Diffusion Denoising", cost=cost)
def denoise(
    data: ImageDataset,
    seed: int,
    context: DefenseContext,
    *,
    ddpm: tuple[NoisePredictor, Tensor] | None = None,
) -> DefendedData:
    """Every training image replaced by its one-shot denoised version (``ddpm`` is injectable)."""
    cfg = context.profile.defenses.denoise
    predict, alphas_cumprod = ddpm if ddpm is not None else load_ddpm(cfg.model, context.device)
    images = denoise_images(
        data.train.images,
        predict,
        alphas_cumprod,
        cfg,
        seed=seed,
        device=context.device,
        progress=context.progress,
    )
    t = denoising_timestep(alphas_cumprod, cfg.sigma)
    params = {
        "model": cfg.model if ddpm is None else "injected",
        "sigma": cfg.sigma,
        "add_noise": cfg.add_noise,
        "store": cfg.store,
        "timestep": t,
        "alpha_bar": float(alphas_cumprod[t]),
    }
    keep = np.arange(len(data.train), dtype=np.int64)
    return make_defended("denoise", data, seed, keep, images=images, params=params, source=context.source)
