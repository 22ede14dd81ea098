"""Functions of the regularized train kernel: f(K) r by eigendecomposition or Lanczos.

`TrainKernel` holds `K = k_train_train + diag_reg * I` in float64 and
computes, each at most once and only when first needed, its Cholesky factor
(for t = infinity), its eigendecomposition (for covariances and for many
output columns) and Lanczos bases (for means with few output columns). More
times, more test points or more calls never recompute a factorization.

The spectral filters of training dynamics live here too. With the
neural-tangents loss `||f - y||^2 / (2 * y_train.size)` and time `t` counted in
steps of size `learning_rate` (absolute time `s = learning_rate * t /
y_train.size` in units of the kernel), gradient flow on the train residual
`r = f(X) - y` is `r(t) = exp(-s K) r(0)` and a test point moves by
`-K_td (1 - exp(-s K)) K^{-1} r(0)` (Lee et al. 2019, "Wide neural networks of
any depth evolve as linear models under gradient descent", §2.2); discrete
gradient descent replaces `exp(-s K)` by `(1 - h K)^k` after `k` steps of size
`h = learning_rate / y_train.size`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error
from theory import linalg
from theory.krylov import KrylovBasis

# Chosen by measurement (issue 3, item 3), ReLU-MLP NTK with n = 2000, d = 64,
# diag_reg = 1e-4, 2-core CPU, host (SciPy/NumPy) solves, best of 3-5:
#   quiet machine:   Cholesky 0.064 s, eigendecomposition 0.88 s (JAX x64: 0.12 s, 1.05 s)
#   load avg ~4-5:   Cholesky 0.33 s,  eigendecomposition 5.9-6.5 s,
#                    Lanczos for the mean at t in {1, 10, 100, 1000}: 0.40-0.46 s
#                    (64 steps; converged to 1e-13, agrees with eigh to 8e-14).
# Lanczos needed 20-80 steps for t <= 1000 and 160 for t = infinity on a d = 8
# kernel (condition number 3.6e4), hence Cholesky for t = infinity. At n = 256
# Lanczos already beat eigh (0.012 s vs 0.029 s), at n = 1000 by 10x. Above
# LANCZOS_MAX_COLUMNS columns one eigendecomposition serves all columns for
# less; if Lanczos has not converged after LANCZOS_MAX_FRACTION * n steps the
# eigendecomposition is computed instead. Covariances always use it.
LANCZOS_MIN_SIZE = 256
LANCZOS_MAX_COLUMNS = 16
LANCZOS_MAX_FRACTION = 0.25
LANCZOS_TOL = 1e-10
SOLVERS = ("auto", "eigh", "lanczos")


def _namespace(x):
    """jax.numpy for JAX arrays (and tracers), NumPy otherwise: the filters run in both."""
    return jnp if isinstance(x, jax.Array) else np


def _expand(times, evals):
    return times.reshape(times.shape + (1,) * evals.ndim)


def flow_expm1(evals, s):
    """exp(-s * lambda) - 1, for times s (T,): (T, *evals.shape)."""
    xp = _namespace(evals)
    return xp.expm1(-_expand(s, evals) * evals)


def flow_gain(evals, s):
    """(1 - exp(-s * lambda)) / lambda, with its limit s at lambda = 0."""
    xp = _namespace(evals)
    s = _expand(s, evals)
    positive = evals > 0
    safe = xp.where(positive, evals, 1.0)
    return xp.where(positive, -xp.expm1(-s * evals) / safe, s)


def _gd_power(evals, steps, h):
    """(1 - h lambda)^k as (sign, log|.|), exact for integer k and any sign of the base."""
    xp = _namespace(evals)
    steps = _expand(steps, evals)
    x = h * evals
    below = x < 1
    log_abs = xp.where(below, xp.log1p(-xp.where(below, x, 0.0)), xp.log(xp.abs(xp.where(below, 2.0, x) - 1)))
    odd = xp.mod(steps, 2) == 1
    sign = xp.where((x > 1) & odd, -1.0, 1.0)
    return sign, log_abs, steps, x


def gd_expm1(evals, steps, h):
    """(1 - h lambda)^k - 1 for integer steps k (T,): (T, *evals.shape)."""
    xp = _namespace(evals)
    sign, log_abs, steps, x = _gd_power(evals, steps, h)
    stable = xp.expm1(steps * log_abs)
    unstable = sign * xp.exp(steps * log_abs) - 1
    return xp.where(steps == 0, 0.0, xp.where(x < 1, stable, unstable))


def gd_gain(evals, steps, h):
    """(1 - (1 - h lambda)^k) / lambda, with its limit k h at lambda = 0."""
    xp = _namespace(evals)
    positive = evals > 0
    safe = xp.where(positive, evals, 1.0)
    return xp.where(positive, -gd_expm1(evals, steps, h) / safe, _expand(steps, evals) * h)


_JITTED = {}


def run_where(fn, *args):
    """fn(*args) with NumPy when the first argument is a NumPy array, else jitted on its
    JAX device in float64; the result as a float64 NumPy array. If any argument is traced,
    fn runs as jax.numpy in `linalg.traced_numerics()`'s dtype and the result is traced."""
    if linalg.is_traced(*(a for a in args if not callable(a))):
        num = linalg.traced_numerics()
        return fn(*(a if callable(a) or isinstance(a, tuple) else num.asarray(a) for a in args))
    if isinstance(args[0], np.ndarray):
        with np.errstate(all="ignore"):  # the filters' discarded where-branches
            return np.asarray(fn(*args))
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn, static_argnums=tuple(i for i, a in enumerate(args) if callable(a)))
    with linalg.float64(), jax.ensure_compile_time_eval():  # concrete even when called inside a trace
        return np.asarray(_JITTED[fn](*args))


