"""The GPU check's report logic (no GPU needed) and its refusal on a machine without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmarks.gpu_check import SECTIONS, precision_summary
from benchmarks.gpu_check_report import headline, render

ROOT = Path(__file__).resolve().parents[1]

SECTIONS_DONE = {
    "environment": {
        "ok": True,
        "wall_s": 4.0,
        "result": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "torch": "2.11.0", "cuda": "13.0"},
    },
    "preflight": {
        "ok": True,
        "wall_s": 90.0,
        "result": {"tasks": [{"kind": "retrain/darts", "ok": True}, {"kind": "search/robot", "ok": False}]},
    },
    "benchmarks": {
        "ok": True,
        "wall_s": 100.0,
        "result": {
            "retrain_fp32": {"ok": True, "ratio": 0.95},
            "kappa_ntk": {"ok": False, "error": "RuntimeError: boom"},
            "gc": {"ok": True, "step_ratio": 4.0, "clean_ratio": 3.0},
            "robot_pool": {
                "ok": True,
                "stacks": {
                    "1": {"arch_per_s": 2.0, "pool_hours": 8.3, "peak_gib": 1.5},
                    "25": {"arch_per_s": 9.0, "pool_hours": 1.9, "peak_gib": 40.0},
                },
            },
        },
    },
    "concurrency": {"ok": True, "wall_s": 94.0, "result": {"fit": 13, "best_jobs": 2, "gain": 1.25}},
    "projection": {
        "ok": True,
        "wall_s": 27.0,
        "result": {
            "table1": {
                "gpu_hours": 1000.0,
                "stages": {"retrain": {"tasks": 10, "gpu_hours": 500.0}},
                "timed": "by the preflight section",
            }
        },
    },
    "precision": {"ok": False, "wall_s": 120.0, "error": "did not finish within 120 s"},
}


def test_headline_takes_what_ran_and_leaves_out_what_failed() -> None:
    head = headline(SECTIONS_DONE)
    assert head["gpu"].startswith("NVIDIA H200 (140 GiB)")
    assert head["preflight"] == {"ok": 1, "failed": ["search/robot"], "unfinished": 0, "running": []}
    assert head["ratios"] == {"retrain_fp32": 0.95, "gc_step": 4.0}  # the failed benchmark is absent
    assert head["robot_pool"]["best_stack"] == 25 and head["robot_pool"]["pool_hours"] == 1.9
    assert "precision" not in head  # the section timed out
    # 500 retraining hours shared 1.25×: 500 / 1.25 = 400, so the table drops by 100
    assert head["gpu_hours"]["table1"] == {
        "one_job_per_gpu": 1000.0,
        "retraining_shared": 900.0,
        "timed": "by the preflight section",
    }


def test_render_lists_every_section_with_its_status_and_failures() -> None:
    text = render({"started": "t0", "sections": SECTIONS_DONE, "headline": headline(SECTIONS_DONE)})
    for name in SECTIONS_DONE:
        assert f"| {name} |" in text
    assert "| precision | FAILED: did not finish within 120 s (120 s) |" in text
    assert "failed: search/robot" in text
    assert "table1: about 1,000 GPU-hours one job per GPU, 900 with retraining jobs sharing a GPU" in text


def test_a_preflight_cut_short_still_reports_what_it_finished_and_what_was_running(tmp_path) -> None:
    from benchmarks.gpu_check import so_far

    assert so_far("preflight", tmp_path) is None  # nothing on disk: no partial result
    expected = {
        "tasks": [{"kind": "poison/clf/cifar10", "ok": True}, {"kind": "search/robot/cifar10", "ok": True}],
        "unfinished": 39,
        "running": {"search.cifar10.tenas.none.p0.t0": "search/tenas/cifar10"},
    }
    folder = tmp_path / "preflight" / "paper"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(expected))
    assert so_far("preflight", tmp_path) == expected
    sections = {"preflight": {"ok": False, "error": "did not finish within 170 s", "partial": expected}}
    head = headline(sections)
    assert head["preflight"] == {"ok": 2, "failed": [], "unfinished": 39, "running": ["search/tenas/cifar10"]}
    text = render({"started": "t0", "sections": sections, "headline": head})
    assert "2 tasks ok; cut short with 39 tasks unfinished, running search/tenas/cifar10" in text


def test_precision_summary_compares_bf16_with_fp32() -> None:
    runs = {
        "fp32": [
            {"test_accuracy": 90.0, "wall_s": 10.0, "train_loss": [2.0, 1.0]},
            {"test_accuracy": 92.0, "wall_s": 10.0, "train_loss": [2.2, 1.2]},
        ],
        "bf16": [
            {"test_accuracy": 89.0, "wall_s": 5.0, "train_loss": [2.1, 1.5]},
            {"test_accuracy": 89.0, "wall_s": 5.0, "train_loss": [2.1, 1.3]},
        ],
    }
    summary = precision_summary(runs)
    assert summary["accuracy_difference"] == pytest.approx(-2.0)
    assert summary["fp32_seed_spread"] == pytest.approx(2.0)
    assert summary["max_loss_gap"] == pytest.approx(0.3)  # epoch 2: mean 1.1 vs 1.4
    assert summary["bf16_speedup"] == pytest.approx(2.0)


def test_every_section_has_a_time_limit_and_together_they_stay_within_thirteen_minutes() -> None:
    assert {"environment", "preflight", "benchmarks", "precision", "concurrency", "projection"} <= set(
        SECTIONS
    )
    assert all(0 < s.limit_s <= 6 * 60 for s in SECTIONS.values())
    assert sum(s.limit_s for s in SECTIONS.values()) <= 13 * 60  # docs/gpu-check.md: "at most 13 minutes"


def test_benchmarks_cut_short_keep_the_ones_that_finished(tmp_path) -> None:
    from benchmarks.gpu_check import BENCHMARKS_SO_FAR, so_far

    assert so_far("benchmarks", tmp_path) is None
    saved = {"retrain_fp32": {"ok": True, "ratio": 0.95}, "gc": {"ok": True, "step_ratio": 3.5}}
    (tmp_path / BENCHMARKS_SO_FAR).write_text(json.dumps(saved))
    partial = so_far("benchmarks", tmp_path)
    assert partial == saved
    head = headline({"benchmarks": {"ok": False, "error": "did not finish within 170 s", "partial": partial}})
    assert head["ratios"] == {"retrain_fp32": 0.95, "gc_step": 3.5}


def test_the_projection_takes_the_step_times_of_this_runs_preflight_only(tmp_path) -> None:
    from benchmarks.gpu_check import REPORT, preflight_timer

    from nasaudit.config import load_profile
    from nasaudit.grid.plan import Timer
    from nasaudit.preflight.timings import MeasuredTimer

    profile = load_profile("paper")
    timed = {"network": "retrain/darts", "batch": 128, "kind": "train", "per_image_s": 1e-3}
    preflight = tmp_path / str(SECTIONS["preflight"].partial)
    preflight.parent.mkdir(parents=True)
    preflight.write_text(json.dumps({"profile": "paper", "device": "cuda", "tasks": [{"networks": [timed]}]}))
    assert type(preflight_timer(tmp_path, profile)) is Timer  # a section run alone, outside a check
    (tmp_path / REPORT).write_text(json.dumps({"sections": {}}))  # a run of other sections only
    assert type(preflight_timer(tmp_path, profile)) is Timer  # an older run's preflight is not used
    (tmp_path / REPORT).write_text(json.dumps({"sections": {"preflight": {"ok": False}}}))  # cut short
    timer = preflight_timer(tmp_path, profile)
    assert isinstance(timer, MeasuredTimer) and timer.per_image("retrain/darts", None, 128) == 1e-3
    assert "(step times timed by the preflight section)" in render(
        {"sections": SECTIONS_DONE, "headline": headline(SECTIONS_DONE)}
    )


def test_a_robot_stack_the_gpu_cannot_hold_is_skipped_and_the_others_still_measured(monkeypatch) -> None:
    import numpy as np
    from benchmarks import bench_robot

    from nasaudit.errors import NasauditError

    def fits(cfg, device) -> None:  # a GPU that holds two networks at once, as check_stack_fits says
        if cfg.pool_stack > 2:
            raise NasauditError(f"[robot] pool_stack = {cfg.pool_stack} ...: add --set robot.pool_stack=2")

    scored: list[tuple[str, int]] = []  # (by what, how many architectures), no network is scored

    def scorer(name: str):  # type: ignore[no-untyped-def]
        return lambda pool, *args: scored.append((name, len(pool))) or np.ones((len(pool), 6))

    monkeypatch.setattr(bench_robot, "check_stack_fits", fits)
    monkeypatch.setattr(bench_robot, "score_pool", scorer("stack"))
    monkeypatch.setattr(bench_robot, "_one_by_one", scorer("loop"))
    result = bench_robot.run(torch.device("cpu"), 4, [1, 4, 2], loop_archs=2)
    assert set(result["stacks"]) == {1, 4, 2} and result["stacks"][4] == {
        "skipped": "[robot] pool_stack = 4 ...: add --set robot.pool_stack=2"
    }
    assert result["stacks"][2]["equal_to_loop"]  # measured after the skipped one
    # the loop on 2 architectures, stack 1 on the loop's 2, stack 4 refused (after its warm-up), stack 2
    # on 2; each timing follows a warm-up on one architecture
    warm = ("stack", 1)
    assert scored == [("loop", 1), ("loop", 2), warm, ("stack", 2), warm, warm, ("stack", 2)]
    head = headline({"benchmarks": {"ok": True, "result": {"robot_pool": {"ok": True, **result}}}})
    assert head["robot_pool"]["best_stack"] in (1, 2)


def test_the_precision_section_trains_both_precisions_through_the_trainer(monkeypatch, tmp_path) -> None:
    """Rehearsed on the CPU, one epoch of one batch of four images: the section's calls into the trainer
    and its summary hold before a GPU's time is spent on them (the values mean nothing)."""
    import benchmarks.gpu_check as gpu_check

    from nasaudit.batch_cap import batch_cap

    monkeypatch.setattr(gpu_check, "CUDA", torch.device("cpu"))
    monkeypatch.setattr(gpu_check, "DIGITS_EPOCHS", 1)
    monkeypatch.setattr(gpu_check, "DIGITS_SEEDS", (0,))
    with batch_cap(1, 4):
        result = gpu_check.precision(tmp_path, [])
    assert set(result["runs"]) == {"fp32", "bf16"} and result["epochs"] == 1
    for run in result["runs"].values():
        assert len(run) == 1 and len(run[0]["train_loss"]) == 1 and run[0]["wall_s"] > 0
    assert set(gpu_check.precision_summary(result["runs"])) <= set(result)


