"""Layout of network outputs against kernel matrices (neural-tangents' `trace_axes`).

Targets `y` have shape `(N, *rest)`. The axes in `trace_axes` are outputs that
are independent and share one kernel (the kernel is `K ⊗ I` along them, so the
kernel matrix lacks them); the other axes ("kept", always including the batch
axis 0) appear in the kernel zipped: a kernel between sets of kept shapes
`(a, b)` and `(a', b')` has shape `(a, a', b, b')`. With the default
`trace_axes=(-1,)` and `y` of shape `(N, C)` the kernel is simply `(N, N')`.

Solvers work on the flattened form (NumPy arrays, reshaping being free on the
host; JAX arrays for kernels on an accelerator or traced ones): kernel
`(P, P')` and targets `(P, C)`, with `P` the product of the kept dimensions
and `C` the product of the traced ones.
"""
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from theory import arguments, linalg


class OutputLayout(NamedTuple):
    """Which axes of the targets are kept in the kernel and which are traced.

    `where` is the public function the layout was made for; shape errors name it.
    """

    y_shape: tuple
    trace_axes: tuple  # non-negative, sorted
    kept_axes: tuple  # non-negative, sorted, starts with 0
    where: str = "theory"

    @property
    def kept_shape(self):
        return tuple(self.y_shape[a] for a in self.kept_axes)

    @property
    def trace_shape(self):
        return tuple(self.y_shape[a] for a in self.trace_axes)

    @property
    def n_columns(self):
        return int(np.prod(self.trace_shape, dtype=int))


def output_layout(where, y_train, trace_axes):
    """Checks `y_train` (real, finite, at least one example) and `trace_axes`; describes the layout.

    Args:
      where: the public function, for errors.
      y_train: targets `(N, ...)`.
      trace_axes: axes of `y_train` that are independent outputs sharing one kernel.
    """
    arguments.real_array(where, "y_train", y_train)
    shape = tuple(np.shape(y_train))
    if len(shape) == 0:
        raise arguments.argument_error(where, "y_train", "an array with a leading batch axis", "a scalar")
    ndim = len(shape)
    expected = f"a sequence of distinct axes of y_train (shape {shape}) other than the batch axis 0"
    try:
        axes = tuple(arguments.integer(where, "trace_axes", a) for a in trace_axes)
    except TypeError:
        raise arguments.argument_error(where, "trace_axes", expected, trace_axes, TypeError) from None
    if any(not -ndim <= a < ndim for a in axes):
        raise arguments.argument_error(where, "trace_axes", expected, f"{trace_axes!r}, out of range")
    canonical = [a % ndim for a in axes]
    if len(set(canonical)) != len(canonical):
        raise arguments.argument_error(where, "trace_axes", expected, f"{trace_axes!r}, which repeats an axis")
    if 0 in canonical:
        raise arguments.argument_error(where, "trace_axes", expected,
                                       f"{trace_axes!r}, which includes the batch axis (always kept)")
    traced = tuple(sorted(canonical))
    kept = tuple(a for a in range(ndim) if a not in traced)
    return OutputLayout(shape, traced, kept, where)


def check_inputs_match(layout, x_train):
    """Checks `x_train` (`arguments.examples`): one example per row of `y_train`."""
    arguments.examples(layout.where, "x_train", x_train)
    if np.shape(x_train)[0] != layout.y_shape[0]:
        raise arguments.argument_error(
            layout.where, "x_train", f"one example per row of y_train (shape {layout.y_shape})",
            f"shape {np.shape(x_train)}")


def targets_2d(layout, y, xp=np):
    """(N, *rest) -> (P, C): kept axes flattened into rows, traced axes into columns.

    `xp`: the array namespace (`jax.numpy` inside traced code).
    """
    y = xp.asarray(y)
    n_kept = len(layout.kept_axes)
    y = xp.moveaxis(y, layout.kept_axes, tuple(range(n_kept)))
    return y.reshape((-1, layout.n_columns))


def kernel_2d(layout, name, k, rows_batch=None, cols_batch=None, symmetric=None):
    """Flatten a zipped kernel to (P_rows, P_cols), checking it: real, finite, of the right shape.

    `rows_batch` / `cols_batch`: the batch size the rows / columns must have
    (None: any, but at least 1). The non-batch kept dimensions must match the
    targets'. `symmetric`: the flattened kernel must equal its transpose within
    `symmetry_tolerance` of max |K| (None: when both batch sizes are given and equal,
    i.e. a train-train kernel). A kernel on an accelerator stays there (its solves
    run there); a traced kernel stays traced, with the value checks (finite,
    symmetric) skipped. Errors name `layout.where` and `name`.
    """
    arguments.real_array(layout.where, name, k, finite=False)
    traced = linalg.is_traced(k)
    xp = jnp if traced or linalg.on_accelerator(k) else np
    k = xp.asarray(k)
    kept = layout.kept_shape
    n_kept = len(kept)
    rows, cols = k.shape[0::2], k.shape[1::2]
    bad = k.ndim != 2 * n_kept or rows[1:] != kept[1:] or cols[1:] != kept[1:]
    bad = bad or (rows_batch is not None and rows[0] != rows_batch)
    bad = bad or (cols_batch is not None and cols[0] != cols_batch)
    if bad:
        want_rows = (rows_batch if rows_batch is not None else "M",) + kept[1:]
        want_cols = (cols_batch if cols_batch is not None else "M",) + kept[1:]
        want = tuple(x for pair in zip(want_rows, want_cols) for x in pair)
        raise arguments.argument_error(
            layout.where, name, f"of shape {want} (the kept output axes {kept} of y_train zipped for two "
            f"inputs, trace_axes={layout.trace_axes})", f"shape {k.shape}")
    arguments.real_array(layout.where, name, k)  # non-empty and finite
    k = xp.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    k = k.reshape((int(np.prod(rows)), int(np.prod(cols))))
    if symmetric is None:
        symmetric = rows_batch is not None and rows_batch == cols_batch
    if symmetric:
        _check_symmetric(layout.where, name, k, values=not traced)
    return k


def symmetry_tolerance(dtype):
    """Relative asymmetry (of max |K|) accepted in a kernel of `dtype`: rounding, not an error."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) or dtype.itemsize >= 8:
        return 1e-6
    return 1e-4 if dtype.itemsize >= 4 else 1e-2


def _check_symmetric(where, name, k, values=True):
    """Refuse a square kernel that is not symmetric (its eigenvalues would otherwise be misread as non-PSD).

    `values=False` (a traced kernel): only the shape is checked."""
    if k.shape[0] != k.shape[1]:
        raise arguments.argument_error(where, name, "a square (symmetric) kernel", f"shape {tuple(k.shape)}")
    if not values:
        return
    host = np.asarray(k, np.float64)
    scale = float(np.max(np.abs(host)))
    asym = float(np.max(np.abs(host - host.T)))
    tol = symmetry_tolerance(k.dtype)
    if asym > tol * scale:
        i, j = (int(v) for v in np.unravel_index(np.argmax(np.abs(host - host.T)), host.shape))
        raise arguments.argument_error(
            where, name, f"symmetric (K = K^T within {tol:g} of max |K| for dtype {np.dtype(k.dtype)})",
            f"max |K - K^T| = {asym:.3g} (max |K| = {scale:.3g}), e.g. K[{i}, {j}] = {host[i, j]:.6g} "
            f"but K[{j}, {i}] = {host[j, i]:.6g}")


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
    return cov.transpose(order)  # a method: NumPy and JAX arrays alike
