"""Numerical precision of a stage's forward passes: ``fp32`` as the authors ran, ``bf16`` as an opt-in.

The paper's searches and retrainings ran in fp32 (PyTorch defaults: on Ampere and later GPUs cuDNN
convolutions use TF32, matrix products do not), so every stage of the paper profile is ``fp32``.
``bf16`` runs the forward under bfloat16 autocast, on CUDA or the CPU alike: faster on tensor cores,
but at initialisation it flipped 3–10% of P-DARTS's α-gradient signs against fp32, enough to move
close pruning decisions, so it is a labelled deviation (docs/fidelity.md) and only a measured
accuracy match (``make gpu-check``) may justify it for retraining.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from nasaudit.errors import NasauditError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    """Profiles call this when they load (so no torch import): an unknown name is a one-line error."""
    if precision not in PRECISIONS:
        raise NasauditError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[None]:
    """The context every forward of a stage runs in: plain fp32, or bf16 autocast on ``device``."""
    import torch

    check_precision(precision)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
