"""The results page (`nasaudit report`): every published cell on it, coloured by our verdict, nothing
loaded from elsewhere, provenance read from a grid's own files. Cells are found by parsing the page
(each row carries its cell's keys as data-* attributes), not by matching its text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from nasaudit.cli import main
from nasaudit.config import PROFILE_DIR, load_profile
from nasaudit.grid import Layout, RunnerOptions, RunSpec, build_grid, load_experiment, run_grid
from nasaudit.grid.jobs import JobKey
from nasaudit.grid.stages import task_state
from nasaudit.io import environment_manifest
from nasaudit.report.compare import compare
from nasaudit.report.evidence import grid_table_evidence
from nasaudit.report.html import write_report
from nasaudit.report.published import PUBLISHED_DIR
from nasaudit.spaces.darts import load
from test_grid import registered, write_profile  # noqa: F401  (a fixture and a helper)

from conftest import set_toml

TABLES = ("table1", "table2", "table3", "table4", "table5", "table6")
KEYS = ("dataset", "search_dataset", "defense", "algorithm", "metric", "attack", "budget")


class Page(HTMLParser):
    """The parts of the page the tests look at: sections, cell rows with their cells, URLs, tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.section = ""
        self.sections: list[str] = []
        self.rows: list[dict] = []  # {"table", "attrs", "classes", "cells": [[class, title, text]]}
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._row: dict | None = None  # the cell row being read
        self._cell: list[str] | None = None
        self.text = text
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.urls += [(tag, k, v) for k, v in a.items() if k in ("src", "href", "action", "srcset", "data")]
        if tag == "section":
            self.section = a.get("data-table", a.get("id", ""))
            self.sections.append(self.section)
        elif tag == "tr":
            classes = a.get("class", "").split()
            self._row = (
                {"table": self.section, "attrs": a, "classes": classes, "cells": []}
                if "cell" in classes
                else None
            )
            if self._row is not None:
                self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = [a.get("class", ""), a.get("title", ""), ""]
            self._row["cells"].append(self._cell)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[2] += data

    def row(self, table: str, **keys: object) -> dict:
        """The one cell row of ``table`` whose ``data-*`` keys equal ``keys``."""
        found = [r for r in self.rows if r["table"] == table and _matches(r["attrs"], keys)]
        assert len(found) == 1, (table, keys, len(found))
        return found[0]


def _matches(attrs: dict, keys: dict) -> bool:
    for key, value in keys.items():
        attr = attrs.get(f"data-{key.replace('_', '-')}")
        if attr is None:
            return False
        if key == "budget":
            if abs(float(attr) - float(value)) > 1e-9:  # type: ignore[arg-type]
                return False
        elif attr != str(value):
            return False
    return True


def _text(row: dict) -> str:
    return " | ".join(text for _, _, text in row["cells"])


def _cell(row: dict, css: str) -> tuple[str, str, str]:
    return next(c for c in row["cells"] if css in c[0].split())


# Table 1 trials per (algorithm, attack): P-DARTS reproduces the paper's CIFAR-10 means (the smoke's
# digits stand in for CIFAR-10), RoBoT does not; TE-NAS is half finished.
PDARTS = {"none": (97.30, 97.34), "gaussian": (97.24, 97.28), "nas_gc": (97.13, 97.17), "rlf": (96.75, 96.79),
          "clf": (97.02, 97.06)}  # fmt: skip


def _accuracy(key: JobKey) -> float | None:
    if key.algorithm == "random":
        return 96.73
    if key.algorithm == "pdarts":
        return PDARTS[key.attack][key.trial]
    if key.algorithm == "robot":
        return 50.0 + 0.1 * key.trial
    if key.attack == "nas_gc" or (key.attack == "gaussian" and key.trial == 1):
        return None  # TE-NAS: GC not finished, Gaussian noise one trial of two
    return 96.80 + 0.1 * key.trial


