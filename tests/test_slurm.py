"""The Slurm runner's dealings with the cluster, against stand-in squeue/sacct/scontrol/srun programs.

The real cluster is ``tests/slurm/`` (``make test-slurm``); here each command prints what a real one
printed (formats checked against Slurm 22.05), so parsing, refusals, polling and adoption run in
milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from nasaudit.config import load_profile
from nasaudit.errors import NasauditError
from nasaudit.grid import Layout, slurm
from nasaudit.grid.jobs import JobKey, Task, retrain_task
from nasaudit.grid.runners import SlurmBackend
from nasaudit.grid.stages import RunSpec, task_state

PARTITIONS = (
    "PartitionName=main AllowGroups=ALL Default=YES MaxTime=01:00:00 Nodes=localhost State=UP\n"
    "PartitionName=short AllowGroups=ALL Default=NO MaxTime=00:01:00 Nodes=localhost State=UP\n"
    "PartitionName=long Default=NO MaxTime=2-00:00:00 State=UP\n"
)
CONFIG = "Configuration data as of 2026-12-04T13:45:35\nMaxArraySize            = 5\nMaxJobCount = 10000\n"


def command(folder: Path, name: str, stdout: str = "", stderr: str = "", code: int = 0) -> Path:
    """A stand-in for a Slurm command: prints ``stdout``/``stderr``, exits ``code``, logs its arguments."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.out").write_text(stdout)
    (folder / f"{name}.err").write_text(stderr)
    script = folder / name
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{folder}/{name}.args"\ncat "{folder}/{name}.out"\n'
        f'cat "{folder}/{name}.err" >&2\nexit {code}\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    command(folder, "srun")  # submitit's SlurmExecutor looks for it
    scontrol = folder / "scontrol"
    command(folder, "scontrol")
    scontrol.write_text(
        f'#!/bin/sh\ncase "$2" in partition) printf "%s" "{PARTITIONS}";; config) printf "%s" "{CONFIG}";; '
        "esac\n"
    )
    return folder


def test_states_from_squeue_and_sacct() -> None:
    squeue = "12_1|PENDING\n12_0|RUNNING\n13|COMPLETING\n"
    assert slurm.parse_states(squeue) == {"12_1": "PENDING", "12_0": "RUNNING", "13": "COMPLETING"}
    sacct = "14|CANCELLED by 0\n14.batch|CANCELLED\n15_[2-4,7%2]|PENDING\n15_0|TIMEOUT\n15_0.0|CANCELLED\n"
    states = slurm.parse_states(sacct)
    assert states == {
        "14": "CANCELLED",
        "15_2": "PENDING",
        "15_3": "PENDING",
        "15_4": "PENDING",
        "15_7": "PENDING",
        "15_0": "TIMEOUT",
    }
    assert "TIMEOUT" not in slurm.ACTIVE and "COMPLETING" in slurm.ACTIVE and "REQUEUED" in slurm.ACTIVE


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("30", 30),
        ("30:30", 30),
        ("00:01:00", 1),
        ("01:00:00", 60),
        ("2-00:00:00", 2880),
        ("1-12", 2160),
        ("1-01:30", 1530),
    ],
)
def test_slurm_durations(text: str, minutes: int | None) -> None:
    assert slurm.parse_minutes(text) == minutes


def test_job_states_ask_sacct_for_what_squeue_forgot(bin_dir) -> None:
    command(bin_dir, "squeue", "21_0|RUNNING\n21_1|PENDING\n")
    command(bin_dir, "sacct", "22|TIMEOUT\n22.batch|CANCELLED\n")
    assert slurm.job_states(["21_0", "21_1", "22", "23"]) == {
        "21_0": "RUNNING",
        "21_1": "PENDING",
        "22": "TIMEOUT",
        "23": slurm.UNKNOWN,
    }
    assert (bin_dir / "squeue.args").read_text().split()[-1] == "--jobs=21,22,23"
    assert (bin_dir / "sacct.args").read_text().split()[-1] == "--jobs=22,23"
    # every job forgotten (squeue says so with exit 1), no accounting on this cluster: unknown, not an error
    command(bin_dir, "squeue", "", "slurm_load_jobs error: Invalid job id specified\n", 1)
    command(bin_dir, "sacct", "", "Slurm accounting storage is disabled\n", 1)
    assert slurm.job_states(["22"]) == {"22": slurm.UNKNOWN}
    # the controller not answering is no state at all: the runner asks again at its next poll
    command(bin_dir, "squeue", "", "slurm_load_jobs error: Unable to contact slurm controller\n", 1)
    assert slurm.job_states(["22"]) is None
    assert slurm.job_states([]) == {}


def slurm_config(**values: object):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(load_profile("smoke").grid.slurm, **values)


def test_request_over_the_partition_time_limit_is_refused_before_submitting(bin_dir) -> None:
    with pytest.raises(NasauditError, match=r"time limit 60 min is over partition short's MaxTime of 1 min"):
        slurm.check_request(slurm_config(partition="short", time_min=60))
    with pytest.raises(NasauditError, match=r"no partition 'gpu' \(partitions: long, main, short\)"):
        slurm.check_request(slurm_config(partition="gpu"))
    with pytest.raises(NasauditError, match="over partition main's MaxTime of 60 min"):  # the default one
        slurm.check_request(slurm_config(partition="", time_min=61))
    # the array size: the profile's limit, capped at the cluster's MaxArraySize
    assert slurm.check_request(slurm_config(partition="long", time_min=2880, array_limit=1000)) == 5
    assert slurm.check_request(slurm_config(partition="short", time_min=1, array_limit=3)) == 3
    command(bin_dir, "scontrol", "", "slurm_load_partitions: Unable to contact slurm controller\n", 1)
    with pytest.raises(NasauditError, match=r"cannot ask the Slurm controller .* Unable to contact"):
        slurm.check_request(slurm_config())


