"""κ_NTK: the batched implementation equals the per-sample reference, and both match closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nasaudit.config import load_profile
from nasaudit.nas import tenas
from nasaudit.proxies.ntk import ntk_cond, ntk_weights
from nasaudit.proxies.ntk_backward import BatchCotangents


def _sep_conv(channels: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                  groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    )  # fmt: skip


def _darts_like_net() -> nn.Module:
    """Every op family of the DARTS space once: BN-coupled, depthwise, dilated, pooled."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        _sep_conv(4, 3),
        _sep_conv(4, 5, dilation=2),
        nn.MaxPool2d(3, stride=2, padding=1),
        _sep_conv(4, 3),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


def _batch(n: int = 8, size: int = 12) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_batched_equals_per_sample_reference_on_the_tenas_scoring_net() -> None:
    # The network TE-NAS scores at paper sizes: C = 1, all 7 ops on every edge, a batch of 14 CIFAR-sized
    # images. Its convolutions cover every case of the batched backward (1×1, depthwise, dilated,
    # strided, strided dilated, grouped, the 3-channel stem).
    cfg = load_profile("paper").tenas
    torch.manual_seed(0)
    net = tenas.scoring_net(tenas.initial_candidates(cfg), cfg, num_classes=10, stem=True)
    inputs = _batch(n=cfg.batch_size, size=32)
    reference = ntk_cond(net, inputs, None, batched=False)
    batched = ntk_cond(net, inputs, None, batched=True)
    assert 1.0 < reference < 1e5
    assert abs(batched - reference) / reference <= 1e-4


def _conv_variants_net() -> nn.Module:
    """Convolutions the scoring net lacks: biased, 'same'-padded, padded 1×1, groups of several channels."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False),
        nn.Conv2d(4, 6, 1, stride=2, bias=True),
        nn.Conv2d(6, 6, 1, padding=1, groups=2, bias=False),
        nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False),
        nn.Conv2d(6, 6, 3, padding="same"),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def test_batched_equals_per_sample_reference_on_other_convolutions() -> None:
    net, inputs = _conv_variants_net(), _batch(n=6, size=15)
    reference = ntk_cond(net, inputs, None, batched=False)
    assert 1.0 < reference < 1e5
    assert ntk_cond(net, inputs, None, batched=True) == pytest.approx(reference, rel=1e-4)


def _pool_and_norm_variants_net() -> nn.Module:
    """Pools and BNs the scoring net lacks: overlapping max windows (gradients that add up), dilated and
    ceil-mode max pools, padded averages counting the padding, a divisor override, ceil-mode averages
    (left to PyTorch), BN without running statistics and without affine weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True),
        nn.MaxPool2d(2, stride=1, dilation=2, ceil_mode=True),
        nn.AvgPool2d(3, stride=2, padding=1, divisor_override=4),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.LazyLinear(5),
    )


def test_batched_equals_per_sample_reference_on_other_pools_and_norms() -> None:
    net, inputs = _pool_and_norm_variants_net(), _batch(n=6, size=15)
    net(inputs)  # materialise the lazy head
    reference = ntk_cond(net, inputs, None, batched=False)
    assert 1.0 < reference < 1e5
    assert ntk_cond(net, inputs, None, batched=True) == pytest.approx(reference, rel=1e-4)


class _ScaledLinear(nn.Module):
    """A linear layer times an architecture weight α, returning (logits, aux) like an eval network."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.unused = nn.Linear(features, classes)
        self.arch_alpha = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.fc(x) * self.arch_alpha
        return logits, logits.detach()


@pytest.mark.parametrize("batched", [False, True])
def test_linear_network_closed_form(batched: bool) -> None:
    # Σ_k z_nk = α·Σ_k (W x_n)_k + const, so ∂/∂W_kj = α·x_nj for every k and Θ = K·α²·X Xᵀ.
    # Biases, α and the unused layer must not enter J.
    torch.manual_seed(0)
    features, classes = 6, 3
    net = _ScaledLinear(features, classes)
    inputs = torch.randn(4, features)
    x = inputs.numpy().astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(classes * 1.5**2 * x @ x.T)
    expected = eigenvalues[-1] / eigenvalues[0]
    assert ntk_cond(net, inputs, None, batched=batched) == pytest.approx(expected, rel=1e-4)


def test_weights_are_conv_bn_gamma_and_linear_only() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    net.register_parameter("alphas_weight", nn.Parameter(torch.zeros(3)))
    assert sorted(ntk_weights(net)) == ["0.weight", "1.weight", "3.weight"]


@pytest.mark.parametrize("batched", [False, True])
def test_nan_becomes_1e5(batched: bool) -> None:
    inputs = _batch(n=4)
    inputs[0, 0, 0, 0] = float("nan")
    assert ntk_cond(_darts_like_net(), inputs, None, batched=batched) == 1e5


def test_dropout_mask_is_shared_like_the_reference() -> None:
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    inputs = torch.randn(5, 6)
    torch.manual_seed(7)
    reference = ntk_cond(net, inputs, None, batched=False)
    torch.manual_seed(7)
    assert ntk_cond(net, inputs, None, batched=True) == pytest.approx(reference, rel=1e-4)


def test_batched_handles_cumulative_bn_momentum() -> None:
    # momentum=None makes BN read num_batches_tracked as a Python number inside the forward.
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 10 * 10, 3))  # fmt: skip
    inputs = _batch(n=5)
    reference = ntk_cond(net, inputs, None, batched=False)
    assert ntk_cond(net, inputs, None, batched=True) == pytest.approx(reference, rel=1e-4)
    assert net[1].num_batches_tracked.item() == 0


def test_reference_path_restores_running_stats() -> None:
    net, inputs = _darts_like_net(), _batch(n=4)
    before = {name: b.clone() for name, b in net.named_buffers()}
    ntk_cond(net, inputs, None, batched=False)
    assert all(torch.equal(before[name], b) for name, b in net.named_buffers())


def test_rerouted_forward_gives_an_ordinary_backward_the_same_gradients() -> None:
    # Outside vmap the rerouted backwards see one cotangent and treat it as a batch of one.
    net, inputs = _darts_like_net(), _batch(n=4).requires_grad_()
    expected = torch.autograd.grad(net(inputs).square().sum(), [inputs, *net.parameters()])
    with BatchCotangents():
        loss = net(inputs).square().sum()
    actual = torch.autograd.grad(loss, [inputs, *net.parameters()])
    assert all(torch.allclose(a, e, rtol=1e-4, atol=1e-6) for a, e in zip(actual, expected, strict=True))
