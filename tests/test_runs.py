"""The shared run machinery: job identities and claims, the job lock, file modes, progress bars."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasaudit.config import Profile, load_profile
from nasaudit.errors import NasauditError
from nasaudit.io import read_json, write_bytes, write_json
from nasaudit.runs import check_same_run, claim, fingerprint, is_locked, job_lock, profile_sections, reuse

ARTIFACT = Path(__file__).resolve().parents[1] / "artifact"


def test_check_same_run_names_the_file_and_what_differs(tmp_path) -> None:
    expected = fingerprint("search", algorithm="pdarts", seed=0, profile={"pdarts": {"epochs": 2}})
    check_same_run(tmp_path / "a.json", dict(expected), expected)  # the same run passes
    other = {**expected, "seed": 1, "profile": {"pdarts": {"epochs": 3}}}
    with pytest.raises(NasauditError) as err:
        check_same_run(tmp_path / "a.json", other, expected)
    assert str(err.value).startswith(f"{tmp_path / 'a.json'}: made by another run (its profile, seed differ")
    with pytest.raises(NasauditError, match="does not record which run made it"):
        check_same_run(tmp_path / "a.json", None, expected)


def test_reuse_returns_this_runs_result_only(tmp_path) -> None:
    identity = fingerprint("poison", seed=0)
    assert reuse(tmp_path / "r.json", identity, "recomputes it") is None
    write_json(tmp_path / "r.json", {"identity": identity, "value": 3})
    assert reuse(tmp_path / "r.json", identity, "recomputes it")["value"] == 3
    with pytest.raises(NasauditError, match=r"its seed differs"):
        reuse(tmp_path / "r.json", fingerprint("poison", seed=1), "recomputes it")
    (tmp_path / "r.json").write_text('{"identity": {"job"')
    with pytest.raises(
        NasauditError, match=r"r\.json: damaged or truncated .*delete it and rerun, which recomputes it$"
    ):
        reuse(tmp_path / "r.json", identity, "recomputes it")


def test_a_claim_protects_a_folders_state_and_only_state(tmp_path) -> None:
    mine, theirs = fingerprint("search", seed=0), fingerprint("search", seed=1)
    folder = tmp_path / "job"
    claim(folder / "job.json", mine, fresh=True)
    claim(folder / "job.json", mine, fresh=True)  # the same run resumes
    claim(folder / "job.json", theirs, fresh=True)  # nothing beside the claim: a failed start, taken over
    assert read_json(folder / "job.json", "") == theirs
    (folder / "state.json").write_text("{}")
    with pytest.raises(NasauditError, match=r"job\.json: made by another run \(its seed differs"):
        claim(folder / "job.json", mine, fresh=True)
    (folder / "job.json").unlink()
    with pytest.raises(NasauditError, match=r"holds files no run claims \(state\.json"):
        claim(folder / "job.json", theirs, fresh=True)


def test_every_declared_profile_section_exists_in_both_profiles() -> None:
    """A plugin's ``uses=`` names what its jobs' identities record; a renamed section must fail here."""
    from nasaudit.attacks import ATTACKS
    from nasaudit.defenses import DEFENSES
    from nasaudit.models import MODELS
    from nasaudit.nas import NAS

    for name in ("smoke", "paper"):
        profile = load_profile(name)
        for registry in (ATTACKS, DEFENSES, MODELS, NAS):
            for plugin in registry:
                profile_sections(profile, registry.uses(plugin))
    assert NAS.uses("pdarts") == ("pdarts",) and ATTACKS.uses("rlf") == ()


def test_an_unrelated_profile_edit_keeps_a_search_and_a_used_one_refuses_it(tmp_path, digits) -> None:
    """The identity holds the sections the algorithm reads ([mbv3] for its random sampler), so a
    table's settings do not matter to a search, and its own do."""
    import dataclasses

    from nasaudit.nas import SearchContext, run_search

    profile = load_profile("smoke")  # [mbv3] init = "scratch": the sampler trains no supernet

    def search(changed: Profile) -> dict:
        context = SearchContext(changed, torch.device("cpu"), tmp_path, progress=False)
        return run_search("random_mbv3", digits, 0, context, {"dataset": "digits"})

    first = search(profile)
    assert search(dataclasses.replace(profile, table1=dataclasses.replace(profile.table1, trials=9))) == first
    other = dataclasses.replace(profile, mbv3=dataclasses.replace(profile.mbv3, dropout=0.5))
    with pytest.raises(NasauditError, match=r"architecture\.json: made by another run \(its profile differs"):
        search(other)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_umasks_default_mode(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        path = write_bytes(tmp_path / "f.bin", b"x")
        (tmp_path / "plain.bin").write_bytes(b"x")  # what a plain write gives
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_job_lock_excludes_a_second_holder_until_released(tmp_path) -> None:
    output = tmp_path / "job" / "result.json"
    assert not is_locked(output)
    with job_lock(output) as held:
        assert held and is_locked(output)
        with job_lock(output, wait=False) as second:
            assert not second
    assert not is_locked(output)
    assert {p.name for p in (tmp_path / "job").iterdir()} == {".result.json.lock"}


def test_a_second_identical_command_waits_for_the_first_and_reuses_its_result(tmp_path) -> None:
    """While one process makes a poison, an identical command waits on the lock, then finds the result."""
    from nasaudit.attacks import AttackContext, make_poison_file
    from nasaudit.data.datasets import load_dataset

    out, cache = tmp_path / "rlf", tmp_path / "cache"
    argv = ["poison", "--attack", "rlf", "--budget", "0.2", "--profile", "smoke", "--device", "cpu",
            "--cache", str(cache), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ARTIFACT), "OMP_NUM_THREADS": "1"}
    with job_lock(out.with_suffix(".json")):  # a first process is making this poison
        second = subprocess.Popen([sys.executable, "-m", "nasaudit.cli", *argv], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        ready, _, _ = select.select([second.stderr], [], [], 300)
        assert ready, "the second command neither waited nor finished"
        assert "another process is making" in second.stderr.readline()
        assert second.poll() is None  # still waiting
        context = AttackContext(load_profile("smoke"), torch.device("cpu"), cache)
        make_poison_file("rlf", load_dataset("digits"), 0.2, 0, context, out)  # the first one finishes
        made = out.with_suffix(".npz").stat().st_mtime_ns
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "made before by this same run, reused" in stdout
    assert out.with_suffix(".npz").stat().st_mtime_ns == made  # made once
    assert json.loads(out.with_suffix(".json").read_text())["identity"]["seed"] == 0


def test_bars_are_silent_off_a_terminal_and_under_the_grid(monkeypatch) -> None:
    from nasaudit.progress import bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert bar(3, desc="x").disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not bar(3, desc="x").disable
    assert bar(3, desc="x", enabled=False).disable  # the grid's workers


def test_the_training_bar_moves_within_an_epoch(tiny_dataset, monkeypatch) -> None:
    """One update per batch, not per epoch: a long epoch shows its progress."""
    import dataclasses

    from nasaudit import train
    from nasaudit.spaces.darts import EvalNetwork, load

    updates: list[int] = []

    class Bar:
        def __init__(self, total, **_) -> None:  # type: ignore[no-untyped-def]
            self.total = total

        def update(self, n: int) -> None:
            updates.append(n)

        def set_postfix(self, **_) -> None:  # type: ignore[no-untyped-def]
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(train, "bar", Bar)
    cfg = dataclasses.replace(load_profile("smoke").train, epochs=2, batch_size=8)

    def build() -> EvalNetwork:
        return EvalNetwork(load("pdarts"), 4, 2, tiny_dataset.num_classes, auxiliary=False)

    train.train_model(build, tiny_dataset, cfg, seed=0, device=torch.device("cpu"), progress=True)
    assert updates == [1] * (2 * 5)  # 40 images in batches of 8, two epochs
