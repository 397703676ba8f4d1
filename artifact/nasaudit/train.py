"""Training from scratch: the P-DARTS evaluation recipe, for any model of the registry.

SGD with momentum and a per-epoch (or per-step) cosine schedule, gradient clipping, the auxiliary-head loss, a
linear drop-path ramp, crop/flip/cutout on the device (ztcoalson/pdarts
train_cifar.py). Everything a run depends on is a
function of (seed, epoch), and a checkpoint is written atomically every few epochs, so a run that is
killed and restarted ends with exactly the metrics of an uninterrupted one. The weights are saved
before ``result.json``, the marker of a finished run, so a finished run always has its weights. A
cached result or checkpoint is reused only for the same run (``train_identity``: recipe, seed,
training data, what was trained), never for whatever an earlier call left in the folder. The forward
runs in the recipe's ``precision`` (fp32 as the authors ran, or bf16 autocast); on CUDA with
channels_last tensors.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nasaudit import metrics_log
from nasaudit.config import TrainConfig
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.device import DeviceData
from nasaudit.io import environment_manifest, jsonable, load_torch, save_torch, write_json
from nasaudit.precision import autocast
from nasaudit.progress import bar
from nasaudit.registry import Registry
from nasaudit.runs import IDENTITY, check_record, fingerprint, reuse
from nasaudit.seeds import derive_seed

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"

#: The description keys that name what was trained (its network size, the weights it inherits); the rest
#: of a description (source path, grid job, RoBoT pool index) is provenance, which may differ between
#: calls of one run.
_TRAINED_KEYS = ("space", "architecture", "genotype", "model", "network", "weights_sha256")


def cosine_lr(cfg: TrainConfig, epoch: int, step: int = 0, steps: int = 1) -> float:
    """Learning rate at ``step`` of ``steps`` in ``epoch`` (0-based): cosine from ``lr`` to ``lr_min``
    over the run (OFA's ``calc_learning_rate`` when steps are counted, run_manager.py:67-76)."""
    done = (epoch + step / steps) / cfg.epochs
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * done)) / 2


def _split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    return output if isinstance(output, tuple) else (output, None)


def train_epoch(
    model: nn.Module,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    seed: int,
    epoch: int,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[float, float]:
    """One pass over ``data``; returns (mean loss, accuracy in %). With ``cfg.lr_per_step`` the learning
    rate is set before every step, else the caller sets it once for the epoch; ``on_batch(1)`` after
    each step."""
    model.train()
    total_loss = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    steps = data.num_batches(cfg.batch_size)
    for step, (x, y) in enumerate(data.batches(cfg.batch_size, seed=seed, epoch=epoch, augment=cfg.augment)):
        if cfg.lr_per_step:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg, epoch, step, steps)
        with autocast(data.device, cfg.precision):
            logits, aux = _split_output(model(x))
            loss = F.cross_entropy(logits, y)
            if aux is not None and cfg.auxiliary_weight > 0:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        if on_batch is not None:
            on_batch(1)
    return float(total_loss) / len(data), 100.0 * float(correct) / len(data)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DeviceData, batch_size: int = 500, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean loss, accuracy in %) in eval mode, without augmentation, in the training's precision."""
    model.eval()
    total_loss, correct = 0.0, 0
    for x, y in data.batches(batch_size, shuffle=False):
        with autocast(data.device, precision):
            logits, _ = _split_output(model(x))
        total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(data), 100.0 * correct / len(data)


def train_identity(
    cfg: TrainConfig, seed: int, dataset: ImageDataset, description: dict[str, Any] | None
) -> dict[str, Any]:
    """What a training run's result depends on: recipe, seed, training data and what was trained."""
    trained = {k: v for k, v in (description or {}).items() if k in _TRAINED_KEYS}
    if isinstance(trained.get("architecture"), dict):  # a weights path says where, weights_sha256 what
        trained["architecture"] = {k: v for k, v in trained["architecture"].items() if k != "weights"}
    return fingerprint("train", config=cfg, seed=seed, dataset=dataset.name,
                       train_sha256=dataset.train.sha256, trained=trained)  # fmt: skip


def _best_epoch(log: list[dict[str, Any]], final: float) -> tuple[float, int]:
    """(accuracy, epoch) of the evaluated epoch with the highest test accuracy, the first of equals;
    (``final``, −1) when no epoch ran (the untrained network's one evaluation)."""
    evaluated = [(entry["test_acc"], -entry["epoch"]) for entry in log if "test_acc" in entry]
    if not evaluated:
        return final, -1
    accuracy, negative_epoch = max(evaluated)
    return accuracy, -negative_epoch


