"""The preflight: which tasks it plans, that synthetic data stays out of results, and how it reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import EXPERIMENTS, STAGE_ORDER, JobKey, Layout, build_grid, load_experiment
from nasaudit.preflight.bounds import bounded_profile
from nasaudit.preflight.kinds import kind_of, plan_items
from nasaudit.preflight.run import run_preflight
from nasaudit.preflight.synthetic import MARKER, mark, synthetic_dataset

from conftest import profile_file

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def _grid_kinds(profile: Any, layout: Layout) -> dict[str, list]:
    """Every task of every experiment's grid of the profile as given, by kind."""
    kinds: dict[str, list] = {}
    for name in EXPERIMENTS.names():
        for task in build_grid(load_experiment(name, profile), layout).deps:
            kinds.setdefault(kind_of(task, profile), []).append(task)
    return kinds


@pytest.mark.parametrize("name", ["paper", "smoke"])
def test_the_plan_covers_every_kind_of_task_of_every_grid(name: str, tmp_path: Path) -> None:
    profile = load_profile(name)
    layout = Layout.of(tmp_path, profile)
    grid_kinds = _grid_kinds(profile, layout)
    bounded, _ = bounded_profile(profile, CUDA)
    items = plan_items(bounded, layout).items
    planned = {item.kind for item in items if item.task is not None}
    assert planned == set(grid_kinds)
    assert {kind.split("/")[0] for kind in planned} == set(STAGE_ORDER)
    representatives = [item for item in items if item.role == "kind"]
    assert len(representatives) == len(grid_kinds) + 1  # + Table 2's scoring
    seen: set[str] = set()
    for item in items:  # every item after what it reads
        assert set(item.deps) <= seen, item.id
        seen.add(item.id)
    for item in representatives:
        if item.task is not None and item.task.stage in ("poison", "defend"):  # the most poisoned samples
            assert item.task.budget == max(t.budget for t in grid_kinds[item.kind])
    table2 = items[-1]
    assert table2.task is None and set(table2.poisons) == set(profile.sensitivity.attacks)
    assert all(p.budget == profile.sensitivity.budget for p in table2.poisons.values())


def test_a_cpu_leaves_only_the_costly_searches_on_other_data_to_a_gpu(tmp_path: Path) -> None:
    profile = load_profile("paper")
    layout = Layout.of(tmp_path, profile)
    bounded, _ = bounded_profile(profile, CPU)
    plan = plan_items(bounded, layout, cpu=True)
    planned = {item.kind for item in plan.items if item.task is not None}
    assert planned | set(plan.left_out) == set(_grid_kinds(profile, layout))
    assert not planned & set(plan.left_out)
    assert plan.left_out
    for kind in plan.left_out:  # a P-DARTS search on another dataset or defended data
        stage, what, dataset = kind.split("/")
        assert stage == "search" and what.split("+")[0] == "pdarts"
        assert dataset != "cifar10" or what.split("+")[1] in ("denoise", "relabel", "sanitize")
    assert "search/pdarts/cifar100" in planned  # the CIFAR-100 supernet victim needs it
    assert {"search/robot/svhn", "search/robot+denoise/cifar10", "search/tenas/cifar10"} <= planned
    assert {"search/tenas/svhn", "search/tenas+denoise/cifar10", "search/tenas/cifar100"} <= planned


def test_paper_kinds_include_each_victim_kind_and_the_attacks_on_it(tmp_path: Path) -> None:
    profile = load_profile("paper")
    kinds = set(_grid_kinds(profile, Layout.of(tmp_path, profile)))
    for victim in ("darts_supernet", "darts_network", "mbv3_network"):
        assert f"victim/{victim}/cifar10" in kinds and f"poison/nas_gc@{victim}/cifar10" in kinds
    assert {"search/pdarts/cifar100", "search/tenas/svhn", "search/pdarts+no_augment/cifar10"} <= kinds
    assert {"defend/denoise/cifar10", "search/robot+relabel/cifar10", "search/random_mbv3/cifar10"} <= kinds


