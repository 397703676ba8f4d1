"""The OFA MobileNetV3 space as NSGANetV2 searches it: channel plan, architectures, integer encoding.

A network is a fixed stem (3×3 conv, stride 2) and a fixed first block (depthwise 3×3, no expansion),
then 5 stages whose depth is 2, 3 or 4 layers, each layer an inverted-residual block with its own
depthwise kernel (3, 5, 7) and expand ratio (3, 4, 6), then a fixed head; the input resolution is
searched too. Only the first ``depth`` layers of a stage run; the kernel and expand ratio of a skipped
layer mean nothing, so architectures store them canonically (the smallest choice), which makes
"same network" and "equal architecture" the same thing.

Encoding (46 integers, each an index into its choice list), laid out as NSGANetV2 lays it out, one
stage after another, because its two-point crossover cuts the vector and should swap whole stages::

    x[9s]            depth index of stage s (DEPTHS)         s = 0..4
    x[9s+1 : 9s+5]   kernel index of the stage's 4 layers (KERNELS)
    x[9s+5 : 9s+9]   expand-ratio index of the 4 layers (EXPANDS)
    x[45]            resolution index into the profile's resolution list

Indices of skipped layers are 0 in an encoding produced by ``encode``; ``decode`` accepts any value
there (the evolutionary search writes anything) and drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.errors import NasauditError

KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (3, 4, 6)
DEPTHS: tuple[int, ...] = (2, 3, 4)
N_STAGES = 5
MAX_DEPTH = max(DEPTHS)
N_LAYERS = N_STAGES * MAX_DEPTH
GENES_PER_STAGE = 1 + 2 * MAX_DEPTH
N_VARS = N_STAGES * GENES_PER_STAGE + 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """The MobileNet channel rule: nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: output channels, stride of its first layer, activation, squeeze-excitation."""

    width: int
    stride: int
    act: str  # "relu" or "hswish"
    se: bool


@dataclass(frozen=True)
class ChannelPlan:
    """Every fixed width of the network; the searched expand ratios act on top of these."""

    stem: int
    first_block: int
    stages: tuple[StageSpec, ...]
    final_expand: int
    feature_mix: int

    def scaled(self, width_mult: float) -> ChannelPlan:
        """OFA's width multiplier: every width times ``width_mult``, rounded by ``make_divisible``."""
        return ChannelPlan(
            stem=make_divisible(self.stem * width_mult),
            first_block=make_divisible(self.first_block * width_mult),
            stages=tuple(
                StageSpec(make_divisible(s.width * width_mult), s.stride, s.act, s.se) for s in self.stages
            ),
            final_expand=make_divisible(self.final_expand * width_mult),
            feature_mix=make_divisible(self.feature_mix * width_mult),
        )

    def layer_in_channels(self, stage: int, layer: int) -> int:
        """Input channels of a layer: the previous stage's width for a stage's first layer."""
        if layer > 0:
            return self.stages[stage].width
        return self.first_block if stage == 0 else self.stages[stage - 1].width

    def mid_channels(self, stage: int, layer: int, expand: int) -> int:
        """Width of a layer's depthwise conv: input channels × expand ratio (OFA's rounding)."""
        return make_divisible(self.layer_in_channels(stage, layer) * expand)


#: OFA MobileNetV3 (Cai et al., ICLR 2020; the ofa_mbv3_d234_e346_k357 supernets NSGANetV2 searches):
#: base widths 16, 16, [24, 40, 80, 112, 160], 960, 1280; stage strides 2, 2, 2, 1, 2; ReLU in the
#: first two stages, h-swish after; squeeze-excitation in stages 2, 4 and 5.
OFA_MBV3 = ChannelPlan(
    stem=16,
    first_block=16,
    stages=(
        StageSpec(24, 2, "relu", False),
        StageSpec(40, 2, "relu", True),
        StageSpec(80, 2, "hswish", False),
        StageSpec(112, 1, "hswish", True),
        StageSpec(160, 2, "hswish", True),
    ),
    final_expand=960,
    feature_mix=1280,
)


def channel_plan(width_mult: float) -> ChannelPlan:
    """The OFA plan at a width multiplier (1.0 and 1.2 are the released supernets)."""
    if not width_mult > 0:
        raise NasauditError(
            f"mbv3 width_mult must be positive, got {width_mult!r}; NSGANetV2 used 1.0 or 1.2"
        )
    return OFA_MBV3.scaled(width_mult)


