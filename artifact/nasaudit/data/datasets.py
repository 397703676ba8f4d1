"""Image-classification datasets as uint8 arrays, one registry entry per dataset.

Every dataset is returned in one shape (N×32×32×3 uint8 images, int64 labels) so attacks, searches and
training never special-case a dataset. Real datasets are downloaded by torchvision (which verifies
each archive's checksum) into ``<root>/<name>/`` and read back by our own readers of the on-disk
formats, so the same readers serve the tests' tiny files.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from nasaudit.errors import NasauditError
from nasaudit.io import sha256_arrays
from nasaudit.registry import Registry

IMAGE_SHAPE = (32, 32, 3)


def data_root() -> Path:
    """Where datasets live: ``$NASAUDIT_DATA`` or ``./data``."""
    return Path(os.environ.get("NASAUDIT_DATA", "data"))


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # N×32×32×3 uint8 (a defense may store float32 in [0, 1]: data.device.unit_pixels)
    labels: np.ndarray  # N int64

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def sha256(self) -> str:
        return sha256_arrays(self.images, self.labels)


@dataclass(frozen=True)
class ImageDataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per-channel, of the clean training images in [0, 1]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_train(self, train: Split) -> ImageDataset:
        """The same dataset with another training split; normalisation stays that of the clean data."""
        return replace(self, train=train)

    def first(self, n: int) -> ImageDataset:
        """The first ``n`` training images (all of them for ``n`` ≤ 0): the reduced runs' data."""
        if n <= 0 or n >= len(self.train):
            return self
        return self.with_train(Split(self.train.images[:n], self.train.labels[:n]))


def make_dataset(name: str, train: Split, test: Split, classes: tuple[str, ...]) -> ImageDataset:
    for split in (train, test):
        if split.images.shape[1:] != IMAGE_SHAPE or split.images.dtype != np.uint8:
            raise NasauditError(f"{name}: images must be N×32×32×3 uint8, got {split.images.shape}")
    pixels = train.images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(float(v) for v in pixels.mean(axis=0))
    std = tuple(float(v) for v in pixels.std(axis=0))
    return ImageDataset(name, train, test, classes, mean, std)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Shape:
    """A dataset's published size as its reader presents it (32×32×3 uint8 images)."""

    train: int
    test: int
    num_classes: int
    grey: bool  # grey images copied to three channels


@dataclass(frozen=True)
class DatasetSpec:
    """How to fetch and read one dataset, and its shape (what planning and the preflight assume)."""

    name: str
    read: Callable[[Path], ImageDataset]  # reads <root>/<name>/
    download: Callable[[Path], None] | None  # fetches into <root>/<name>/; None when embedded
    description: str
    shape: Shape | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


def load_dataset(name: str, root: Path | None = None) -> ImageDataset:
    """Load a registered dataset, with a one-line hint when it has not been downloaded."""
    spec = DATASETS.get(name)
    folder = (root or data_root()) / name
    if spec.download is not None and not folder.exists():
        raise NasauditError(
            f"dataset {name!r} is not in {folder}; fetch it with `nasaudit data download {name}` "
            f"(or `make data`)"
        )
    try:
        return spec.read(folder)
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise NasauditError(
            f"dataset {name!r} in {folder} is incomplete or corrupt ({exc}); delete the folder and run "
            f"`nasaudit data download {name}`"
        ) from None


def download_dataset(name: str, root: Path | None = None) -> Path:
    spec = DATASETS.get(name)
    folder = (root or data_root()) / name
    if spec.download is None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    spec.download(folder)
    return folder


# --- CIFAR: python-pickle batches -------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch files but refuses anything besides numpy arrays and builtins."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")


def _read_cifar_batch(path: Path, label_key: str) -> Split:
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="latin1").load()
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), np.asarray(batch[label_key], dtype=np.int64))


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def _read_cifar10(folder: Path) -> ImageDataset:
    base = folder / "cifar-10-batches-py"
    train = _concat([_read_cifar_batch(base / f"data_batch_{i}", "labels") for i in range(1, 6)])
    test = _read_cifar_batch(base / "test_batch", "labels")
    with open(base / "batches.meta", "rb") as f:
        classes = tuple(_ArrayUnpickler(f, encoding="latin1").load()["label_names"])
    return make_dataset("cifar10", train, test, classes)


