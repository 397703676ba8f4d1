"""Training-free metrics, one registered function per metric, all with one signature.

``PROXIES.get(name)(net, inputs, targets)`` returns a float and leaves ``net`` untouched; importing
this package registers every metric (TE-NAS's ``ntk_cond`` and ``linear_regions``, RoBoT's
``grad_norm``, ``snip``, ``grasp``, ``fisher``, ``synflow``, ``jacob_cov``).
"""

from nasaudit.proxies import linear_regions, ntk, zero_cost
from nasaudit.proxies.base import PROXIES, Proxy, relative_change, scoring_mode

__all__ = ["PROXIES", "Proxy", "linear_regions", "ntk", "relative_change", "scoring_mode", "zero_cost"]
