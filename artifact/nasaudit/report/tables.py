"""The paper's result tables: ΔImp., one-sided Welch p-values, BH marks, and CSV/Markdown/LaTeX forms.

A table is a tidy frame with one row per cell (a condition's mean, std and n), so the same rows feed
the CSV, the rendered layouts and the comparison with the paper; the paper's grid layout (rows:
attack × budget, columns: dataset × algorithm with Acc. and ΔImp.) exists only at render time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from nasaudit.errors import NasauditError
from nasaudit.io import write_bytes
from nasaudit.report.published import PUBLISHED_DIR, load_published
from nasaudit.stats import Alternative, Summary, benjamini_hochberg, delta_imp, welch_from_summary

CONDITION_KEYS = ("dataset", "search_dataset", "algorithm", "defense", "metric", "attack", "budget")
COLUMN_KEYS = ("dataset", "algorithm")
ROW_KEYS = ("search_dataset", "defense", "attack", "budget")
CSV_COLUMNS = (
    "table",
    "dataset",
    "search_dataset",
    "algorithm",
    "defense",
    "attack",
    "budget",
    "n",
    "mean",
    "std",
    "delta_imp",
    "p_value",
    "p_adjusted",
    "significant",
)

# Display names of what is not a registered algorithm, attack or defense (those carry their own ``label``).
_DATASETS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "svhn": "SVHN",
}
LABELS: dict[str, dict[Any, str]] = {
    "dataset": _DATASETS,
    "search_dataset": _DATASETS,
    "attack": {"none": "None"},
}
# The paper's row/column order of each key; anything else (a new algorithm or attack) follows, sorted.
ORDER: dict[str, tuple[str, ...]] = {
    "dataset": tuple(_DATASETS),
    "search_dataset": tuple(_DATASETS),
    "algorithm": ("pdarts", "robot", "tenas", "nsganetv2"),
    "defense": ("relabel", "denoise", "sanitize"),
    "attack": ("none", "gaussian", "nas_gc", "rlf", "clf", "rlf/clf"),
}


def display_name(column: str, value: Any) -> str:
    """A key's name as the paper prints it: a registered algorithm's, attack's or defense's ``label``
    (``a/b``, one defended condition against two attacks, joins theirs), else the tables' own, else
    the key."""
    from nasaudit.attacks import ATTACKS
    from nasaudit.defenses import DEFENSES
    from nasaudit.nas import NAS

    registry = {"algorithm": NAS, "attack": ATTACKS, "defense": DEFENSES}.get(column)
    if registry is not None and isinstance(value, str):
        parts = value.split("/")
        if all(part in registry for part in parts):
            return "/".join(registry.get(part).label for part in parts)
    return LABELS.get(column, {}).get(value, str(value))


HEADERS = {
    "search_dataset": "Training Dataset",
    "defense": "Defense",
    "attack": "Poisoning Attack",
    "budget": "p",
}
_MISSING = "–"
Cell = tuple[float, float, float, bool]  # mean, std, ΔImp., significant


Rows = Callable[[pd.DataFrame], pd.Series]  # a table's rows -> which of them are reference rows


@dataclass(frozen=True)
class Design:
    """How a table decides significance: which row each cell is tested against, and how.

    ``reference`` picks the reference rows (the clean search for Tables 1, 5, 6; the search on the
    test dataset itself for Table 3; the undefended poisoned cells for Table 4). A cell is paired with
    the reference row that shares its ``on`` columns. ``against`` names the published table holding
    the reference rows when they are not printed in the table itself (``show_reference`` False).
    """

    reference: Rows
    on: tuple[str, ...] = ("dataset", "algorithm")
    alternative: Alternative = "less"
    correct: bool = True
    against: str | None = None
    show_reference: bool = True


def _undefended(frame: pd.DataFrame) -> pd.Series:
    """Rows without a defense: empty in our tables, absent (NaN) in a table read from CSV."""
    return frame["defense"].fillna("") == "" if "defense" in frame.columns else pd.Series(True, frame.index)


POISONING = Design(lambda frame: frame["attack"] == "none")
# §4.2 (and App. A, B): H1 poisoned < clean, BH per NAS algorithm; §5.3 the same against the search on
# the test dataset itself; §6.1: H1 defended > poisoned (same attack, p = 50%), α = 0.05, no correction.
DESIGNS: dict[str, Design] = {
    "table1": POISONING,
    "table3": Design(lambda frame: frame["search_dataset"] == frame["dataset"]),
    "table4": Design(
        _undefended,
        on=("dataset", "algorithm", "attack", "budget"),
        alternative="greater",
        correct=False,
        against="table1",
        show_reference=False,
    ),
    "table5": POISONING,
    "table6": POISONING,
}


def summarise_trials(trials: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Raw per-trial results → one (mean, std with ddof=1, n) row per condition, as papers print them."""
    if value not in trials.columns:
        raise NasauditError(f"per-trial results need a {value!r} column; found {', '.join(trials.columns)}")
    keys = [k for k in CONDITION_KEYS if k in trials.columns]
    return trials.groupby(keys, sort=False)[value].agg(mean="mean", std="std", n="size").reset_index()


