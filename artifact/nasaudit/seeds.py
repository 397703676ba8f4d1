"""The one seed derivation: every random stream a run draws besides its job's own seed comes from
``derive_seed(seed, key, ...)`` or ``rng(seed, key, ...)``.

The parts are hashed (SHA-256 of their canonical text) into the entropy of NumPy's ``SeedSequence``,
so a stream depends on its parts alone: independent across keys, identical on every machine, NumPy and
Python version (no ``hash()``, no ``seed * K + epoch`` arithmetic, which collides across keys and
overflows torch's seed range for large seeds). The first key names the component (``"pdarts"``,
``"epoch"``), so two components never share a stream by accident.
"""

from __future__ import annotations

import hashlib
from numbers import Integral

import numpy as np

SEED_BITS = 31  # accepted by torch.manual_seed, NumPy and scikit-learn's random_state alike


def _canonical(part: object) -> str:
    """An int as its decimal digits (NumPy's and Python's ints alike), anything else as its str."""
    if isinstance(part, Integral) and not isinstance(part, bool):
        return f"i{int(part)}"
    return f"s{part}"


def seed_sequence(*parts: object) -> np.random.SeedSequence:
    """The ``SeedSequence`` of ``parts`` (a seed and the keys of one use)."""
    digest = hashlib.sha256("\x1f".join(map(_canonical, parts)).encode()).digest()
    return np.random.SeedSequence(int.from_bytes(digest[:16], "little"))


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts``: one independent stream per use."""
    return int(seed_sequence(*parts).generate_state(1, np.uint32)[0]) >> (32 - SEED_BITS)


def rng(*parts: object) -> np.random.Generator:
    """A NumPy generator of the stream ``parts`` name."""
    return np.random.default_rng(seed_sequence(*parts))
