"""The experiment grid: expansion, paths and seeds, resumption, dependencies, runners, status, tables.

The grids here run the real stages with a profile written in the test: retraining has 0 epochs (one
evaluation pass of a 4-channel, 3-cell network), so a job costs a fraction of a second. In this process
they run on a 40-image dataset and search with a test algorithm that returns a fixed genotype; worker
processes import the real registries, so there the data are the embedded digits and the search is the
random sampler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError
from nasaudit.grid import (
    STAGES,
    Grid,
    JobKey,
    Layout,
    RunnerOptions,
    RunSpec,
    Task,
    build_grid,
    grid_status,
    is_done,
    load_experiment,
    render_status,
    run_grid,
    task_seed,
)
from nasaudit.grid.runners import check_finished
from nasaudit.grid.stages import task_state
from nasaudit.nas import NAS, NasAlgorithm
from nasaudit.runs import job_lock

from conftest import profile_file

ATTACKS = ["gaussian", "rlf"]


def write_profile(folder: Path, name: str = "quick", **table1: str) -> Path:
    """smoke.toml with 0 retraining epochs, a 4-channel 3-cell network and a small table1 grid."""
    values = {
        ("train", "epochs"): "0",
        ("darts_net", "channels"): "4",
        ("darts_net", "layers"): "3",
        ("random_baseline", "n"): "2",
        ("grid", "victim_attacks"): '["rlf"]',  # rlf ignores its victim; it makes the GC path cheap
        ("grid", "per_trial_poisons"): "true",
        ("grid", "trial_shared_attacks"): "[]",
        ("grid", "retries"): "0",
        ("grid", "train_subset"): "0",
        ("grid", "require_gpu"): "false",
        ("table1", "datasets"): '["tiny"]',
        ("table1", "algorithms"): '["fixed"]',
        ("table1", "attacks"): json.dumps(ATTACKS),
        ("table1", "exclude"): "[]",
        ("table1", "budgets"): "[0.1, 0.5]",
        ("table1", "trials"): "3",
    }
    values.update({("table1", k): v for k, v in table1.items()})
    return profile_file(folder / f"{name}.toml", *(f"{s}.{k}={v}" for (s, k), v in values.items()))


class FixedArchitecture(NasAlgorithm):
    """A search that always returns the P-DARTS genotype: the grid's plumbing without a search's cost."""

    space, label = "darts", "fixed"

    def __call__(self, data, seed, context):  # type: ignore[no-untyped-def]
        from nasaudit.spaces.darts import load

        return load("pdarts").to_json()


@pytest.fixture
def registered(monkeypatch, tiny_dataset) -> None:
    """The test algorithm ``fixed`` and the 40-image dataset ``tiny``, for grids run in this process."""
    from nasaudit.data.datasets import DATASETS, DatasetSpec
    from nasaudit.grid import stages

    monkeypatch.setitem(NAS._items, "fixed", FixedArchitecture())
    spec = DatasetSpec("tiny", lambda folder: tiny_dataset, None, "40 random images (tests)")
    monkeypatch.setitem(DATASETS._items, "tiny", spec)
    stages._load.cache_clear()


@pytest.fixture
def tiny(tmp_path, registered):  # type: ignore[no-untyped-def]
    profile = load_profile(write_profile(tmp_path))
    grid = build_grid(load_experiment("table1", profile), Layout.of(tmp_path / "results", profile))
    return profile, grid, RunSpec(profile, tmp_path / "results", None, "cpu")


def _log() -> tuple[list[str], Callable[[str], None]]:
    """A runner log that keeps its lines, to check the order tasks finished in."""
    lines: list[str] = []
    return lines, lines.append


def test_expansion_counts(tmp_path, registered) -> None:
    profile = load_profile(
        write_profile(tmp_path, algorithms='["fixed", "random"]', exclude='["fixed/gaussian"]')
    )
    # "random" as a column too: it is also the baseline sampler, whose jobs are then shared
    experiment = load_experiment("table1", profile)
    by_algo = pd.Series([k.algorithm for k in experiment.conditions]).value_counts()
    assert by_algo["fixed"] == 3 + 1 * 2 * 3  # clean trials + rlf × 2 budgets × 3 trials
    assert by_algo["random"] == 3 + 2 * 2 * 3
    assert len(experiment.baselines) == 2 and {k.algorithm for k in experiment.baselines} == {"random"}
    stages = {s: len(t) for s, t in build_grid(experiment, Layout.of(tmp_path, profile)).by_stage().items()}
    jobs = len(set(experiment.jobs))
    assert jobs == 9 + 15  # both baseline jobs are random's clean trials 0 and 1: shared, not repeated
    assert stages == {"search": jobs, "retrain": jobs, "victim": 2, "poison": 2 * 2 * 3 + 2 * 3}
    # rlf is a victim attack here: one poison per algorithm; gaussian's are shared by the algorithms


def test_poisons_are_shared_by_all_trials_as_run(tmp_path, registered) -> None:
    """As run, every trial searches one poison per (dataset, attack, budget); per_trial_poisons draws
    one per trial (except trial_shared_attacks)."""
    profile = load_profile(write_profile(tmp_path))
    shared = replace(profile, grid=replace(profile.grid, per_trial_poisons=False))
    for chosen, per_cell in ((shared, 1), (profile, 3)):
        grid = build_grid(load_experiment("table1", chosen), Layout.of(tmp_path, chosen))
        poisons = grid.by_stage()["poison"]
        assert len(poisons) == len(ATTACKS) * 2 * per_cell  # attacks × budgets (× trials)
        for attack in ATTACKS:
            searches = [
                t for t in grid.deps if t.stage == "search" and t.attack == attack and t.budget == 0.5
            ]
            used = {dep for t in searches for dep in grid.deps[t]}
            assert len(searches) == 3 and len(used) == per_cell
    assert {
        t.trial
        for t in build_grid(load_experiment("table1", shared), Layout.of(tmp_path, shared)).by_stage()[
            "poison"
        ]
    } == {-1}
    path = Layout.of(tmp_path, shared).poison(Task("poison", "tiny", "", "gaussian", 0.5, -1))
    assert path.name == "all_trials"


def test_filters_and_unknown_names(tmp_path, registered) -> None:
    profile = load_profile(write_profile(tmp_path))
    experiment = load_experiment("table1", profile)
    assert experiment.select(["fixed"]).baselines == experiment.baselines  # its space's baseline stays
    assert experiment.select(datasets=["tiny"]).jobs == experiment.jobs
    with pytest.raises(NasauditError, match="unknown NAS algorithm 'pdartz'"):
        experiment.select(["pdartz"])
    assert not experiment.select(["robot"]).jobs  # registered, but not in this experiment: nothing to run
    bad = load_profile(write_profile(tmp_path, "bad", attacks='["rlf", "nope"]'))
    with pytest.raises(NasauditError, match="unknown attack 'nope'"):
        load_experiment("table1", bad)
    with pytest.raises(NasauditError, match="unknown experiment 'table9'"):
        load_experiment("table9", profile)


def test_paths_and_seeds_are_derived_from_the_key(tiny) -> None:
    _, grid, _ = tiny
    layout, root = grid.layout, grid.layout.root
    key = JobKey("tiny", "fixed", "rlf", 0.5, 2)
    assert layout.search_dir(key) == root / "tiny/fixed/rlf/p0.5/trial02/search"
    assert layout.train_dir(key) == root / "tiny/fixed/rlf/p0.5/trial02/train"
    assert root.name == "quick" and root.parent.name == "results"
    shared = Task("poison", "tiny", "", "gaussian", 0.1, 1)
    assert layout.poison(shared) == root / "tiny/poisons/gaussian/p0.1/trial01"
    assert layout.poison(Task("poison", "tiny", "fixed", "rlf", 0.1, 1)) == (
        root / "tiny/poisons/rlf/fixed/p0.1/trial01"
    )
    assert (
        layout.poison(Task("poison", "tiny", "", "clf", 0.1, -1)) == root / "tiny/poisons/clf/p0.1/all_trials"
    )
    assert STAGES.get("victim").output(Task("victim", "tiny", "fixed", trial=3), layout) == (
        root / "tiny/victims/fixed/victim.json"
    )
    # Seeds: nasaudit.seeds of the key's parts (integer hashing: the same on every machine); a poison's
    # seed is its trial's.
    assert task_seed(Task("search", "tiny", "fixed", "rlf", 0.5, 2)) == 810439242
    assert task_seed(Task("poison", "tiny", "", "gaussian", 0.1, 1)) == task_seed(
        Task("poison", "tiny", "", "gaussian", 0.5, 1)
    )
    seeds = {task_seed(t) for t in grid.deps if t.stage == "retrain"}
    assert len(seeds) == len([t for t in grid.deps if t.stage == "retrain"])


def test_dependencies_put_victims_after_every_clean_trial(tiny) -> None:
    _, grid, spec = tiny
    victim = Task("victim", "tiny", "fixed", trial=3)
    assert set(grid.deps[victim]) == {Task("retrain", "tiny", "fixed", "none", 0.0, t) for t in range(3)}
    rlf = Task("poison", "tiny", "fixed", "rlf", 0.5, 1)
    assert victim in grid.deps[rlf]
    lines, log = _log()
    report = run_grid(grid, spec, "local", RunnerOptions(workers=0), log=log)
    assert report.ok and report.done == len(grid.deps)
    order = [line.split()[-1] for line in lines]
    assert max(order.index(f"retrain.tiny.fixed.none.p0.t{t}") for t in range(3)) < order.index(victim.id)
    assert order.index(victim.id) < min(
        i for i, t in enumerate(order) if t.startswith("poison.tiny.fixed.rlf")
    )
    record = json.loads(STAGES.get("victim").output(victim, grid.layout).read_text())
    best = max(record["accuracies"].items(), key=lambda kv: (kv[1], -int(kv[0])))
    assert record["trial"] == int(best[0]) and (grid.layout.root / record["file"]).is_file()
    # the poisoned search read its poison: the provenance names the file and the poisoned data's hash
    search = json.loads(
        (grid.layout.search_dir(JobKey("tiny", "fixed", "rlf", 0.5, 1)) / "architecture.json").read_text()
    )
    assert search["search_data"]["poison"].endswith("poisons/rlf/fixed/p0.5/trial01.npz")
    # every finished output records the run that made it: the same profile finds them all its own, an
    # edit of a section no stage reads changes nothing, an edit of the retraining recipe is refused
    check_finished(grid, spec)
    unused = replace(spec.profile, pdarts=replace(spec.profile.pdarts, epochs=99))
    check_finished(grid, replace(spec, profile=unused))
    recipe = replace(spec.profile, train=replace(spec.profile.train, lr=0.5))
    refused = r"result\.json: made by another run \(its config differs .* \(\d+ more outputs like it\)$"
    with pytest.raises(NasauditError, match=refused):
        check_finished(grid, replace(spec, profile=recipe))


class Flaky:
    """The real stage, except that it raises for one task until ``heal``; counts what it ran."""

    def __init__(self, real, broken: str) -> None:  # type: ignore[no-untyped-def]
        self.real, self.broken, self.ran = real, broken, []

    def output(self, task, layout):  # type: ignore[no-untyped-def]
        return self.real.output(task, layout)

    def identity(self, task, env):  # type: ignore[no-untyped-def]
        return self.real.identity(task, env)

    def run(self, task, env) -> None:  # type: ignore[no-untyped-def]
        if task.id == self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nsecond line")
        self.ran.append(task.id)
        self.real.run(task, env)


def test_a_failed_job_is_reported_not_recorded_and_a_rerun_resumes(tiny, monkeypatch) -> None:
    _, grid, spec = tiny
    broken = "search.tiny.fixed.gaussian.p0.5.t1"
    flaky = Flaky(STAGES.get("search"), broken)
    monkeypatch.setitem(STAGES._items, "search", flaky)
    report = run_grid(grid, spec, "local", RunnerOptions(workers=0), log=lambda _: None)
    failed = Task("search", "tiny", "fixed", "gaussian", 0.5, 1)
    assert not report.ok and list(report.failed) == [failed]
    assert report.failed[failed] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert report.blocked == [Task("retrain", "tiny", "fixed", "gaussian", 0.5, 1)]
    assert not is_done(failed, grid.layout)  # the folder holds the run's claim and its lock, no result
    left = {p.name for p in grid.layout.search_dir(failed.key).iterdir()}
    assert left <= {"job.json", ".architecture.json.lock"}
    assert task_state(grid.layout).failure(failed) == report.failed[failed]
    done_before = {
        t: STAGES.get(t.stage).output(t, grid.layout).stat().st_mtime_ns
        for t in grid.deps
        if is_done(t, grid.layout)
    }
    assert len(done_before) == len(grid.deps) - 2

    flaky.broken, flaky.ran = "", []
    report = run_grid(grid, spec, "local", RunnerOptions(workers=0), log=lambda _: None)
    assert report.ok and report.done == 2 and report.already_done == len(grid.deps) - 2
    assert flaky.ran == [broken]  # finished work is skipped, the failed task is retried
    assert all(
        STAGES.get(t.stage).output(t, grid.layout).stat().st_mtime_ns == m for t, m in done_before.items()
    )
    assert task_state(grid.layout).failure(failed) is None


def test_grid_status_counts_and_failures(tmp_path, registered, monkeypatch, capsys) -> None:
    path = write_profile(tmp_path)
    args = ["grid", "status", "table1", "--profile", str(path), "--results", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "table1: 0/" in out and re.search(
        r"retrain +0%\|.*\| 0/17 +done 0, running 0, failed 0, pending 17", out
    )

    profile = load_profile(path)
    grid = build_grid(load_experiment("table1", profile), Layout.of(tmp_path / "r", profile))
    spec = RunSpec(profile, tmp_path / "r", None, "cpu")
    monkeypatch.setitem(
        STAGES._items, "retrain", Flaky(STAGES.get("retrain"), "retrain.tiny.fixed.none.p0.t2")
    )
    run_grid(grid, spec, "local", RunnerOptions(workers=0), log=lambda _: None)  # the victim waits on t2
    state = task_state(grid.layout)
    running = Task("retrain", "tiny", "fixed", "rlf", 0.1, 0)  # blocked by the victim; pretend it runs
    state.mark_running(running, "test")
    stale = Task("retrain", "tiny", "fixed", "rlf", 0.1, 1)
    state.mark_running(stale, "a killed run")  # a marker whose lock nobody holds
    with job_lock(STAGES.get("retrain").output(running, grid.layout), wait=False) as claimed:
        assert claimed
        status = grid_status(grid)
    text = render_status(grid, status)
    # done: gaussian 6, clean t0 and t1, random 2; the 6 rlf retrains wait (one of them "running")
    assert status.counts["retrain"] == {"done": 10, "running": 1, "failed": 1, "pending": 5}
    assert status.counts["victim"] == {"done": 0, "running": 0, "failed": 0, "pending": 1}
    assert "FAILED retrain.tiny.fixed.none.p0.t2: RuntimeError: CUDA error" in text
    assert f"running {running.id} (test on " in text and stale.id not in text


@pytest.mark.slow
def test_worker_processes_run_the_real_registries_deterministically(tmp_path) -> None:
    """Two CPU worker processes, the random sampler as the searched algorithm: same seeds, same results."""
    accuracies = []
    for run in ("a", "b"):
        path = write_profile(
            tmp_path,
            datasets='["digits"]',
            algorithms='["random"]',
            attacks='["rlf"]',
            budgets="[0.5]",
            trials="2",
        )
        profile = load_profile(path)
        grid = build_grid(load_experiment("table1", profile), Layout.of(tmp_path / run, profile))
        report = run_grid(
            grid,
            RunSpec(profile, tmp_path / run, None),
            "local",
            RunnerOptions(workers=2),
            log=lambda _: None,
        )
        assert (
            report.ok and report.done == len(grid.deps) == 2 + 1 + 4 + 4
        )  # poisons, victim, searches, retrains
        accuracies.append(
            {
                t.id: json.loads(STAGES.get("retrain").output(t, grid.layout).read_text())["test_accuracy"]
                for t in grid.deps
                if t.stage == "retrain"
            }
        )
    assert accuracies[0] == accuracies[1]


def test_slurm_runner_through_submitit_debug_executor(tiny, monkeypatch) -> None:
    import submitit

    _, grid, spec = tiny
    sizes: list[int] = []
    real = submitit.AutoExecutor.map_array

    def spy(self, fn, *iterables):  # type: ignore[no-untyped-def]
        sizes.append(len(iterables[0]))
        return real(self, fn, *iterables)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", spy)
    options = RunnerOptions(cluster="debug", slurm=replace(spec.profile.grid.slurm, array_limit=4))
    report = run_grid(grid, spec, "slurm", options, log=lambda _: None)
    assert report.ok and report.done == len(grid.deps)
    assert max(sizes) == 4 and sum(sizes) == len(grid.deps)  # every ready task once, in arrays of ≤ 4
    assert (grid.layout.state_dir / "submitit").is_dir()
    # Seeds come from the keys: the same grid run by the local runner elsewhere gives the same numbers.
    other = replace(spec, results=spec.results.parent / "again")
    again = build_grid(grid.experiment, Layout.of(other.results, spec.profile))
    assert run_grid(again, other, "local", RunnerOptions(workers=0), log=lambda _: None).ok
    for task in (t for t in grid.deps if t.stage == "retrain"):
        ours, theirs = (
            json.loads(STAGES.get("retrain").output(task, g.layout).read_text()) for g in (grid, again)
        )
        assert ours["test_accuracy"] == theirs["test_accuracy"] and ours["seed"] == theirs["seed"]


class AdoptingBackend:
    """Follows one task an earlier run submitted, and reports every task it runs as killed."""

    capacity = 2

    def __init__(self, earlier: Task) -> None:
        self.earlier, self.submitted, self.in_flight = earlier, [], []

    def adopt(self, tasks: list[Task]) -> list[Task]:
        assert self.earlier in tasks
        self.in_flight.append(self.earlier)
        return [self.earlier]

    def submit(self, tasks: list[Task]) -> None:
        self.submitted += tasks
        self.in_flight += tasks

    def wait(self) -> list:
        from nasaudit.grid.stages import Outcome

        finished, self.in_flight = self.in_flight, []
        return [
            Outcome(t, "failed", f"Slurm job 5 ended FAILED ({t.id})", "last lines:\nKilled")
            for t in finished
        ]

    def close(self) -> None:
        pass


def test_schedule_follows_adopted_tasks_and_keeps_a_dead_worker_log(tiny) -> None:
    from nasaudit.grid.runners import schedule

    _, grid, _ = tiny
    earlier = next(t for t in grid.deps if not grid.deps[t])
    backend = AdoptingBackend(earlier)
    lines, log = _log()
    report = schedule(grid, backend, retries=0, log=log)
    assert earlier not in backend.submitted and earlier in report.failed  # followed, not submitted again
    assert lines[0] == "[grid] following 1 tasks an earlier run submitted (still queued or running)"
    assert "    last lines:\n    Killed" in "\n".join(lines)
    state = task_state(grid.layout)
    assert state.failure(earlier) == f"Slurm job 5 ended FAILED ({earlier.id})"
    assert (grid.layout.state_dir / f"{earlier.id}.traceback").read_text() == "last lines:\nKilled"


def _result(accuracy: float, key: JobKey) -> dict:
    """A result.json as nasaudit.train writes it; its best epoch was 0.5 points above its last."""
    return {
        "test_accuracy": accuracy,
        "test_loss": 0.5,
        "best_test_accuracy": accuracy + 0.5,
        "best_epoch": 0,
        "params": 1000,
        "epochs": 600,
        "log": [{"epoch": 0, "test_acc": accuracy + 0.5}, {"epoch": 1, "test_acc": accuracy}],
        "wall_time": 1.0,
        "seed": task_seed(Task("retrain", *vars(key).values())),
        "dataset": key.dataset,
        "train_sha256": "0" * 64,
        "config": {},
        "description": {"space": "darts", "job": vars(key)},
        "manifest": {},
    }


def fake_results(grid, accuracy) -> None:  # type: ignore[no-untyped-def]
    for key in grid.experiment.jobs:
        path = grid.layout.train_dir(key) / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_result(accuracy(key), key)))


def _accuracy(key: JobKey) -> float:
    base = {"random": 90.0, "fixed": 95.0}[key.algorithm]
    drop = {("rlf", 0.5): 3.0}.get((key.attack, key.budget), 0.0)
    return base - drop + 0.1 * key.trial


def test_table_from_results_has_the_cells_and_marks(tmp_path, registered, capsys) -> None:
    path = write_profile(tmp_path)
    profile = load_profile(path)
    grid = build_grid(load_experiment("table1", profile), Layout.of(tmp_path / "r", profile))
    out = tmp_path / "tables"
    args = ["table", "table1", "--profile", str(path), "--results", str(tmp_path / "r"), "--out", str(out)]
    assert main(args) == 2
    assert "jobs have no result yet" in capsys.readouterr().err
    fake_results(grid, _accuracy)
    assert main(args) == 0
    printed = capsys.readouterr().out  # each trial reports its best epoch ([results] accuracy = "best")
    assert "ΔImp. baseline tiny/fixed: 90.55% (mean of our 2 random architectures)" in printed
    table = pd.read_csv(out / "table1.csv")
    assert len(table) == 1 + 2 * 2 and (table["n"] == 3).all()
    cell = table.set_index(["attack", "budget"])
    assert cell.loc[("rlf", 0.5), "mean"] == pytest.approx(92.6)
    assert cell.loc[("rlf", 0.5), "delta_imp"] == pytest.approx(92.6 - 90.55)
    assert cell.loc[("rlf", 0.5), "significant"] and table["significant"].sum() == 1
    final = tmp_path / "final" / path.name  # the same profile name: the same results folder
    final.parent.mkdir()
    profile_file(final, "results.accuracy=final", base=path)
    assert main([*args[:2], "--profile", str(final), *args[4:]]) == 0
    assert "ΔImp. baseline tiny/fixed: 90.05%" in capsys.readouterr().out
    cell = pd.read_csv(out / "table1.csv").set_index(["attack", "budget"])
    assert cell.loc[("rlf", 0.5), "mean"] == pytest.approx(92.1)
    assert (out / "table1.md").read_text().count("<u>**") == 2 and (out / "table1.tex").is_file()

    assert main([*args, "--published-baselines"]) == 2  # tiny has no published baseline
    assert "no random baseline for tiny/fixed" in capsys.readouterr().err


def test_compare_exit_codes(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    assert main(["table", "table1", "--from-published", "--out", str(out)]) == 0
    assert "66 cells, 8 significant" in capsys.readouterr().out
    ours = out / "table1.csv"
    assert main(["compare", "table1", "--ours", str(ours)]) == 0
    assert "66 of 66 cells within tolerance" in capsys.readouterr().out
    frame = pd.read_csv(ours)
    frame.loc[(frame["algorithm"] == "robot") & (frame["attack"] == "none"), "mean"] += 0.5
    frame.to_csv(ours, index=False)
    assert main(["compare", "table1", "--ours", str(ours)]) == 1
    assert "65 of 66 cells within tolerance" in capsys.readouterr().out
    assert main(["compare", "table1", "--ours", str(tmp_path / "missing.csv")]) == 2


def test_plan_counts_and_estimates(tmp_path, registered, capsys) -> None:
    path = write_profile(tmp_path)
    assert main(["plan", "table1", "--profile", str(path), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^retrain +17 +0 +\d", out, re.M) and re.search(r"^poison +12 +0 ", out, re.M)
    assert "ESTIMATE: about" in out and "not estimated (search, no cost model): fixed (15 tasks)" in out


def test_local_runner_refuses_a_gpu_profile_on_a_cpu(tmp_path, registered, capsys, monkeypatch) -> None:
    import nasaudit.grid.runners as runners

    monkeypatch.setattr(runners, "visible_gpus", lambda: [])
    path = write_profile(tmp_path)
    profile_file(path, "grid.require_gpu=true", base=path)
    assert main(["grid", "run", "table1", "--profile", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GPU-hours (estimate)" in err
    assert "make table1 PROFILE=smoke" in err and "make table1 RUNNER=slurm" in err
    assert not (tmp_path / "r").exists()


def test_train_subset_is_the_data_of_every_stage(tmp_path, registered) -> None:
    from nasaudit.grid.stages import execute, grid_dataset

    path = write_profile(tmp_path)
    profile_file(path, "grid.train_subset=20", base=path)
    profile = load_profile(path)
    spec = RunSpec(profile, tmp_path / "r", None, "cpu")
    data = grid_dataset("tiny", spec.env())
    assert len(data.train) == 20 and len(data.test) == 12
    for stage in ("search", "retrain"):
        assert execute(Task(stage, "tiny", "fixed", "none", 0.0, 0), spec).status == "done"
    result = json.loads(
        (
            Layout.of(tmp_path / "r", profile).train_dir(JobKey("tiny", "fixed", "none", 0.0, 0))
            / "result.json"
        ).read_text()
    )
    assert result["train_sha256"] == data.train.sha256


def test_slurm_runner_needs_sbatch(tmp_path, registered, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    path = write_profile(tmp_path)
    argv = [
        "grid",
        "run",
        "table1",
        "--profile",
        str(path),
        "--results",
        str(tmp_path / "r"),
        "--runner",
        "slurm",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no `sbatch` here" in err
    assert main([*argv[:-1], "cluster"]) == 2
    assert "unknown runner 'cluster'; choose one of: local, slurm" in capsys.readouterr().err


# --- Tables 3, 4 and 6: other search data, defended data, another search setting ------------------------


class Seeing(NasAlgorithm):
    """Like ``fixed``, and it records what the search saw: its data and its profile's augmentation."""

    space, label = "darts", "seeing"

    def __call__(self, data, seed, context):  # type: ignore[no-untyped-def]
        from nasaudit.io import write_json
        from nasaudit.spaces.darts import load

        seen = {
            "dataset": data.name,
            "n_train": len(data.train),
            "train_sha256": data.train.sha256,
            "augment": vars(context.profile.pdarts.augment),
            "cache_dir": str(context.cache_dir),
        }
        write_json(context.out_dir / "seen.json", seen)
        return load("pdarts").to_json()


