"""Each reader on tiny files in the dataset's real on-disk format, through the production loader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from nasaudit.data.datasets import DATASETS, load_dataset
from nasaudit.errors import NasauditError

from conftest import write_cifar_batch, write_idx

rng = np.random.default_rng(1)


def _images(n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_registry_lists_every_dataset() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "fashionmnist", "mnist", "svhn"]


def test_cifar10_reads_the_pickled_batches(tmp_path) -> None:
    base = tmp_path / "cifar10" / "cifar-10-batches-py"
    parts = [(_images(3), np.array([i % 10, 1, 2])) for i in range(5)]
    for i, (x, y) in enumerate(parts, start=1):
        write_cifar_batch(base / f"data_batch_{i}", x, y, "labels")
    test_x = _images(2)
    write_cifar_batch(base / "test_batch", test_x, np.array([9, 8]), "labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    ds = load_dataset("cifar10", tmp_path)
    assert ds.train.images.shape == (15, 32, 32, 3) and ds.train.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train.images[:3], parts[0][0])  # channel order round-trips
    np.testing.assert_array_equal(ds.test.images, test_x)
    assert ds.train.labels.dtype == np.int64 and list(ds.test.labels) == [9, 8]
    assert ds.classes[0] == "airplane" and ds.num_classes == 10


def test_cifar100_uses_fine_labels(tmp_path) -> None:
    base = tmp_path / "cifar100" / "cifar-100-python"
    write_cifar_batch(base / "train", _images(4), np.array([0, 99, 5, 6]), "fine_labels")
    write_cifar_batch(base / "test", _images(2), np.array([1, 2]), "fine_labels")
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    ds = load_dataset("cifar100", tmp_path)
    assert list(ds.train.labels) == [0, 99, 5, 6] and ds.num_classes == 100


def test_cifar_reader_refuses_arbitrary_pickled_objects(tmp_path) -> None:
    base = tmp_path / "cifar100" / "cifar-100-python"
    base.mkdir(parents=True)
    (base / "train").write_bytes(pickle.dumps({"data": pickle.PickleError}))  # a class, not an array
    with pytest.raises(NasauditError, match="corrupt"):
        load_dataset("cifar100", tmp_path)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_style_idx_is_padded_to_32x32x3(tmp_path, name, folder) -> None:
    raw = tmp_path / name / folder / "raw"
    grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", grey)
    write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]))
    write_idx(raw / "t10k-images-idx3-ubyte", grey[:2])
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([4, 5]))
    ds = load_dataset(name, tmp_path)
    assert ds.train.images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(ds.train.images[:, 2:30, 2:30, 1], grey)  # pad 2 per side
    assert ds.train.images[:, :2].max() == 0 and ds.train.images[:, :, 30:].max() == 0
    assert (ds.train.images[..., 0] == ds.train.images[..., 2]).all()  # grey copied to 3 channels
    assert list(ds.test.labels) == [4, 5]


def test_truncated_idx_file_is_reported(tmp_path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(NasauditError, match="incomplete or corrupt"):
        load_dataset("mnist", tmp_path)


def test_svhn_reads_matlab_files_and_maps_10_to_0(tmp_path) -> None:
    from scipy.io import savemat

    folder = tmp_path / "svhn"
    folder.mkdir()
    x = _images(3)
    savemat(folder / "train_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.array([[10], [1], [9]])})
    savemat(folder / "test_32x32.mat", {"X": x[:1].transpose(1, 2, 3, 0), "y": np.array([[3]])})
    ds = load_dataset("svhn", tmp_path)
    np.testing.assert_array_equal(ds.train.images, x)
    assert list(ds.train.labels) == [0, 1, 9]


def test_missing_dataset_names_the_download_command(tmp_path) -> None:
    with pytest.raises(NasauditError, match="nasaudit data download cifar10"):
        load_dataset("cifar10", tmp_path)


def test_digits_is_embedded_and_deterministic(digits) -> None:
    assert digits.train.images.shape == (1437, 32, 32, 3) and len(digits.test) == 360
    assert digits.train.images.dtype == np.uint8 and digits.num_classes == 10
    assert np.bincount(digits.train.labels).min() > 130  # stratified split keeps every class
    again = load_dataset("digits")
    assert again.train.sha256 == digits.train.sha256 and again.test.sha256 == digits.test.sha256


def test_normalisation_statistics_come_from_the_clean_training_images(digits) -> None:
    pixels = digits.train.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(digits.mean, pixels.mean(0))
    np.testing.assert_allclose(digits.std, pixels.std(0))
