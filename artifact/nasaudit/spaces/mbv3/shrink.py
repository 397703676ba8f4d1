"""Training the supernet by progressive shrinking (Once-for-All, Cai et al. 2020).

NSGANetV2 starts from OFA's ImageNet supernet; we cannot assume users have it, so (a documented
deviation) we train our own on the search data. The profile lists the phases in OFA's order: the full
network, then elastic kernel, elastic depth, elastic width; each phase samples subnets from its own
choice lists, sums the gradients of ``subnets_per_step`` of them per step, distils from the full
network of the first phase (``kd_ratio``), and samples the input resolution per step (elastic
resolution, throughout). A phase that opens elastic width first sorts the channels by importance.

Everything a step draws depends on (seed, epoch, step), the state is checkpointed atomically after
every epoch, and a killed run resumes to the same weights. ``obtain_supernet`` is the one way a job
gets its supernet: the file the profile names, one trained earlier in the job's folder, or a new one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasaudit import metrics_log
from nasaudit.config import Profile, ShrinkPhase, SupernetConfig
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.io import load_torch, save_torch, write_json
from nasaudit.precision import autocast
from nasaudit.progress import bar as progress_bar
from nasaudit.seeds import derive_seed
from nasaudit.seeds import rng as seeded_rng
from nasaudit.spaces.mbv3.network import upscale
from nasaudit.spaces.mbv3.space import (
    DEPTHS,
    EXPANDS,
    KERNELS,
    MAX_DEPTH,
    N_STAGES,
    MBV3Arch,
    channel_plan,
    extreme_arch,
)
from nasaudit.spaces.mbv3.supernet import MBV3SuperNet, load_supernet, save_supernet

CHECKPOINT = "checkpoint.pt"
TEACHER = "teacher.pt"
SUPERNET = "supernet.pt"


def check_phases(cfg: SupernetConfig) -> None:
    """One-line errors for phases the space cannot run."""
    if not cfg.phases:
        raise NasauditError("[nsganetv2.supernet] needs at least one phase (the full network first)")
    for i, phase in enumerate(cfg.phases):
        for name, values, allowed in (
            ("kernels", phase.kernels, KERNELS),
            ("depths", phase.depths, DEPTHS),
            ("expands", phase.expands, EXPANDS),
        ):
            if not values or not set(values) <= set(allowed):
                raise NasauditError(
                    f"[nsganetv2.supernet] phase {i}: {name} = {values} must be a non-empty subset of "
                    f"{list(allowed)}"
                )
        if phase.epochs < 0 or phase.subnets_per_step < 1:
            raise NasauditError(
                f"[nsganetv2.supernet] phase {i}: epochs ≥ 0 and subnets_per_step ≥ 1 required"
            )
    full = cfg.phases[0]
    if cfg.kd_ratio > 0 and (full.kernels, full.depths, full.expands) != (
        [max(KERNELS)],
        [max(DEPTHS)],
        [max(EXPANDS)],
    ):
        raise NasauditError(
            "[nsganetv2.supernet] kd_ratio > 0 distils from the first phase, which must train the full "
            "network "
            "(kernels = [7], depths = [4], expands = [6])"
        )


def sample_subnet(rng: np.random.Generator, phase: ShrinkPhase, resolution: int) -> MBV3Arch:
    """A subnet drawn uniformly from the phase's choices (per stage depth, per layer kernel and width)."""
    return MBV3Arch(
        resolution,
        tuple(int(d) for d in rng.choice(phase.depths, N_STAGES)),
        tuple(int(k) for k in rng.choice(phase.kernels, N_STAGES * MAX_DEPTH)),
        tuple(int(e) for e in rng.choice(phase.expands, N_STAGES * MAX_DEPTH)),
    )