def test_the_bounded_profile_keeps_every_size_and_bounds_the_counts() -> None:
    profile = load_profile("paper")
    bounded, notes = bounded_profile(profile, CUDA)
    sizes = {"batch_size", "channels", "layers", "resolutions", "width_mult", "pool_stack", "proxy_batch",
             "image_size", "val_size", "budget", "budgets", "lr_batch_size", "epsilon_255", "datasets",
             "gradpc_batch_size", "train_subset", "keep_ops", "ops", "bn_calibration"}  # fmt: skip

    def walk(a: Any, b: Any, path: str) -> None:
        if dataclasses.is_dataclass(a):
            for f in dataclasses.fields(a):
                walk(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
        elif path.rsplit(".", 1)[-1] in sizes:
            assert a == b, path

    walk(profile, bounded, "profile")
    assert notes == {}  # a GPU keeps RoBoT's stack
    trains = (
        bounded.train,
        bounded.surrogate,
        bounded.mbv3_train,
        bounded.robot.query,
        bounded.nsganetv2.finetune,
    )
    assert all(cfg.epochs == 1 for cfg in trains)
    assert bounded.pdarts.epochs == bounded.pdarts.warmup_epochs + 1  # α steps run
    assert bounded.gc.steps == 1 and bounded.tenas.repeats == 1 and bounded.table1.trials == 1
    assert bounded.robot.pool_size == profile.robot.pool_stack
    assert all(phase.epochs == 1 for phase in bounded.nsganetv2.supernet.phases)
    from nasaudit.nas.pdarts import skip_dropout_rates

    for name in ("cifar10", "cifar100"):  # each stand-in gets its dataset's rates
        ours = skip_dropout_rates(bounded.pdarts, f"synthetic-{name}")
        assert ours == skip_dropout_rates(profile.pdarts, name)
    with_override = dataclasses.replace(profile.pdarts, skip_dropout_by_dataset={"cifar100": [0.1, 0.2, 0.3]})
    rates = bounded_profile(dataclasses.replace(profile, pdarts=with_override), CUDA)[
        0
    ].pdarts.skip_dropout_by_dataset
    assert rates["synthetic-cifar100"] == [0.1, 0.2, 0.3]


def test_on_a_cpu_robots_stack_is_lowered_to_what_fits_and_says_so(monkeypatch) -> None:
    from nasaudit.preflight import bounds

    for gib, stack in ((64, bounds.CPU_STACK), (2, 1)):
        monkeypatch.setattr(bounds, "_available_bytes", lambda gib=gib: gib * bounds.GIB)
        bounded, notes = bounded_profile(load_profile("paper"), CPU)
        assert bounded.robot.pool_stack == stack and bounded.robot.pool_size == stack
        assert f"pool_stack 25 lowered to {stack}" in notes["robot"][0]


def test_synthetic_stand_ins_have_the_published_shapes_and_say_what_they_are() -> None:
    cifar100 = synthetic_dataset("cifar100")
    assert cifar100.name == "synthetic-cifar100" and cifar100.num_classes == 100
    assert cifar100.train.images.shape == (50_000, 32, 32, 3) and len(cifar100.test) == 10_000
    assert cifar100.train.images.dtype == np.uint8 and np.bincount(cifar100.train.labels).min() == 500
    svhn = synthetic_dataset("svhn", train_subset=64)  # a subset profile: only what the stages read
    assert len(svhn.train) == 64 and len(svhn.test) == 26_032
    mnist = synthetic_dataset("mnist", train_subset=16)
    assert np.array_equal(mnist.train.images[..., 0], mnist.train.images[..., 2])  # grey, as loaded
    again = synthetic_dataset.__wrapped__("svhn", 0, 64)
    assert again.train.sha256 == svhn.train.sha256  # from the seed alone


def test_a_folder_with_other_files_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "result.json").write_text("{}")
    with pytest.raises(NasauditError, match="not a preflight's"):
        run_preflight(load_profile("smoke"), CPU, tmp_path, echo=False)
    assert not (tmp_path / MARKER).exists() and (tmp_path / "smoke" / "result.json").is_file()


def test_table_compare_and_report_refuse_a_preflight_folder(tmp_path: Path, capsys) -> None:
    mark(tmp_path)
    (tmp_path / "table1.csv").write_text("table,dataset\n")
    table = [
        "table",
        "table1",
        "--profile",
        "smoke",
        "--results",
        str(tmp_path),
        "--out",
        str(tmp_path / "t"),
    ]
    assert main(table) == 2
    assert main(["compare", "table1", "--ours", str(tmp_path / "table1.csv")]) == 2
    report = ["report", "--profile", "smoke", "--results", str(tmp_path), "--out", str(tmp_path / "page")]
    assert main(report) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("nasaudit preflight" in line and MARKER in line for line in errors)
    assert not (tmp_path / "t").exists() and not (tmp_path / "page").exists()


