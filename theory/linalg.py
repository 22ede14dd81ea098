"""Float64 linear algebra of positive semi-definite kernel matrices.

Every solve in `theory/` goes through here, so the numerical policy is written
once:

* Solves run in float64 inside `jax.enable_x64(True)`, a context manager: the
  global `jax_enable_x64` flag is never flipped, and callers convert results
  back to the dtype of their inputs.
* A kernel matrix that is not numerically positive definite never produces NaN.
  A Cholesky factorization that fails (or whose smallest pivot is at rounding
  level) is retried with an explicit jitter `j * I`, `j` stepping through
  `JITTER_LADDER` times the mean diagonal entry; the jitter used is reported
  with a `JitterWarning`. If even `MAX_RELATIVE_JITTER` times the mean diagonal
  does not make it positive definite, a `ValueError` names the matrix and its
  smallest eigenvalue. An eigendecomposition clips eigenvalues in
  `[-MAX_RELATIVE_JITTER * mean diagonal, 0)` to zero (reported the same way
  when they are beyond rounding) and rejects more negative ones.

These checks need concrete values, so they run at the public boundary; inside
a user's own `jax.jit` they would be skipped, which is why the public
functions of `theory/` are meant to be called on concrete arrays.
"""
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

JITTER_LADDER = (1e-10, 1e-8, 1e-6, 1e-4)
MAX_RELATIVE_JITTER = JITTER_LADDER[-1]


class JitterWarning(UserWarning):
    """A kernel matrix needed an explicit diagonal jitter to be factorized."""


def float64():
    """Context in which JAX computes in float64, without touching the global flag."""
    return jax.enable_x64(True)


def check_finite(name, x):
    """Raise a ValueError naming `name` if the concrete array `x` holds NaN or inf."""
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        where = np.argwhere(~np.isfinite(x))
        raise ValueError(
            f"{name} of shape {x.shape} holds {len(where)} non-finite entries "
            f"(first at index {tuple(int(i) for i in where[0])})."
        )


def check_diag_reg(diag_reg):
    """Validate `diag_reg`: a finite, non-negative scalar (a Python or NumPy number)."""
    value = np.asarray(diag_reg)
    if value.ndim != 0 or not np.isfinite(value) or value < 0:
        raise ValueError(f"diag_reg must be a finite, non-negative scalar; got {diag_reg!r}.")
    return float(value)


@jax.jit
def _factor(k):
    """Cholesky factor of k, with what `cholesky` checks: (factor, min pivot^2, max diag, mean |diag|)."""
    factor = jnp.linalg.cholesky(k)
    pivots = jnp.diagonal(factor)
    diag = jnp.diagonal(k)
    return factor, jnp.min(pivots) ** 2, jnp.max(diag), jnp.mean(jnp.abs(diag))


@jax.jit
def _add_to_diagonal(k, value):
    return k + value * jnp.eye(k.shape[0], dtype=k.dtype)


@jax.jit
def cho_solve(factor, b):
    """Solve `K x = b` from the lower Cholesky factor of K."""
    return jax.scipy.linalg.cho_solve((factor, True), b)


@jax.jit
def _eigh(k):
    return jnp.linalg.eigh(k)


class Cholesky(NamedTuple):
    """A lower Cholesky factor of `k + jitter * I` and the jitter that was needed."""

    factor: jax.Array
    jitter: float


def _pivot_ok(min_pivot_sq, max_diag, n):
    """A factor is usable if it is finite and no pivot is at rounding level."""
    floor = n * np.finfo(np.float64).eps * max_diag
    return bool(np.isfinite(min_pivot_sq) and min_pivot_sq > floor)


def cholesky(k, name="k_train_train"):
    """Cholesky factor of a symmetric PSD float64 matrix, with reported jitter.

    Args:
      k: (n, n) float64 JAX array (call inside `float64()`).
      name: how error and warning messages refer to the matrix.

    Returns:
      `Cholesky(factor, jitter)`; `jitter` is 0 unless a `JitterWarning` was issued.

    Raises:
      ValueError: if no jitter up to `MAX_RELATIVE_JITTER` times the mean
        diagonal entry makes `k` positive definite.
    """
    n = k.shape[0]
    factor, min_pivot_sq, max_diag, scale = _factor(k)
    if _pivot_ok(float(min_pivot_sq), float(max_diag), n):
        return Cholesky(factor, 0.0)
    scale = float(scale)
    for relative in JITTER_LADDER:
        jitter = relative * scale
        factor, min_pivot_sq, max_diag, _ = _factor(_add_to_diagonal(k, jitter))
        if _pivot_ok(float(min_pivot_sq), float(max_diag), n):
            warnings.warn(
                f"{name} of shape {k.shape} is not numerically positive definite; "
                f"added jitter {jitter:.3g} (= {relative:g} x mean diagonal entry) to its "
                "diagonal. Pass a positive diag_reg to control this yourself.",
                JitterWarning,
                stacklevel=3,
            )
            return Cholesky(factor, jitter)
    smallest = float(np.asarray(_eigh(k)[0])[0])
    raise ValueError(
        f"{name} of shape {k.shape} is not positive semi-definite: its smallest eigenvalue is "
        f"{smallest:.3g} (mean diagonal entry {scale:.3g}), beyond the largest jitter "
        f"({MAX_RELATIVE_JITTER:g} x mean diagonal). Check the kernel, or pass a larger diag_reg."
    )


class Eigh(NamedTuple):
    """Eigendecomposition `k = evecs @ diag(evals) @ evecs.T` with `evals >= 0`."""

    evals: jax.Array
    evecs: jax.Array


def eigh_psd(k, name="k_train_train"):
    """Eigendecomposition of a symmetric PSD float64 matrix with eigenvalues clipped at 0.

    Negative eigenvalues within rounding (`n * eps * max|eval|`) are set to 0
    silently; ones down to `-MAX_RELATIVE_JITTER` times the mean diagonal entry
    are set to 0 with a `JitterWarning`; more negative ones raise ValueError.
    """
    evals, evecs = _eigh(k)
    evals_host = np.asarray(evals)
    if not np.all(np.isfinite(evals_host)):
        raise ValueError(f"eigendecomposition of {name} of shape {k.shape} is not finite.")
    smallest, largest = float(evals_host[0]), float(np.max(np.abs(evals_host)))
    if smallest < 0:
        scale = float(np.mean(np.abs(np.diagonal(np.asarray(k)))))
        rounding = k.shape[0] * np.finfo(np.float64).eps * largest
        if smallest < -MAX_RELATIVE_JITTER * scale:
            raise ValueError(
                f"{name} of shape {k.shape} is not positive semi-definite: its smallest "
                f"eigenvalue is {smallest:.3g} (mean diagonal entry {scale:.3g}). Check the "
                "kernel, or pass a larger diag_reg."
            )
        if smallest < -rounding:
            warnings.warn(
                f"{name} of shape {k.shape} has negative eigenvalues down to {smallest:.3g} "
                f"(mean diagonal entry {scale:.3g}); treated as 0. Pass a positive diag_reg "
                "to control this yourself.",
                JitterWarning,
                stacklevel=3,
            )
        evals = jnp.asarray(np.maximum(evals_host, 0.0))
    return Eigh(evals, evecs)
