"""What a grid will cost before it runs: task counts per stage and an estimate of GPU-hours.

Each stage's cost model times, on this machine, the networks the stage runs at the profile's sizes
(a training step, or a forward pass where the stage only scores) and multiplies by the images the
stage pushes through them as the profile configures it: epochs × training set for a training, the
candidate evaluations of a search (TE-NAS's κ_NTK timed per call, as the search computes it), steps
× poisons for gradient canceling. On a machine without a GPU the CPU timings are converted with the
profile's reference GPU throughput of the retraining network, so only their ratios matter; they are
taken on one thread, which a busy shared machine slows far less than threads that wait on each
other. It is an estimate: data loading, CPU-side work (surrogates, NSGA-II, KMeans) and
reporting-only evaluation are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nasaudit.config import PDartsConfig, Profile, TenasConfig
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Grid, Layout, Task
from nasaudit.grid.stages import is_done
from nasaudit.precision import autocast
from nasaudit.proxies.ntk import ntk_cond
from nasaudit.registry import Registry

if TYPE_CHECKING:
    from nasaudit.spaces.mbv3 import MBV3Arch

# Training-set sizes of the downloadable datasets, for planning on a machine that does not have them
# yet (SPEC §1: CIFAR 50k; MNIST/FashionMNIST 60k; SVHN's train split 73,257).
PUBLISHED_TRAIN_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "mnist": 60_000,
    "fashionmnist": 60_000,
    "svhn": 73_257,
}
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
        return self._timed(network, build, batch, shape, True, precision)

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
        return self._timed(network, build, batch, shape, False, precision)

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
        shape: tuple[int, ...],
        train: bool,
        precision: str,
    ) -> float:
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


# Cost models: seconds on the timer's device, per task and (second value) once for all the tasks that
# share the work: a search's per dataset, a poison's per (dataset, attack, victim algorithm, trial)
# (a GC poison's GradPC target and clean gradient, CLF's surrogate), which every budget reuses.
SearchCost = Callable[[Profile, int, Timer], tuple[float, float]]  # (profile, training-set size, timer)
PoisonCost = Callable[[Profile, Task, int, Timer], tuple[float, float]]  # task: attack, budget, victim
DefenseCost = Callable[[Profile, int, Timer], float]  # (profile, poisoned training-set size, timer)
SEARCH_COSTS: Registry[SearchCost] = Registry("search cost model")
POISON_COSTS: Registry[PoisonCost] = Registry("poison cost model")
DEFENSE_COSTS: Registry[DefenseCost] = Registry("defense cost model")
# The architecture a space's retraining is timed with.
REFERENCE_ARCHITECTURES: Registry[Callable[[Profile], Any]] = Registry("reference architecture")


# --- retraining ------------------------------------------------------------------------------------


@REFERENCE_ARCHITECTURES.register("darts")
def _darts_reference(profile: Profile) -> Any:
    """The P-DARTS genotype, the reference size of SPEC §3."""
    from nasaudit.spaces.darts import load

    return load("pdarts")


@REFERENCE_ARCHITECTURES.register("mbv3")
def _mbv3_reference(profile: Profile) -> Any:
    """The largest network at the largest resolution: an upper bound of NSGANetV2's "large" pick."""
    from nasaudit.spaces.mbv3 import extreme_arch

    return extreme_arch(profile.mbv3.resolutions, largest=True)


def _retrain_network(profile: Profile, space: str) -> nn.Module:
    """The space's retraining network of its reference architecture.

    Weights never change a timing, so an mbv3 network starts from scratch rather than reading the
    inherited weights a search would have written.
    """
    from nasaudit.models import MODELS

    scratch = replace(profile, mbv3=replace(profile.mbv3, init="scratch"))
    return MODELS.get(space)(REFERENCE_ARCHITECTURES.get(space)(profile), NUM_CLASSES, scratch)


def retrain_seconds(profile: Profile, space: str, n_train: int, timer: Timer) -> float:
    from nasaudit.models import train_config

    return train_config(space, profile).epochs * n_train * _retrain_per_image(profile, space, timer)


