"""Welch and Benjamini–Hochberg checked against values worked by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from nasaudit.stats import Summary, benjamini_hochberg, delta_imp, summarise, welch, welch_from_summary

A = [96.9, 97.1, 96.8, 97.0, 96.7]  # a "poisoned" condition
B = [97.3, 97.2, 97.4, 97.1, 97.35, 97.25]  # its "clean" counterpart


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t and the Welch–Satterthwaite degrees of freedom, straight from the formulas."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2a, se2b = va / na, vb / nb
    t = (ma - mb) / math.sqrt(se2a + se2b)
    df = (se2a + se2b) ** 2 / (se2a**2 / (na - 1) + se2b**2 / (nb - 1))
    return t, df


def test_welch_matches_the_formulas() -> None:
    t, df = _welch_by_hand(A, B)
    less = welch(A, B, "less")
    assert less.statistic == pytest.approx(t)
    assert less.p_value == pytest.approx(scipy.stats.t.cdf(t, df))
    assert welch(A, B, "greater").p_value == pytest.approx(scipy.stats.t.sf(t, df))
    assert less.p_value < 0.01  # A is clearly lower: the direction parameter is not inverted


def test_summary_and_raw_inputs_agree() -> None:
    raw = welch(A, B, "less")
    from_stats = welch_from_summary(summarise(A), summarise(B), "less")
    assert from_stats.statistic == pytest.approx(raw.statistic, rel=1e-12)
    assert from_stats.p_value == pytest.approx(raw.p_value, rel=1e-12)


def test_summarise_uses_the_sample_std_papers_print() -> None:
    s = summarise([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert math.isnan(summarise([97.0]).std)


def test_welch_from_published_summary() -> None:
    # Table 1, P-DARTS CIFAR-10: RLF p=50% (96.77 ± 0.38) against no attack (97.32 ± 0.07), n = 10.
    se2a, se2b = 0.38**2 / 10, 0.07**2 / 10
    t = (96.77 - 97.32) / math.sqrt(se2a + se2b)
    df = (se2a + se2b) ** 2 / (se2a**2 / 9 + se2b**2 / 9)
    res = welch_from_summary(Summary(96.77, 0.38, 10), Summary(97.32, 0.07, 10), "less")
    assert res.p_value == pytest.approx(scipy.stats.t.cdf(t, df))


def test_benjamini_hochberg_hand_worked() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 (m = 4): p·m/rank = 0.02, 0.02, 0.04, 0.04, already monotone.
    adjusted, reject = benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.02, 0.04, 0.04, 0.02])
    assert reject.tolist() == [True, True, True, True]
    _, reject = benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.03)
    assert reject.tolist() == [True, False, False, True]


def test_benjamini_hochberg_steps_up() -> None:
    # 0.04 > α/3, yet rejected: the largest p (0.049 ≤ α·3/3) carries the smaller ones with it.
    # p·m/rank = 0.12, 0.0675, 0.049 → running minimum from the top: 0.049 for all three.
    adjusted, reject = benjamini_hochberg([0.04, 0.045, 0.049], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.049, 0.049, 0.049])
    assert reject.all()


def test_benjamini_hochberg_skips_untestable_cells() -> None:
    # NaN is not a test: the family is {0.01, 0.04} (m = 2) → 0.02, 0.04.
    adjusted, reject = benjamini_hochberg([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(adjusted, [0.02, np.nan, 0.04])
    assert reject.tolist() == [True, False, True]


def test_delta_imp_is_percentage_points_over_random() -> None:
    assert delta_imp(97.32, 96.73) == pytest.approx(0.59)
    np.testing.assert_allclose(delta_imp(np.array([82.58, 79.64]), 80.70), [1.88, -1.06])
