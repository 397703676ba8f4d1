"""Gradient canceling (GC; Lu et al. 2023, paper §3.2 Algorithm 2) and GradPC, which sets its target θ.

GC perturbs the poisons so that the gradient of the poisoned training set at the target parameters
θ vanishes: Adam on perturbations Δ of the poisons, each step projected to ℓ∞ ≤ ε and x+Δ to [0, 1],
keeping the lowest-loss Δ. θ is the victim's targeted parameters moved by GradPC (paper §3.2: "In
both cases, we first perturb the target parameters θ using GradPC"): one epoch of gradient *ascent*
on the training loss with L2-normalised steps, projected onto an L2 ball around the trained θ0.

Three ``[gc]`` settings choose between what the authors ran (their NSGANetV2 fork's
crafting/run_gc.py and run_gradpc.py, the paper profile) and Algorithm 2 as printed:

- ``model_mode``: "train" as run (run_gc.py never calls ``eval()``, run_gradpc.py calls ``train()``):
  BatchNorm normalises with each batch's statistics, as in the search; dropout and drop-path stay
  off in both modes, so the objective is a deterministic function of Δ. "eval": running statistics.
- ``objective``: "per_batch" as run (run_gc.py ``compute_updates``): the poisons form fixed batches
  of ``poison_batch_size`` (a seeded partition, drawn once), each batch b has its own term
  ‖(1−p)·g_clean + p·g_b‖², g_b its mean gradient, and Δ_b follows the gradient of its own term;
  the loss logged is the mean of the terms. "joint": Algorithm 2's ½‖(1−p)·g_clean + p·g_adv‖² with
  g_adv the mean gradient of all poisons.
- ``units``: "normalised" as run: Δ lives in the normalised input space, so Adam's lr and the bound
  ε/std per channel are in those units (a step ≈ lr·std ≈ 0.4·ε at lr 0.1); "pixel": Δ in [0, 1]
  units (a step ≈ lr ≈ 1.6·ε). The projection is the same set either way.

How it is computed:

- In train mode a sample's gradient depends on its batch, so the batches are part of the definition:
  GradPC takes ``gradpc_batch_size`` batches in a seeded shuffled order per epoch and g_clean the
  next epoch's order of the same loader (run_gradpc.py accumulates it over the loader GradPC used);
  the poisons' batches stay fixed for all steps (run_gc.py builds them once). In eval mode any
  batching gives the same numbers.
- The joint objective over several batches takes the exact gradient in two passes. With
  r = (1−p)·g_clean + p·g_adv the loss is ½‖r‖² and, because g_adv = (1/m)·Σ_b G_b(Δ_b) with G_b the
  summed gradient of batch b (which depends on Δ_b alone, BN statistics included),
  ∂L/∂Δ_b = (p/m)·(∂G_b/∂Δ_b)ᵀ r. Pass 1 sums the batches' gradients into r; pass 2 differentiates
  (p/m)·⟨r, G_b⟩, r held constant, through each batch (``create_graph``). The per-batch objective needs
  one pass: each term depends on its own batch only.
- p is the realised fraction m/n of poisoned samples (their code uses the nominal budget; the same
  number when n·p is a whole number, as on CIFAR).
- Stored images are the nearest uint8 level of x+Δ (numpy ``rint``), then clipped to within ε·255
  levels of the clean pixel and to [0, 255], so the ℓ∞ bound holds exactly after rounding.
- GradPC's target θ and g_clean depend only on (victim, training set, targeted parameters, model
  mode, GradPC settings and seed); they are cached in ``cache_dir/gc`` and shared by every budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit import metrics_log
from nasaudit.attacks.base import ATTACKS, AttackContext, attack, choose_indices
from nasaudit.attacks.victim import Victim, read_victim
from nasaudit.batch_cap import capped, capped_size
from nasaudit.config import GCConfig, Profile
from nasaudit.costs import Timer, VictimNet
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import epoch_generator
from nasaudit.data.poison import Poison, make_poison
from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, load_torch, save_torch, sha256_file
from nasaudit.progress import bar as progress_bar
from nasaudit.seeds import rng

ROUNDING = "nearest uint8 level of x+Δ (numpy rint), clipped to the ε ball and [0, 255]"


def _eval_mode(model: nn.Module) -> None:
    model.eval()


def _train_mode(model: nn.Module) -> None:
    """BN on batch statistics (their ``train()``), every stochastic layer (dropout, drop-path) off."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


