"""The paper's tables as data: where the transcriptions live and how to read them.

They sit in ``expected_results/`` at the repository root (not inside the package) because reviewers
read and diff them as plain files; every loader takes the folder as an argument for other layouts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nasaudit.errors import NasauditError

EXPECTED_DIR = Path(__file__).resolve().parents[3] / "expected_results"
PUBLISHED_DIR = EXPECTED_DIR / "published"
TOLERANCES = EXPECTED_DIR / "tolerances.toml"


def read_csv(path: Path) -> pd.DataFrame:
    """Read a tidy table, turning a missing file into one actionable line."""
    if not path.is_file():
        raise NasauditError(f"no table at {path}; check the path or regenerate it")
    return pd.read_csv(path)


def load_published(name: str, directory: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """One transcribed table (``table1`` … ``table6``) as printed in the paper."""
    return read_csv(Path(directory) / f"{name}.csv")


def load_baselines(directory: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """Random-sampling baselines per (dataset, algorithm): the reference point of ΔImp."""
    return read_csv(Path(directory) / "baselines.csv")
