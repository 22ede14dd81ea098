"""Lanczos evaluation of `f(K) r` for a symmetric PSD matrix K, grown until converged.

For a function f of the spectrum and a start vector r, the Lanczos process
builds an orthonormal basis Q_m of the Krylov space span{r, K r, ..., K^{m-1} r}
with `Q_m^T K Q_m = T_m` tridiagonal, and

    f(K) r  ≈  ||r|| Q_m f(T_m) e_1                        (Saad 1992, eq. 2.1)

which is exact once the space is invariant, and in practice converges long
before m = n for smooth f such as exp(-tK) or (1 - exp(-tK)) K^{-1}: each step
costs one product with K, O(n^2), against O(n^3) for an eigendecomposition.
The Krylov space depends on r only, not on f, so one basis serves every time t.

Y. Saad, "Analysis of some Krylov subspace approximations to the matrix
exponential operator", SIAM J. Numer. Anal. 29 (1992).

The basis is kept with full reorthogonalization (twice, "twice is enough":
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


@partial(jax.jit, static_argnames=("f",))
def _evaluate(basis, alpha, beta, r_norm, size, f, f_args):
    """||r|| Q_m f(T_m) e_1 for every column, from the first `size` steps.

    Arrays keep their allocated length (one compilation per allocation); the
    steps beyond `size` are masked out, which leaves T block-diagonal with the
    masked block decoupled from e_1. f(theta, *f_args) -> (T, c, m).
    """
    m = alpha.shape[0]
    used = jnp.arange(m) < size
    a = jnp.where(used[:, None], alpha, 0.0).T
    b = jnp.where((jnp.arange(m) < size - 1)[:, None], beta, 0.0)[:-1].T
    t_mat = jax.vmap(lambda d, e: jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1))(a, b)
    theta, w = jnp.linalg.eigh(t_mat)  # (c, m), (c, m, m)
    f_theta = f(jnp.maximum(theta, 0.0), *f_args)  # (T, c, m)
    coeffs = jnp.einsum("cij,tcj,cj->tci", w, f_theta, w[:, 0, :]) * r_norm[None, :, None]
    coeffs = jnp.where(used[None, None, :], coeffs, 0.0)
    return jnp.einsum("mnc,tcm->tnc", basis, coeffs)


@jax.jit
def _start(k, r):
    """First Lanczos vectors, the norms of r, and the breakdown threshold."""
    r_norm = jnp.linalg.norm(r, axis=0)
    positive = r_norm > 0
    q = jnp.where(positive, r / jnp.where(positive, r_norm, 1.0), 0.0)
    breakdown_tol = jnp.linalg.norm(k) * k.shape[0] * jnp.finfo(k.dtype).eps
    return q, r_norm, breakdown_tol


@partial(jax.jit, static_argnames=("pad",))
def _extend(basis, alpha, beta, pad):
    """Room for `pad` more steps (zeros, as `_lanczos_steps` expects)."""
    return (
        jnp.pad(basis, ((0, pad), (0, 0), (0, 0))),
        jnp.pad(alpha, ((0, pad), (0, 0))),
        jnp.pad(beta, ((0, pad), (0, 0))),
    )


class KrylovBasis:
    """Lanczos bases of K for each column of r, grown on demand.

    Args:
      k: (n, n) symmetric PSD float64 JAX array (use inside `linalg.float64()`).
      r: (n, c) float64 start vectors.
      chunk: steps between convergence checks.
    """

    def __init__(self, k, r, chunk=16):
        self.k = k
        self.n, self.c = r.shape
        self.chunk = chunk
        self.q, self.r_norm, self.breakdown_tol = _start(k, jnp.asarray(r))
        self.size = 0
        self.basis = np.zeros((0, self.n, self.c))
        self.alpha = np.zeros((0, self.c))
        self.beta = np.zeros((0, self.c))

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
            # Few, geometric allocations: each new length compiles the steps once.
            cap = min(self.n, max(4 * self.basis.shape[0], need, 4 * self.chunk))
            self.basis, self.alpha, self.beta = _extend(self.basis, self.alpha, self.beta, cap - self.basis.shape[0])
        self.basis, self.alpha, self.beta, self.q = _lanczos_steps(
            self.k, self.basis, self.alpha, self.beta, self.q, self.size, self.breakdown_tol, n_steps
        )
        self.size = need

    def _value(self, size, f, f_args):
        return np.asarray(_evaluate(self.basis, self.alpha, self.beta, self.r_norm, size, f, f_args))

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
                return value
            if previous is not None:
                change = np.max(np.abs(value - previous))
                if change <= tol * np.max(np.abs(value)):
                    return value
            if self.size + self.chunk > max_size:
                return None
            previous = value
            self._grow(self.chunk)