#: Which test accuracy a trial reports (``[results] accuracy``): the last epoch's, or the best epoch's
#: among the evaluated ones, as the authors' train_cifar.py logs it (``Best_valid_acc``).
REPORTED: Registry[Callable[[dict[str, Any]], float]] = Registry("[results] accuracy")
REPORTED.register("final")(lambda result: float(result["test_accuracy"]))
REPORTED.register("best")(lambda result: float(_best_epoch(result["log"], result["test_accuracy"])[0]))


def reported_accuracy(result: dict[str, Any], which: str) -> float:
    """The accuracy a trial reports, from its ``result.json``: ``which`` is "final" or "best".

    "best" is recomputed from the per-epoch log, so a result written before ``best_test_accuracy``
    existed reports the same value.
    """
    return REPORTED.get(which)(result)


def train_model(
    build: Callable[[], nn.Module],
    dataset: ImageDataset,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    out_dir: Path | None = None,
    description: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``build()`` on ``dataset.train`` and test on ``dataset.test``; resumable through ``out_dir``.

    Returns (and writes to ``out_dir/result.json``) the final test accuracy (``test_accuracy``), the
    best evaluated epoch's (``best_test_accuracy``, ``best_epoch``), the per-epoch log, the parameter
    count, wall time, device, seed and manifest. A finished run is never recomputed; a result without
    its weights (left by an older version that saved them last) is trained again.
    """
    identity = train_identity(cfg, seed, dataset, description)
    if out_dir is not None:
        cached = reuse(out_dir / RESULT, identity, "trains the model again")
        if cached is not None and (out_dir / MODEL).is_file():
            return cached
    torch.manual_seed(seed)
    model = build().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    log: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    checkpoint = None if out_dir is None else out_dir / CHECKPOINT
    if checkpoint is not None and checkpoint.is_file():
        state = load_torch(checkpoint, "trains the model from its first epoch", map_location=device)
        check_record(checkpoint, state, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, log, elapsed = state["epoch"] + 1, state["log"], state["elapsed"]

    train_data = DeviceData(dataset.train, dataset, device)
    test_data = DeviceData(dataset.test, dataset, device)
    started = time.perf_counter() - elapsed
    steps = train_data.num_batches(cfg.batch_size)
    progress_bar = bar(
        cfg.epochs * steps, desc="train", unit="batch", enabled=progress, initial=start_epoch * steps
    )
    for epoch in range(start_epoch, cfg.epochs):
        lr = cosine_lr(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = cfg.drop_path * epoch / cfg.epochs
        torch.manual_seed(
            derive_seed(seed, "drop_path", epoch)
        )  # drop-path masks depend on (seed, epoch) only
        loss, acc = train_epoch(
            model, train_data, optimizer, cfg, seed=seed, epoch=epoch, on_batch=progress_bar.update
        )
        entry: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": loss, "train_acc": acc}
        last = epoch == cfg.epochs - 1
        if last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0):
            entry["test_loss"], entry["test_acc"] = evaluate(model, test_data, precision=cfg.precision)
        entry["elapsed"] = time.perf_counter() - started
        log.append(entry)
        if out_dir is not None:  # the log itself goes into the checkpoint and result.json
            metrics_log.record(out_dir, epoch, entry)
        progress_bar.set_postfix(
            epoch=epoch,
            loss=f"{loss:.3f}",
            acc=f"{acc:.1f}",
            test=f"{entry.get('test_acc', float('nan')):.1f}",
        )
        if checkpoint is not None and (last or (epoch + 1) % cfg.checkpoint_every == 0):
            save_torch(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "epoch": epoch, "log": log, "elapsed": entry["elapsed"],
                                    IDENTITY: json.dumps(identity, sort_keys=True)})  # fmt: skip
    progress_bar.close()

    if not log:  # zero epochs configured
        test_loss, test_acc = evaluate(model, test_data, precision=cfg.precision)
    else:
        test_loss, test_acc = log[-1]["test_loss"], log[-1]["test_acc"]
    from nasaudit.spaces.darts.network import count_parameters

    best_acc, best_epoch = _best_epoch(log, test_acc)
    result = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "best_test_accuracy": best_acc,
        "best_epoch": best_epoch,
        "params": count_parameters(model),
        "epochs": cfg.epochs,
        "log": log,
        "wall_time": time.perf_counter() - started,
        "config": cfg,
        "seed": seed,
        "dataset": dataset.name,
        "train_sha256": dataset.train.sha256,
        "description": description or {},
        IDENTITY: identity,
        "manifest": environment_manifest(str(device)),
    }
    if out_dir is not None:  # weights, then the "finished" marker, then drop the checkpoint
        save_torch(out_dir / MODEL, model.state_dict())
        write_json(out_dir / RESULT, jsonable(result))
        checkpoint.unlink(missing_ok=True)  # type: ignore[union-attr]
    return jsonable(result)
