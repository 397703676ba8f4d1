"""`nasaudit plan`: every registered algorithm, attack, defense and space has a cost model, the models
count the work the algorithms do as run, and a grid of every stage is estimated without a gap."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from nasaudit.attacks import ATTACKS
from nasaudit.attacks.nas_gc import NAS_TARGETS
from nasaudit.attacks.victim import JOB_VICTIMS
from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.costs import Timer
from nasaudit.defenses import DEFENSES
from nasaudit.grid.plan import REFERENCE_ARCHITECTURES, victim_net
from nasaudit.nas import NAS

from conftest import FORWARD, KAPPA, ImageCounter, profile_file

PAPER = load_profile("paper")


def test_every_registered_algorithm_attack_defense_and_space_has_a_cost_model() -> None:
    timer = ImageCounter()
    assert all(NAS.get(name).cost(PAPER, 1_000, timer) is not None for name in NAS)
    assert all(ATTACKS.get(name).cost is not None for name in ATTACKS)
    assert all(DEFENSES.get(name).cost is not None for name in DEFENSES)
    spaces = {NAS.get(name).space for name in NAS} | set(JOB_VICTIMS)
    assert spaces <= set(REFERENCE_ARCHITECTURES)
    assert all(victim_net(PAPER, name).kind in NAS_TARGETS for name in NAS)  # what nas_gc targets


def test_tenas_scores_332_candidates_with_and_without_each_removal() -> None:
    """TE-NAS as run: 196 + 112 + 24 candidates × 3 repeats × 2 nets × (one κ_NTK + 3000 crops)."""
    cfg = PAPER.tenas
    per_net = KAPPA + cfg.lr_batches * cfg.lr_batch_size * FORWARD
    assert NAS.get("tenas").cost(PAPER, 50_000, ImageCounter()) == (332 * 3 * 2 * per_net, 0.0)


def test_pdarts_trains_weights_every_epoch_and_alpha_after_the_warm_up() -> None:
    """P-DARTS as run: 3 stages × (25 weight epochs + 15 α epochs) over the 25k-image halves."""
    assert NAS.get("pdarts").cost(PAPER, 50_000, ImageCounter()) == (3 * 40 * 25_000, 0.0)


def shrinking(n: int) -> float:
    """Progressive shrinking on n images: each phase's subnet steps, and the teacher's forward from the
    second phase on (kd_ratio > 0)."""
    phases = enumerate(PAPER.nsganetv2.supernet.phases)
    return sum(p.epochs * n * (p.subnets_per_step + (FORWARD if i else 0.0)) for i, p in phases)


def test_nsganetv2_shares_one_clean_supernet_per_dataset_unless_a_weights_file_is_given() -> None:
    timer, cfg = ImageCounter(), PAPER.nsganetv2
    n = 50_000 - cfg.val_size
    given = replace(PAPER, nsganetv2=replace(cfg, supernet=replace(cfg.supernet, weights="ofa.pt")))
    evaluation = 5 * n + (cfg.bn_calibration + cfg.val_size) * FORWARD
    assert NAS.get("nsganetv2").cost(given, 50_000, timer) == ((100 + 30 * 8) * evaluation, 0.0)
    per_search, shared = NAS.get("nsganetv2").cost(PAPER, 50_000, timer)
    # the supernet is trained once per dataset, on the whole clean training set
    assert per_search == 340 * evaluation and abs(shared - shrinking(50_000)) < 1e-9 * shared


def test_the_mbv3_baseline_shares_one_supernet_per_dataset_when_it_inherits_weights() -> None:
    timer = ImageCounter()
    per_search, shared = NAS.get("random_mbv3").cost(PAPER, 50_000, timer)
    assert per_search == 0.0 and abs(shared - shrinking(50_000)) < 1e-9 * shared
    scratch = replace(PAPER, mbv3=replace(PAPER.mbv3, init="scratch"))
    assert NAS.get("random_mbv3").cost(scratch, 50_000, timer) == (0.0, 0.0)


def test_gc_costs_steps_times_poisons_and_shares_gradpc_and_the_clean_gradient() -> None:
    timer, cfg, nas_gc = ImageCounter(), PAPER.gc, ATTACKS.get("nas_gc").cost
    tenas, pdarts = victim_net(PAPER, "tenas"), victim_net(PAPER, "pdarts")
    # the per-batch objective: one double backward per batch, 2 training steps per poison and GC step;
    # GradPC's epoch and g_clean's pass are shared by the budgets
    assert nas_gc(PAPER, 0.01, 50_000, tenas, timer) == (cfg.steps * 500 * 2, 2 * 50_000)
    # the joint objective over several batches takes the two-pass gradient: 3 steps per poison
    joint = replace(PAPER, gc=replace(cfg, objective="joint"))
    assert nas_gc(joint, 0.01, 50_000, tenas, timer)[0] == cfg.steps * 500 * 3
    assert nas_gc(joint, 0.001, 50_000, tenas, timer)[0] == cfg.steps * 50 * 2
    # P-DARTS's α are moved by GradPC too; radius 0 crafts at the victim's own parameters
    assert nas_gc(PAPER, 0.1, 1_000, pdarts, timer) == (cfg.steps * 100 * 2, 2 * 1_000)
    no_gradpc = replace(PAPER, gc=replace(cfg, gradpc_radius=0.0))
    assert ATTACKS.get("gc").cost(no_gradpc, 0.1, 1_000, pdarts, timer)[1] == 1_000


def test_the_victim_gc_differentiates_is_the_algorithms_own_or_its_spaces_retrained_network() -> None:
    assert victim_net(PAPER, "pdarts").kind == "darts_supernet"
    assert victim_net(PAPER, "tenas").kind == JOB_VICTIMS.get("darts").kind
    assert victim_net(PAPER, "nsganetv2").kind == JOB_VICTIMS.get("mbv3").kind


def test_timer_measures_a_network_once_on_one_cpu_thread() -> None:
    builds = []

    def build() -> nn.Module:
        builds.append(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    timer, threads = Timer(torch.device("cpu")), torch.get_num_threads()
    first = timer.per_image("linear", build, 16)
    measured = len(builds)
    assert first > 0 and timer.per_image("linear", build, 16) == first and len(builds) == measured
    assert timer.forward_per_image("linear", build, 16) > 0 and len(builds) > measured
    measured = len(builds)
    first = timer.kappa("linear", build, 4)
    assert first > 0 and timer.kappa("linear", build, 4) == first and len(builds) == measured + 1
    assert torch.get_num_threads() == threads


def tiny_profile(folder: Path) -> Path:
    """smoke.toml with every registered algorithm and attack in Table 1 and every defense in Table 4."""
    values = {
        ("darts_net", "channels"): "4",
        ("darts_net", "layers"): "3",
        ("random_baseline", "n"): "1",
        ("mbv3", "resolutions"): "[32]",
        ("table1", "algorithms"): "[]",
        ("table1", "attacks"): "[]",
        ("table1", "exclude"): "[]",
        ("table1", "budgets"): "[0.5]",
        ("table1", "trials"): "1",
        ("table4", "conditions"): json.dumps([f"{name}:gaussian" for name in DEFENSES]),
        ("table4", "trials"): "1",
    }
    return profile_file(folder / "tiny.toml", *(f"{s}.{k}={v}" for (s, k), v in values.items()))


def test_plan_estimates_every_stage_of_a_grid_of_everything(tmp_path, capsys) -> None:
    path = tiny_profile(tmp_path)
    for experiment, stages in (("table1", ("poison", "search", "retrain")), ("table4", ("defend",))):
        assert main(["plan", experiment, "--profile", str(path), "--results", str(tmp_path / "r")]) == 0
        out = capsys.readouterr().out
        assert "ESTIMATE: about" in out and "not estimated" not in out
        for stage in stages:
            assert re.search(rf"^{stage} +\d+ +0 +\d", out, re.M), (experiment, stage, out)