@pytest.fixture
def seeing(monkeypatch, registered, tiny_dataset):  # type: ignore[no-untyped-def]
    """The algorithm ``seeing`` and a second 40-image dataset ``tiny2`` to search on."""
    from nasaudit.data.datasets import DATASETS, DatasetSpec, Split, make_dataset

    images = np.random.default_rng(1).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    other = make_dataset("tiny2", Split(images, np.arange(40) % 4), tiny_dataset.test, tiny_dataset.classes)
    monkeypatch.setitem(NAS._items, "seeing", Seeing())
    monkeypatch.setitem(DATASETS._items, "tiny2", DatasetSpec("tiny2", lambda folder: other, None, "tests"))
    return tiny_dataset, other


def _profile_with(tmp_path: Path, section: str, **values: str) -> Path:
    """The test profile with ``values`` set in ``section`` (and the algorithm ``seeing`` on ``tiny``)."""
    path = write_profile(tmp_path)
    values = {"datasets": '["tiny"]', "algorithms": '["seeing"]', **values}
    overrides = [f"{section}.{k}={v}" for k, v in values.items()]
    return profile_file(path, *overrides, "surrogate.epochs=1", base=path)


def _run(path: Path, name: str, results: Path) -> Grid:
    profile = load_profile(path)
    grid = build_grid(load_experiment(name, profile), Layout.of(results, profile))
    spec = RunSpec(profile, results, None, "cpu")
    assert run_grid(grid, spec, "local", RunnerOptions(workers=0), log=lambda _: None).ok
    check_finished(grid, spec)  # every stage's identity recomputed from files = the one its run recorded
    return grid


