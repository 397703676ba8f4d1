"""P-DARTS search-step throughput: our alternating step against a plain PyTorch loop on the same supernet.

Both run first-order DARTS as the official search does: one α step on an arch-val batch, then one
weight step on a weight-train batch. The plain loop is what the official script does: two torch
DataLoaders over PIL images with torchvision transforms (crop, flip, to-tensor, normalise), fp32, NCHW,
a full backward for each step. Ours keeps both halves on the device with batched augmentation, lets
each step's backward compute only the gradients it uses, and on CUDA adds channels_last; both run in
fp32, as the paper profile's ``[pdarts] precision`` does. Throughput counts weight-train images per second.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from nasaudit.config import PDartsConfig, load_profile
from nasaudit.data.datasets import ImageDataset, Split, make_dataset
from nasaudit.data.device import DeviceData
from nasaudit.nas.pdarts import search_epoch
from nasaudit.spaces.darts import EDGES, PRIMITIVES, SuperNet

STAGE3_OPS = ("skip_connect", "sep_conv_3x3", "sep_conv_5x5")  # a typical last-stage candidate set


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform: T.Compose) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self.transform(Image.fromarray(self.split.images[i])), int(self.split.labels[i])


def _optimizers(model: SuperNet, cfg: PDartsConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    weights = torch.optim.SGD(
        model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    arch = torch.optim.Adam(
        model.arch_parameters(),
        lr=cfg.arch_lr,
        betas=tuple(cfg.arch_betas),
        weight_decay=cfg.arch_weight_decay,
    )
    return weights, arch


def _plain_loop(
    model: SuperNet, dataset: ImageDataset, cfg: PDartsConfig, device: torch.device, batches: int
) -> float:
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(dataset.mean, dataset.std),
        ]
    )
    workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0

    def loader(split: Split) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _PilDataset(split, transform),
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )

    w_opt, a_opt = _optimizers(model, cfg)
    model.train()
    val = iter(loader(dataset.test))
    seen, start = 0, 0.0
    for step, (x, y) in enumerate(loader(dataset.train)):
        if step == 2:  # warm-up excluded
            _sync(device)
            start, seen = time.perf_counter(), 0
        xv, yv = next(val)
        xv, yv = xv.to(device, non_blocking=True), yv.to(device, non_blocking=True)
        a_opt.zero_grad()
        F.cross_entropy(model(xv), yv).backward()
        torch.nn.utils.clip_grad_norm_(model.arch_parameters(), cfg.grad_clip)
        a_opt.step()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        w_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.grad_clip)
        w_opt.step()
        seen += len(y)
        if step + 1 == batches + 2:
            break
    _sync(device)
    return seen / (time.perf_counter() - start)


def _ours(
    model: SuperNet, dataset: ImageDataset, cfg: PDartsConfig, device: torch.device, batches: int
) -> float:
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    w_opt, a_opt = _optimizers(model, cfg)
    train, val = DeviceData(dataset.train, dataset, device), DeviceData(dataset.test, dataset, device)

    def epoch(n: int, index: int) -> None:
        search_epoch(
            model,
            _subset(train, n),
            _subset(val, n),
            w_opt,
            a_opt,
            cfg,
            seed=0,
            stage=0,
            epoch=index,
            train_arch=True,
        )

    epoch(2 * cfg.batch_size, 0)  # warm-up
    _sync(device)
    start = time.perf_counter()
    epoch(batches * cfg.batch_size, 1)
    _sync(device)
    return batches * cfg.batch_size / (time.perf_counter() - start)


def _subset(data: DeviceData, n: int) -> DeviceData:
    sub = object.__new__(DeviceData)
    sub.__dict__.update(data.__dict__)
    sub.images, sub.labels = data.images[:n], data.labels[:n]
    return sub


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(
    device: torch.device, channels: int, layers: int, ops: tuple[str, ...], batch_size: int, batches: int
) -> dict[str, float]:
    """Throughput of both loops on a ``layers``-cell supernet with the candidates ``ops`` on every edge."""
    cfg = dataclasses.replace(load_profile("paper").pdarts, batch_size=batch_size)
    n = (batches + 4) * batch_size
    rng = np.random.default_rng(0)

    def split() -> Split:
        return Split(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))

    dataset = make_dataset("synthetic-cifar", split(), split(), tuple(str(i) for i in range(10)))
    candidates = [list(ops)] * len(EDGES)

    def model() -> SuperNet:
        torch.manual_seed(0)
        return SuperNet(channels, layers, 10, candidates_normal=candidates, candidates_reduce=candidates).to(
            device
        )

    plain = _plain_loop(model(), dataset, cfg, device, batches)
    ours = _ours(model(), dataset, cfg, device, batches)
    print(
        f"[pdarts/{device.type}] supernet C={channels} L={layers} {len(ops)} ops/edge batch {batch_size}: "
        f"plain loop {plain:8.1f} img/s, nasaudit {ours:8.1f} img/s, ratio {ours / plain:5.2f}x"
    )
    return {"plain": plain, "ours": ours, "ratio": ours / plain}


def main() -> None:
    run(torch.device("cpu"), channels=4, layers=5, ops=PRIMITIVES, batch_size=16, batches=3)
    if torch.cuda.is_available():
        run(
            torch.device("cuda"), channels=16, layers=5, ops=PRIMITIVES, batch_size=96, batches=40
        )  # paper stage 1
        run(
            torch.device("cuda"), channels=16, layers=17, ops=STAGE3_OPS, batch_size=96, batches=40
        )  # paper stage 3


if __name__ == "__main__":
    from nasaudit import verbosity
    from nasaudit.threads import configure

    verbosity.configure()  # the thread choice is logged
    configure()  # as every nasaudit job: NASAUDIT_THREADS / OMP_NUM_THREADS, else the usable CPUs
    main()