def _apply_eigh(evecs, evals, r, f, f_args):
    """evecs @ diag(f(evals)) @ evecs.T @ r for each of T filters: (T, n, c)."""
    return evecs @ (f(evals, *f_args)[:, :, None] * (evecs.T @ r)[None])


class TrainKernel:
    """The regularized train kernel in float64, with cached factorizations.

    Args:
      k: (P, P) train-train kernel, already flattened (`output_axes.kernel_2d`):
        a JAX array on an accelerator is factorized there, anything else on
        the host by SciPy (see `theory.linalg`).
      diag_reg, diag_reg_absolute_scale: neural-tangents' regularization.
      name: how messages refer to the matrix.

    Methods take and return NumPy float64 arrays. If `k` or `diag_reg` is a JAX
    tracer, everything is jax.numpy in `linalg.traced_numerics()`'s dtype
    (plain Cholesky and eigh, no jitter ladder or PSD check); a concrete
    kernel is factorized in float64 even inside a trace, and only what
    involves traced arguments (`solve(b)`, `apply(..., r)`) is traced.
    """

    def __init__(self, k, diag_reg, diag_reg_absolute_scale, name="k_train_train"):
        self.traced = linalg.is_traced(k, diag_reg)
        self.device = not self.traced and linalg.on_accelerator(k)
        if self.traced:
            self.matrix = _regularized(linalg.traced_numerics().asarray(k), diag_reg, diag_reg_absolute_scale, jnp)
        else:
            k = linalg.as_float64(k, self.device)
            with linalg.float64(), jax.ensure_compile_time_eval():
                self.matrix = _regularized(k, diag_reg, diag_reg_absolute_scale, jnp if self.device else np)
        self.size = self.matrix.shape[0]
        self.name = name
        self._cholesky = None
        self._eigh = None
        self._krylov = []  # [(r, KrylovBasis)], most recent last

    def cholesky(self):
        if self._cholesky is None:
            if self.traced:
                self._cholesky = linalg.Cholesky(jnp.linalg.cholesky(self.matrix), 0.0)
            else:
                with jax.ensure_compile_time_eval():
                    self._cholesky = linalg.cholesky(self.matrix, self.name)
        return self._cholesky

    def eigh(self):
        if self._eigh is None:
            if self.traced:
                evals, evecs = jnp.linalg.eigh(self.matrix)
                self._eigh = linalg.Eigh(jnp.maximum(evals, 0.0), evecs)
            else:
                with jax.ensure_compile_time_eval():
                    self._eigh = linalg.eigh_psd(self.matrix, self.name)
        return self._eigh

    def solve(self, b):
        """K^{-1} b (with the reported jitter, if one was needed)."""
        return linalg.cho_solve(self.cholesky().factor, b)

    def largest_eigenvalue(self):
        """λ_max: a Python float, or a traced scalar for a traced kernel."""
        top = self.eigh().evals[-1]
        return top if self.traced else float(np.asarray(top))

    def _krylov_basis(self, r):
        for cached_r, basis in self._krylov:
            if np.array_equal(cached_r, r):
                return basis
        basis = KrylovBasis(self.matrix, r)
        self._krylov = self._krylov[-3:] + [(np.array(r), basis)]
        return basis

    def apply(self, f, f_args, r, solver="auto"):
        """f(K) r for a spectral filter f(evals, *f_args) -> (T, *evals.shape).

        Args:
          f: a module-level (hashable) function, e.g. `flow_gain`.
          f_args: tuple of arrays passed to f (the times).
          r: (P, C) float64.
          solver: "eigh", "lanczos", or "auto" (Lanczos for large P and few
            columns unless the eigendecomposition already exists; falls back to
            it when Lanczos does not converge quickly).

        Returns:
          (T, P, C) float64 NumPy array.
        """
        if linalg.is_traced(r, f_args) or self.traced:
            # Lanczos is host code; the public functions refuse solver="lanczos" here.
            evals, evecs = self.eigh()
            return run_where(_apply_eigh, evecs, evals, r, f, f_args)
        r = np.asarray(r, np.float64)
        use_lanczos = solver == "lanczos" or (
            solver == "auto"
            and self._eigh is None
            and self.size >= LANCZOS_MIN_SIZE
            and r.shape[1] <= LANCZOS_MAX_COLUMNS
        )
        if use_lanczos:
            max_size = self.size if solver == "lanczos" else int(LANCZOS_MAX_FRACTION * self.size)
            value = self._krylov_basis(r).apply(f, f_args, LANCZOS_TOL, max_size)
            if value is not None:
                return value
        evals, evecs = self.eigh()
        return run_where(_apply_eigh, evecs, evals, r, f, f_args)


def _regularized(k, diag_reg, diag_reg_absolute_scale, xp):
    """Symmetrized K + diag_reg * I, with diag_reg relative to trace(K) / N unless absolute."""
    k = 0.5 * (k + k.T)
    shift = diag_reg if diag_reg_absolute_scale else diag_reg * xp.trace(k) / k.shape[0]
    return k + shift * xp.eye(k.shape[0], dtype=k.dtype)


def check_solver(where, solver):
    """One of `SOLVERS`, else a ValueError naming `solver`."""
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise argument_error(where, "solver", f"one of {SOLVERS}", solver)
    return solver


def check_traced_solver(where, solver, traced):
    """Refuses solver="lanczos" when the computation is traced (Lanczos bases are built on the host)."""
    if traced and solver == "lanczos":
        raise argument_error(where, "solver", "'auto' or 'eigh' when inputs are traced (inside jit or grad: "
                             "Lanczos runs only on concrete arrays)", solver)