def test_a_synthetic_result_is_refused_wherever_it_lies(tmp_path: Path) -> None:
    from nasaudit.report.experiment import collect_trials

    profile = load_profile("smoke")
    layout = Layout.of(tmp_path, profile)  # no marker: copied out of the preflight's folder
    key = JobKey("digits", "pdarts", "none", 0.0, 0)
    layout.train_dir(key).mkdir(parents=True)
    result = {"test_accuracy": 50.0, "dataset": "synthetic-digits"}
    (layout.train_dir(key) / "result.json").write_text(json.dumps(result))
    with pytest.raises(NasauditError, match="synthetic data of `nasaudit preflight`"):
        collect_trials((key,), layout, "final")


def test_a_smoke_preflight_runs_its_tasks_and_reports_them(tmp_path: Path) -> None:
    only = ("poison/rlf", "search/robot/digits")
    report = run_preflight(load_profile("smoke"), CPU, tmp_path, only=only, fresh_process=False, echo=False)
    assert report["ok"] and report["failed"] == 0 and report["synthetic"]
    assert report["unfinished"] == 0 and report["running"] == {}  # every started task was recorded
    assert json.loads((tmp_path / "smoke" / "report.json").read_text())["tasks"] == json.loads(
        json.dumps(report["tasks"])
    )
    assert (tmp_path / MARKER).is_file() and (tmp_path / "smoke" / "report.md").is_file()
    kinds = {t["kind"]: t for t in report["tasks"]}
    assert set(kinds) == {"poison/rlf/digits", "search/robot/digits"}
    for task in report["tasks"]:
        assert task["ok"] and task["error"] is None and task["wall_s"] > 0 and task["peak_rss_gib"] > 0.1
    robot = kinds["search/robot/digits"]
    assert robot["step"]["network"] == "robot" and robot["step"]["seconds"] > 0
    assert robot["projected_hours"] > 0 and report["gpu_factor"] > 0
    poison = (
        tmp_path / "smoke" / "digits" / "poisons" / "rlf" / "p0.5" / "all_trials.json"
    )  # one poison every trial shares, as run
    assert json.loads(poison.read_text())["dataset"] == "synthetic-digits"


def test_a_failing_task_is_one_line_its_dependents_do_not_run_and_the_rest_runs(tmp_path, capsys) -> None:
    profile = profile_file(tmp_path / "broken.toml", "robot.acquisition_seeds=bogus")  # checked by RoBoT
    out = tmp_path / "out"
    argv = ["preflight", "--profile", str(profile), "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--only", "search/random/", "victim/darts_network"]) == 1
    report = json.loads((out / "broken" / "report.json").read_text())
    status = {t["id"]: t for t in report["tasks"]}
    robot = status["search.digits.robot.none.p0.t0"]
    assert not robot["ok"] and "bogus" in robot["error"] and "\n" not in robot["error"]
    assert (out / "broken" / "tracebacks" / f"{robot['id']}.txt").is_file()
    retrain, victim = status["retrain.digits.robot.none.p0.t0"], status["victim.digits.robot.none.p0.t1"]
    assert retrain["error"] == "not run: it needs search.digits.robot.none.p0.t0, which failed"
    assert victim["error"] == "not run: it needs retrain.digits.robot.none.p0.t0, which failed"
    assert status["search.digits.random.none.p0.t0"]["ok"] and not report["ok"] and report["failed"] == 3
    assert "PREFLIGHT FAILED: 3 task(s)" in capsys.readouterr().out


class _OutOfMemoryBesideOthers:
    """A stand-in worker pool: every item succeeds, except that a RoBoT search run beside another item
    fails as torch's CUDA out-of-memory error does. Records how many items ran at once."""

    def __init__(self, setup: Any, size: int, fresh: bool, threads: int | None) -> None:
        self.size, self.running, self.log, self.crowded = size, [], [], set()

    def __enter__(self) -> _OutOfMemoryBesideOthers:
        return self

    def __exit__(self, *exc: object) -> None: ...

    free = property(lambda self: len(self.running) < self.size)
    busy = property(lambda self: len(self.running))

    def start(self, item: Any) -> None:
        self.running.append(item)
        if len(self.running) > 1:
            self.crowded |= {i.id for i in self.running}

    def wait(self) -> list[tuple[Any, dict[str, Any]]]:
        """The longest-running item ends (one at a time, so items overlap)."""
        item = self.running.pop(0)
        crowded = item.id in self.crowded
        self.crowded.discard(item.id)
        self.log.append((item.kind, crowded))
        if crowded and item.kind.startswith("search/robot"):
            return [(item, {"ok": False, "error": "CUDA out of memory. Tried to allocate 2.00 GiB"})]
        return [(item, {"ok": True})]

    def call(self, message: tuple[str, Any]) -> dict[str, Any]:
        return {"ok": False, "error": "no timings here"}


