"""Profiles: every size and hyperparameter, as typed data read from TOML.

``paper.toml`` holds the paper's values (each with a comment citing its source); ``smoke.toml``
shrinks them so the whole pipeline runs in minutes on two CPU cores. Code reads a ``Profile`` and
never branches on a profile's name. Each section is a dataclass below; a later capability adds its
section here and to both TOML files.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasaudit.errors import NasauditError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class AugmentConfig:
    """Random crop (zero padding), horizontal flip, cutout (0 disables)."""

    crop_padding: int
    flip: bool
    cutout: int


@dataclass(frozen=True)
class ExperimentConfig:
    """The grid: which datasets, poisoning budgets and how many independent trials per condition."""

    datasets: list[str]
    budgets: list[float]
    trials: int


@dataclass(frozen=True)
class TrainConfig:
    """One from-scratch training run: SGD with momentum, cosine schedule per epoch to ``lr_min``."""

    epochs: int
    batch_size: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float  # max gradient norm; 0 disables clipping
    auxiliary_weight: float  # weight of the auxiliary-head loss; 0 disables the head
    drop_path: float  # final drop-path probability, ramped linearly from 0 over the epochs
    augment: AugmentConfig
    eval_every: int  # evaluate on the test split every N epochs (0: only at the end)
    checkpoint_every: int  # write a resumable checkpoint every N epochs


@dataclass(frozen=True)
class DartsNetConfig:
    """Size of the DARTS evaluation network."""

    channels: int
    layers: int


@dataclass(frozen=True)
class RandomBaselineConfig:
    """Architectures sampled uniformly from a space and retrained: the reference for ΔImp."""

    n: int


@dataclass(frozen=True)
class Profile:
    experiment: ExperimentConfig
    darts_net: DartsNetConfig
    train: TrainConfig  # retraining of found architectures (the P-DARTS evaluation recipe)
    surrogate: TrainConfig  # the CIFAR ResNet-18 used by CLF and loss-based sanitisation
    random_baseline: RandomBaselineConfig
    name: str = ""


def _check(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert one TOML value to ``hint``; the error names the key and the file."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise NasauditError(f"{source}: [{key}] must be a table")
        return _build(hint, value, key, source)
    if origin is list:
        if not isinstance(value, list):
            raise NasauditError(f"{source}: {key} must be a list")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _check(value, option, key, source)
                except NasauditError:
                    continue
        raise NasauditError(f"{source}: {key} = {value!r} is not a {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise NasauditError(f"{source}: {key} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise NasauditError(f"{source}: {key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, table: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "name"]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise NasauditError(f"{source}: unknown key {key!r}; allowed here: {', '.join(fields)}")
    missing = [f for f in fields if f not in table]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise NasauditError(f"{source}: missing key {key!r}")
    values = {f: _check(table[f], hints[f], f"{prefix}.{f}" if prefix else f, source) for f in fields}
    return cls(**values)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a syntax error is one line naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NasauditError(f"{Path(path).name}: not valid TOML ({exc})") from None


def load_profile(name_or_path: str | Path) -> Profile:
    """A packaged profile by name (``smoke``, ``paper``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
            raise NasauditError(
                f"unknown profile {str(name_or_path)!r}; choose one of: {known}, or a .toml path"
            )
    if not path.is_file():
        raise NasauditError(f"profile file {path} does not exist")
    profile = _build(Profile, read_toml(path), "", path.name)
    return dataclasses.replace(profile, name=path.stem)
