"""Gradient canceling's two costs, batched (ours) against a naive per-sample loop on the same network.

1. One GC step on a batch of poisons: the loss ½‖(1−p)·g_clean + p·g_adv‖² (the joint objective) and
   its gradient w.r.t. Δ. Ours takes g_adv of the whole batch in one forward/backward with
   ``create_graph``; the naive loop takes each poison's gradient separately and sums, which is the same
   only in eval mode (BN on running statistics), so the benchmark runs the victim in eval mode.
2. The whole-set clean gradient g_clean: batched sums against one backward per sample.
Both paths are checked to agree before they are timed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from nasaudit.attacks.gc import GradientProblem, canceling_loss, mean_gradient, weights_and_biases
from nasaudit.config import load_profile
from nasaudit.spaces.darts import EvalNetwork, load


def _naive_step(problem, g_clean, p, x, y, delta):  # type: ignore[no-untyped-def]
    d = delta.detach().requires_grad_()
    g_adv = [torch.zeros_like(c) for c in g_clean]
    for j in range(len(y)):
        grads = problem.gradient(x[j : j + 1] + d[j : j + 1], y[j : j + 1], create_graph=True)
        for total, g in zip(g_adv, grads, strict=True):
            total += g / len(y)
    loss = 0.5 * sum((((1 - p) * c + p * a) ** 2).sum() for c, a in zip(g_clean, g_adv, strict=True))
    (grad,) = torch.autograd.grad(loss, d)
    return float(loss.detach()), grad


def _naive_clean(problem, images, labels):  # type: ignore[no-untyped-def]
    total = [torch.zeros_like(q) for q in problem.params]
    for j in range(len(labels)):
        for t, g in zip(
            total, problem.gradient(problem.pixels(images[j : j + 1]), labels[j : j + 1]), strict=True
        ):
            t += g
    return [t / len(labels) for t in total]


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: torch.device) -> dict[str, float]:
    gpu = device.type == "cuda"
    channels, layers, poisons, clean, chunk = (36, 20, 128, 2048, 256) if gpu else (8, 5, 16, 64, 64)
    torch.manual_seed(0)
    model = EvalNetwork(load("pdarts"), channels, layers, 10, auxiliary=False).to(device)
    problem = GradientProblem(model, weights_and_biases(model), torch.full((3,), 0.5), torch.full((3,), 0.25))
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (clean, 32, 32, 3), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (clean,), generator=g).to(device)
    x, y = problem.pixels(images[:poisons]), labels[:poisons]
    delta = ((torch.rand(x.shape, generator=g) - 0.5) * (32 / 255)).to(device)
    order = torch.arange(clean, device=device)
    cfg = dataclasses.replace(load_profile("paper").gc, objective="joint", poison_batch_size=chunk)
    _, g_clean = mean_gradient(problem, images, labels, chunk, order)

    ours_loss, _, ours_grad = canceling_loss(problem, g_clean, 0.5, x, y, delta, cfg)
    naive_loss, naive_grad = _naive_step(problem, g_clean, 0.5, x, y, delta)
    assert abs(ours_loss - naive_loss) <= 1e-3 * abs(naive_loss) + 1e-9
    assert torch.allclose(ours_grad, naive_grad, rtol=1e-2, atol=1e-3 * float(naive_grad.abs().max()))
    naive_clean = _naive_clean(problem, images[:poisons], labels[:poisons])
    _, ours_clean = mean_gradient(problem, images[:poisons], labels[:poisons], chunk, order[:poisons])
    assert all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(ours_clean, naive_clean, strict=True)
    )

    repeats = 5 if gpu else 2
    step_ours = _timed(lambda: canceling_loss(problem, g_clean, 0.5, x, y, delta, cfg), device, repeats)
    step_naive = _timed(lambda: _naive_step(problem, g_clean, 0.5, x, y, delta), device, repeats)
    clean_ours = _timed(lambda: mean_gradient(problem, images, labels, chunk, order), device, repeats) / clean
    clean_naive = (
        _timed(lambda: _naive_clean(problem, images[:poisons], labels[:poisons]), device, 1) / poisons
    )
    print(
        f"[gc/{device.type}] P-DARTS eval net C={channels} L={layers}: GC step on {poisons} poisons "
        f"naive {step_naive * 1e3:8.1f} ms, nasaudit {step_ours * 1e3:8.1f} ms, "
        f"ratio {step_naive / step_ours:5.1f}x; clean gradient per sample naive {clean_naive * 1e3:7.2f} ms, "
        f"nasaudit {clean_ours * 1e3:7.2f} ms, ratio {clean_naive / clean_ours:5.1f}x "
        f"(whole CIFAR-10 training set: {clean_ours * 50_000:6.1f} s)"
    )
    return {"step_ratio": step_naive / step_ours, "clean_ratio": clean_naive / clean_ours}


def main() -> None:
    run(torch.device("cpu"))
    if torch.cuda.is_available():
        run(torch.device("cuda"))


if __name__ == "__main__":
    from nasaudit import verbosity
    from nasaudit.threads import configure

    verbosity.configure()  # the thread choice is logged
    configure()  # as every nasaudit job: NASAUDIT_THREADS / OMP_NUM_THREADS, else the usable CPUs
    main()
