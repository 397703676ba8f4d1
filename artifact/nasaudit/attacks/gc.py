"""Gradient canceling (GC; Lu et al. 2023, paper §3.2 Algorithm 2) and GradPC, which sets its target θ.

GC perturbs the poisons so that the gradient of the poisoned training set at the target parameters
θ vanishes: it minimises ½‖(1−p)·g_clean + p·g_adv‖² over perturbations Δ with Adam, where g_clean
is the mean cross-entropy gradient of the clean training set and g_adv that of the poisons x+Δ; after
each step Δ is projected to ℓ∞ ≤ ε and x+Δ to [0, 1], and the lowest-loss Δ is kept. Plain ``gc``
takes θ = the victim's weights and biases moved by GradPC (SPEC §2): one epoch of gradient *ascent*
on the training loss with L2-normalised steps, projected onto an L2 ball around the trained θ0.

Choices the paper leaves open, made here:

- The victim runs in eval mode (BN on running statistics, no dropout or drop-path), for GradPC, the
  gradients and the poisons alike. A sample's gradient then does not depend on the rest of its batch,
  so a set's gradient is exactly the mean of per-sample gradients however it is chunked: that is what
  Algorithm 2's sums say, and it lets everything run in batches of ``[gc] batch_size``.
- Poisons at p = 50% of CIFAR do not fit one double-backward graph, so the loss gradient is taken in
  two passes. With r = (1−p)·g_clean + p·g_adv the loss is ½‖r‖² and, because g_adv is a sum over
  chunks b of (1/m)·G_b(Δ_b), ∂L/∂Δ_b = (p/m)·(∂G_b/∂Δ_b)ᵀ r. Pass 1 sums the chunks' plain
  gradients into g_adv (hence r and the loss); pass 2 differentiates the scalar (p/m)·⟨r, G_b⟩, r held
  constant, through each chunk's gradient (``create_graph``). This is the exact gradient, not an
  approximation; with a single chunk the loss is differentiated directly in one pass.
- p is the realised fraction m/n of poisoned samples.
- Stored images are the nearest uint8 level of x+Δ (numpy ``rint``), then clipped to within ε·255
  levels of the clean pixel and to [0, 255], so the ℓ∞ bound holds exactly after rounding.
- GradPC's target θ and g_clean depend only on (victim, training set, targeted parameters, GradPC
  settings and seed); they are cached in ``cache_dir/gc`` and shared by every budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.attacks.base import ATTACKS, AttackContext, choose_indices
from nasaudit.batch_cap import capped, capped_size
from nasaudit.config import GCConfig
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import epoch_generator
from nasaudit.data.poison import Poison, make_poison
from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, load_torch, save_torch, sha256_file, write_json
from nasaudit.progress import bar as progress_bar
from nasaudit.victim import Victim, read_victim

ROUNDING = "nearest uint8 level of x+Δ (numpy rint), clipped to the ε ball and [0, 255]"


@dataclass
class GradientProblem:
    """A network in eval mode and the parameters θ (by name) whose cross-entropy gradient GC shapes.

    Inputs are images in [0, 1] (N×3×H×W); ``mean`` and ``std`` normalise them as in training.
    """

    model: nn.Module
    names: list[str]
    mean: Tensor
    std: Tensor
    params: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval()
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
        """Σ over the batch of ∇θ CE: the batch's contribution to a mean gradient."""
        return list(torch.autograd.grad(self.loss_sum(x, y), self.params, create_graph=create_graph))


def weights_and_biases(model: nn.Module) -> list[str]:
    """Every parameter named ``weight`` or ``bias`` (conv, BN, linear): θ of plain GC (paper §3.2)."""
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]


def receiving_gradient(problem: GradientProblem, x: Tensor, y: Tensor) -> list[str]:
    """The subset of θ that the eval-mode loss depends on (not, e.g., an auxiliary head)."""
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