class FakeJob:
    """What the backend reads of a submitit job: its id and the paths of its result and logs."""

    def __init__(self, folder: Path, job_id: str) -> None:
        self.job_id = job_id
        self.paths = SimpleNamespace(
            result_pickle=folder / f"{job_id}_0_result.pkl",
            stderr=folder / f"{job_id}_0_log.err",
            stdout=folder / f"{job_id}_0_log.out",
        )


def task(trial: int) -> Task:
    return retrain_task(JobKey("digits", "pdarts", "none", 0.0, trial))


@pytest.fixture
def backend(bin_dir, tmp_path) -> SlurmBackend:
    profile = load_profile("smoke")
    spec = RunSpec(profile, tmp_path / "results", None)
    cfg = slurm_config(partition="main", time_min=30, poll_seconds=0)
    return SlurmBackend(spec, cfg, task_state(Layout.of(tmp_path / "results", profile)), "slurm")


def test_jobs_that_ended_without_a_result_are_reported_with_state_and_log(backend, bin_dir, tmp_path) -> None:
    assert backend.array_size == 5 and backend.spec.results.is_absolute()
    folder = tmp_path / "logs"
    folder.mkdir()
    jobs = {name: FakeJob(folder, name) for name in ("7_0", "7_1", "8", "9")}
    for i, job in enumerate(jobs.values()):
        backend.jobs[job] = task(i)
    jobs["8"].paths.stderr.write_text(
        "submitit INFO starting\n" + "line\n" * 20 + "srun: error: node1: task 0: Killed\n"
    )
    command(bin_dir, "squeue", "7_0|TIMEOUT\n7_1|RUNNING\n8|FAILED\n9|COMPLETED\n")
    assert backend._poll() == []  # ended, but the result file may still be on its way (NFS)
    jobs["9"].paths.result_pickle.write_bytes(b"")  # it arrives: its outcome is read from it
    backend._result = lambda job: backend.jobs.pop(job) and "read"  # type: ignore[method-assign]
    outcomes = backend._poll()
    assert "read" in outcomes
    failed = {o.task: o for o in outcomes if o != "read"}
    assert set(failed) == {task(0), task(2)}
    timeout, killed = failed[task(0)], failed[task(2)]
    assert timeout.status == "failed" and timeout.error == (
        f"timed out: Slurm job 7_0 ended TIMEOUT at its 30-minute limit; log {jobs['7_0'].paths.stderr}"
    )
    assert timeout.details == f"no log at {jobs['7_0'].paths.stderr}"
    assert killed.error == f"Slurm job 8 ended FAILED without a result; log {jobs['8'].paths.stderr}"
    lines = killed.details.splitlines()
    assert lines[0] == f"last lines of {jobs['8'].paths.stderr}:" and lines[-1].endswith("task 0: Killed")
    assert len(lines) == 11  # the last ten
    assert list(backend.jobs.values()) == [task(1)]  # still running
    command(bin_dir, "squeue", "", "slurm_load_jobs error: Socket timed out on send/recv operation\n", 1)
    assert backend._poll() == [] and list(backend.jobs.values()) == [task(1)]  # no answer is no news


def test_a_restarted_driver_follows_the_jobs_still_queued_or_running(backend, bin_dir) -> None:
    for i, job in enumerate(["31_0", "31_1", "32"]):
        backend.state.mark_submitted(task(i), job, backend.folder)
    command(bin_dir, "squeue", "31_0|RUNNING\n31_1|PENDING\n32|COMPLETED\n")
    assert backend.adopt([task(0), task(1), task(2), task(3)]) == [task(0), task(1)]
    assert sorted(job.job_id for job in backend.jobs) == ["31_0", "31_1"]
    assert json.loads((backend.state.folder / f"{task(2).id}.slurm").read_text())["job_id"] == "32"


def test_sbatch_refusal_is_one_line(backend, bin_dir) -> None:
    command(
        bin_dir,
        "sbatch",
        "",
        "sbatch: error: Batch job submission failed: Invalid job array specification\n",
        1,
    )
    with pytest.raises(NasauditError) as error:
        backend.submit([task(0), task(1)])
    assert str(error.value) == (
        "sbatch refused an array of 2 tasks: sbatch: error: Batch job submission failed: "
        "Invalid job array specification"
    )


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_tasks_log_at_the_drivers_verbosity(backend, bin_dir, monkeypatch, level) -> None:
    """What sbatch is given carries the driver's -v/-q: the submitted call, run as a node runs it, sets
    up the task's logging at that level (a task process starts unconfigured)."""
    from nasaudit import verbosity
    from nasaudit.grid import runners

    command(bin_dir, "sbatch", "Submitted batch job 42\n")
    monkeypatch.setattr(logging.getLogger("nasaudit"), "level", level)  # as `nasaudit -v/-q grid run`
    backend.submit([task(0), task(1)])
    assert sorted(job.job_id for job in backend.jobs) == ["42_0", "42_1"]
    submission = next(iter(backend.jobs)).submission()  # the pickle the array task unpickles and calls
    configured: list[int] = []
    monkeypatch.setattr(verbosity, "configure", configured.append)
    monkeypatch.setattr(runners.threads, "configure", lambda: None)
    monkeypatch.setattr(runners, "execute", lambda t, spec, where: f"{t.id} ran")
    assert submission.function(*submission.args, **submission.kwargs) == f"{task(0).id} ran"
    assert configured == [level]
