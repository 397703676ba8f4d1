"""docs/extending.md's worked example: a new attack, a new defense and a new search algorithm, each one file
outside the repository, loaded through NASAUDIT_PLUGINS and run through plan, a grid of the smoke profile
and table."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from nasaudit.attacks import ATTACKS
from nasaudit.cli import main
from nasaudit.config import SECTIONS, load_profile
from nasaudit.defenses import DEFENSES, read_defended_manifest
from nasaudit.errors import NasauditError
from nasaudit.grid import Layout, build_grid, load_experiment
from nasaudit.grid.plan import estimate
from nasaudit.nas import NAS
from nasaudit.plugins import load_plugins

from conftest import FORWARD, ImageCounter, profile_file

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("salt_pepper", "median_filter", "proxy_pick")


def example_files() -> dict[str, str]:
    """The page's Python blocks that start with ``# NAME.py``: the files it tells a user to write."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return {m[1]: block for block in blocks if (m := re.match(r"# (\w+\.py)\n", block))}


@pytest.fixture
def plugins(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The example's files in a folder of their own, registered for this test only."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in example_files().items():
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("NASAUDIT_PLUGINS", ",".join(PLUGINS))
    for registry in (NAS, ATTACKS, DEFENSES, SECTIONS):  # every registration is undone after the test
        monkeypatch.setattr(registry, "_items", dict(registry._items))
        monkeypatch.setattr(registry, "_uses", dict(registry._uses))
    load_plugins()
    yield
    for name in PLUGINS:
        sys.modules.pop(name, None)


def write_profile(folder: Path, *extra: str) -> Path:
    """The smoke profile with Table 1 of the new algorithm and attack only, retrained for 0 epochs."""
    return profile_file(
        folder / "extend.toml",
        "train.epochs=0",
        "darts_net.channels=4",
        "darts_net.layers=3",
        "random_baseline.n=2",
        "grid.retries=0",
        'table1.algorithms=["proxy_pick"]',
        'table1.attacks=["salt_pepper"]',
        "table1.exclude=[]",
        "table1.budgets=[0.5]",
        "table1.trials=2",
        "proxy_pick.samples=3",  # the plugin's own section, set in the file like a built-in one
        *extra,
    )


def test_the_page_shows_one_file_per_plugin() -> None:
    assert set(example_files()) == {f"{name}.py" for name in PLUGINS}


def test_a_plugin_section_is_checked_like_a_built_in_one(tmp_path, plugins) -> None:
    profile = load_profile(write_profile(tmp_path))
    assert profile.proxy_pick.samples == 3 and profile.proxy_pick.proxy == "synflow"  # the rest: defaults
    assert profile.salt_pepper.fraction == 0.05  # a section the file leaves out: its defaults
    with pytest.raises(NasauditError, match=r"unknown key 'proxy_pick.nope'"):
        load_profile(write_profile(tmp_path, "proxy_pick.nope=1"))
    with pytest.raises(NasauditError, match=r"proxy_pick.samples must be int"):
        load_profile(write_profile(tmp_path), ["proxy_pick.samples=three"])


def test_a_new_algorithm_and_attack_run_through_plan_grid_and_table(tmp_path, plugins, capsys) -> None:
    path, results, out = write_profile(tmp_path), tmp_path / "results", tmp_path / "tables"
    profile = load_profile(path)
    grid = build_grid(load_experiment("table1", profile), Layout.of(results, profile))

    # plan: the search stage is the new algorithm's cost model (the random baseline's costs nothing),
    # the poison stage the new attack's (free)
    stages = {s.stage: s for s in estimate(grid, profile, None, timer=ImageCounter()).stages}
    searches = [t for t in grid.by_stage()["search"] if t.algorithm == "proxy_pick"]
    per_search, _ = NAS.get("proxy_pick").cost(profile, 128, ImageCounter())
    assert len(searches) == 4 and per_search == 3 * 16  # 2 clean + 2 poisoned trials; samples × batch
    assert stages["search"].seconds == len(searches) * per_search
    assert stages["poison"].tasks == 1 and stages["poison"].seconds == 0.0
    assert not any(s.unestimated for s in stages.values())
    args = ["--profile", str(path), "--results", str(results)]
    assert main(["plan", "table1", *args]) == 0
    assert "not estimated" not in capsys.readouterr().out

    # grid: every job runs in this process; the search's identity holds the plugin's section
    assert main(["grid", "run", "table1", *args, "--workers", "0"]) == 0
    job = next(k for k in grid.experiment.jobs if k.algorithm == "proxy_pick" and k.attack == "salt_pepper")
    identity = json.loads((grid.layout.search_dir(job) / "job.json").read_text())
    assert '"proxy_pick"' in json.dumps(identity) and '"samples": 3' in json.dumps(identity)

    # table: the registered labels name the column and the row
    assert main(["table", "table1", *args, "--out", str(out)]) == 0
    markdown = (out / "table1.md").read_text()
    assert "ProxyPick" in markdown and "Salt & Pepper" in markdown and "proxy_pick" not in markdown
    table = pd.read_csv(out / "table1.csv")
    assert set(table["algorithm"]) == {"proxy_pick"} and set(table["attack"]) == {"none", "salt_pepper"}


def test_a_new_defense_runs_through_plan_grid_and_table(tmp_path, plugins) -> None:
    """Table 4 of the new defense against the new attack: its cost model in the plan's defend stage,
    its filtered images in the search, its label on the table's row."""
    path = write_profile(
        tmp_path,
        'table4.algorithms=["proxy_pick"]',
        'table4.conditions=["median_filter:salt_pepper"]',
        "table4.exclude=[]",
    )
    results, out = tmp_path / "results", tmp_path / "tables"
    profile = load_profile(path)
    grid = build_grid(load_experiment("table4", profile), Layout.of(results, profile))

    # plan: one filter pass per training image of the one defended set (1 ms each under ImageCounter)
    stages = {s.stage: s for s in estimate(grid, profile, None, timer=ImageCounter()).stages}
    assert stages["defend"].tasks == 1 and not stages["defend"].unestimated
    assert stages["defend"].seconds == pytest.approx(
        DEFENSES.get("median_filter").cost(profile, 128, ImageCounter())
    )
    assert stages["defend"].seconds == pytest.approx(128 * FORWARD)

    # grid and table: the defended set holds median-filtered images; the row prints the label
    args = ["--profile", str(path), "--results", str(results)]
    assert main(["grid", "run", "table4", *args, "--workers", "0"]) == 0
    manifest = read_defended_manifest(grid.layout.defended(grid.by_stage()["defend"][0]))
    assert manifest["defense"] == "median_filter" and manifest["params"] == {"size": 3}
    assert manifest["kind"] == "images"
    assert main(["table", "table4", *args, "--out", str(out)]) == 0
    markdown = (out / "table4.md").read_text()
    assert "Median Filter" in markdown and "median_filter" not in markdown
    assert set(pd.read_csv(out / "table4.csv")["defense"].dropna()) == {"median_filter"}
