"""The results page's plots: our cells against the paper's, drawn with matplotlib and embedded as PNG.

Each function takes a table's evidence and returns a Figure, or None when the table has nothing of
ours to draw. Figures are built on ``matplotlib.figure.Figure`` (no pyplot state), so rendering a page
leaves no global state behind and needs no display.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nasaudit.report.evidence import UNITS, TableEvidence, label

WITHIN, OUTSIDE = "#2e8b57", "#c0392b"
PAPER, OURS = "#7f8c8d", "#1f5fa8"
DPI = 110


def data_uri(fig: Figure) -> str:
    """The figure as an inline ``data:image/png;base64`` URI (the page loads nothing from elsewhere)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def versus_paper(evidence: TableEvidence) -> Figure | None:
    """Ours against the paper's, one point per cell with both stds as error bars, and the identity line.

    Green: within tolerance, red: outside; a cross marks a significance mark that disagrees.
    """
    cells = evidence.cells[evidence.present]
    if cells.empty:
        return None
    unit = UNITS.get(evidence.name, "accuracy, %")
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    ax = fig.subplots()
    agree = (
        cells["significance_agrees"]
        if "significance_agrees" in cells.columns
        else pd.Series(True, cells.index)
    )
    for within in (True, False):
        for marks in (True, False):
            part = cells[(cells["within"] == within) & (agree == marks)]
            if part.empty:
                continue
            ax.errorbar(
                part["expected"],
                part["ours"],
                xerr=_std(part, "expected_std"),
                yerr=_std(part, "ours_std"),
                fmt="o" if marks else "X",
                color=WITHIN if within else OUTSIDE,
                ecolor="#bbbbbb",
                markersize=6 if marks else 8,
                capsize=2,
                linestyle="none",
            )
    values = np.concatenate([cells["expected"].to_numpy(float), cells["ours"].to_numpy(float)])
    low, high = float(values.min()), float(values.max())
    pad = max(0.05 * (high - low), 0.5)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#555555", linewidth=1, linestyle="--")
    if evidence.name == "table2":  # relative changes span 0.1 % to hundreds of %
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"paper ({unit})")
    ax.set_ylabel(f"ours ({unit})")
    ax.set_title(f"{evidence.name}: ours vs paper per cell", fontsize=10)
    ax.legend(
        handles=[
            Line2D([], [], marker="o", color=WITHIN, linestyle="none", label="within tolerance"),
            Line2D([], [], marker="o", color=OUTSIDE, linestyle="none", label="outside tolerance"),
            Line2D([], [], marker="X", color="#444444", linestyle="none", label="marks disagree"),
            Line2D([], [], color="#555555", linestyle="--", label="ours = paper"),
        ],
        fontsize=7,
        loc="best",
    )
    ax.grid(alpha=0.3)
    return fig


def delta_imp_by_budget(evidence: TableEvidence) -> Figure | None:
    """ΔImp. per attack and budget, one panel per (dataset, algorithm): paper dashed, ours solid with
    ± std; the clean search as a horizontal line."""
    cells = evidence.cells
    if not {"attack", "budget"} <= set(evidence.keys) or {"defense", "search_dataset"} & set(evidence.keys):
        return None
    if "ours_delta_imp" not in cells.columns or not cells["ours_delta_imp"].notna().any():
        return None
    drawn = cells[cells["ours_delta_imp"].notna()]  # a panel for each (dataset, algorithm) we have
    groups = list(dict.fromkeys(zip(drawn["dataset"], drawn["algorithm"], strict=True)))
    budgets = sorted(b for b in cells["budget"].unique() if b > 0)
    attacks = [a for a in dict.fromkeys(cells["attack"]) if a != "none"]
    colours = dict(
        zip(attacks, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"), strict=False)
    )
    fig = Figure(figsize=(3.3 * len(groups), 3.3), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (dataset, algorithm) in zip(axes, groups, strict=True):
        group = cells[(cells["dataset"] == dataset) & (cells["algorithm"] == algorithm)]
        _clean_lines(ax, group)
        for attack in attacks:
            rows = group[group["attack"] == attack].set_index("budget").reindex(budgets)
            x = np.arange(len(budgets))
            ax.plot(
                x, rows["expected_delta_imp"], linestyle="--", marker=".", color=colours[attack], alpha=0.6
            )
            ours = rows["ours_delta_imp"].to_numpy(float)
            if np.isfinite(ours).any():
                ax.errorbar(
                    x, ours, yerr=_std(rows, "ours_std"), marker="o", color=colours[attack], capsize=2
                )
        ax.set_xticks(range(len(budgets)), [label("budget", b) for b in budgets])
        ax.set_xlabel("poisoning budget p")
        ax.set_title(f"{label('dataset', dataset)} {label('algorithm', algorithm)}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ΔImp. (pp)")
    handles = [Line2D([], [], color=colours[a], label=label("attack", a)) for a in attacks]
    handles += [
        Line2D([], [], color="#444444", label="ours (± std)"),
        Line2D([], [], color="#444444", linestyle="--", alpha=0.6, label="paper"),
        Line2D([], [], color="#444444", linestyle=":", label="clean search"),
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    return fig


def metric_changes(evidence: TableEvidence) -> Figure | None:
    """Table 2: the mean relative change of each metric per attack, ours beside the paper's, ± std."""
    cells = evidence.cells
    if not evidence.present.any():
        return None
    attacks = list(dict.fromkeys(cells["attack"]))
    metrics = list(dict.fromkeys(cells["metric"]))
    fig = Figure(figsize=(3.2 * len(attacks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(attacks), squeeze=False, sharey=True)[0]
    x = np.arange(len(metrics))
    for ax, attack in zip(axes, attacks, strict=True):
        rows = cells[cells["attack"] == attack].set_index("metric").reindex(metrics)
        for offset, column, colour, name in ((-0.2, "expected", PAPER, "paper"), (0.2, "ours", OURS, "ours")):
            std = _std(rows, f"{column}_std")
            ax.bar(x + offset, rows[column].fillna(0.0), width=0.4, color=colour, label=name)
            ax.errorbar(x + offset, rows[column], yerr=std, fmt="none", ecolor="#333333", capsize=2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xticks(x, [label("metric", m) for m in metrics], rotation=45, fontsize=8)
        ax.axhline(0.0, color="#333333", linewidth=0.8)
        ax.set_title(label("attack", attack), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("mean change (%), symlog")
    axes[0].legend(fontsize=7)
    return fig


def _clean_lines(ax: Axes, group: pd.DataFrame) -> None:
    clean = group[group["attack"] == "none"]
    if clean.empty:
        return
    row = clean.iloc[0]
    ax.axhline(row["expected_delta_imp"], color="#444444", linestyle=":", alpha=0.6)
    if np.isfinite(row.get("ours_delta_imp", np.nan)):
        ax.axhline(row["ours_delta_imp"], color="#444444", linestyle=":")


def _std(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A std column as error bars (0 where unknown: a single trial, or a column the table lacks)."""
    if column not in frame.columns:
        return np.zeros(len(frame))
    return np.nan_to_num(frame[column].to_numpy(float), nan=0.0)
