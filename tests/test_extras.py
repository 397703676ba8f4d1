"""Optional dependencies are pip extras; without one, only the command needing it stops, in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import tomllib

import nasaudit
from nasaudit.extras import all_extras
from nasaudit.nas import NAS

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = str(Path(nasaudit.__file__).resolve().parents[1])


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


EXTRAS = all_extras()


def test_the_extras_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {k: tuple(_name(r) for r in v) for k, v in extras.items() if k not in ("all", "dev")} == EXTRAS
    (everything,) = extras["all"]
    assert (m := re.fullmatch(r"nasaudit\[([\w,]+)\]", everything)) and set(m[1].split(",")) == set(EXTRAS)
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {dist for dists in EXTRAS.values() for dist in dists}  # optional, not required
    pinned = {_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert {dist for dists in EXTRAS.values() for dist in dists} <= pinned  # `make venv` has them all


def test_an_algorithm_that_needs_more_than_the_core_has_its_own_extra() -> None:
    assert EXTRAS["nsganetv2"] == NAS.get("nsganetv2").extras == ("pymoo",)
    assert all(EXTRAS[name] == NAS.get(name).extras for name in NAS if NAS.get(name).extras)


# Runs in a fresh interpreter where the extras' libraries do not import, as after `pip install -e .`.
WITHOUT_EXTRAS = """
import importlib.abc, json, sys
BLOCKED = {blocked}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Block())
import contextlib, io
from nasaudit.cli import main
results = {{}}
for label, argv in {commands}.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    results[label] = [status, err.getvalue()]
print(json.dumps(results))
"""


def test_without_the_extras_only_their_commands_stop_in_one_line(tmp_path) -> None:
    out = tmp_path / "out"
    commands = {
        "help": ["search", "--help"],  # every NAS algorithm and defense registers without its extra
        "defend help": ["defend", "--help"],
        "nsganetv2": ["search", "--algo", "nsganetv2", "--profile", "smoke", "--device", "cpu",
                      "--out", str(out / "search")],
        "denoise": ["defend", "denoise", "--profile", "smoke", "--device", "cpu", "--out", str(out / "d"),
                    "--cache", str(out / "cache")],
        "slurm": ["grid", "run", "table1", "--profile", "smoke", "--runner", "slurm", "--cluster", "local",
                  "--results", str(out / "r")],
        "tensorboard": ["train", "--arch", "pdarts", "--profile", "smoke", "--device", "cpu",
                        "--tensorboard", str(out / "tb"), "--out", str(out / "t")],
    }  # fmt: skip
    blocked = sorted(dist for dists in EXTRAS.values() for dist in dists)
    script = WITHOUT_EXTRAS.format(blocked=blocked, commands=commands)
    env = {"PYTHONPATH": ARTIFACT, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["help"] == [0, ""] and results["defend help"] == [0, ""]
    pairs = (("nsganetv2", "nsganetv2"), ("denoise", "defenses"), ("slurm", "slurm"), ("tensorboard",) * 2)
    for label, extra in pairs:
        status, err = results[label]
        assert status == 2 and err.count("\n") == 1, (label, err)
        assert f"install the '{extra}' extra: pip install -e \".[{extra}]\"" in err, (label, err)
    # the search stopped after claiming its folder, before computing anything
    assert {p.name for p in (out / "search").iterdir()} <= {"job.json", ".architecture.json.lock"}
    assert not (out / "d.npz").exists()
