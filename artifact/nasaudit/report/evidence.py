"""What the results page says about each table: our cells next to the paper's, from a results folder.

Nothing here draws or renders (``report.plots`` and ``report.html`` do). Every published cell gets a
row: the paper's value, ours when a job finished, the verdict of ``report.compare`` against the
tolerances of ``expected_results/tolerances.toml``, our per-trial values, and for a cell without
ours the reason (not in this profile, or its jobs have not finished). A profile whose datasets are
not the paper's (the smoke profile's digits) is set against the paper's first dataset, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nasaudit.config import Profile, read_toml
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Experiment, Layout, load_experiment
from nasaudit.report.compare import KEY_COLUMNS, agrees, compare, tolerance_for
from nasaudit.report.experiment import experiment_table
from nasaudit.report.published import TOLERANCES, load_published
from nasaudit.report.sensitivity import TABLE_METRIC
from nasaudit.report.tables import DESIGNS, display_name

GRID_TABLES = ("table1", "table3", "table4", "table5", "table6")
TABLES = ("table1", "table2", "table3", "table4", "table5", "table6")
# The paper's captions, shortened (paper §4.2, §5.2, §5.3, §6.1, Appendices A and B).
TITLES = {
    "table1": "Robustness of NAS to data poisoning",
    "table2": "Sensitivity of training-free metrics (p = 50%)",
    "table3": "Out-of-distribution search",
    "table4": "Data poisoning countermeasures (p = 50%)",
    "table5": "Robustness of NSGANetV2 to data poisoning",
    "table6": "NAS-specific GC without data augmentation (P-DARTS)",
}
UNITS = {"table2": "% change"}  # every other table: percentage points of test accuracy
CARRY = ("std", "n", "delta_imp", "p_adjusted", "trials", "planned")
NOT_IN_PROFILE = "not in this profile"

AGREES, DIFFERS, INCOMPLETE, EMPTY = "agrees", "differs", "incomplete", "no results"


@dataclass(frozen=True)
class TableEvidence:
    """One table of the page. ``cells`` has one row per published cell: its keys, ``expected``,
    ``ours``, ``difference``, ``tolerance``, ``within``, marks when the table has them, the carried
    ``expected_*``/``ours_*`` columns and ``missing`` (why ours is absent, empty when present)."""

    name: str
    cells: pd.DataFrame
    extra: pd.DataFrame  # our cells the paper does not print (not judged)
    stand_in: dict[str, str]  # our dataset -> the paper's dataset its cells are set against
    notes: tuple[str, ...]  # what a reader must know: partial grid, why a table is empty

    @property
    def keys(self) -> list[str]:
        return [k for k in KEY_COLUMNS if k in self.cells.columns and k != "table"]

    @property
    def present(self) -> pd.Series:
        return self.cells["ours"].notna()

    @property
    def verdict(self) -> str:
        """``agrees`` as ``report.compare.agrees`` decides it; ``incomplete`` when every cell we have
        agrees but some are missing; ``differs`` when a cell we have does not."""
        present = self.present
        if not present.any():
            return EMPTY
        if agrees(self.cells):
            return AGREES
        ok = self.cells["within"]
        if "significance_agrees" in self.cells.columns:
            ok = ok & self.cells["significance_agrees"]
        return DIFFERS if (~ok & present).any() else INCOMPLETE

    def counts(self) -> dict[str, int]:
        """Cells in the paper, ours present, within tolerance and (where marked) marks agreeing."""
        out = {
            "cells": len(self.cells),
            "present": int(self.present.sum()),
            "within": int(self.cells["within"].sum()),
        }
        if "significance_agrees" in self.cells.columns:
            out["marks_agree"] = int(self.cells["significance_agrees"].sum())
        return out


def grid_table_evidence(name: str, profile: Profile, layout: Layout) -> TableEvidence:
    """A grid table (1, 3, 4, 5, 6): whatever jobs finished, set against the published table."""
    paper = load_published(name)
    notes: list[str] = []
    try:
        experiment = load_experiment(name, profile)
    except NasauditError as exc:
        return _evidence(name, paper, _empty(paper), [f"the profile's [{name}] cannot run: {exc}"])
    planned = _planned(experiment)
    try:
        result = experiment_table(experiment, layout, allow_partial=True)
    except NasauditError as exc:
        notes.append(str(exc))
        ours = planned.assign(mean=np.nan, std=np.nan, n=0, delta_imp=np.nan, significant=False)
    else:
        keys = [k for k in planned.columns if k != "planned"]
        ours = planned.merge(result.table, on=keys, how="left", validate="one_to_one")
        ours = ours.merge(_trials(result.trials, keys, "trial", "accuracy"), on=keys, how="left")
        ours["significant"] = ours["significant"].fillna(False).astype(bool)
        if result.missing:
            notes.append(
                f"partial grid: {len(result.missing)} of {len(experiment.jobs)} jobs have no result yet; "
                "a cell averages the trials that finished"
            )
        if (ours["delta_imp"].isna() & ours["mean"].notna()).any():
            notes.append("ΔImp. is missing where the random-sampling baseline has no finished job yet")
    return _evidence(name, paper, ours, notes)


def table2_evidence(profile: Profile, folder: Path) -> TableEvidence:
    """Table 2 from ``nasaudit sensitivity``'s folder (``table2.csv`` and the per-architecture changes)."""
    from nasaudit.analysis.sensitivity import metric_algorithms

    paper, cfg = load_published("table2"), profile.sensitivity
    planned = pd.DataFrame(
        [
            {"dataset": profile.experiment.datasets[0], "algorithm": algorithm,
             "metric": TABLE_METRIC.get(metric, metric), "attack": attack, "budget": cfg.budget}
            for metric, algorithm in metric_algorithms(cfg.metrics).items()
            for attack in cfg.attacks
        ]
    ).assign(planned=cfg.architectures)  # fmt: skip
    table_csv, per_architecture = folder / "table2.csv", folder / "table2_per_architecture.csv"
    if not table_csv.is_file():
        ours = planned.assign(mean=np.nan, std=np.nan, n=0)
        return _evidence("table2", paper, ours, [f"no {table_csv}: run `make table2 PROFILE={profile.name}`"])
    keys = ["dataset", "algorithm", "metric", "attack", "budget"]
    table = pd.read_csv(table_csv)
    ours = planned.merge(table.drop(columns="table"), on=keys, how="outer")
    if per_architecture.is_file():
        changes = pd.read_csv(per_architecture)
        cells = _trials(changes, ["algorithm", "metric", "attack"], "index", "change")
        ours = ours.merge(cells, on=["algorithm", "metric", "attack"], how="left")
    return _evidence("table2", paper, ours, [])


