"""The smoke test's judgement: which outputs are exact, which ranged, how runs under other CPU settings are
compared, that the expected file blesses no learned value, and that a trainer that does not learn fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nasaudit import smoke
from nasaudit.data.datasets import Split, load_dataset
from nasaudit.smoke_checks import (
    EXACT,
    NEAR,
    WITHIN,
    compare,
    differences,
    expectation,
    finite,
    kind,
    near,
    render_differences,
    satisfies,
    within,
)

EXPECTED = Path(__file__).parents[1] / "expected_results" / "smoke" / "summary.json"


def test_each_output_has_one_kind_and_blesses_only_what_is_checked() -> None:
    assert [kind(x) for x in (3, "abc", [8, 5, 3], near(0.5, 1e-4), within(91.0, 80.0, 100.0))] == [
        EXACT, EXACT, EXACT, NEAR, WITHIN,
    ]  # fmt: skip
    assert expectation(within(91.0, 80.0, 100.0)) == {"min": 80.0, "max": 100.0}  # no learned value
    assert expectation(near(0.5, 1e-4)) == {"value": 0.5, "tol": 1e-4}
    assert expectation([8, 5, 3]) == [8, 5, 3]
    assert finite(float("nan")) is None and finite(float("inf")) is None and finite(2.5) == 2.5


@pytest.mark.parametrize(
    ("output", "expected", "ok"),
    [
        (13, 13, True),
        (12, 13, False),
        ([8, 5, 3], [8, 5, 3], True),
        ("abc", "abd", False),
        (near(0.50005, 1e-4), {"value": 0.5, "tol": 1e-4}, True),
        (near(0.5002, 1e-4), {"value": 0.5, "tol": 1e-4}, False),
        (within(85.0, 80.0, 100.0), {"min": 80.0, "max": 100.0}, True),
        (within(80.0, 80.0, 100.0), {"min": 80.0, "max": 100.0}, True),  # bounds included
        (within(10.0, 80.0, 100.0), {"min": 80.0, "max": 100.0}, False),  # a trainer that did not learn
        (within(None, None, None), {"min": None, "max": None}, False),  # NaN is never in a range
        (within(-3.5, None, None), {"min": None, "max": None}, True),  # "finite"
        (within(-0.1, 0.0, None), {"min": 0.0, "max": None}, False),
        (within(13, 1, 13), 13, False),  # a ranged output never meets an exact expectation
        ({"min": 1, "max": 2}, {"min": 1, "max": 2}, False),  # nor a range without a value
    ],
)
def test_satisfies(output, expected, ok) -> None:
    assert satisfies(output, expected) is ok


def test_compare_names_each_problem_once() -> None:
    ours = {"a.n": 3, "a.acc": within(12.0, 80.0, 100.0), "a.new": 1, "a.mean": near(0.1, 0.01)}
    expected = {
        "a.n": 3,
        "a.acc": {"min": 80.0, "max": 100.0},
        "a.gone": 2,
        "a.mean": {"value": 0.1, "tol": 0.01},
    }
    assert compare(ours, expected) == [
        "a.acc: expected in [80.0, 100.0], got 12.0",
        "a.gone: expected 2 but not produced",
        "a.new: produced 1 but not in the expected results",
    ]


def test_differences_between_settings() -> None:
    expected = {"n": 13, "sha": "x", "acc": {"min": 80.0, "max": 100.0}, "skips": {"min": 0, "max": 2}}
    runs = {
        "best": {"n": 13, "sha": "x", "acc": within(90.1, 80, 100), "skips": within(1, 0, 2), "mean": 1},
        "plain": {"n": 13, "sha": "y", "acc": within(88.3, 80, 100), "skips": within(1, 0, 2)},
        "plain2": {"n": 13, "sha": "x", "acc": within(79.0, 80, 100), "skips": within(1, 0, 2)},
    }
    rows = {row["key"]: row for row in differences(runs, expected)}
    assert set(rows) == {"sha", "acc", "mean"}  # equal outputs are not listed, whatever their kind
    assert rows["sha"]["kind"] == EXACT and not rows["sha"]["all_pass"]  # an exact output moved: a bug
    assert rows["acc"]["kind"] == WITHIN and not rows["acc"]["all_pass"]  # 79 is below the floor
    assert rows["acc"]["values"] == {"best": 90.1, "plain": 88.3, "plain2": 79.0}
    assert rows["mean"]["kind"] == "unexpected" and rows["mean"]["values"]["plain"] is None
    runs["plain2"]["acc"] = within(85.0, 80, 100)
    assert {r["key"]: r["all_pass"] for r in differences(runs, expected)}["acc"] is True
    text = render_differences(differences(runs, expected), {n: "OK" for n in runs}, total=5)
    assert "3 of 5 outputs differ" in text and "1 of them exact" in text and "NO" in text
    same = {"best": {"n": 13}, "plain": {"n": 13}}
    assert "All 1 outputs are identical" in render_differences(differences(same, {"n": 13}), {}, 1)


def test_expected_file_blesses_no_learned_value() -> None:
    """What training or search decides is a range; exact entries are counts, hashes of data, sizes."""
    expected = json.loads(EXPECTED.read_text())
    assert {key.split(".", 1)[0] for key in expected} == set(smoke.STEPS)
    for key, entry in expected.items():
        assert kind(entry) != WITHIN or set(entry) == {"min", "max"}, key
        if "accuracy" in key or (
            key.startswith("grid.table") and not key.endswith(("tasks", "cells", "unfinished"))
        ):
            assert kind(entry) == WITHIN and entry["min"] >= smoke.SEARCHED_FLOOR, key
        assert "genotype" not in key and not key.startswith(("poison.gc.sha", "poison.clf.sha")), key
    assert expected["retrain.pdarts_reference.test_accuracy"]["min"] == smoke.REFERENCE_FLOOR


def test_bad_arguments_are_one_line(tmp_path, capsys) -> None:
    assert smoke.main(["--steps", "retrain,nope", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (
        f"nasaudit.smoke: error: unknown smoke step 'nope'; choose from: {', '.join(smoke.STEPS)}\n"
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert smoke.main(["--steps", "data", "--out", str(tmp_path / "mine")]) == 2
    assert "is not empty and not a smoke run's output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").is_file()
    missing = str(tmp_path / "no.json")
    assert smoke.main(["--steps", "data", "--expected", missing, "--out", str(tmp_path / "b")]) == 2
    assert "cannot read expected outputs" in capsys.readouterr().err


def test_data_step_passes_and_a_rerun_starts_afresh(tmp_path, capsys) -> None:
    out = tmp_path / "smoke"
    assert smoke.main(["--steps", "data,stream", "--out", str(out)]) == 0
    assert "[smoke] OK: 10 of 10 outputs as expected" in capsys.readouterr().out
    (out / "stale").write_text("left by an older run")
    assert smoke.main(["--steps", "data", "--out", str(out)]) == 0
    assert not (out / "stale").exists() and json.loads((out / "machine.json").read_text())["threads"] >= 1


def _retrain_step(tmp_path, capsys, monkeypatch, mutation: str) -> tuple[int, str]:
    """The smoke's retrain step, checked against the real expected file, with one thing broken."""
    overrides = ["--set", "train.lr=0.0", "--set", "train.lr_min=0.0"] if mutation == "lr = 0" else []
    if mutation == "shuffled labels":
        real = load_dataset

        def shuffled(name, root=None):  # type: ignore[no-untyped-def]
            data = real(name, root)
            labels = np.random.default_rng(0).permutation(data.train.labels)
            return data.with_train(Split(data.train.images, labels))

        monkeypatch.setattr(smoke, "load_dataset", shuffled)
    code = smoke.main(["--steps", "retrain", *overrides, "--out", str(tmp_path / "out")])
    return code, capsys.readouterr().out


