"""Every registered proxy leaves the network untouched; each formula matches a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.errors import NasauditError
from nasaudit.proxies import PROXIES, Proxy, relative_change
from nasaudit.proxies.linear_regions import linear_regions
from nasaudit.proxies.zero_cost import fisher, grad_norm, grasp, jacob_cov, jacob_cov_of, snip, synflow


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def _conv_batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 5, (6,), generator=generator)


def test_registry_holds_the_papers_metrics() -> None:
    expected = ["fisher", "grad_norm", "grasp", "jacob_cov", "linear_regions", "ntk_cond", "snip", "synflow"]
    assert PROXIES.names() == expected


@pytest.mark.parametrize("name", PROXIES.names())
def test_proxy_leaves_network_untouched(name: str) -> None:
    net = _conv_net()
    net.eval()
    net[1].train()
    net[0].weight.grad = torch.randn_like(net[0].weight)
    net[5].bias.requires_grad_(False)
    with torch.no_grad():
        for module in (net[1], net[5]):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = {key: value.clone() for key, value in net.state_dict().items()}
    requires_grad = [p.requires_grad for p in net.parameters()]
    grads = [(p.grad, None if p.grad is None else p.grad.clone()) for p in net.parameters()]
    modes = [module.training for module in net.modules()]

    inputs, targets = _conv_batch()
    score = PROXIES.get(name)(net, inputs, targets)

    assert isinstance(score, float) and math.isfinite(score)
    assert all(torch.equal(state[key], value) for key, value in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == requires_grad
    for p, (grad, saved) in zip(net.parameters(), grads, strict=True):
        assert p.grad is grad
        assert saved is None or torch.equal(p.grad, saved)
    assert [module.training for module in net.modules()] == modes
    assert all(not module._forward_hooks for module in net.modules())


class _WithAux(nn.Module):
    """An eval-network-like wrapper whose forward returns (logits, auxiliary logits)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(x)
        return logits, 3 * logits


@pytest.mark.parametrize("name", PROXIES.names())
def test_proxy_scores_the_main_logits_of_a_tuple_output(name: str) -> None:
    inputs, targets = _conv_batch()
    proxy = PROXIES.get(name)
    assert proxy(_WithAux(_conv_net()), inputs, targets) == pytest.approx(proxy(_conv_net(), inputs, targets))


@pytest.mark.parametrize("proxy", [grad_norm, snip, grasp, fisher])
def test_loss_based_proxies_need_labels(proxy: Proxy) -> None:
    inputs, _ = _conv_batch()
    with pytest.raises(NasauditError, match="needs labels"):
        proxy(_conv_net(), inputs, None)


# --- closed forms on a one-layer linear network: z = W x + b, L = mean_n CE(z_n, y_n) ---------------


@pytest.fixture
def linear_case() -> tuple[nn.Linear, Tensor, Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).double(), torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 0])


def _numpy_linear(layer: nn.Linear, inputs: Tensor, targets: Tensor) -> dict[str, np.ndarray]:
    """W, x, logits Z, softmax P, one-hot Y and ∂L/∂W = (P − Y)ᵀ x / N, computed without autograd."""
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    x = inputs.numpy()
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.eye(w.shape[0])[targets.numpy()]
    return {"w": w, "x": x, "z": z, "p": p, "y": y, "grad": (p - y).T @ x / len(x)}


def test_grad_norm_closed_form(linear_case: tuple[nn.Linear, Tensor, Tensor]) -> None:
    m = _numpy_linear(*linear_case)
    assert grad_norm(*linear_case) == pytest.approx(np.linalg.norm(m["grad"]), rel=1e-10)


def test_snip_closed_form(linear_case: tuple[nn.Linear, Tensor, Tensor]) -> None:
    m = _numpy_linear(*linear_case)
    assert snip(*linear_case) == pytest.approx(np.abs(m["w"] * m["grad"]).sum(), rel=1e-10)


def test_grasp_closed_form(linear_case: tuple[nn.Linear, Tensor, Tensor]) -> None:
    # Directional derivative of ∂L/∂W along g: (1/N) Σ_n (diag p_n − p_n p_nᵀ)(g x_n) x_nᵀ.
    m = _numpy_linear(*linear_case)
    g = m["grad"]
    hg = sum(
        np.outer((np.diag(p) - np.outer(p, p)) @ (g @ x), x) for p, x in zip(m["p"], m["x"], strict=True)
    ) / len(m["x"])
    assert grasp(*linear_case) == pytest.approx(-(m["w"] * hg).sum(), rel=1e-10)


def test_fisher_closed_form(linear_case: tuple[nn.Linear, Tensor, Tensor]) -> None:
    # The activation is z itself and ∂L/∂z = (P − Y)/N; every weight row has fan-in 4.
    m = _numpy_linear(*linear_case)
    g_nk = m["z"] * (m["p"] - m["y"]) / len(m["x"])
    expected = (0.5 * (g_nk**2).mean(0)).sum() * 4
    assert fisher(*linear_case) == pytest.approx(expected, rel=1e-10)


