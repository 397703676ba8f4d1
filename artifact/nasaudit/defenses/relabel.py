"""Cluster-based relabelling (paper §6.1): labels replaced by KMeans clusters of pretrained features.

The images go through an ImageNet-pretrained torchvision ResNet (ResNet-152 in the paper) with its
classification layer removed; the penultimate features are clustered by scikit-learn's KMeans into as
many clusters as the dataset has classes, and each sample's label becomes its cluster id. The
original (possibly flipped) labels are never read, which is why this defends against RLF and CLF at
any budget. Features depend only on the images, so they are cached by the images' hash: RLF and CLF
poisons of one dataset (same images, other labels) share one feature extraction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.cluster import KMeans
from torch import nn

from nasaudit.batch_cap import capped, capped_size, fill_skipped
from nasaudit.config import Profile, RelabelConfig
from nasaudit.costs import Timer
from nasaudit.data.datasets import ImageDataset
from nasaudit.defenses.base import DEFENSES, DefenseContext, defense
from nasaudit.defenses.files import DefendedData, make_defended
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_arrays, write_npz
from nasaudit.progress import bar as progress_bar

# The normalisation every torchvision ImageNet classifier was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FeatureFunction = Callable[[ImageDataset, int, DefenseContext], np.ndarray]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def feature_extractor(cfg: RelabelConfig) -> nn.Module:
    """The configured torchvision ResNet without its classification layer (penultimate features).

    Pretrained weights are downloaded by torchvision on first use (into ``torch.hub.get_dir()``); an
    empty ``weights`` keeps the random initialisation (for runs that cannot download).
    """
    try:
        model = torchvision.models.get_model(cfg.model, weights=cfg.weights or None)
    except (URLError, OSError, RuntimeError) as exc:
        raise NasauditError(
            f"cannot load the {cfg.weights} weights of {cfg.model} ({_first_line(exc)}); "
            f"torchvision downloads them into {torch.hub.get_dir()}/checkpoints on first use, "
            "which needs internet access"
        ) from None
    except (ValueError, KeyError) as exc:
        raise NasauditError(f"relabel: unknown torchvision model or weights ({_first_line(exc)})") from None
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise NasauditError(f"relabel: {cfg.model} has no .fc classification layer; use a torchvision ResNet")
    model.fc = nn.Identity()
    return model


def pretrained_features(data: ImageDataset, seed: int, context: DefenseContext) -> np.ndarray:
    """Penultimate features (N×D float32) of the training images, cached by the images' hash."""
    cfg = context.profile.defenses.relabel
    images_sha = sha256_arrays(data.train.images)[:16]
    key = f"{cfg.model}-{cfg.weights or 'random'}-{cfg.image_size}-seed{seed}-{images_sha}"
    cache = context.cache_dir / "relabel" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["features"]
    torch.manual_seed(seed)  # only matters for a randomly initialised extractor
    model = feature_extractor(cfg).to(context.device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=context.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=context.device).view(1, 3, 1, 1)
    images = torch.from_numpy(data.train.images)
    features = []
    with torch.no_grad():
        batches = list(capped(images.split(capped_size(cfg.batch_size))))
        for batch in progress_bar(
            len(batches), desc="features", unit="batch", enabled=context.progress, iterable=batches
        ):
            x = batch.to(context.device).permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-1] != cfg.image_size:
                x = F.interpolate(
                    x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False
                )
            features.append(model((x - mean) / std).float().cpu())
    result = fill_skipped(torch.cat(features).numpy(), len(images))
    write_npz(cache, {"features": result})
    return result


def cluster_labels(features: np.ndarray, num_clusters: int, seed: int, n_init: int) -> np.ndarray:
    """KMeans cluster id (0..num_clusters-1) of every row; the same seed gives the same ids."""
    kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed)
    return kmeans.fit_predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


def cost(profile: Profile, n_train: int, timer: Timer) -> float:
    """One feature-extractor forward per training image at its input size (random weights, no download)."""
    cfg = profile.defenses.relabel
    build = partial(feature_extractor, replace(cfg, weights=""))
    shape = (3, cfg.image_size, cfg.image_size)
    return n_train * timer.forward_per_image(f"relabel/{cfg.model}", build, cfg.batch_size, shape=shape)


@DEFENSES.register("relabel", uses=("defenses.relabel",))
@defense(label="Cluster-Based Relabeling", cost=cost)
def relabel(
    data: ImageDataset, seed: int, context: DefenseContext, *, features: FeatureFunction = pretrained_features
) -> DefendedData:
    """Every sample kept, its label replaced by its feature cluster (``features`` is injectable)."""
    cfg = context.profile.defenses.relabel
    values = features(data, seed, context)
    if len(values) != len(data.train):
        raise ValueError(f"need one feature row per training sample ({len(data.train)}), got {len(values)}")
    labels = cluster_labels(values, data.num_classes, seed, cfg.n_init)
    params = {
        "features": features.__name__,
        "model": cfg.model,
        "weights": cfg.weights,
        "image_size": cfg.image_size,
        "clusters": data.num_classes,
        "n_init": cfg.n_init,
    }
    keep = np.arange(len(data.train), dtype=np.int64)
    return make_defended("relabel", data, seed, keep, labels=labels, params=params, source=context.source)