def add_delta_imp(frame: pd.DataFrame, baselines: pd.DataFrame, allow_missing: bool = False) -> pd.DataFrame:
    """ΔImp. of every cell against the random baseline of its dataset and algorithm's search space
    (NaN where a partial grid has no baseline yet, with ``allow_missing``)."""
    base = baselines[["dataset", "algorithm", "mean"]].rename(columns={"mean": "_baseline"})
    out = frame.merge(base, on=["dataset", "algorithm"], how="left", validate="many_to_one")
    missing = out.loc[out["_baseline"].isna(), ["dataset", "algorithm"]].drop_duplicates()
    if len(missing) and not allow_missing:
        pairs = ", ".join(f"{d}/{a}" for d, a in missing.itertuples(index=False))
        raise NasauditError(f"no random baseline for {pairs}; add it to baselines.csv")
    out["delta_imp"] = delta_imp(out["mean"], out["_baseline"])
    return out.drop(columns="_baseline")


def add_significance(
    frame: pd.DataFrame,
    design: Design = POISONING,
    *,
    reference_frame: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Add ``p_value``, ``p_adjusted`` and ``significant`` following the table's design.

    Reference rows are not tested (NaN p-value). A cell whose reference is missing (a grid still
    running) is left untested rather than failing the whole table. With ``correct`` the family is
    every p-value of one NAS algorithm, across datasets, as the paper states ("for each model").
    """
    if reference_frame is None:
        is_reference = design.reference(frame)
        references, cells = frame[is_reference], frame[~is_reference]
    else:
        references, cells = reference_frame[design.reference(reference_frame)], frame
    out = frame.copy()
    out["p_value"] = _p_values(cells, references, design.on, design.alternative).reindex(out.index)
    if not design.correct:
        out["p_adjusted"] = out["p_value"]
        out["significant"] = out["p_value"] <= alpha
        return out
    out["p_adjusted"] = np.nan
    out["significant"] = False
    for index in out.groupby("algorithm").groups.values():
        adjusted, reject = benjamini_hochberg(out.loc[index, "p_value"].to_numpy(), alpha)
        out.loc[index, "p_adjusted"] = adjusted
        out.loc[index, "significant"] = reject
    return out


def build_table(
    frame: pd.DataFrame,
    baselines: pd.DataFrame,
    design: Design = POISONING,
    alpha: float = 0.05,
    allow_missing_baselines: bool = False,
) -> pd.DataFrame:
    """Our table from per-condition summaries or raw trials (an ``accuracy`` column), reference rows
    included; they are tested against and then dropped when the design does not print them."""
    summary = frame if "mean" in frame.columns else summarise_trials(frame)
    _require(summary, ("dataset", "algorithm", "mean", "std", "n"))
    table = add_significance(add_delta_imp(summary, baselines, allow_missing_baselines), design, alpha=alpha)
    if not design.show_reference:
        table = table[~design.reference(table)].reset_index(drop=True)
    return table


def from_published(name: str, directory: Path = PUBLISHED_DIR, alpha: float = 0.05) -> pd.DataFrame:
    """Recompute a published table's significance marks from its printed means and stds alone.

    ΔImp. stays as printed (the paper computed it from unrounded means). The published marks are
    dropped so the returned ``significant`` column is ours, to be compared with the paper's.
    """
    if name not in DESIGNS:
        raise NasauditError(
            f"{name} has no significance marks to recompute; choose one of: {', '.join(DESIGNS)}"
        )
    design = DESIGNS[name]
    published = load_published(name, directory).drop(columns="significant")
    reference = load_published(design.against, directory) if design.against else None
    return add_significance(published, design, reference_frame=reference, alpha=alpha)


def to_markdown(frame: pd.DataFrame) -> str:
    """The paper's layout as a GitHub Markdown table; significant cells as ``<u>**…**</u>``."""
    row_keys, groups, rows = _layout(frame)
    headers = [HEADERS[k] for k in row_keys]
    for dataset, algorithm in groups:
        prefix = f"{_label('dataset', dataset)} {_label('algorithm', algorithm)}"
        headers += [f"{prefix} Acc.", f"{prefix} ΔImp."]
    body = [
        labels + [_mark_md(text, sig) for acc, dimp, sig in cells for text in (acc, dimp)]
        for labels, cells in _rendered_rows(row_keys, rows, "± ", _MISSING)
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    """The paper's layout as a booktabs tabular; significant cells as ``\\underline{\\textbf{…}}``."""
    row_keys, groups, rows = _layout(frame)
    lead = "".join(" &" for _ in row_keys)
    datasets = _runs([d for d, _ in groups])
    lines = [
        rf"\begin{{tabular}}{{{'l' * len(row_keys)}{'cc' * len(groups)}}}",
        r"\toprule",
        lead
        + " & ".join(rf"\multicolumn{{{2 * n}}}{{c}}{{{_tex(_label('dataset', d))}}}" for d, n in datasets)
        + r" \\",
        lead
        + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_tex(_label('algorithm', a))}}}" for _, a in groups)
        + r" \\",
        " & ".join([*(_tex(HEADERS[k]) for k in row_keys), *([r"Acc.", r"$\Delta$Imp."] * len(groups))])
        + r" \\",
        r"\midrule",
    ]
    for labels, cells in _rendered_rows(row_keys, rows, r"$\pm$ ", "--"):
        texts = [_mark_tex(text, sig) for acc, dimp, sig in cells for text in (acc, dimp)]
        lines.append(" & ".join([*(_tex(x) for x in labels), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(name: str, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write ``NAME.csv`` (tidy, one row per cell), ``NAME.md`` and ``NAME.tex`` atomically."""
    tidy = frame.assign(table=name).round({"mean": 6, "std": 6, "delta_imp": 6})
    csv = tidy[[c for c in CSV_COLUMNS if c in tidy.columns]].to_csv(index=False)
    out_dir = Path(out_dir)
    return [
        write_bytes(out_dir / f"{name}.csv", csv.encode()),
        write_bytes(out_dir / f"{name}.md", to_markdown(frame).encode()),
        write_bytes(out_dir / f"{name}.tex", to_latex(frame).encode()),
    ]


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise NasauditError(
            f"table is missing column(s) {', '.join(missing)}; build it with build_table first"
        )


def _p_values(
    cells: pd.DataFrame, references: pd.DataFrame, on: Sequence[str], alternative: Alternative
) -> pd.Series:
    """One-sided Welch p-value of each cell against its reference row, indexed like ``cells``.

    An attack written ``a/b`` (Table 4's relabeling defends against RLF and CLF at once) is tested
    against each and keeps the smallest p-value: it counts if it improves on either attack.
    """
    if references.duplicated(list(on)).any():
        raise NasauditError(f"more than one reference row per {', '.join(on)}; each cell needs exactly one")
    keyed = cells.rename_axis("_cell").reset_index()
    if "attack" in on:
        keyed = keyed.assign(attack=keyed["attack"].str.split("/")).explode("attack")
    ref = references[[*on, "mean", "std", "n"]].rename(columns={"mean": "_mean", "std": "_std", "n": "_n"})
    paired = keyed.merge(ref, on=list(on), how="left")
    p = [
        welch_from_summary(Summary(m, s, int(n)), Summary(rm, rs, int(rn)), alternative).p_value
        if np.isfinite(rm)
        else np.nan
        for m, s, n, rm, rs, rn in zip(
            paired["mean"],
            paired["std"],
            paired["n"],
            paired["_mean"],
            paired["_std"],
            paired["_n"],
            strict=True,
        )
    ]
    return pd.Series(p, index=paired["_cell"], dtype=float).groupby(level=0).min()


def _order(column: str, values: Iterable[Any]) -> list[Any]:
    """Known keys in the paper's order, then anything else (new attacks, smoke datasets) sorted."""
    known = list(ORDER.get(column, ()))
    return sorted(
        set(values),
        key=lambda v: (known.index(v) if v in known else len(known), v if isinstance(v, float) else str(v)),
    )


def _label(column: str, value: Any) -> str:
    if column == "budget":
        return _MISSING if value == 0 else f"{value * 100:g}%"
    return display_name(column, value)


def _layout(
    frame: pd.DataFrame,
) -> tuple[list[str], list[tuple[Any, Any]], list[tuple[tuple, list[Cell | None]]]]:
    """Row keys, column groups (dataset, algorithm) and the grid of cells, in the paper's order."""
    _require(frame, (*COLUMN_KEYS, "mean", "std", "delta_imp", "significant"))
    row_keys = [k for k in ROW_KEYS if k in frame.columns]
    if len(row_keys) > 1:  # a key with a single value (Table 4's p = 50%) adds a column, not information
        row_keys = [k for k in row_keys if frame[k].nunique() > 1] or row_keys[:1]
    if frame.duplicated([*row_keys, *COLUMN_KEYS]).any():
        raise NasauditError("table has two cells for one condition; summarise trials before rendering")
    cells = {
        (tuple(r[k] for k in row_keys), (r["dataset"], r["algorithm"])): (
            r["mean"],
            r["std"],
            r["delta_imp"],
            bool(r["significant"]),
        )
        for r in frame.to_dict("records")
    }
    datasets, algorithms = _order("dataset", frame["dataset"]), _order("algorithm", frame["algorithm"])
    present = set(zip(frame["dataset"], frame["algorithm"], strict=True))
    groups = [(d, a) for d in datasets for a in algorithms if (d, a) in present]
    row_values = {tuple(r) for r in frame[row_keys].itertuples(index=False)}
    ranks = [{v: i for i, v in enumerate(_order(k, frame[k]))} for k in row_keys]
    ordered = sorted(row_values, key=lambda row: tuple(rank[v] for rank, v in zip(ranks, row, strict=True)))
    return row_keys, groups, [(row, [cells.get((row, g)) for g in groups]) for row in ordered]


def _rendered_rows(
    row_keys: list[str], rows: list[tuple[tuple, list[Cell | None]]], pm: str, missing: str
) -> list[tuple[list[str], list[tuple[str, str, bool]]]]:
    """Format numbers; a leading row label is printed only where it changes, as in the paper."""
    out = []
    previous: tuple = ()
    for row, cells in rows:
        labels = [_label(k, v) for k, v in zip(row_keys, row, strict=True)]
        shown = [
            "" if i < len(row_keys) - 1 and row[: i + 1] == previous[: i + 1] else text
            for i, text in enumerate(labels)
        ]
        previous = row
        texts = [
            (missing, missing, False) if c is None else (f"{_num(c[0])} {pm}{_num(c[1])}", _num(c[2]), c[3])
            for c in cells
        ]
        out.append((shown, texts))
    return out


def _num(x: float) -> str:
    if not np.isfinite(x):  # a cell of a partial table without its baseline or second trial
        return _MISSING
    text = f"{x:.2f}"
    return "0.00" if text == "-0.00" else text


def _runs(values: list[Any]) -> list[tuple[Any, int]]:
    """Consecutive equal values with their counts: the spans of the dataset header."""
    runs: list[tuple[Any, int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs


def _mark_md(text: str, significant: bool) -> str:
    return f"<u>**{text}**</u>" if significant else text


def _mark_tex(text: str, significant: bool) -> str:
    return rf"\underline{{\textbf{{{text}}}}}" if significant else text


def _tex(text: str) -> str:
    return (
        text.replace("\\", r"\textbackslash{}")
        .replace("–", "--")
        .replace("&", r"\&")
        .replace("%", r"\%")
        .replace("_", r"\_")
    )
