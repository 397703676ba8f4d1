"""From a grid's finished jobs to its table: per-trial accuracies, our random baseline, ΔImp. and marks.

The trials are read from the retraining results the grid wrote (``train/result.json``), found through
the experiment's job keys, so what a table contains is exactly what its grid ran; each trial reports
the accuracy ``[results] accuracy`` names (the best evaluated epoch's, as the authors read theirs).
ΔImp. is measured against the mean of our own random-sampling jobs of the same search space and
dataset (paper §4); the paper's published baselines are used only when asked for, and the table says
so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Experiment, JobKey, Layout
from nasaudit.report.published import PUBLISHED_DIR, load_baselines
from nasaudit.report.tables import DESIGNS, build_table
from nasaudit.train import reported_accuracy


@dataclass(frozen=True)
class ExperimentTable:
    table: pd.DataFrame  # the tidy table: one row per cell, as report.tables builds it
    baselines: pd.DataFrame  # dataset, algorithm, mean, n, source
    missing: tuple[JobKey, ...]  # jobs without a result (empty for a complete table)
    trials: pd.DataFrame  # the finished condition jobs behind the cells, one row each (``collect_trials``)


def _accuracy(layout: Layout, key: JobKey, which: str) -> float | None:
    path = layout.train_dir(key) / "result.json"
    if not path.is_file():
        return None
    try:
        return reported_accuracy(json.loads(path.read_text()), which)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NasauditError(
            f"{path}: not a readable training result ({exc}); delete it to rerun the job"
        ) from None


# The table column of each optional key part (Table 3 names the search dataset also for its reference
# row, which searched on the test dataset itself).
_KEY_COLUMNS = {"search_dataset": lambda key: key.searched_on, "defense": lambda key: key.defense}


def collect_trials(
    keys: tuple[JobKey, ...], layout: Layout, which: str, columns: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, tuple[JobKey, ...]]:
    """One row per finished job (its key, the ``columns`` it reports and ``accuracy``, the ``which``
    one of ``reported_accuracy``), and the keys of the unfinished ones."""
    rows, missing = [], []
    for key in keys:
        accuracy = _accuracy(layout, key, which)
        if accuracy is None:
            missing.append(key)
        else:
            rows.append(
                {
                    "dataset": key.dataset,
                    **{column: _KEY_COLUMNS[column](key) for column in columns},
                    "algorithm": key.algorithm,
                    "attack": key.attack,
                    "budget": key.budget,
                    "trial": key.trial,
                    "accuracy": accuracy,
                }
            )
    names = ["dataset", *columns, "algorithm", "attack", "budget", "trial", "accuracy"]
    return pd.DataFrame(rows, columns=names), tuple(missing)


def our_baselines(experiment: Experiment, trials: pd.DataFrame) -> pd.DataFrame:
    """Each table algorithm's baseline: the mean accuracy of its space's random architectures per dataset."""
    if experiment.unsampled:
        algorithm, space = next(iter(experiment.unsampled.items()))
        raise NasauditError(
            f"no random sampler of the {space!r} space (of {algorithm}) ran, so there is no baseline for "
            "ΔImp.; pass --published-baselines to use the paper's"
        )
    means = trials.groupby(["dataset", "algorithm"])["accuracy"].agg(mean="mean", n="size").reset_index()
    rows = [
        {
            "dataset": r["dataset"],
            "algorithm": algorithm,
            "mean": r["mean"],
            "n": r["n"],
            "source": r["algorithm"],
        }
        for algorithm, sampler in experiment.sampler_of.items()
        for r in means[means["algorithm"] == sampler].to_dict("records")
    ]
    return pd.DataFrame(rows, columns=["dataset", "algorithm", "mean", "n", "source"])


def experiment_table(
    experiment: Experiment,
    layout: Layout,
    *,
    published_baselines: bool = False,
    allow_partial: bool = False,
    published_dir: Path = PUBLISHED_DIR,
) -> ExperimentTable:
    """The experiment's table from its finished jobs; a missing job is an error unless ``allow_partial``
    (then a cell averages the trials that finished, and its ΔImp. is NaN while its baseline has none)."""
    keys = experiment.conditions if published_baselines else experiment.jobs
    _, missing = collect_trials(keys, layout, experiment.accuracy)
    if missing and not allow_partial:
        raise NasauditError(
            f"{experiment.name}: {len(missing)} of {len(keys)} jobs have no result yet (first: "
            f"{layout.train_dir(missing[0])}); finish the grid with `nasaudit grid run {experiment.name}` "
            "or pass --allow-partial"
        )
    trials, _ = collect_trials(experiment.conditions, layout, experiment.accuracy, experiment.columns)
    if trials.empty:
        raise NasauditError(f"{experiment.name}: no finished job in {layout.root}; run the grid first")
    if published_baselines:
        baselines = load_baselines(published_dir).assign(
            source=f"published ({published_dir / 'baselines.csv'})"
        )
    else:
        baselines = our_baselines(
            experiment, collect_trials(experiment.baselines, layout, experiment.accuracy)[0]
        )
    table = build_table(trials, baselines, DESIGNS[experiment.name], allow_missing_baselines=allow_partial)
    used = baselines.merge(table[["dataset", "algorithm"]].drop_duplicates(), on=["dataset", "algorithm"])
    return ExperimentTable(table, used, missing, trials)


def describe_baselines(baselines: pd.DataFrame) -> str:
    """One line per baseline used, saying where it comes from (ours or the paper's)."""
    return "\n".join(
        f"ΔImp. baseline {r['dataset']}/{r['algorithm']}: {r['mean']:.2f}% "
        + (
            f"(mean of our {int(r['n'])} {r['source']} architectures)"
            if not str(r["source"]).startswith("published")
            else f"(the paper's, {r['source']}: NOT our random-sampling runs)"
        )
        for r in baselines.to_dict("records")
    )
