"""Figure 1: cell diagrams drawn from genotypes, read back from the matplotlib artists."""

from __future__ import annotations

import json

import numpy as np

from nasaudit.cli import main
from nasaudit.report.cells_figure import cells_figure, save_cells_figure
from nasaudit.spaces.darts import load, random_genotype


def _drawn_edges(fig) -> dict[tuple[str, int, int], str]:
    """(cell, node, input) → op of every edge label, per axes column in drawing order."""
    return {
        tuple(int(v) if v.isdigit() else v for v in text.get_gid().split(":")): text.get_text()
        for ax in fig.axes
        for text in ax.texts
        if text.get_gid()
    }


def test_edge_labels_are_the_genotypes_ops() -> None:
    genotype = random_genotype(np.random.default_rng(4))
    fig = cells_figure([("random", genotype)])
    expected = {
        (cell, k // 2, inp): op
        for cell, pairs in (("normal", genotype.normal), ("reduce", genotype.reduce))
        for k, (op, inp) in enumerate(pairs)
    }
    assert _drawn_edges(fig) == expected
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["random: normal cell", "random: reduction cell"]
    node_names = {t.get_text() for t in fig.axes[0].texts if not t.get_gid() and t.get_text()}  # not arrows
    assert node_names == {"$c_{k-2}$", "$c_{k-1}$", "0", "1", "2", "3", "$c_{k}$"}


def test_a_node_reading_one_input_twice_shows_both_edges() -> None:
    fig = cells_figure([("RANDOM_3", load("random_3"))])  # normal node 3: dil_conv_5x5 on input 1, twice
    labels = {t.get_gid(): t for t in fig.axes[0].texts if t.get_gid()}
    first, second = labels["normal:3:1"], labels["normal:3:1:again"]
    assert first.get_text() == second.get_text() == "dil_conv_5x5"
    assert first.get_position() != second.get_position()


def test_one_column_per_architecture() -> None:
    fig = cells_figure([("clean", load("pdarts")), ("poisoned", load("darts_v1"))])
    assert len(fig.axes) == 4
    per_axes = [{text.get_gid(): text.get_text() for text in ax.texts if text.get_gid()} for ax in fig.axes]
    # subplots are row-major: normal cells first (clean, poisoned), then reduction cells
    assert per_axes[1]["normal:3:2"] == "skip_connect" and per_axes[3]["reduce:3:0"] == "avg_pool_3x3"
    assert sorted(per_axes[0].values()) == sorted(op for op, _ in load("pdarts").normal)


def test_png_and_pdf_are_written(tmp_path) -> None:
    png, pdf = save_cells_figure([("P-DARTS", load("pdarts"))], tmp_path / "figure1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"


def test_cli_draws_names_and_files_and_checks_labels(tmp_path, capsys) -> None:
    arch = tmp_path / "job" / "architecture.json"
    arch.parent.mkdir()
    arch.write_text(json.dumps({"space": "darts", "architecture": load("tenas").to_json()}))
    out = tmp_path / "fig" / "cells"
    assert main(["figure", "cells", "--arch", "pdarts", "--arch", str(arch), "--out", str(out)]) == 0
    assert (tmp_path / "fig" / "cells.png").is_file() and (tmp_path / "fig" / "cells.pdf").is_file()
    assert (
        main(["figure", "cells", "--arch", "pdarts", "--label", "a", "--label", "b", "--out", str(out)]) == 2
    )
    assert "one --label per --arch" in capsys.readouterr().err


def test_grid_pair_is_the_best_clean_and_the_worst_rlf_architecture(tmp_path) -> None:
    from nasaudit.config import load_profile
    from nasaudit.grid.jobs import JobKey, Layout
    from nasaudit.report.cells_figure import figure1_architectures

    profile = load_profile("smoke")
    layout, dataset = Layout.of(tmp_path, profile), profile.experiment.datasets[0]
    names = iter(["pdarts", "tenas", "darts_v1", "darts_v2"])
    accuracies = {
        ("none", 0.0, 0): 90.0,
        ("none", 0.0, 1): 95.0,
        ("rlf", 0.5, 0): 80.0,
        ("rlf", 0.5, 1): 70.0,
    }
    chosen = {}
    for (attack, budget, trial), accuracy in accuracies.items():
        key, name = JobKey(dataset, "pdarts", attack, budget, trial), next(names)
        chosen[(attack, trial)] = name
        layout.search_dir(key).mkdir(parents=True)
        (layout.search_dir(key) / "architecture.json").write_text(
            json.dumps({"space": "darts", "architecture": load(name).to_json()})
        )
        layout.train_dir(key).mkdir(parents=True)
        log = [{"epoch": 0, "test_acc": accuracy}, {"epoch": 1, "test_acc": accuracy - 10.0}]
        (layout.train_dir(key) / "result.json").write_text(
            json.dumps({"test_accuracy": accuracy - 10, "log": log})
        )
    (clean_label, clean), (rlf_label, rlf) = figure1_architectures(tmp_path, profile)
    assert clean == load(chosen[("none", 1)]) and rlf == load(chosen[("rlf", 1)])
    assert clean_label == "clean (best of 2, 95.00%)" and rlf_label == "RLF p = 50% (worst of 2, 70.00%)"
    out = tmp_path / "figure1"
    argv = ["figure", "cells", "--grid", str(tmp_path), "--profile", "smoke", "--out", str(out)]
    assert main(argv) == 0 and out.with_suffix(".pdf").is_file()
    assert main(["figure", "cells", "--grid", str(tmp_path / "empty"), "--out", str(out)]) == 2