def _write_results(results: Path) -> Path:
    """The smoke profile's Table 1 jobs as the grid leaves them: the search's architecture.json, then
    train/result.json with a manifest."""
    profile = load_profile("smoke")
    layout = Layout.of(results, profile)
    for key in load_experiment("table1", profile).jobs:
        accuracy = _accuracy(key)
        if accuracy is None:
            continue
        for path, record in (
            (
                layout.search_dir(key) / "architecture.json",
                {"space": "darts", "architecture": load("pdarts").to_json()},
            ),
            (
                layout.train_dir(key) / "result.json",
                {
                    "test_accuracy": accuracy,
                    "log": [{"epoch": 0, "test_acc": accuracy}],
                    "manifest": environment_manifest("cpu"),
                },
            ),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    return results


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Page:
    results = _write_results(tmp_path_factory.mktemp("results"))
    path = write_report(load_profile("smoke"), results)
    assert path == results / "smoke" / "report" / "index.html"
    return Page(path.read_text())


def test_every_published_cell_of_every_table_is_on_the_page(page) -> None:
    assert [s for s in page.sections if s in TABLES] == list(TABLES)
    for name in TABLES:
        published = pd.read_csv(PUBLISHED_DIR / f"{name}.csv")
        for cell in published.to_dict("records"):
            page.row(name, **{k: cell[k] for k in KEYS if k in cell})
        assert sum(r["table"] == name for r in page.rows) == len(published), name


def test_nothing_is_loaded_from_elsewhere(page) -> None:
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert page.urls and all(
        (tag == "img" and attr == "src" and value.startswith("data:image/png;base64,"))
        or (tag == "a" and attr == "href" and value.startswith("#"))
        for tag, attr, value in page.urls
    ), page.urls
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.text)
    assert not re.search(r"(?i)(https?:|ftp:|file:|//[a-z0-9]|url\(|@import)", text)


def test_cells_are_coloured_by_tolerance_and_marks(page) -> None:
    published = pd.read_csv(PUBLISHED_DIR / "table1.csv")
    cifar10 = published[published["dataset"] == "cifar10"]
    for cell in cifar10.to_dict("records"):
        row = page.row("table1", dataset="cifar10", algorithm=cell["algorithm"], attack=cell["attack"],
                       budget=cell["budget"])  # fmt: skip
        if cell["budget"] not in (0.0, 0.5):
            assert "missing" in row["classes"] and "not in this profile" in _text(row)
        elif cell["algorithm"] == "pdarts":
            assert "within" in row["classes"], _text(row)
        elif cell["algorithm"] == "robot":
            assert "outside" in row["classes"], _text(row)
            # ours are all equal to the clean row: no RoBoT cell is significant, so a mark the paper
            # printed disagrees and its absence agrees
            assert _cell(row, "disagree" if cell["significant"] else "agree")
    rlf = page.row("table1", dataset="cifar10", algorithm="pdarts", attack="rlf", budget=0.5)
    assert _cell(rlf, "agree")  # both significant: P-DARTS loses 0.55 pp, far beyond its trials' spread
    ours = _cell(rlf, "ours")
    assert "96.77 ± 0.03" in ours[2] and ours[1] == "trial 0: 96.75, trial 1: 96.79"
    assert "trial 0: 96.75, trial 1: 96.79" in _text(rlf)  # the details column
    pending = page.row("table1", dataset="cifar10", algorithm="tenas", attack="nas_gc", budget=0.5)
    assert "missing" in pending["classes"] and "no finished job yet" in _text(pending)
    half = page.row("table1", dataset="cifar10", algorithm="tenas", attack="gaussian", budget=0.5)
    assert "1 of 2" in _text(half)
    cifar100 = page.row("table1", dataset="cifar100", algorithm="pdarts", attack="none", budget=0)
    assert "missing" in cifar100["classes"] and "not in this profile" in _text(cifar100)


def test_verdicts_and_notes(page) -> None:
    text = page.text
    verdicts = dict(
        re.findall(r'<a href="#(table\d)">Table \d</a></td><td><span class="badge [^"]+">([^<]+)', text)
    )
    assert verdicts == {"table1": "differs", "table2": "no results", "table3": "differs",
                        "table4": "no results", "table5": "no results", "table6": "no results"}  # fmt: skip
    assert "digits → CIFAR-10" in text and "partial grid: 3 of 28 jobs have no result yet" in text
    assert "table2.csv: run `make table2 PROFILE=smoke`" in text


def test_an_empty_results_folder_renders_every_cell_as_missing(tmp_path, capsys) -> None:
    assert main(["report", "--profile", "smoke", "--results", str(tmp_path)]) == 2  # a wrong --results
    assert "no results of profile 'smoke'" in capsys.readouterr().err
    (tmp_path / "smoke").mkdir()
    assert main(["report", "--profile", "smoke", "--results", str(tmp_path)]) == 0
    page = Page((tmp_path / "smoke" / "report" / "index.html").read_text())
    assert len(page.rows) == sum(len(pd.read_csv(PUBLISHED_DIR / f"{n}.csv")) for n in TABLES)
    assert all("missing" in r["classes"] for r in page.rows)
    text = (tmp_path / "smoke" / "report" / "index.html").read_text()
    assert text.count("not drawn: no finished") == 2  # Figures 1 and 2 say what they wait for
    assert main(["report", "--profile", "no-such-profile", "--results", str(tmp_path)]) == 2


