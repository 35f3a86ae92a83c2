import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ma2ml_jax import data
from ma2ml_jax.errors import DataError


def test_digits_splits_dtype_and_stats():
    d = data.load("digits", val_size=300, seed=0)
    assert d.x_train.dtype == np.uint8 and d.x_train.shape[1:] == (8, 8, 1)
    assert d.y_train.dtype == np.int32 and d.num_classes == 10
    assert len(d.y_val) == 300
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 1797
    # Statistics come from the (post-split) train images only.
    np.testing.assert_allclose(d.mean, d.x_train.reshape(-1, 1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(d.std, d.x_train.reshape(-1, 1).std(0), rtol=1e-4)
    assert d.x_train.max() == 255  # rescaled from the 0..16 counts


def test_digits_val_split_is_seeded_and_test_split_fixed():
    a = data.load("digits", val_size=200, seed=1)
    b = data.load("digits", val_size=200, seed=1)
    c = data.load("digits", val_size=200, seed=2)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    np.testing.assert_array_equal(a.x_test, c.x_test)  # test split does not move with the seed


def _write_npz(path, n_train=50, n_test=20, shape=(6, 5, 3), classes=4, **override):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_npz_roundtrip(tmp_path):
    path = tmp_path / "d.npz"
    arrays = _write_npz(path)
    d = data.load(f"npz:{path}", val_size=10, seed=0)
    assert d.image_shape == (6, 5, 3) and d.num_classes == 4
    assert len(d.y_train) == 40 and len(d.y_val) == 10
    np.testing.assert_array_equal(d.x_test, arrays["x_test"])
    # train + val is a permutation of the original train split
    got = np.concatenate([d.x_train, d.x_val]).reshape(50, -1)
    want = arrays["x_train"].reshape(50, -1)
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))


def test_npz_grayscale_gets_channel_axis(tmp_path):
    path = tmp_path / "g.npz"
    rng = np.random.default_rng(0)
    _write_npz(path, x_train=rng.integers(0, 256, (50, 7, 7), dtype=np.uint8),
               x_test=rng.integers(0, 256, (20, 7, 7), dtype=np.uint8))
    assert data.load(f"npz:{path}", val_size=5).image_shape == (7, 7, 1)


@pytest.mark.parametrize("override, message", [
    ({"y_train": np.arange(49) % 4}, "has 50 images but y_train has 49"),
    ({"x_test": np.zeros((20, 6, 6, 3), np.uint8)}, "one image shape"),
    ({"x_train": np.zeros((50, 6, 5, 3), np.float32)}, "expected uint8"),
    ({"y_test": -np.ones(20, np.int64)}, "negative"),
    ({"y_train": None}, "missing arrays ['y_train']"),
])
def test_npz_bad_arrays(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    _write_npz(path, **override)
    with pytest.raises(DataError, match=None) as e:
        data.load(f"npz:{path}", val_size=5)
    assert message in str(e.value)


def test_labels_out_of_declared_range(tmp_path):
    path = tmp_path / "d.npz"
    _write_npz(path, classes=4)
    with pytest.raises(DataError, match="out of range for data.num_classes=3"):
        data.load(f"npz:{path}", val_size=5, num_classes=3)


@pytest.mark.parametrize("source, message", [
    ("mnist", "unknown data source 'mnist'; valid sources: digits, tfds:"),
    ("npz:/nonexistent/file.npz", "npz file not found"),
    ("", "data.source is empty"),
])
def test_bad_sources(source, message):
    with pytest.raises(DataError) as e:
        data.load(source, val_size=5)
    assert message in str(e.value)


def test_val_size_too_large():
    with pytest.raises(DataError, match="data.val_size=5000"):
        data.load("digits", val_size=5000)


def test_tfds_source_with_mock_data():
    with tfds.testing.mock_data(num_examples=60):
        d = data.load("tfds:cifar10", val_size=10, seed=0)
    assert d.x_train.dtype == np.uint8 and d.image_shape == (32, 32, 3)
    assert len(d.y_train) == 50 and len(d.y_val) == 10 and len(d.y_test) == 60
    assert d.y_train.max() < d.num_classes <= 10


def test_tfds_class_subset_is_seeded_and_reindexed():
    with tfds.testing.mock_data(num_examples=200):
        a = data.load("tfds:cifar10", val_size=10, seed=3, classes=4)
        b = data.load("tfds:cifar10", val_size=10, seed=3, classes=4)
    assert a.num_classes == 4
    assert set(np.unique(a.y_train)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_tfds_unknown_dataset():
    with pytest.raises(DataError, match="tfds:not_a_dataset"):
        data.load("tfds:not_a_dataset", val_size=5)


@pytest.mark.parametrize("name, commands", [
    ("cifar10", ["`python -m ma2ml_jax.prepare cifar10 --data_dir={d}` (no TensorFlow needed)",
                 "`tfds build cifar10 --file_format=array_record --data_dir={d}`"]),
    ("imagenet2012", ["`pip install tensorflow tensorflow-datasets`, then `tfds build "
                      "imagenet2012 --file_format=array_record --data_dir={d} --manual_dir="]),
])
def test_tfds_not_prepared_says_how_to_prepare(tmp_path, name, commands):
    d = str(tmp_path)
    with pytest.raises(DataError) as e:
        data.load(f"tfds:{name}", val_size=5, data_dir=d)
    message = str(e.value)
    assert message.startswith(f"tfds:{name} is not prepared in {d}; ")
    assert message.endswith(f"then run with --config.data.data_dir={d}")
    assert "\n" not in message
    for command in commands:
        assert command.format(d=d) in message
    assert os.listdir(d) == []  # no download was begun


def test_tfds_that_does_not_import_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(DataError, match=r"tfds sources need tensorflow_datasets, .*`pip install -r "
                                        r"requirements.txt`"):
        data.load("tfds:cifar10", val_size=5)
