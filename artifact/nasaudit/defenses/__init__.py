"""Data-poisoning defenses (paper §6.1, Table 4): each turns a (poisoned) training split into a defended one.

Defenses register themselves in ``DEFENSES``; importing this package imports every defense module, and
the plugins (``nasaudit.plugins``), so that registration has happened. A defended dataset is a file
(``defenses.files``) the search reads with ``nasaudit search --poison P --defense D``.
"""

from nasaudit.defenses import denoise, relabel, sanitize  # noqa: F401  (registration)
from nasaudit.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    defense,
    defense_identity,
    make_defended_file,
    run_defense,
)
from nasaudit.defenses.files import (
    DefendedData,
    apply_defended,
    defended_data,
    load_defended,
    make_defended,
    read_defended_manifest,
    save_defended,
)
from nasaudit.plugins import load_plugins

load_plugins()

__all__ = [
    "DEFENSES",
    "DefendedData",
    "Defense",
    "DefenseContext",
    "apply_defended",
    "defended_data",
    "defense",
    "defense_identity",
    "load_defended",
    "make_defended",
    "make_defended_file",
    "read_defended_manifest",
    "run_defense",
    "save_defended",
]
