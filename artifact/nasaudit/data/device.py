"""The training set as one tensor on the device, streamed as shuffled, augmented batches.

Following airbench: CIFAR-sized data fits in GPU memory, so there are no DataLoader workers and no
per-image Python; crop, flip and cutout run batched on the device. Each epoch's order and augmentation
are drawn from a generator seeded by (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from nasaudit.batch_cap import capped, capped_size
from nasaudit.config import AugmentConfig
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.seeds import derive_seed


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, epoch): the key to bit-identical resumption."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, "epoch", epoch))
    return g


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as float: uint8 levels divided by 255, float images (a denoised defense's,
    stored unquantised as the authors stored theirs) as they are."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


class DeviceData:
    """One split resident on ``device`` with its normalisation."""

    def __init__(self, split: Split, dataset: ImageDataset, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.images = torch.from_numpy(split.images).to(self.device)  # N×H×W×3 uint8 (or float in [0, 1])
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, 3, 1, 1)
        self.channels_last = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        augment: AugmentConfig | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised float batches (N×3×H×W) and labels for one epoch (under a batch cap,
        ``nasaudit.batch_cap``, its first batches only)."""
        batch_size = capped_size(batch_size)
        g = epoch_generator(seed, epoch, self.device)
        n = len(self)
        order = (
            torch.randperm(n, device=self.device, generator=g)
            if shuffle
            else torch.arange(n, device=self.device)
        )
        for b in capped(range(self.num_batches(batch_size, drop_last))):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield self.transform(self.images[idx], augment, g), self.labels[idx]

    def transform(
        self,
        images: torch.Tensor,
        augment: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """N×H×W×3 pixels → normalised float N×3×H×W, augmented when ``augment`` is given."""
        x = unit_pixels(images.permute(0, 3, 1, 2))
        if augment is not None:
            x = augment_batch(x, augment, generator)
        x = (x - self.mean) / self.std
        if augment is not None and augment.cutout > 0:
            x = cutout(x, augment.cutout, generator)
        # channels_last pays off on CUDA tensor cores; on CPU the standard layout is faster.
        return x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )


def augment_batch(x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, each sample drawn independently."""
    n, _, h, w = x.shape
    if augment.crop_padding > 0:
        p = augment.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        padded = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * p))
        x = padded.gather(3, cols.expand(n, x.shape[1], h, w))
    if augment.flip:
        flip = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if augment.autoaugment:
        x = autoaugment(x, generator)
    return x


def autoaugment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """torchvision's AutoAugment (CIFAR-10 policy) on a batch of [0, 1] images, one draw per image.

    torchvision draws one sub-policy per call, so it is called image by image to keep per-sample
    randomness (≈ 0.5 ms per 32×32 image on one CPU core; launch-bound on a GPU). Its draws come from
    the global CPU generator, which is forked and seeded from ``generator``: the result depends only
    on (seed, epoch) and the global random stream is left as it was.
    """
    from torchvision.transforms import v2

    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    seed = int(torch.randint(0, 2**62, (1,), device=x.device, generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([policy(image) for image in x])


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) centred on a uniform pixel, as DARTS does."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= cy - size // 2) & (ys < cy + size - size // 2)
    in_x = (xs >= cx - size // 2) & (xs < cx + size - size // 2)
    mask = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)
