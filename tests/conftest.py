"""Shared fixtures: the embedded dataset and tiny dataset files written in the real on-disk formats."""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nasaudit.config import PROFILE_DIR, apply_overrides, read_toml
from nasaudit.costs import IMAGE, Timer
from nasaudit.data.datasets import ImageDataset, Split, load_dataset, make_dataset

torch.set_num_threads(1)
# Every entry point sizes its threads (nasaudit.threads), and respects OMP_NUM_THREADS: the commands
# tests run in this process and the workers they start keep to one thread, as the tests themselves do.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` need a GPU: skipped without one (CI), run on a GPU machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (`make test-all` on a GPU machine runs it)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return load_dataset("digits")


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    """40 random 32×32×3 images in 4 classes: fast enough for anything."""
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        return Split(images, np.arange(n, dtype=np.int64) % 4)

    return make_dataset("tiny", split(40), split(12), ("a", "b", "c", "d"))


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    """The python-pickle batch format of the CIFAR archives (N×3072 uint8 rows, channel-major)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"data": data, label_key: [int(v) for v in labels], "batch_label": "test"}, f)


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: 0, 0, 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _toml(value: object) -> str:
    """One value as TOML (every table inline), enough for a profile's strings, numbers, lists, tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def profile_file(path: Path, *overrides: str, base: str | Path = "smoke") -> Path:
    """Write ``base`` (a profile name or file) with ``--set`` style overrides applied to ``path``.

    The overrides go through ``config.apply_overrides``, the function behind ``--set``.
    """
    source = Path(base) if Path(base).suffix == ".toml" else PROFILE_DIR / f"{base}.toml"
    table = apply_overrides(read_toml(source), overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in table.items()))
    return path


FORWARD = 1e-3  # seconds per image of a forward pass under ImageCounter (cost-model tests)
KAPPA = 10.0  # seconds per κ_NTK under ImageCounter (cost-model tests)


class ImageCounter(Timer):
    """A training step costs 1 s per image and a forward pass 1 ms: a cost model returns image counts."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))

    def per_image(self, network, build, batch, *, shape=IMAGE, precision="fp32") -> float:  # type: ignore[no-untyped-def]
        return 1.0

    def forward_per_image(self, network, build, batch, *, shape=IMAGE, precision="fp32") -> float:  # type: ignore[no-untyped-def]
        return FORWARD

    def kappa(self, network, build, batch) -> float:  # type: ignore[no-untyped-def]
        return KAPPA


#: What a stand-in TensorBoard stored: {run folder: {tag: [(step, value), ...]}}.
Runs = dict[str, dict[str, list[tuple[int, float]]]]


class FakeWriter:
    """A stand-in ``SummaryWriter``: keeps the ``add_scalar`` calls of its run folder in ``runs``."""

    def __init__(self, runs: Runs, log_dir: str) -> None:
        self.scalars = runs.setdefault(log_dir, {})

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def tensorboard(monkeypatch, tmp_path) -> Runs:  # type: ignore[no-untyped-def]
    """``--tensorboard TMP/tb`` with a stand-in writer; the scalars each run received."""
    from nasaudit import metrics_log

    runs: Runs = {}
    monkeypatch.setattr(metrics_log, "summary_writer", lambda: functools.partial(FakeWriter, runs))
    monkeypatch.setattr(metrics_log, "_writers", {})
    monkeypatch.setenv(metrics_log.ENV, str(tmp_path / "tb"))
    return runs
