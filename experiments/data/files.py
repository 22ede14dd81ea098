"""Loaders for MNIST and CIFAR-10 from a local folder, in their distributed formats.

Nothing is downloaded: fetch the files once by hand and point the loader at
the folder.

- MNIST (LeCun, Bottou, Bengio & Haffner 1998; Fashion-MNIST uses the same
  files, Xiao, Rasul & Vollgraf 2017): four IDX files, gzipped or not,
  `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.
  IDX format (as described on LeCun's MNIST page): bytes 0-1 are zero, byte 2
  names the element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
  0x0D float32, 0x0E float64), byte 3 the number of dimensions d; then d
  big-endian uint32 sizes; then the elements, big-endian, row-major.
- CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny
  Images"), "python version": the folder `cifar-10-batches-py` holding the
  pickled batches `data_batch_1` ... `data_batch_5` and `test_batch`. Each is a
  dict with `b"data"`, a `(10000, 3072)` uint8 array whose rows are the 1,024
  red, then green, then blue values of a 32x32 image in row-major order, and
  `b"labels"`, a list of ints 0-9.
  The pickles are read by an unpickler that only builds dicts, lists, numbers,
  strings and NumPy arrays, so a doctored file cannot run code.

Conventions (dtype, targets, shapes, seeds): see `experiments.data.splits`.
"""
import gzip
import os
import pickle

import numpy as np

from experiments.data.splits import Dataset, class_targets, subsample

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


def read_idx(path):
    """Read one IDX file (optionally gzipped, detected by its magic bytes).

    Returns:
      The array with the file's shape, in native byte order.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (header {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header promises shape {shape} of {dtype} ({expected} bytes), "
            f"file holds {len(raw) - header} bytes of data")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(folder, name, suffixes=("", ".gz")):
    for candidate in (name + suffix for suffix in suffixes):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{folder} has no file {' or '.join(name + s for s in suffixes)}")


def load_mnist_idx(folder, n_train=None, n_test=None, *, seed=0, flatten=True,
                   targets="one_hot", dtype=np.float32):
    """MNIST (or Fashion-MNIST) from its four IDX files in `folder`.

    Args:
      folder: directory holding the files named in `MNIST_FILES` (`.gz` optional).
      n_train, n_test: if given, that many examples drawn with `seed` from the
        official train / test split (kept in file order); None keeps all.
      flatten: `(N, H*W)` if True, else `(N, H, W, 1)`.
      targets: "one_hot", "centered" or "labels" (see `splits`).
      dtype: dtype of the inputs and of float targets.

    Returns:
      `Dataset`, pixels scaled to [0, 1].
    """
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = read_idx(_find(folder, MNIST_FILES["x_" + split]))
        labels = read_idx(_find(folder, MNIST_FILES["y_" + split]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                "do not form (N, H, W) and (N,)")
        images, labels = subsample(images, labels, n, seed)
        x = (images / 255.0).astype(dtype)
        parts["x_" + split] = x.reshape(len(x), -1) if flatten else x[..., None]
        parts["y_" + split] = class_targets(labels.astype(np.int64), 10, targets, dtype)
    return Dataset(**parts)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only containers, numbers, strings and NumPy arrays."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        if module.startswith("numpy.core"):  # files pickled before NumPy 2
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def read_cifar_batch(path):
    """One CIFAR-10 python batch -> `(images (N, 32, 32, 3) uint8, labels (N,) int64)`."""
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: data {data.shape} and labels {labels.shape} do not form "
            "(N, 3072) and (N,)")
    # rows are channel-major (all red, then green, then blue); we want channels last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(folder, n_train=None, n_test=None, *, seed=0, flatten=False,
                 targets="one_hot", dtype=np.float32):
    """CIFAR-10 from its python batches in `folder`.

    Args:
      folder: `cifar-10-batches-py` itself or the directory that contains it.
      n_train, n_test: if given, that many examples drawn with `seed` from the
        official 50,000 / 10,000 split (kept in file order); None keeps all.
      flatten: `(N, 3072)` (channels last, then flattened) if True, else
        `(N, 32, 32, 3)`.
      targets: "one_hot", "centered" or "labels" (see `splits`).
      dtype: dtype of the inputs and of float targets.

    Returns:
      `Dataset`, pixels scaled to [0, 1].
    """
    nested = os.path.join(folder, "cifar-10-batches-py")
    if os.path.isdir(nested):
        folder = nested
    parts = {}
    for split, names, n in (("train", CIFAR10_TRAIN_BATCHES, n_train),
                            ("test", (CIFAR10_TEST_BATCH,), n_test)):
        batches = [read_cifar_batch(_find(folder, name, ("",))) for name in names]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        images, labels = subsample(images, labels, n, seed)
        x = (images / 255.0).astype(dtype)
        parts["x_" + split] = x.reshape(len(x), -1) if flatten else x
        parts["y_" + split] = class_targets(labels, 10, targets, dtype)
    return Dataset(**parts)