def make_optimizer(net: MBV3SuperNet, cfg: SupernetConfig, lr: float) -> torch.optim.SGD:
    """SGD with weight decay on weight matrices and kernels only (OFA exempts BN and biases)."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _teacher(net: MBV3SuperNet, state: dict[str, torch.Tensor]) -> MBV3SuperNet:
    """A frozen copy of the full network; OFA runs it in train mode (BN on batch statistics)."""
    teacher = copy.deepcopy(net)
    teacher.load_state_dict(state)
    return teacher.requires_grad_(False).train()


def _soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


def shrink_epoch(
    net: MBV3SuperNet,
    teacher: MBV3SuperNet | None,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    phase: ShrinkPhase,
    cfg: SupernetConfig,
    resolutions: Sequence[int],
    *,
    seed: int,
    epoch: int,
    on_batch: Callable[[int], object] | None = None,
) -> float:
    """One pass over ``data`` for one phase; returns the mean loss over the sampled subnets.
    ``on_batch(1)`` is called after each optimiser step (a progress bar's ``update``)."""
    net.train()
    rng = seeded_rng(seed, "shrink", epoch)
    torch.manual_seed(derive_seed(seed, "shrink", "dropout", epoch))  # dropout masks
    in_precision = autocast(data.device, cfg.precision)
    total, count = 0.0, 0
    for x, y in data.batches(cfg.batch_size, seed=seed, epoch=epoch, augment=cfg.augment):
        resolution = int(rng.choice(resolutions))
        x = upscale(x, resolution)
        soft = None
        if teacher is not None:
            teacher.set_active(extreme_arch([resolution], largest=True))
            with torch.no_grad(), in_precision:
                soft = F.softmax(teacher(x).float(), dim=1)
        optimizer.zero_grad(set_to_none=True)
        for _ in range(phase.subnets_per_step):
            net.set_active(sample_subnet(rng, phase, resolution))
            with in_precision:
                logits = net(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if soft is not None:
                    loss = loss + cfg.kd_ratio * _soft_cross_entropy(logits, soft)
            loss.backward()
            total, count = total + float(loss.detach()), count + 1
        optimizer.step()
        if on_batch is not None:
            on_batch(1)
    return total / max(count, 1)


def train_supernet(
    net: MBV3SuperNet,
    data: DeviceData,
    cfg: SupernetConfig,
    resolutions: Sequence[int],
    *,
    seed: int,
    out_dir: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every phase of ``cfg`` on ``data`` (resuming from ``out_dir``); returns the per-epoch log."""
    check_phases(cfg)
    device = net.stem.conv.weight.device
    checkpoint, teacher_path = out_dir / CHECKPOINT, out_dir / TEACHER
    start_phase, start_epoch, log, optimizer_state = 0, 0, [], None
    if checkpoint.is_file():
        state = load_torch(checkpoint, "trains the supernet from its first epoch", map_location=device)
        net.load_state_dict(state["state_dict"])
        start_phase, start_epoch, log = state["phase"], state["epoch"] + 1, state["log"]
        optimizer_state = state["optimizer"]
        if start_epoch == cfg.phases[start_phase].epochs:
            start_phase, start_epoch, optimizer_state = start_phase + 1, 0, None
    teacher = None
    if start_phase > 0 and cfg.kd_ratio > 0:
        teacher = _teacher(net, load_torch(teacher_path, "trains the supernet again", map_location=device))
    offsets = np.cumsum([0] + [p.epochs for p in cfg.phases])  # a phase's epochs get distinct data seeds
    for p in range(start_phase, len(cfg.phases)):
        phase = cfg.phases[p]
        if start_epoch == 0 and len(phase.expands) > 1:
            net.sort_channels(cfg.phases[p - 1].expands if p > 0 else [])
        optimizer = make_optimizer(net, cfg, phase.lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
        steps = data.num_batches(cfg.batch_size)
        bar = progress_bar(phase.epochs * steps, initial=start_epoch * steps, enabled=progress,
                           desc=f"supernet phase {p}", unit="batch")  # fmt: skip
        for epoch in range(start_epoch, phase.epochs):
            lr = phase.lr * (1 + math.cos(math.pi * epoch / phase.epochs)) / 2
            for group in optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            loss = shrink_epoch(
                net,
                teacher,
                data,
                optimizer,
                phase,
                cfg,
                resolutions,
                seed=seed,
                epoch=int(offsets[p]) + epoch,
                on_batch=bar.update,
            )
            log.append(
                {"phase": p, "epoch": epoch, "lr": lr, "loss": loss, "seconds": time.perf_counter() - started}
            )
            metrics_log.record(out_dir, len(log) - 1, log[-1])  # the log goes into the checkpoint
            bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
            if p == 0 and epoch == phase.epochs - 1 and cfg.kd_ratio > 0:
                save_torch(teacher_path, net.state_dict())
            save_torch(checkpoint, {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(),
                                    "phase": p, "epoch": epoch, "log": log})  # fmt: skip
        bar.close()
        if p == 0 and cfg.kd_ratio > 0:
            if not teacher_path.is_file():  # a first phase of zero epochs
                save_torch(teacher_path, net.state_dict())
            teacher = _teacher(net, net.state_dict())
        start_epoch = 0
    return log


def obtain_supernet(
    data: ImageDataset,
    profile: Profile,
    *,
    seed: int,
    folder: Path,
    device: torch.device,
    progress: bool = True,
) -> MBV3SuperNet:
    """The supernet of ``data.train`` in eval mode: ``[nsganetv2.supernet] weights`` if set, else
    ``folder/supernet.pt``.

    A folder without the file trains it (resuming from ``folder/supernet/``, where the log and the
    teacher stay) and saves it atomically; the training checkpoint is then dropped.
    """
    cfg, resolutions = profile.nsganetv2.supernet, profile.mbv3.resolutions
    torch.manual_seed(seed)
    net = MBV3SuperNet(channel_plan(profile.mbv3.width_mult), data.num_classes, cfg.dropout).to(device)
    if cfg.weights:
        load_supernet(net, Path(cfg.weights))
    elif (folder / SUPERNET).is_file():
        load_supernet(net, folder / SUPERNET)
    else:
        log = train_supernet(
            net, DeviceData(data.train, data, device), cfg, resolutions, seed=seed,
            out_dir=folder / "supernet", progress=progress,
        )  # fmt: skip
        save_supernet(folder / SUPERNET, net)
        write_json(folder / "supernet" / "log.json", log)
        (folder / "supernet" / CHECKPOINT).unlink(missing_ok=True)
    return net.eval()