def tolerance_rule(name: str, path: Path = TOLERANCES) -> str:
    """The table's tolerance in words: ``±0.4 (dataset cifar100: ±1.5)``."""
    section = read_toml(path).get(name, {})
    if "default" not in section:
        return "no tolerance recorded"
    overrides = [
        f"{column} {value}: ±{tol:g}"
        for column, values in section.get("by", {}).items()
        for value, tol in values.items()
    ]
    text = f"±{float(section['default']):g} {UNITS.get(name, 'pp')}"
    return text + (f" ({'; '.join(overrides)})" if overrides else "")


def tolerance_derivation(path: Path = TOLERANCES) -> str:
    """The comment block heading the tolerances file: how the numbers were derived."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines).strip()


def label(column: str, value: object) -> str:
    """A key's display name, as the paper's tables print it."""
    if column == "budget":
        return "–" if not value else f"{float(value):.0%}"  # type: ignore[arg-type]
    if column == "metric":
        return {"ntk": "κ_NTK", "linear_regions": "R"}.get(str(value), str(value))
    return display_name(column, value)


def _evidence(name: str, paper: pd.DataFrame, ours: pd.DataFrame, notes: list[str]) -> TableEvidence:
    """Pair our cells (planned ones included) with the paper's and say why each absent one is absent."""
    stand_in = _stand_in(ours, paper)
    if stand_in:
        ours = ours.replace({c: stand_in for c in ("dataset", "search_dataset") if c in ours.columns})
        shown = ", ".join(
            f"{ours_name} → {label('dataset', theirs)}" for ours_name, theirs in stand_in.items()
        )
        notes.append(
            f"this profile's datasets are not the paper's; its cells are set against the paper's ({shown}), "
            "so the tolerances, made for a paper-profile run, are not expected to hold"
        )
    if "significant" in ours.columns:
        ours = ours.assign(significant=ours["significant"].fillna(False).astype(bool))
    missing_column = ours["mean"].isna()
    cells = compare(paper, ours, tolerance_for(name, paper), carry=CARRY)
    if "significance_agrees" in cells.columns:
        cells["significance_agrees"] &= cells["ours"].notna()
    planned = cells.get("ours_planned", pd.Series(np.nan, index=cells.index))
    cells["missing"] = np.where(
        cells["ours"].notna(),
        "",
        np.where(planned.notna(), "no finished job yet", NOT_IN_PROFILE),
    )
    found = ours[~missing_column]
    theirs = {v: k for k, v in stand_in.items()}  # our cells beyond the paper's keep our names
    extra = found[~_paired(found, paper)].replace(
        {c: theirs for c in ("dataset", "search_dataset") if c in found.columns}
    )
    return TableEvidence(name, cells, extra.reset_index(drop=True), stand_in, tuple(notes))