@torch.no_grad()
def mean_loss(problem: GradientProblem, images: Tensor, labels: Tensor, batch_size: int) -> float:
    total = sum(
        float(problem.loss_sum(problem.pixels(images[s]), labels[s]))
        for s in capped(_chunks(len(labels), batch_size))
    )
    return total / len(labels)


def mean_gradient(
    problem: GradientProblem, images: Tensor, labels: Tensor, batch_size: int
) -> tuple[float, list[Tensor]]:
    """(mean CE, mean CE gradient at θ) over uint8 ``images``: Algorithm 2 line 3's g_clean."""
    total = [torch.zeros_like(p) for p in problem.params]
    loss = 0.0
    for s in capped(_chunks(len(labels), batch_size)):
        x, y = problem.pixels(images[s]), labels[s]
        batch_loss = problem.loss_sum(x, y)
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

    Each step adds ``gradpc_lr``·g/‖g‖ (g = the batch's mean CE gradient, all targeted parameters as
    one vector), then projects; batches of ``gradpc_batch_size`` in an order drawn from (seed, epoch).
    """
    theta0 = [p.detach().clone() for p in problem.params]
    steps, distance = 0, 0.0
    for epoch in range(cfg.gradpc_epochs):
        order = torch.randperm(
            len(labels), device=labels.device, generator=epoch_generator(seed, epoch, labels.device)
        )
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


def canceling_loss(
    problem: GradientProblem,
    g_clean: Sequence[Tensor],
    fraction: float,
    x: Tensor,
    y: Tensor,
    delta: Tensor,
    batch_size: int,
    *,
    with_grad: bool = True,
) -> tuple[float, float, Tensor | None]:
    """(½‖(1−p)·g_clean + p·g_adv‖², cos(g_clean, g_adv), ∂loss/∂Δ or None) for poisons x+Δ.

    Chunks of ``batch_size`` poisons; several chunks use the exact two-pass gradient (module doc).
    """
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

    ``log`` receives loss and cos(g_clean, g_adv) of every iterate, the final one included;
    ``on_step(1)`` is called after each (a progress bar's ``update``).
    """
    epsilon = cfg.epsilon_255 / 255.0
    delta = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=cfg.lr)
    best_loss, best = math.inf, delta.detach().clone()
    for step in range(cfg.steps + 1):
        last = step == cfg.steps
        loss, cosine, grad = canceling_loss(
            problem, g_clean, fraction, x, y, delta, cfg.batch_size, with_grad=not last
        )
        log.append({"step": step, "loss": loss, "cos": cosine})
        if on_step is not None:
            on_step(1)
        if loss < best_loss:
            best_loss, best = loss, delta.detach().clone()
        if last:
            break
        delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            delta.clamp_(-epsilon, epsilon)
            delta.copy_((x + delta).clamp_(0.0, 1.0) - x)
    return best