def test_a_trainer_that_does_not_learn_fails_the_smoke_test(tmp_path, capsys, monkeypatch) -> None:
    code, out = _retrain_step(tmp_path, capsys, monkeypatch, "lr = 0")
    assert code == 1
    floor = f"expected in [{smoke.REFERENCE_FLOOR}, 100.0], got"
    assert f"MISMATCH retrain.pdarts_reference.test_accuracy: {floor}" in out
    assert "MISMATCH retrain.pdarts_reference.train_loss_ratio" in out
    assert "MISMATCH retrain.pdarts_reference.params" not in out  # the fixed architecture is unchanged


@pytest.mark.slow
def test_shuffled_labels_fail_and_the_real_recipe_passes(tmp_path, capsys, monkeypatch) -> None:
    code, out = _retrain_step(tmp_path / "shuffled", capsys, monkeypatch, "shuffled labels")
    assert code == 1 and "MISMATCH retrain.pdarts_reference.test_accuracy" in out
    monkeypatch.undo()
    code, out = _retrain_step(tmp_path / "real", capsys, monkeypatch, "none")
    assert code == 0 and "[smoke] OK: 4 of 4 outputs as expected" in out


def test_the_ending_names_each_step_its_checks_and_the_accuracies(tmp_path) -> None:
    from nasaudit.config import load_profile

    dataset = load_dataset("digits").first(128)
    run = smoke.SmokeRun(load_profile("smoke"), dataset, tmp_path, torch.device("cpu"))
    run.state["accuracies"] = {"published P-DARTS genotype (fixed)": 90.0}
    summary = {"data.n": 3, "retrain.acc": within(90.0, 85.0, 100.0), "retrain.loss": within(0.1, 0.0, 0.5)}
    text = smoke.render_summary(
        run, {"data": (0.5, 0.4), "retrain": (61.0, 118.0)}, summary, ["retrain.acc: x"]
    )
    lines = text.splitlines()
    assert any(line.split()[:4] == ["retrain", "61.0s", "118.0s", "1"] and "of 2" in line for line in lines)
    assert "2 of 3 (1 exact, 0 near, 2 within a range)" in text
    assert "published P-DARTS genotype (fixed)" in text and " 90.00 %" in text
    assert "Smoke Table 1" not in text  # no grid ran
    (tmp_path / "summary.json").write_text("{}")
    ending = smoke.render_summary(run, {}, summary, []).splitlines()[-1]
    assert ending == f"Outputs in {tmp_path}: summary.json (every output)"  # only what this run wrote
