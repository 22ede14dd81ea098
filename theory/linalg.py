"""Float64 linear algebra of positive semi-definite kernel matrices.

Every solve in `theory/` goes through here, so the numerical policy is written
once:

* Solves run in float64 and results go back to the dtype of the inputs. Where
  they run follows the kernel: a kernel on an accelerator is factorized there
  by JAX inside `jax.enable_x64(True)` (a context manager: the global
  `jax_enable_x64` flag is never flipped); a kernel on the CPU (a NumPy array
  or a CPU JAX array) is factorized by SciPy's LAPACK on the host, which is
  faster there (n = 2000: Cholesky 0.06 s vs 0.12 s, eigh 0.9 s vs 1.05 s on
  2 cores) and compiles nothing.
* A kernel matrix that is not numerically positive definite never produces NaN.
  A Cholesky factorization that fails (or whose smallest pivot is at rounding
  level) is retried with an explicit jitter `j * I`, `j` stepping through
  `JITTER_LADDER` times the mean diagonal entry; the jitter used is reported
  with a `JitterWarning`. If even `MAX_RELATIVE_JITTER` times the mean diagonal
  does not make it positive definite, a `ValueError` names the matrix and its
  smallest eigenvalue. An eigendecomposition clips eigenvalues in
  `[-MAX_RELATIVE_JITTER * mean diagonal, 0)` to zero (reported the same way
  when they are beyond rounding) and rejects more negative ones.

These checks need concrete values, so they run at the public boundary on
concrete inputs. The solvers of `theory.predict` are also traceable
(`jax.jit`, `jax.grad`): when any input that a computation depends on is a
JAX tracer, it runs as pure `jax.numpy` (`Numerics.traced`) in the widest
float JAX allows at that moment (float64 under x64 mode, else float32), with
no jitter ladder and no value checks (no NaN/PSD/symmetry checks: inside a
user's `jit` those are skipped, as the README says). The formulas are the
same code on both paths, written against an array namespace `xp`.
"""
import contextlib
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

JITTER_LADDER = (1e-10, 1e-8, 1e-6, 1e-4)
MAX_RELATIVE_JITTER = JITTER_LADDER[-1]


class JitterWarning(UserWarning):
    """A kernel matrix needed an explicit diagonal jitter to be factorized."""


def float64():
    """Context in which JAX computes in float64, without touching the global flag."""
    return jax.enable_x64(True)