def _seen(layout: Layout, key: JobKey) -> dict:
    return json.loads((layout.search_dir(key) / "seen.json").read_text())


def _table(path: Path, name: str, results: Path, out: Path) -> pd.DataFrame:
    args = ["table", name, "--profile", str(path), "--results", str(results), "--out", str(out)]
    assert main(args) == 0
    return pd.read_csv(out / f"{name}.csv")


def test_table3_searches_on_another_dataset_and_retrains_on_its_own(tmp_path, seeing) -> None:
    tiny, other = seeing
    path = _profile_with(tmp_path, "table3", search_datasets='["tiny", "tiny2"]', trials="2")
    grid = _run(path, "table3", tmp_path / "r")
    layout = grid.layout
    own = JobKey("tiny", "seeing", "none", 0.0, 1)
    ood = replace(own, search_dataset="tiny2")
    assert layout.job_dir(own) == layout.root / "tiny/seeing/none/p0/trial01"  # Table 1's clean job
    assert layout.job_dir(ood) == layout.root / "tiny/seeing/search-tiny2/none/p0/trial01"
    assert _seen(layout, ood)["train_sha256"] == other.train.sha256
    assert _seen(layout, own)["train_sha256"] == tiny.train.sha256
    assert _seen(layout, ood)["cache_dir"] == str(layout.cache_dir("tiny2"))  # shared per search dataset
    result = json.loads((layout.train_dir(ood) / "result.json").read_text())
    assert result["train_sha256"] == tiny.train.sha256  # retrained on the dataset it is tested on
    assert result["description"]["source"] == str(layout.search_dir(ood) / "architecture.json")
    search = Task("search", *vars(ood).values())
    assert task_seed(search) != task_seed(replace(search, search_dataset=""))
    fake_results(
        grid, lambda k: 95.0 - 2.0 * bool(k.search_dataset) + 0.1 * k.trial - 5 * (k.algorithm == "random")
    )
    table = _table(path, "table3", tmp_path / "r", tmp_path / "t").set_index("search_dataset")
    assert sorted(table.index) == ["tiny", "tiny2"] and (table["n"] == 2).all()
    assert np.isnan(table.loc["tiny", "p_value"]) and table.loc["tiny2", "significant"]  # 2 points worse
    assert table.loc["tiny2", "delta_imp"] == pytest.approx(93.05 - 90.05)


