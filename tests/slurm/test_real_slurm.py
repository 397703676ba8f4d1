"""The grid's Slurm runner against a real Slurm: a one-node cluster on localhost (``localslurm.py``).

``make test-slurm`` runs these (root: it installs slurm-wlm and munge when missing); ``make test`` skips
them (marked slow). The grid is the smoke profile's Table 1 reduced to P-DARTS against Gaussian noise
(14 tasks: two clean and two poisoned trials, two random architectures for ΔImp., each searched and
retrained, and the two poisons); every task is a real array element run by slurmd. Drivers run as
``nasaudit grid run`` subprocesses, so one can be killed with SIGKILL like a user's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from localslurm import MAIN_PARTITION, SHORT_PARTITION, LocalSlurm, Refusal

import nasaudit
from nasaudit.config import PROFILE_DIR, load_profile
from nasaudit.grid import STAGES, Layout, build_grid, load_experiment
from nasaudit.grid.stages import task_state

from conftest import set_toml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = "slurmtest"
ARRAY_LIMIT = 3  # below the cluster's MaxArraySize (5): the profile's limit is the one that binds
# Two tasks at once, with as many threads each as the local runner's two workers get (cores // 2): the
# same thread count gives the same floating-point sums, so the two runners' tables can be compared exactly.
CPUS = max(1, (os.cpu_count() or 2) // 2)
RESOURCES = {
    "gpus_per_task": 1,
    "cpus_per_task": CPUS,
    "mem_gb": 1,
    "partition": MAIN_PARTITION,
    "time_min": 30,
}
ARTIFACT = str(Path(nasaudit.__file__).resolve().parents[1])  # jobs import the code under test


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSlurm]:
    """Skips (with the reason) where the cluster cannot be had: not root, or no slurm-wlm and no apt."""
    local = LocalSlurm()
    try:
        local.start()
    except Refusal as exc:
        local.stop()
        pytest.skip(f"no local Slurm cluster: {exc}")
    try:
        yield local
    finally:
        local.stop()


def write_profile(folder: Path, **values: str) -> Path:
    """smoke.toml's Table 1 cut to P-DARTS × Gaussian noise, no retries, this cluster's resources."""
    text = (PROFILE_DIR / "smoke.toml").read_text()
    settings = {
        ("table1", "algorithms"): '["pdarts"]',
        ("table1", "attacks"): '["gaussian"]',
        ("table1", "exclude"): "[]",
        ("grid", "retries"): "0",
        ("grid.slurm", "array_limit"): str(ARRAY_LIMIT),
        ("grid.slurm", "poll_seconds"): "2",
        **{("grid.slurm", k): json.dumps(v) for k, v in RESOURCES.items()},
    }
    settings.update({tuple(k.split(":")): v for k, v in values.items()})
    for (section, key), value in settings.items():
        text = set_toml(text, section, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PROFILE}.toml"
    path.write_text(text)
    return path


def driver(cluster: LocalSlurm, profile: Path, results: Path, *args: str) -> subprocess.Popen:
    """``nasaudit grid run table1`` as its own process (output to results/driver-N.log)."""
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": ARTIFACT, "PYTHONUNBUFFERED": "1"}
    results.mkdir(parents=True, exist_ok=True)
    log = results / f"driver-{len(list(results.glob('driver-*.log')))}.log"
    command = ["grid", "run", "table1", "--profile", str(profile), "--results", str(results), *args]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nasaudit.cli", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    process.log = log  # type: ignore[attr-defined]
    return process


def nasaudit_cli(*args: str) -> str:
    """A quick nasaudit command's output (table, status)."""
    command = [sys.executable, "-m", "nasaudit.cli", *args]
    env = {**os.environ, "PYTHONPATH": ARTIFACT}
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


def finish(process: subprocess.Popen, timeout: float = 1500) -> tuple[int, str]:
    code = process.wait(timeout=timeout)
    return code, process.log.read_text()  # type: ignore[attr-defined]


