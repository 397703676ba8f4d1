"""Time NSGANetV2's stages at paper sizes and estimate a paper-profile search (CIFAR-10) from them.

A search is (1) progressive shrinking of our supernet: per step a teacher forward and
``subnets_per_step`` subnet forward/backward passes; (2) candidate evaluations: per architecture
5 fine-tuning epochs and one pass over the 5000 held-out images; (3) per iteration, surrogate
selection (10-fold CV of every predictor, then a refit) and NSGA-II, on the CPU. Steps of (1) and (2)
are timed on width-1.0 networks at resolution 224 (the middle of 192–256; random subnets for the
elastic phases and the candidates); on the CPU at a small batch, scaled linearly to the profile's
batch, on a GPU at the profile's batch. (3) is timed on a synthetic archive of the final size. The
estimate multiplies by the paper profile's counts. Wall and CPU time are both printed: on a shared
machine the CPU time (one thread) is what an idle core would take.

Run: ``python -m benchmarks.bench_nsganetv2``
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from nasaudit.config import load_profile
from nasaudit.nas import nsganetv2 as nsga
from nasaudit.spaces.mbv3 import FlopsCounter, MBV3SuperNet, channel_plan, extreme_arch, random_arch

TRAIN_SIZE, CLASSES, RESOLUTION = 45_000, 10, 224


def _timed(step: Callable[[], object], device: torch.device, repeats: int = 2) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, after a warm-up call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats


def _train_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        return loss

    return step


def _network_costs(device: torch.device, batch: int) -> dict[str, tuple[float, float]]:
    """Per-image (wall, CPU) seconds of the steps the search is made of."""
    profile = load_profile("paper")
    torch.manual_seed(0)
    supernet = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), CLASSES).to(device)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    rng = np.random.default_rng(0)
    subnets = [random_arch(rng, [RESOLUTION]) for _ in range(3)]
    costs = {}

    supernet.set_active(extreme_arch([RESOLUTION], largest=True))
    costs["full network, train step"] = _timed(_train_step(supernet, x, y), device)
    with torch.no_grad():
        costs["full network, teacher forward"] = _timed(lambda: supernet(x), device)

    def elastic() -> None:
        for arch in subnets:
            supernet.set_active(arch)
            _train_step(supernet, x, y)()

    wall, cpu = _timed(elastic, device, repeats=1)
    costs["random subnet, train step"] = (wall / len(subnets), cpu / len(subnets))
    standalone = [supernet.extract(a) for a in subnets]

    def finetune() -> None:
        for net in standalone:
            _train_step(net, x, y)()

    wall, cpu = _timed(finetune, device, repeats=1)
    costs["candidate, fine-tune step"] = (wall / len(subnets), cpu / len(subnets))

    def validate() -> None:
        with torch.no_grad():
            for net in standalone:
                net.eval()(x)

    wall, cpu = _timed(validate, device, repeats=1)
    costs["candidate, validation forward"] = (wall / len(subnets), cpu / len(subnets))
    return {k: (w / batch, c / batch) for k, (w, c) in costs.items()}


def _search_overhead() -> tuple[float, float]:
    """(wall, CPU) seconds of the last iteration's surrogate selection and NSGA-II (final archive size)."""
    cfg = load_profile("paper").nsganetv2
    n = cfg.initial + (cfg.iterations - 1) * cfg.per_iteration
    resolutions = load_profile("paper").mbv3.resolutions
    rng = np.random.default_rng(0)
    archs = [random_arch(rng, resolutions) for _ in range(n)]
    flops = FlopsCounter(channel_plan(1.0), CLASSES)
    X = np.stack([nsga.encode(a, resolutions) for a in archs])
    mflops = np.array([flops(a) / 1e6 for a in archs])
    errors = 10 - 3 * mflops / mflops.max() + rng.normal(0, 0.3, n)
    start, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(1):
        winner = nsga.select_surrogate(X, errors, cfg.surrogates, cfg, 0)["winner"]
        model = nsga.fit_surrogate(winner, X, errors, cfg, 0)
        front = nsga.non_dominated(np.column_stack([errors, mflops]))
        nsga.run_nsga2(model.predict, flops, list(resolutions), X[front], cfg, 0)
    return time.perf_counter() - start, time.process_time() - cpu


def run(device: torch.device) -> dict[str, float]:
    """Per-image costs of each network step (ms), the paper search's hours they add up to, and (CPU) the
    surrogates + NSGA-II seconds of one iteration."""
    profile = load_profile("paper")
    cfg = profile.nsganetv2
    shrink = cfg.supernet
    evaluations = cfg.initial + cfg.iterations * cfg.per_iteration
    train_images = TRAIN_SIZE - cfg.val_size
    batch = 4 if device.type == "cpu" else shrink.batch_size
    size = f"w{profile.mbv3.width_mult}, {RESOLUTION}²"
    print(f"NSGANetV2 at paper sizes ({size}) on {device}, batch {batch}:")
    cost = _network_costs(device, batch)
    result = {}
    for name, (wall, cpu) in cost.items():
        print(f"  {name:32s} {1e3 * wall:8.2f} ms wall, {1e3 * cpu:8.2f} ms CPU per image")
        result[f"{name} (ms wall)"] = 1e3 * wall
    estimates = {}
    for k in (0, 1):
        full = shrink.phases[0].epochs * cost["full network, train step"][k]
        teacher, subnet = cost["full network, teacher forward"][k], cost["random subnet, train step"][k]
        elastic = sum(p.epochs * (teacher + p.subnets_per_step * subnet) for p in shrink.phases[1:])
        evaluate = cfg.finetune.epochs * cost["candidate, fine-tune step"][k] * train_images
        evaluate += cost["candidate, validation forward"][k] * cfg.val_size
        estimates[k] = ((full + elastic) * train_images, evaluations * evaluate)
    for label, k in (("wall", 0), ("CPU", 1)):
        supernet, evaluate = estimates[k]
        print(f"  paper profile ({label}): supernet {supernet / 3600:8.1f} h, {evaluations} evaluations "
              f"{evaluate / 3600:8.1f} h")  # fmt: skip
        result.update({f"supernet_{label}_h": supernet / 3600, f"evaluations_{label}_h": evaluate / 3600})
    if device.type == "cpu":
        wall, cpu = _search_overhead()
        print(
            f"  surrogates + NSGA-II, last iteration: {wall:.1f} s wall, {cpu:.1f} s CPU (×{cfg.iterations})"
        )
        result.update(surrogates_nsga2_wall_s=wall, surrogates_nsga2_cpu_s=cpu)
    return result


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
