"""Per-epoch (or per-step) metrics of a job: JSON in its folder, and TensorBoard scalars on request.

Every loop that records metrics as it goes (retraining, the P-DARTS search, RoBoT's queries, the OFA
supernet, the GC crafting steps, TE-NAS's rounds and NSGANetV2's iterations) calls ``record``: it
rewrites the job's JSON log when the loop keeps one, and, when ``--tensorboard DIR`` was given
(``enable``), adds the entry's numbers as scalars of the run ``DIR/<job folder, relative to the working
directory>``. ``enable`` puts DIR into ``NASAUDIT_TENSORBOARD``, so the grid's worker processes and
Slurm tasks started from this process write there too.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasaudit.extras import require
from nasaudit.io import check_output, write_json

ENV = "NASAUDIT_TENSORBOARD"

_writers: dict[Path, Any] = {}


def summary_writer() -> type:
    """torch's ``SummaryWriter``, or one line naming the extra to install (``.[tensorboard]``)."""
    require("tensorboard", "--tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def enable(directory: Path) -> None:
    """Mirror every job's metrics to TensorBoard runs under ``directory`` (checked before any work)."""
    summary_writer()
    check_output(directory, folder=True)
    os.environ[ENV] = str(directory.resolve())


def record(
    job: Path, step: int, metrics: Mapping[str, Any], file: Path | None = None, document: Any = None
) -> None:
    """Record ``metrics`` of ``job`` at ``step``: rewrite ``file`` with ``document`` (the job's whole log,
    which holds them) when given, then, with ``--tensorboard``, their numbers as scalars."""
    if file is not None:
        write_json(file, document)
    directory = os.environ.get(ENV)
    if not directory:
        return
    writer = _writer(Path(directory) / run_name(job))
    for tag, value in scalars(metrics).items():
        writer.add_scalar(tag, value, step)
    writer.flush()


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``metrics``, nested mappings' as ``outer/inner``; flags, text and lists are left out."""
    found: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            found.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


def run_name(job: Path) -> str:
    """A job's TensorBoard run: its folder relative to the working directory (else its absolute path)."""
    path = job.resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.relative_to(path.anchor).as_posix()


def _writer(folder: Path) -> Any:
    if folder not in _writers:
        _writers[folder] = summary_writer()(log_dir=str(folder))
    return _writers[folder]


@atexit.register
def _close() -> None:
    for writer in _writers.values():
        writer.close()
    _writers.clear()