def queue(cluster: LocalSlurm) -> dict[str, dict[str, str]]:
    """Every job the cluster knows (finished ones too: MinJobAge is an hour), one row per array element."""
    fields = ["id", "state", "gres", "cpus", "memory", "partition", "name"]
    text = cluster._out(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%b|%C|%m|%P|%j"])
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in text.splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class TableRun:
    """The Slurm run of the reduced Table 1, its driver killed once while jobs were queued and running."""

    profile: Path
    results: Path
    grid: object
    at_kill: dict[str, object]
    logs: list[str]
    codes: list[int]
    jobs: dict[str, dict[str, str]]


def _output(grid, task) -> Path:  # type: ignore[no-untyped-def]
    return STAGES.get(task.stage).output(task, grid.layout)


@pytest.fixture(scope="module")
def table_run(cluster: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> TableRun:
    folder = tmp_path_factory.mktemp("table1")
    profile = write_profile(folder)
    results = folder / "slurm"
    grid = build_grid(
        load_experiment("table1", load_profile(profile)), Layout.of(results, load_profile(profile))
    )
    state = task_state(grid.layout)
    first = driver(cluster, profile, results, "--runner", "slurm")

    def busy() -> bool:  # something finished, something running, something still waiting in the queue
        states = Counter(row["state"] for row in queue(cluster).values())
        done = sum(_output(grid, t).is_file() for t in grid.deps)
        return done >= 1 and states["RUNNING"] >= 1 and states["PENDING"] >= 1

    wait_for(busy, 900, "a task done while others run and wait in the queue")
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = {
        "done": {t: _output(grid, t).stat().st_mtime_ns for t in grid.deps if _output(grid, t).is_file()},
        "submitted": {t: r["job_id"] for t in grid.deps if (r := state.submitted(t))},
        "queue": queue(cluster),
    }
    code, log = finish(driver(cluster, profile, results, "--runner", "slurm"))
    return TableRun(profile, results, grid, at_kill, [first.log.read_text(), log], [code], queue(cluster))


def test_table1_through_job_arrays_equals_the_local_runner(cluster, table_run, tmp_path) -> None:
    assert table_run.codes == [0], table_run.logs[-1]
    local = tmp_path / "local"
    code, log = finish(driver(cluster, table_run.profile, local, "--runner", "local", "--workers", "2"))
    assert code == 0, log
    tables = []
    for results in (table_run.results, local):
        out = results / "tables"
        nasaudit_cli(
            "table",
            "table1",
            "--profile",
            str(table_run.profile),
            "--results",
            str(results),
            "--out",
            str(out),
        )
        tables.append((out / "table1.csv").read_text())
    assert tables[0] == tables[1]  # same seeds, same threads: the same numbers to the last digit
    assert "pdarts,gaussian,0.5,2," in tables[0] and "pdarts,none,0.0,2," in tables[0]


def test_killed_driver_restarts_without_recomputing_or_losing_tasks(table_run) -> None:
    grid, at_kill = table_run.grid, table_run.at_kill
    assert all(_output(grid, t).is_file() for t in grid.deps)
    for task, mtime in at_kill["done"].items():  # finished before the kill: not run again
        assert _output(grid, task).stat().st_mtime_ns == mtime, task.id
    live = {
        t: j
        for t, j in at_kill["submitted"].items()
        if at_kill["queue"][j]["state"] in ("PENDING", "RUNNING")
    }
    assert {"PENDING", "RUNNING"} <= {at_kill["queue"][j]["state"] for j in live.values()}
    state = task_state(grid.layout)
    for task, job in live.items():  # queued or running at the kill: finished by that same job
        assert state.submitted(task)["job_id"] == job
        assert table_run.jobs[job]["state"] == "COMPLETED"
    assert "[grid] following" in table_run.logs[1]
    # every task went to Slurm exactly once over both drivers
    submitted = list((grid.layout.state_dir / "submitit").glob("*_submitted.pkl"))
    assert len(submitted) == len(grid.deps) == len(table_run.jobs) == 14
    assert all(row["state"] == "COMPLETED" for row in table_run.jobs.values())


def test_arrays_are_chunked_to_the_configured_limit(table_run) -> None:
    sizes = Counter(job.split("_")[0] for job in table_run.jobs)
    assert max(sizes.values()) == ARRAY_LIMIT  # six tasks were ready at the start: arrays of 3 and 3
    assert sum(sizes.values()) == len(table_run.grid.deps)


def test_submitted_scripts_carry_the_profile_resources(table_run) -> None:
    scripts = list((table_run.grid.layout.state_dir / "submitit").glob("*_submission.sh"))
    assert scripts
    for script in scripts:
        lines = set(script.read_text().splitlines())
        expected = {
            "#SBATCH --gpus-per-node=1",
            f"#SBATCH --cpus-per-task={CPUS}",
            "#SBATCH --mem=1GB",
            f"#SBATCH --partition={MAIN_PARTITION}",
            "#SBATCH --time=30",
        }
        assert expected <= lines, script.name
    for row in table_run.jobs.values():  # and Slurm granted them
        assert (row["gres"], row["cpus"], row["memory"], row["partition"]) == (
            "gres:gpu:1",
            str(CPUS),
            "1G",
            MAIN_PARTITION,
        )
        assert row["name"] == f"nasaudit-{PROFILE}"


@pytest.fixture
def long_retrain(table_run, tmp_path) -> tuple[Path, Path, object]:
    """The finished grid with one retraining removed and 1000 retraining epochs: a task of minutes.

    The profile keeps its name (so its folder) and changes only the epochs of the task that reruns.
    """
    results = tmp_path / "slurm"
    shutil.copytree(
        table_run.results, results, ignore=shutil.ignore_patterns("submitit", "*.slurm", "driver-*")
    )
    profile = write_profile(tmp_path / "long", **{"train:epochs": "1000"})
    grid = build_grid(
        load_experiment("table1", load_profile(profile)), Layout.of(results, load_profile(profile))
    )
    task = next(t for t in grid.deps if t.stage == "retrain" and t.attack == "gaussian")
    shutil.rmtree(grid.layout.train_dir(task.key))
    return profile, results, task


def test_task_over_the_partition_time_limit_is_reported_timed_out_and_resubmitted(
    cluster, long_retrain
) -> None:
    profile, results, task = long_retrain
    code, log = finish(driver(cluster, profile, results, "--runner", "slurm", "--partition", SHORT_PARTITION))
    assert code == 2 and "over partition short's MaxTime of 1 min" in log  # refused: it would pend forever
    assert not (results / PROFILE / ".grid" / "submitit").exists()

    code, log = finish(
        driver(
            cluster, profile, results, "--runner", "slurm", "--partition", SHORT_PARTITION, "--time-min", "1"
        )
    )
    state = task_state(Layout.of(results, load_profile(profile)))
    job = state.submitted(task)["job_id"]
    err = results / PROFILE / ".grid" / "submitit" / f"{job}_0_log.err"
    assert code == 1, log
    line = f"failed  {task.id}: timed out: Slurm job {job} ended TIMEOUT at its 1-minute limit; log {err}"
    assert line in log
    assert queue(cluster)[job]["state"] == "TIMEOUT"
    assert state.failure(task).startswith("timed out: Slurm job")
    status = nasaudit_cli("grid", "status", "table1", "--profile", str(profile), "--results", str(results))
    assert f"FAILED {task.id}: timed out" in status

    # the next run submits it again (a new job, which resumes from the checkpoint); cancelled here
    again = driver(
        cluster, profile, results, "--runner", "slurm", "--partition", SHORT_PARTITION, "--time-min", "1"
    )
    wait_for(lambda: state.submitted(task)["job_id"] != job, 120, "the task's resubmission")
    second = state.submitted(task)["job_id"]
    cluster._ok(["scancel", second])
    code, log = finish(again)
    assert code == 1 and f"Slurm job {second} ended CANCELLED without a result" in log


def test_failed_task_is_reported_with_its_log_last_lines(cluster, long_retrain) -> None:
    profile, results, task = long_retrain
    state = task_state(Layout.of(results, load_profile(profile)))
    run = driver(cluster, profile, results, "--runner", "slurm")
    wait_for(lambda: state.running(task) is not None, 300, "the task to start in its job")
    where = state.running(task)
    os.kill(where["pid"], signal.SIGKILL)  # as the kernel's out-of-memory killer would
    code, log = finish(run)
    job = state.submitted(task)["job_id"]
    assert where["where"] == f"slurm job {job}"
    err = results / PROFILE / ".grid" / "submitit" / f"{job}_0_log.err"
    assert code == 1, log
    assert f"failed  {task.id}: Slurm job {job} ended FAILED without a result; log {err}" in log
    tail = err.read_text().strip().splitlines()[-3:]
    assert f"    last lines of {err}:" in log and all(f"    {line}" in log for line in tail)
    assert "Killed" in err.read_text()
    assert tail[-1] in (results / PROFILE / ".grid" / f"{task.id}.traceback").read_text()
