"""Poisoning attacks (paper §3.2): each takes (dataset, budget, seed, context) and returns a Poison.

Attacks register themselves in ``ATTACKS``; the CLI and the grid enumerate it. Importing this package
imports every attack module, and the plugins (``nasaudit.plugins``), so that registration has happened.
"""

from nasaudit.attacks import clf, gaussian, gc, nas_gc, rlf  # noqa: F401  (registration)
from nasaudit.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    attack,
    choose_indices,
    make_poison_file,
    poison_identity,
    run_attack,
)
from nasaudit.plugins import load_plugins

load_plugins()

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "attack",
    "choose_indices",
    "make_poison_file",
    "poison_identity",
    "run_attack",
]