def _retrain_per_image(profile: Profile, space: str, timer: Timer) -> float:
    from nasaudit.models import train_config

    cfg = train_config(space, profile)
    build = partial(_retrain_network, profile, space)
    return timer.per_image(f"retrain/{space}", build, cfg.batch_size, precision=cfg.precision)


# --- searches --------------------------------------------------------------------------------------


@SEARCH_COSTS.register("random")
def _random_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """Nothing: sampling a genotype; its retraining is counted with the other retrains."""
    return 0.0, 0.0


@SEARCH_COSTS.register("random_mbv3")
def _random_mbv3_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """With inherited weights (``[mbv3] init = "search"``), one shrinking supernet per dataset."""
    shared = _shrinking_seconds(profile, n_train, timer) if profile.mbv3.init == "search" else 0.0
    return 0.0, shared


@SEARCH_COSTS.register("robot")
def _robot_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """Queries train on half of the data; scoring the pool costs about two passes per proxy (SPEC §6)."""
    from nasaudit.spaces.darts import EvalNetwork, random_genotype

    cfg = profile.robot
    genotype = random_genotype(np.random.default_rng(0))

    def build() -> nn.Module:
        return EvalNetwork(genotype, cfg.channels, cfg.layers, NUM_CLASSES)

    query = timer.per_image("robot", build, cfg.query.batch_size, precision=cfg.query.precision)
    proxy = timer.per_image("robot", build, cfg.proxy_batch)
    seconds = (
        cfg.queries * cfg.query.epochs * (n_train // 2) * query
        + cfg.pool_size * len(cfg.proxies) * 2 * cfg.proxy_batch * proxy
    )
    return seconds, 0.0


def _seeded_candidates(ops: Sequence[str], count: int, seed: int) -> dict[str, list[list[str]]]:
    """``count`` of ``ops`` on every edge of both cell types. Which ops survive pruning is the search's
    outcome, so a seeded draw of as many stands in for them."""
    from nasaudit.spaces.darts import CELL_TYPES, EDGES

    rng = np.random.default_rng(seed)
    draw = [set(rng.choice(list(ops), count, replace=False)) for _ in range(len(CELL_TYPES) * len(EDGES))]
    edges = [[op for op in ops if op in chosen] for chosen in draw]
    return {cell: edges[i * len(EDGES) : (i + 1) * len(EDGES)] for i, cell in enumerate(CELL_TYPES)}


def _pdarts_supernet(cfg: PDartsConfig, stage: int) -> nn.Module:
    """The search network of P-DARTS's ``stage``: its cells and candidate-op count per edge (SPEC §4)."""
    from nasaudit.nas.pdarts import supernet_kwargs
    from nasaudit.spaces.darts import PRIMITIVES, SuperNet

    candidates = _seeded_candidates(PRIMITIVES, [len(PRIMITIVES), *cfg.keep_ops][stage], stage)
    return SuperNet(
        **supernet_kwargs(cfg, stage, NUM_CLASSES, 0.0),
        candidates_normal=candidates["normal"],
        candidates_reduce=candidates["reduce"],
    )


@SEARCH_COSTS.register("pdarts")
def _pdarts_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """Per stage, on its supernet: epochs of weight steps over the weight half, α steps after warm-up."""
    cfg = profile.pdarts
    half = int(np.floor(cfg.train_portion * n_train))  # one arch-val batch per weight batch
    seconds = 0.0
    for stage in range(len(cfg.layers)):
        build = partial(_pdarts_supernet, cfg, stage)
        step = timer.per_image(f"pdarts/stage{stage}", build, cfg.batch_size, precision=cfg.precision)
        seconds += (cfg.epochs + cfg.epochs - cfg.warmup_epochs) * half * step
    return seconds, 0.0


def _tenas_net(cfg: TenasConfig, ops: int, stem: bool) -> nn.Module:
    """TE-NAS's scoring net with ``ops`` candidates per edge (``stem=False``: the linear-region net)."""
    from nasaudit.nas.tenas import scoring_net

    return scoring_net(_seeded_candidates(cfg.ops, ops, ops), cfg, NUM_CLASSES, stem)


@SEARCH_COSTS.register("tenas")
def _tenas_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """Each round's candidates × repeats × (κ_NTK + linear regions) of the net with and without one."""
    from nasaudit.nas.tenas import OpRound, plan

    cfg = profile.tenas
    crops = (1, cfg.lr_input_size, cfg.lr_input_size)
    seconds = 0.0
    for round_ in plan(cfg):
        ops = round_.ops if isinstance(round_, OpRound) else 1  # the edge rounds: one op per edge
        kappa = timer.kappa(f"tenas/ntk{ops}", partial(_tenas_net, cfg, ops, True), cfg.batch_size)
        regions = timer.forward_per_image(
            f"tenas/regions{ops}", partial(_tenas_net, cfg, ops, False), cfg.lr_batch_size, shape=crops
        )
        seconds += round_.size * cfg.repeats * 2 * (kappa + cfg.lr_batches * cfg.lr_batch_size * regions)
    return seconds, 0.0


def _middle(values: Sequence[int]) -> int:
    return sorted(values)[len(values) // 2]


def _middle_arch(
    kernels: Sequence[int], depths: Sequence[int], expands: Sequence[int], resolutions: Sequence[int]
) -> MBV3Arch:
    """The middle choice everywhere: the typical cost of networks drawn uniformly from those choices."""
    from nasaudit.spaces.mbv3.space import N_LAYERS, N_STAGES, MBV3Arch

    return MBV3Arch(
        _middle(resolutions),
        (_middle(depths),) * N_STAGES,
        (_middle(kernels),) * N_LAYERS,
        (_middle(expands),) * N_LAYERS,
    )


def _mbv3_supernet(profile: Profile, arch: MBV3Arch) -> nn.Module:
    """NSGANetV2's supernet running ``arch``."""
    from nasaudit.spaces.mbv3 import MBV3SuperNet, channel_plan

    net = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), NUM_CLASSES, profile.nsganetv2.supernet.dropout)
    net.set_active(arch)
    return net