def test_synflow_closed_form() -> None:
    # R = 1ᵀ(|W2|(|W1|·1 + |b1|) + |b2|): ∂R/∂W1_ij = (|W2|ᵀ1)_i and ∂R/∂W2_ki = (|W1|·1 + |b1|)_i.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    w1, b1 = (np.abs(t.detach().double().numpy()) for t in (net[0].weight, net[0].bias))
    w2 = np.abs(net[1].weight.detach().double().numpy())
    hidden = w1.sum(1) + b1
    expected = (w1 * w2.sum(0)[:, None]).sum() + (w2 * hidden[None, :]).sum()
    assert synflow(net, torch.randn(7, 4), None) == pytest.approx(expected, rel=1e-10)
    assert net[0].weight.dtype == torch.float32 and (net[0].weight < 0).any()


def test_jacob_cov_closed_form() -> None:
    # ∂(Σ logits)/∂x_n = W1ᵀ diag(mask_n) W2ᵀ 1 for a one-hidden-layer ReLU network.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    inputs = torch.randn(5, 8, dtype=torch.float64)
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2 = net[2].weight.detach().numpy()
    masks = (inputs.numpy() @ w1.T + b1 > 0).astype(np.float64)
    jacobian = (masks * w2.sum(0)) @ w1
    v = np.linalg.eigvalsh(np.corrcoef(jacobian))
    expected = -np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5))
    assert jacob_cov(net, inputs, None) == pytest.approx(expected, rel=1e-8)
    assert inputs.grad is None


def test_jacob_cov_of_scores_a_batch_of_networks_and_marks_degenerate_ones_nan() -> None:
    rng = np.random.default_rng(0)
    jacobians = rng.normal(size=(3, 6, 2, 5))
    jacobians[1, 4] = 0.25  # one sample whose input gradient is constant: no correlation
    scores = jacob_cov_of(torch.from_numpy(jacobians)).numpy()
    for k in (0, 2):
        v = np.linalg.eigvalsh(np.corrcoef(jacobians[k].reshape(6, -1)))
        assert scores[k] == pytest.approx(-np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5)), rel=1e-10)
    assert np.isnan(scores[1])


def test_fisher_is_unaffected_by_an_inplace_relu_after_a_layer() -> None:
    # The ReLU overwrites the recorded activation, but a·∂L/∂a is 0 wherever it zeroes a.
    torch.manual_seed(0)
    inputs, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    inplace = nn.Sequential(plain[0], nn.ReLU(inplace=True), plain[2])
    assert fisher(inplace, inputs, targets) == pytest.approx(fisher(plain, inputs, targets), rel=1e-6)


# --- independent autograd computations on a conv network -----------------------------------------


def _small_conv() -> tuple[nn.Sequential, Tensor, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).double()
    return net, torch.randn(5, 2, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])


def test_fisher_matches_explicit_forward_on_conv() -> None:
    net, x, y = _small_conv()
    conv, linear = net[0], net[3]
    a = F.conv2d(x, conv.weight, conv.bias)
    z = F.linear(a.mean(dim=(2, 3)), linear.weight, linear.bias)
    da, dz = torch.autograd.grad(F.cross_entropy(z, y), [a, z])
    conv_term = 0.5 * torch.einsum("nkhw,nkhw->nk", a, da).pow(2).mean(0).sum() * 2 * 3 * 3
    linear_term = 0.5 * (z * dz).pow(2).mean(0).sum() * 3
    assert fisher(net, x, y) == pytest.approx((conv_term + linear_term).item(), rel=1e-10)


def test_grasp_matches_hessian_vector_product_on_conv() -> None:
    net, x, y = _small_conv()
    weights = (net[0].weight.detach(), net[3].weight.detach())

    def loss(conv_w: Tensor, linear_w: Tensor) -> Tensor:
        a = F.conv2d(x, conv_w, net[0].bias)
        return F.cross_entropy(F.linear(a.mean(dim=(2, 3)), linear_w, net[3].bias), y)

    g = torch.autograd.functional.jacobian(loss, weights)
    _, hg = torch.autograd.functional.hvp(loss, weights, v=g)
    expected = -sum((w * h).sum() for w, h in zip(weights, hg, strict=True))
    assert grasp(net, x, y) == pytest.approx(expected.item(), rel=1e-10)


# --- linear regions ----------------------------------------------------------------------------------


def test_linear_regions_counts_known_regions() -> None:
    # Hidden unit j is on iff x > j (j = 0..9): the intervals between integers are the regions.
    net = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(-torch.arange(10.0))
    inputs = torch.tensor([[-0.5], [0.5], [3.5], [3.7], [9.5], [12.0], [-2.0]])
    assert linear_regions(net, inputs, None, batch_size=3) == 4.0


def test_linear_regions_needs_relus() -> None:
    with pytest.raises(NasauditError, match=r"nn\.ReLU"):
        linear_regions(nn.Linear(2, 2), torch.randn(3, 2), None)


def test_relative_change_is_percent_of_clean_magnitude() -> None:
    assert relative_change(10.0, 12.0) == pytest.approx(20.0)
    assert relative_change(-10.0, -12.0) == pytest.approx(-20.0)
    assert relative_change(-4.0, -2.0) == pytest.approx(50.0)
    assert math.isnan(relative_change(0.0, 1.0))
