"""Number of linear regions, TE-NAS's expressivity score (Chen et al. 2021; as run:
ztcoalson/TENAS lib/procedures/linear_region_counter.py).

A ReLU network is piecewise linear; the on/off pattern of all its ReLUs identifies the linear piece an
input falls in, so the number of distinct patterns over many inputs counts the regions they visit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from nasaudit.errors import NasauditError
from nasaudit.proxies.base import PROXIES, scoring_mode


@PROXIES.register("linear_regions")
def linear_regions(
    net: nn.Module, inputs: Tensor, targets: Tensor | None = None, *, batch_size: int = 1000
) -> float:
    """Distinct ReLU sign patterns over ``inputs`` (labels unused), in train mode without gradients.

    Inputs go through in batches of ``batch_size`` (TE-NAS: 3 batches of 1000), and train-mode BN
    normalises each batch with its own statistics, so the batch size is part of the metric.
    """
    relus = [module for module in net.modules() if isinstance(module, nn.ReLU)]
    if not relus:
        raise NasauditError("linear_regions needs a network with nn.ReLU modules; this one has none")
    signs: list[Tensor] = []

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        signs.append((output > 0).flatten(1))

    handles = [relu.register_forward_hook(record) for relu in relus]
    patterns: set[bytes] = set()
    try:
        with scoring_mode(net), torch.no_grad():
            for batch in inputs.split(batch_size):
                signs.clear()
                net(batch)
                packed = np.packbits(torch.cat(signs, dim=1).cpu().numpy(), axis=1)
                patterns.update(row.tobytes() for row in packed)
    finally:
        for handle in handles:
            handle.remove()
    return float(len(patterns))
