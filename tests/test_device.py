"""The device-resident batch stream: coverage, determinism, and each augmentation doing what it says."""

from __future__ import annotations

import torch

from nasaudit.config import AugmentConfig
from nasaudit.data.device import DeviceData, augment_batch, cutout

NO_AUG = AugmentConfig(crop_padding=0, flip=False, cutout=0)
FULL = AugmentConfig(crop_padding=4, flip=True, cutout=16)


def test_an_epoch_visits_every_sample_once(tiny_dataset) -> None:
    data = DeviceData(tiny_dataset.train, tiny_dataset)
    batches = list(data.batches(16, seed=0, augment=FULL))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    assert batches[0][0].shape == (16, 3, 32, 32) and batches[0][0].dtype == torch.float32
    # Unaugmented, unshuffled batches are the normalised images in order.
    plain = torch.cat([x for x, _ in data.batches(16, shuffle=False)])
    mean = torch.tensor(tiny_dataset.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_dataset.std).view(1, 3, 1, 1)
    expected = (torch.from_numpy(tiny_dataset.train.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(plain, expected)
    assert len(list(data.batches(16, drop_last=True))) == 2


def test_same_seed_and_epoch_give_the_same_batches(tiny_dataset) -> None:
    data = DeviceData(tiny_dataset.train, tiny_dataset)

    def run(seed: int, epoch: int) -> list[torch.Tensor]:
        return [x for x, _ in data.batches(16, seed=seed, epoch=epoch, augment=FULL)]

    a, b = run(1, 3), run(1, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], run(1, 4)[0]) and not torch.equal(a[0], run(2, 3)[0])


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, AugmentConfig(crop_padding=2, flip=False, cutout=0), g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_whole_images_only() -> None:
    x = torch.rand(64, 3, 8, 8)
    out = augment_batch(
        x, AugmentConfig(crop_padding=0, flip=True, cutout=0), torch.Generator().manual_seed(0)
    )
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54  # about half


def test_cutout_zeros_one_clipped_square_per_image() -> None:
    x = torch.ones(200, 3, 32, 32)
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(dim=1)  # same mask on every channel
    assert ((out == 0).any(dim=1) == zeros).all()
    areas = zeros.flatten(1).sum(1)
    assert areas.max() == 256 and areas.min() >= 64  # a full square inside, a quarter at a corner
    for mask in zeros[:20]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols)  # rectangular


def test_augmentation_can_be_switched_off(tiny_dataset) -> None:
    data = DeviceData(tiny_dataset.train, tiny_dataset)
    off = next(data.batches(40, shuffle=False, augment=NO_AUG))[0]
    none = next(data.batches(40, shuffle=False))[0]
    assert torch.equal(off, none)
