"""A `kernel_fn` that looks kernels up in matrices computed once, for `theory.predict`.

`theory.predict.gradient_descent_mse_ensemble` calls `kernel_fn` three times
(train-train, test-train, test-test), and every new shape of a closed-form
`kernel_fn` is a new XLA compilation (seconds on a CPU). An experiment that
evaluates the kernels of all its points in one call can hand them over
through `precomputed_kernel_fn`, whose inputs are row indices into those
matrices: `x_train = indices(0, N)`, `x_test = indices(N, N + M)`.
"""
import collections

import numpy as np


def indices(start, stop):
    """Row indices `start..stop-1` as inputs `(stop - start, 1)` for `precomputed_kernel_fn`."""
    return np.arange(start, stop)[:, None]


def precomputed_kernel_fn(**kernels):
    """`kernel_fn(i1, i2=None, get=None)` returning `kernels[name][i1, i2]`.

    Args:
      **kernels: square `(P, P)` matrices by name, e.g. `nngp=..., ntk=...`,
        of all P points.

    Returns:
      A kernel function in neural-tangents' calling convention whose inputs
      are `(n, 1)` integer row indices (see `indices`).
    """
    kernels = {name: np.asarray(k) for name, k in kernels.items()}
    available = tuple(kernels)

    def kernel_fn(i1, i2=None, get=None):
        rows = np.asarray(i1)[:, 0]
        cols = rows if i2 is None else np.asarray(i2)[:, 0]
        names = available if get is None else ((get,) if isinstance(get, str) else tuple(get))
        missing = [name for name in names if name not in kernels]
        if missing:
            raise ValueError(f"precomputed kernel_fn holds {available}, asked for {missing}")
        picked = {name: kernels[name][np.ix_(rows, cols)] for name in names}
        if isinstance(get, str):
            return picked[get]
        return collections.namedtuple("Kernel", names)(*(picked[name] for name in names))

    return kernel_fn
