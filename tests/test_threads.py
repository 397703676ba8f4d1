"""CPU thread sizing: allotment (affinity, cgroup quota, Slurm), overrides, entry points, manifests."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from nasaudit import threads
from nasaudit.cli import main
from nasaudit.errors import NasauditError
from nasaudit.threads import ENV, Allotment, cgroup_quota, decide

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = (ENV, "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")


@pytest.fixture
def restore_threads(monkeypatch):  # type: ignore[no-untyped-def]
    """Each test may resize this process's pools and set the override: put everything back after."""
    torch_threads, pools = torch.get_num_threads(), threadpool_limits(limits=None)
    for name in OVERRIDES:
        monkeypatch.setenv(name, "")  # recorded, so teardown restores (or removes) what configure() sets
        monkeypatch.delenv(name)
    monkeypatch.setattr(threads, "_current", None)
    monkeypatch.setattr(threads, "_logged", set())
    yield monkeypatch
    torch.set_num_threads(torch_threads)
    pools.restore_original_limits()


def allot_as(monkeypatch, affinity: int, quota: float | None = None) -> None:  # type: ignore[no-untyped-def]
    """This process's CPUs as a machine with ``affinity`` CPUs and that quota (Slurm from the env)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(threads, "cgroup_quota", lambda cgroup, mountinfo: quota)


def pool_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info()}


# --- the allotment -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allot", "cpus"),
    [
        (Allotment(8, None, None), 8),
        (Allotment(8, 2.0, None), 2),  # docker --cpus=2
        (Allotment(8, 2.5, None), 2),  # a fraction rounds down: never more threads than CPU time
        (Allotment(8, 0.5, None), 1),  # at least one
        (Allotment(8, None, 3), 3),  # Slurm granted 3, no binding
        (Allotment(2, 4.0, 6), 2),  # the affinity mask is the tightest
    ],
)
def test_usable_cpus_are_the_tightest_limit(allot, cpus) -> None:
    assert allot.cpus == cpus


def _cgroup_v2(tmp_path: Path, limits: dict[str, str]) -> str:
    """A cgroup v2 tree under tmp_path (folder -> cpu.max); returns its mountinfo line."""
    for folder, value in limits.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "cpu.max").write_text(value + "\n")
    return f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path) -> None:
    mountinfo = _cgroup_v2(
        tmp_path, {".": "max 100000", "kube": "300000 100000", "kube/pod": "max 100000", "kube/pod/c": "max"}
    )
    assert cgroup_quota("0::/kube/pod/c\n", mountinfo) == 3.0  # the pod's parent limits it
    assert cgroup_quota("0::/kube/pod/c\n", _cgroup_v2(tmp_path, {"kube/pod": "150000 100000"})) == 1.5
    assert cgroup_quota("0::/\n", mountinfo) is None  # the root: no limit


def test_cgroup_v2_in_a_container_reads_its_own_root(tmp_path) -> None:
    """A container's /proc/self/cgroup may name a host path the container cannot see: read the mount."""
    mountinfo = _cgroup_v2(tmp_path, {".": "200000 100000"})
    assert cgroup_quota("0::/docker/0123abcd\n", mountinfo.replace(" / ", " /docker/0123abcd ")) == 2.0
    assert cgroup_quota("0::/../elsewhere\n", mountinfo.replace(" / ", " /docker/x ")) == 2.0


