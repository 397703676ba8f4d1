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
