"""Cell-by-cell verdict of our tables against the paper's: values within tolerance, marks agreeing.

The expected table drives the comparison: every cell the paper prints must be present in ours and
close enough; cells we produce beyond the paper's are not judged. Tolerances are data
(``expected_results/tolerances.toml``), so tightening them is a reviewed edit, not a code change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nasaudit.config import read_toml
from nasaudit.errors import NasauditError
from nasaudit.report.published import TOLERANCES

KEY_COLUMNS = ("table", "dataset", "search_dataset", "algorithm", "defense", "metric", "attack", "budget")
_EPS = 1e-9  # printed values have two decimals; keep 0.1 + 0.3 from failing a 0.4 tolerance


def tolerance_for(name: str, expected: pd.DataFrame, path: Path = TOLERANCES) -> pd.Series:
    """Per-cell absolute tolerance for table ``name``: its default, overridden by column value."""
    config = read_toml(path)
    if name not in config:
        raise NasauditError(f"no tolerance for {name} in {path}; add a [{name}] section")
    section = config[name]
    tolerance = pd.Series(float(section["default"]), index=expected.index)
    for column, values in section.get("by", {}).items():
        for value, tol in values.items():
            tolerance[expected[column].astype(str) == value] = float(tol)
    return tolerance


def compare(
    expected: pd.DataFrame,
    ours: pd.DataFrame,
    tolerance: float | pd.Series,
    value: str = "mean",
    carry: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per expected cell: expected, ours, difference, tolerance, within, marks and agreement.

    ``tolerance`` is one number or a Series aligned with ``expected`` (see ``tolerance_for``).
    Significance columns appear when both tables carry a ``significant`` column. Each ``carry``
    column comes along unjudged as ``expected_COLUMN`` and ``ours_COLUMN`` from the table that has it
    (stds, trial counts, ΔImp. for a report).
    """
    lacking = [k for k in KEY_COLUMNS if k in expected.columns and k not in ours.columns and k != "table"]
    if lacking:
        raise NasauditError(f"our table lacks the key column(s) {', '.join(lacking)} that the paper's has")
    keys = [k for k in KEY_COLUMNS if k in expected.columns and k in ours.columns]
    with_marks = "significant" in expected.columns and "significant" in ours.columns
    left = _keyed(expected, keys).assign(expected=expected[value], tolerance=tolerance)
    right = _keyed(ours, keys).assign(ours=ours[value])
    if with_marks:
        left["expected_significant"] = expected["significant"].astype(bool)
        right["ours_significant"] = ours["significant"].astype(bool)
    for column in carry:
        for side, frame, name in ((left, expected, "expected"), (right, ours, "ours")):
            if column in frame.columns:
                side[f"{name}_{column}"] = frame[column]
    if right.duplicated(keys).any():
        raise NasauditError(
            f"our table has two rows for one cell of {', '.join(keys)}; summarise trials first"
        )
    table = left.merge(right, on=keys, how="left")
    table["difference"] = table["ours"] - table["expected"]
    table["within"] = (table["difference"].abs() <= table["tolerance"] + _EPS).fillna(False)
    columns = [*keys, "expected", "ours", "difference", "tolerance", "within"]
    if with_marks:
        table["significance_agrees"] = (table["expected_significant"] == table["ours_significant"]).fillna(
            False
        )
        columns += ["expected_significant", "ours_significant", "significance_agrees"]
    carried = [
        f"{name}_{c}" for c in carry for name in ("expected", "ours") if f"{name}_{c}" in table.columns
    ]
    return table[columns + carried]


def agrees(comparison: pd.DataFrame) -> bool:
    """The summary verdict: every cell within tolerance and, where marks exist, every mark agreeing."""
    ok = comparison["within"].all()
    if "significance_agrees" in comparison.columns:
        ok &= comparison["significance_agrees"].all()
    return bool(ok)


def _keyed(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Key columns with budgets rounded, so 0.1 computed and 0.1 parsed from CSV pair up."""
    out = frame[keys].copy()
    if "budget" in out.columns:
        out["budget"] = np.round(out["budget"].astype(float), 6)
    return out
