"""Confidence-based label flipping: ranking and relabelling on known logits, and the cached surrogate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import nasaudit.train as train_module
from nasaudit.attacks import AttackContext, run_attack
from nasaudit.attacks.clf import clf_poison, confidence_flip, surrogate_logits
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError

CPU = torch.device("cpu")
SLOPES = torch.tensor([1.0, -1.0, 0.5, -2.0])


class KnownLogits(nn.Module):
    """Logit of class c = SLOPES[c] · (mean of the normalised image): computable by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * SLOPES


def _expected_logits(dataset) -> np.ndarray:
    x = (dataset.train.images / 255.0 - np.array(dataset.mean)) / np.array(dataset.std)
    return x.mean(axis=(1, 2, 3))[:, None] * SLOPES.double().numpy()


def test_confidence_flip_takes_the_largest_max_logits_and_their_argmin() -> None:
    logits = np.array([[0.0, 1.0, -1.0], [5.0, 2.0, 3.0], [0.2, 0.1, 0.3], [4.0, 5.0, -2.0], [5.0, 0.0, 9.0]])
    indices, labels = confidence_flip(logits, 0.6)
    assert indices.tolist() == [4, 1, 3] and labels.tolist() == [1, 1, 2]
    ties = np.array([[1.0, 0.0], [1.0, 0.5], [0.0, 1.0]])
    assert confidence_flip(ties, 0.34)[0].tolist() == [0]  # equal maxima: the lower index first
    with pytest.raises(NasauditError, match="outside"):
        confidence_flip(logits, 0.0)


def test_clf_with_an_injected_surrogate_of_known_logits(tiny_dataset) -> None:
    expected = _expected_logits(tiny_dataset)
    assert np.allclose(surrogate_logits(KnownLogits(), tiny_dataset, CPU, batch_size=7), expected, atol=1e-5)
    poison = clf_poison(tiny_dataset, 0.25, 0, KnownLogits(), CPU, {"surrogate": "known"})
    top = np.argsort(-expected.max(axis=1))[:10]
    assert sorted(poison.indices.tolist()) == sorted(top.tolist()) == poison.indices.tolist()
    assert poison.labels.tolist() == expected[poison.indices].argmin(axis=1).tolist()
    # positive image means are most confident for class 0 (slope 1) and flipped to class 3 (slope −2)
    means = expected[:, 0]
    assert all((means[i] > 0) == (label == 3) for i, label in zip(poison.indices, poison.labels, strict=True))
    assert poison.params["labels_unchanged"] == int(
        (poison.labels == tiny_dataset.train.labels[poison.indices]).sum()
    )


def test_surrogate_logits_are_eval_mode_and_unaugmented(tiny_dataset) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(8, 3, 32, 32))  # train-mode pass: BN running statistics move away from (0, 1)
    model.train()
    logits = surrogate_logits(model, tiny_dataset, CPU, batch_size=16)
    x = torch.from_numpy(tiny_dataset.train.images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(tiny_dataset.mean).view(1, 3, 1, 1)) / torch.tensor(tiny_dataset.std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        direct = model.eval()(x).numpy()
    assert np.allclose(logits, direct, atol=1e-5) and logits.shape == (40, 4)


def test_clf_trains_the_surrogate_once_and_reuses_it_across_budgets(
    tmp_path, tiny_dataset, monkeypatch
) -> None:
    profile = load_profile("smoke")
    profile = dataclasses.replace(
        profile, surrogate=dataclasses.replace(profile.surrogate, epochs=1, batch_size=20)
    )
    context = AttackContext(profile, CPU, tmp_path)
    small = run_attack("clf", tiny_dataset, 0.1, 0, context)
    assert len(small.indices) == 4 and small.params["surrogate"] == "resnet18_cifar"
    assert small.params["surrogate_epochs"] == 1
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("retrained the surrogate"))
    large = run_attack("clf", tiny_dataset, 0.5, 0, context)
    assert set(small.indices) <= set(large.indices) and len(large.indices) == 20
    lookup = dict(zip(large.indices.tolist(), large.labels.tolist(), strict=True))
    assert [lookup[i] for i in small.indices.tolist()] == small.labels.tolist()
    assert large.params["surrogate_dir"] == small.params["surrogate_dir"]
