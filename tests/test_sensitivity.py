"""Table 2: metric-sensitivity jobs (one per architecture, resumable, shardable) and the table from them."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from nasaudit.analysis import sensitivity
from nasaudit.analysis.sensitivity import GROUPS, _crops, metric_groups, run_sensitivity
from nasaudit.attacks import AttackContext, run_attack
from nasaudit.config import PROFILE_DIR, load_profile
from nasaudit.data.poison import save_poison
from nasaudit.errors import NasauditError
from nasaudit.report.sensitivity import CSV_COLUMNS, summarise, to_markdown

CPU = torch.device("cpu")


@pytest.fixture
def profile():
    return load_profile("smoke")


@pytest.fixture
def cfg(profile):
    """Two architectures, 8 samples: every group and metric, in seconds."""
    return dataclasses.replace(
        profile.sensitivity,
        architectures=2,
        samples=8,
        batch_size=4,
        channels=2,
        layers=3,
        tenas_samples=2,
        tenas_batch_size=2,
    )


@pytest.fixture
def poisons(tiny_dataset, profile, tmp_path):
    context = AttackContext(profile=profile, device=CPU, cache_dir=tmp_path)
    return {
        name: save_poison(run_attack(name, tiny_dataset, 0.5, 0, context), tmp_path / "poisons" / name)
        for name in ("rlf", "gaussian")
    }


def _run(data, poisons, cfg, out, **kwargs):
    return run_sensitivity(
        data, poisons, cfg, seed=0, pool_ops="as_run", device=CPU, out_dir=out, progress=False, **kwargs
    )


def test_only_the_data_change_and_label_free_metrics_ignore_label_flips(tiny_dataset, poisons, cfg, tmp_path):
    table = _run(tiny_dataset, poisons, cfg, tmp_path / "a")
    assert tuple(table.columns) == CSV_COLUMNS and len(table) == 2 * len(cfg.metrics)
    cells = table.set_index(["metric", "attack"])
    assert (cells["n"] == 2).all() and (cells["budget"] == 0.5).all()
    for metric in ("ntk", "linear_regions", "jacob_cov"):  # no labels read: RLF changes nothing
        assert cells.loc[(metric, "rlf"), "mean"] == 0.0 and cells.loc[(metric, "rlf"), "std"] == 0.0
    assert (cells.loc["synflow", "mean"] == 0.0).all()  # reads no data at all (paper footnote 3)
    per_arch = pd.read_csv(tmp_path / "a" / "table2_per_architecture.csv")
    flipped = per_arch[(per_arch["attack"] == "rlf") & per_arch["metric"].isin(["grad_norm", "snip"])]
    assert (flipped["change"] != 0).any()  # the loss-based metrics do read the flipped labels
    noisy = per_arch[(per_arch["attack"] == "gaussian") & (per_arch["metric"] == "ntk")]
    assert (noisy["change"] != 0).all()
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"table2.csv", "table2.md", "table2_vs_paper.csv"}


def test_jobs_resume_shard_and_compute_only_what_is_missing(
    tiny_dataset, poisons, cfg, tmp_path, monkeypatch
):
    calls = []
    original = GROUPS.get("tenas").score

    def counting(state, probe, metrics, cfg):
        calls.append(probe.digest)
        return original(state, probe, metrics, cfg)

    monkeypatch.setattr(GROUPS.get("tenas"), "score", counting)
    cfg = dataclasses.replace(cfg, metrics=["ntk_cond", "linear_regions", "snip"])
    out = tmp_path / "sharded"
    assert _run(tiny_dataset, {"rlf": poisons["rlf"]}, cfg, out, shard=(1, 2)) is None  # arch 0 missing
    assert _run(tiny_dataset, {"rlf": poisons["rlf"]}, cfg, out, shard=(0, 2)) is not None
    assert len(calls) == 2  # clean images once per architecture; RLF keeps the images
    calls.clear()
    full = _run(tiny_dataset, poisons, cfg, out)  # a poison added later
    assert len(calls) == 2  # only the new Gaussian images are scored
    reference = _run(tiny_dataset, poisons, cfg, tmp_path / "whole")
    pd.testing.assert_frame_equal(full, reference)  # resumed and sharded = one run; same seed, same numbers
    refused = r"arch_000\.json: made by another run \(its genotype, indices_sha256, seed"
    with pytest.raises(NasauditError, match=refused):
        run_sensitivity(
            tiny_dataset, poisons, cfg, seed=1, pool_ops="as_run", device=CPU, out_dir=out, progress=False
        )


def test_crops_are_three_by_three_windows_of_one_channel() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    crops = np.array([[2, 5, 7], [0, 29, 0]])
    out = _crops(images, crops)
    assert out.shape == (2, 1, 3, 3)
    torch.testing.assert_close(out[0, 0], images[0, 2, 5:8, 7:10])
    torch.testing.assert_close(out[1, 0], images[1, 0, 29:32, 0:3])


def test_summarise_means_stds_and_skipped_architectures() -> None:
    values = [
        (0, {"clean": {"snip": 2.0, "fisher": 0.0}, "rlf": {"snip": 3.0, "fisher": 1.0}}),
        (1, {"clean": {"snip": -4.0, "fisher": 1.0}, "rlf": {"snip": -2.0, "fisher": math.nan}}),
    ]
    table, per_arch = summarise(values, {"rlf": 0.5}, {"snip": "robot", "fisher": "robot"}, "cifar10")
    snip = table.set_index("metric").loc["snip"]
    assert snip["mean"] == pytest.approx(50.0) and snip["std"] == pytest.approx(
        0.0
    )  # +50% and +50% of |clean|
    fisher = table.set_index("metric").loc["fisher"]
    assert fisher["n"] == 0 and math.isnan(fisher["mean"])  # clean 0 (no scale) and a NaN: both skipped
    assert len(per_arch) == 4


def test_markdown_has_the_papers_layout(tiny_dataset) -> None:
    table = pd.DataFrame(
        [
            ["table2", "cifar10", "tenas", "ntk", "rlf", 0.5, 100, 0.0, 0.0],
            ["table2", "cifar10", "robot", "grasp", "gaussian", 0.5, 100, 1.08, 10.59],
        ],
        columns=list(CSV_COLUMNS),
    )
    text = to_markdown(table)
    assert "TE-NAS κ_NTK" in text and "RoBoT grasp" in text
    assert text.index("Gaussian Noise") < text.index("RLF")  # the paper's row order
    assert "1.08 ± 10.59%" in text and "0.00 ± 0.00%" in text


def test_unknown_metric_and_bad_sizes_are_one_line(cfg, tiny_dataset, poisons, tmp_path) -> None:
    with pytest.raises(NasauditError, match="metric 'zen' is not scored by any group"):
        metric_groups(["snip", "zen"])
    with pytest.raises(NasauditError, match="samples"):
        _run(tiny_dataset, poisons, dataclasses.replace(cfg, samples=41), tmp_path)
    with pytest.raises(NasauditError, match="names the unpoisoned data"):
        _run(tiny_dataset, {"clean": poisons["rlf"]}, cfg, tmp_path)
    assert sensitivity.CROP == 3


def test_cli_writes_table2_and_rejects_a_bad_shard(tmp_path) -> None:
    from nasaudit.cli import main

    text = (PROFILE_DIR / "smoke.toml").read_text()
    section = text.index("[sensitivity]")
    head, tail = text[:section], text[section:]
    tail = re.sub(r"(?m)^architectures = .*$", "architectures = 1", tail, count=1)
    tail = re.sub(r"(?m)^metrics = .*$", 'metrics = ["linear_regions", "snip"]', tail, count=1)
    tail = re.sub(r"(?m)^attacks = .*$", 'attacks = ["rlf"]', tail, count=1)
    path = tmp_path / "tiny.toml"
    path.write_text(head + tail)
    out = tmp_path / "t2"
    argv = [
        "sensitivity",
        "--profile",
        str(path),
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    table = pd.read_csv(out / "table2.csv")
    assert set(table["metric"]) == {"linear_regions", "snip"} and set(table["attack"]) == {"rlf"}
    assert json.loads((out / "poisons" / "rlf.json").read_text())["budget"] == pytest.approx(0.5, abs=1e-3)
    assert main([*argv, "--shard", "2/2"]) == 2