def _shrinking_seconds(profile: Profile, n_train: int, timer: Timer) -> float:
    """Progressive shrinking on ``n_train`` images, or nothing when ``[nsganetv2.supernet] weights`` is set.

    Per phase: epochs × images × (subnets_per_step steps of the phase's middle subnet + the full
    network's forward as the teacher, from the second phase on when ``kd_ratio`` > 0).
    """
    from nasaudit.spaces.mbv3 import extreme_arch

    cfg, resolutions = profile.nsganetv2.supernet, profile.mbv3.resolutions
    if cfg.weights:
        return 0.0
    full = extreme_arch([_middle(resolutions)], largest=True)
    build = partial(_mbv3_supernet, profile, full)
    teacher = timer.forward_per_image("mbv3/teacher", build, cfg.batch_size, precision=cfg.precision)
    seconds = 0.0
    for i, phase in enumerate(cfg.phases):
        subnet = _middle_arch(phase.kernels, phase.depths, phase.expands, resolutions)
        build = partial(_mbv3_supernet, profile, subnet)
        step = timer.per_image(f"mbv3/phase{i}", build, cfg.batch_size, precision=cfg.precision)
        distil = teacher if i > 0 and cfg.kd_ratio > 0 else 0.0
        seconds += phase.epochs * n_train * (phase.subnets_per_step * step + distil)
    return seconds


def _candidate_network(profile: Profile) -> nn.Module:
    """A candidate as NSGANetV2 fine-tunes it: the space's middle network, extracted standalone."""
    from nasaudit.spaces.mbv3 import DEPTHS, EXPANDS, KERNELS, MBV3Net, channel_plan

    arch = _middle_arch(KERNELS, DEPTHS, EXPANDS, profile.mbv3.resolutions)
    plan = channel_plan(profile.mbv3.width_mult)
    return MBV3Net(arch, plan, NUM_CLASSES, profile.mbv3.dropout)


