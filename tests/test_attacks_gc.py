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
from nasaudit.config import GCConfig, load_profile
from nasaudit.data.poison import load_poison, save_poison
from nasaudit.spaces.darts import EvalNetwork, SuperNet, load
from nasaudit.spaces.mbv3 import MBV3Net, channel_plan, extreme_arch
from nasaudit.victim import VICTIMS, mbv3_spec, save_victim, supernet_spec

PROFILE = load_profile("smoke")
GC = dataclasses.replace(PROFILE.gc, steps=30, poison_batch_size=64)
CPU = torch.device("cpu")


def _tiny(dtype: torch.dtype = torch.float32, bn: bool = False) -> nn.Module:
    """Smooth (softplus) so that finite differences are meaningful; ``bn`` adds a BatchNorm."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(4)] if bn else []
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), *norm, nn.Softplus(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 4))  # fmt: skip
    return net.to(dtype)


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N×8×8×3 images and 4 balanced classes."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8), torch.arange(n) % 4


def _problem(model: nn.Module, mode: str = "eval") -> GradientProblem:
    return GradientProblem(model, weights_and_biases(model), torch.zeros(3), torch.ones(3), mode)


def _all(n: int) -> torch.Tensor:
    return torch.arange(n)


def _trained_problem(mode: str = "eval") -> tuple[GradientProblem, torch.Tensor, torch.Tensor]:
    """A tiny model fitted part-way (50 Adam steps), so its clean gradient is small but not zero."""
    images, labels = _data()
    problem = _problem(_tiny(), mode)
    x = problem.pixels(images)
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        F.cross_entropy(problem.model(x), labels).backward()
        optimizer.step()
    return problem, images, labels


def _cfg(objective: str, batch: int, **changes) -> GCConfig:  # type: ignore[no-untyped-def]
    return dataclasses.replace(GC, objective=objective, poison_batch_size=batch, **changes)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("objective", "batch"), [("joint", 100), ("joint", 5), ("per_batch", 5)])
def test_loss_gradient_matches_finite_differences(mode, objective, batch) -> None:
    problem = _problem(_tiny(torch.float64, bn=True), mode)
    images, labels = _data()
    _, g_clean = mean_gradient(problem, images, labels, 7, _all(40))
    x, y = problem.pixels(images[:12]), labels[:12]
    g = torch.Generator().manual_seed(1)
    delta = (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 0.1
    cfg = _cfg(objective, batch)
    loss, _, grad = canceling_loss(problem, g_clean, 0.3, x, y, delta, cfg)
    # per batch, Δ_b follows its own term: the gradient of the terms' sum, the loss logged is their mean
    terms = 3 if objective == "per_batch" else 1
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-5
        up, _, _ = canceling_loss(problem, g_clean, 0.3, x, y, delta + h * v, cfg, with_grad=False)
        down, _, _ = canceling_loss(problem, g_clean, 0.3, x, y, delta - h * v, cfg, with_grad=False)
        assert terms * (up - down) / (2 * h) == pytest.approx(float((grad * v).sum()), rel=1e-6, abs=1e-12)
    assert loss > 0


def _their_per_batch_step(model, params, g_clean, p, x_norm, y, delta_norm, batch):  # type: ignore[no-untyped-def]
    """A reference written from the authors' run_gc.py ``compute_updates`` (train mode, normalised
    inputs): per batch, CE with mean reduction, its gradient with create_graph, the squared L2 norm of
    (1−p)·g_clean + p·g_batch over all parameters concatenated, its gradient w.r.t. the batch's Δ;
    the loss and cosine reported are means over the batches."""
    model.train()
    clean = torch.cat([g.reshape(-1) for g in g_clean])
    losses, cosines, updates = [], [], []
    for start in range(0, len(y), batch):
        d = delta_norm[start : start + batch].clone().requires_grad_()
        out = model(x_norm[start : start + batch] + d)
        grads = torch.autograd.grad(F.cross_entropy(out, y[start : start + batch]), params, create_graph=True)
        poisoned = torch.cat([g.reshape(-1) for g in grads])
        loss = torch.norm((1 - p) * clean + p * poisoned, 2).square()
        cosines.append(float(F.cosine_similarity(clean, poisoned.detach(), dim=0)))
        updates.append(torch.autograd.grad(loss, d)[0])
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses), sum(cosines) / len(cosines), torch.cat(updates)


def test_per_batch_objective_equals_the_authors_update_in_train_mode() -> None:
    model = _tiny(torch.float64, bn=True)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    problem = GradientProblem(model, weights_and_biases(model), mean, std, "train")
    images, labels = _data()
    _, g_clean = mean_gradient(problem, images, labels, 8, _all(40))
    x, y = problem.pixels(images[:13]), labels[:13]
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5) * 0.1
    ours = canceling_loss(problem, g_clean, 0.25, x, y, delta, _cfg("per_batch", 5))
    m, s = problem.mean, problem.std
    theirs = _their_per_batch_step(model, problem.params, g_clean, 0.25, (x - m) / s, y, delta / s, 5)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-10) and ours[1] == pytest.approx(theirs[1], rel=1e-10)
    # theirs is the gradient w.r.t. Δ in normalised units: std times ours (w.r.t. pixel units)
    assert torch.allclose(ours[2] * s, theirs[2], rtol=1e-9, atol=1e-15)
    joint = canceling_loss(problem, g_clean, 0.25, x, y, delta, _cfg("joint", 5))
    assert joint[0] != pytest.approx(ours[0], rel=1e-3)  # the two objectives are different functions


def test_joint_two_pass_equals_one_graph_over_the_same_batches() -> None:
    """The two-pass gradient is exact also in train mode, where each batch has its own BN statistics:
    the reference builds g_adv from every batch in one graph and differentiates ½‖r‖² directly."""
    images, labels = _data()
    y = labels[:12]
    batches = (slice(0, 5), slice(5, 10), slice(10, 12))
    for mode in ("eval", "train"):
        problem = _problem(_tiny(torch.float64, bn=True), mode)
        _, g_clean = mean_gradient(problem, images, labels, 40, _all(40))
        x = problem.pixels(images[:12])
        delta = torch.full_like(x, 0.03).requires_grad_()
        parts = [problem.gradient(x[s] + delta[s], y[s], create_graph=True) for s in batches]
        g_adv = [sum(part[k] for part in parts) / 12 for k in range(len(g_clean))]
        r = [0.7 * c + 0.3 * a for c, a in zip(g_clean, g_adv, strict=True)]
        reference = 0.5 * sum((v * v).sum() for v in r)
        (reference_grad,) = torch.autograd.grad(reference, delta)
        loss, _, grad = canceling_loss(problem, g_clean, 0.3, x, y, delta.detach(), _cfg("joint", 5))
        assert loss == pytest.approx(float(reference.detach()), rel=1e-12)
        assert torch.allclose(grad, reference_grad, rtol=1e-10, atol=1e-15)
    plain = _problem(_tiny(torch.float64), "eval")  # no BN: the batching cannot matter
    _, g_clean = mean_gradient(plain, images, labels, 40, _all(40))
    x = plain.pixels(images[:12])
    one = canceling_loss(plain, g_clean, 0.3, x, y, torch.full_like(x, 0.03), _cfg("joint", 12))
    chunked = canceling_loss(plain, g_clean, 0.3, x, y, torch.full_like(x, 0.03), _cfg("joint", 5))
    assert one[0] == pytest.approx(chunked[0], rel=1e-12)
    assert torch.allclose(one[2], chunked[2], rtol=1e-10, atol=1e-16)


def test_train_mode_uses_batch_statistics_and_keeps_dropout_off() -> None:
    images, labels = _data()
    model = nn.Sequential(_tiny(torch.float64, bn=True), nn.Dropout(0.5))
    train = GradientProblem(model, weights_and_biases(model), torch.zeros(3), torch.ones(3), "train")
    assert model[0][1].training and not model[1].training
    x = train.pixels(images[:8])
    first, again = train.gradient(x, labels[:8]), train.gradient(x, labels[:8])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # no dropout draws
    # a sample's gradient depends on its batch in train mode, not in eval mode
    _, by_4 = mean_gradient(train, images[:8], labels[:8], 4, _all(8))
    _, by_8 = mean_gradient(train, images[:8], labels[:8], 8, _all(8))
    assert not torch.allclose(by_4[0], by_8[0], rtol=1e-3)
    evaluation = GradientProblem(model, weights_and_biases(model), torch.zeros(3), torch.ones(3), "eval")
    _, by_4 = mean_gradient(evaluation, images[:8], labels[:8], 4, _all(8))
    _, by_8 = mean_gradient(evaluation, images[:8], labels[:8], 8, _all(8))
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(by_4, by_8, strict=True))


def test_mean_gradient_is_the_mean_of_per_sample_gradients_in_eval_mode() -> None:
    problem = _problem(_tiny(torch.float64))
    images, labels = _data(9)
    _, batched = mean_gradient(problem, images, labels, 4, torch.randperm(9))
    single = [problem.gradient(problem.pixels(images[i : i + 1]), labels[i : i + 1]) for i in range(9)]
    for k, g in enumerate(batched):
        assert torch.allclose(g, sum(s[k] for s in single) / 9, rtol=1e-12)


@pytest.mark.parametrize(
    ("units", "step"), [("normalised", [0.1 * 0.2, 0.1 * 0.25, 0.1 * 0.3]), ("pixel", [16 / 255] * 3)]
)
def test_adam_steps_in_the_units_they_ran(monkeypatch, units, step) -> None:
    """Adam's first step has length lr per coordinate in the optimised units: lr·std in pixels when Δ
    lives in normalised units (as run: ≈ 0.4 ε at std 0.25), lr = 0.1 (clipped to ε) in pixel units."""
    model = _tiny(torch.float64)
    problem = GradientProblem(model, weights_and_biases(model), torch.full((3,), 0.5),
                              torch.tensor([0.2, 0.25, 0.3]), "eval")  # fmt: skip
    x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)

    def falling(problem, g_clean, fraction, x, y, delta, cfg, *, with_grad=True):  # type: ignore[no-untyped-def]
        return -float(delta.abs().sum()), 0.0, torch.ones_like(delta) if with_grad else None

    monkeypatch.setattr(gc_module, "canceling_loss", falling)
    cfg = dataclasses.replace(GC, steps=1, lr=0.1, units=units)
    delta = craft(problem, [], 0.5, x, torch.zeros(2, dtype=torch.long), cfg, [])
    for c in range(3):
        assert torch.allclose(delta[:, c], torch.full_like(delta[:, c], -step[c]), rtol=1e-6)


@pytest.mark.parametrize(("objective", "batch"), [("per_batch", 12), ("joint", 6)])
def test_gc_loss_decreases_and_cosine_turns_negative(objective, batch) -> None:
    problem, images, labels = _trained_problem()
    _, g_clean = mean_gradient(problem, images, labels, 64, _all(40))
    x, y = problem.pixels(images[:12]), labels[:12]
    log: list[dict[str, float]] = []
    cfg = _cfg(objective, batch, units="pixel")
    delta = craft(problem, g_clean, 12 / 40, x, y, cfg, log)
    assert len(log) == GC.steps + 1 and log[0]["cos"] > 0.2  # unperturbed poisons pull with the clean data
    best = min(e["loss"] for e in log)
    assert best < 0.2 * log[0]["loss"]
    assert min(e["cos"] for e in log) < -0.5
    assert float(delta.abs().max()) <= 16 / 255 + 1e-7
    assert float((x + delta).min()) >= 0.0 and float((x + delta).max()) <= 1.0
    final, _, _ = canceling_loss(problem, g_clean, 12 / 40, x, y, delta, cfg, with_grad=False)
    assert final == pytest.approx(best, rel=1e-5)  # the lowest-loss Δ is the one returned


def test_gradpc_stays_in_the_ball_increases_the_loss_and_touches_only_targets() -> None:
    problem, images, labels = _trained_problem()
    linear = GradientProblem(problem.model, ["4.weight", "4.bias"], torch.zeros(3), torch.ones(3))
    conv_before = problem.model[0].weight.detach().clone()
    theta0 = [p.detach().clone() for p in linear.params]
    before = mean_loss(linear, images, labels, 64, _all(40))
    cfg = dataclasses.replace(GC, gradpc_radius=0.5, gradpc_batch_size=8, gradpc_epochs=2)
    log = gradpc(linear, images, labels, cfg, seed=0)
    distance = float(
        sum(((p.detach() - t) ** 2).sum() for p, t in zip(linear.params, theta0, strict=True)).sqrt()
    )
    assert (
        log["steps"] == 10 and distance <= 0.5 + 1e-6 and log["distance"] == pytest.approx(distance, rel=1e-5)
    )
    assert distance > 0.49  # normalised steps of length 1 reach the boundary
    assert mean_loss(linear, images, labels, 64, _all(40)) > before + 0.1
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


def _context(tmp_path: Path, victim: Path, cache: str = "cache", **gc) -> AttackContext:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(PROFILE.gc, **{"steps": 2, "poison_batch_size": 4, **gc})
    return AttackContext(dataclasses.replace(PROFILE, gc=cfg), CPU, tmp_path / cache, victim)


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
    assert (
        params["model_mode"] == "train"
        and params["objective"] == "per_batch"
        and params["poison_batches"] == 3
    )
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


def test_nas_gc_moves_the_architecture_of_a_supernet_by_gradpc(tmp_path, tiny_dataset) -> None:
    victim = _supernet_victim(tmp_path / "supernet.pt")
    poison = run_attack("nas_gc", tiny_dataset, 0.1, 0, _context(tmp_path, victim))
    params = poison.params
    assert params["target"] == "architecture" and params["gradpc"]["steps"] == 1
    assert params["gradpc"]["distance"] == pytest.approx(1.0, rel=1e-6)  # one step of length 1 = the radius
    assert params["target_tensors"] == 2 and params["target_parameters"] == 2 * 14 * 3
    assert params["target_clean_loss"] > params["victim_clean_loss"]  # GradPC raised the loss
    diff = poison.images.astype(int) - tiny_dataset.train.images[poison.indices].astype(int)
    assert len(poison.indices) == 4 and np.abs(diff).max() <= 16 and diff.any()
    # radius 0 crafts at the converged α themselves
    as_trained = run_attack(
        "nas_gc", tiny_dataset, 0.1, 0, _context(tmp_path, victim, "c0", gradpc_radius=0.0)
    )
    assert as_trained.params["gradpc"] is None
    assert as_trained.params["target_clean_loss"] == pytest.approx(
        as_trained.params["victim_clean_loss"], rel=1e-6
    )


def test_nas_gc_on_a_mobilenet_victim_targets_its_weights_through_the_upscaling(
    tmp_path, tiny_dataset
) -> None:
    """NSGANetV2's victim: GC differentiates twice through the bicubic upscale, SE and h-swish."""
    arch, plan = extreme_arch([36], largest=False), channel_plan(0.25)
    torch.manual_seed(0)
    net = MBV3Net(arch, plan, 4, dropout=0.2, drop_connect=0.2)
    pixels = torch.from_numpy(tiny_dataset.train.images).permute(0, 3, 1, 2) / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (tiny_dataset.mean, tiny_dataset.std))
    with torch.no_grad():
        net.train()((pixels - mean) / std)
    victim = save_victim(tmp_path / "mbv3.pt", net, kind="mbv3_network", spec=mbv3_spec(arch, plan),
                         dataset="tiny", num_classes=4)  # fmt: skip
    poison = run_attack("nas_gc", tiny_dataset, 0.1, 0, _context(tmp_path, victim, steps=10))
    params = poison.params
    assert params["victim_kind"] == "mbv3_network" and params["target"] == "weights_and_biases"
    assert params["target_tensors"] == len(weights_and_biases(net)) and params["gradpc"]["steps"] == 1
    assert params["best_loss"] < params["initial_loss"]
    reloaded = load_poison(save_poison(poison, tmp_path / "poison"), tiny_dataset)
    diff = reloaded.images.astype(int) - tiny_dataset.train.images[reloaded.indices].astype(int)
    assert len(reloaded.indices) == 4 and np.abs(diff).max() <= 16 and diff.any()


def test_every_victim_kind_has_a_nas_gc_rule() -> None:
    assert NAS_TARGETS.names() == VICTIMS.names()
