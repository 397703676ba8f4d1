"""P-DARTS (Chen et al., 2019): progressive differentiable search in the DARTS space (as run:
ztcoalson/pdarts train_search.py).

The search runs in stages of growing depth (paper: 5, 11, 17 cells). Each stage builds a fresh
supernet over the candidates that survived the previous stage, trains its weights alone for the
warm-up epochs, then alternates first-order updates: one Adam step of α on an arch-val batch, one SGD
step of the weights on a weight-train batch. The two batch streams are the training split divided in
two (seeded), both augmented. At the end of a stage every edge keeps its highest-softmax ops
(8 → 5 → 3); the last stage keeps one non-'none' op per edge, each node its two strongest edges, and
the normal cell at most ``max_skips`` skip-connects: the weakest selected skip is zeroed and the cell
re-derived until the limit holds, as the official final stage does. Skip-connect dropout starts at a
per-stage (per-dataset) rate and decays within the stage.

Files in the job folder, each written atomically: ``pdarts_log.json`` (every epoch: losses,
accuracies, α entropy, the current genotype; every stage: its candidates), ``alphas.npz`` (each
stage's final α, active masks and mixing weights), ``supernet_victim.pt`` (the converged last-stage
supernet, the victim of NAS-specific gradient canceling), ``pdarts_result.json`` (the genotype before
and after the skip limit). ``pdarts_checkpoint.pt`` holds the model, both optimisers, stage, epoch and
log after every epoch; every random draw is keyed by (seed, stage, epoch), so a killed search resumes
to exactly the result of an uninterrupted one. The forward runs in ``[pdarts] precision`` (fp32 as
run; bf16 autocast as an opt-in), on CUDA with channels_last tensors.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasaudit import metrics_log
from nasaudit.config import PDartsConfig, Profile
from nasaudit.costs import NUM_CLASSES, Timer, VictimNet, seeded_candidates
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, load_torch, read_json, save_torch, write_json, write_npz
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext
from nasaudit.precision import autocast
from nasaudit.progress import bar as progress_bar
from nasaudit.runs import check_record
from nasaudit.seeds import derive_seed, rng
from nasaudit.spaces.darts import CELL_TYPES, CONCAT, EDGES, NODES, PRIMITIVES, Genotype, SuperNet
from nasaudit.train import evaluate

LOG = "pdarts_log.json"
RESULT = "pdarts_result.json"
ALPHAS = "alphas.npz"
VICTIM = "supernet_victim.pt"
CHECKPOINT = "pdarts_checkpoint.pt"
FORMAT = "nasaudit-pdarts/1"
SKIP = "skip_connect"


# --- schedules and data ------------------------------------------------------------------------------


def skip_dropout_rates(cfg: PDartsConfig, dataset: str) -> list[float]:
    """The initial skip-connect dropout of each stage: the dataset's override, else the default."""
    return cfg.skip_dropout_by_dataset.get(dataset, cfg.skip_dropout)


def skip_dropout(rate: float, epoch: int, cfg: PDartsConfig) -> float:
    """Dropout of ``epoch`` within a stage, as the official search decays it.

    Linear towards 0 during warm-up, ``rate·(E − epoch − 1)/E``; afterwards
    ``rate·exp(−(epoch − warmup)·decay)``, which restarts at ``rate`` when α starts training.
    """
    if epoch < cfg.warmup_epochs:
        return rate * (cfg.epochs - epoch - 1) / cfg.epochs
    return rate * math.exp(-(epoch - cfg.warmup_epochs) * cfg.skip_dropout_decay)


def cosine_lr(cfg: PDartsConfig, epoch: int) -> float:
    """Weight learning rate of ``epoch``: cosine from ``lr`` to ``lr_min`` over one stage."""
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2