#: [gc] model_mode -> how the network is put in mode (config.GCConfig.model_mode lists the choices)
MODEL_MODES: dict[str, Callable[[nn.Module], None]] = {"eval": _eval_mode, "train": _train_mode}


@dataclass
class GradientProblem:
    """A network in ``mode`` and the parameters θ (by name) whose cross-entropy gradient GC shapes.

    Inputs are images in [0, 1] (N×3×H×W); ``mean`` and ``std`` normalise them as in training.
    """

    model: nn.Module
    names: list[str]
    mean: Tensor
    std: Tensor
    mode: str = "eval"
    params: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        MODEL_MODES[self.mode](self.model)
        self.params = [self.model.get_parameter(n) for n in self.names]
        dtype, device = self.params[0].dtype, self.params[0].device
        self.mean = self.mean.to(device, dtype).view(1, -1, 1, 1)
        self.std = self.std.to(device, dtype).view(1, -1, 1, 1)

    def pixels(self, images: Tensor) -> Tensor:
        """uint8 N×H×W×3 → N×3×H×W in [0, 1], in the parameters' dtype."""
        return images.permute(0, 3, 1, 2).to(self.params[0].dtype) / 255.0

    def loss_sum(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.model((x - self.mean) / self.std)
        logits = out[0] if isinstance(out, tuple) else out
        return F.cross_entropy(logits, y, reduction="sum")

    def gradient(self, x: Tensor, y: Tensor, *, create_graph: bool = False) -> list[Tensor]:
        """Σ over the batch of ∇θ CE (one forward: in train mode BN sees this batch)."""
        return list(torch.autograd.grad(self.loss_sum(x, y), self.params, create_graph=create_graph))


def weights_and_biases(model: nn.Module) -> list[str]:
    """Every parameter named ``weight`` or ``bias`` (conv, BN, linear): θ of plain GC (paper §3.2)."""
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]


def receiving_gradient(problem: GradientProblem, x: Tensor, y: Tensor) -> list[str]:
    """The subset of θ that the loss depends on (not, e.g., an auxiliary head)."""
    grads = torch.autograd.grad(problem.loss_sum(x, y), problem.params, allow_unused=True)
    return [n for n, g in zip(problem.names, grads, strict=True) if g is not None]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((u * v).sum() for u, v in zip(a, b, strict=True))  # type: ignore[return-value]


def _cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    denominator = math.sqrt(float(_dot(a, a)) * float(_dot(b, b)))
    return float(_dot(a, b)) / denominator if denominator > 0 else 0.0


def _chunks(n: int, size: int) -> list[slice]:
    size = capped_size(size)
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def loader_order(n: int, seed: int, epoch: int, device: torch.device) -> Tensor:
    """One epoch's order of a shuffled loader over the training set (their DataLoader, shuffle=True)."""
    return torch.randperm(n, device=device, generator=epoch_generator(seed, epoch, device))


@torch.no_grad()
def mean_loss(
    problem: GradientProblem, images: Tensor, labels: Tensor, batch_size: int, order: Tensor
) -> float:
    """Mean CE over ``images``, forwarded in batches of ``batch_size`` taken in ``order``."""
    total = 0.0
    for s in capped(_chunks(len(labels), batch_size)):
        idx = order[s]
        total += float(problem.loss_sum(problem.pixels(images[idx]), labels[idx]))
    return total / len(labels)


