"""Table 4's significance (paper §6.1): does a defense raise accuracy over the undefended poisoned search?

Each defended cell's per-trial accuracies are compared with the poisoned (undefended) cell of the same
dataset, algorithm, attack and budget by a one-sided Welch t-test, H1: defended mean > poisoned mean,
at α = 0.05 without multiple-testing correction (SPEC §1). A cell whose attack is written ``a/b``
(cluster relabelling defends against RLF and CLF at once) is tested against each and keeps the smaller
p-value: it counts if it improves on either — the rule that reproduces the paper's marks from its
printed numbers (``report.tables.DESIGNS["table4"]``, the same test from means and stds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nasaudit.errors import NasauditError
from nasaudit.stats import summarise, welch

CELL_KEYS = ("dataset", "algorithm", "defense", "attack", "budget")
REFERENCE_KEYS = ("dataset", "algorithm", "attack", "budget")


def defense_significance(defended: pd.DataFrame, poisoned: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per defended cell: n, mean, std, the poisoned reference it beat, p-value, significant.

    ``defended`` has the columns of ``CELL_KEYS`` plus ``accuracy`` (one row per trial); ``poisoned``
    those of ``REFERENCE_KEYS`` plus ``accuracy``. A cell without a poisoned reference is left
    untested (NaN p-value, not significant) rather than failing the table of a grid still running.
    """
    for frame, keys, name in ((defended, CELL_KEYS, "defended"), (poisoned, REFERENCE_KEYS, "poisoned")):
        missing = [c for c in (*keys, "accuracy") if c not in frame.columns]
        if missing:
            raise NasauditError(f"{name} trials lack column(s) {', '.join(missing)}")
    references = {
        tuple(_budget(v) if k == "budget" else v for k, v in zip(REFERENCE_KEYS, key, strict=True)): group
        for key, group in poisoned.groupby(list(REFERENCE_KEYS), sort=False)["accuracy"]
    }
    rows = []
    for key, trials in defended.groupby(list(CELL_KEYS), sort=False)["accuracy"]:
        cell = dict(zip(CELL_KEYS, key, strict=True))
        tests = []
        for attack in str(cell["attack"]).split("/"):
            reference = references.get((cell["dataset"], cell["algorithm"], attack, _budget(cell["budget"])))
            if reference is not None:
                tests.append((welch(trials, reference, alternative="greater").p_value, attack))
        p_value, against = (
            min(tests, key=lambda t: (np.nan_to_num(t[0], nan=np.inf), t[1])) if tests else (np.nan, "")
        )
        summary = summarise(trials)
        rows.append(
            {
                **cell,
                "n": summary.n,
                "mean": summary.mean,
                "std": summary.std,
                "against": against,
                "p_value": p_value,
                "significant": bool(np.isfinite(p_value) and p_value <= alpha),
            }
        )
    return pd.DataFrame(rows, columns=[*CELL_KEYS, "n", "mean", "std", "against", "p_value", "significant"])


def _budget(value: float) -> float:
    """Budgets rounded so 0.5 computed and 0.5 parsed from a file pair up."""
    return round(float(value), 6)