def _read_cifar100(folder: Path) -> ImageDataset:
    base = folder / "cifar-100-python"
    train = _read_cifar_batch(base / "train", "fine_labels")
    test = _read_cifar_batch(base / "test", "fine_labels")
    with open(base / "meta", "rb") as f:
        classes = tuple(_ArrayUnpickler(f, encoding="latin1").load()["fine_label_names"])
    return make_dataset("cifar100", train, test, classes)


def _tv_download(cls_name: str, **kwargs: object) -> Callable[[Path], None]:
    """torchvision's downloader for a dataset class; it checks each archive's MD5."""

    def download(folder: Path) -> None:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        if "split" in kwargs:
            for split in ("train", "test"):
                cls(str(folder), split=split, download=True)
        else:
            for train in (True, False):
                cls(str(folder), train=train, download=True, **kwargs)

    return download


# Published sizes: CIFAR 50k/10k, MNIST and FashionMNIST 60k/10k, SVHN's train/test 73,257/26,032.
register(
    DatasetSpec(
        "cifar10",
        _read_cifar10,
        _tv_download("CIFAR10"),
        "CIFAR-10, 50k/10k, 10 classes",
        Shape(50_000, 10_000, 10, grey=False),
    )
)
register(
    DatasetSpec(
        "cifar100",
        _read_cifar100,
        _tv_download("CIFAR100"),
        "CIFAR-100, 50k/10k, 100 classes",
        Shape(50_000, 10_000, 100, grey=False),
    )
)

# --- MNIST-style IDX files ----------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format): 2 zero bytes, a dtype code, ndim, big-endian dims, data."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path.name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path.name} holds {data.size} bytes, its header says {dims}")
    return data.reshape(dims)


def grey28_to_rgb32(images: np.ndarray) -> np.ndarray:
    """Pad 28×28 grey images by 2 pixels per side to 32×32 and copy grey to 3 channels."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.ascontiguousarray(np.repeat(padded[..., None], 3, axis=3))


def _mnist_reader(name: str, tv_folder: str, classes: tuple[str, ...]) -> Callable[[Path], ImageDataset]:
    def read(folder: Path) -> ImageDataset:
        raw = folder / tv_folder / "raw"

        def split(prefix: str) -> Split:
            images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
            labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
            return Split(grey28_to_rgb32(images), labels)

        return make_dataset(name, split("train"), split("t10k"), classes)

    return read


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
            "Ankle boot")  # fmt: skip
_DIGIT_NAMES = tuple(str(d) for d in range(10))
register(
    DatasetSpec(
        "mnist",
        _mnist_reader("mnist", "MNIST", _DIGIT_NAMES),
        _tv_download("MNIST"),
        "MNIST padded to 32×32×3",
        Shape(60_000, 10_000, 10, grey=True),
    )
)
register(
    DatasetSpec(
        "fashionmnist",
        _mnist_reader("fashionmnist", "FashionMNIST", _FASHION),
        _tv_download("FashionMNIST"),
        "FashionMNIST padded to 32×32×3",
        Shape(60_000, 10_000, 10, grey=True),
    )
)

# --- SVHN: MATLAB files -------------------------------------------------------------------------


def _read_svhn(folder: Path) -> ImageDataset:
    from scipy.io import loadmat

    def split(name: str) -> Split:
        mat = loadmat(folder / f"{name}_32x32.mat")
        images = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # the digit 0 is stored as 10
        return Split(images, labels)

    return make_dataset("svhn", split("train"), split("test"), _DIGIT_NAMES)


register(
    DatasetSpec(
        "svhn",
        _read_svhn,
        _tv_download("SVHN", split=True),
        "SVHN train/test splits",
        Shape(73_257, 26_032, 10, grey=False),
    )
)

# --- digits: embedded in scikit-learn -----------------------------------------------------------


def _read_digits(_: Path) -> ImageDataset:
    """scikit-learn's 8×8 handwritten digits, bilinearly upscaled to 32×32×3; a fixed 80/20 split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    grey = (big[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=3))
    labels = digits.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    return make_dataset("digits", Split(images[tr], labels[tr]), Split(images[te], labels[te]), _DIGIT_NAMES)


register(
    DatasetSpec(
        "digits",
        _read_digits,
        None,
        "scikit-learn digits upscaled to 32×32×3 (embedded)",
        Shape(1_437, 360, 10, grey=True),
    )
)