def _stand_in(ours: pd.DataFrame, paper: pd.DataFrame) -> dict[str, str]:
    """Our datasets → the paper's, in the paper's order, when none of ours is among the paper's."""
    theirs = list(dict.fromkeys(paper["dataset"]))
    mine = list(dict.fromkeys(ours["dataset"]))
    if not mine or any(d in theirs for d in mine):
        return {}
    return dict(zip(mine, theirs, strict=False))


def _paired(found: pd.DataFrame, paper: pd.DataFrame) -> pd.Series:
    """Which of our cells have a published counterpart (same keys, budgets compared rounded)."""
    keys = [k for k in KEY_COLUMNS if k in paper.columns and k in found.columns and k != "table"]

    def keyed(frame: pd.DataFrame) -> pd.Series:
        parts = [frame[k].round(6).astype(str) if k == "budget" else frame[k].astype(str) for k in keys]
        return pd.Series(list(zip(*parts, strict=True)), index=frame.index, dtype=object)

    return keyed(found).isin(set(keyed(paper)))


def _planned(experiment: Experiment) -> pd.DataFrame:
    """The table's cells as its grid defines them, with the number of trials each will average."""
    rows = [
        {
            "dataset": key.dataset,
            "search_dataset": key.searched_on,
            "defense": key.defense,
            "algorithm": key.algorithm,
            "attack": key.attack,
            "budget": key.budget,
        }
        for key in experiment.conditions
    ]
    keys = ["dataset", *experiment.columns, "algorithm", "attack", "budget"]
    frame = pd.DataFrame(
        rows, columns=["dataset", "search_dataset", "defense", "algorithm", "attack", "budget"]
    )
    frame = frame[keys]
    design = DESIGNS[experiment.name]
    if not design.show_reference:
        frame = frame[~design.reference(frame)]
    return frame.groupby(keys, sort=False).size().rename("planned").reset_index()


def _trials(frame: pd.DataFrame, keys: list[str], index: str, value: str) -> pd.DataFrame:
    """Per cell, its individual values as ``((index, value), ...)`` in a ``trials`` column."""
    grouped = frame.sort_values(index).groupby(keys, sort=False)
    rows = [
        {**dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
         "trials": tuple((int(i), float(v)) for i, v in zip(g[index], g[value], strict=True))}
        for key, g in grouped
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=[*keys, "trials"])


def _empty(paper: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in KEY_COLUMNS if k in paper.columns and k != "table"]
    return pd.DataFrame(
        {**{k: pd.Series(dtype=paper[k].dtype) for k in keys}, "mean": pd.Series(dtype=float)}
    )