def test_an_item_out_of_gpu_memory_beside_others_runs_again_alone(tmp_path, monkeypatch, caplog) -> None:
    import nasaudit.preflight.run as run

    pools: list[_OutOfMemoryBesideOthers] = []
    monkeypatch.setattr(run, "Pool", lambda *a: pools.append(_OutOfMemoryBesideOthers(*a)) or pools[-1])
    only = ("poison/rlf", "poison/clf", "search/robot/digits")  # the search waits for a poison
    with caplog.at_level("INFO", logger="nasaudit.preflight.run"):
        report = run_preflight(load_profile("smoke"), CPU, tmp_path, only=only, workers=3)
    assert report["ok"] and "search/robot/digits" in {t["kind"] for t in report["tasks"]}
    robot = [crowded for kind, crowded in pools[0].log if kind == "search/robot/digits"]
    assert robot == [True, False]  # it ran beside others, ran out of memory, then ran alone
    assert "[retry] search/robot/digits" in caplog.text


class _TimedThenCutShort(_OutOfMemoryBesideOthers):
    """A stand-in pool whose timing worker answers for every item and whose run is killed (as a GPU
    check's section limit kills it) when its second item ends."""

    def call(self, message: tuple[str, Any]) -> dict[str, Any]:
        self.timed_before = len(self.log)  # items that had ended when the timings were asked for
        projection = {"projected_hours": 2.5, "step": None, "projection": "made up"}
        return {"gpu_factor": 1.0, "items": {item.id: projection for item in message[1]}}

    def wait(self) -> list[tuple[Any, dict[str, Any]]]:
        if len(self.log) == 1:
            raise KeyboardInterrupt  # killed while the second item runs
        return super().wait()


def test_a_preflight_cut_short_keeps_the_step_times_of_what_it_finished(tmp_path, monkeypatch) -> None:
    import nasaudit.preflight.run as run

    pools: list[_TimedThenCutShort] = []
    monkeypatch.setattr(run, "Pool", lambda *a: pools.append(_TimedThenCutShort(*a)) or pools[-1])
    with pytest.raises(KeyboardInterrupt):
        run_preflight(load_profile("smoke"), CPU, tmp_path, only=("poison/rlf", "poison/clf"), echo=False)
    assert pools[0].timed_before == 0  # the networks were timed before any item ran
    saved = json.loads((tmp_path / "smoke" / "report.json").read_text())
    assert saved["gpu_factor"] == 1.0 and len(saved["tasks"]) == 1 and saved["running"]
    assert saved["tasks"][0]["projected_hours"] == 2.5 and saved["tasks"][0]["projection"] == "made up"


@pytest.mark.slow
def test_the_whole_smoke_preflight_passes(tmp_path: Path) -> None:
    profile = load_profile("smoke")
    report = run_preflight(profile, CPU, tmp_path, echo=False)
    assert report["ok"], [(t["id"], t["error"]) for t in report["tasks"] if not t["ok"]]
    kinds = set(_grid_kinds(profile, Layout.of(tmp_path, profile)))
    ran = {t["kind"] for t in report["tasks"] if t["role"] == "kind"}
    assert ran | set(report["left_out"]) == kinds | {"table2/sensitivity/digits"}
    left_out = set(report["left_out"])  # only P-DARTS searches on other data than digits
    assert "search/pdarts/fashionmnist" in left_out and "search/tenas/fashionmnist" in ran
    for kind in left_out:
        search, name, data = kind.split("/")
        assert search == "search" and name.split("+")[0] == "pdarts"
        assert data != "digits" or "+" in name, kind  # another dataset, or defended data


