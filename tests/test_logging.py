"""Verbosity (-v/-q), results printed whatever it is, and per-epoch metrics mirrored to TensorBoard."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from nasaudit import metrics_log, progress, threads, verbosity
from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.models import MODELS
from nasaudit.spaces.darts import load
from nasaudit.train import RESULT, train_model

PROFILE = load_profile("smoke")
CFG = dataclasses.replace(PROFILE.train, epochs=3, batch_size=16, eval_every=2, checkpoint_every=1)
SMALL = dataclasses.replace(PROFILE, darts_net=dataclasses.replace(PROFILE.darts_net, channels=4, layers=3))


@pytest.fixture(autouse=True)
def _default_verbosity():
    """Each test starts from, and leaves, the CLI's default (INFO) setup."""
    verbosity.configure()
    yield
    verbosity.configure()


@pytest.mark.parametrize("where", ["top", "command"])
def test_quiet_silences_status_lines_and_keeps_the_result(capsys, where) -> None:
    assert main(["data", "download", "digits"]) == 0
    assert "digits: 1437 train / 360 test images" in capsys.readouterr().out  # the INFO line, as before
    argv = ["-q", "data", "download", "digits"] if where == "top" else ["data", "download", "digits", "-q"]
    assert main(argv) == 0
    assert capsys.readouterr() == ("", "")
    info = ["-q", "data", "info", "digits"] if where == "top" else ["data", "info", "digits", "--quiet"]
    assert main(info) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["train"] == 1437  # a command's result is output, not logging


def test_verbose_shows_debug_lines_with_logger_names_on_stderr(capsys, monkeypatch) -> None:
    monkeypatch.setattr(threads, "_logged", set())  # the thread choice is logged once per process
    assert main(["-v", "data", "info", "digits"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "digits"  # debug lines never mix into a piped result
    assert "DEBUG   nasaudit.cli: [threads]" in err  # the thread choice, shown on a terminal only otherwise
    assert main(["data", "info", "digits"]) == 0
    assert "DEBUG" not in capsys.readouterr().err


def test_verbose_and_quiet_exclude_each_other(capsys) -> None:
    assert main(["-v", "-q", "data", "info", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not allowed with argument" in err


def test_quiet_hides_progress_bars(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress.shown()
    verbosity.configure(logging.WARNING)
    assert not progress.shown()


@pytest.mark.parametrize(
    "command",
    [["train", "--arch", "pdarts"], ["sensitivity"]],  # sensitivity: the GC poisons it crafts
)
def test_tensorboard_without_the_package_is_one_line_before_any_work(
    tmp_path, capsys, monkeypatch, command
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # importing it raises ImportError
    monkeypatch.delenv(metrics_log.ENV, raising=False)
    argv = [*command, "--profile", "smoke", "--device", "cpu",
            "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "job")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[tensorboard]"' in err
    assert not (tmp_path / "job").exists() and not (tmp_path / "tb").exists()
    assert metrics_log.ENV not in os.environ


def test_tensorboard_scalars_equal_the_json_metrics(tiny_dataset, tmp_path, monkeypatch, tensorboard) -> None:
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "runs" / "train"

    def build():
        return MODELS.get("darts")(load("pdarts"), 4, SMALL)

    train_model(build, tiny_dataset, CFG, seed=0, device=torch.device("cpu"), out_dir=job, progress=False)
    log = json.loads((job / RESULT).read_text())["log"]
    assert list(tensorboard) == [str(tmp_path / "tb" / "runs" / "train")]  # DIR/<job folder>
    recorded = tensorboard[str(tmp_path / "tb" / "runs" / "train")]
    expected: dict[str, list[tuple[int, float]]] = {}
    for entry in log:
        for key, number in entry.items():
            expected.setdefault(key, []).append((entry["epoch"], number))
    assert recorded == expected
    assert [step for step, _ in recorded["test_acc"]] == [1, 2]  # evaluated epochs only (eval_every=2, last)


def test_scalars_flatten_mappings_and_leave_out_flags_and_text() -> None:
    entry = {"epoch": 3, "loss": 0.5, "train_arch": True, "genotype": {"normal": [["skip", 0]]},
             "alpha_entropy": {"normal": 1.5, "reduce": 2}, "phase": "bo"}  # fmt: skip
    assert metrics_log.scalars(entry) == {
        "epoch": 3.0, "loss": 0.5, "alpha_entropy/normal": 1.5, "alpha_entropy/reduce": 2.0
    }  # fmt: skip


@pytest.mark.parametrize(("argv", "flags"), [(["-v"], ["-v"]), ([], []), (["-q"], ["-q"])])
def test_portability_runs_take_the_parents_verbosity(tmp_path, monkeypatch, argv, flags) -> None:
    from nasaudit import smoke

    commands: list[list[str]] = []

    def run(command, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(smoke.subprocess, "run", run)
    (tmp_path / "expected.json").write_text("{}")
    out = ["--out", str(tmp_path / "out"), "--expected", str(tmp_path / "expected.json"), "--steps", "data"]
    smoke.main(["--portability", *out, *argv])
    assert len(commands) == len(smoke.SETTINGS)
    assert all([part for part in c if part in ("-v", "-q")] == flags for c in commands)


def test_torch_2_0_0s_repeated_typed_storage_warning_is_not_shown(recwarn) -> None:
    """torch 2.0.0 (the P-DARTS image) warns at every torch.save from inside torch; other warnings stay."""
    import warnings

    verbosity.configure()
    warnings.warn("TypedStorage is deprecated. It will be removed in the future", UserWarning, stacklevel=1)
    warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["something else"]
