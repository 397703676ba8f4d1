"""Gradient canceling, GradPC and NAS-specific GC: the math on tiny models, then the attacks end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasaudit.attacks.gc as gc_module
from nasaudit.attacks import AttackContext, run_attack
from nasaudit.attacks.gc import (
    GradientProblem,
    canceling_loss,
    craft,
    gradpc,
    mean_gradient,
    mean_loss,
    to_uint8,
    weights_and_biases,
)
from nasaudit.attacks.nas_gc import NAS_TARGETS
from nasaudit.config import load_profile
from nasaudit.data.poison import load_poison, save_poison
from nasaudit.spaces.darts import EvalNetwork, SuperNet, load
from nasaudit.spaces.mbv3 import MBV3Net, channel_plan, extreme_arch
from nasaudit.victim import VICTIMS, mbv3_spec, save_victim, supernet_spec

PROFILE = load_profile("smoke")
GC = dataclasses.replace(PROFILE.gc, steps=30, batch_size=64)
CPU = torch.device("cpu")


def _tiny(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Smooth (softplus) so that finite differences are meaningful."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Softplus(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 4))  # fmt: skip
    return net.to(dtype)


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N×8×8×3 images and 4 balanced classes."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8), torch.arange(n) % 4


def _problem(model: nn.Module) -> GradientProblem:
    return GradientProblem(model, weights_and_biases(model), torch.zeros(3), torch.ones(3))


def _trained_problem() -> tuple[GradientProblem, torch.Tensor, torch.Tensor]:
    """A tiny model fitted part-way (50 Adam steps), so its clean gradient is small but not zero."""
    images, labels = _data()
    problem = _problem(_tiny())
    x = problem.pixels(images)
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        F.cross_entropy(problem.model(x), labels).backward()
        optimizer.step()
    return problem, images, labels


@pytest.mark.parametrize("batch_size", [100, 5])
def test_loss_gradient_matches_finite_differences(batch_size) -> None:
    problem = _problem(_tiny(torch.float64))
    images, labels = _data()
    _, g_clean = mean_gradient(problem, images, labels, 7)
    x, y = problem.pixels(images[:12]), labels[:12]
    g = torch.Generator().manual_seed(1)
    delta = (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 0.1
    loss, _, grad = canceling_loss(problem, g_clean, 0.3, x, y, delta, batch_size)
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-5
        up, _, _ = canceling_loss(problem, g_clean, 0.3, x, y, delta + h * v, batch_size, with_grad=False)
        down, _, _ = canceling_loss(problem, g_clean, 0.3, x, y, delta - h * v, batch_size, with_grad=False)
        assert (up - down) / (2 * h) == pytest.approx(float((grad * v).sum()), rel=1e-6, abs=1e-12)
    assert loss > 0


def test_chunked_two_pass_equals_one_pass() -> None:
    problem = _problem(_tiny(torch.float64))
    images, labels = _data()
    _, g_clean = mean_gradient(problem, images, labels, 40)
    x, y = problem.pixels(images[:12]), labels[:12]
    delta = torch.full_like(x, 0.03)
    one = canceling_loss(problem, g_clean, 0.3, x, y, delta, 12)
    chunked = canceling_loss(problem, g_clean, 0.3, x, y, delta, 5)
    assert one[0] == pytest.approx(chunked[0], rel=1e-12) and one[1] == pytest.approx(chunked[1], rel=1e-12)
    assert torch.allclose(one[2], chunked[2], rtol=1e-10, atol=1e-14)


def test_mean_gradient_is_the_mean_of_per_sample_gradients() -> None:
    problem = _problem(_tiny(torch.float64))
    images, labels = _data(9)
    _, batched = mean_gradient(problem, images, labels, 4)
    single = [problem.gradient(problem.pixels(images[i : i + 1]), labels[i : i + 1]) for i in range(9)]
    for k, g in enumerate(batched):
        assert torch.allclose(g, sum(s[k] for s in single) / 9, rtol=1e-12)


def test_gc_loss_decreases_and_cosine_turns_negative() -> None:
    problem, images, labels = _trained_problem()
    _, g_clean = mean_gradient(problem, images, labels, 64)
    x, y = problem.pixels(images[:12]), labels[:12]
    log: list[dict[str, float]] = []
    delta = craft(problem, g_clean, 12 / 40, x, y, dataclasses.replace(GC, batch_size=5), log)
    assert len(log) == GC.steps + 1 and log[0]["cos"] > 0.2  # unperturbed poisons pull with the clean data
    best = min(e["loss"] for e in log)
    assert best < 0.2 * log[0]["loss"]
    assert min(e["cos"] for e in log) < -0.5
    assert float(delta.abs().max()) <= 16 / 255 + 1e-7
    assert float((x + delta).min()) >= 0.0 and float((x + delta).max()) <= 1.0
    final, _, _ = canceling_loss(problem, g_clean, 12 / 40, x, y, delta, 64, with_grad=False)
    assert final == pytest.approx(best, rel=1e-5)  # the lowest-loss Δ is the one returned


def test_gradpc_stays_in_the_ball_increases_the_loss_and_touches_only_targets() -> None:
    problem, images, labels = _trained_problem()
    linear = GradientProblem(problem.model, ["4.weight", "4.bias"], torch.zeros(3), torch.ones(3))
    conv_before = problem.model[0].weight.detach().clone()
    theta0 = [p.detach().clone() for p in linear.params]
    before = mean_loss(linear, images, labels, 64)
    cfg = dataclasses.replace(GC, gradpc_radius=0.5, gradpc_batch_size=8, gradpc_epochs=2)
    log = gradpc(linear, images, labels, cfg, seed=0)
    distance = float(
        sum(((p.detach() - t) ** 2).sum() for p, t in zip(linear.params, theta0, strict=True)).sqrt()
    )
    assert (
        log["steps"] == 10 and distance <= 0.5 + 1e-6 and log["distance"] == pytest.approx(distance, rel=1e-5)
    )
    assert distance > 0.49  # normalised steps of length 1 reach the boundary
    assert mean_loss(linear, images, labels, 64) > before + 0.1
    assert torch.equal(problem.model[0].weight, conv_before)


def test_uint8_rounding_keeps_the_linf_bound_and_range() -> None:
    clean = np.array([0, 1, 128, 200, 254, 255] * 4, dtype=np.uint8).reshape(1, 2, 4, 3)
    # |Δ| a little over ε (as float error could leave it) and pushing past both ends of [0, 1]
    delta = torch.tensor([16.6, -16.6, 16.49, -16.51, 16.6, -16.6] * 4).reshape(1, 2, 4, 3) / 255
    poisoned = to_uint8(clean, delta.permute(0, 3, 1, 2), 16)
    diff = poisoned.astype(int) - clean.astype(int)
    assert np.abs(diff).max() == 16 and poisoned.dtype == np.uint8
    assert diff.reshape(-1)[:6].tolist() == [16, -1, 16, -16, 1, -16]


def _network_victim(path: Path) -> Path:
    torch.manual_seed(0)
    net = EvalNetwork(load("pdarts"), 2, 3, 4, auxiliary=True)
    spec = {"genotype": load("pdarts").to_json(), "channels": 2, "layers": 3, "auxiliary": True}
    return save_victim(path, net, kind="darts_network", spec=spec, dataset="tiny", num_classes=4)


def _supernet_victim(path: Path) -> Path:
    torch.manual_seed(0)
    kwargs = {"C": 2, "layers": 3, "num_classes": 4, "primitives": ["none", "skip_connect", "sep_conv_3x3"]}
    net = SuperNet(**kwargs)
    with torch.no_grad():
        net.alpha_normal.normal_()
        net.alpha_reduce.normal_()
    return save_victim(
        path, net, kind="darts_supernet", spec=supernet_spec(kwargs, net), dataset="tiny", num_classes=4
    )


def _context(tmp_path: Path, victim: Path, cache: str = "cache") -> AttackContext:
    profile = dataclasses.replace(PROFILE, gc=dataclasses.replace(PROFILE.gc, steps=2, batch_size=5))
    return AttackContext(profile, CPU, tmp_path / cache, victim)


def test_gc_end_to_end_bounds_records_and_determinism(tmp_path, tiny_dataset, monkeypatch) -> None:
    context = _context(tmp_path, _network_victim(tmp_path / "victim.pt"))
    poison = run_attack("gc", tiny_dataset, 0.25, 3, context)
    assert len(poison.indices) == 10 and poison.labels is None
    diff = poison.images.astype(int) - tiny_dataset.train.images[poison.indices].astype(int)
    assert np.abs(diff).max() <= 16 and (diff != 0).mean() > 0.5
    params = poison.params
    assert params["target"] == "weights_and_biases" and params["victim_kind"] == "darts_network"
    assert 0 < params["gradpc"]["distance"] <= 1.0 + 1e-6 and params["gradpc"]["steps"] == 1
    assert params["target_clean_loss"] > params["victim_clean_loss"]  # GradPC raised the loss
    assert params["best_loss"] <= params["initial_loss"] and params["steps"] == 2
    names = weights_and_biases(EvalNetwork(load("pdarts"), 2, 3, 4, auxiliary=True))
    assert params["target_tensors"] == len([n for n in names if not n.startswith("auxiliary_head")])
    log = json.loads(Path(params["log"]).read_text())["steps"]
    assert [e["step"] for e in log] == [0, 1, 2] and all({"loss", "cos"} <= set(e) for e in log)
    path = save_poison(poison, tmp_path / "p1")

    # nas_gc on a final network follows plain GC's rule, and finds GradPC's target in the cache
    monkeypatch.setattr(
        gc_module, "gradpc", lambda *a, **k: pytest.fail("GradPC ran again despite the cache")
    )
    nas = run_attack("nas_gc", tiny_dataset, 0.25, 3, context)
    monkeypatch.undo()
    assert nas.attack == "nas_gc" and nas.params["target"] == "weights_and_biases"
    fresh = run_attack("gc", tiny_dataset, 0.25, 3, _context(tmp_path, context.victim, "other_cache"))
    reloaded = load_poison(path, tiny_dataset)
    for other in (nas, fresh):
        assert np.array_equal(other.indices, reloaded.indices) and np.array_equal(
            other.images, reloaded.images
        )
        assert {k: v for k, v in other.params.items() if k != "log"} == {
            k: v for k, v in reloaded.params.items() if k != "log"
        }


def test_nas_gc_targets_the_architecture_of_a_supernet(tmp_path, tiny_dataset) -> None:
    context = _context(tmp_path, _supernet_victim(tmp_path / "supernet.pt"))
    poison = run_attack("nas_gc", tiny_dataset, 0.1, 0, context)
    params = poison.params
    assert params["target"] == "architecture" and params["gradpc"] is None
    assert params["target_tensors"] == 2 and params["target_parameters"] == 2 * 14 * 3
    assert params["target_clean_loss"] == pytest.approx(params["victim_clean_loss"], rel=1e-6)  # α as trained
    diff = poison.images.astype(int) - tiny_dataset.train.images[poison.indices].astype(int)
    assert len(poison.indices) == 4 and np.abs(diff).max() <= 16 and diff.any()


def test_nas_gc_on_a_mobilenet_victim_targets_its_weights_through_the_upscaling(
    tmp_path, tiny_dataset
) -> None:
    """NSGANetV2's victim: GC differentiates twice through the bicubic upscale, SE and h-swish."""
    arch, plan = extreme_arch([36], largest=False), channel_plan(0.25)
    torch.manual_seed(0)
    net = MBV3Net(arch, plan, 4, dropout=0.2, drop_connect=0.2)
    pixels = torch.from_numpy(tiny_dataset.train.images).permute(0, 3, 1, 2) / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (tiny_dataset.mean, tiny_dataset.std))
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.momentum = None  # BN statistics of the data, as trained: else eval mode drowns the input out
    with torch.no_grad():
        net.train()((pixels - mean) / std)
    victim = save_victim(tmp_path / "mbv3.pt", net, kind="mbv3_network", spec=mbv3_spec(arch, plan),
                         dataset="tiny", num_classes=4)  # fmt: skip
    profile = dataclasses.replace(PROFILE, gc=dataclasses.replace(PROFILE.gc, steps=10, batch_size=5))
    poison = run_attack("nas_gc", tiny_dataset, 0.1, 0, AttackContext(profile, CPU, tmp_path / "c", victim))
    params = poison.params
    assert params["victim_kind"] == "mbv3_network" and params["target"] == "weights_and_biases"
    assert params["target_tensors"] == len(weights_and_biases(net)) and params["gradpc"]["steps"] == 1
    assert params["best_loss"] < params["initial_loss"]
    reloaded = load_poison(save_poison(poison, tmp_path / "poison"), tiny_dataset)
    diff = reloaded.images.astype(int) - tiny_dataset.train.images[reloaded.indices].astype(int)
    assert len(reloaded.indices) == 4 and np.abs(diff).max() <= 16 and diff.any()


def test_every_victim_kind_has_a_nas_gc_rule() -> None:
    assert NAS_TARGETS.names() == VICTIMS.names()
