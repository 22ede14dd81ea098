"""What every loader returns: a train/test `Dataset`, targets, and a seeded split.

Conventions shared by all loaders in `experiments.data`:

- Inputs are NumPy arrays on the host, float32 unless `dtype` says otherwise,
  batch-first and channels-last: `(N, features)` when flattened, `(N, H, W, C)`
  for images. Pixel values are scaled to [0, 1].
- Classification targets are chosen by `targets`:
  `"one_hot"` (default): `(N, classes)` with entries 0 and 1;
  `"centered"`: one-hot minus `1 / classes`, so each target row sums to zero
  (the zero-mean regression targets of Lee et al. 2018, "Deep Neural Networks
  as Gaussian Processes", §3);
  `"labels"`: the integer class, `(N,)` int32.
- Regression targets are `(N, outputs)` in `dtype`.
- Shuffling uses `numpy.random.default_rng(seed)`, so a seed names one split
  on every machine.
"""
from typing import NamedTuple

import numpy as np

TARGET_KINDS = ("one_hot", "centered", "labels")


class Dataset(NamedTuple):
    """A train/test split; unpacks as `x_train, y_train, x_test, y_test`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def class_targets(labels, num_classes, targets="one_hot", dtype=np.float32):
    """Integer labels `(N,)` -> the targets named by `targets` (see module doc)."""
    labels = np.asarray(labels)
    if targets not in TARGET_KINDS:
        raise ValueError(f"targets must be one of {TARGET_KINDS}, got {targets!r}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    if targets == "labels":
        return labels.astype(np.int32)
    one_hot = np.eye(num_classes, dtype=dtype)[labels]
    if targets == "centered":
        one_hot -= np.asarray(1.0 / num_classes, dtype=dtype)
    return one_hot


def shuffled_split(x, y, n_train, n_test, seed):
    """Shuffle `(x, y)` with `seed`, then take `n_train` and the next `n_test` rows.

    Args:
      x, y: arrays with the same first dimension N.
      n_train, n_test: sizes; `n_train + n_test <= N`.
      seed: integer seed of `numpy.random.default_rng`.

    Returns:
      A `Dataset`; train and test rows never overlap.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if n_train < 0 or n_test < 0 or n_train + n_test > n:
        raise ValueError(
            f"n_train={n_train} plus n_test={n_test} must not exceed the {n} examples")
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    return Dataset(x[train], y[train], x[test], y[test])


def subsample(x, y, n, seed):
    """`n` rows of `(x, y)` chosen with `seed`, or all rows in order when `n is None`."""
    if n is None:
        return x, y
    if not 0 <= n <= len(x):
        raise ValueError(f"asked for {n} examples, only {len(x)} exist")
    keep = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[keep], y[keep]
