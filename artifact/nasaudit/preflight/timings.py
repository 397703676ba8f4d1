"""Step times and projected hours of the preflight's tasks, and those times read back by ``nasaudit plan``.

Every task's stage has a cost model in ``grid.plan`` (``CHARGES``) that times the networks the stage
runs at the profile's sizes with ``nasaudit.costs.Timer`` and multiplies by what the full task pushes
through them. The preflight asks each model for its task with a timer that records what it timed:
the task's main network (its largest training step) is the report's ``step``, the model's result its
``projected_hours``. A report made on a GPU then lets ``nasaudit plan --timings report.json``, on any
machine, estimate with those measured times instead of timing this machine's CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nasaudit.config import Profile
from nasaudit.data.datasets import DATASETS
from nasaudit.errors import NasauditError
from nasaudit.grid.plan import CHARGES, Timer, gpu_factor
from nasaudit.grid.state import error_line
from nasaudit.preflight.kinds import Item


class RecordingTimer(Timer):
    """``nasaudit.costs.Timer`` that also lists every network a cost model asks it to time."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.calls: list[dict[str, Any]] = []

    def _timed(self, network: str, build: Any, batch: int, *, train: bool, **kwargs: Any) -> float:
        seconds = super()._timed(network, build, batch, train=train, **kwargs)
        kind = "train" if train else "forward"
        self.calls.append({"network": network, "batch": batch, "kind": kind, "per_image_s": seconds})
        return seconds

    def kappa(self, network: str, build: Any, batch: int) -> float:
        seconds = super().kappa(network, build, batch)
        per_image = seconds / batch
        self.calls.append({"network": network, "batch": batch, "kind": "kappa", "per_image_s": per_image})
        return seconds


class MeasuredTimer(Timer):
    """The times a preflight report recorded, in place of timing (``nasaudit plan --timings``)."""

    def __init__(self, path: Path, profile: Profile) -> None:
        try:
            report = json.loads(Path(path).read_text())
            recorded, device = report["profile"], report["device"]
            networks = [n for t in report["tasks"] for n in t.get("networks") or []]
        except (OSError, ValueError, KeyError, TypeError):
            raise NasauditError(
                f"{path} is not a preflight report (report.json of `nasaudit preflight`)"
            ) from None
        if recorded != profile.name:
            raise NasauditError(
                f"{path} timed profile {recorded!r}, not {profile.name!r}; preflight that one"
            )
        super().__init__(torch.device(device))
        self.path = path
        self.times = {(n["network"], n["batch"], n["kind"]): n["per_image_s"] for n in networks}

    def _timed(self, network: str, build: Any, batch: int, *, train: bool, **kwargs: Any) -> float:
        return self._time(network, batch, "train" if train else "forward")

    def kappa(self, network: str, build: Any, batch: int) -> float:
        return self._time(network, batch, "kappa") * batch

    def _time(self, network: str, batch: int, kind: str) -> float:
        try:
            return self.times[network, batch, kind]
        except KeyError:
            raise NasauditError(
                f"{self.path} has no time of {network} ({kind}, batch {batch}): the preflight did not run "
                "a task that needs it; preflight every kind (no --only) on that machine"
            ) from None


def timings(items: list[Item], profile: Profile, device: torch.device) -> dict[str, Any]:
    """Per item: its main network's seconds per step and the projected hours of the full task."""
    timer = RecordingTimer(device)
    factor = gpu_factor(profile, timer)
    return {
        "gpu_factor": factor,
        "items": {item.id: _projection(item, profile, timer, factor) for item in items},
    }


def _projection(item: Item, profile: Profile, timer: RecordingTimer, factor: float) -> dict[str, Any]:
    task = item.task
    if task is None or task.stage not in CHARGES:
        what = "Table 2's scoring" if task is None else "a victim (picked from finished jobs)"
        return {"projected_hours": None, "step": None, "projection": f"no cost model: {what}"}
    sizes = {d: _train_size(d, profile) for d in {task.dataset, task.key.searched_on}}
    timer.calls.clear()
    try:
        charge = CHARGES[task.stage](task, profile, sizes, timer)
        seconds = charge.seconds()
        if seconds is None:
            return {"projected_hours": None, "step": None, "projection": f"no cost model for {charge.what}"}
        per_task, shared = seconds
    except Exception as exc:  # a cost model that cannot time its networks here
        return {"projected_hours": None, "step": None, "projection": f"timing failed: {error_line(exc)}"}
    calls = list(timer.calls)
    step = max(calls, key=lambda c: (c["kind"] == "train", c["per_image_s"] * c["batch"]), default=None)
    if step is not None:
        step = {**step, "seconds": step["per_image_s"] * step["batch"]}
    return {
        "projected_hours": (per_task + shared) * factor / 3600,
        "step": step,
        "networks": calls,
        "projection": "grid.plan cost model (this task + its shared part)",
    }


def _train_size(name: str, profile: Profile) -> int:
    """The training-set size the full task has: the dataset's published one (at most ``train_subset``)."""
    shape = DATASETS.get(name).shape
    size = shape.train if shape is not None else 0
    subset = profile.grid.train_subset
    return min(size, subset) if subset > 0 else size