def test_table4_defends_the_shared_poison_and_tests_against_the_undefended_job(tmp_path, seeing) -> None:
    tiny, _ = seeing
    conditions = '["sanitize:gaussian", "relabel:rlf"]'
    path = _profile_with(tmp_path, "table4", conditions=conditions, exclude="[]", trials="2")
    experiment = load_experiment("table4", load_profile(path))
    defended = JobKey("tiny", "seeing", "gaussian", 0.5, 0, defense="sanitize")
    assert replace(defended, defense="") in experiment.conditions  # the reference: Table 1's job
    grid = _run(path, "table4", tmp_path / "r")
    defend = Task("defend", "tiny", "", "gaussian", 0.5, 0, defense="sanitize")
    assert grid.deps[Task("search", *vars(defended).values())] == (defend,)
    assert grid.deps[defend] == (Task("poison", "tiny", "", "gaussian", 0.5, 0),)
    layout = grid.layout
    assert _seen(layout, defended)["n_train"] == 20  # half of each class kept
    record = json.loads((layout.search_dir(defended) / "architecture.json").read_text())["search_data"]
    assert record["defense"] == "sanitize" and record["poison"].endswith("poisons/gaussian/p0.5/trial00.npz")
    outcome = json.loads(layout.defended(defend).with_suffix(".json").read_text())["poison_outcome"]
    assert outcome["poisoned"] == 20 and outcome["poisoned_dropped"] + outcome["poisoned_kept"] == 20
    assert (
        sum(c["poisoned"] for c in outcome["per_class"].values()) == 20
    )  # the manifest says what became of it
    relabelled = _seen(layout, JobKey("tiny", "seeing", "rlf", 0.5, 1, defense="relabel"))
    assert relabelled["n_train"] == 40 and relabelled["train_sha256"] != tiny.train.sha256
    fake_results(grid, lambda k: 93.0 + 2.0 * (k.defense == "sanitize") + 0.1 * k.trial)
    table = _table(path, "table4", tmp_path / "r", tmp_path / "t").set_index(["defense", "attack"])
    assert sorted(table.index) == [("relabel", "rlf"), ("sanitize", "gaussian")]  # references not printed
    assert table.loc[("sanitize", "gaussian"), "significant"]  # better than the undefended cell
    assert not table.loc[("relabel", "rlf"), "significant"]  # equal: H1 is "defended > poisoned"
    assert (table["p_adjusted"] == table["p_value"]).all()  # Table 4 is not corrected


