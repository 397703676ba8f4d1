"""Tables: transcriptions, significance recomputed from the paper's numbers, rendering, comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasaudit.errors import NasauditError
from nasaudit.report.compare import agrees, compare, tolerance_for
from nasaudit.report.published import load_baselines, load_published
from nasaudit.report.tables import (
    CSV_COLUMNS,
    add_significance,
    build_table,
    from_published,
    summarise_trials,
    to_latex,
    to_markdown,
    write_table,
)
from nasaudit.stats import welch

# Table 1's bold+underline marks, as §4.2 states them (paper.md's table lost the markup).
TABLE1_MARKS = {
    ("cifar10", "pdarts", "gaussian", 0.1),
    ("cifar10", "pdarts", "nas_gc", 0.01),
    ("cifar10", "pdarts", "nas_gc", 0.5),
    ("cifar10", "pdarts", "rlf", 0.5),
    ("cifar10", "pdarts", "clf", 0.01),
    ("cifar10", "pdarts", "clf", 0.5),
    ("cifar100", "pdarts", "rlf", 0.5),
    ("cifar100", "pdarts", "clf", 0.5),
}


def _marked(frame: pd.DataFrame) -> set[tuple]:
    rows = frame[frame["significant"]]
    return set(zip(rows["dataset"], rows["algorithm"], rows["attack"], rows["budget"], strict=True))


def test_transcriptions_are_internally_consistent() -> None:
    baselines = load_baselines()
    assert len(load_published("table1")) == 2 * (13 + 13 + 7)  # TE-NAS has no label-flipping rows
    for name in ("table1", "table3", "table4", "table5", "table6"):
        table = load_published(name).merge(
            baselines[["dataset", "algorithm", "mean"]], on=["dataset", "algorithm"]
        )
        # Printed ΔImp. = printed mean − baseline up to two roundings of 0.005 each.
        assert ((table["mean_x"] - table["mean_y"] - table["delta_imp"]).abs() <= 0.01 + 1e-9).all(), name
    assert _marked(load_published("table1")) == TABLE1_MARKS


def test_table1_marks_reproduced_from_published_means_and_stds() -> None:
    ours = from_published("table1")
    assert _marked(ours) == TABLE1_MARKS
    assert (ours["significant"] == load_published("table1")["significant"]).all()  # all 66 cells
    # The BH family matters: uncorrected p ≤ 0.05 would add three cells the paper leaves unmarked.
    assert ((ours["p_value"] <= 0.05) & ~ours["significant"]).sum() == 3


@pytest.mark.parametrize("name", ["table3", "table4", "table5", "table6"])
def test_other_marks_reproduced(name: str) -> None:
    assert (from_published(name)["significant"] == load_published(name)["significant"]).all()


def _trials() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for attack, budget, shift in (("none", 0.0, 0.0), ("rlf", 0.5, -0.6), ("clf", 0.01, 0.05)):
        for trial, acc in enumerate(97.3 + shift + 0.1 * rng.standard_normal(5)):
            rows.append({"attack": attack, "budget": budget, "trial": trial, "accuracy": acc})
    return pd.DataFrame(rows).assign(dataset="cifar10", algorithm="pdarts")


def test_build_table_from_raw_trials_equals_from_summary() -> None:
    trials, baselines = _trials(), load_baselines()
    from_raw = build_table(trials, baselines)
    from_summary = build_table(summarise_trials(trials), baselines)
    pd.testing.assert_frame_equal(from_raw, from_summary)
    rlf = from_raw[from_raw["attack"] == "rlf"].iloc[0]
    by_trial = trials.groupby("attack")["accuracy"]
    assert rlf["p_value"] == pytest.approx(
        welch(by_trial.get_group("rlf"), by_trial.get_group("none")).p_value
    )
    assert rlf["delta_imp"] == pytest.approx(rlf["mean"] - 96.73)
    assert rlf["n"] == 5 and rlf["significant"]
    assert from_raw.loc[from_raw["attack"] == "none", "p_value"].isna().all()


def test_table5_from_summary_recomputes_delta_imp() -> None:
    published = load_published("table5")
    ours = build_table(published.drop(columns=["delta_imp", "significant"]), load_baselines())
    np.testing.assert_allclose(ours["delta_imp"], published["delta_imp"], atol=0.01 + 1e-9)
    assert (ours["significant"] == published["significant"]).all()


def test_missing_reference_leaves_cells_untested() -> None:
    trials = _trials()
    table = build_table(trials[trials["attack"] != "none"], load_baselines())
    assert table["p_value"].isna().all() and not table["significant"].any()


def test_missing_baseline_is_a_user_error() -> None:
    with pytest.raises(NasauditError, match="no random baseline for svhn/pdarts"):
        build_table(_trials().assign(dataset="svhn"), load_baselines())


def test_uncorrected_design_uses_plain_alpha() -> None:
    table4 = from_published("table4")
    assert (table4["p_adjusted"].dropna() == table4["p_value"].dropna()).all()
    assert add_significance(load_published("table5"))["p_adjusted"].notna().sum() == 12


def test_markdown_and_latex_follow_the_paper_layout() -> None:
    table = from_published("table1")
    md = to_markdown(table)
    assert "| Poisoning Attack" in md and "CIFAR-100 TE-NAS ΔImp." in md
    assert "<u>**96.77 ± 0.38**</u>" in md and "<u>**0.04**</u>" in md
    rlf_1 = next(line for line in md.splitlines() if line.startswith("| RLF"))
    assert rlf_1.count("–") == 4  # TE-NAS does not use labels, so label flipping is not run
    assert len(md.splitlines()) == 2 + 13
    tex = to_latex(table)
    assert r"\underline{\textbf{79.64 $\pm$ 1.83}}" in tex and r"\underline{\textbf{-1.05}}" in tex
    assert r"\multicolumn{6}{c}{CIFAR-10}" in tex and r"Gaussian Noise & 1\%" in tex
    assert r"None & -- &" in tex


def test_write_table(tmp_path: Path) -> None:
    table = from_published("table5")
    paths = write_table("table5", table, tmp_path / "out")
    assert [p.name for p in paths] == ["table5.csv", "table5.md", "table5.tex"]
    csv = pd.read_csv(paths[0])
    assert list(csv.columns) == [c for c in CSV_COLUMNS if c not in ("search_dataset", "defense")]
    assert csv["significant"].sum() == 1 and (csv["table"] == "table5").all()
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_compare_with_itself_agrees() -> None:
    expected = load_published("table1")
    result = compare(expected, from_published("table1"), tolerance_for("table1", expected))
    assert agrees(result) and len(result) == len(expected)
    assert set(result.loc[result["dataset"] == "cifar100", "tolerance"]) == {1.5}
    assert set(result.loc[result["dataset"] == "cifar10", "tolerance"]) == {0.4}


def test_compare_flags_values_marks_and_missing_cells() -> None:
    expected = load_published("table5")
    ours = expected.copy()
    ours.loc[1, "mean"] += 0.5  # out of tolerance
    ours.loc[2, "mean"] -= 0.3  # inside it
    ours.loc[12, "significant"] = False  # mark lost
    ours = ours.drop(index=3)  # cell not run
    result = compare(expected, ours.drop(columns="table"), 0.4)
    assert not agrees(result)
    assert result["within"].tolist() == [i not in (1, 3) for i in range(13)]
    assert result.loc[2, "difference"] == pytest.approx(-0.3)
    assert np.isnan(result.loc[3, "ours"])
    assert result["significance_agrees"].tolist() == [i not in (3, 12) for i in range(13)]


def test_compare_without_marks_and_key_errors() -> None:
    expected = load_published("table2")
    result = compare(expected, expected, tolerance_for("table2", expected))
    assert agrees(result) and "significance_agrees" not in result.columns
    assert result.loc[expected["metric"] == "ntk", "tolerance"].eq(97.0).all()
    with pytest.raises(NasauditError, match="metric"):
        compare(expected, expected.drop(columns="metric"), 1.0)
