"""Synthetic stand-ins of the registered datasets, and the marker that keeps them out of every table.

A stand-in has its dataset's published shape (``DatasetSpec.shape``: CIFAR-10's 50,000 training and
10,000 test images of 10 classes, CIFAR-100's 100 classes, SVHN's 73,257/26,032, grey images for the
MNIST family, all 32×32×3 uint8 as the readers present them), is generated in memory from a seed and
is never written to disk as a dataset. Its name (``synthetic-cifar10``) travels into every file a stage
writes (poison manifests, search provenance, training results), and the folder the preflight writes to
holds :data:`MARKER`: ``nasaudit table`` and ``nasaudit compare`` refuse both with one line.

Each class gets a fixed low-frequency colour pattern plus per-image noise (balanced labels), so a
network can fit the data a little, like a real one; the values themselves mean nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from nasaudit.data.datasets import DATASETS, IMAGE_SHAPE, ImageDataset, Split
from nasaudit.errors import NasauditError
from nasaudit.seeds import rng as seeded_rng

PREFIX = "synthetic-"
MARKER = "SYNTHETIC_PREFLIGHT.txt"
MARKER_TEXT = (
    "Written by `nasaudit preflight`: every file below comes from synthetic stand-ins of the datasets, "
    "run for a few steps. Nothing here is a result; `nasaudit table` and `nasaudit compare` refuse it.\n"
)
PATTERN = 4  # side of each class's random colour pattern, upscaled to the 32×32 image


def synthetic_name(name: str) -> str:
    return PREFIX + name


def is_synthetic(name: str) -> bool:
    return str(name).startswith(PREFIX)


@functools.lru_cache(maxsize=8)
def synthetic_dataset(name: str, seed: int = 0, train_subset: int = 0) -> ImageDataset:
    """The stand-in of registered dataset ``name``: its published shape, random content from ``seed``.

    With ``train_subset`` > 0 only that many training images are generated: the stages of such a
    profile never see more (``grid_dataset`` keeps the first ``train_subset``).
    """

    shape = DATASETS.get(name).shape
    if shape is None:
        raise NasauditError(
            f"dataset {name!r} has no published shape to imitate; give its DatasetSpec a Shape "
            "(nasaudit.data.datasets) to preflight it"
        )
    n_train = min(shape.train, train_subset) if train_subset > 0 else shape.train
    rng = seeded_rng(seed, "synthetic", name)
    channels = 1 if shape.grey else 3
    patterns = rng.integers(0, 128, (shape.num_classes, PATTERN, PATTERN, channels), dtype=np.uint8)
    scale = IMAGE_SHAPE[0] // PATTERN
    patterns = patterns.repeat(scale, axis=1).repeat(scale, axis=2)

    def split(n: int) -> Split:
        labels = rng.permutation(np.arange(n) % shape.num_classes).astype(np.int64)
        images = patterns[labels]
        noise = np.frombuffer(rng.bytes(images.size), dtype=np.uint8).reshape(images.shape)
        images += noise >> 1  # ≤ 127 + 127: no overflow
        if shape.grey:
            images = np.repeat(images, 3, axis=3)
        return Split(np.ascontiguousarray(images), labels)

    train, test = split(n_train), split(shape.test)
    mean, std = _channel_stats(train.images)
    classes = tuple(f"class{i}" for i in range(shape.num_classes))
    return ImageDataset(synthetic_name(name), train, test, classes, mean, std)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (``make_dataset``'s formula), from each
    channel's histogram rather than a float64 copy of the whole split."""
    levels = np.arange(256) / 255.0
    mean, std = [], []
    for channel in range(3):
        counts = np.bincount(images[..., channel].ravel(), minlength=256) / images[..., channel].size
        mu = float(counts @ levels)
        mean.append(mu)
        std.append(float(np.sqrt(max(counts @ (levels - mu) ** 2, 0.0))))
    return tuple(mean), tuple(std)


class SyntheticDatasets(Mapping[str, ImageDataset]):
    """Stand-ins by registry name, generated on first use (``grid.stages.Env.datasets``)."""

    def __init__(self, seed: int = 0, train_subset: int = 0) -> None:
        self.seed, self.train_subset = seed, train_subset

    def __getitem__(self, name: str) -> ImageDataset:
        return synthetic_dataset(name, self.seed, self.train_subset)

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in DATASETS.names() if DATASETS.get(n).shape is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def mark(folder: Path) -> None:
    """Label ``folder`` as the preflight's: synthetic, never a result."""
    from nasaudit.io import write_bytes

    write_bytes(Path(folder) / MARKER, MARKER_TEXT.encode())


def marked_folder(path: Path) -> Path | None:
    """The folder at or above ``path`` holding the preflight marker, if any."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / MARKER).is_file():
            return folder
    return None


def refuse_synthetic(path: Path, what: str) -> None:
    """One line, before any work, when ``path`` lies in a preflight folder."""
    folder = marked_folder(path)
    if folder is not None:
        raise NasauditError(
            f"{what} {path} is in {folder}, the output of `nasaudit preflight` on synthetic data "
            f"({MARKER}): it holds no results; point at a grid's results folder"
        )