def test_cgroup_v1_quota_and_no_quota(tmp_path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    (cpu / "job").mkdir(parents=True)
    for folder, quota in ((cpu, "-1"), (cpu / "job", "50000")):
        (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    mountinfo = f"32 31 0:29 / {cpu} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    cgroup = "4:cpu,cpuacct:/job\n3:memory:/job\n0::/\n"
    assert cgroup_quota(cgroup, mountinfo) == 0.5
    assert cgroup_quota("4:cpu,cpuacct:/\n", mountinfo) is None  # -1: unlimited
    assert cgroup_quota("4:memory:/job\n", mountinfo) is None  # no cpu controller named: nothing to read


def test_allotment_reads_affinity_quota_and_slurm(monkeypatch) -> None:
    allot_as(monkeypatch, 6, 4.0)
    assert threads.allotment({"SLURM_CPUS_PER_TASK": "3"}) == Allotment(6, 4.0, 3)
    assert threads.allotment({"SLURM_CPUS_PER_TASK": "x"}) == Allotment(6, 4.0, None)
    assert threads.allotment({}).cpus == 4


# --- the decision ------------------------------------------------------------------------------------


def test_auto_divides_the_usable_cpus_among_the_jobs() -> None:
    allot = Allotment(8, None, 6)
    assert decide(1, environ={}, allot=allot).threads == 6
    assert decide(4, environ={}, allot=allot).threads == 1
    assert decide(2, environ={}, allot=allot).threads == 3
    assert decide(16, environ={}, allot=allot).threads == 1
    assert decide(1, environ={}, allot=Allotment(2, 1.0, None)).source == "auto"


def test_overrides_in_order() -> None:
    allot = Allotment(8, None, None)
    env = {ENV: "3", "OMP_NUM_THREADS": "5"}
    assert (decide(1, 2, env, allot).threads, decide(1, 2, env, allot).source) == (2, "--threads")
    assert (decide(4, None, env, allot).threads, decide(4, None, env, allot).source) == (3, ENV)
    omp = decide(4, None, {"OMP_NUM_THREADS": "5,2"}, allot)  # OpenMP's per-level list: ours is the first
    assert (omp.threads, omp.source) == (5, "OMP_NUM_THREADS")
    assert decide(1, None, {ENV: " ", "OMP_NUM_THREADS": "junk"}, allot).source == "auto"


@pytest.mark.parametrize(("requested", "env"), [(0, {}), (-2, {}), (None, {ENV: "zero"}), (None, {ENV: "0"})])
def test_bad_override_is_one_line(requested, env) -> None:
    with pytest.raises(NasauditError) as err:
        decide(1, requested, env, Allotment(2, None, None))
    assert "\n" not in str(err.value) and ("--threads" in str(err.value) or ENV in str(err.value))


def test_local_runner_workers_times_threads_fit_the_cpus(restore_threads) -> None:
    allot_as(restore_threads, 4)
    assert threads.local_workers(2, 0, log=None) == 2  # 2 × 2 threads
    assert threads.local_workers(8, 0, log=None) == 4  # 4 × 1: the other 4 would only wait for CPUs
    assert threads.local_workers(8, 2, log=None) == 8  # one worker per GPU, whatever the CPUs
    restore_threads.setenv(ENV, "3")
    assert threads.local_workers(4, 0, log=None) == 1  # 1 × 3 ≤ 4
    restore_threads.setenv(ENV, "9")
    assert threads.local_workers(2, 0, log=None) == 1  # asked for more than there is: one worker


def test_local_backend_starts_only_the_workers_that_fit(restore_threads, tmp_path) -> None:
    from nasaudit.config import PROFILE_DIR, load_profile
    from nasaudit.grid.runners import LocalBackend
    from nasaudit.grid.stages import RunSpec

    allot_as(restore_threads, 2)
    spec = RunSpec(load_profile(PROFILE_DIR / "smoke.toml"), tmp_path, None)
    backend = LocalBackend(spec, None, [], cpu_workers=4)
    try:  # 4 asked on 2 CPUs: 2 workers of 1 thread, the other tasks wait
        assert backend.capacity == 2 and backend.pool._max_workers == 2  # type: ignore[attr-defined]
        assert backend.spec.device == "cpu"
    finally:
        backend.close()


def test_local_runner_logs_its_choice_once(restore_threads) -> None:
    allot_as(restore_threads, 2)
    lines: list[str] = []
    for _ in range(3):  # the smoke test starts three grids
        threads.local_workers(4, 0, log=lines.append)
    assert len(lines) == 1 and "2 worker(s) of 4 asked" in lines[0] and "1 CPU thread per job" in lines[0]


# --- entry points ------------------------------------------------------------------------------------


def test_configure_sizes_torch_and_the_blas_pools(restore_threads) -> None:
    allot_as(restore_threads, 3)
    lines: list[str] = []
    choice = threads.configure(log=lines.append)
    assert choice.threads == torch.get_num_threads() == 3 and pool_threads() == {3}
    threads.configure(log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("[threads] 3 CPU threads; 3 usable CPUs")
    restore_threads.setenv("SLURM_CPUS_PER_TASK", "2")
    assert threads.configure(log=None).threads == torch.get_num_threads() == 2 and pool_threads() == {2}


def test_cli_threads_reaches_torch_blas_and_child_processes(restore_threads, capsys) -> None:
    allot_as(restore_threads, 1)
    assert main(["data", "info", "digits", "--threads", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["train"] == 1437  # stdout is still the JSON alone
    assert torch.get_num_threads() == 3 and pool_threads() == {3} and os.environ[ENV] == "3"


def test_cli_bad_threads_is_one_line(restore_threads, capsys) -> None:
    assert main(["data", "info", "digits", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "nasaudit: error: --threads must be at least 1, got 0\n"


def test_every_command_takes_threads() -> None:
    from nasaudit.cli import build_parser

    parser = build_parser()
    for argv in (["search", "--algo", "tenas"], ["grid", "run", "table1"], ["poison"], ["table", "table1"]):
        args, _ = parser.parse_known_args([*argv, "--out", "x", "--threads", "2"])
        assert args.threads == 2, argv


def test_manifest_records_the_threads(restore_threads, tmp_path) -> None:
    out = tmp_path / "rlf"
    argv = ["poison", "--attack", "rlf", "--budget", "0.1", "--out", str(out), "--threads", "2"]
    assert main(argv) == 0
    recorded = json.loads(out.with_suffix(".json").read_text())["environment"]["threads"]
    assert recorded["torch"] == 2 and recorded["blas"] == [2] and recorded["source"] == "--threads"
    assert recorded["usable_cpus"] == threads.allotment().cpus and recorded["jobs"] == 1


def test_slurm_task_uses_its_cpus_per_task(restore_threads) -> None:
    from nasaudit.grid import runners

    allot_as(restore_threads, 8)
    restore_threads.setenv("SLURM_CPUS_PER_TASK", "3")
    seen = []
    restore_threads.setattr(runners, "execute", lambda task, spec, where: seen.append(threads.manifest()))
    runners._run_slurm("task", "spec", logging.INFO)  # type: ignore[arg-type]
    assert seen[0]["torch"] == 3 and seen[0]["allotment"]["slurm"] == 3 and seen[0]["source"] == "auto"


def test_local_worker_takes_its_share(restore_threads) -> None:
    from nasaudit.grid.runners import _init_worker

    allot_as(restore_threads, 4)
    devices = multiprocessing.get_context("spawn").Queue()
    devices.put(None)
    _init_worker(devices, 2, logging.INFO)
    assert torch.get_num_threads() == 2 and pool_threads() == {2}
    assert threads.manifest()["jobs"] == 2


# --- make --------------------------------------------------------------------------------------------


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != ENV}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_make_threads_reaches_every_command() -> None:
    rule = '--eval=print-threads: ; @echo "[$$NASAUDIT_THREADS]"'
    assert _make(rule, "print-threads", "THREADS=3").stdout == "[3]\n"
    assert _make(rule, "print-threads").stdout == "[]\n"  # unset: automatic


def test_make_docker_run_passes_threads_into_the_container() -> None:
    done = _make("-n", "docker-run", "ALGO=robot", "CMD=data info digits", "THREADS=2")
    assert "-e NASAUDIT_THREADS=2 nasaudit:robot data info digits" in " ".join(done.stdout.split())
