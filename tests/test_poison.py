"""Poison files: round trip, application, and one clear error per kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasaudit.data.datasets import Split, make_dataset
from nasaudit.data.poison import apply_poison, load_poison, make_poison, save_poison
from nasaudit.errors import NasauditError
from nasaudit.io import sha256_file, write_npz


@pytest.fixture
def label_poison(tiny_dataset):
    return make_poison("rlf", tiny_dataset, 3, np.array([7, 2, 5]), labels=np.array([0, 1, 2]))


@pytest.fixture
def image_poison(tiny_dataset):
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    return make_poison("gaussian", tiny_dataset, 4, np.array([1, 0]), images=images, params={"sigma": 0.1})


def test_round_trip_and_application(tmp_path, tiny_dataset, label_poison, image_poison) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    assert path.suffix == ".npz" and (tmp_path / "p.json").is_file()
    back = load_poison(path, tiny_dataset)
    assert list(back.indices) == [2, 5, 7] and list(back.labels) == [1, 2, 0]  # sorted with their labels
    poisoned = apply_poison(back, tiny_dataset)
    assert len(poisoned.train) == len(tiny_dataset.train)
    assert list(poisoned.train.labels[[2, 5, 7]]) == [1, 2, 0]
    keep = np.setdiff1d(np.arange(40), [2, 5, 7])
    np.testing.assert_array_equal(poisoned.train.labels[keep], tiny_dataset.train.labels[keep])
    assert poisoned.mean == tiny_dataset.mean  # normalisation is the clean data's

    img_path = save_poison(image_poison, tmp_path / "q")
    applied = apply_poison(load_poison(img_path, tiny_dataset), tiny_dataset).train
    assert applied.images[:2].max() == 0
    np.testing.assert_array_equal(applied.images[2:], tiny_dataset.train.images[2:])
    assert json.loads((tmp_path / "q.json").read_text())["params"] == {"sigma": 0.1}


def _resave_npz(path, **arrays) -> None:
    """Replace the npz and fix its manifest hash, so the error under test is the one reached."""
    write_npz(path, arrays)
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["npz_sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(manifest))


def test_manifest_hash_mismatch(tmp_path, tiny_dataset, label_poison) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    write_npz(path, {"indices": np.array([1, 2, 3]), "labels": np.array([0, 0, 0])})
    with pytest.raises(NasauditError, match="sha256 differs"):
        load_poison(path, tiny_dataset)


def test_poison_for_another_dataset(tmp_path, tiny_dataset, digits) -> None:
    path = save_poison(make_poison("rlf", digits, 0, np.array([1]), labels=np.array([3])), tmp_path / "p")
    with pytest.raises(NasauditError, match="made for dataset 'digits', not 'tiny'"):
        load_poison(path, tiny_dataset)


def test_poison_for_another_copy_of_the_dataset(tmp_path, tiny_dataset, label_poison) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    other = make_dataset("tiny", Split(tiny_dataset.train.images[::-1].copy(), tiny_dataset.train.labels),
                         tiny_dataset.test, tiny_dataset.classes)  # fmt: skip
    with pytest.raises(NasauditError, match="hash differs"):
        load_poison(path, other)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"indices": np.array([1, 40]), "labels": np.array([0, 1])}, "outside 0..39"),
        ({"indices": np.array([-1, 3]), "labels": np.array([0, 1])}, "outside 0..39"),
        ({"indices": np.array([3, 3]), "labels": np.array([0, 1])}, "appears twice"),
        ({"indices": np.array([1, 2]), "labels": np.array([0, 4])}, "label is outside 0..3"),
        ({"indices": np.array([1, 2]), "labels": np.array([0])}, "1 labels for 2 indices"),
        ({"indices": np.array([1.0, 2.0]), "labels": np.array([0, 1])}, "int64"),
        ({"indices": np.array([1, 2])}, "missing"),
    ],
)
def test_bad_label_arrays(tmp_path, tiny_dataset, label_poison, arrays, message) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    _resave_npz(path, **arrays)
    with pytest.raises(NasauditError, match=message):
        load_poison(path, tiny_dataset)


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, 32, 32, 3), dtype=np.float32), np.zeros((2, 28, 28, 3), dtype=np.uint8),
     np.zeros((1, 32, 32, 3), dtype=np.uint8)],
)  # fmt: skip
def test_bad_image_arrays(tmp_path, tiny_dataset, image_poison, images) -> None:
    path = save_poison(image_poison, tmp_path / "q")
    _resave_npz(path, indices=np.array([0, 1]), images=images)
    with pytest.raises(NasauditError, match="images must be uint8"):
        load_poison(path, tiny_dataset)


def test_truncated_file_fails_its_hash(tmp_path, tiny_dataset, label_poison) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NasauditError, match="sha256 differs"):
        load_poison(path, tiny_dataset)


def test_non_npz_file_is_reported(tmp_path, tiny_dataset, label_poison) -> None:
    path = save_poison(label_poison, tmp_path / "p")
    path.write_bytes(b"this is not a zip archive")
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["npz_sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(NasauditError, match=r"not a readable \.npz"):
        load_poison(path, tiny_dataset)


def test_plain_npy_file_is_reported(tmp_path, tiny_dataset, label_poison) -> None:
    """A valid .npy array behind a matching manifest is not an .npz: one line, not a TypeError."""
    path = save_poison(label_poison, tmp_path / "p")
    with path.open("wb") as f:
        np.save(f, np.arange(3))
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["npz_sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(NasauditError, match=r"not a readable \.npz poison file \(a single \.npy array"):
        load_poison(path, tiny_dataset)


def test_missing_or_broken_manifest(tmp_path, tiny_dataset, label_poison) -> None:
    with pytest.raises(NasauditError, match="no such poison file"):
        load_poison(tmp_path / "absent.npz", tiny_dataset)
    path = save_poison(label_poison, tmp_path / "p")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(NasauditError, match="not a complete nasaudit poison manifest"):
        load_poison(path, tiny_dataset)


def test_make_poison_rejects_both_or_neither_replacement(tiny_dataset) -> None:
    with pytest.raises(NasauditError, match="exactly one"):
        make_poison("x", tiny_dataset, 0, np.array([1]))


def test_defend_reads_the_poison_file_once_and_records_its_indices(tmp_path, digits, monkeypatch) -> None:
    """`nasaudit defend --poison`: the poisoned indices the manifest's outcome counts come from the one
    read that also applied the poison (the file used to be read and hashed a second time for them)."""
    from nasaudit import npzfile
    from nasaudit.cli import main
    from nasaudit.defenses import DEFENSES, make_defended

    flipped = np.array([3, 10, 11, 500, 1400])
    poison = make_poison("rlf", digits, 0, flipped, labels=(digits.train.labels[flipped] + 1) % 10)
    save_poison(poison, tmp_path / "p")
    keep = np.arange(0, len(digits.train), 2)  # drops the odd indices: poisoned 3 and 11
    monkeypatch.setitem(
        DEFENSES._items, "halve", lambda data, seed, ctx: make_defended("halve", data, seed, keep)
    )
    reads: list[str] = []
    real = npzfile.read_arrays

    def counted(fmt, path, manifest):  # type: ignore[no-untyped-def]
        reads.append(fmt.noun)
        return real(fmt, path, manifest)

    monkeypatch.setattr(npzfile, "read_arrays", counted)
    argv = ["defend", "halve", "--dataset", "digits", "--poison", str(tmp_path / "p.npz"), "--profile",
            "smoke", "--device", "cpu", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "d"),
            "-q"]  # fmt: skip
    assert main(argv) == 0
    assert reads.count("poison") == 1
    outcome = json.loads((tmp_path / "d.json").read_text())["poison_outcome"]
    assert outcome["poisoned"] == 5 and outcome["poisoned_dropped"] == 2 and outcome["poisoned_kept"] == 3