@SEARCH_COSTS.register("nsganetv2")
def _nsganetv2_search(profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
    """Per evaluated candidate: fine-tuning, BN recalibration and validation; shared by every search of
    the dataset, its supernet on the clean training set (counted again for the random baseline's)."""
    cfg = profile.nsganetv2
    n_search = max(n_train - cfg.val_size, 0)
    build = partial(_candidate_network, profile)
    step = timer.per_image(
        "nsganetv2/candidate", build, cfg.finetune.batch_size, precision=cfg.finetune.precision
    )
    forward = timer.forward_per_image("nsganetv2/candidate", build, cfg.finetune.batch_size)
    evaluation = cfg.finetune.epochs * n_search * step + (cfg.bn_calibration + cfg.val_size) * forward
    evaluations = cfg.initial + cfg.iterations * cfg.per_iteration
    return evaluations * evaluation, _shrinking_seconds(profile, n_train, timer)


# --- poisons ---------------------------------------------------------------------------------------


def _free(profile: Profile, task: Task, n_train: int, timer: Timer) -> tuple[float, float]:
    """Nothing: a few seconds of numpy on the CPU."""
    return 0.0, 0.0


POISON_COSTS.register("rlf")(_free)
POISON_COSTS.register("gaussian")(_free)


def _surrogate_seconds(profile: Profile, n_train: int, timer: Timer) -> float:
    """Training the CIFAR ResNet-18 of ``[surrogate]`` once on ``n_train`` images."""
    from nasaudit.models import MODELS

    cfg = profile.surrogate
    per_image = timer.per_image(
        "surrogate",
        lambda: MODELS.get("resnet18_cifar")(None, NUM_CLASSES, profile),
        cfg.batch_size,
        precision=cfg.precision,
    )
    return cfg.epochs * n_train * per_image


@POISON_COSTS.register("clf")
def _clf(profile: Profile, task: Task, n_train: int, timer: Timer) -> tuple[float, float]:
    """One surrogate ResNet-18 (shared by every budget), then ranking is one pass (not counted)."""
    return 0.0, _surrogate_seconds(profile, n_train, timer)


@dataclass(frozen=True)
class VictimNet:
    """The network a GC poison differentiates: its timer name, victim kind and constructor."""

    name: str
    kind: str  # a nasaudit.victim.VICTIMS kind, which decides NAS-specific GC's target
    build: Callable[[], nn.Module]


# Searches that leave their own victim (P-DARTS: the converged last-stage supernet, SPEC §2); any other
# algorithm's victim is its space's retrained network.
SEARCH_VICTIMS: Registry[Callable[[Profile], VictimNet]] = Registry("search victim")


@SEARCH_VICTIMS.register("pdarts")
def _pdarts_victim(profile: Profile) -> VictimNet:
    last = len(profile.pdarts.layers) - 1
    return VictimNet(f"pdarts/stage{last}", "darts_supernet", partial(_pdarts_supernet, profile.pdarts, last))


def victim_net(profile: Profile, algorithm: str) -> VictimNet:
    from nasaudit.nas import NAS
    from nasaudit.victim import JOB_VICTIMS

    if algorithm in SEARCH_VICTIMS:
        return SEARCH_VICTIMS.get(algorithm)(profile)
    space = NAS.get(algorithm).space
    return VictimNet(
        f"retrain/{space}", JOB_VICTIMS.get(space).kind, partial(_retrain_network, profile, space)
    )


# Training steps one GC step costs per poison. The per-batch objective and a joint one whose poisons
# fit one batch differentiate each batch's gradient once more (forward, backward with create_graph,
# the backward of that ≈ two steps); a joint objective over several batches adds a plain gradient
# pass first (≈ one step) for the exact two-pass gradient (attacks/gc.py).
GC_PASSES_ONE_PASS, GC_PASSES_TWO_PASS = 2, 3


def _gc_seconds(profile: Profile, task: Task, n_train: int, timer: Timer) -> tuple[float, float]:
    """GC on the task's victim: the steps on its poisons; shared by its budgets, GradPC and g_clean."""
    cfg, victim = profile.gc, victim_net(profile, task.algorithm)
    step = timer.per_image(victim.name, victim.build, cfg.poison_batch_size)
    clean_step = timer.per_image(victim.name, victim.build, cfg.gradpc_batch_size)
    gradpc = cfg.gradpc_epochs * n_train * clean_step if cfg.gradpc_radius > 0 else 0.0
    poisons = round(n_train * task.budget)
    two_pass = cfg.objective == "joint" and poisons > cfg.poison_batch_size
    factor = GC_PASSES_TWO_PASS if two_pass else GC_PASSES_ONE_PASS
    return cfg.steps * poisons * factor * step, gradpc + n_train * clean_step


@POISON_COSTS.register("gc")
def _gc(profile: Profile, task: Task, n_train: int, timer: Timer) -> tuple[float, float]:
    """GC at the victim's weights and biases moved by GradPC."""
    return _gc_seconds(profile, task, n_train, timer)


@POISON_COSTS.register("nas_gc")
def _nas_gc(profile: Profile, task: Task, n_train: int, timer: Timer) -> tuple[float, float]:
    """GC at what the victim's kind targets (P-DARTS's α, otherwise weights), moved by GradPC."""
    return _gc_seconds(profile, task, n_train, timer)


# --- defenses --------------------------------------------------------------------------------------


@DEFENSE_COSTS.register("sanitize")
def _sanitize(profile: Profile, n_train: int, timer: Timer) -> float:
    """A ResNet-18 trained on each poisoned set; scoring the losses is one more pass (not counted)."""
    return _surrogate_seconds(profile, n_train, timer)


# google/ddpm-cifar10-32's UNet (its config.json). Built with random weights, it costs what the
# pretrained one does and needs no download; a different [defenses.denoise] model is timed as this one.
DDPM_CIFAR10_UNET: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
}