@pytest.mark.cuda
def test_a_smoke_preflight_on_a_gpu_runs_in_one_worker_and_takes_the_gpus_peak(tmp_path: Path) -> None:
    only = ("poison/nas_gc@darts_network", "search/robot/digits")
    report = run_preflight(load_profile("smoke"), "cuda", tmp_path, only=only, echo=False)
    assert report["ok"], [(t["id"], t["error"]) for t in report["tasks"] if not t["ok"]]
    assert not report["fresh_process_per_task"] and report["batches_per_loop"] == 2
    assert report["images_per_batch"] is None and report["gpu_factor"] == 1.0
    for task in report["tasks"]:
        if task["stage"] != "victim":  # a victim file is written from the CPU
            assert task["peak_cuda_gib"] > 0 and task["peak_cuda_reserved_gib"] >= task["peak_cuda_gib"]
    gc = next(t for t in report["tasks"] if t["kind"] == "poison/nas_gc@darts_network/digits")
    assert gc["step"]["network"] == "retrain/darts" and gc["projected_hours"] > 0


def test_plan_estimates_from_a_preflights_measured_times(tmp_path: Path, capsys, monkeypatch) -> None:
    from nasaudit.grid.plan import Timer, estimate
    from nasaudit.preflight.timings import MeasuredTimer, RecordingTimer

    # a distinct made-up time per measurement instead of timing the networks (seconds of CPU)
    monkeypatch.setattr(Timer, "_once", lambda self, key, measure: 1e-3 * len(str(key)))
    profile = load_profile("smoke")
    grid = build_grid(load_experiment("table6", profile), Layout.of(tmp_path, profile))
    recording = RecordingTimer(CPU)
    here = estimate(grid, profile, None, timer=recording)
    report = {"profile": "smoke", "device": "cuda", "tasks": [{"networks": recording.calls}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    replayed = estimate(grid, profile, None, timer=MeasuredTimer(tmp_path / "report.json", profile))
    assert replayed.device == "cuda" and replayed.gpu_factor == 1.0  # the report's device: GPU-hours
    assert [s.seconds for s in replayed.stages] == [s.seconds for s in here.stages]
    assert sum(s.seconds for s in here.stages) > 0
    first = recording.calls[0]
    report["tasks"] = [{"networks": [c for c in recording.calls if c["network"] != first["network"]]}]
    (tmp_path / "report.json").write_text(json.dumps(report))
    argv = ["plan", "table6", "--profile", "smoke", "--results", str(tmp_path)]
    assert main([*argv, "--timings", str(tmp_path / "report.json")]) == 2
    assert "has no time of" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_nsganetv2s_surrogates_take_the_seeds_a_grid_job_gives_them() -> None:
    """Found by the preflight: a grid job's 31-bit seed × 1000 × 1000 (iteration, fold) was out of
    scikit-learn's random_state range, so every NSGANetV2 job of Table 5 failed at its first iteration.
    The fold's seed is now derived (nasaudit.seeds) from the iteration's, itself from the job's."""
    from nasaudit.nas.nsganetv2 import SURROGATES
    from nasaudit.seeds import derive_seed

    cfg = load_profile("smoke").nsganetv2
    rng = np.random.default_rng(0)
    X, y = rng.random((6, 8)), rng.random(6)
    iteration = derive_seed(2**31 - 1, "nsganetv2", "iteration", 999)  # the largest job seed
    for name in ("gp", "mlp", "cart"):
        SURROGATES.get(name).make(cfg, derive_seed(iteration, "nsganetv2", "fold", 9)).fit(X, y)


@pytest.mark.parametrize("name", ["paper", "smoke"])
def test_the_bounded_nsganetv2_archive_is_enough_for_a_surrogate(name: str) -> None:
    """Found by the preflight: four initial architectures left the paper's RBF (d + 2 points) nothing
    to fit on, failing the search at its first iteration."""
    from nasaudit.nas.nsganetv2 import select_surrogate
    from nasaudit.spaces.mbv3 import N_VARS

    bounded, _ = bounded_profile(load_profile(name), CPU)
    cfg = bounded.nsganetv2
    rng = np.random.default_rng(0)
    X, y = rng.random((cfg.initial, N_VARS)), rng.random(cfg.initial)
    assert select_surrogate(X, y, cfg.surrogates, cfg, seed=0)["winner"] in cfg.surrogates
    if cfg.initial > 4:  # one fewer would not do
        with pytest.raises(NasauditError, match="no surrogate"):
            select_surrogate(X[:-1], y[:-1], cfg.surrogates, cfg, seed=0)