def test_table2_from_the_sensitivity_folder(tmp_path) -> None:
    folder = tmp_path / "t2"
    folder.mkdir()
    published = pd.read_csv(PUBLISHED_DIR / "table2.csv")
    ours = published[published["attack"] == "rlf"].assign(dataset="digits", n=4)
    ours.loc[ours["metric"] == "snip", "mean"] += 5.0  # outside its ±0.6
    ours.to_csv(folder / "table2.csv", index=False)
    pd.DataFrame(
        [{"index": i, "algorithm": "robot", "metric": "grad_norm", "attack": "rlf", "clean": 1.0,
          "poisoned": 0.9, "change": -5.0 - i} for i in range(4)]
    ).to_csv(folder / "table2_per_architecture.csv", index=False)  # fmt: skip
    page = Page(write_report(load_profile("smoke"), tmp_path, table2=folder).read_text())
    grad_norm = page.row("table2", dataset="cifar10", algorithm="robot", metric="grad_norm", attack="rlf")
    assert "within" in grad_norm["classes"] and "architecture 3: -8.00" in _text(grad_norm)
    assert "outside" in page.row("table2", algorithm="robot", metric="snip", attack="rlf")["classes"]
    gaussian = page.row("table2", algorithm="robot", metric="snip", attack="gaussian")
    assert "missing" in gaussian["classes"] and "no finished job yet" in _text(gaussian)  # in the profile
    assert "not in this profile" in _text(page.row("table2", algorithm="robot", metric="snip", attack="clf"))


def test_provenance_of_a_grid_that_ran(tmp_path, registered, capsys) -> None:  # noqa: F811
    """Status per stage, the seconds each finished task took, the environment, the plan's estimate."""
    profile = load_profile(write_profile(tmp_path))
    grid = build_grid(load_experiment("table1", profile), Layout.of(tmp_path / "r", profile))
    assert run_grid(grid, RunSpec(profile, tmp_path / "r", None, "cpu"), "local", RunnerOptions(workers=0),
                    log=lambda _: None).ok  # fmt: skip
    state = task_state(grid.layout)
    timings = [state.timing(task) for task in grid.deps]
    assert all(t is not None and t[0] >= 0 and t[1] == "cpu" for t in timings)
    argv = ["plan", "table1", "--profile", str(tmp_path / "quick.toml"), "--results", str(tmp_path / "r")]
    assert main(argv) == 0 and "recorded for `nasaudit report`" in capsys.readouterr().out
    text = write_report(profile, tmp_path / "r").read_text()
    section = text[text.index('id="provenance"') :]
    retrain = re.search(r"<tr><td>retrain</td><td>(\d+)</td><td>0</td><td>0</td><td>0</td><td>([^<]+)</td>"
                        r"<td>([^<]+)</td>", section)  # fmt: skip
    assert retrain and retrain.group(1) == "17" and retrain.group(2).endswith("on cpu (17 timed)")
    assert "for the 0 tasks then left" in retrain.group(3)  # planned after the run: nothing was left
    assert "estimate recorded by `nasaudit plan`" in section
    import torch

    assert f"<td>{torch.__version__}</td>" in section and "quick" in section
    extra = Page(text).rows  # the test algorithm is not in the paper: its cells are extra, not judged
    assert "fixed" not in {r["attrs"].get("data-algorithm") for r in extra}
    assert "Our cells the paper does not print" in text


def test_compare_carries_columns_beside_the_verdict() -> None:
    expected = pd.DataFrame({"dataset": ["a", "b"], "mean": [1.0, 2.0], "std": [0.1, 0.2]})
    ours = pd.DataFrame({"dataset": ["b", "a"], "mean": [2.5, 1.0], "std": [0.3, 0.0], "n": [3, 4]})
    result = compare(expected, ours, 0.4, carry=("std", "n", "absent"))
    assert result[["expected_std", "ours_std", "ours_n"]].values.tolist() == [[0.1, 0.0, 4], [0.2, 0.3, 3]]
    assert result["within"].tolist() == [True, False] and "expected_n" not in result.columns