class _OneShotDenoiser(nn.Module):
    """The UNet called as the denoiser calls it: one noise prediction per image at one timestep."""

    def __init__(self) -> None:
        from diffusers import UNet2DModel

        super().__init__()
        self.unet = UNet2DModel(**DDPM_CIFAR10_UNET)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x, torch.zeros(len(x), dtype=torch.long, device=x.device)).sample


@DEFENSE_COSTS.register("denoise")
def _denoise(profile: Profile, n_train: int, timer: Timer) -> float:
    """One UNet forward per training image (every image is denoised)."""
    batch = profile.defenses.denoise.batch_size
    return n_train * timer.forward_per_image("denoise", _OneShotDenoiser, batch)


@DEFENSE_COSTS.register("relabel")
def _relabel(profile: Profile, n_train: int, timer: Timer) -> float:
    """One feature-extractor forward per training image at its input size (random weights, no download)."""
    from nasaudit.defenses.relabel import feature_extractor

    cfg = profile.defenses.relabel
    build = partial(feature_extractor, replace(cfg, weights=""))
    shape = (3, cfg.image_size, cfg.image_size)
    return n_train * timer.forward_per_image(f"relabel/{cfg.model}", build, cfg.batch_size, shape=shape)


# --- the estimate ----------------------------------------------------------------------------------


@dataclass
class StageEstimate:
    stage: str
    tasks: int
    done: int
    seconds: float  # of the tasks left, on the timer's device
    unestimated: list[str] = field(default_factory=list)  # "what (n tasks)" without a cost model


@dataclass
class Estimate:
    device: str
    gpu_factor: float  # GPU seconds per second measured here (1 on a GPU)
    stages: list[StageEstimate]

    @property
    def gpu_hours(self) -> float:
        return sum(s.seconds for s in self.stages) * self.gpu_factor / 3600

    def render(self, name: str, profile: str) -> str:
        unit = "GPU-hours" if self.device == "cuda" else f"{self.device}-hours"
        lines = [
            f"{name} with profile {profile!r}: {sum(s.tasks for s in self.stages)} tasks",
            f"{'stage':<8} {'tasks':>7} {'done':>7} {unit + ' left':>16}",
        ]
        for s in self.stages:
            lines.append(f"{s.stage:<8} {s.tasks:>7} {s.done:>7} {s.seconds / 3600:>16,.1f}")
        lines.append(
            f"ESTIMATE: about {self.gpu_hours:,.0f} GPU-hours left (each stage's networks timed on "
            f"{self.device} at the profile's sizes × the images it processes"
            + ("" if self.device == "cuda" else ", converted at the profile's reference GPU rate")
            + "; data loading and CPU-side work not counted)"
        )
        for s in self.stages:
            if s.unestimated:
                lines.append(f"not estimated ({s.stage}, no cost model): {', '.join(s.unestimated)}")
        return "\n".join(lines)


