"""At most N batches per loop over data, while a cap is active: how the preflight runs a paper-sized
stage for a few steps instead of whole epochs.

Every loop over a dataset's batches (``DeviceData.batches``, gradient canceling's chunks, the
denoising, feature and scoring batches) iterates through :func:`capped`, so one context manager
bounds them all without a parameter threaded through each stage. A capped run computes its
quantities over the batches it saw (means, accuracies and gradients stay finite) and its numbers
mean nothing; nothing but the preflight sets a cap. Without one, :func:`capped` returns its argument
itself: no behaviour changes and no per-batch cost (one context-variable read per loop).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_CAP: ContextVar[int | None] = ContextVar("nasaudit_batch_cap", default=None)


@contextmanager
def batch_cap(batches: int) -> Iterator[None]:
    """Inside the block, every capped loop stops after ``batches`` batches (≥ 1)."""
    if batches < 1:
        raise ValueError(f"a batch cap must be ≥ 1, got {batches}")
    token = _CAP.set(batches)
    try:
        yield
    finally:
        _CAP.reset(token)


def active_cap() -> int | None:
    """The cap in force, or None (the normal case)."""
    return _CAP.get()


def capped(items: Iterable[T]) -> Iterable[T]:
    """``items`` itself, or its first ``cap`` items while a cap is active."""
    cap = _CAP.get()
    return items if cap is None else itertools.islice(items, cap)


def fill_skipped(rows: np.ndarray, n: int) -> np.ndarray:
    """Per-sample results of a loop, ``n`` rows long: under a cap that cut the loop short, the rows it
    computed repeated to ``n`` (so a capped stage writes files shaped as the full run's); otherwise
    ``rows`` unchanged."""
    if len(rows) == n or _CAP.get() is None:
        return rows
    return np.resize(rows, (n, *rows.shape[1:]))