def test_table4_compound_attack_is_one_cell_on_the_first_attacks_poison(tmp_path, seeing) -> None:
    path = _profile_with(tmp_path, "table4", conditions='["relabel:rlf/clf"]', exclude="[]", trials="1")
    profile = load_profile(path)
    grid = build_grid(load_experiment("table4", profile), Layout.of(tmp_path / "r", profile))
    key = JobKey("tiny", "seeing", "rlf/clf", 0.5, 0, defense="relabel")
    (defend,) = grid.deps[Task("search", *vars(key).values())]
    assert grid.deps[defend] == (
        Task("poison", "tiny", "seeing", "rlf", 0.5, 0),
    )  # rlf: a victim attack here
    assert "/" not in defend.id and grid.layout.job_dir(key).parts[-3] == "rlf+clf"
    references = {k for k in grid.experiment.conditions if not k.defense}
    assert references == {JobKey("tiny", "seeing", a, 0.5, 0) for a in ("rlf", "clf")}
    excluded = _profile_with(tmp_path, "table4", conditions='["relabel:rlf/clf"]', exclude='["seeing/clf"]')
    assert load_experiment("table4", load_profile(excluded)).conditions == ()  # through either attack
    bad = _profile_with(tmp_path, "table4", conditions='["sanitize"]')
    with pytest.raises(NasauditError, match="must read 'defense:attack'"):
        load_experiment("table4", load_profile(bad))


