"""Optional dependencies: libraries that one capability alone needs are pip extras of nasaudit.

``make venv`` (requirements.txt) and ``pip install -e ".[all]"`` install every one. Without an extra,
everything else works and the command needing it stops before any work with one line naming the
extra to install. ``all_extras()`` mirrors ``[project.optional-dependencies]`` in pyproject.toml (a
test keeps the two equal): the capabilities' extras here, and one per built-in NAS algorithm that needs
more, named after it, listing its ``NasAlgorithm.extras``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nasaudit.errors import NasauditError

#: extra -> the distributions it installs, as pyproject.toml lists them (without version bounds), for
#: what is not a NAS algorithm
FEATURE_EXTRAS = {
    "defenses": ("diffusers", "huggingface_hub", "safetensors"),  # diffusion denoising (Table 4)
    "slurm": ("submitit",),  # the slurm runner
    "tensorboard": ("tensorboard",),  # --tensorboard: metrics as TensorBoard scalars (metrics_log)
}


def all_extras() -> dict[str, tuple[str, ...]]:
    """Every extra -> its distributions: ``FEATURE_EXTRAS`` and each algorithm's that lists ``extras``."""
    from nasaudit.nas import NAS

    algorithms = {name: NAS.get(name).extras for name in NAS}
    return {**FEATURE_EXTRAS, **{name: dists for name, dists in algorithms.items() if dists}}


def require(module: str, needed_for: str) -> ModuleType:
    """``module`` imported, or one line saying which extra ``needed_for`` needs installed."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = next(name for name, dists in all_extras().items() if top in dists)
        raise NasauditError(
            f"{needed_for} needs {top}, which does not import here ({exc}); install the {extra!r} extra: "
            f'pip install -e ".[{extra}]" (or ".[all]")'
        ) from None
