"""Profiles load into typed dataclasses; bad keys and types are one-line errors naming key and file."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from nasaudit.config import PROFILE_DIR, Profile, load_profile
from nasaudit.errors import NasauditError
from nasaudit.runs import profile_sections


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


def test_overrides_change_exactly_the_keys_they_name() -> None:
    base = load_profile("smoke")
    overrides = [
        "train.epochs=7",
        "gc.units=pixel",
        'table1.datasets=["cifar10"]',
        "train.augment.flip=false",
    ]
    custom = load_profile("smoke", overrides)
    assert (custom.train.epochs, custom.gc.units, custom.table1.datasets) == (7, "pixel", ["cifar10"])
    assert custom.train.augment.flip is False and custom.name == "smoke"
    assert custom.pdarts.epochs == base.pdarts.epochs  # the same key name in another section is untouched
    restored = dataclasses.replace(
        custom,
        train=base.train,
        gc=base.gc,
        table1=dataclasses.replace(custom.table1, datasets=base.table1.datasets),
    )
    assert restored == base
    assert load_profile("smoke", ["train.precision=bf16"]).train.precision == "bf16"  # a defaulted key


def test_overrides_enter_the_identity_of_the_jobs_reading_them() -> None:
    base, custom = load_profile("smoke"), load_profile("smoke", ["pdarts.epochs=1"])
    assert profile_sections(custom, ["pdarts"]) != profile_sections(base, ["pdarts"])
    assert profile_sections(custom, ["train", "gc"]) == profile_sections(base, ["train", "gc"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", r"^--set: unknown key 'train.epochz'; allowed here: epochs, "),
        ("train.epochs=two", r"^--set: train.epochs must be int, got str 'two'$"),
        ("train.epochs=1.5", r"^--set: train.epochs must be int, got float 1.5$"),
        ("table1.budgets=0.5", r"^--set: table1.budgets must be a list$"),
        ("nosuch.key=1", r"^--set: unknown key 'nosuch'"),
        ("train.precision=fp16", r"^--set: \[train\] precision 'fp16' is not one of"),
        ("train.epochs", r"^--set 'train.epochs': write it as section.key=value"),
        ("train..epochs=1", r"^--set 'train..epochs=1': write it as section.key=value"),
        ("train.epochs.x=1", r"^--set 'train.epochs.x=1': train.epochs is a value, not a section$"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override, message) -> None:
    with pytest.raises(NasauditError, match=message) as caught:
        load_profile("smoke", [override])
    assert "\n" not in str(caught.value)


def test_the_file_is_checked_before_its_overrides(tmp_path) -> None:
    """An error in the file is named by the file, even when an override would have repaired it."""
    with pytest.raises(NasauditError, match=r"^custom.toml: train.epochs must be int"):
        load_profile(_write(tmp_path, "epochs = 12", 'epochs = "two"'), ["train.epochs=2"])


def _choice_settings() -> dict[str, tuple[str, ...]]:
    """Every ``Literal`` setting of a profile, as ``section.key`` -> its choices."""
    found: dict[str, tuple[str, ...]] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                found[f"{prefix}{name}"] = typing.get_args(hint)
            elif dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{name}.")

    walk(Profile, "")
    return found


def test_fixed_choices_are_literals_checked_on_load_and_each_has_its_code() -> None:
    from nasaudit.attacks.gc import MODEL_MODES, OBJECTIVES, UNITS
    from nasaudit.defenses.denoise import STORES
    from nasaudit.nas.robot_pool import POOL_OPS
    from nasaudit.nas.tenas import INITS, RANK_TIES
    from nasaudit.spaces.darts.genotype import SAMPLINGS

    code = {"random_baseline.sampling": SAMPLINGS, "robot.pool_ops": POOL_OPS,
            "defenses.denoise.store": STORES, "tenas.init": INITS, "tenas.rank_ties": RANK_TIES,
            "gc.units": UNITS, "gc.objective": OBJECTIVES, "gc.model_mode": MODEL_MODES}  # fmt: skip
    settings = _choice_settings()
    assert set(code) <= set(settings)
    for key, choices in settings.items():
        if key in code:
            assert set(code[key]) == set(choices), key
        for choice in choices:
            value: object = load_profile("smoke", [f"{key}={choice}"])
            for part in key.split("."):
                value = getattr(value, part)
            assert value == choice
        refused = rf"^--set: {key} must be one of: {', '.join(choices)}; got 'x'$"
        with pytest.raises(NasauditError, match=refused):
            load_profile("smoke", [f"{key}=x"])