def test_table6_variant_changes_the_search_settings_only(tmp_path, seeing) -> None:
    values = {"attacks": '["rlf"]', "budgets": "[0.5]", "trials": "2", "variant": '"no_augment"'}
    path = _profile_with(tmp_path, "table6", **values)
    profile = load_profile(path)
    grid = _run(path, "table6", tmp_path / "r")
    # rlf is a victim attack in these tests: its victim is the best of Table 1's clean trials, which join
    victim = Task("victim", "tiny", "seeing", trial=2)
    assert set(grid.deps[victim]) == {Task("retrain", "tiny", "seeing", "none", 0.0, t) for t in range(2)}
    varied = JobKey("tiny", "seeing", "rlf", 0.5, 0, variant="no_augment")
    off = {"crop_padding": 0, "flip": False, "cutout": 0, "autoaugment": False}
    assert _seen(grid.layout, varied)["augment"] == off
    assert (
        _seen(grid.layout, JobKey("tiny", "seeing", "none", 0.0, 0, variant="no_augment"))["augment"] == off
    )
    assert _seen(grid.layout, JobKey("tiny", "seeing", "none", 0.0, 0))["augment"] == vars(
        profile.pdarts.augment
    )
    retrained = json.loads((grid.layout.train_dir(varied) / "result.json").read_text())
    assert retrained["config"]["augment"] == vars(profile.train.augment) != off  # retraining keeps its own
    bad = _profile_with(tmp_path, "table6", variant='"upside_down"')
    with pytest.raises(NasauditError, match="unknown search variant 'upside_down'"):
        load_experiment("table6", load_profile(bad))


