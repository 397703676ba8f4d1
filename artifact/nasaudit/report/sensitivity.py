"""Table 2 (paper §5.2) from per-architecture metric values: relative changes, tidy CSV, Markdown, verdict.

Cells are keyed like ``expected_results/published/table2.csv`` (metric ``ntk`` for κ_NTK), so the
comparison with the paper is the common ``report.compare``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from nasaudit.io import write_bytes
from nasaudit.proxies import relative_change
from nasaudit.report.compare import compare, tolerance_for
from nasaudit.report.published import load_published
from nasaudit.report.tables import ORDER, display_name

CLEAN = "clean"  # the data version every poisoned one is compared with
CSV_COLUMNS = ("table", "dataset", "algorithm", "metric", "attack", "budget", "n", "mean", "std")
#: The published table's key of a metric where it differs from the PROXIES name.
TABLE_METRIC = {"ntk_cond": "ntk"}
METRIC_LABELS = {"ntk": "κ_NTK", "linear_regions": "R"}


def summarise(
    values: Sequence[tuple[int, Mapping[str, Mapping[str, float]]]],
    budgets: Mapping[str, float],
    algorithms: Mapping[str, str],
    dataset: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Table 2 as tidy rows, every architecture's change): mean and sample std over architectures.

    ``values`` holds per architecture its index and its metric values per data version (``clean`` and
    one per attack in ``budgets``); ``algorithms`` maps each metric to the NAS algorithm using it. An
    architecture whose clean or poisoned value is not finite (or whose clean value is 0) has no
    relative change for that cell and is left out of its ``n``.
    """
    rows = []
    for index, versions in values:
        clean = versions[CLEAN]
        for attack in budgets:
            for m, algorithm in algorithms.items():
                before, after = clean[m], versions[attack][m]
                change = (
                    relative_change(before, after)
                    if math.isfinite(before) and math.isfinite(after)
                    else math.nan
                )
                rows.append(
                    {
                        "index": index,
                        "algorithm": algorithm,
                        "metric": TABLE_METRIC.get(m, m),
                        "attack": attack,
                        "clean": before,
                        "poisoned": after,
                        "change": change,
                    }
                )
    per_architecture = pd.DataFrame(rows)
    cells = []
    for (algorithm, metric, attack), group in per_architecture.groupby(
        ["algorithm", "metric", "attack"], sort=False
    ):
        changes = group["change"].to_numpy(dtype=float)
        changes = changes[np.isfinite(changes)]
        cells.append(
            {
                "table": "table2",
                "dataset": dataset,
                "algorithm": algorithm,
                "metric": metric,
                "attack": attack,
                "budget": budgets[attack],
                "n": len(changes),
                "mean": float(changes.mean()) if len(changes) else math.nan,
                "std": float(changes.std(ddof=1)) if len(changes) > 1 else math.nan,
            }
        )
    return pd.DataFrame(cells, columns=list(CSV_COLUMNS)), per_architecture


def to_markdown(table: pd.DataFrame) -> str:
    """The paper's layout: one row per attack, one column per metric grouped by algorithm."""
    attacks = _ordered(table["attack"].unique(), list(ORDER["attack"]))
    columns = list(dict.fromkeys(zip(table["algorithm"], table["metric"], strict=True)))
    cells = {(r.attack, r.algorithm, r.metric): r for r in table.itertuples(index=False)}
    headers = ["Poisoning Attack"] + [
        f"{display_name('algorithm', a)} {METRIC_LABELS.get(m, m)}" for a, m in columns
    ]
    body = []
    for attack in attacks:
        row = [display_name("attack", attack)]
        for algorithm, metric in columns:
            cell = cells.get((attack, algorithm, metric))
            row.append("–" if cell is None else f"{cell.mean:.2f} ± {cell.std:.2f}%")
        body.append(row)
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def _ordered(values: Sequence[str], known: list[str]) -> list[str]:
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), v))


def write_outputs(table: pd.DataFrame, per_architecture: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """table2.csv / .md, every architecture's change, and the cell-by-cell comparison with the paper."""
    expected = load_published("table2")
    comparison = compare(expected, table, tolerance_for("table2", expected))
    return {
        "csv": write_bytes(
            out_dir / "table2.csv", table.round({"mean": 6, "std": 6}).to_csv(index=False).encode()
        ),
        "markdown": write_bytes(out_dir / "table2.md", to_markdown(table).encode()),
        "per_architecture": write_bytes(
            out_dir / "table2_per_architecture.csv", per_architecture.to_csv(index=False).encode()
        ),
        "comparison": write_bytes(out_dir / "table2_vs_paper.csv", comparison.to_csv(index=False).encode()),
    }
