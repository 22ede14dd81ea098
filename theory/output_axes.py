"""Layout of network outputs against kernel matrices (neural-tangents' `trace_axes`).

Targets `y` have shape `(N, *rest)`. The axes in `trace_axes` are outputs that
are independent and share one kernel (the kernel is `K ⊗ I` along them, so the
kernel matrix lacks them); the other axes ("kept", always including the batch
axis 0) appear in the kernel zipped: a kernel between sets of kept shapes
`(a, b)` and `(a', b')` has shape `(a, a', b, b')`. With the default
`trace_axes=(-1,)` and `y` of shape `(N, C)` the kernel is simply `(N, N')`.

Solvers work on the flattened form (NumPy arrays; reshaping is free on the
host): kernel `(P, P')` and targets `(P, C)`, with
`P` the product of the kept dimensions and `C` the product of the traced ones.
"""
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from theory import linalg


class OutputLayout(NamedTuple):
    """Which axes of the targets are kept in the kernel and which are traced."""

    y_shape: tuple
    trace_axes: tuple  # non-negative, sorted
    kept_axes: tuple  # non-negative, sorted, starts with 0

    @property
    def kept_shape(self):
        return tuple(self.y_shape[a] for a in self.kept_axes)

    @property
    def trace_shape(self):
        return tuple(self.y_shape[a] for a in self.trace_axes)

    @property
    def n_columns(self):
        return int(np.prod(self.trace_shape, dtype=int))


def output_layout(y_train, trace_axes):
    """Validate `trace_axes` against `y_train` and describe the layout."""
    shape = tuple(np.shape(y_train))
    if len(shape) == 0:
        raise ValueError("y_train must have a leading batch axis, got a scalar.")
    ndim = len(shape)
    try:
        axes = tuple(int(a) for a in trace_axes)
    except TypeError:
        raise TypeError(f"trace_axes must be a sequence of ints, got {trace_axes!r}.") from None
    canonical = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"trace_axes={trace_axes!r} is out of range for y_train of shape {shape}.")
        canonical.append(a % ndim)
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"trace_axes={trace_axes!r} repeats an axis of y_train of shape {shape}.")
    if 0 in canonical:
        raise ValueError(
            f"trace_axes={trace_axes!r} includes the batch axis 0 of y_train of shape {shape}; "
            "the batch axis is always kept."
        )
    traced = tuple(sorted(canonical))
    kept = tuple(a for a in range(ndim) if a not in traced)
    return OutputLayout(shape, traced, kept)


def check_inputs_match(layout, x_train):
    """Raises unless ``x_train`` has one example per row of ``y_train``."""
    if np.ndim(x_train) == 0 or np.shape(x_train)[0] != layout.y_shape[0]:
        raise ValueError(
            f"x_train and y_train must have the same number of examples; got x_train of shape "
            f"{np.shape(x_train)} and y_train of shape {layout.y_shape}."
        )


def check_targets(layout, name, y, batch_size=None):
    """Check that `y` has the targets' shape (with `batch_size` rows if given)."""
    expected = layout.y_shape if batch_size is None else (batch_size,) + layout.y_shape[1:]
    shape = tuple(np.shape(y))
    if shape != expected:
        raise ValueError(f"{name} must have shape {expected} (like y_train), got {shape}.")


def targets_2d(layout, y, xp=np):
    """(N, *rest) -> (P, C): kept axes flattened into rows, traced axes into columns.

    `xp`: the array namespace (`jax.numpy` inside traced code).
    """
    y = xp.asarray(y)
    n_kept = len(layout.kept_axes)
    y = xp.moveaxis(y, layout.kept_axes, tuple(range(n_kept)))
    return y.reshape((-1, layout.n_columns))


def kernel_2d(layout, name, k, rows_batch=None, cols_batch=None):
    """Flatten a zipped kernel to (P_rows, P_cols), checking its shape.

    `rows_batch` / `cols_batch`: the batch size the rows / columns must have
    (None: any). The non-batch kept dimensions must match the targets'. A
    kernel on an accelerator stays there (its solves run there).
    """
    xp = jnp if linalg.on_accelerator(k) else np
    k = xp.asarray(k)
    kept = layout.kept_shape
    n_kept = len(kept)
    expected_rank = 2 * n_kept
    if k.ndim != expected_rank:
        raise ValueError(
            f"{name} must have {expected_rank} axes (kept output shape {kept} zipped for two "
            f"inputs, trace_axes={layout.trace_axes}), got shape {k.shape}."
        )
    rows, cols = k.shape[0::2], k.shape[1::2]
    bad = rows[1:] != kept[1:] or cols[1:] != kept[1:]
    bad = bad or (rows_batch is not None and rows[0] != rows_batch)
    bad = bad or (cols_batch is not None and cols[0] != cols_batch)
    if bad:
        want_rows = (rows_batch if rows_batch is not None else "M",) + kept[1:]
        want_cols = (cols_batch if cols_batch is not None else "M",) + kept[1:]
        want = tuple(x for pair in zip(want_rows, want_cols) for x in pair)
        raise ValueError(f"{name} must have shape {want} for y_train of shape {layout.y_shape}, got {k.shape}.")
    k = xp.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    return k.reshape((int(np.prod(rows)), int(np.prod(cols))))


def rows_shape(layout, k):
    """Kept output shape of the row inputs of a zipped kernel `k`."""
    return tuple(np.shape(k)[0::2])


def outputs_from_2d(layout, f, kept_shape, lead_shape=(), xp=np):
    """(*lead, P, C) -> (*lead, *output shape) with the kept dims given by `kept_shape`."""
    n_lead, n_kept = len(lead_shape), len(kept_shape)
    f = f.reshape(tuple(lead_shape) + tuple(kept_shape) + layout.trace_shape)
    src = tuple(range(n_lead, n_lead + n_kept))
    dst = tuple(n_lead + a for a in layout.kept_axes)
    return xp.moveaxis(f, src, dst)


def covariance_from_2d(cov, kept_shape, lead_shape=()):
    """(*lead, P, P) -> (*lead, d0, d0, d1, d1, ...): the zipped layout of kernels."""
    n_lead, n_kept = len(lead_shape), len(kept_shape)
    cov = cov.reshape(tuple(lead_shape) + tuple(kept_shape) * 2)
    order = tuple(range(n_lead)) + tuple(
        n_lead + i + half * n_kept for i in range(n_kept) for half in (0, 1)
    )
    return np.transpose(cov, order)
