"""The CLI: --help on every subcommand, real work on digits, and one-line errors without tracebacks."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from nasaudit.cli import build_parser, main

from conftest import profile_file


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
        assert main([*path, "--help"]) == 0
        assert "usage: nasaudit " + " ".join(path) in capsys.readouterr().out


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_help_shows_every_default_and_one_profile_default() -> None:
    """Every option with a default says it in --help, and --profile defaults to the same everywhere."""
    from nasaudit.options import DEFAULT_PROFILE

    profiles = set()
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text or "default" in (action.help or ""), action
            if "--profile" in action.option_strings:
                profiles.add(action.default)
                assert "--set" in parser._option_string_actions, parser.prog  # its overrides come with it
    assert profiles == {DEFAULT_PROFILE}


def test_set_reaches_the_command_and_a_bad_one_stops_it_first(tmp_path, capsys) -> None:
    results = tmp_path / "r"
    argv = ["grid", "status", "table1", "--profile", "smoke", "--results", str(results)]
    assert main(argv) == 0
    tasks = re.search(r"table1: 0/(\d+) tasks", capsys.readouterr().out)
    assert main([*argv, "--set", "table1.trials=1", "--set", "table1.budgets=[0.5]"]) == 0
    fewer = re.search(r"table1: 0/(\d+) tasks", capsys.readouterr().out)
    assert tasks and fewer and 0 < int(fewer.group(1)) < int(tasks.group(1))
    run = [
        "grid",
        "run",
        "table1",
        "--profile",
        "smoke",
        "--results",
        str(results),
        "--set",
        "train.epochs=x",
    ]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err == "nasaudit: error: --set: train.epochs must be int, got str 'x'\n"
    assert not any(results.rglob("*.json"))  # refused before any work


@pytest.mark.parametrize(
    ("argv", "registry"),
    [
        (["poison", "--help"], "nasaudit.attacks:ATTACKS"),
        (["search", "--help"], "nasaudit.nas:NAS"),
        (["defend", "--help"], "nasaudit.defenses:DEFENSES"),
    ],
)
def test_help_lists_the_registered_names(capsys, argv, registry) -> None:
    import importlib

    module, name = registry.split(":")
    assert main(argv) == 0
    names = getattr(importlib.import_module(module), name).names()
    assert ", ".join(names) in " ".join(capsys.readouterr().out.split())


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
    text = re.sub(r"^epochs = \d+$", "epochs = 1", text, flags=re.M).replace("channels = 8", "channels = 4")
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
    from nasaudit.spaces.darts import GENOTYPES

    # the profile lists the authors' random genotypes: trial k retrains the k-th, whatever the seed
    assert [g["architecture"] for g in genotypes] == [GENOTYPES.get(f"random_{k}").to_json() for k in (1, 2)]
    assert (
        main(["random-baseline", "--profile", quick_profile, "--n", "3", "--out", str(tmp_path / "b3")]) == 2
    )
    err = capsys.readouterr().err
    assert "[random_baseline] genotypes lists 2" in err and err.count("\n") == 1
    assert not (tmp_path / "b3").exists()  # refused before any work


def test_random_baseline_offers_the_spaces_of_the_registered_random_samplers(tmp_path, capsys) -> None:
    """The samplers registered with ``is_random_baseline``, one per space, are what --space accepts."""
    from nasaudit.nas import random_samplers

    assert random_samplers() == {"darts": "random", "mbv3": "random_mbv3"}
    assert main(["random-baseline", "--help"]) == 0
    assert "search space: darts, mbv3 (default: darts)" in " ".join(capsys.readouterr().out.split())
    assert main(["random-baseline", "--space", "nope", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "search space 'nope' has no random sampler; choose one of: darts, mbv3" in err
    assert err.count("\n") == 1 and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def tenas_profile(tmp_path_factory) -> str:
    """The smoke profile's TE-NAS with one op per edge: only the edge rounds (24 candidates), seconds.

    The smoke search's extra op round costs minutes on 2 CPU cores; op rounds are tested in test_tenas.
    """
    path = tmp_path_factory.mktemp("profile") / "tenas_one_op.toml"
    return str(profile_file(path, 'tenas.ops=["skip_connect"]'))


def _tenas_search(out, profile: str, *extra: str) -> dict:
    argv = ["search", "--algo", "tenas", "--dataset", "digits", "--profile", profile, "--seed", "0"]
    assert main([*argv, *extra, "--device", "cpu", "--out", str(out)]) == 0
    return json.loads((out / "architecture.json").read_text())


@pytest.fixture(scope="module")
def tenas_job(tmp_path_factory, tenas_profile):
    """One clean TE-NAS search through the CLI, shared by the tests below."""
    out = tmp_path_factory.mktemp("tenas") / "job"
    _tenas_search(out, tenas_profile)
    return out


def test_tenas_search_through_the_cli_gives_a_valid_genotype_again(tenas_job, tenas_profile, capsys) -> None:
    from nasaudit.spaces.darts import CELL_TYPES, NODES, Genotype

    record = json.loads((tenas_job / "architecture.json").read_text())
    genotype = Genotype.from_json(record["architecture"])  # raises on a malformed genotype
    for cell in CELL_TYPES:
        pairs = getattr(genotype, cell)
        assert len(pairs) == 2 * NODES and {op for op, _ in pairs} == {"skip_connect"}
        for node in range(NODES):  # two distinct inputs per node, each a cell input or an earlier node
            inputs = {inp for _, inp in pairs[2 * node : 2 * node + 2]}
            assert len(inputs) == 2 and max(inputs) < node + 2
    assert record["algorithm"] == "tenas" and record["search_data"]["poison"] is None
    capsys.readouterr()
    again = _tenas_search(tenas_job, tenas_profile)
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert again["architecture"] == printed == record["architecture"]


def test_tenas_search_ignores_a_label_flipping_poison(tmp_path, tenas_job, tenas_profile) -> None:
    """TE-NAS never reads labels, so a label flip leaves the genotype unchanged (docs/algorithms.md)."""
    poison = tmp_path / "rlf"
    argv = ["poison", "--attack", "rlf", "--dataset", "digits", "--budget", "0.5", "--out", str(poison)]
    assert main(argv) == 0
    clean = json.loads((tenas_job / "architecture.json").read_text())
    flipped = _tenas_search(tmp_path / "flipped", tenas_profile, "--poison", f"{poison}.npz")
    assert flipped["search_data"]["attack"] == "rlf"
    assert flipped["search_data"]["train_sha256"] != clean["search_data"]["train_sha256"]
    assert flipped["architecture"] == clean["architecture"]  # searched from scratch in another folder