def test_no_augment_turns_off_every_augmentation_a_search_reads_and_nothing_else() -> None:
    """The variant finds the augmentations in the sections the registered algorithms read (``uses``)."""
    from nasaudit.grid.variants import NO_AUGMENT, search_profile

    paper = load_profile("paper")
    varied = search_profile(paper, "no_augment")
    nsga, robot = varied.nsganetv2, varied.robot
    searched = (varied.pdarts, varied.tenas, robot.query, nsga.finetune, nsga.supernet)
    assert all(section.augment == NO_AUGMENT for section in searched)
    assert paper.pdarts.augment != NO_AUGMENT and paper.nsganetv2.supernet.augment != NO_AUGMENT
    restored = replace(
        varied,
        pdarts=replace(varied.pdarts, augment=paper.pdarts.augment),
        tenas=replace(varied.tenas, augment=paper.tenas.augment),
        robot=replace(robot, query=replace(robot.query, augment=paper.robot.query.augment)),
        nsganetv2=replace(
            nsga,
            finetune=replace(nsga.finetune, augment=paper.nsganetv2.finetune.augment),
            supernet=replace(nsga.supernet, augment=paper.nsganetv2.supernet.augment),
        ),
    )
    assert restored == paper  # the retraining sections ([train], [mbv3_train], [surrogate]) keep theirs
