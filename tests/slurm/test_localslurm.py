"""The test cluster's harness without a cluster: its configuration, the install step, its clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import localslurm
import pytest
from localslurm import GPU_FILES, LocalSlurm, Node, Refusal, gres_conf, slurm_conf

SLURMD_C = (
    "NodeName=vm CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=2 ThreadsPerCore=2 RealMemory=16000\n"
)


def test_node_line_and_configuration(tmp_path) -> None:
    node = Node.parse(SLURMD_C)
    assert node == Node(8, 1, 2, 2, 2, 16000)
    text = slurm_conf(tmp_path, node, "vm", (7001, 7002), "root")
    lines = text.splitlines()
    node_line = next(line for line in lines if line.startswith("NodeName="))
    for field in (
        "CPUs=8",
        "SocketsPerBoard=2",
        "ThreadsPerCore=2",
        "RealMemory=14400",
        f"Gres=gpu:{len(GPU_FILES)}",
    ):
        assert field in node_line.split()
    assert "ProctrackType=proctrack/linuxproc" in lines and "TaskPlugin=task/none" in lines  # no cgroups
    assert "PartitionName=short Nodes=localhost MaxTime=1 State=UP" in lines
    assert f"AuthInfo=socket={tmp_path / 'munge.socket'}" in lines
    assert "SlurmctldPort=7001" in lines and "SlurmdPort=7002" in lines
    # every file the daemons write is in the cluster's folder
    paths = [v for line in lines for v in line.split("=")[1:] if v.startswith("/")]
    assert len(paths) >= 7 and all(Path(p.removeprefix("socket=")).parent == tmp_path for p in paths)
    assert gres_conf().count("Name=gpu") == len(GPU_FILES)
    with pytest.raises(Refusal, match="node line"):
        Node.parse("slurmd: error: something\n")


def test_install_refused_without_root(monkeypatch, capsys) -> None:
    monkeypatch.setattr(localslurm, "missing_programs", lambda: ["slurmd", "munged"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert localslurm.main(["install"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slurmd, munged missing and this is not root" in err


def test_install_as_root_runs_apt_and_reports_its_failure(monkeypatch) -> None:
    answers = [["slurmd"], []]  # missing before the install, then nothing
    monkeypatch.setattr(
        localslurm, "missing_programs", lambda: answers.pop(0) if len(answers) > 1 else answers[0]
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    commands: list[list[str]] = []

    def apt(command, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    localslurm.ensure_installed(run=apt)
    assert commands == [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"],
    ]

    def broken(command, **kwargs):  # type: ignore[no-untyped-def]
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package slurm-wlm\n")

    monkeypatch.setattr(localslurm, "missing_programs", lambda: ["slurmd"])
    with pytest.raises(Refusal, match="apt-get update -qq failed: E: Unable to locate package slurm-wlm"):
        localslurm.ensure_installed(run=broken)


def test_stop_ends_exactly_its_processes_and_removes_the_folder(tmp_path) -> None:
    local = LocalSlurm(tmp_path / "cluster")
    local.folder.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    local._daemon(*sleep)  # stands in for a daemon it started
    stray = subprocess.Popen(sleep, env=local.env)  # a job process: carries the cluster's SLURM_CONF
    other = subprocess.Popen(sleep, env={**os.environ, "SLURM_CONF": "/elsewhere/slurm.conf"})
    daemon = local.daemons[0]
    try:
        local.stop(timeout=5)
        assert daemon.poll() is not None
        assert stray.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None  # not this cluster's
        assert not local.folder.exists()
    finally:
        for process in (stray, other):
            process.kill()
            process.wait()


def test_make_targets() -> None:
    """test-slurm installs then runs the marked tests; test-all leaves them to test-slurm, as root only."""
    from test_docker import make_n

    slurm = [c for c in make_n("test-slurm") if c[:1] == [".venv/bin/python"]]
    assert slurm[-2:] == [
        [".venv/bin/python", "tests/slurm/localslurm.py", "install"],
        [".venv/bin/python", "-m", "pytest", "-q", "-m", "slurm", "tests/slurm"],
    ]
    everything = make_n("test-all")
    assert [".venv/bin/python", "-m", "pytest", "-q", "-m", "not slurm"] in everything
    assert any(c[:2] == ["if", "["] and "test-slurm;" in c for c in everything)