def test_the_projection_plans_tables_1_and_5_from_a_preflights_times(monkeypatch, tmp_path) -> None:
    """The projection section's path through ``plan --timings`` at the paper profile, with made-up
    times recorded as a preflight records them (no network is timed)."""
    import benchmarks.gpu_check as gpu_check

    from nasaudit.config import load_profile
    from nasaudit.grid.jobs import Layout, build_grid, load_experiment
    from nasaudit.grid.plan import Timer, estimate
    from nasaudit.preflight.timings import RecordingTimer

    monkeypatch.setattr(Timer, "_once", lambda self, key, measure: 1e-3 * len(str(key)))
    monkeypatch.setattr(gpu_check, "CUDA", torch.device("cpu"))
    recording = RecordingTimer(torch.device("cpu"))
    profile = load_profile("paper")
    for name in ("table1", "table5"):
        estimate(
            build_grid(load_experiment(name, profile), Layout.of(tmp_path, profile)),
            profile,
            None,
            timer=recording,
        )
    preflight = tmp_path / str(gpu_check.SECTIONS["preflight"].partial)
    preflight.parent.mkdir(parents=True)
    report = {"profile": "paper", "device": "cuda", "tasks": [{"networks": recording.calls}]}
    preflight.write_text(json.dumps(report))
    (tmp_path / gpu_check.REPORT).write_text(json.dumps({"sections": {"preflight": {"ok": True}}}))
    tables = gpu_check.projection(tmp_path, [])
    assert set(tables) == {"table1", "table5"}
    for table in tables.values():
        assert table["timed"] == "by the preflight section" and table["gpu_hours"] > 0
        assert table["stages"]["retrain"]["tasks"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_measures_nothing(tmp_path) -> None:
    out = tmp_path / "gpu-check"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stdout.strip().count("\n") == 0 and "no CUDA GPU is visible" in run.stdout
    assert not out.exists()