def train_size(dataset: str, data_root: Path | None, subset: int = 0) -> int:
    """The grid's training-set size: the data's when present, else the published one; at most ``subset``."""
    from nasaudit.data.datasets import load_dataset

    try:
        size = len(load_dataset(dataset, data_root).train)
    except NasauditError:
        if dataset not in PUBLISHED_TRAIN_SIZES:
            raise
        size = PUBLISHED_TRAIN_SIZES[dataset]
    return min(size, subset) if subset > 0 else size


@dataclass(frozen=True)
class _Charge:
    """What one task left costs: the cost model it needs and what it shares with other tasks."""

    what: str  # the cost model's name in ``registry``
    registry: Registry[Any]
    seconds: Callable[[Any], tuple[float, float]]  # cost model -> (this task, shared)
    share: tuple[Any, ...]  # tasks with an equal ``share`` pay the shared time once


Sizes = dict[str, int]  # training-set size per dataset


def _poison(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    n, share = sizes[task.dataset], (task.dataset, task.attack, task.algorithm, task.trial)
    return _Charge(task.attack, POISON_COSTS, lambda cost: cost(profile, task, n, timer), share)


def _defend(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    n = sizes[task.dataset]
    return _Charge(task.defense, DEFENSE_COSTS, lambda cost: (cost(profile, n, timer), 0.0), ())


def _search(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    data = task.key.searched_on
    return _Charge(task.algorithm, SEARCH_COSTS, lambda cost: cost(profile, sizes[data], timer), (data,))


def _retrain(task: Task, profile: Profile, sizes: Sizes, timer: Timer) -> _Charge:
    from nasaudit.nas import NAS

    n, space = sizes[task.dataset], NAS.get(task.algorithm).space
    return _Charge(
        space, REFERENCE_ARCHITECTURES, lambda _: (retrain_seconds(profile, space, n, timer), 0.0), ()
    )


# The stages that cost device time; a victim is picked from finished jobs.
CHARGES: dict[str, Callable[[Task, Profile, Sizes, Timer], _Charge]] = {
    "poison": _poison,
    "defend": _defend,
    "search": _search,
    "retrain": _retrain,
}


def estimate(
    grid: Grid, profile: Profile, data_root: Path | None, device: torch.device | None = None
) -> Estimate:
    """Count the grid's tasks per stage and estimate the device time of those not done yet."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = Timer(device)
    datasets = {d for t in grid.deps for d in (t.dataset, t.key.searched_on)}
    sizes = {d: train_size(d, data_root, profile.grid.train_subset) for d in datasets}
    stages, shared_done = [], set()
    for stage, tasks in grid.by_stage().items():
        left = [t for t in tasks if not is_done(t, grid.layout)]
        entry = StageEstimate(stage, len(tasks), len(tasks) - len(left), 0.0)
        missing: dict[str, int] = {}
        for task in left if stage in CHARGES else []:
            charge = CHARGES[stage](task, profile, sizes, timer)
            if charge.what not in charge.registry:
                missing[charge.what] = missing.get(charge.what, 0) + 1
                continue
            per_task, shared = charge.seconds(charge.registry.get(charge.what))
            key = (stage, charge.what, *charge.share)
            entry.seconds += per_task + (0.0 if key in shared_done else shared)
            shared_done.add(key)
        entry.unestimated = [f"{what} ({n} tasks)" for what, n in sorted(missing.items())]
        stages.append(entry)

    factor = 1.0
    if device.type != "cuda":  # the reference rate is that of the DARTS evaluation network (SPEC §3)
        factor = 1.0 / (
            profile.grid.reference_gpu_images_per_second * _retrain_per_image(profile, "darts", timer)
        )
    return Estimate(device.type, factor, stages)


def record_path(layout: Layout, experiment: str) -> Path:
    """Where `nasaudit plan` keeps its latest estimate of an experiment: the report sets it against the
    compute spent without timing the networks again (a minute per table on a CPU)."""
    return layout.root / "plan" / f"{experiment}.json"
