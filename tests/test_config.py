"""Profiles load into typed dataclasses; bad keys and types are one-line errors naming key and file."""

from __future__ import annotations

import re

import pytest

from nasaudit.config import PROFILE_DIR, load_profile
from nasaudit.errors import NasauditError


@pytest.mark.parametrize("name", ["smoke", "paper"])
def test_packaged_profiles_load(name) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.train.epochs > 0 and profile.experiment.trials > 0


def test_paper_values_are_the_papers() -> None:
    p = load_profile("paper")
    assert (p.train.epochs, p.train.batch_size, p.train.lr, p.train.drop_path) == (600, 128, 0.025, 0.3)
    assert (p.darts_net.channels, p.darts_net.layers, p.experiment.trials) == (36, 20, 10)
    assert p.experiment.budgets == [0.01, 0.10, 0.50] and p.train.augment.cutout == 16


def test_every_paper_value_cites_a_source() -> None:
    """Each key = value line carries a comment, or sits in a table whose header line cites one."""
    header_cited = False
    for line in (PROFILE_DIR / "paper.toml").read_text().splitlines():
        if line.startswith("["):
            header_cited = "#" in line
        elif re.match(r"^\w+\s*=", line):
            assert "#" in line or header_cited, f"no source cited for: {line}"


def _write(tmp_path, old: str, new: str):
    text = (PROFILE_DIR / "smoke.toml").read_text()
    assert old in text
    path = tmp_path / "custom.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_unknown_key_is_named(tmp_path) -> None:
    path = _write(tmp_path, "epochs = 12\n", "epochs = 12\nepochz = 3\n")
    with pytest.raises(NasauditError, match=r"custom.toml: unknown key 'train.epochz'"):
        load_profile(path)


def test_wrong_type_is_named(tmp_path) -> None:
    path = _write(tmp_path, "epochs = 12\n", 'epochs = "two"\n')
    with pytest.raises(NasauditError, match=r"custom.toml: train.epochs must be int"):
        load_profile(path)
    path = _write(tmp_path, "flip = false", "flip = 1")
    with pytest.raises(NasauditError, match=r"train.augment.flip must be bool"):
        load_profile(path)


def test_missing_key_and_bad_toml(tmp_path) -> None:
    path = _write(tmp_path, "trials = 2\n", "")
    with pytest.raises(NasauditError, match=r"missing key 'experiment\.trials'"):
        load_profile(path)
    path = _write(tmp_path, "[train]", "[train")
    with pytest.raises(NasauditError, match="not valid TOML"):
        load_profile(path)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(NasauditError, match="choose one of: paper, smoke"):
        load_profile("huge")


def test_integers_are_accepted_for_floats(tmp_path) -> None:
    assert load_profile(_write(tmp_path, "lr = 0.1\n", "lr = 1\n")).train.lr == 1.0


def test_tables_of_lists_load_and_bad_entries_are_named(tmp_path) -> None:
    assert load_profile("paper").pdarts.skip_dropout_by_dataset == {}
    old = "skip_dropout_by_dataset = {}"
    custom = load_profile(_write(tmp_path, old, "skip_dropout_by_dataset = {svhn = [0, 0.5, 1]}"))
    assert custom.pdarts.skip_dropout_by_dataset == {"svhn": [0.0, 0.5, 1.0]}
    with pytest.raises(NasauditError, match=r"pdarts.skip_dropout_by_dataset.svhn\[1\] must be float"):
        load_profile(_write(tmp_path, old, 'skip_dropout_by_dataset = {svhn = [0, "x", 1]}'))
    with pytest.raises(NasauditError, match=r"pdarts.skip_dropout_by_dataset must be a table"):
        load_profile(_write(tmp_path, old, "skip_dropout_by_dataset = [0.1]"))
