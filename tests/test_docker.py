"""The containers without Docker: the Dockerfile's stages and pins, docs/docker.md's version table, the
pins docker/requirements.py derives, and the exact command lines the docker-* make targets run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGOS = ("pdarts", "tenas", "robot", "nsganetv2")  # mk/docker.mk's DOCKER_ALGOS, in its order
# torchvision release paired with each torch release (pytorch.org, "previous versions").
TORCHVISION_FOR = {
    "2.0.0": "0.15.1",
    "2.0.1": "0.15.2",
    "2.1.2": "0.16.2",
    "2.2.2": "0.17.2",
    "2.3.1": "0.18.1",
}
# The newest Python each torch line publishes wheels for.
NEWEST_PYTHON_FOR = {"2.0": (3, 11), "2.1": (3, 11), "2.2": (3, 12), "2.3": (3, 12)}
OLDEST_SUPPORTED_TORCH = "2.0.0"
# What the paper's authors ran (their forks' requirement files): the images pin these where they are at
# least the oldest supported torch, else that one.
AS_RUN_TORCH = {"pdarts": "2.0.0", "tenas": "1.8.0", "robot": "2.0.1", "nsganetv2": "1.8.0"}


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self) -> dict[str, str]:
        return dict(arg.split("=", 1) for keyword, arg in self.instructions if keyword == "ARG")

    def runs(self) -> list[str]:
        return [value for keyword, value in self.instructions if keyword == "RUN"]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its instructions; continuation lines joined, comments dropped; an
    ``ARG`` before the first ``FROM`` is substituted, with its default, into the ``FROM`` lines."""
    stages: dict[str, Stage] = {}
    global_args: dict[str, str] = {}
    logical = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    current = None
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, value = line.strip().partition(" ")
        keyword, value = keyword.upper(), " ".join(value.split())
        if keyword == "ARG" and current is None:
            name, _, default = value.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            value = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], value)
            match = re.fullmatch(r"(\S+) AS (\S+)", value, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {value}"
            current = stages[match[2]] = Stage(match[2], match[1])
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.instructions.append((keyword, value))
    return stages


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last `keyword` that applies to stage `name`, looking through the stages it is built on."""
    while name in stages:
        values = [value for kw, value in stages[name].instructions if kw == keyword]
        if values:
            return values[-1]
        name = stages[name].parent
    return None


def docs_versions() -> dict[str, dict[str, str]]:
    """docs/docker.md's "Versions" table: algorithm -> official torch, image torch, reason."""
    text = (ROOT / "docs" / "docker.md").read_text()
    section = text.split("\n## Versions\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header[:4] == ["algorithm", "official torch", "image torch", "reason"]
    table = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = dict(zip(header[1:], cells[1:], strict=False))
    return table


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def make_n(*args: str) -> list[list[str]]:
    """The commands `make -n` would run, each split into words as the shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = re.sub(r"\\\n\s*", " ", done.stdout).splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def docker_commands(commands: list[list[str]], verb: str) -> list[list[str]]:
    return [command for command in commands if command[:2] == ["docker", verb]]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_one_target_per_algorithm_on_the_shared_base(stages) -> None:
    from nasaudit.nas import NAS

    assert set(ALGOS) == {NAS.get(name).image for name in NAS} - {""}  # the registered images
    assert set(ALGOS) <= set(stages)
    assert {stages[algo].parent for algo in ALGOS} == {"base"}
    mk = (ROOT / "mk" / "docker.mk").read_text()
    assert re.search(r"^DOCKER_ALGOS := (.*)$", mk, flags=re.MULTILINE)[1].split() == list(ALGOS)


@pytest.mark.parametrize("algo", ALGOS)
def test_target_pins_torch_torchvision_and_cuda_variant(stages, algo) -> None:
    args = stages[algo].args()
    torch, torchvision, cuda = args["TORCH_VERSION"], args["TORCHVISION_VERSION"], args["CUDA_VARIANT"]
    assert version_tuple(torch) >= version_tuple(OLDEST_SUPPORTED_TORCH)
    assert TORCHVISION_FOR[torch] == torchvision
    assert re.fullmatch(r"cu\d{3}", cuda)
    # The install uses exactly these arguments: torch from the CUDA index, everything else pinned.
    (run,) = stages[algo].runs()
    assert 'python /opt/nasaudit/docker/requirements.py "${TORCH_VERSION}"' in run
    assert '--index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}"' in run
    assert '"torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in run
    assert run.endswith("pip check")
    # The image's Python must be one that torch publishes wheels for.
    python = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+(@sha256:[0-9a-f]{64})?", stages["python"].parent)
    newest = NEWEST_PYTHON_FOR[".".join(torch.split(".")[:2])]
    assert python and (int(python[1]), int(python[2])) <= newest


@pytest.mark.parametrize("algo", ALGOS)
def test_image_runs_the_cli_unprivileged_with_data_and_results_volumes(stages, algo) -> None:
    user = effective(stages, algo, "USER")
    assert user is not None and user.split(":")[0] not in {"0", "root"}
    assert json.loads(effective(stages, algo, "ENTRYPOINT")) == ["nasaudit"]
    assert effective(stages, algo, "WORKDIR") == "/workspace"
    assert set(json.loads(effective(stages, algo, "VOLUME"))) == {"/workspace/data", "/workspace/results"}
    assert "NASAUDIT_DATA=/workspace/data" in effective(stages, algo, "ENV")
    # USER comes after the install, so pip ran as root and the image's files are not the user's.
    keywords = [keyword for keyword, _ in stages[algo].instructions]
    assert keywords.index("USER") > keywords.index("RUN")


def test_build_context_admits_everything_the_dockerfile_copies(stages) -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    for stage in stages.values():
        for keyword, value in stage.instructions:
            if keyword == "COPY" and not value.startswith("--from"):
                for source in value.split()[:-1]:
                    assert source.rstrip("/") in allowed, source


@pytest.mark.parametrize("algo", ALGOS)
def test_docs_version_table_agrees_with_the_dockerfile(stages, algo) -> None:
    row = docs_versions()[algo]
    args = stages[algo].args()
    image_torch = args["TORCH_VERSION"]
    cell = re.fullmatch(r"(\S+) \+ torchvision (\S+), (cu\d+)", row["image torch"])
    assert cell, f"image torch cell {row['image torch']!r} is not 'TORCH + torchvision TV, CUDA'"
    assert cell.groups() == (image_torch, args["TORCHVISION_VERSION"], args["CUDA_VARIANT"])
    official = re.search(r"\d+(\.\d+)+", row["official torch"])[0]
    assert official == AS_RUN_TORCH[algo]
    expected = (
        official
        if version_tuple(official) >= version_tuple(OLDEST_SUPPORTED_TORCH)
        else OLDEST_SUPPORTED_TORCH
    )
    assert image_torch == expected
    assert row["reason"]


def load_requirements_script():
    spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("torch_version", ["2.0.0", "2.0.1"])
def test_image_pins_are_requirements_txt_adapted_to_torch_2_0(torch_version) -> None:
    done = subprocess.run(
        [sys.executable, "docker/requirements.py", torch_version], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    image = dict(line.split("==") for line in done.stdout.split())
    native = dict(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().split("\n")
        if line and not line.startswith("#")
    )
    assert "torch" not in image and "torchvision" not in image
    # torch 2.0.1 was built against NumPy 1.x; pandas 3 needs NumPy 2; newer diffusers need torch ≥ 2.1.
    assert image["numpy"] == "1.26.4" and image["pandas"] == "2.3.3" and image["diffusers"] == "0.31.0"
    native = {name: version for name, version in native.items() if name not in {"torch", "torchvision"}}
    assert image.keys() == native.keys()
    assert {name for name in image if image[name] != native[name]} == {"numpy", "pandas", "diffusers"}


def test_requirements_script_rejects_bad_input(tmp_path) -> None:
    module = load_requirements_script()
    (tmp_path / "docker").mkdir()
    (tmp_path / "requirements.txt").write_text("torch==2.14.1\nnumpy==2.4.6\n")
    assert module.requirements_for("2.14.1", tmp_path) == ["numpy==2.4.6"]
    (tmp_path / "docker" / "torch-2.0.txt").write_text("Numpy==1.26.4\n")  # every 2.0.x release
    assert module.requirements_for("2.0.1", tmp_path) == module.requirements_for("2.0.0", tmp_path)
    assert module.requirements_for("2.0.1", tmp_path) == ["Numpy==1.26.4"]
    (tmp_path / "docker" / "torch-2.0.txt").write_text("scipy==1.10.0\n")
    with pytest.raises(SystemExit, match=r"replaces pins requirements\.txt does not have: scipy"):
        module.requirements_for("2.0.1", tmp_path)
    (tmp_path / "docker" / "torch-2.0.txt").write_text("numpy>=1.26\n")
    with pytest.raises(SystemExit, match="not an exact pin"):
        module.requirements_for("2.0.1", tmp_path)
    done = subprocess.run(
        [sys.executable, "docker/requirements.py", "latest"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "usage:" in done.stderr


@pytest.mark.parametrize("algo", ALGOS)
def test_make_docker_build_algo(algo) -> None:
    (build,) = docker_commands(make_n(f"docker-build-{algo}"), "build")
    assert build == ["docker", "build", "--target", algo, "--tag", f"nasaudit:{algo}", "."]
    (build,) = docker_commands(make_n(f"docker-build-{algo}", "CUDA_VARIANT=cu117"), "build")
    assert build[-3:] == ["--build-arg", "CUDA_VARIANT=cu117", "."]
    pinned = "python:3.11-slim-bookworm@sha256:" + "0" * 64  # the base image pinned by digest
    (build,) = docker_commands(make_n(f"docker-build-{algo}", f"PYTHON_IMAGE={pinned}"), "build")
    assert build[-3:] == ["--build-arg", f"PYTHON_IMAGE={pinned}", "."]


def test_make_docker_build_builds_every_target() -> None:
    builds = docker_commands(make_n("docker-build"), "build")
    assert [build[build.index("--target") + 1] for build in builds] == list(ALGOS)


def run_prefix(image: str) -> list[str]:
    return [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host", "--user", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{ROOT}/data:/workspace/data", "-v", f"{ROOT}/results:/workspace/results", image,
    ]  # fmt: skip


def test_make_docker_run() -> None:
    (run,) = docker_commands(make_n("docker-run", "ALGO=robot", "CMD=data info digits"), "run")
    assert run == [*run_prefix("nasaudit:robot"), "data", "info", "digits"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["docker-run", "ALGO=darts"], "ALGO must be one of: pdarts tenas robot nsganetv2"),
        (["docker-run"], "ALGO must be one of"),
        (["docker-grid"], "EXPERIMENT is not set"),
    ],
)
def test_make_docker_targets_reject_missing_or_unknown_values(args, message) -> None:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr


def test_make_docker_grid_runs_each_algorithm_in_its_own_image() -> None:
    commands = make_n("docker-grid", "EXPERIMENT=table1", "PROFILE=paper", "GRID_ARGS=--jobs 2")
    assert len(docker_commands(commands, "build")) == len(ALGOS)
    runs = docker_commands(commands, "run")
    extra = ["--jobs", "2"]
    assert runs == [
        [
            *run_prefix(f"nasaudit:{algo}"),
            "grid",
            "run",
            "table1",
            "--profile",
            "paper",
            "--algo",
            algo,
            *extra,
        ]
        for algo in ALGOS
    ]


@pytest.mark.parametrize("table", ["table1", "table3", "table4", "table5", "table6"])
def test_make_table_docker_runs_the_grid_in_the_images_and_the_table_natively(table) -> None:
    commands = make_n(table, "DOCKER=1", "PROFILE=paper")
    grid = [table, "--profile", "paper"]
    assert docker_commands(commands, "run") == [
        [*run_prefix(f"nasaudit:{algo}"), "grid", "run", *grid, "--algo", algo] for algo in ALGOS
    ]
    native = [c for c in commands if c[:1] == [".venv/bin/nasaudit"]]
    assert native[0] == [
        ".venv/bin/nasaudit",
        "table",
        table,
        "--profile",
        "paper",
        "--out",
        "results/paper/tables",
    ]
    assert not any(c[1:3] == ["grid", "run"] for c in native)  # the grid ran in the containers


@pytest.mark.parametrize("table", ["table1", "table3", "table4", "table5", "table6"])
def test_make_table_runs_grid_table_and_comparison_natively(table) -> None:
    commands = [c for c in make_n(table, "PROFILE=smoke", "RUNNER=slurm") if c[:1] == [".venv/bin/nasaudit"]]
    assert commands[0] == [
        ".venv/bin/nasaudit",
        "grid",
        "run",
        table,
        "--profile",
        "smoke",
        "--runner",
        "slurm",
    ]
    assert commands[1] == [
        ".venv/bin/nasaudit",
        "table",
        table,
        "--profile",
        "smoke",
        "--out",
        "results/smoke/tables",
    ]
    assert not docker_commands(commands, "run")


def test_make_lint_runs_hadolint() -> None:
    commands = make_n("lint")
    assert [".venv/bin/hadolint", "--no-color", "Dockerfile"] in commands


def test_make_test_compat_covers_each_distinct_pinned_torch(stages) -> None:
    pinned = {
        stages[algo].args()["TORCH_VERSION"]: stages[algo].args()["TORCHVISION_VERSION"] for algo in ALGOS
    }
    assert len(pinned) == 2  # the images differ where the authors' environments did
    commands = make_n("--always-make", "test-compat")
    for torch_version, torchvision in pinned.items():
        venv = f".venv-compat-{torch_version}"
        (install,) = [command for command in commands if f"torch=={torch_version}" in command]
        assert f"torchvision=={torchvision}" in install and install[0] == f"{venv}/bin/python"
        assert [f"{venv}/bin/python", "-m", "pytest", "-q", "-m", "not slow"] in commands
        assert ["python3", "docker/requirements.py", torch_version] == commands[
            commands.index(["python3", "-m", "venv", venv]) + 1
        ][:3]


def test_make_set_reaches_every_nasaudit_command_that_reads_the_profile() -> None:
    """SET='a=1 b=["x"]' becomes one --set per word, quoted for the shell, natively and in the images."""
    from nasaudit.cli import build_parser

    values = ["train.epochs=1", 'table1.datasets=["cifar10"]']
    commands = [
        c
        for target in (["table1"], ["table1", "DOCKER=1"], ["table2"], ["figures"], ["report"])
        for c in make_n(*target, "PROFILE=smoke", f"SET={' '.join(values)}")
        if "--profile" in c
    ]
    natives = [c for c in commands if c[0] == ".venv/bin/nasaudit"]
    assert len(natives) == 6 and len(docker_commands(commands, "run")) == len(ALGOS)
    for command in commands:
        start = command.index("--profile")
        assert command[start : start + 6] == ["--profile", "smoke", "--set", values[0], "--set", values[1]]
    for command in natives:
        assert build_parser().parse_args(command[1:]).set == values