def test_figure2_shows_the_grids_gc_and_noise_poisons(tmp_path) -> None:
    """Appendix C's rows from the Table 1 grid's poison files: GC (P-DARTS's victim) and noise at p = 50%."""
    import numpy as np

    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import make_poison, save_poison
    from nasaudit.report.poison_figure import figure2_poisons

    profile = load_profile("smoke")
    layout = Layout.of(tmp_path, profile)
    dataset = load_dataset("digits").first(profile.grid.train_subset)
    indices = np.arange(0, len(dataset.train), 2)
    tasks = build_grid(load_experiment("table1", profile), layout).by_stage()["poison"]
    seeds = {"pdarts": 1, "robot": 2, "tenas": 3, "": 4}
    for task in tasks:
        if task.attack in ("gaussian", "nas_gc") and task.trial <= 0:  # -1: one poison shared by all trials
            images = 255 - dataset.train.images[indices]
            poison = make_poison(task.attack, dataset, seeds[task.algorithm], indices, images=images)
            save_poison(poison, layout.poison(task))
    poisons, drawn_from = figure2_poisons(tmp_path, profile)
    assert [(p.attack, p.seed) for p in poisons] == [("nas_gc", 1), ("gaussian", 4)]
    assert drawn_from.train.sha256 == dataset.train.sha256
    page = Page(write_report(profile, tmp_path).read_text())
    assert sum(tag == "img" for tag, _, _ in page.urls) >= 1
    assert 'alt="Figure 2: clean training images and their poisoned versions"' in page.text
    assert "not drawn: no finished" in page.text  # Figure 1: no search has finished


def test_a_partial_grid_without_its_baseline_has_cells_without_delta_imp(tmp_path) -> None:
    from nasaudit.errors import NasauditError
    from nasaudit.report.experiment import experiment_table

    profile = load_profile("smoke")
    layout = Layout.of(_write_results(tmp_path), profile)
    experiment = load_experiment("table1", profile)
    for key in experiment.baselines:  # the random architectures have not finished
        (layout.train_dir(key) / "result.json").unlink()
    with pytest.raises(NasauditError, match="have no result yet"):
        experiment_table(experiment, layout)
    table = experiment_table(experiment, layout, allow_partial=True).table
    assert table["mean"].notna().all() and table["delta_imp"].isna().all()
    text = write_report(profile, tmp_path).read_text()
    assert "ΔImp. is missing where the random-sampling baseline has no finished job yet" in text


# Table 6 as the paper prints it (P-DARTS, CIFAR-10): trials whose means are the paper's and whose
# Welch tests mark the same cells (p = 1% and 50% significantly below the clean row, 10% not).
TABLE6 = {("none", 0.0): (97.18, 97.20), ("nas_gc", 0.01): (96.98, 97.00), ("nas_gc", 0.1): (97.00, 97.22),
          ("nas_gc", 0.5): (96.83, 96.85)}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "verdict"),
    [({}, "agrees"), ({("nas_gc", 0.1): None}, "incomplete"), ({("nas_gc", 0.1): (98.0, 98.2)}, "differs")],
)
def test_a_table_agrees_only_when_every_published_cell_does(tmp_path, change, verdict) -> None:
    text = set_toml((PROFILE_DIR / "smoke.toml").read_text(), "table6", "datasets", '["cifar10"]')
    path = tmp_path / "cifar.toml"
    path.write_text(set_toml(text, "table6", "budgets", "[0.01, 0.1, 0.5]"))
    profile = load_profile(path)
    layout = Layout.of(tmp_path, profile)
    trials = {**TABLE6, **change}
    for key in load_experiment("table6", profile).jobs:
        values = (96.73, 96.73) if key.algorithm == "random" else trials[key.attack, key.budget]
        if values is not None:
            out = layout.train_dir(key) / "result.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"test_accuracy": values[key.trial], "log": []}))
    evidence = grid_table_evidence("table6", profile, layout)
    assert evidence.verdict == verdict and not evidence.stand_in
    counts = evidence.counts()
    assert (
        counts
        == {
            "agrees": {"cells": 4, "present": 4, "within": 4, "marks_agree": 4},
            "incomplete": {"cells": 4, "present": 3, "within": 3, "marks_agree": 3},
            "differs": {"cells": 4, "present": 4, "within": 3, "marks_agree": 4},
        }[verdict]
    )
