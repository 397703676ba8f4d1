"""What a cost model is given: a timer of networks on a device, and what every cost model shares.

A registered algorithm's, attack's or defense's cost model (``NasAlgorithm.cost``, ``Attack.cost``,
``Defense.cost``) times the networks its stage runs at the profile's sizes with a ``Timer`` and
multiplies by the images the stage pushes through them; ``grid.plan`` sums them into a grid's estimate.
This module imports no algorithm, so every algorithm's module can import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nasaudit.config import Profile
from nasaudit.precision import autocast
from nasaudit.proxies.ntk import ntk_cond

NUM_CLASSES = 10  # the class count barely changes a step's time; the head is one linear layer
IMAGE = (3, 32, 32)  # what every stage feeds its networks (mbv3 networks upscale inside forward)
CPU_PROBE = 2  # first probe batch on a CPU; grown while a step is too short to time
CPU_MIN_SECONDS = 0.05  # below this a CPU step is per-call overhead more than work per image


class Timer:
    """Seconds per image of a network's training step or forward pass at a batch size, measured once
    (and seconds per κ_NTK, TE-NAS's score).

    A GPU is timed at the real batch size, the fastest of a few steps after a warm-up one. A CPU,
    whose time grows about linearly with the batch, is timed on a small probe batch (the faster of two
    steps), grown up to the real batch while a step takes under ``CPU_MIN_SECONDS``: planning a
    paper-sized grid takes seconds, and a tiny network is not charged its per-call overhead per image.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.warmup, self.steps = (1, 3) if device.type == "cuda" else (0, 2)
        self._cache: dict[tuple[str, int, str], float] = {}

    def per_image(
        self,
        network: str,
        build: Callable[[], nn.Module],
        batch: int,
        *,
        shape: tuple[int, ...] = IMAGE,
        precision: str = "fp32",
    ) -> float:
        """A training step (forward, backward, SGD update) in the stage's ``precision``; ``network``
        names what ``build`` returns."""
        return self._timed(network, build, batch, shape=shape, train=True, precision=precision)

    def forward_per_image(
        self,
        network: str,
        build: Callable[[], nn.Module],
        batch: int,
        *,
        shape: tuple[int, ...] = IMAGE,
        precision: str = "fp32",
    ) -> float:
        """A forward pass without gradients, in eval mode (scoring, denoising, feature extraction)."""
        return self._timed(network, build, batch, shape=shape, train=False, precision=precision)

    def kappa(self, network: str, build: Callable[[], nn.Module], batch: int) -> float:
        """Seconds of one κ_NTK of ``batch`` images (``ntk_cond``, batched as the search runs it), timed
        at that batch: its Jacobian is one backward per image of the whole batch, so no smaller batch
        stands in for it."""

        def measure() -> float:
            net, x = build().to(self.device), torch.randn(batch, *IMAGE, device=self.device)
            return self._fastest(lambda: ntk_cond(net, x))

        return self._once((network, batch, "kappa"), measure)

    def _timed(
        self,
        network: str,
        build: Callable[[], nn.Module],
        batch: int,
        *,
        shape: tuple[int, ...],
        train: bool,
        precision: str,
    ) -> float:
        """Seconds per image of a training step (``train``) or a forward pass: the one measurement both
        public methods call, and what a timer that records or replays times overrides
        (``preflight.timings``)."""
        probe = batch if self.device.type == "cuda" else min(batch, CPU_PROBE)
        seconds = self._probe(network, build, probe, shape, train, precision)
        while probe < batch and seconds * probe < CPU_MIN_SECONDS:
            probe = min(batch, probe * 8)
            seconds = self._probe(network, build, probe, shape, train, precision)
        return seconds

    def _probe(
        self,
        network: str,
        build: Callable[[], nn.Module],
        probe: int,
        shape: tuple[int, ...],
        train: bool,
        precision: str,
    ) -> float:
        """One measurement per (network, probe batch, kind, precision), whichever batch sizes ask for it."""
        return self._once(
            (network, probe, f"{'train' if train else 'forward'}/{precision}"),
            lambda: self._measure(build().to(self.device).train(train), probe, shape, train, precision),
        )

    def _once(self, key: tuple[str, int, str], measure: Callable[[], float]) -> float:
        """``measure()`` on one thread the first time ``key`` is asked for, the cached value after."""
        if key not in self._cache:
            with _one_thread(self.device):
                self._cache[key] = measure()
        return self._cache[key]

    def _measure(
        self, model: nn.Module, probe: int, shape: tuple[int, ...], train: bool, precision: str
    ) -> float:
        x = torch.randn(probe, *shape, device=self.device)
        y = torch.randint(0, NUM_CLASSES, (probe,), device=self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if train else None

        def step() -> None:
            with autocast(self.device, precision):
                if optimizer is None:
                    with torch.no_grad():
                        model(x)
                else:
                    _train_step(model, optimizer, x, y)

        return self._fastest(step) / probe

    def _fastest(self, step: Callable[[], Any]) -> float:
        """Seconds of the fastest of ``steps`` calls after ``warmup`` ones (which allocate and
        autotune cuDNN)."""
        times = []
        for _ in range(self.warmup + self.steps):
            _sync(self.device)
            start = time.perf_counter()
            step()
            _sync(self.device)
            times.append(time.perf_counter() - start)
        return min(times[self.warmup :])


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    output = model(x)
    loss = sum(
        F.cross_entropy(o, y) for o in (output if isinstance(output, tuple) else (output,)) if o is not None
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """CPU timings on one thread: on 2 busy shared cores two threads measured 5–30× slower and erratic."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded_candidates(ops: Sequence[str], count: int, seed: int) -> dict[str, list[list[str]]]:
    """``count`` of ``ops`` on every edge of both DARTS cell types. Which ops survive pruning is a
    search's outcome, so a seeded draw of as many stands in for them."""
    from nasaudit.spaces.darts import CELL_TYPES, EDGES

    rng = np.random.default_rng(seed)
    draw = [set(rng.choice(list(ops), count, replace=False)) for _ in range(len(CELL_TYPES) * len(EDGES))]
    edges = [[op for op in ops if op in chosen] for chosen in draw]
    return {cell: edges[i * len(EDGES) : (i + 1) * len(EDGES)] for i, cell in enumerate(CELL_TYPES)}


@dataclass(frozen=True)
class VictimNet:
    """The network a GC poison differentiates: its timer name, victim kind and constructor."""

    name: str
    kind: str  # a nasaudit.attacks.victim.VICTIMS kind, which decides NAS-specific GC's target
    build: Callable[[], nn.Module]


def surrogate_seconds(profile: Profile, n_train: int, timer: Timer) -> float:
    """Training the CIFAR ResNet-18 of ``[surrogate]`` once on ``n_train`` images (CLF's surrogate, and
    loss-based sanitisation's)."""
    from nasaudit.models import MODELS

    cfg = profile.surrogate
    per_image = timer.per_image(
        "surrogate",
        lambda: MODELS.get("resnet18_cifar")(None, NUM_CLASSES, profile),
        cfg.batch_size,
        precision=cfg.precision,
    )
    return cfg.epochs * n_train * per_image