def is_traced(*values):
    """True if any leaf of `values` (pytrees allowed) is a JAX tracer (inside `jit`, `grad`, `vmap`)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


class Numerics(NamedTuple):
    """Where a computation runs: `xp` (NumPy or jax.numpy) in `dtype`.

    Concrete inputs: NumPy in float64 on the host (`HOST`). Traced inputs:
    jax.numpy in the widest float JAX allows now (`traced_numerics()`), so a
    computation inside a user's `jit` is float64 only if x64 mode is on.
    """

    xp: object
    dtype: object

    @property
    def traced(self):
        return self.xp is jnp

    def asarray(self, x):
        return self.xp.asarray(x, self.dtype)

    def zeros(self, shape):
        return self.xp.zeros(shape, self.dtype)

    def scope(self):
        """The context solves run in: a local x64 scope on the host path, nothing when traced
        (switching x64 inside a user's trace would mix dtypes)."""
        return contextlib.nullcontext() if self.traced else float64()

    def put(self, out, rows, value):
        """`out` with `out[rows] = value` (in place for NumPy, functionally for JAX)."""
        if self.traced:
            return out.at[rows].set(value)
        out[rows] = value
        return out


HOST = Numerics(np, np.dtype(np.float64))


def traced_numerics():
    return Numerics(jnp, jax.dtypes.canonicalize_dtype(np.float64))


def numerics(*values):
    """`traced_numerics()` if any of `values` is traced, else `HOST`."""
    return traced_numerics() if is_traced(*values) else HOST


def on_accelerator(x):
    """True for a JAX array that lives on a non-CPU device: solve it there."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    return any(device.platform != "cpu" for device in x.devices())


def as_float64(x, device):
    """A float64 copy of `x` where its solves run: JAX on the accelerator, else NumPy."""
    if device:
        with float64():
            return jnp.asarray(x, jnp.float64)
    return np.asarray(x, np.float64)


@jax.jit
def _factor_device(k):
    factor = jnp.linalg.cholesky(k)
    return factor, jnp.min(jnp.diagonal(factor)) ** 2


@jax.jit
def _cho_solve_device(factor, b):
    return jax.scipy.linalg.cho_solve((factor, True), b)


@jax.jit
def _eigh_device(k):
    return jnp.linalg.eigh(k)


def _factor(k):
    """Lower Cholesky factor and its smallest pivot squared (NaN if it failed)."""
    if isinstance(k, np.ndarray):
        try:
            factor = scipy.linalg.cholesky(k, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None, np.nan
        return factor, float(np.min(np.diagonal(factor)) ** 2)
    with float64():
        factor, pivot_sq = _factor_device(k)
    return factor, float(pivot_sq)


def _eigh(k):
    if isinstance(k, np.ndarray):
        return scipy.linalg.eigh(k, check_finite=False, driver="evd")
    with float64():
        return _eigh_device(k)


def cho_solve(factor, b):
    """Solve `K x = b` from the lower Cholesky factor of K; NumPy float64 result (traced if an input is)."""
    if is_traced(factor, b):
        num = traced_numerics()
        return jax.scipy.linalg.cho_solve((num.asarray(factor), True), num.asarray(b))
    if isinstance(factor, np.ndarray):
        return scipy.linalg.cho_solve((factor, True), np.asarray(b, np.float64), check_finite=False)
    with float64(), jax.ensure_compile_time_eval():
        return np.asarray(_cho_solve_device(factor, jnp.asarray(b, jnp.float64)))


def _diagonal_stats(k):
    diag = np.asarray(k.diagonal() if isinstance(k, np.ndarray) else jnp.diagonal(k))
    return float(np.max(diag)), float(np.mean(np.abs(diag)))


class Cholesky(NamedTuple):
    """A lower Cholesky factor of `k + jitter * I` and the jitter that was needed."""

    factor: object  # np.ndarray on the host, jax.Array on an accelerator
    jitter: float


def _usable(pivot_sq, max_diag, n):
    """A factor is usable if it is finite and no pivot is at rounding level."""
    return bool(np.isfinite(pivot_sq) and pivot_sq > n * np.finfo(np.float64).eps * max_diag)


def cholesky(k, name="k_train_train"):
    """Cholesky factor of a symmetric PSD float64 matrix, with reported jitter.

    Args:
      k: (n, n) float64 NumPy array (solved by SciPy) or JAX array (by JAX).
      name: how error and warning messages refer to the matrix.

    Returns:
      `Cholesky(factor, jitter)`; `jitter` is 0 unless a `JitterWarning` was issued.

    Raises:
      ValueError: if no jitter up to `MAX_RELATIVE_JITTER` times the mean
        diagonal entry makes `k` positive definite.
    """
    with float64():
        return _cholesky_with_jitter(k, name)


def _cholesky_with_jitter(k, name):
    n = k.shape[0]
    max_diag, scale = _diagonal_stats(k)
    factor, pivot_sq = _factor(k)
    if _usable(pivot_sq, max_diag, n):
        return Cholesky(factor, 0.0)
    eye = np.eye(n) if isinstance(k, np.ndarray) else jnp.eye(n, dtype=k.dtype)
    for relative in JITTER_LADDER:
        jitter = relative * scale
        factor, pivot_sq = _factor(k + jitter * eye)
        if _usable(pivot_sq, max_diag + jitter, n):
            warnings.warn(
                f"{name} of shape {k.shape} is not numerically positive definite; "
                f"added jitter {jitter:.3g} (= {relative:g} x mean diagonal entry) to its "
                "diagonal. Pass a positive diag_reg to control this yourself.",
                JitterWarning,
                stacklevel=4,
            )
            return Cholesky(factor, jitter)
    smallest = float(np.asarray(_eigh(k)[0])[0])
    raise ValueError(
        f"{name} of shape {k.shape} is not positive semi-definite: its smallest eigenvalue is "
        f"{smallest:.3g} (mean diagonal entry {scale:.3g}), beyond the largest jitter "
        f"({MAX_RELATIVE_JITTER:g} x mean diagonal). Check the kernel, or pass a larger diag_reg."
    )


class Eigh(NamedTuple):
    """Eigendecomposition `k = evecs @ diag(evals) @ evecs.T` with `evals >= 0` (same array kind as k)."""

    evals: object
    evecs: object


def eigh_psd(k, name="k_train_train"):
    """Eigendecomposition of a symmetric PSD float64 matrix with eigenvalues clipped at 0.

    Negative eigenvalues within rounding (`n * eps * max|eval|`) are set to 0
    silently; ones down to `-MAX_RELATIVE_JITTER` times the mean diagonal entry
    are set to 0 with a `JitterWarning`; more negative ones raise ValueError.
    """
    with float64():
        evals, evecs = _eigh(k)
    evals_host = np.asarray(evals)
    if not np.all(np.isfinite(evals_host)):
        raise ValueError(f"eigendecomposition of {name} of shape {k.shape} is not finite.")
    smallest, largest = float(evals_host[0]), float(np.max(np.abs(evals_host)))
    if smallest < 0:
        scale = _diagonal_stats(k)[1]
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
        clipped = np.maximum(evals_host, 0.0)
        evals = clipped if isinstance(k, np.ndarray) else as_float64(clipped, True)
    return Eigh(evals, evecs)
