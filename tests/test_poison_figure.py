"""Figure 2: clean images next to their poisoned versions, through the library and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasaudit.attacks import AttackContext, run_attack
from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.data.poison import make_poison, save_poison
from nasaudit.errors import NasauditError
from nasaudit.report.poison_figure import drawn_indices, poison_figure


@pytest.fixture
def poisons(digits, tmp_path):
    context = AttackContext(load_profile("smoke"), torch.device("cpu"), tmp_path)
    return [run_attack(name, digits, 0.1, 0, context) for name in ("gaussian", "rlf")]


def test_rows_show_clean_then_each_poison_on_the_same_samples(digits, poisons) -> None:
    fig = poison_figure(poisons, digits, n=5, seed=1)
    axes = np.array(fig.axes).reshape(3, 5)
    indices = drawn_indices(poisons, 5, 1)
    assert set(indices) <= set(poisons[0].indices) and len(set(indices)) == 5
    noisy = poisons[0].images[np.searchsorted(poisons[0].indices, indices)]
    for c, i in enumerate(indices):
        assert np.array_equal(axes[0, c].images[0].get_array(), digits.train.images[i])
        assert np.array_equal(axes[1, c].images[0].get_array(), noisy[c])
        assert np.array_equal(axes[2, c].images[0].get_array(), digits.train.images[i])  # labels only
        new_label = poisons[1].labels[np.searchsorted(poisons[1].indices, i)]
        assert axes[2, c].get_title() == digits.classes[new_label] != digits.classes[digits.train.labels[i]]
    assert [axes[r, 0].get_ylabel() for r in range(3)] == ["Clean", "gaussian (p = 10%)", "rlf (p = 10%)"]


def test_poisons_without_common_samples_are_refused(digits) -> None:
    a = make_poison("rlf", digits, 0, np.array([0, 1]), labels=np.array([1, 2]))
    b = make_poison("rlf", digits, 0, np.array([2, 3]), labels=np.array([1, 2]))
    with pytest.raises(NasauditError, match="no sample in common"):
        drawn_indices([a, b], 4, 0)


def test_cli_writes_png_and_pdf(poisons, tmp_path, capsys) -> None:
    paths = [save_poison(p, tmp_path / p.attack) for p in poisons]
    out = tmp_path / "figures" / "fig2"
    argv = ["figure", "poisons", "--poison", str(paths[0]), "--poison", str(paths[1]), "--n", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert "Figure 2 (2 poison(s), digits)" in capsys.readouterr().out
    assert main(["figure", "poisons", "--poison", str(paths[0]), "--n", "0", "--out", str(out)]) == 2
    assert "--n: 0 must be at least 1" in capsys.readouterr().err
