"""The proxy protocol, its registry and the helpers every proxy shares.

A proxy scores an untrained network from one batch. Search algorithms call proxies thousands of times
on the same network object, so a proxy must leave that object exactly as it found it: parameters,
their ``requires_grad`` and ``.grad``, buffers (BN running statistics) and each module's train/eval
mode. Proxies therefore differentiate with ``torch.autograd.grad`` (never ``.backward``, which would
write ``.grad``) inside :func:`scoring_mode`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nasaudit.errors import NasauditError
from nasaudit.registry import Registry


class Proxy(Protocol):
    """A training-free metric: (network, batch, labels or None) → one number."""

    def __call__(self, net: nn.Module, inputs: Tensor, targets: Tensor | None) -> float: ...


PROXIES: Registry[Proxy] = Registry("proxy")


@contextmanager
def scoring_mode(net: nn.Module) -> Iterator[None]:
    """Run the body with every module in train mode and gradients on, then restore modes and buffers.

    The papers score networks in train mode (BN on batch statistics), which updates running statistics
    as a side effect; restoring the buffers makes a proxy call invisible to the caller.
    """
    modes = [(module, module.training) for module in net.modules()]
    buffers = [(buffer, buffer.clone()) for buffer in net.buffers()]
    net.train()
    try:
        with torch.enable_grad():
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


def logits_of(output: Any) -> Tensor:
    """The logits of a forward pass; networks with an auxiliary head return ``(logits, aux)``."""
    return output[0] if isinstance(output, tuple | list) else output


def require_targets(targets: Tensor | None, proxy: str) -> Tensor:
    """Labels for the loss-based proxies, or a clear error when a caller passed none."""
    if targets is None:
        raise NasauditError(f"proxy {proxy!r} needs labels; pass the batch's targets")
    return targets


def relative_change(clean: float, poisoned: float) -> float:
    """Change of a metric under poisoning in percent of its clean magnitude (paper Table 2).

    Dividing by ``|clean|`` keeps the sign meaning "went up" even for negative metrics such as grasp.
    NaN when the clean value is 0, where no relative scale exists.
    """
    if clean == 0:
        return math.nan
    return 100.0 * (poisoned - clean) / abs(clean)
