"""The batch cap: loops stop early only while one is active, and nothing changes without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasaudit.batch_cap import active_cap, batch_cap, capped, capped_size, fill_skipped
from nasaudit.data.device import DeviceData


def test_without_a_cap_everything_is_returned_as_it_is() -> None:
    items = [1, 2, 3]
    assert active_cap() is None
    assert capped(items) is items  # the very object: no wrapper on the normal path
    assert capped_size(128) == 128
    rows = np.arange(3)
    assert fill_skipped(rows, 10) is rows


def test_a_cap_bounds_batches_and_images_and_is_lifted_afterwards() -> None:
    with batch_cap(2, images=8):
        assert list(capped(range(10))) == [0, 1]
        assert capped_size(128) == 8 and capped_size(4) == 4
        with batch_cap(1):  # nested: the inner cap wins, then the outer one is back
            assert list(capped(range(10))) == [0] and capped_size(128) == 128
        assert list(capped(range(10))) == [0, 1]
    assert active_cap() is None and list(capped(range(3))) == [0, 1, 2]


@pytest.mark.parametrize("batches, images", [(0, None), (1, 0)])
def test_a_cap_must_leave_something_to_run(batches: int, images: int | None) -> None:
    with pytest.raises(ValueError), batch_cap(batches, images):
        pass


def test_device_data_yields_only_the_capped_batches(tiny_dataset) -> None:
    data = DeviceData(tiny_dataset.train, tiny_dataset)
    full = list(data.batches(16, seed=3))
    assert [len(y) for _, y in full] == [16, 16, 8]
    with batch_cap(2, images=5):
        capped_batches = list(data.batches(16, seed=3))
    assert [len(y) for _, y in capped_batches] == [5, 5]
    with batch_cap(1):
        (first,) = list(data.batches(16, seed=3))
    assert torch.equal(first[1], full[0][1])  # the same first batch as the uncapped epoch


def test_skipped_rows_are_filled_by_repeating_the_computed_ones() -> None:
    rows = np.array([[1.0, 2.0], [3.0, 4.0]])
    with batch_cap(1):
        filled = fill_skipped(rows, 5)
    assert filled.shape == (5, 2) and np.array_equal(filled[:, 0], [1, 3, 1, 3, 1])


@pytest.mark.parametrize("objective", ["per_batch", "joint"])
def test_gradient_canceling_under_a_cap_stays_finite_and_touches_only_the_chunks_it_saw(
    objective: str,
) -> None:
    import dataclasses

    from nasaudit.attacks.gc import GradientProblem, canceling_loss, mean_gradient, weights_and_biases
    from nasaudit.config import load_profile

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(36, 4)
    )
    problem = GradientProblem(model, weights_and_biases(model), torch.zeros(3), torch.ones(3))
    images = torch.randint(0, 256, (40, 8, 8, 3), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    x, y = problem.pixels(images[:12]), labels[:12]
    delta = torch.full_like(x, 0.03)
    cfg = dataclasses.replace(load_profile("smoke").gc, objective=objective, poison_batch_size=128)
    with batch_cap(1, images=5):
        _, g_clean = mean_gradient(problem, images, labels, 40, torch.arange(40))
        loss, cosine, grad = canceling_loss(problem, g_clean, 0.3, x, y, delta, cfg)
    assert np.isfinite(loss) and np.isfinite(cosine) and torch.isfinite(grad).all()
    assert grad[5:].abs().sum() == 0 and grad[:5].abs().sum() > 0  # only the first chunk of 5 was seen


@pytest.mark.cuda
def test_device_data_on_a_gpu_yields_capped_channels_last_batches(tiny_dataset) -> None:
    data = DeviceData(tiny_dataset.train, tiny_dataset, "cuda")
    with batch_cap(1, images=5):
        ((x, y),) = list(data.batches(16, seed=2**31 - 1))  # a grid-sized seed
    assert x.is_cuda and x.shape == (5, 3, 32, 32) and len(y) == 5
    assert x.is_contiguous(memory_format=torch.channels_last)
