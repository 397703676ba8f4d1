"""At most N batches per loop over data (and, optionally, at most M images per batch) while a cap is
active: how the preflight runs a paper-sized stage for a few steps instead of whole epochs.

Every loop over a dataset's batches (``DeviceData.batches``, gradient canceling's chunks, the
denoising and feature batches) iterates through :func:`capped` and sizes its batches with
:func:`capped_size`, so one context manager bounds them all without a parameter threaded through each
stage. A capped run computes its quantities over the batches it saw (means, accuracies and gradients
stay finite) and its numbers mean nothing; nothing but the preflight sets a cap. Without one, both
functions return their argument itself: no behaviour changes and no per-batch cost (one
context-variable read per loop).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Cap:
    batches: int  # per loop
    images: int | None  # per batch; None keeps every loop's own batch size


_CAP: ContextVar[Cap | None] = ContextVar("nasaudit_batch_cap", default=None)


@contextmanager
def batch_cap(batches: int, images: int | None = None) -> Iterator[None]:
    """Inside the block, every capped loop stops after ``batches`` batches of at most ``images`` each."""
    if batches < 1 or (images is not None and images < 1):
        raise ValueError(f"a batch cap needs batches ≥ 1 and images ≥ 1 or None, got {batches}, {images}")
    token = _CAP.set(Cap(batches, images))
    try:
        yield
    finally:
        _CAP.reset(token)


def active_cap() -> Cap | None:
    """The cap in force, or None (the normal case)."""
    return _CAP.get()


def capped(items: Iterable[T]) -> Iterable[T]:
    """``items`` itself, or its first ``batches`` items while a cap is active."""
    cap = _CAP.get()
    return items if cap is None else itertools.islice(items, cap.batches)


def capped_size(size: int) -> int:
    """A loop's batch size: ``size`` itself, or at most the cap's ``images`` while one is active."""
    cap = _CAP.get()
    return size if cap is None or cap.images is None else min(size, cap.images)


def fill_skipped(rows: np.ndarray, n: int) -> np.ndarray:
    """Per-sample results of a loop, ``n`` rows long: under a cap that cut the loop short, the rows it
    computed repeated to ``n`` (so a capped stage writes files shaped as the full run's); otherwise
    ``rows`` unchanged."""
    if len(rows) == n or _CAP.get() is None:
        return rows
    return np.resize(rows, (n, *rows.shape[1:]))
