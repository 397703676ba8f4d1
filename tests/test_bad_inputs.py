"""Bad input through ``main()``: a non-zero status, exactly one line on stderr, no traceback, nothing written.

Each row of ``CASES`` is one way a user (or a crash, or another run) can hand the CLI something wrong:
a folder another run made, a file of the wrong dtype, an output that cannot be written, a device or
seed that does not exist, a damaged file, a genotype with 'none'. A row names the case, writes what
the case needs into its own folder and returns the command line, and gives a fragment of the one
line expected. Adding a case is one row; the test around them is the same for all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from nasaudit.cli import main
from nasaudit.config import PROFILE_DIR
from nasaudit.io import save_torch, sha256_file, write_json, write_npz


@dataclass(frozen=True)
class Shared:
    """What several cases start from, made once per session (a finished train job, a poison, a victim)."""

    folder: Path
    profile: str  # the smoke profile trained for one epoch: seconds on a CPU

    @property
    def train_job(self) -> Path:
        return self.folder / "train0"

    @property
    def poison(self) -> Path:
        return self.folder / "rlf"

    @property
    def victim(self) -> Path:
        return self.folder / "victim.pt"


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Shared:
    folder = tmp_path_factory.mktemp("shared")
    text = re.sub(r"^epochs = \d+$", "epochs = 1", (PROFILE_DIR / "smoke.toml").read_text(), flags=re.M)
    (folder / "quick.toml").write_text(text)
    made = Shared(folder, str(folder / "quick.toml"))
    common = ["--profile", made.profile, "--device", "cpu"]
    assert main(["train", "--arch", "pdarts", "--out", str(made.train_job), *common]) == 0
    assert main(["poison", "--attack", "rlf", "--budget", "0.1", "--out", str(made.poison), *common,
                 "--cache", str(folder / "cache")]) == 0  # fmt: skip
    assert (
        main(["victim", "--train", str(made.train_job), "--profile", made.profile, "--out", str(made.victim)])
        == 0
    )
    return made


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path, Shared], list[str]]  # writes what the case needs into its folder; the argv
    message: str  # a fragment of the expected line
    unless_root: bool = False  # root can write anywhere: a permission case cannot fail for it


# --- helpers that write the cases' files ---------------------------------------------------------------


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _q(shared: Shared) -> list[str]:
    return ["--profile", shared.profile, "--device", "cpu"]


def _poison_copy(folder: Path, shared: Shared, labels: np.ndarray | None = None, **manifest) -> Path:
    """A copy of the shared RLF poison, its labels (and the manifest's npz hash) replaced if asked."""
    stem = folder / "p"
    shutil.copy(shared.poison.with_suffix(".npz"), stem.with_suffix(".npz"))
    data = json.loads(shared.poison.with_suffix(".json").read_text())
    if labels is not None:
        with np.load(stem.with_suffix(".npz")) as z:
            indices = z["indices"]
        write_npz(stem.with_suffix(".npz"), {"indices": indices, "labels": labels[: len(indices)]})
        data["npz_sha256"] = sha256_file(stem.with_suffix(".npz"))
    write_json(stem.with_suffix(".json"), {**data, **manifest})
    return stem.with_suffix(".npz")


def _labels(dtype: str, n: int = 1000) -> np.ndarray:
    values = {"float": np.full(n, 0.7), "nan": np.full(n, np.nan), "int8": np.ones(n, np.int8),
              "bool": np.ones(n, bool)}  # fmt: skip
    return values[dtype]


def _search_identity(algorithm: str, seed: int, shared: Shared) -> dict:
    """The identity `nasaudit search` records for a clean digits search with the quick profile."""
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.nas.base import search_identity
    from nasaudit.runs import data_identity

    return search_identity(
        algorithm, seed, load_profile(shared.profile), data_identity(load_dataset("digits"))
    )


def _claimed_pdarts(folder: Path, shared: Shared, name: str, content: bytes) -> list[str]:
    """A P-DARTS job folder claimed by this very run, holding a truncated ``name``."""
    out = folder / "search"
    write_json(out / "job.json", _search_identity("pdarts", 0, shared))
    (out / name).write_bytes(content)
    return ["search", "--algo", "pdarts", *_q(shared), "--out", str(out)]


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _train_copy(folder: Path, shared: Shared) -> Path:
    job = folder / "train"
    shutil.copytree(shared.train_job, job)
    return job


def _genotype_with_none() -> dict:
    from nasaudit.spaces.darts import load

    genotype = load("pdarts").to_json()
    genotype["normal"][2] = ["none", 0]
    return genotype


def _grid_with_foreign_output(folder: Path, shared: Shared) -> list[str]:
    """A table1 grid folder whose first RLF poison was written by another run."""
    from nasaudit.config import load_profile
    from nasaudit.grid import Layout, build_grid, load_experiment

    profile = load_profile(shared.profile)
    experiment = load_experiment("table1", profile).select(["pdarts"], ["digits"])
    grid = build_grid(experiment, Layout.of(folder / "results", profile))
    task = next(t for t in grid.deps if t.stage == "poison" and t.attack == "rlf")
    from nasaudit.grid.stages import STAGES

    write_json(STAGES.get("poison").output(task, grid.layout), {"identity": {"job": "poison", "seed": 12345}})
    return ["grid", "run", "table1", "--profile", shared.profile, "--algo", "pdarts", "--dataset", "digits",
            "--results", str(folder / "results"), "--workers", "0"]  # fmt: skip


def _foreign_defended(folder: Path, shared: Shared) -> list[str]:
    """A defended file at OUT whose identity is that of another seed."""
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import poisoned_data
    from nasaudit.defenses import DefenseContext, defense_identity, make_defended, save_defended

    data, provenance, _ = poisoned_data(load_dataset("digits"), shared.poison)
    context = DefenseContext(load_profile(shared.profile), torch.device("cpu"), folder / "cache", provenance)
    defended = make_defended("relabel", data, 9, np.arange(len(data.train)), labels=data.train.labels)
    save_defended(defended, folder / "d", defense_identity("relabel", data, 9, context))
    return ["defend", "relabel", "--poison", str(shared.poison) + ".npz", *_q(shared), "--seed", "0",
            "--cache", str(folder / "cache"), "--out", str(folder / "d")]  # fmt: skip


def _defended_with_float_labels(folder: Path, shared: Shared) -> list[str]:
    from nasaudit.data.datasets import load_dataset
    from nasaudit.defenses import make_defended, save_defended

    data = load_dataset("digits")
    keep = np.arange(len(data.train))
    save_defended(make_defended("relabel", data, 0, keep, labels=data.train.labels), folder / "d")
    write_npz(folder / "d.npz", {"keep": keep, "labels": data.train.labels.astype(np.float64)})
    manifest = json.loads((folder / "d.json").read_text())
    write_json(folder / "d.json", {**manifest, "npz_sha256": sha256_file(folder / "d.npz")})
    return [
        "search",
        "--algo",
        "random",
        "--defense",
        str(folder / "d.npz"),
        *_q(shared),
        "--out",
        str(folder / "s"),
    ]


def _victim_with(folder: Path, shared: Shared, **changes) -> list[str]:
    """The shared victim with spec fields (or, with ``record=``, record fields) replaced."""
    record = torch.load(shared.victim, weights_only=True)
    record.update(changes.pop("record", {}))
    record["spec"] = {**record["spec"], **changes}
    save_torch(folder / "v.pt", record)
    return [*_poison_cmd(folder, shared), "--attack", "gc", "--victim", str(folder / "v.pt")]


def _unwritable(folder: Path, shared: Shared) -> list[str]:
    (folder / "locked").mkdir()
    os.chmod(folder / "locked", 0o555)
    return ["poison", "--attack", "rlf", *_q(shared), "--out", str(folder / "locked" / "p")]


def _then(first: Callable[[Path, Shared], list[str]], change: dict[str, str], *extra: str):
    """Run ``first``'s command, then the same command with some options changed or added (a second run)."""

    def setup(folder: Path, shared: Shared) -> list[str]:
        argv = first(folder, shared)
        _run(argv)
        changed = list(argv)
        for option, value in change.items():
            changed[changed.index(option) + 1] = value
        return changed + [e.format(poison=shared.poison) for e in extra]

    return setup


def _random_search(folder: Path, shared: Shared) -> list[str]:
    return ["search", "--algo", "random", "--seed", "0", *_q(shared), "--out", str(folder / "s")]


def _pdarts_search(folder: Path, shared: Shared) -> list[str]:
    return ["search", "--algo", "pdarts", *_q(shared), "--out", str(folder / "s")]


def _poison_cmd(folder: Path, shared: Shared) -> list[str]:
    out = ["--cache", str(folder / "c"), "--out", str(folder / "p")]
    return ["poison", "--attack", "rlf", "--seed", "0", *_q(shared), *out]


def _baseline(folder: Path, shared: Shared) -> list[str]:
    return ["random-baseline", "--n", "1", "--seed", "0", *_q(shared), "--out", str(folder / "b")]


def _victim_cmd(folder: Path, shared: Shared) -> list[str]:
    sizes = ["--channels", "4", "--profile", shared.profile]
    return ["victim", "--train", str(shared.train_job), *sizes, "--out", str(folder / "v.pt")]


def _train_cmd(job: Path, shared: Shared, *extra: str) -> list[str]:
    return ["train", "--arch", "pdarts", *_q(shared), *extra, "--out", str(job)]


def _train(folder: Path, shared: Shared) -> list[str]:
    return _train_cmd(folder / "t", shared)


def _with(first: Callable[[Path, Shared], list[str]], *extra: str):
    """``first``'s command with more options (a later one wins)."""
    return lambda folder, shared: [*first(folder, shared), *extra]


def _claimed_by_another_seed(folder: Path, shared: Shared) -> list[str]:
    """A P-DARTS folder another seed's search claimed and left state in (a claim alone protects nothing)."""
    write_json(folder / "s" / "job.json", _search_identity("pdarts", 7, shared))
    write_json(folder / "s" / "pdarts_log.json", {"epochs": []})
    return _pdarts_search(folder, shared)


def _unclaimed_state(folder: Path, shared: Shared) -> list[str]:
    (folder / "s").mkdir()
    (folder / "s" / "pdarts_result.json").write_text("{}")
    return _pdarts_search(folder, shared)


def _train_other_profile(folder: Path, shared: Shared) -> list[str]:
    return [
        "train",
        "--arch",
        "pdarts",
        "--profile",
        "smoke",
        "--device",
        "cpu",
        "--out",
        str(_train_copy(folder, shared)),
    ]


def _train_foreign_checkpoint(folder: Path, shared: Shared) -> list[str]:
    save_torch(
        folder / "t" / "checkpoint.pt", {"identity": json.dumps({"job": "train", "seed": 99}), "epoch": 0}
    )
    return _train(folder, shared)


def _sensitivity_foreign_record(folder: Path, shared: Shared) -> list[str]:
    write_json(folder / "t2" / "architectures" / "arch_000.json", {"key": {"format": "other"}, "values": {}})
    out = ["--cache", str(folder / "c"), "--out", str(folder / "t2")]
    return ["sensitivity", "--poison", f"rlf={shared.poison}.npz", "--dataset", "digits", *_q(shared), *out]


def _inspect(dtype: str):
    return lambda folder, shared: ["poison", "inspect", str(_poison_copy(folder, shared, _labels(dtype)))]


def _search_float_poison(folder: Path, shared: Shared) -> list[str]:
    return [*_random_search(folder, shared), "--poison", str(_poison_copy(folder, shared, _labels("float")))]


def _manifest_kind_list(folder: Path, shared: Shared) -> list[str]:
    return ["poison", "inspect", str(_poison_copy(folder, shared, kind=["labels"]))]


def _file_at(name: str, then: Callable[[Path, Shared], list[str]]):
    """A plain file at ``name``, then ``then``'s command."""

    def setup(folder: Path, shared: Shared) -> list[str]:
        (folder / name).write_text("")
        return then(folder, shared)

    return setup


def _folder_at_poison_npz(folder: Path, shared: Shared) -> list[str]:
    (folder / "p.npz").mkdir()
    return _poison_cmd(folder, shared)


def _truncated_result(folder: Path, shared: Shared) -> list[str]:
    _truncated(_train_copy(folder, shared) / "result.json")
    return _train_cmd(folder / "train", shared)


def _truncated_checkpoint(folder: Path, shared: Shared) -> list[str]:
    (folder / "t").mkdir()
    (folder / "t" / "checkpoint.pt").write_bytes(b"PK\x03\x04trunc")
    return _train(folder, shared)


def _truncated_architecture(then: Callable[[Path, Shared], list[str]]):
    """A finished random search whose architecture.json was then cut in half, and ``then``'s command."""

    def setup(folder: Path, shared: Shared) -> list[str]:
        _run(_random_search(folder, shared))
        _truncated(folder / "s" / "architecture.json")
        return then(folder, shared)

    return setup


def _truncated_victim(folder: Path, shared: Shared) -> list[str]:
    shutil.copy(shared.victim, folder / "v.pt")
    _truncated(folder / "v.pt")
    return [*_poison_cmd(folder, shared), "--attack", "gc", "--victim", str(folder / "v.pt")]


def _genotype_file_with_none(folder: Path, shared: Shared) -> list[str]:
    write_json(folder / "g.json", _genotype_with_none())
    return _train_cmd(folder / "t", shared, "--arch", str(folder / "g.json"))


def _record_with_none(folder: Path, shared: Shared) -> list[str]:
    write_json(folder / "architecture.json", {"space": "darts", "architecture": _genotype_with_none()})
    return _train_cmd(folder / "t", shared, "--arch", str(folder / "architecture.json"))


def _train_on_architecture(folder: Path, shared: Shared) -> list[str]:
    return _train_cmd(folder / "t", shared, "--arch", str(folder / "s" / "architecture.json"))


ANOTHER_RUN = "made by another run"
DAMAGED = "damaged or truncated"
NOT_INT64 = "labels must be int64 class indices, got"

CASES = [
    # 1. a result or checkpoint another run made, for every job kind
    Case("search: another seed", _then(_random_search, {"--seed": "5"}), f"{ANOTHER_RUN} (its seed differs"),
    Case(
        "search: another algorithm",
        _then(_random_search, {"--algo": "tenas"}),
        "its algorithm, profile differ",
    ),
    Case("search: another poison", _then(_random_search, {}, "--poison", "{poison}.npz"), "its data differs"),
    Case(
        "search: a folder another run claims", _claimed_by_another_seed, f"job.json: {ANOTHER_RUN} (its seed"
    ),
    Case("search: state no run claims", _unclaimed_state, "holds files no run claims (pdarts_result.json"),
    Case("train: another seed", _then(_train, {}, "--seed", "1"), f"result.json: {ANOTHER_RUN} (its seed"),
    Case("train: another profile", _train_other_profile, f"result.json: {ANOTHER_RUN} (its config differs"),
    Case("train: a checkpoint of another run", _train_foreign_checkpoint, f"checkpoint.pt: {ANOTHER_RUN}"),
    Case("poison: another seed", _then(_poison_cmd, {"--seed": "1"}), f"p.json: {ANOTHER_RUN} (its seed"),
    Case("poison: another budget", _then(_poison_cmd, {}, "--budget", "0.2"), "its budget differs"),
    Case("defend: another seed", _foreign_defended, f"d.json: {ANOTHER_RUN} (its seed differs"),
    Case("victim: another network size", _then(_victim_cmd, {"--channels": "6"}), "(its channels differs"),
    Case(
        "random-baseline: another seed",
        _then(_baseline, {"--seed": "3"}),
        f"arch_000/result.json: {ANOTHER_RUN}",
    ),
    Case(
        "sensitivity: a record of another run", _sensitivity_foreign_record, f"arch_000.json: {ANOTHER_RUN}"
    ),
    Case("grid: an output of another run", _grid_with_foreign_output, f"{ANOTHER_RUN} (its "),
    # 2. labels, defended files and victim specs of the wrong type
    Case("poison inspect: float labels", _inspect("float"), f"{NOT_INT64} float64"),
    Case("poison inspect: NaN labels", _inspect("nan"), f"{NOT_INT64} float64"),
    Case("poison inspect: int8 labels", _inspect("int8"), f"{NOT_INT64} int8"),
    Case("poison inspect: bool labels", _inspect("bool"), f"{NOT_INT64} bool"),
    Case("search: a poison with float labels", _search_float_poison, NOT_INT64),
    Case(
        "poison inspect: a manifest field of the wrong type",
        _manifest_kind_list,
        "kind must be str, got list",
    ),
    Case("search: defended data with float labels", _defended_with_float_labels, NOT_INT64),
    Case(
        "poison: a victim spec with a float width",
        lambda f, s: _victim_with(f, s, channels=4.0),
        "spec is invalid (channels must be int, got float",
    ),
    Case(
        "poison: a victim spec with a boolean depth",
        lambda f, s: _victim_with(f, s, layers=True),
        "spec is invalid (layers must be int, got bool",
    ),
    Case(
        "poison: a victim record with a string class count",
        lambda f, s: _victim_with(f, s, record={"num_classes": "10"}),
        "num_classes must be int, got str",
    ),
    # 3. outputs, devices, seeds and budgets, refused before any work
    Case("search: --out is a file", _file_at("s", _random_search), "exists and is a file; give a folder"),
    Case(
        "train: --out inside a file",
        _file_at("t0", lambda f, s: _train_cmd(f / "t0" / "job", s)),
        "lies inside",
    ),
    Case("poison: --out is a folder", _folder_at_poison_npz, "exists and is a folder; give a file"),
    Case("poison: --out not writable", _unwritable, "is not writable", unless_root=True),
    Case(
        "search: --device bogus", _with(_random_search, "--device", "bogus"), "'bogus' is not a device name"
    ),
    Case("train: --device cuda:7", _with(_train, "--device", "cuda:7"), "device 'cuda:7'"),
    Case("poison: negative seed", _with(_poison_cmd, "--seed", "-1"), "seed -1 is outside 0.."),
    Case("search: negative seed", _with(_random_search, "--seed", "-1"), "seed -1 is outside 0.."),
    Case("train: negative seed", _with(_train, "--seed", "-1"), "seed -1 is outside 0.."),
    Case(
        "search: a seed that is not a number",
        _with(_random_search, "--seed", "x"),
        "seed 'x' is not an integer",
    ),
    Case(
        "poison: a budget of no sample",
        _with(_poison_cmd, "--budget", "0.0001"),
        "poisons none of the 1437 training samples; give at least 0.0007",
    ),
    Case("poison: a budget above 1", _with(_poison_cmd, "--budget", "1.5"), "outside (0, 1]"),
    Case(
        "poison: unknown attack",
        _with(_poison_cmd, "--attack", "nope"),
        "unknown attack 'nope'; choose one of: clf, gaussian, gc, nas_gc, rlf",
    ),
    Case(
        "search: unknown algorithm", _with(_random_search, "--algo", "nope"), "unknown NAS algorithm 'nope'"
    ),
    Case("random-baseline: --n 0", _with(_baseline, "--n", "0"), "0 must be at least 1"),
    Case("train: unknown option", _with(_train, "--epochs", "3"), "unrecognized arguments: --epochs 3"),
    # 4. damaged files: one line naming the file and what deleting it does
    Case("train: truncated result.json", _truncated_result, f"result.json: {DAMAGED}"),
    Case("train: truncated checkpoint.pt", _truncated_checkpoint, f"checkpoint.pt: {DAMAGED}"),
    Case(
        "search: truncated pdarts_checkpoint.pt",
        lambda f, s: _claimed_pdarts(f, s, "pdarts_checkpoint.pt", b"PK\x03\x04trunc"),
        f"pdarts_checkpoint.pt: {DAMAGED}",
    ),
    Case(
        "search: truncated pdarts_result.json",
        lambda f, s: _claimed_pdarts(f, s, "pdarts_result.json", b'{"genotype": {"nor'),
        f"pdarts_result.json: {DAMAGED}",
    ),
    Case(
        "search: truncated architecture.json",
        _truncated_architecture(_random_search),
        f"architecture.json: {DAMAGED}",
    ),
    Case(
        "train: --arch a truncated architecture.json",
        _truncated_architecture(_train_on_architecture),
        f"architecture.json: {DAMAGED}",
    ),
    Case("poison: a truncated victim", _truncated_victim, "v.pt is not a readable victim file"),
    # 5. genotypes with 'none', named by their file
    Case(
        "train: a genotype with 'none'",
        _genotype_file_with_none,
        "g.json: genotype normal cell uses op 'none' on edge 2, not an edge operation",
    ),
    Case(
        "train: an architecture.json record with 'none'",
        _record_with_none,
        "architecture.json: genotype normal cell uses op 'none'",
    ),
]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time, and every folder; lock files
    aside (an empty hidden ``.NAME.lock`` is how a job waits for another, not a result)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") and path.name.endswith(".lock"):
            continue
        stat = path.stat()
        found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_before_any_work(
    case: Case, shared: Shared, tmp_path, monkeypatch, capsys
) -> None:
    if case.unless_root and os.geteuid() == 0:
        pytest.skip("root may write to any folder")
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path, shared)
    capsys.readouterr()
    before = _files(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0
    assert err.startswith("nasaudit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert case.message in err, err
    assert _files(tmp_path) == before, "the refused command wrote or changed files"


def test_the_table_covers_every_item_of_the_issue() -> None:
    """One case per job kind that reuses results, and at least one per other kind of bad input."""
    names = " ".join(c.name for c in CASES)
    for kind in (
        "search:",
        "train:",
        "poison:",
        "defend:",
        "victim:",
        "random-baseline:",
        "sensitivity:",
        "grid:",
    ):
        assert f"{kind} another" in names or f"{kind} a record" in names or f"{kind} an output" in names, kind
    for needle in ("labels", "--out", "--device", "seed", "budget", "truncated", "'none'"):
        assert needle in names, needle