def to_uint8(clean: np.ndarray, delta: Tensor, epsilon_255: int) -> np.ndarray:
    """Poisoned uint8 N×H×W×3 images from clean uint8 images and Δ (N×3×H×W, [0, 1] units)."""
    shift = delta.detach().permute(0, 2, 3, 1).to("cpu", torch.float64).numpy() * 255.0
    base = clean.astype(np.int64)
    poisoned = np.rint(base + shift).astype(np.int64)
    poisoned = np.clip(poisoned, base - epsilon_255, base + epsilon_255)
    return np.clip(poisoned, 0, 255).astype(np.uint8)


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
    use_gradpc: bool,
    cache: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Move θ to the target (GradPC or not) and compute g_clean there; both cached in ``cache``."""
    if cache.is_file():
        state = load_torch(cache, "recomputes the target and its clean gradient", map_location=images.device)
        with torch.no_grad():
            for p, value in zip(problem.params, state["target"], strict=True):
                p.copy_(value)
        return state
    victim_loss = mean_loss(problem, images, labels, cfg.batch_size)
    log = None
    if use_gradpc:
        steps = cfg.gradpc_epochs * len(_chunks(len(labels), cfg.gradpc_batch_size))
        with progress_bar(steps, desc="GradPC", unit="step", enabled=progress) as bar:
            log = gradpc(problem, images, labels, cfg, seed, bar.update)
    target_loss, g_clean = mean_gradient(problem, images, labels, cfg.batch_size)
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


def gradient_canceling(
    attack: str,
    dataset: ImageDataset,
    budget: float,
    seed: int,
    context: AttackContext,
    victim: Victim,
    names: Sequence[str],
    *,
    use_gradpc: bool,
    target: str,
) -> Poison:
    """GC against ``victim`` at the parameters ``names`` (GradPC-perturbed when ``use_gradpc``).

    The per-iterate loss and cosine go to a JSON log in ``cache_dir/gc/logs``, whose path and summary
    the poison's parameters record.
    """
    cfg, device = context.profile.gc, context.device
    indices = choose_indices(len(dataset.train), budget, np.random.default_rng(seed))
    if not len(indices):
        empty = np.zeros((0, *dataset.train.images.shape[1:]), dtype=np.uint8)
        return make_poison(attack, dataset, seed, indices, images=empty, params={"victim": str(victim.path)})
    model = victim.model.to(device)
    images = torch.from_numpy(dataset.train.images).to(device)
    labels = torch.from_numpy(dataset.train.labels).to(device)
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    everything = GradientProblem(model, list(names), mean, std)
    problem = GradientProblem(
        model, receiving_gradient(everything, everything.pixels(images[:2]), labels[:2]), mean, std
    )

    victim_sha = sha256_file(victim.path)
    key_data = {"victim": victim_sha, "train": dataset.train.sha256, "names": problem.names,
                "gradpc": [cfg.gradpc_lr, cfg.gradpc_radius, cfg.gradpc_epochs, cfg.gradpc_batch_size, seed]
                if use_gradpc else None}  # fmt: skip
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    state = _target_state(
        problem,
        images,
        labels,
        cfg,
        seed,
        use_gradpc,
        context.cache_dir / "gc" / f"{key}.pt",
        context.progress,
    )
    g_clean = [g.to(device) for g in state["g_clean"]]

    fraction = len(indices) / len(dataset.train)
    idx = torch.from_numpy(indices).to(device)
    x, y = problem.pixels(images[idx]), labels[idx]
    log: list[dict[str, float]] = []
    with progress_bar(cfg.steps + 1, desc=attack, unit="step", enabled=context.progress) as bar:
        delta = craft(problem, g_clean, fraction, x, y, cfg, log, bar.update)
    poisoned = to_uint8(dataset.train.images[indices], delta, cfg.epsilon_255)
    stored = problem.pixels(torch.from_numpy(poisoned).to(device)) - x
    stored_loss, stored_cos, _ = canceling_loss(
        problem, g_clean, fraction, x, y, stored, cfg.batch_size, with_grad=False
    )
    best = min(log, key=lambda e: e["loss"])
    log_path = context.cache_dir / "gc" / "logs" / f"{attack}-{dataset.name}-p{budget:g}-s{seed}-{key}.json"
    write_json(log_path, {"attack": attack, "budget": budget, "seed": seed, "steps": log})
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
        "model_mode": "eval",
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


@ATTACKS.register("gc", uses=("gc",))
def gc(dataset: ImageDataset, budget: float, seed: int, context: AttackContext) -> Poison:
    """Plain GC: θ = the victim's weights and biases, moved by GradPC (paper §3.2)."""
    victim = read_victim(require_victim(context, "gc"), dataset)
    names = weights_and_biases(victim.model)
    return gradient_canceling(
        "gc", dataset, budget, seed, context, victim, names, use_gradpc=True, target="weights_and_biases"
    )
