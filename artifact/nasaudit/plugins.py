"""Plugins from outside the package: modules that register an algorithm, an attack, a defense or a
profile section.

A module named in ``NASAUDIT_PLUGINS`` (comma-separated module names, importable: on ``PYTHONPATH``
or installed), or installed with an entry point in the ``nasaudit.plugins`` group, is imported
whenever the registries it fills are: with the algorithms (``nasaudit.nas``), the attacks
(``nasaudit.attacks``), the defenses (``nasaudit.defenses``) and before a profile is built
(``config.load_profile``). So the CLI, the grid's worker processes (which inherit the environment)
and Slurm tasks all see it (docs/extending.md).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from nasaudit.errors import NasauditError

ENV = "NASAUDIT_PLUGINS"
GROUP = "nasaudit.plugins"


def load_plugins() -> None:
    """Import every plugin module once (a module already imported is not imported again)."""
    for name in (part.strip() for part in os.environ.get(ENV, "").split(",")):
        if name:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise NasauditError(
                    f"{ENV} names {name!r}, which cannot be imported ({exc}); put it on PYTHONPATH or "
                    f"remove it from {ENV}"
                ) from None
    for entry in entry_points(group=GROUP):
        entry.load()