def _int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _choices(name: str, values: Any, allowed: tuple[int, ...], length: int) -> tuple[int, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != length:
        raise NasauditError(f"mbv3 architecture: {name} must be a list of {length} integers, got {values!r}")
    for v in values:
        if not _int(v) or int(v) not in allowed:
            raise NasauditError(
                f"mbv3 architecture: {name} has {v!r}; each must be one of {', '.join(map(str, allowed))}"
            )
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class MBV3Arch:
    """One network of the space. ``kernels``/``expands`` hold 4 slots per stage, stage by stage.

    ``weights`` optionally names a standalone state dict holding the weights this architecture
    inherits from a supernet (a search writes it); it is not part of the architecture's identity.
    """

    resolution: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    weights: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _int(self.resolution) or self.resolution < 32:
            raise NasauditError(
                f"mbv3 architecture: resolution must be an integer ≥ 32, got {self.resolution!r}"
            )
        object.__setattr__(self, "resolution", int(self.resolution))
        depths = _choices("depths", self.depths, DEPTHS, N_STAGES)
        kernels = list(_choices("kernels", self.kernels, KERNELS, N_LAYERS))
        expands = list(_choices("expands", self.expands, EXPANDS, N_LAYERS))
        for stage, depth in enumerate(depths):
            for layer in range(depth, MAX_DEPTH):
                kernels[stage * MAX_DEPTH + layer] = KERNELS[0]
                expands[stage * MAX_DEPTH + layer] = EXPANDS[0]
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "kernels", tuple(kernels))
        object.__setattr__(self, "expands", tuple(expands))

    def active_layers(self) -> list[tuple[int, int, int, int]]:
        """(stage, layer, kernel, expand) of every layer that runs, in order."""
        return [
            (s, i, self.kernels[s * MAX_DEPTH + i], self.expands[s * MAX_DEPTH + i])
            for s, depth in enumerate(self.depths)
            for i in range(depth)
        ]

    def to_json(self) -> dict[str, Any]:
        """Readable form: per stage, the kernels and expand ratios of the layers that run."""
        out: dict[str, Any] = {
            "resolution": self.resolution,
            "depths": list(self.depths),
            "kernels": [
                list(self.kernels[s * MAX_DEPTH : s * MAX_DEPTH + d]) for s, d in enumerate(self.depths)
            ],
            "expands": [
                list(self.expands[s * MAX_DEPTH : s * MAX_DEPTH + d]) for s, d in enumerate(self.depths)
            ],
        }
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    @classmethod
    def from_json(cls, data: Any, base_dir: Path | None = None) -> MBV3Arch:
        """Parse ``to_json``'s form, or NSGANetV2's ``{"r", "d", "ks", "e"}`` (flat per-layer lists).

        A relative ``weights`` path is resolved against ``base_dir`` (the JSON file's folder).
        """
        if not isinstance(data, dict):
            raise NasauditError(f"an mbv3 architecture must be a JSON object, got {type(data).__name__}")
        if {"r", "d", "ks", "e"} <= set(data):
            data = _from_nsganetv2(data)
        keys = ("resolution", "depths", "kernels", "expands")
        missing = [k for k in keys if k not in data]
        unknown = sorted(set(data) - {*keys, "weights"})
        if missing or unknown:
            raise NasauditError(
                f"mbv3 architecture has {'missing' if missing else 'unknown'} key {(missing or unknown)[0]!r}"
                f"; expected keys: {', '.join(keys)} (and optionally weights)"
            )
        depths = _choices("depths", data["depths"], DEPTHS, N_STAGES)
        kernels, expands = [], []
        for name, nested, flat in (
            ("kernels", data["kernels"], kernels),
            ("expands", data["expands"], expands),
        ):
            if not isinstance(nested, list) or len(nested) != N_STAGES:
                raise NasauditError(f"mbv3 architecture: {name} must be {N_STAGES} lists, one per stage")
            for stage, (values, depth) in enumerate(zip(nested, depths, strict=True)):
                if not isinstance(values, list) or len(values) != depth:
                    raise NasauditError(
                        f"mbv3 architecture: {name}[{stage}] must list {depth} values (the stage's depth)"
                    )
                flat.extend(values + [(KERNELS if name == "kernels" else EXPANDS)[0]] * (MAX_DEPTH - depth))
        weights = data.get("weights")
        if weights is not None:
            if not isinstance(weights, str):
                raise NasauditError(f"mbv3 architecture: weights must be a file path, got {weights!r}")
            path = Path(weights)
            weights = str(path if path.is_absolute() or base_dir is None else base_dir / path)
        return cls(data["resolution"], depths, tuple(kernels), tuple(expands), weights)


