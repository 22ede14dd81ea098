"""Lanczos evaluation of `f(K) r` for a symmetric PSD matrix K, grown until converged.

For a function f of the spectrum and a start vector r, the Lanczos process
builds an orthonormal basis Q_m of the Krylov space span{r, K r, ..., K^{m-1} r}
with `Q_m^T K Q_m = T_m` tridiagonal, and

    f(K) r  ≈  ||r|| Q_m f(T_m) e_1                        (Saad 1992)

which is exact once the space is invariant, and in practice converges long
before m = n for smooth f such as exp(-tK) or (1 - exp(-tK)) K^{-1}: each step
costs one product with K, O(n^2), against O(n^3) for an eigendecomposition.
The Krylov space depends on r only, not on f, so one basis serves every time t.

Y. Saad, "Analysis of some Krylov subspace approximations to the matrix
exponential operator", SIAM J. Numer. Anal. 29 (1992).

Steps run in NumPy for a kernel on the host and jitted on the device for a
kernel on an accelerator (see `theory.linalg`). The basis is kept with full
reorthogonalization (twice, "twice is enough":
Giraud et al. 2005), one Lanczos process per column of r run in lockstep so the
products with K are matrix-matrix products. Convergence is judged a posteriori:
the approximation is recomputed every `chunk` steps and accepted when it moved
by less than `tol` (relative); the basis is kept, so a later request (a longer
time) continues where the last one stopped.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from theory import linalg


@partial(jax.jit, static_argnames=("n_steps",))
def _lanczos_steps(k, basis, alpha, beta, q, start, breakdown_tol, n_steps):
    """Run `n_steps` Lanczos steps from step `start` on all columns at once.

    Shapes: k (n, n); basis (m_cap, n, c); alpha, beta (m_cap, c); q (n, c).
    Unused rows of `basis` are zero, so reorthogonalizing against all of it
    needs no mask.
    """

    def step(j, carry):
        basis, alpha, beta, q = carry
        basis = basis.at[j].set(q)
        w = k @ q
        a = jnp.sum(q * w, axis=0)
        for _ in range(2):
            w = w - jnp.einsum("mnc,mc->nc", basis, jnp.einsum("mnc,nc->mc", basis, w))
        b = jnp.linalg.norm(w, axis=0)
        # An invariant subspace was found: the rest of this column's basis stays
        # zero, which decouples it in T and keeps f(T) e_1 exact.
        invariant = b <= breakdown_tol
        q_next = jnp.where(invariant, 0.0, w / jnp.where(invariant, 1.0, b))
        return basis, alpha.at[j].set(a), beta.at[j].set(jnp.where(invariant, 0.0, b)), q_next

    return jax.lax.fori_loop(start, start + n_steps, step, (basis, alpha, beta, q))


@partial(jax.jit, static_argnames=("pad",))
def _extend(basis, alpha, beta, pad):
    """Room for `pad` more steps (zeros, as `_lanczos_steps` expects)."""
    return (
        jnp.pad(basis, ((0, pad), (0, 0), (0, 0))),
        jnp.pad(alpha, ((0, pad), (0, 0))),
        jnp.pad(beta, ((0, pad), (0, 0))),
    )


def _lanczos_steps_host(k, basis, alpha, beta, q, start, breakdown_tol, n_steps):
    """`_lanczos_steps` in NumPy (in place): BLAS matrix-vector products, nothing to compile."""
    for j in range(start, start + n_steps):
        basis[j] = q
        w = k @ q
        alpha[j] = np.sum(q * w, axis=0)
        for col in range(q.shape[1]):
            used = basis[: j + 1, :, col]
            for _ in range(2):
                w[:, col] -= used.T @ (used @ w[:, col])
        b = np.linalg.norm(w, axis=0)
        invariant = b <= breakdown_tol
        q = np.where(invariant, 0.0, w / np.where(invariant, 1.0, b))
        beta[j] = np.where(invariant, 0.0, b)
    return basis, alpha, beta, q


class KrylovBasis:
    """Lanczos bases of K for each column of r, grown on demand.

    Args:
      k: (n, n) symmetric PSD float64 matrix: a NumPy array (steps run in
        NumPy) or a JAX array on an accelerator (steps jitted there).
      r: (n, c) float64 start vectors.
      chunk: steps between convergence checks.
      k_norm: an upper bound of ||K||_F for the breakdown test (default: computed
        from k); needed when k is an operator with only `k @ q` (`theory.large`),
        whose steps run on the host.
    """

    def __init__(self, k, r, chunk=16, k_norm=None):
        self.k = k
        self.device = isinstance(k, jax.Array)
        self.n, self.c = r.shape
        self.chunk = chunk
        r = np.asarray(r, np.float64)
        self.r_norm = np.linalg.norm(r, axis=0)
        self.q = np.where(self.r_norm > 0, r / np.where(self.r_norm > 0, self.r_norm, 1.0), 0.0)
        if k_norm is None:
            with linalg.float64():
                k_norm = float(np.linalg.norm(k)) if not self.device else float(jnp.linalg.norm(k))
        self.breakdown_tol = k_norm * self.n * np.finfo(np.float64).eps
        self.size = 0
        self.basis = np.zeros((0, self.n, self.c))
        self.alpha = np.zeros((0, self.c))
        self.beta = np.zeros((0, self.c))
        self.last_change = np.inf  # of the last accepted value, relative to its size (0 when exhausted)

    @property
    def exhausted(self):
        """All columns reached an invariant subspace (or the full dimension)."""
        if self.size >= self.n:
            return True
        return self.size > 0 and not np.any(np.asarray(self.q))

    def _grow(self, n_steps):
        n_steps = min(n_steps, self.n - self.size)
        need = self.size + n_steps
        if need > self.basis.shape[0]:
            # Few, geometric allocations: on a device each new length compiles the steps once.
            cap = min(self.n, max(4 * self.basis.shape[0], need, 4 * self.chunk))
            pad = cap - self.basis.shape[0]
            if self.device:
                with linalg.float64():
                    self.basis, self.alpha, self.beta = _extend(self.basis, self.alpha, self.beta, pad)
            else:
                self.basis = np.concatenate([self.basis, np.zeros((pad, self.n, self.c))])
                self.alpha = np.concatenate([self.alpha, np.zeros((pad, self.c))])
                self.beta = np.concatenate([self.beta, np.zeros((pad, self.c))])
        if self.device:
            with linalg.float64():
                self.basis, self.alpha, self.beta, self.q = _lanczos_steps(
                    self.k, self.basis, self.alpha, self.beta, self.q, self.size, self.breakdown_tol, n_steps
                )
        else:
            self.basis, self.alpha, self.beta, self.q = _lanczos_steps_host(
                self.k, self.basis, self.alpha, self.beta, self.q, self.size, self.breakdown_tol, n_steps
            )
        self.size = need

    def _value(self, size, f, f_args):
        """||r|| Q_m f(T_m) e_1 per column from the first `size` steps, on the host.

        T_m is small and tridiagonal: SciPy's `eigh_tridiagonal` solves it
        without compiling anything, and f runs in NumPy.
        """
        alpha = np.asarray(self.alpha)[:size]
        beta = np.asarray(self.beta)[: size - 1]
        r_norm = np.asarray(self.r_norm)
        columns = []
        with np.errstate(all="ignore"):  # f's unused branches (e.g. 0/0) are discarded by where
            for col in range(self.c):
                theta, w = scipy.linalg.eigh_tridiagonal(alpha[:, col], beta[:, col])
                f_theta = np.asarray(f(np.maximum(theta, 0.0), *f_args))  # (T, size)
                columns.append(np.einsum("ij,tj,j->ti", w, f_theta, w[0]) * r_norm[col])
        coeffs = np.stack(columns, axis=1)  # (T, c, size)
        return np.einsum("mnc,tcm->tnc", np.asarray(self.basis)[:size], coeffs, optimize=True)

    def apply(self, f, f_args, tol, max_size):
        """Approximate `f(K) r` to relative accuracy ~`tol`, or return None.

        Args:
          f: a hashable function `f(evals, *f_args) -> (T, *evals.shape)`,
            evaluated on Ritz values (non-negative), vectorised over T.
          f_args: tuple of arrays (e.g. the times), passed to f.
          tol: accept when the approximations from `size` and `size - chunk`
            steps differ by less than `tol * max|value|`.
          max_size: give up (return None) rather than grow beyond this.

        Returns:
          (T, n, c) NumPy array, or None if not converged within `max_size` steps.
        """
        if self.size == 0:
            self._grow(self.chunk)
        previous = None
        if self.size > self.chunk:
            previous = self._value(self.size - self.chunk, f, f_args)
        while True:
            value = self._value(self.size, f, f_args)
            if self.exhausted:
                self.last_change = 0.0
                return value
            if previous is not None:
                change = np.max(np.abs(value - previous))
                if change <= tol * np.max(np.abs(value)):
                    self.last_change = float(change / max(np.max(np.abs(value)), np.finfo(np.float64).tiny))
                    return value
            if self.size + self.chunk > max_size:
                return None
            previous = value
            self._grow(self.chunk)
