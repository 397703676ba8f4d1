"""Significance tests used by every table: one-sided Welch t-tests and Benjamini–Hochberg.

The paper compares 10-trial means with a one-sided Welch test (unequal variances, because poisoned
searches are visibly noisier than clean ones) and controls the false discovery rate per NAS
algorithm. Published tables give only (mean, std, n), so each test accepts summary statistics as
well as raw per-trial values; both go through scipy so they agree to floating-point precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats

Alternative = Literal["less", "greater", "two-sided"]


@dataclass(frozen=True)
class Summary:
    """A condition as papers report it: mean, sample std (ddof=1) and number of trials."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class WelchResult:
    """Welch's t statistic and its p-value under the chosen alternative."""

    statistic: float
    p_value: float


def summarise(values: Sequence[float] | np.ndarray) -> Summary:
    """Reduce raw trials to what a paper prints, with ddof=1 so it matches published stds."""
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return Summary(mean=float(x.mean()), std=std, n=int(x.size))


def welch(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: Alternative = "less"
) -> WelchResult:
    """Welch's t-test on raw trials; ``alternative="less"`` means H1: mean(a) < mean(b)."""
    res = scipy.stats.ttest_ind(
        np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_var=False, alternative=alternative
    )
    return WelchResult(float(res.statistic), float(res.pvalue))


def welch_from_summary(a: Summary, b: Summary, alternative: Alternative = "less") -> WelchResult:
    """Welch's t-test from (mean, std, n), so published tables can be re-analysed without raw data."""
    res = scipy.stats.ttest_ind_from_stats(
        a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False, alternative=alternative
    )
    return WelchResult(float(res.statistic), float(res.pvalue))


def benjamini_hochberg(
    p_values: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """BH-adjusted p-values and the reject mask (adjusted p ≤ α) for one family of tests.

    A NaN p-value (a condition with a single trial, or two zero-variance groups) is not a test: it
    stays NaN, is never rejected and does not enlarge the family.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = scipy.stats.false_discovery_control(p[finite], method="bh")
    reject = np.zeros(p.shape, dtype=bool)
    reject[finite] = adjusted[finite] <= alpha
    return adjusted, reject


def delta_imp(accuracy: float | np.ndarray, baseline: float | np.ndarray) -> float | np.ndarray:
    """ΔImp.: percentage points gained over a random architecture from the same search space."""
    return np.subtract(accuracy, baseline)