def _from_nsganetv2(data: dict[str, Any]) -> dict[str, Any]:
    """NSGANetV2's subnet files list the kernels and expand ratios of the running layers only."""
    depths, ks, es = data["d"], data["ks"], data["e"]
    if not isinstance(depths, list) or not all(_int(d) for d in depths):
        raise NasauditError(f"mbv3 architecture: d must be a list of integers, got {depths!r}")
    if (
        not isinstance(ks, list)
        or not isinstance(es, list)
        or len(ks) != sum(depths)
        or len(es) != sum(depths)
    ):
        raise NasauditError("mbv3 architecture: ks and e must list one value per running layer (sum of d)")
    bounds = list(pairwise(np.cumsum([0, *depths]).tolist()))
    return {
        "resolution": data["r"],
        "depths": depths,
        "kernels": [ks[a:b] for a, b in bounds],
        "expands": [es[a:b] for a, b in bounds],
    }


def upper_bounds(resolutions: Sequence[int]) -> np.ndarray:
    """The largest index each of the 46 variables may take."""
    xu = np.zeros(N_VARS, dtype=np.int64)
    for s in range(N_STAGES):
        xu[s * GENES_PER_STAGE] = len(DEPTHS) - 1
        xu[s * GENES_PER_STAGE + 1 : s * GENES_PER_STAGE + 1 + MAX_DEPTH] = len(KERNELS) - 1
        xu[s * GENES_PER_STAGE + 1 + MAX_DEPTH : (s + 1) * GENES_PER_STAGE] = len(EXPANDS) - 1
    xu[-1] = len(resolutions) - 1
    return xu


def encode(arch: MBV3Arch, resolutions: Sequence[int]) -> np.ndarray:
    """The 46-integer encoding (see the module docstring); skipped layers are 0."""
    if arch.resolution not in resolutions:
        raise NasauditError(
            f"mbv3 architecture has resolution {arch.resolution}, which is not one of the searched "
            f"resolutions {list(resolutions)}"
        )
    x = np.zeros(N_VARS, dtype=np.int64)
    for s, depth in enumerate(arch.depths):
        g = s * GENES_PER_STAGE
        x[g] = DEPTHS.index(depth)
        for i in range(MAX_DEPTH):
            x[g + 1 + i] = KERNELS.index(arch.kernels[s * MAX_DEPTH + i])
            x[g + 1 + MAX_DEPTH + i] = EXPANDS.index(arch.expands[s * MAX_DEPTH + i])
    x[-1] = list(resolutions).index(arch.resolution)
    return x


def decode(x: Sequence[int] | np.ndarray, resolutions: Sequence[int]) -> MBV3Arch:
    """The architecture an encoding stands for; a wrong length or an index out of range is one line."""
    x = np.asarray(x)
    if x.shape != (N_VARS,) or not np.issubdtype(x.dtype, np.integer):
        raise NasauditError(f"an mbv3 encoding is {N_VARS} integers, got shape {x.shape} of {x.dtype}")
    bad = np.flatnonzero((x < 0) | (x > upper_bounds(resolutions)))
    if len(bad):
        raise NasauditError(
            f"mbv3 encoding: variable {bad[0]} is {x[bad[0]]}, outside 0..{upper_bounds(resolutions)[bad[0]]}"
        )
    depths, kernels, expands = [], [], []
    for s in range(N_STAGES):
        g = s * GENES_PER_STAGE
        depths.append(DEPTHS[x[g]])
        kernels += [KERNELS[i] for i in x[g + 1 : g + 1 + MAX_DEPTH]]
        expands += [EXPANDS[i] for i in x[g + 1 + MAX_DEPTH : g + GENES_PER_STAGE]]
    return MBV3Arch(int(resolutions[x[-1]]), tuple(depths), tuple(kernels), tuple(expands))


def random_arch(rng: np.random.Generator, resolutions: Sequence[int]) -> MBV3Arch:
    """Uniform over depths, per-layer kernels and expand ratios, and resolutions (NSGANetV2's sampler)."""
    return MBV3Arch(
        int(rng.choice(resolutions)),
        tuple(int(d) for d in rng.choice(DEPTHS, N_STAGES)),
        tuple(int(k) for k in rng.choice(KERNELS, N_LAYERS)),
        tuple(int(e) for e in rng.choice(EXPANDS, N_LAYERS)),
    )


def extreme_arch(resolutions: Sequence[int], largest: bool) -> MBV3Arch:
    """The smallest (or largest) network: every choice at its lower (upper) bound."""
    pick = max if largest else min
    return MBV3Arch(
        pick(resolutions),
        (pick(DEPTHS),) * N_STAGES,
        (pick(KERNELS),) * N_LAYERS,
        (pick(EXPANDS),) * N_LAYERS,
    )


def initial_archs(n: int, rng: np.random.Generator, resolutions: Sequence[int]) -> list[MBV3Arch]:
    """NSGANetV2's design of experiments: the smallest and the largest network, then distinct random ones."""
    archs = [extreme_arch(resolutions, False), extreme_arch(resolutions, True)][:n]
    while len(archs) < n:
        arch = random_arch(rng, resolutions)
        if arch not in archs:
            archs.append(arch)
    return archs