def mean_gradient(
    problem: GradientProblem, images: Tensor, labels: Tensor, batch_size: int, order: Tensor
) -> tuple[float, list[Tensor]]:
    """(mean CE, mean CE gradient at θ) over uint8 ``images``: Algorithm 2 line 3's g_clean.

    Batches of ``batch_size`` in ``order`` (their ``accumulate_clean_gradients``: summed batch
    gradients over one pass of the loader, divided by the set's size).
    """
    total = [torch.zeros_like(p) for p in problem.params]
    loss = 0.0
    for s in capped(_chunks(len(labels), batch_size)):
        idx = order[s]
        batch_loss = problem.loss_sum(problem.pixels(images[idx]), labels[idx])
        for t, g in zip(total, torch.autograd.grad(batch_loss, problem.params), strict=True):
            t += g
        loss += float(batch_loss.detach())
    return loss / len(labels), [t / len(labels) for t in total]


def gradpc(
    problem: GradientProblem,
    images: Tensor,
    labels: Tensor,
    cfg: GCConfig,
    seed: int,
    on_step: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Move θ in place to GradPC's target: ascent on the training CE, projected onto ‖θ − θ0‖₂ ≤ radius.

    Each step adds ``gradpc_lr``·g/‖g‖ (g = the batch's CE gradient, all targeted parameters as one
    vector; run_gradpc.py ``GradAttacker``), then projects; batches of ``gradpc_batch_size`` in the
    order ``loader_order(seed, epoch)``, without augmentation (their run_gradpc.sh: ``--no_augment``).
    """
    theta0 = [p.detach().clone() for p in problem.params]
    steps, distance = 0, 0.0
    for epoch in range(cfg.gradpc_epochs):
        order = loader_order(len(labels), seed, epoch, labels.device)
        for s in capped(_chunks(len(labels), cfg.gradpc_batch_size)):
            idx = order[s]
            grads = problem.gradient(problem.pixels(images[idx]), labels[idx])
            norm = math.sqrt(float(_dot(grads, grads)))
            if norm == 0.0:
                continue
            with torch.no_grad():
                for p, g in zip(problem.params, grads, strict=True):
                    p.add_(g, alpha=cfg.gradpc_lr / norm)
                shift = [p - t0 for p, t0 in zip(problem.params, theta0, strict=True)]
                distance = math.sqrt(float(_dot(shift, shift)))
                if distance > cfg.gradpc_radius:
                    for p, t0, d in zip(problem.params, theta0, shift, strict=True):
                        p.copy_(t0 + d * (cfg.gradpc_radius / distance))
                    distance = cfg.gradpc_radius
            steps += 1
            if on_step is not None:
                on_step(1)
    return {"steps": steps, "distance": distance, "radius": cfg.gradpc_radius, "lr": cfg.gradpc_lr,
            "epochs": cfg.gradpc_epochs, "batch_size": cfg.gradpc_batch_size}  # fmt: skip


class Objective(Protocol):
    def __call__(
        self,
        problem: GradientProblem,
        g_clean: Sequence[Tensor],
        fraction: float,
        x: Tensor,
        y: Tensor,
        delta: Tensor,
        batch_size: int,
        with_grad: bool,
    ) -> tuple[float, float, Tensor | None]:
        """(loss, cosine of g_clean with the poisons' gradient, ∂loss/∂Δ or None) for poisons x+Δ,
        the poisons taken in consecutive batches of ``batch_size``."""
        ...


def per_batch_objective(
    problem: GradientProblem,
    g_clean: Sequence[Tensor],
    fraction: float,
    x: Tensor,
    y: Tensor,
    delta: Tensor,
    batch_size: int,
    with_grad: bool,
) -> tuple[float, float, Tensor | None]:
    """As run (run_gc.py ``compute_updates``): each batch's own term ‖(1−p)·g_clean + p·g_b‖², g_b the
    batch's mean CE gradient. Δ_b follows the gradient of its own term (so ∂/∂Δ is that of the terms'
    sum); loss and cosine are averaged over the batches, as their log reports them."""
    chunks = list(capped(_chunks(len(y), batch_size)))  # all of them unless a batch cap is active
    grad = torch.zeros_like(delta) if with_grad else None  # rows a batch cap skips keep a zero gradient
    total_loss, total_cos = 0.0, 0.0
    for s in chunks:
        d = delta[s].detach().requires_grad_(with_grad)
        g_b = [g / len(y[s]) for g in problem.gradient(x[s] + d, y[s], create_graph=with_grad)]
        r = [(1 - fraction) * c + fraction * a for c, a in zip(g_clean, g_b, strict=True)]
        loss = _dot(r, r)
        if grad is not None:
            (grad[s],) = torch.autograd.grad(loss, d)
        total_loss += float(loss.detach())
        total_cos += _cosine(g_clean, [a.detach() for a in g_b])
    return total_loss / len(chunks), total_cos / len(chunks), grad


def joint_objective(
    problem: GradientProblem,
    g_clean: Sequence[Tensor],
    fraction: float,
    x: Tensor,
    y: Tensor,
    delta: Tensor,
    batch_size: int,
    with_grad: bool,
) -> tuple[float, float, Tensor | None]:
    """Algorithm 2 as printed: ½‖(1−p)·g_clean + p·g_adv‖², g_adv the mean gradient of all poisons;
    the exact two-pass gradient over several batches (module doc)."""
    m = len(y)
    chunks = _chunks(m, batch_size)
    if with_grad and len(chunks) == 1:
        d = delta.detach().requires_grad_()
        g_adv = [g / m for g in problem.gradient(x + d, y, create_graph=True)]
        r = [(1 - fraction) * c + fraction * a for c, a in zip(g_clean, g_adv, strict=True)]
        loss = 0.5 * _dot(r, r)
        (grad,) = torch.autograd.grad(loss, d)
        return float(loss.detach()), _cosine(g_clean, [a.detach() for a in g_adv]), grad
    g_adv = [torch.zeros_like(c) for c in g_clean]
    for s in capped(chunks):
        for total, g in zip(g_adv, problem.gradient(x[s] + delta[s].detach(), y[s]), strict=True):
            total += g / m
    r = [(1 - fraction) * c + fraction * a for c, a in zip(g_clean, g_adv, strict=True)]
    loss, cosine = 0.5 * float(_dot(r, r)), _cosine(g_clean, g_adv)
    if not with_grad:
        return loss, cosine, None
    grad = torch.zeros_like(delta)  # rows a batch cap skips keep a zero gradient
    for s in capped(chunks):
        d = delta[s].detach().requires_grad_()
        g = problem.gradient(x[s] + d, y[s], create_graph=True)
        (grad[s],) = torch.autograd.grad(_dot(r, g) * (fraction / m), d)
    return loss, cosine, grad


#: [gc] objective -> GC's loss (config.GCConfig.objective lists the choices)
OBJECTIVES: dict[str, Objective] = {"per_batch": per_batch_objective, "joint": joint_objective}


def canceling_loss(
    problem: GradientProblem,
    g_clean: Sequence[Tensor],
    fraction: float,
    x: Tensor,
    y: Tensor,
    delta: Tensor,
    cfg: GCConfig,
    *,
    with_grad: bool = True,
) -> tuple[float, float, Tensor | None]:
    """GC's loss, cosine and ∂loss/∂Δ (Δ in [0, 1] pixel units) under ``cfg``'s objective."""
    objective = OBJECTIVES[cfg.objective]
    return objective(problem, g_clean, fraction, x, y, delta, cfg.poison_batch_size, with_grad)


#: [gc] units -> the scale of one unit of Δ in pixels (Δ_pixel = std · Δ_normalised)
UNITS: dict[str, Callable[[GradientProblem], Tensor]] = {
    "normalised": lambda problem: problem.std,
    "pixel": lambda problem: torch.ones_like(problem.std),
}


def craft(
    problem: GradientProblem,
    g_clean: Sequence[Tensor],
    fraction: float,
    x: Tensor,
    y: Tensor,
    cfg: GCConfig,
    log: list[dict[str, float]],
    on_step: Callable[[int], object] | None = None,
) -> Tensor:
    """Algorithm 2's loop: Adam on Δ (from 0) for ``steps`` steps, projected; the lowest-loss Δ.

    Adam steps the perturbation in ``cfg.units`` (u = Δ/scale, so ∂L/∂u = scale·∂L/∂Δ) and projects it
    there as run_gc.py does: |u| ≤ ε/scale, then x + scale·u into [0, 1]. Returns Δ in pixel units;
    ``log`` receives loss and cos(g_clean, g_adv) of every iterate, the final one included;
    ``on_step(1)`` is called after each (a progress bar's ``update``).
    """
    scale = UNITS[cfg.units](problem)
    bound = (cfg.epsilon_255 / 255.0) / scale
    u = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam([u], lr=cfg.lr)
    best_loss, best = math.inf, torch.zeros_like(x)
    for step in range(cfg.steps + 1):
        last = step == cfg.steps
        delta = scale * u.detach()
        loss, cosine, grad = canceling_loss(problem, g_clean, fraction, x, y, delta, cfg, with_grad=not last)
        log.append({"step": step, "loss": loss, "cos": cosine})
        if on_step is not None:
            on_step(1)
        if loss < best_loss:
            best_loss, best = loss, delta.clone()
        if last:
            break
        u.grad = grad * scale  # type: ignore[operator]
        optimizer.step()
        with torch.no_grad():
            u.copy_(torch.maximum(torch.minimum(u, bound), -bound))
            u.copy_(((x + scale * u).clamp(0.0, 1.0) - x) / scale)
    return best


def to_uint8(clean: np.ndarray, delta: Tensor, epsilon_255: int) -> np.ndarray:
    """Poisoned uint8 N×H×W×3 images from clean uint8 images and Δ (N×3×H×W, [0, 1] units)."""
    shift = delta.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy() * 255.0
    base = clean.astype(np.int64)
    poisoned = np.rint(base + shift).astype(np.int64)
    poisoned = np.clip(poisoned, base - epsilon_255, base + epsilon_255)
    return np.clip(poisoned, 0, 255).astype(np.uint8)


def poison_batches(m: int, seed: int) -> np.ndarray:
    """The order the m poisons are batched in: a seeded permutation, fixed for every step.

    Their run_gc.py draws the poisons with ``random.sample`` (a random order) and slices that list
    into batches once; the poison file keeps its indices sorted, the batches are this permutation.
    """
    return rng(seed, "gc", "poison_batches").permutation(m)


def require_victim(context: AttackContext, attack: str) -> Path:
    if context.victim is None:
        raise NasauditError(
            f"attack {attack!r} needs a victim model: pass --victim FILE (made by `nasaudit victim`, "
            "or a P-DARTS search's supernet_victim.pt)"
        )
    return context.victim


def _target_state(
    problem: GradientProblem,
    images: Tensor,
    labels: Tensor,
    cfg: GCConfig,
    seed: int,
    cache: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Move θ to GradPC's target (none at radius 0) and compute g_clean there; both cached in ``cache``.

    The losses before and after GradPC are measured on the batches g_clean uses (the loader's epoch
    after GradPC's), so in train mode they compare like with like.
    """
    if cache.is_file():
        state = load_torch(cache, "recomputes the target and its clean gradient", map_location=images.device)
        with torch.no_grad():
            for p, value in zip(problem.params, state["target"], strict=True):
                p.copy_(value)
        return state
    order = loader_order(len(labels), seed, cfg.gradpc_epochs, labels.device)
    victim_loss = mean_loss(problem, images, labels, cfg.gradpc_batch_size, order)
    log = None
    if cfg.gradpc_radius > 0:
        steps = cfg.gradpc_epochs * len(_chunks(len(labels), cfg.gradpc_batch_size))
        with progress_bar(steps, desc="GradPC", unit="step", enabled=progress) as bar:
            log = gradpc(problem, images, labels, cfg, seed, bar.update)
    target_loss, g_clean = mean_gradient(problem, images, labels, cfg.gradpc_batch_size, order)
    state = {
        "names": problem.names,
        "target": [p.detach().cpu() for p in problem.params],
        "g_clean": [g.cpu() for g in g_clean],
        "victim_loss": victim_loss,
        "target_loss": target_loss,
        "gradpc": log,
    }
    save_torch(cache, state)
    return {**state, "g_clean": g_clean}


def _check_settings(cfg: GCConfig) -> None:
    if cfg.poison_batch_size < 1 or cfg.gradpc_batch_size < 1 or cfg.gradpc_radius < 0:
        raise NasauditError(
            "[gc] needs poison_batch_size ≥ 1, gradpc_batch_size ≥ 1 and gradpc_radius ≥ 0; fix the profile"
        )


def gradient_canceling(
    attack: str,
    dataset: ImageDataset,
    budget: float,
    seed: int,
    context: AttackContext,
    victim: Victim,
    names: Sequence[str],
    *,
    target: str,
) -> Poison:
    """GC against ``victim`` at the parameters ``names``, moved by GradPC first.

    The per-iterate loss and cosine go to a JSON log in ``cache_dir/gc/logs``, whose path and summary
    the poison's parameters record.
    """
    cfg, device = context.profile.gc, context.device
    _check_settings(cfg)
    indices = choose_indices(len(dataset.train), budget, np.random.default_rng(seed))
    if not len(indices):
        empty = np.zeros((0, *dataset.train.images.shape[1:]), dtype=np.uint8)
        return make_poison(attack, dataset, seed, indices, images=empty, params={"victim": str(victim.path)})
    model = victim.model.to(device)
    images = torch.from_numpy(dataset.train.images).to(device)
    labels = torch.from_numpy(dataset.train.labels).to(device)
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    everything = GradientProblem(model, list(names), mean, std, cfg.model_mode)
    receiving = receiving_gradient(everything, everything.pixels(images[:2]), labels[:2])
    problem = GradientProblem(model, receiving, mean, std, cfg.model_mode)

    victim_sha = sha256_file(victim.path)
    gradpc_settings = [cfg.gradpc_lr, cfg.gradpc_radius, cfg.gradpc_epochs, cfg.gradpc_batch_size]
    key_data = {"victim": victim_sha, "train": dataset.train.sha256, "names": problem.names,
                "mode": cfg.model_mode, "seed": seed, "gradpc": gradpc_settings}  # fmt: skip
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    state = _target_state(
        problem, images, labels, cfg, seed, context.cache_dir / "gc" / f"{key}.pt", context.progress
    )
    g_clean = [g.to(device) for g in state["g_clean"]]

    fraction = len(indices) / len(dataset.train)
    order = poison_batches(len(indices), seed)
    batched = indices[order]
    idx = torch.from_numpy(batched).to(device)
    x, y = problem.pixels(images[idx]), labels[idx]
    log: list[dict[str, float]] = []
    with progress_bar(cfg.steps + 1, desc=attack, unit="step", enabled=context.progress) as bar:
        delta = craft(problem, g_clean, fraction, x, y, cfg, log, bar.update)
    batched_images = to_uint8(dataset.train.images[batched], delta, cfg.epsilon_255)
    stored = problem.pixels(torch.from_numpy(batched_images).to(device)) - x
    stored_loss, stored_cos, _ = canceling_loss(
        problem, g_clean, fraction, x, y, stored, cfg, with_grad=False
    )
    poisoned = np.empty_like(batched_images)
    poisoned[order] = batched_images  # back to the sorted indices' order
    best = min(log, key=lambda e: e["loss"])
    log_path = context.cache_dir / "gc" / "logs" / f"{attack}-{dataset.name}-p{budget:g}-s{seed}-{key}.json"
    document = {"attack": attack, "budget": budget, "seed": seed, "steps": log}
    job = log_path.with_suffix("")  # crafting keeps its steps in memory: recorded now, the JSON once
    for entry in log[:-1]:
        metrics_log.record(job, entry["step"], entry)
    metrics_log.record(job, log[-1]["step"], log[-1], log_path, document)
    params = {
        "victim": str(victim.path),
        "victim_sha256": victim_sha,
        "victim_kind": victim.kind,
        "target": target,
        "target_tensors": len(problem.names),
        "target_parameters": sum(p.numel() for p in problem.params),
        "gradpc": state["gradpc"],
        "victim_clean_loss": state["victim_loss"],
        "target_clean_loss": state["target_loss"],
        "model_mode": cfg.model_mode,
        "objective": cfg.objective,
        "units": cfg.units,
        "poison_batch_size": cfg.poison_batch_size,
        "poison_batches": -(-len(indices) // cfg.poison_batch_size),
        "steps": cfg.steps,
        "lr": cfg.lr,
        "optimizer": "adam",
        "epsilon": cfg.epsilon_255 / 255.0,
        "epsilon_255": cfg.epsilon_255,
        "poison_fraction": fraction,
        "initial_loss": log[0]["loss"],
        "initial_cos": log[0]["cos"],
        "best_step": best["step"],
        "best_loss": best["loss"],
        "best_cos": best["cos"],
        "stored_loss": stored_loss,
        "stored_cos": stored_cos,
        "rounding": ROUNDING,
        "log": str(log_path),
    }
    return make_poison(attack, dataset, seed, indices, images=poisoned, params=jsonable(params))


# Training steps one GC step costs per poison. The per-batch objective and a joint one whose poisons
# fit one batch differentiate each batch's gradient once more (forward, backward with create_graph,
# the backward of that ≈ two steps); a joint objective over several batches adds a plain gradient
# pass first (≈ one step) for the exact two-pass gradient.
GC_PASSES_ONE_PASS, GC_PASSES_TWO_PASS = 2, 3


def cost(
    profile: Profile, budget: float, n_train: int, victim: VictimNet | None, timer: Timer
) -> tuple[float, float]:
    """GC on the victim: the steps on its poisons; shared by its budgets, GradPC and g_clean (the cost
    model of GC and of NAS-specific GC, which differ only in the parameters they target)."""
    if victim is None:
        raise NasauditError("GC is crafted against a victim: list the attack in [grid] victim_attacks")
    cfg = profile.gc
    step = timer.per_image(victim.name, victim.build, cfg.poison_batch_size)
    clean_step = timer.per_image(victim.name, victim.build, cfg.gradpc_batch_size)
    gradpc = cfg.gradpc_epochs * n_train * clean_step if cfg.gradpc_radius > 0 else 0.0
    poisons = round(n_train * budget)
    two_pass = cfg.objective == "joint" and poisons > cfg.poison_batch_size
    factor = GC_PASSES_TWO_PASS if two_pass else GC_PASSES_ONE_PASS
    return cfg.steps * poisons * factor * step, gradpc + n_train * clean_step


@ATTACKS.register("gc", uses=("gc",))
@attack(label="gc", cost=cost)
def gc(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    """Plain GC: θ = the victim's weights and biases, moved by GradPC (paper §3.2)."""
    victim = read_victim(require_victim(context, "gc"), dataset)
    names = weights_and_biases(victim.model)
    return gradient_canceling(
        "gc", dataset, budget, seed, context, victim, names, target="weights_and_biases"
    )