def split_search_data(train: Split, portion: float, seed: int) -> tuple[Split, Split]:
    """(weight-train, arch-val): a seeded permutation of ``train``, the first ``portion`` for weights."""
    order = rng(seed, "pdarts", "split").permutation(len(train))
    cut = int(np.floor(portion * len(train)))
    first, second = np.sort(order[:cut]), np.sort(order[cut:])
    return Split(train.images[first], train.labels[first]), Split(train.images[second], train.labels[second])


def _batches(
    data: DeviceData, cfg: PDartsConfig, seed: int, *key: object
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return data.batches(cfg.batch_size, seed=derive_seed(seed, "pdarts", *key), augment=cfg.augment)


def _cycle(
    data: DeviceData, cfg: PDartsConfig, seed: int, stage: int, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Arch-val batches without end: a new shuffle whenever the half is used up (official behaviour)."""
    cycle = 0
    while True:
        yield from _batches(data, cfg, seed, "val", stage, epoch, cycle)
        cycle += 1


# --- one epoch of alternating updates -----------------------------------------------------------------


def _step(
    model: SuperNet,
    x: torch.Tensor,
    y: torch.Tensor,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    cfg: PDartsConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of ``params`` only; gradients of the other group are never computed."""
    with autocast(x.device, cfg.precision):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def search_epoch(
    model: SuperNet,
    train_data: DeviceData,
    val_data: DeviceData,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer,
    cfg: PDartsConfig,
    *,
    seed: int,
    stage: int,
    epoch: int,
    train_arch: bool,
    on_step: Callable[[int], object] | None = None,
) -> dict[str, float | None]:
    """One pass over the weight-train half; with ``train_arch`` an α step on an arch-val batch first.

    Returns the mean losses and accuracies (%) of the weight steps and of the α steps (None without).
    ``on_step(1)`` is called after each step (a progress bar's ``update``).
    """
    model.train()
    weights, alphas = model.weight_parameters(), model.arch_parameters()
    device = train_data.device
    sums = {k: torch.zeros((), device=device) for k in ("loss", "correct", "arch_loss", "arch_correct")}
    arch_seen = 0
    val_stream = _cycle(val_data, cfg, seed, stage, epoch)
    for x, y in _batches(train_data, cfg, seed, "train", stage, epoch):
        if train_arch:
            xv, yv = next(val_stream)
            loss, correct = _step(model, xv, yv, alphas, arch_opt, cfg)
            sums["arch_loss"] += loss
            sums["arch_correct"] += correct
            arch_seen += len(yv)
        loss, correct = _step(model, x, y, weights, weight_opt, cfg)
        sums["loss"] += loss
        sums["correct"] += correct
        if on_step is not None:
            on_step(1)
    n = len(train_data)
    return {
        "train_loss": float(sums["loss"]) / n,
        "train_acc": 100.0 * float(sums["correct"]) / n,
        "arch_loss": float(sums["arch_loss"]) / arch_seen if train_arch else None,
        "arch_acc": 100.0 * float(sums["arch_correct"]) / arch_seen if train_arch else None,
    }


# --- pruning and the final genotype ------------------------------------------------------------------


def prune(
    weights: np.ndarray, candidates: Sequence[Sequence[str]], keep: int, final: bool
) -> list[list[str]]:
    """Each edge's ``keep`` ops of highest mixing weight (columns in PRIMITIVES order).

    Ties drop the earlier op, as the official argmin does. In the ``final`` stage 'none' is dropped
    first, so the kept ops are real operations.
    """
    kept = []
    for row, names in zip(weights, candidates, strict=True):
        pool = [n for n in names if not (final and n == "none")]
        ranked = sorted(pool, key=lambda n: (row[PRIMITIVES.index(n)], PRIMITIVES.index(n)))
        survivors = set(ranked[len(ranked) - keep :])
        kept.append([n for n in names if n in survivors])
    return kept


@dataclass(frozen=True)
class _Choice:
    edge: int
    op: str
    weight: float


def _derive_cell(weights: np.ndarray, usable: np.ndarray) -> list[_Choice]:
    """Per edge its strongest usable op; per node the 2 edges whose op is strongest (lower edge on ties)."""
    strength = np.where(usable, weights, -np.inf)
    chosen: list[_Choice] = []
    first = 0
    for node in range(NODES):
        edges = [e for e in range(first, first + node + 2) if usable[e].any()]
        if len(edges) < 2:
            raise ValueError(f"node {node} has fewer than 2 incoming edges with a usable op")
        best = sorted(edges, key=lambda e: -strength[e].max())[:2]
        for e in sorted(best):
            col = int(strength[e].argmax())
            chosen.append(_Choice(e, PRIMITIVES[col], float(weights[e, col])))
        first += node + 2
    return chosen


def _pairs(chosen: list[_Choice]) -> tuple[tuple[str, int], ...]:
    return tuple((c.op, EDGES[c.edge][1]) for c in chosen)


def final_cells(
    weights: dict[str, np.ndarray], candidates: dict[str, Sequence[Sequence[str]]], max_skips: int
) -> tuple[Genotype, Genotype, list[int]]:
    """(genotype, genotype before the skip limit, normal edges whose skip was replaced).

    ``weights[t]`` are the last stage's mixing weights (14 × len(PRIMITIVES)); an op counts when it
    is a candidate and not 'none'. While the normal cell has more than ``max_skips`` skip-connects, the
    selected skip of lowest weight is set to 0 (it can no longer be chosen) and the whole cell is
    re-derived, so that edge falls back to its next best op or loses its place to another edge.
    """
    usable = {
        t: np.array([[p in names and p != "none" for p in PRIMITIVES] for names in candidates[t]])
        for t in CELL_TYPES
    }
    cells = {t: _derive_cell(weights[t], usable[t]) for t in CELL_TYPES}
    plain = Genotype(_pairs(cells["normal"]), CONCAT, _pairs(cells["reduce"]), CONCAT)
    normal, replaced = cells["normal"], []
    mask = usable["normal"].copy()
    while sum(c.op == SKIP for c in normal) > max_skips:
        weakest = min((c for c in normal if c.op == SKIP), key=lambda c: (c.weight, c.edge))
        mask[weakest.edge, PRIMITIVES.index(SKIP)] = False
        replaced.append(weakest.edge)
        normal = _derive_cell(weights["normal"], mask)
    return Genotype(_pairs(normal), CONCAT, _pairs(cells["reduce"]), CONCAT), plain, replaced


# --- the search ----------------------------------------------------------------------------------------


def check_config(cfg: PDartsConfig, data: ImageDataset) -> None:
    """One-line errors for a [pdarts] section that cannot run on ``data``."""

    def fail(problem: str) -> None:
        raise NasauditError(f"profile [pdarts] {problem}")

    stages = len(cfg.layers)
    rates = skip_dropout_rates(cfg, data.name)
    if stages == 0 or len(cfg.keep_ops) != stages or len(rates) != stages:
        fail(
            f"layers, keep_ops and skip_dropout need one entry per stage, got {cfg.layers}, "
            f"{cfg.keep_ops}, {rates}"
        )
    counts = [len(PRIMITIVES), *cfg.keep_ops]
    if cfg.keep_ops[-1] != 1 or any(b >= a for a, b in itertools.pairwise(counts)):
        fail(f"keep_ops must decrease from {len(PRIMITIVES)} and end at 1, got {cfg.keep_ops}")
    if counts[-2] < 3:
        fail(f"keep_ops {cfg.keep_ops}: the last stage needs ≥ 3 candidates so a skip can be replaced")
    if min(cfg.layers) < 1 or cfg.channels < 1 or cfg.batch_size < 1 or cfg.max_skips < 0:
        fail("layers, channels and batch_size must be ≥ 1 and max_skips ≥ 0")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs or cfg.epochs < 1:
        fail(f"needs 0 ≤ warmup_epochs ≤ epochs and epochs ≥ 1, got {cfg.warmup_epochs}, {cfg.epochs}")
    if len(cfg.arch_betas) != 2 or any(not 0 <= p < 1 for p in rates):
        fail("arch_betas needs 2 values and every skip-dropout rate must lie in [0, 1)")
    cut = int(np.floor(cfg.train_portion * len(data.train)))
    if not 0 < cut < len(data.train):
        fail(f"train_portion {cfg.train_portion} leaves an empty half of {len(data.train)} images")


def _fingerprint(cfg: PDartsConfig, data: ImageDataset, seed: int) -> dict[str, Any]:
    return {"config": jsonable(cfg), "seed": seed, "train": data.train.sha256, "classes": data.num_classes}


def _full_candidates() -> dict[str, list[list[str]]]:
    return {t: [list(PRIMITIVES) for _ in EDGES] for t in CELL_TYPES}


def _entropy(weights: torch.Tensor) -> float:
    """Mean over edges of the entropy (nats) of the mixing weights: how undecided α still is."""
    w = weights.detach().float()
    return float(-(w * w.clamp_min(1e-30).log()).sum(1).mean())


def supernet_kwargs(cfg: PDartsConfig, stage: int, num_classes: int, dropout: float) -> dict[str, Any]:
    """The SuperNet constructor arguments of ``stage`` (JSON-able, candidates passed separately)."""
    return {
        "C": cfg.channels,
        "layers": cfg.layers[stage],
        "num_classes": num_classes,
        "skip_dropout": dropout,
    }


class _Stage:
    """The supernet of one stage and its two optimisers."""

    def __init__(
        self,
        cfg: PDartsConfig,
        kwargs: dict[str, Any],
        candidates: dict[str, list[list[str]]],
        device: torch.device,
    ) -> None:
        self.kwargs, self.candidates = kwargs, candidates
        model = SuperNet(
            **kwargs, candidates_normal=candidates["normal"], candidates_reduce=candidates["reduce"]
        ).to(device)
        self.model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        self.weight_opt = torch.optim.SGD(
            self.model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.arch_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            lr=cfg.arch_lr,
            betas=(cfg.arch_betas[0], cfg.arch_betas[1]),
            weight_decay=cfg.arch_weight_decay,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])


class PDarts(NasAlgorithm):
    space, label, image = "darts", "P-DARTS", "pdarts"
    preflight_other_data_on_cpu = False  # a bounded search is about a minute of CPU; the grids hold six

    def __call__(self, data: ImageDataset, seed: int, context: SearchContext) -> dict[str, Any]:
        out = context.out_dir
        cfg, device = context.profile.pdarts, context.device
        check_config(cfg, data)
        fingerprint = _fingerprint(cfg, data, seed)
        if (out / RESULT).is_file():
            result = read_json(out / RESULT, "runs the search again")
            check_record(out / RESULT, result, fingerprint, key="fingerprint")
            return result["genotype"]
        rates = skip_dropout_rates(cfg, data.name)
        weight_half, arch_half = split_search_data(data.train, cfg.train_portion, seed)
        train_data = DeviceData(weight_half, data, device)
        val_data = DeviceData(arch_half, data, device)

        state = _load_checkpoint(out / CHECKPOINT, fingerprint, device)
        if state is None:
            log = {
                "format": FORMAT,
                "seed": seed,
                "dataset": data.name,
                "train_sha256": data.train.sha256,
                "weight_half": len(weight_half),
                "arch_half": len(arch_half),
                "epochs": [],
                "stages": [],
            }
            state = {
                "stage": 0,
                "epoch": -1,
                "candidates": _full_candidates(),
                "log": log,
                "alphas": {},
                "elapsed": 0.0,
            }
        first_stage, candidates, log, alphas = (state[k] for k in ("stage", "candidates", "log", "alphas"))
        started = time.perf_counter() - state["elapsed"]
        steps = train_data.num_batches(cfg.batch_size)  # weight steps per epoch: the bar moves per step
        total = len(cfg.layers) * cfg.epochs * steps
        bar = progress_bar(
            total, desc="pdarts", unit="step", enabled=context.progress, initial=len(log["epochs"]) * steps
        )

        for stage in range(first_stage, len(cfg.layers)):
            torch.manual_seed(derive_seed(seed, "pdarts", "build", stage))
            current = _Stage(
                cfg, supernet_kwargs(cfg, stage, data.num_classes, rates[stage]), candidates, device
            )
            start = 0
            if stage == first_stage and "model" in state:
                current.load_state_dict(state)
                start = state["epoch"] + 1
            for epoch in range(start, cfg.epochs):
                entry = _run_epoch(
                    current, train_data, val_data, cfg, seed, stage, epoch, rates[stage], bar.update
                )
                bar.set_postfix(stage=stage, epoch=epoch)
                entry["elapsed"] = time.perf_counter() - started
                log["epochs"].append(entry)
                metrics_log.record(out, len(log["epochs"]) - 1, entry, out / LOG, log)
                save_torch(
                    out / CHECKPOINT,
                    {
                        "format": FORMAT,
                        "fingerprint": fingerprint,
                        "stage": stage,
                        "epoch": epoch,
                        "candidates": candidates,
                        "log": log,
                        "alphas": alphas,
                        "elapsed": entry["elapsed"],
                        **current.state_dict(),
                    },
                )
            candidates = _end_stage(current, cfg, stage, log, alphas)
        bar.close()

        weights = {t: current.model.mixing_weights(t).detach().cpu().double().numpy() for t in CELL_TYPES}
        genotype, plain, replaced = final_cells(weights, current.candidates, cfg.max_skips)
        _save_victim(out / VICTIM, current, data, skip_dropout(rates[-1], cfg.epochs - 1, cfg))
        write_npz(out / ALPHAS, {k: v.numpy() for k, v in alphas.items()})
        final = {
            "genotype": genotype.to_json(),
            "before_skip_limit": plain.to_json(),
            "skips_replaced_on_edges": replaced,
        }
        log["final"] = final
        write_json(out / LOG, log)
        write_json(
            out / RESULT,
            {
                **final,
                "candidates_last_stage": current.candidates,
                "seed": seed,
                "search_time": time.perf_counter() - started,
                "train_sha256": data.train.sha256,
                "config": jsonable(cfg),
                "fingerprint": fingerprint,
            },
        )
        (out / CHECKPOINT).unlink(missing_ok=True)
        return genotype.to_json()

    def cost(self, profile: Profile, n_train: int, timer: Timer) -> tuple[float, float]:
        """Per stage, on its supernet: epochs of weight steps over the weight half, α steps after warm-up."""
        cfg = profile.pdarts
        half = int(np.floor(cfg.train_portion * n_train))  # one arch-val batch per weight batch
        seconds = 0.0
        for stage in range(len(cfg.layers)):
            build = partial(timing_supernet, cfg, stage)
            step = timer.per_image(f"pdarts/stage{stage}", build, cfg.batch_size, precision=cfg.precision)
            seconds += (cfg.epochs + cfg.epochs - cfg.warmup_epochs) * half * step
        return seconds, 0.0

    def victim(self, profile: Profile) -> VictimNet:
        """The converged last-stage supernet (``VICTIM``), whose α NAS-specific GC targets (paper §4)."""
        last = len(profile.pdarts.layers) - 1
        return VictimNet(
            f"pdarts/stage{last}", "darts_supernet", partial(timing_supernet, profile.pdarts, last)
        )


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = load_torch(path, "restarts the search from its first epoch", map_location=device)
    ok = isinstance(state, dict) and state.get("format") == FORMAT
    check_record(path, state if ok else None, fingerprint, key="fingerprint")
    state["alphas"] = {k: v.cpu() for k, v in state["alphas"].items()}
    return state


def _run_epoch(
    current: _Stage,
    train_data: DeviceData,
    val_data: DeviceData,
    cfg: PDartsConfig,
    seed: int,
    stage: int,
    epoch: int,
    rate: float,
    on_step: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Set the epoch's learning rate and skip dropout, train, and describe the supernet afterwards."""
    model = current.model
    lr, dropout = cosine_lr(cfg, epoch), skip_dropout(rate, epoch, cfg)
    for group in current.weight_opt.param_groups:
        group["lr"] = lr
    model.set_skip_dropout(dropout)
    torch.manual_seed(derive_seed(seed, "pdarts", "dropout", stage, epoch))  # the skip-dropout masks
    train_arch = epoch >= cfg.warmup_epochs
    metrics = search_epoch(
        model,
        train_data,
        val_data,
        current.weight_opt,
        current.arch_opt,
        cfg,
        seed=seed,
        stage=stage,
        epoch=epoch,
        train_arch=train_arch,
        on_step=on_step,
    )
    entry: dict[str, Any] = {
        "stage": stage,
        "epoch": epoch,
        "layers": cfg.layers[stage],
        "lr": lr,
        "skip_dropout": dropout,
        "train_arch": train_arch,
        **metrics,
    }
    if cfg.epochs - epoch <= cfg.eval_epochs:
        entry["val_loss"], entry["val_acc"] = evaluate(model, val_data, precision=cfg.precision)
    entry["alpha_entropy"] = {t: _entropy(model.mixing_weights(t)) for t in CELL_TYPES}
    entry["genotype"] = model.genotype().to_json()
    return entry


def _end_stage(
    current: _Stage, cfg: PDartsConfig, stage: int, log: dict[str, Any], alphas: dict[str, torch.Tensor]
) -> dict[str, list[list[str]]]:
    """Record the stage's α; return the next stage's candidates (after the last: the final op per edge)."""
    model, final = current.model, stage == len(cfg.layers) - 1
    kept = {}
    for t in CELL_TYPES:
        weights = model.mixing_weights(t).detach().cpu()
        alphas[f"stage{stage}_alpha_{t}"] = model.alpha(t).detach().cpu().clone()
        alphas[f"stage{stage}_active_{t}"] = model.active(t).cpu().clone()
        alphas[f"stage{stage}_weights_{t}"] = weights.clone()
        kept[t] = prune(weights.double().numpy(), current.candidates[t], cfg.keep_ops[stage], final)
    log["stages"].append(
        {"stage": stage, "layers": cfg.layers[stage], "candidates": current.candidates, "kept": kept}
    )
    return kept


def _save_victim(path: Path, current: _Stage, data: ImageDataset, dropout: float) -> None:
    """The converged last-stage supernet, rebuildable from its spec, for NAS-specific GC."""
    from nasaudit.attacks.victim import save_victim, supernet_spec

    spec = supernet_spec({**current.kwargs, "skip_dropout": dropout}, current.model)
    save_victim(
        path, current.model, kind="darts_supernet", spec=spec, dataset=data.name, num_classes=data.num_classes
    )


def timing_supernet(cfg: PDartsConfig, stage: int) -> SuperNet:
    """The search network of ``stage`` as `nasaudit plan` times it: its cells and candidate-op count per
    edge (ztcoalson/pdarts train_search.py), seeded candidates standing in for the ones the search keeps."""
    candidates = seeded_candidates(PRIMITIVES, [len(PRIMITIVES), *cfg.keep_ops][stage], stage)
    return SuperNet(
        **supernet_kwargs(cfg, stage, NUM_CLASSES, 0.0),
        candidates_normal=candidates["normal"],
        candidates_reduce=candidates["reduce"],
    )


NAS.register("pdarts", uses=("pdarts",))(PDarts())
