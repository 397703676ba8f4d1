"""Progress bars for long steps: one tqdm bar on stderr, shown only to a person watching a terminal.

Every long loop (training batches, P-DARTS steps, GC steps, pool scoring, TE-NAS candidates,
NSGANetV2 evaluations, defenses) advances a bar made here, at least every few seconds, so a run never
sits silent. A bar is off when its caller says so (the grid's workers, whose logs are files), when
stderr is not a terminal (pipes, CI, log files), where redrawn bars would only be noise, and under ``-q``.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from nasaudit import verbosity


def shown(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: asked for, stderr is a terminal, and not ``-q``."""
    return enabled and sys.stderr.isatty() and not verbosity.quiet()


def bar(
    total: int | None = None, *, desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any
) -> tqdm:
    """A tqdm bar that is silent unless ``shown(enabled)``; use it as tqdm (``update``, ``close``)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown(enabled), leave=False, **kwargs)
