"""Training throughput of our trainer against a plain PyTorch loop on the same network and batch.

The plain loop is what a typical CIFAR script does: a torch DataLoader over PIL images with
torchvision transforms (crop, flip, to-tensor, normalise) plus cutout, fp32, NCHW. Ours keeps the
data on the device with batched augmentation, channels_last on CUDA, in the recipe's precision (fp32
as the paper profile runs; ``run(..., precision="bf16")`` times the opt-in bf16 autocast).
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

from nasaudit.config import load_profile
from nasaudit.data.datasets import Split, make_dataset
from nasaudit.data.device import DeviceData
from nasaudit.models import MODELS
from nasaudit.spaces.darts import load
from nasaudit.train import train_epoch


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform: T.Compose) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self.transform(Image.fromarray(self.split.images[i])), int(self.split.labels[i])


class _Cutout:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:]
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        x[:, y0:y1, x0:x1] = 0
        return x


def _plain_loop(model, dataset, cfg, device, batches: int) -> float:  # type: ignore[no-untyped-def]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(dataset.mean, dataset.std), _Cutout(cfg.augment.cutout)])  # fmt: skip
    workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        _PilDataset(dataset.train, transform), batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True,
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == 2:  # warm-up excluded
            _sync(device)
            start, seen = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, aux = model(x)
        loss = F.cross_entropy(logits, y) + cfg.auxiliary_weight * F.cross_entropy(aux, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen += len(y)
        if step + 1 == batches:
            break
    _sync(device)
    return seen / (time.perf_counter() - start)


def _ours(model, dataset, cfg, device, batches: int) -> float:  # type: ignore[no-untyped-def]
    data = DeviceData(dataset.train, dataset, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_epoch(model, _subset(data, 2 * cfg.batch_size), opt, cfg, seed=0, epoch=0)  # warm-up
    timed = _subset(data, batches * cfg.batch_size)
    _sync(device)
    start = time.perf_counter()
    train_epoch(model, timed, opt, cfg, seed=0, epoch=1)
    _sync(device)
    return len(timed) / (time.perf_counter() - start)


def _subset(data: DeviceData, n: int) -> DeviceData:
    sub = object.__new__(DeviceData)
    sub.__dict__.update(data.__dict__)
    sub.images, sub.labels = data.images[:n], data.labels[:n]
    return sub


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: torch.device, precision: str = "fp32") -> dict[str, float]:
    profile = load_profile("paper")
    gpu = device.type == "cuda"
    channels, layers, batches = (36, 20, 60) if gpu else (16, 8, 6)
    cfg = dataclasses.replace(profile.train, batch_size=128 if gpu else 64, precision=precision)
    n = (batches + 4) * cfg.batch_size
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    dataset = make_dataset("synthetic-cifar", split, split, tuple(str(i) for i in range(10)))
    net = dataclasses.replace(profile.darts_net, channels=channels, layers=layers)
    sized = dataclasses.replace(profile, darts_net=net)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return MODELS.get("darts")(load("pdarts"), 10, sized).to(device)

    plain = _plain_loop(model(), dataset, cfg, device, batches)
    ours = _ours(model(), dataset, cfg, device, batches)
    print(
        f"[train/{device.type}/{precision}] P-DARTS eval net C={channels} L={layers} batch {cfg.batch_size}: "
        f"plain loop {plain:8.1f} img/s, nasaudit {ours:8.1f} img/s, ratio {ours / plain:5.2f}x"
    )
    return {"plain": plain, "ours": ours, "ratio": ours / plain}


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
