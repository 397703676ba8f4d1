"""The CLI: --help on every subcommand, real work on digits, and one-line errors without tracebacks."""

from __future__ import annotations

import argparse
import json

import pytest

from nasaudit.cli import build_parser, main


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys) -> None:
    paths = list(_subcommand_paths(build_parser()))
    assert ("data", "download") in paths and ("poison", "inspect") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        assert "usage: nasaudit " + " ".join(path) in capsys.readouterr().out


def test_poison_make_inspect_apply(tmp_path, capsys) -> None:
    out = tmp_path / "rlf"
    assert (
        main(["poison", "--attack", "rlf", "--dataset", "digits", "--budget", "0.5", "--out", str(out)]) == 0
    )
    assert main(["poison", "inspect", str(out) + ".npz"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["n_poisoned"] == report["samples_changed"] == round(1437 * 0.5)
    assert main(["poison", "apply", str(out) + ".npz", "--out", str(tmp_path / "train")]) == 0
    assert (tmp_path / "train.npz").is_file() and (tmp_path / "train.json").is_file()


def test_data_info_prints_json(capsys) -> None:
    assert main(["data", "info", "digits"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"] == 1437 and sum(info["train_class_counts"]) == 1437


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "info", "cifar10", "--root", "/nonexistent"], "nasaudit data download cifar10"),
        (["data", "info", "imagenet"], "unknown dataset 'imagenet'"),
        (["poison", "--attack", "nope", "--out", "x"], "unknown attack 'nope'"),
        (["poison", "--attack", "rlf", "--budget", "1.5", "--out", "x"], "budget 1.5 is outside (0, 1]"),
        (["poison", "--attack", "rlf", "--budget", "0", "--out", "x"], "budget 0.0 is outside (0, 1]"),
        (["poison", "inspect", "missing.npz"], "no such poison file"),
        (["poison", "--attack", "rlf", "--profile", "huge", "--out", "x"], "unknown profile 'huge'"),
    ],
)
def test_bad_input_gives_one_line(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasaudit: error: ") and message in err and err.count("\n") == 1


@pytest.fixture
def quick_profile(tmp_path):
    """The smoke profile shrunk to one epoch of a 3-cell, 4-channel network: seconds on CPU."""
    from nasaudit.config import PROFILE_DIR

    text = (PROFILE_DIR / "smoke.toml").read_text()
    text = text.replace("epochs = 2", "epochs = 1").replace("channels = 8", "channels = 4")
    path = tmp_path / "quick.toml"
    path.write_text(text.replace("layers = 5", "layers = 3").replace("n = 2", "n = 2"))
    return str(path)


def test_arch_info_matches_the_published_size(capsys) -> None:
    assert main(["arch", "info", "--arch", "darts_v2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["params"] - 3.3e6) < 0.05e6 and info["flops"] > 0


def test_search_then_train_then_resume(tmp_path, capsys, quick_profile) -> None:
    search = tmp_path / "search"
    args = ["--dataset", "digits", "--profile", quick_profile, "--seed", "3", "--device", "cpu"]
    assert main(["search", "--algo", "random", *args, "--out", str(search)]) == 0
    record = json.loads((search / "architecture.json").read_text())
    assert record["space"] == "darts" and record["search_data"]["poison"] is None
    train = tmp_path / "train"
    assert main(["train", "--arch", str(search / "architecture.json"), *args, "--out", str(train)]) == 0
    result = json.loads((train / "result.json").read_text())
    assert result["description"]["architecture"] == record["architecture"]
    mtime = (train / "result.json").stat().st_mtime_ns
    assert main(["train", "--arch", str(search / "architecture.json"), *args, "--out", str(train)]) == 0
    assert (train / "result.json").stat().st_mtime_ns == mtime  # a finished job is not redone


def test_search_reads_the_poisoned_samples(tmp_path, quick_profile) -> None:
    poison = tmp_path / "rlf"
    assert main(["poison", "--attack", "rlf", "--budget", "0.5", "--out", str(poison)]) == 0
    out = tmp_path / "search"
    assert main(["search", "--algo", "random", "--poison", f"{poison}.npz", "--profile", quick_profile,
                 "--out", str(out)]) == 0  # fmt: skip
    data = json.loads((out / "architecture.json").read_text())["search_data"]
    from nasaudit.data.datasets import load_dataset

    assert data["attack"] == "rlf" and data["train_sha256"] != load_dataset("digits").train.sha256


def test_random_baseline_reports_mean_and_std(tmp_path, capsys, quick_profile) -> None:
    out = tmp_path / "baseline"
    assert main(["random-baseline", "--profile", quick_profile, "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and len(summary["accuracies"]) == 2
    assert summary["mean"] == pytest.approx(sum(summary["accuracies"]) / 2)
    genotypes = [
        json.loads((out / f"arch_{i:03d}" / "result.json").read_text())["description"] for i in (0, 1)
    ]
    assert genotypes[0]["architecture"] != genotypes[1]["architecture"]
