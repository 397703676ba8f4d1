"""Attack properties shared by the registry, and the label/noise attacks' own guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasaudit.attacks import ATTACKS, AttackContext, run_attack
from nasaudit.attacks.gaussian import EPSILON
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError

# Attacks that need nothing but the data; the others get their own tests with a victim or surrogate.
DATA_ONLY = ["gaussian", "rlf"]
SURROGATE = ["clf"]  # tests/test_attacks_clf.py
VICTIM = ["gc", "nas_gc"]  # tests/test_attacks_gc.py, tests/test_victim.py


@pytest.fixture
def context(tmp_path) -> AttackContext:
    return AttackContext(load_profile("smoke"), torch.device("cpu"), tmp_path)


@pytest.mark.parametrize("name", DATA_ONLY)
@pytest.mark.parametrize("budget", [0.01, 0.1, 0.5, 1.0])
def test_budget_gives_round_n_p_samples(digits, context, name, budget) -> None:
    poison = run_attack(name, digits, budget, 0, context)
    assert len(poison.indices) == round(1437 * budget) == len(np.unique(poison.indices))


@pytest.mark.parametrize("name", DATA_ONLY)
def test_same_seed_same_poison(digits, context, name) -> None:
    a, b, c = (run_attack(name, digits, 0.1, s, context) for s in (5, 5, 6))
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)
    payload = "labels" if a.labels is not None else "images"
    assert np.array_equal(getattr(a, payload), getattr(b, payload))


def test_every_registered_attack_is_covered_by_a_test_group() -> None:
    assert sorted(DATA_ONLY + SURROGATE + VICTIM) == ATTACKS.names()


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.01])
def test_budget_outside_unit_interval_is_refused(digits, context, budget) -> None:
    with pytest.raises(NasauditError, match="outside"):
        run_attack("rlf", digits, budget, 0, context)


def test_rlf_never_keeps_a_label_and_spreads_over_the_others(digits, context) -> None:
    poison = run_attack("rlf", digits, 1.0, 0, context)
    original = digits.train.labels[poison.indices]
    assert (poison.labels != original).all()
    offsets = (poison.labels - original) % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 100  # all nine other classes are used


def test_gaussian_respects_the_linf_bound_and_range(digits, context) -> None:
    poison = run_attack("gaussian", digits, 0.5, 0, context)
    diff = poison.images.astype(int) - digits.train.images[poison.indices].astype(int)
    assert np.abs(diff).max() <= round(EPSILON * 255) == 16
    assert diff.std() > 5  # noise of σ = 16/255 is really there (clipping and clamping shrink it a little)
    assert poison.params["sigma"] == pytest.approx(16 / 255)
