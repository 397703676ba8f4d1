"""NAS algorithms: each takes (search data, seed, context) and returns an architecture of its space.

Algorithms register themselves in ``NAS``; importing this package imports every algorithm module,
and the plugins (``nasaudit.plugins``).
"""

from nasaudit.nas import nsganetv2, pdarts, random_sampling, robot, tenas  # noqa: F401  (registration)
from nasaudit.nas.base import NAS, NasAlgorithm, SearchContext, random_samplers, run_search
from nasaudit.plugins import load_plugins

load_plugins()

__all__ = ["NAS", "NasAlgorithm", "SearchContext", "random_samplers", "run_search"]
