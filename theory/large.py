"""Kernel regression past one machine's memory: matrix-free solvers that never hold the N x N kernel.

`kernel_regression(kernel_fn, x_train, y_train, x_test, ...)` predicts what
`theory.predict` predicts (the GP posterior mean / kernel ridge regression at
`t=None`, gradient flow at finite `t`; same `diag_reg`, `learning_rate` and time
conventions, README "Conventions") by one of three methods:

* ``"cg"``: the exact solution of `(K + shift I) alpha = y`, `f(x) = K_xX alpha`,
  by preconditioned conjugate gradients (Hestenes & Stiefel 1952). Each
  iteration needs one product `K @ p`, computed row block by row block from
  tiles of `kernel_fn` (only tiles on or above the diagonal, each used for its
  block and its mirror image), or streamed from a verified `kernels.batch` tile
  store at `path`; memory is `O(N x block rows)`, set by `memory_bytes`. The
  preconditioner is the Nyström approximation `K ~ F F^T` of rank
  `n_centers` built by block randomly pivoted Cholesky (Chen, Epperly, Tropp &
  Webber 2023, "Randomly pivoted Cholesky: practical approximation of a kernel
  matrix with few entry evaluations", arXiv:2207.06503, Alg. 2 and its block
  form), applied as the Nyström preconditioner of Frangella, Tropp & Udell
  2023 ("Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44,
  §5): with `F = U diag(sqrt(lam)) V^T`,
  `P^{-1} = (lam_r + shift) U (diag(lam) + shift)^{-1} U^T + (I - U U^T)`;
  this pairing for kernel ridge regression is Díaz, Epperly, Frangella, Tropp &
  Webber 2023 ("Robust, randomized preconditioning for kernel ridge
  regression", arXiv:2304.12465). Finite `t`: `f_t(x) = K_xX g(K~) y` with
  `g(l) = (1 - exp(-s l)) / l`, by Lanczos on the same matrix-free product
  (`theory.krylov`, Saad 1992).
* ``"nystrom"``: the Nyström-restricted solution on `M = n_centers` centres
  (the first `M` of a seeded permutation of the training points, so centres
  are nested in M): `f(x) = K_xM beta` with
  `(K_nM^T K_nM + shift K_MM) beta = K_nM^T y` (the "subset of regressors",
  Smola & Schölkopf 2000), solved as in FALKON (Rudi, Carratino & Rosasco 2017,
  "FALKON: an optimal large scale kernel method", NeurIPS, §3 and Alg. 1): PCG
  preconditioned by `(N/M) K_MM^2 + shift K_MM = T^T A^T A T`, `T = chol(K_MM)`,
  `A = chol((N/M) T T^T + shift I)`. The `N x M` block is computed once (into a
  tile store under `path` when given). At `M = N` it is the exact solution.
* ``"random_features"``: kernel regression with `K ~ Phi Phi^T` (Rahimi & Recht
  2007), solved exactly in feature space: `Phi` is either `features=`, a
  `kernels.features.FeatureMap` (the sketched arc-cosine NNGP/NTK features of a
  ReLU MLP after Zandieh et al. 2021, or a finite network's outputs or Jacobians),
  or the outputs of `n_samples` networks drawn by `network=(init_fn, apply_fn)`,
  scaled by `1/sqrt(n_samples * outputs)` (Lee et al. 2018, "Deep neural networks
  as Gaussian processes", §2.2: the NNGP is the covariance of a random network's
  outputs). Its error in `K` falls like `features^{-1/2}`. The `F x F` Gram is
  accumulated over row blocks (the N x F matrix is never held) and solved by
  one Cholesky (`t=None`, positive ridge) or eigendecomposition.

With ``method="cg"``, ``preconditioner="random_features"`` replaces the Nyström
preconditioner by `P = Phi Phi^T + shift I` from `features` (Avron, Clarkson &
Woodruff 2017, "Faster kernel ridge regression using sketching and
preconditioning", SIAM J. Matrix Anal. Appl. 38), applied by the Woodbury
identity. It helps only when the features' error is small against the ridge:
measured on a 240-point test problem, 1,025 features cut 157 iterations to 36,
while 65 or 257 features made it worse than no preconditioner (701, 172).

`residual` is that of the linear system the method solved, recomputed from the
returned coefficients (not the recursion's estimate): `||K~ alpha - y|| / ||y||`
for ``"cg"`` (Frobenius over output columns; `K~ = K + shift I`),
`||H beta - K_nM^T y|| / ||K_nM^T y||` for ``"nystrom"``, and
`||(Phi^T Phi + shift) w - Phi^T y|| / ||Phi^T y||` for ``"random_features"``.
At finite `t` it is the change of the Lanczos value over its last `chunk`
steps, relative to its size.

Accumulation is in float64 (kernel tiles in the input dtype, cast to float64
before any product). CG saves its iterate atomically every
`checkpoint_every` iterations (to `path/cg-<get>.npz`, or `checkpoint=`) and a
call with the same problem resumes from it; a checkpoint of another problem
is refused.
"""
import hashlib
import json
import os
import warnings
import weakref
from typing import NamedTuple

import jax
import numpy as np
import scipy.linalg

import kernels
from kernels import tiling
from kernels.fingerprint import FingerprintError, array_digest, fingerprint as network_fingerprint
from kernels.features import FeatureMap, network_features
from kernels.files import atomic_write
from theory import arguments, krylov, spectral
from theory.regression import NonFiniteResult

__all__ = ["Regression", "kernel_regression", "ConvergenceWarning", "METHODS", "PRECONDITIONERS"]

METHODS = ("cg", "nystrom", "random_features")
DEFAULT_MEMORY_BYTES = 2**30
DEFAULT_PRECONDITIONER_RANK = 500
RPCHOLESKY_BLOCK = 100
LANCZOS_CHUNK = 16
MAX_TILE_SIDE = 2048  # bounds a tile's intermediates on the device


class Regression(NamedTuple):
    """What `kernel_regression` returns.

    Attributes:
      predictions: `(M_test, ...)` (trailing axes as `y_train`; leading `t.shape`
        for an array `t`), NumPy, in the kernel's dtype.
      residual: relative residual of the solved system (module docstring), float.
      iterations: CG / PCG iterations (in total, over resumed runs) or Lanczos steps; 0 for random features.
    """

    predictions: np.ndarray
    residual: float
    iterations: int


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped above its tolerance (iteration limit or stagnation at rounding level)."""


# ----------------------------------------------------------------------------- the kernel, tile by tile

class KernelRows:
    """The unregularized float64 train kernel, by row blocks, without the N x N matrix.

    On the fly (`store=None`), blocks are assembled from `side x side` tiles of
    `kernel_fn`, jit-compiled once (every tile is padded to the full side, as in
    `kernels.tiling`); with `store`, a read-only `(N, N)` memmap of a verified
    `kernels.batch` tile store, read row block by row block.
    """

    def __init__(self, kernel_fn, x, get, rows, store=None):
        self.x, self.get, self.rows, self.store = x, get, rows, store
        self.n = x.shape[0]
        self.side = min(rows, MAX_TILE_SIDE)
        self._tile = None if kernel_fn is None else _tile_function(kernel_fn, get)
        self.dtype = None

    def cross(self, x1, x2):
        """K(x1, x2) as float64, `(len(x1), len(x2))`, tile by tile."""
        n1, n2, side = x1.shape[0], x2.shape[0], self.side
        x1p = tiling.pad_rows(x1, _round_up(n1, side))
        x2p = tiling.pad_rows(x2, _round_up(n2, side))
        tiles = [[self._tile(x1p[i:i + side], x2p[j:j + side]) for j in range(0, n2, side)]
                 for i in range(0, n1, side)]  # dispatched asynchronously, gathered below
        first = tiles[0][0]
        if np.ndim(first) != 2:
            raise ValueError(f"kernel_regression: kernel_fn(x1, x2, get={self.get!r}) has shape {np.shape(first)} "
                             f"for {side} x {side} inputs; expected ({side}, {side}) (outputs with independent axes: "
                             "pool or flatten to a flat readout)")
        self.dtype = np.dtype(first.dtype) if self.dtype is None else self.dtype
        k = np.block([[np.asarray(tile, np.float64) for tile in row] for row in tiles])[:n1, :n2]
        if not np.all(np.isfinite(k)):
            raise FloatingPointError(f"kernel_regression: kernel_fn(x1, x2, get={self.get!r}) is not finite")
        return k

    def blocks(self):
        return range(0, self.n, self.rows)

    def diagonal(self):
        if self.store is not None:
            return np.asarray(self.store.diagonal(), np.float64)
        out = np.empty(self.n)
        for r0 in self.blocks():
            r1 = min(r0 + self.rows, self.n)
            out[r0:r1] = np.diagonal(self.cross(self.x[r0:r1], self.x[r0:r1]))
        return out

    def columns(self, index):
        """K[:, index], (N, len(index)): by symmetry the rows `index`, transposed."""
        if self.store is not None:
            return np.asarray(self.store[np.sort(index)], np.float64)[np.argsort(np.argsort(index))].T
        out = np.empty((self.n, len(index)))
        centres = self.x[index]
        for r0 in self.blocks():
            r1 = min(r0 + self.rows, self.n)
            out[r0:r1] = self.cross(self.x[r0:r1], centres)
        return out

    def matmat(self, v):
        """K @ v for v (N, C), float64: each tile on or above the diagonal serves its block and its mirror."""
        out = np.zeros_like(v)
        for r0 in self.blocks():
            r1 = min(r0 + self.rows, self.n)
            if self.store is not None:
                out[r0:r1] = np.asarray(self.store[r0:r1], np.float64) @ v
                continue
            block = self.cross(self.x[r0:r1], self.x[r0:])  # (rows, N - r0): its own columns and those right of it
            out[r0:r1] += block @ v[r0:]
            out[r1:] += block[:, r1 - r0:].T @ v[r0:r1]
        return out


_TILE_FNS = weakref.WeakKeyDictionary()  # kernel_fn -> {get: jitted tile function}


def _tile_function(kernel_fn, get):
    """`jax.jit(lambda a, b: kernel_fn(a, b, get))`, compiled once per kernel_fn, get and tile shape."""
    try:
        cache = _TILE_FNS.setdefault(kernel_fn, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if get not in cache:
        cache[get] = jax.jit(lambda a, b: kernel_fn(a, b, get))
    return cache[get]


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _block_rows(where, memory_bytes, n):
    """Rows per block: a float64 block of rows x N (and its kernel-dtype twin and padding) within `memory_bytes`."""
    rows = int(memory_bytes // (3 * 8 * n))
    if rows < 1:
        raise arguments.argument_error(where, "memory_bytes", f"at least {3 * 8 * n} (three float64 rows of the "
                                       f"{n} x {n} kernel)", memory_bytes)
    return min(rows, n)


def _predict(kernel, x_test, coefficients, columns=None):
    """K(x_test, x_train[columns]) @ coefficients, test rows block by block."""
    x2 = kernel.x if columns is None else kernel.x[columns]
    rows = max(1, min(kernel.rows, x_test.shape[0]))
    out = np.empty((x_test.shape[0], coefficients.shape[1]))
    for r0 in range(0, x_test.shape[0], rows):
        r1 = min(r0 + rows, x_test.shape[0])
        out[r0:r1] = kernel.cross(x_test[r0:r1], x2) @ coefficients
    return out


# ----------------------------------------------------------------------------- preconditioner of "cg"

def randomly_pivoted_cholesky(kernel, rank, rng, block=RPCHOLESKY_BLOCK):
    """`F (N, r)` with `K ~ F F^T` (a Nyström approximation, `K - F F^T` PSD), `r <= rank`.

    Block randomly pivoted Cholesky (Chen et al. 2023, module docstring): pivots
    are drawn without replacement with probability proportional to the diagonal
    of the residual `K - F F^T`; each block of pivots costs one `N x block` slab
    of kernel columns. Rank-deficient pivot blocks are truncated by an
    eigendecomposition, so duplicated inputs do not break it.
    """
    residual = kernel.diagonal()
    scale = float(np.max(residual)) if residual.size else 0.0
    factors = []
    chosen = 0
    while chosen < rank:
        live = np.flatnonzero(residual > 1e-13 * scale)
        size = min(block, rank - chosen, live.size)
        if size == 0:
            break
        pivots = rng.choice(kernel.n, size, replace=False, p=residual / residual.sum()) if live.size > size \
            else live[:size]
        slab = kernel.columns(pivots)
        if factors:
            f = np.concatenate(factors, axis=1)
            slab -= f @ f[pivots].T
        pivot_block = 0.5 * (slab[pivots] + slab[pivots].T)
        evals, evecs = scipy.linalg.eigh(pivot_block)
        keep = evals > 1e-13 * max(scale, float(evals[-1]))
        new = slab @ (evecs[:, keep] / np.sqrt(evals[keep]))
        factors.append(new)
        chosen += int(keep.sum())
        residual = np.maximum(residual - np.sum(new**2, axis=1), 0.0)
        residual[pivots] = 0.0
    return np.concatenate(factors, axis=1) if factors else np.zeros((kernel.n, 0))


def nystrom_preconditioner(factor, shift):
    """`v -> P^{-1} v` for `P` built from `K ~ F F^T` and the ridge `shift` (Frangella et al. 2023, §5)."""
    if factor.shape[1] == 0:
        return lambda v: v
    u, s, _ = scipy.linalg.svd(factor, full_matrices=False)
    lam = s**2
    keep = lam > 1e-13 * lam[0]
    u, lam = u[:, keep], lam[keep]
    gain = (lam[-1] + shift) / (lam + shift) - 1.0  # P^{-1} = I + U diag(gain) U^T
    return lambda v: v + u @ (gain[:, None] * (u.T @ v))


# ----------------------------------------------------------------------------- conjugate gradients

def conjugate_gradients(apply_a, precondition, b, x, tol, max_iterations, iterations=0, on_iteration=None,
                        name="the kernel"):
    """Preconditioned CG on `A x = b` for each column of `b` in lockstep, restarted from the true residual.

    Stops when every column's true residual `||b - A x||` is at most `tol ||b||`
    (or at `max_iterations`, or when a restart no longer halves the true
    residual: rounding level), recomputing the residual from `x` after the
    recursion claims convergence, so the residual returned is never the
    recursion's drifted estimate.

    Returns:
      `(x, residual, iterations)` with `residual = ||b - A x||_F / ||b||_F`.
    """
    b_norm = np.linalg.norm(b, axis=0)
    target = tol * b_norm
    previous = np.inf
    while True:
        r = b - apply_a(x) if np.any(x) else b.copy()
        r_norm = np.linalg.norm(r, axis=0)
        total = float(np.linalg.norm(r_norm))
        if np.all(r_norm <= target) or iterations >= max_iterations or total > 0.5 * previous:
            break
        previous = total
        z = precondition(r)
        p = z.copy()
        rz = np.sum(r * z, axis=0)
        while iterations < max_iterations:
            active = r_norm > target
            if not active.any():
                break
            q = apply_a(p)
            pq = np.sum(p * q, axis=0)
            if np.any(active & (pq <= 0)):
                raise ValueError(f"kernel_regression: {name} plus the ridge is not positive definite (p^T A p = "
                                 f"{float(np.min(pq)):.3g} in CG); pass a positive diag_reg")
            step = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
            x = x + step * p
            r = r - step * q
            r_norm = np.linalg.norm(r, axis=0)
            z = precondition(r)
            rz_new = np.sum(r * z, axis=0)
            beta = np.where(active & (rz != 0), rz_new / np.where(rz != 0, rz, 1.0), 0.0)
            p = z + beta * p
            rz = rz_new
            iterations += 1
            if on_iteration is not None:
                on_iteration(x, iterations, float(np.max(r_norm / np.where(b_norm > 0, b_norm, 1.0))))
    b_total = float(np.linalg.norm(b))
    return x, (total / b_total if b_total > 0 else total), iterations


# ----------------------------------------------------------------------------- checkpoints

class Checkpoint:
    """The CG iterate of one problem, saved atomically (`kernels.files.atomic_write`) and refused for another."""

    def __init__(self, file, key, every):
        self.file, self.key, self.every = file, key, every

    def load(self, n, c):
        """(alpha, iterations) saved for this problem, or (zeros, 0) if there is no file."""
        if self.file is None or not os.path.exists(self.file):
            return np.zeros((n, c)), 0
        with np.load(self.file) as saved:
            key, alpha, iterations = str(saved["key"]), saved["alpha"], int(saved["iterations"])
        if key != self.key or alpha.shape != (n, c):
            raise ValueError(f"kernel_regression: checkpoint {self.file!r} holds the iterate of another problem "
                             "(kernel, inputs, targets, get, diag_reg or preconditioner differ); delete it or pass "
                             "another path/checkpoint")
        return alpha, iterations

    def save(self, alpha, iterations, force=False):
        if self.file is None or not (force or iterations % self.every == 0):
            return
        atomic_write(self.file, lambda f: np.savez(f, key=np.array(self.key), alpha=alpha,
                                                   iterations=np.array(iterations)))


def _problem_key(kernel_identity, x_train, y, get, diag_reg, absolute, rank, seed):
    text = json.dumps(dict(kernel=kernel_identity, inputs=array_digest(x_train), targets=array_digest(y), get=get,
                           diag_reg=diag_reg, absolute=absolute, rank=rank, seed=seed), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _kernel_identity(where, kernel_fn, given):
    if given is not None:
        return "given:" + given
    try:
        return network_fingerprint(kernel_fn)
    except FingerprintError as error:
        raise TypeError(f"{where}: a checkpoint needs a fingerprint of kernel_fn, and {error}; pass fingerprint='...', "
                        "a string naming this network that you vouch for") from None


# ----------------------------------------------------------------------------- the public function

def kernel_regression(kernel_fn, x_train, y_train, x_test, get="nngp", diag_reg=0.0, diag_reg_absolute_scale=False,
                      t=None, learning_rate=1.0, method="cg", n_centers=None, tol=1e-8, path=None, *,
                      checkpoint=None, checkpoint_every=10, max_iterations=1000, memory_bytes=DEFAULT_MEMORY_BYTES,
                      seed=0, progress=True, fingerprint=None, network=None, n_samples=1, features=None,
                      preconditioner=None):
    """Kernel regression / GP posterior mean / gradient flow without the N x N kernel (module docstring).

    Args:
      kernel_fn: `kernel_fn(x1, x2, get)` traceable by `jax.jit` (a `kernels.stax`
        network's third element); `None` with ``method="random_features"``.
      x_train: `(N, ...)` training inputs; x_test: `(M, ...)` or None (the training inputs).
      y_train: `(N,)` or `(N, C)` targets.
      get: "nngp" or "ntk": the kernel to regress with.
      diag_reg, diag_reg_absolute_scale: ridge `shift = diag_reg * trace(K) / N`
        (or `diag_reg` itself), as `theory.predict`.
      t: None (infinite time) or training time(s) in steps of `learning_rate`
        (loss `||f - y||^2 / (2 y.size)`), as `theory.predict.gradient_descent_mse_ensemble`.
      learning_rate: positive; only finite `t` depends on it.
      method: "cg", "nystrom" or "random_features".
      n_centers: "cg": preconditioner rank (default `min(N, 500)`, less if
        `memory_bytes` demands; 0: no preconditioner); "nystrom": number of
        centres M (required).
      tol: relative residual at which iterations stop, in (0, 1).
      path: a folder: "cg" keeps the train kernel in a verified `kernels.batch`
        tile store `path/kernel-<get>/` (computed once, then streamed) and its
        iterate in `path/cg-<get>.npz`; "nystrom" keeps its N x M block in
        `path/nystrom-<get>-<M>/`.
      checkpoint: "cg" without `path`: a file for the iterate (kernel tiles on the fly).
      checkpoint_every: CG iterations between saves.
      max_iterations: CG / Lanczos steps at most (a `ConvergenceWarning` if reached).
      memory_bytes: host memory for kernel blocks (sets the block rows).
      seed: seed of the pivots (cg), centres (nystrom) and networks (random features).
      progress: show `tqdm` progress bars.
      fingerprint: a string naming the network, recorded instead of the
        fingerprint of `kernel_fn` (for a `kernel_fn` that cannot be fingerprinted).
      network: `(init_fn, apply_fn)` of the finite network, for ``method="random_features"``
        (its outputs: the NNGP).
      n_samples: random features: networks drawn (features = all their outputs).
      features: a `kernels.features.FeatureMap` estimating the kernel of `get`
        (`relu_mlp_feature_map`: sketched NNGP/NTK features of a ReLU MLP;
        `network_feature_map`: a finite network's outputs or Jacobians): the features of
        ``method="random_features"`` (instead of `network`), or of the CG preconditioner.
      preconditioner: ``method="cg"`` only: "nystrom" (the default: randomly pivoted
        Cholesky of rank `n_centers`) or "random_features" (`P = Phi Phi^T + shift I` from
        `features` on the training inputs, applied by Woodbury; needs `diag_reg > 0`; holds
        `Phi`, N x F float64, beside the kernel blocks).

    Returns:
      `Regression(predictions, residual, iterations)`.
    """
    where = "kernel_regression"
    if not isinstance(method, str) or method not in METHODS:
        raise arguments.argument_error(where, "method", f"one of {METHODS}", method)
    problem = _check_problem(where, kernel_fn, x_train, y_train, x_test, get, diag_reg, diag_reg_absolute_scale, t,
                             learning_rate, tol, method)
    max_iterations = arguments.integer(where, "max_iterations", max_iterations, low=1)
    memory_bytes = arguments.integer(where, "memory_bytes", memory_bytes, low=1)
    seed = arguments.integer(where, "seed", seed, low=0)
    progress = arguments.flag(where, "progress", progress)
    if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint):
        raise arguments.argument_error(where, "fingerprint", "None or a non-empty string", fingerprint, TypeError)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise arguments.argument_error(where, "path", "None or a folder name", path, TypeError)
    n = problem.x_train.shape[0]
    if preconditioner is not None and method != "cg":
        raise arguments.argument_error(where, "preconditioner", f"None with method={method!r} (only CG takes "
                                       "one)", preconditioner)
    if features is not None and method == "nystrom":
        raise arguments.argument_error(where, "features", "None with method='nystrom' (features serve "
                                       "method='random_features' and CG's preconditioner)", "a feature map")
    if method != "random_features":
        if network is not None:
            raise arguments.argument_error(where, "network", f"None with method={method!r} (only random features "
                                           "use a finite network)", "an argument")
        if n_samples != 1:
            raise arguments.argument_error(where, "n_samples", f"1 with method={method!r} (only random features "
                                           "draw networks)", n_samples)
    if method != "cg":
        for name, value, default in (("checkpoint", checkpoint, None), ("checkpoint_every", checkpoint_every, 10)):
            if value is not default and value != default:
                raise arguments.argument_error(where, name, f"{default} with method={method!r} (only CG saves "
                                               "iterates; give path to keep the kernel block)", value)
    if method == "cg":
        if _check_preconditioner(where, preconditioner, features, n_centers, problem) == "random_features":
            preconditioner = features
        else:
            if n_centers is None:
                n_centers = min(n, DEFAULT_PRECONDITIONER_RANK, max(0, memory_bytes // (4 * 8 * n)))
            preconditioner = arguments.integer(where, "n_centers", n_centers, low=0)
        checkpoint_every = arguments.integer(where, "checkpoint_every", checkpoint_every, low=1)
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise arguments.argument_error(where, "checkpoint", "None or a file name", checkpoint, TypeError)
        if checkpoint is not None and path is not None:
            raise arguments.argument_error(where, "checkpoint", "None when path is given (the iterate is kept in "
                                           "path)", checkpoint)
        if problem.times is not None and checkpoint is not None:
            raise arguments.argument_error(where, "checkpoint", "None with a finite t (Lanczos bases are not "
                                           "checkpointed; path keeps the kernel's tiles)", checkpoint)
        mean = _solve_cg(where, kernel_fn, problem, preconditioner, path, checkpoint, checkpoint_every, max_iterations,
                         memory_bytes, seed, progress, fingerprint)
    elif method == "nystrom":
        if n_centers is None:
            raise arguments.argument_error(where, "n_centers", "the number of centres M (1..N) for "
                                           "method='nystrom'", None)
        n_centers = arguments.integer(where, "n_centers", n_centers, low=1)
        if n_centers > n:
            raise arguments.argument_error(where, "n_centers", f"at most N = {n} (centres are training points)",
                                           n_centers)
        if problem.times is not None:
            raise arguments.argument_error(where, "t", "None with method='nystrom' (finite times: method='cg' or "
                                           "'random_features')", t)
        mean = _solve_nystrom(where, kernel_fn, problem, n_centers, path, max_iterations, memory_bytes, seed,
                              progress, fingerprint)
    else:
        for name, value in (("n_centers", n_centers), ("path", path)):
            if value is not None:
                raise arguments.argument_error(where, name, "None with method='random_features' (the features are "
                                               "drawn, not stored)", value)
        source = _feature_source(where, problem, network, n_samples, features, seed)
        mean = _solve_random_features(where, problem, source, memory_bytes)
    return _finish(problem, *mean)


PRECONDITIONERS = ("nystrom", "random_features")


def _check_preconditioner(where, preconditioner, features, n_centers, problem):
    """The CG preconditioner's name ("nystrom" for None), with what it needs checked."""
    preconditioner = "nystrom" if preconditioner is None else preconditioner
    if not isinstance(preconditioner, str) or preconditioner not in PRECONDITIONERS:
        raise arguments.argument_error(where, "preconditioner", f"None or one of {PRECONDITIONERS}", preconditioner)
    if preconditioner == "nystrom":
        if features is not None:
            raise arguments.argument_error(where, "features", "None with method='cg' unless "
                                           "preconditioner='random_features'", "a feature map")
        return preconditioner
    if features is None:
        raise arguments.argument_error(where, "features", "a kernels.features.FeatureMap with "
                                       "preconditioner='random_features'", None)
    _check_features(where, features, problem.get)
    if n_centers is not None:
        raise arguments.argument_error(where, "n_centers", "None with preconditioner='random_features' (its rank "
                                       "is the feature map's)", n_centers)
    if problem.diag_reg <= 0:
        raise arguments.argument_error(where, "diag_reg", "positive with preconditioner='random_features' "
                                       "(P = Phi Phi^T + shift I is singular without a ridge)", problem.diag_reg)
    if problem.times is not None:
        raise arguments.argument_error(where, "preconditioner", "None with a finite t (Lanczos takes no "
                                       "preconditioner)", preconditioner)
    return preconditioner


class _Problem(NamedTuple):
    """The checked arguments shared by every method."""

    x_train: np.ndarray
    x_test: np.ndarray  # None: the training inputs
    y: np.ndarray  # (N, C) float64
    y_shape: tuple
    get: str
    diag_reg: float
    absolute: bool
    times: np.ndarray  # None: infinity; else float64 array of times
    time_scale: float  # learning_rate / y.size
    tol: float
    originals: tuple  # x_train, x_test as given (passed to kernel_fn)


def _check_problem(where, kernel_fn, x_train, y_train, x_test, get, diag_reg, absolute, t, learning_rate, tol,
                   method):
    if method == "random_features":
        if kernel_fn is not None:
            raise arguments.argument_error(where, "kernel_fn", "None with method='random_features' (the kernel is "
                                           "estimated from network's finite networks)", type(kernel_fn).__name__)
    elif not callable(kernel_fn):
        raise arguments.argument_error(where, "kernel_fn", "a kernel function kernel_fn(x1, x2, get)",
                                       type(kernel_fn).__name__, TypeError)
    x_host = arguments.examples(where, "x_train", x_train)
    y = arguments.real_array(where, "y_train", y_train)
    y = np.asarray(y, np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != x_host.shape[0]:
        raise arguments.argument_error(where, "y_train", f"(N,) or (N, C) with N = {x_host.shape[0]} (one row per "
                                       "example of x_train)", f"shape {y.shape}")
    if x_test is not None:
        test_shape = arguments.examples(where, "x_test", x_test).shape
        if test_shape[1:] != x_host.shape[1:]:
            raise arguments.argument_error(where, "x_test", f"inputs of shape (M, *{x_host.shape[1:]}) like x_train",
                                           f"shape {test_shape}")
    get = arguments.one_name(where, "get", get, ("nngp", "ntk"))
    diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0)
    absolute = arguments.flag(where, "diag_reg_absolute_scale", absolute)
    learning_rate = arguments.scalar(where, "learning_rate", learning_rate, low=0, low_open=True)
    times = None if t is None else arguments.times(where, "t", t)
    tol = arguments.scalar(where, "tol", tol, low=0, low_open=True, high=1)
    x_train = x_train if hasattr(x_train, "dtype") else x_host
    x_test_arg = None if x_test is None else (x_test if hasattr(x_test, "dtype") else np.asarray(x_test))
    return _Problem(np.asarray(x_train), None if x_test is None else np.asarray(x_test_arg), y.reshape(y.shape[0], -1),
                    y.shape, get, diag_reg, absolute, times, learning_rate / y.size, tol, (x_train, x_test_arg))


def _shift(problem, trace, n):
    return problem.diag_reg if problem.absolute else problem.diag_reg * trace / n


def _finish(problem, predictions, residual, iterations, dtype):
    """(T or 1, M, C) float64 -> the documented shape and dtype; non-finite values refused."""
    if not np.all(np.isfinite(predictions)):
        raise NonFiniteResult("kernel_regression: predictions came out non-finite; the kernel is too "
                              "ill-conditioned for this request: pass a positive diag_reg.")
    lead = () if problem.times is None else problem.times.shape
    m = predictions.shape[1]
    out = predictions.reshape(lead + (m,) + problem.y_shape[1:])
    dtype = dtype if dtype is not None and np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
    return Regression(out.astype(dtype), float(residual), int(iterations))


def _bar(progress, total, desc, unit):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def _kernel_source(kernel_fn, problem, rows, store_path, progress, fingerprint):
    """`KernelRows` on the fly, or over the `kernels.batch` tile store at `store_path` (computed/verified first)."""
    x = problem.x_train
    store = None
    if store_path is not None:
        store = kernels.batch(kernel_fn, rows, path=os.fspath(store_path), progress=progress,
                              fingerprint=fingerprint)(x, None, problem.get)
        if np.ndim(store) != 2:
            raise ValueError(f"kernel_regression: kernel_fn(x1, x2, get={problem.get!r}) has shape "
                             f"{np.shape(store)}; expected (N1, N2)")
    kernel = KernelRows(kernel_fn, x, problem.get, rows, store)
    if store is not None:
        kernel.dtype = np.dtype(store.dtype)
    return kernel


def _solve_cg(where, kernel_fn, problem, preconditioner, path, checkpoint, every, max_iterations, memory_bytes, seed,
              progress, fingerprint):
    """CG / Lanczos on the tiled kernel; `preconditioner`: the Nyström rank (int) or a `FeatureMap`."""
    n, c = problem.y.shape
    rows = _block_rows(where, memory_bytes, n)
    store_path = None if path is None else os.path.join(os.fspath(path), f"kernel-{problem.get}")
    kernel = _kernel_source(kernel_fn, problem, rows, store_path, progress, fingerprint)
    trace = float(np.sum(kernel.diagonal()))
    shift = _shift(problem, trace, n)

    def apply_a(v):
        return kernel.matmat(v) + shift * v

    if problem.times is not None:
        return _lanczos_flow(kernel, apply_a, problem, trace, max_iterations, progress)
    file = os.path.join(os.fspath(path), f"cg-{problem.get}.npz") if path is not None else checkpoint
    saver = Checkpoint(None if file is None else os.fspath(file), None, every)
    if file is not None:
        if store_path is not None:  # the verified store already names the network
            with open(os.path.join(store_path, "batch.json")) as f:
                identity = json.load(f)["network_sha256"]
        else:
            identity = _kernel_identity(where, kernel_fn, fingerprint)
        saver.key = _problem_key(identity, problem.x_train, problem.y, problem.get, problem.diag_reg,
                                 problem.absolute, getattr(preconditioner, "description", preconditioner), seed)
    alpha, done = saver.load(n, c)
    if isinstance(preconditioner, FeatureMap):
        phi = np.concatenate([block for _, _, block, _ in feature_blocks(preconditioner, problem.originals[0],
                                                                          memory_bytes)])
        precondition = woodbury_preconditioner(phi, shift)
    else:
        factor = randomly_pivoted_cholesky(kernel, preconditioner, np.random.default_rng(seed))
        precondition = nystrom_preconditioner(factor, shift)
    bar = _bar(progress, max_iterations, "kernel_regression CG", "it")
    if bar is not None:
        bar.update(done)

    def on_iteration(x, iterations, worst):
        saver.save(x, iterations)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(residual=f"{worst:.2e}")

    try:
        alpha, residual, iterations = conjugate_gradients(apply_a, precondition, problem.y, alpha, problem.tol,
                                                          max_iterations, done, on_iteration,
                                                          f"kernel_fn's {problem.get}")
    finally:
        if bar is not None:
            bar.close()
    saver.save(alpha, iterations, force=True)
    _warn_unconverged(residual, problem.tol, iterations, max_iterations)
    predictions = _predict(kernel, _test_inputs(problem), alpha)
    return predictions[None], residual, iterations, kernel.dtype


def _test_inputs(problem):
    return problem.x_train if problem.x_test is None else problem.x_test


def _warn_unconverged(residual, tol, iterations, max_iterations):
    if residual > tol:
        why = "the iteration limit was reached" if iterations >= max_iterations else \
            "restarts stopped improving it (rounding level: the kernel is too ill-conditioned for this tol)"
        warnings.warn(f"kernel_regression: stopped at relative residual {residual:.3g} > tol = {tol:g} after "
                      f"{iterations} iterations: {why}", ConvergenceWarning, stacklevel=4)


def _lanczos_flow(kernel, apply_a, problem, trace, max_iterations, progress):
    """f_t(x) = K_xX g(K~) y for g = `spectral.flow_gain`, by matrix-free Lanczos (`theory.krylov`)."""
    operator = _Operator(apply_a, kernel.n)
    # ||K~||_F <= sqrt(N) ||K~||_2 <= sqrt(N) trace(K~): a bound is all the breakdown test needs.
    bound = np.sqrt(kernel.n) * (trace + kernel.n * _shift(problem, trace, kernel.n))
    basis = krylov.KrylovBasis(operator, problem.y, chunk=LANCZOS_CHUNK, k_norm=bound)
    s = problem.times.reshape(-1) * problem.time_scale
    finite = np.isfinite(s)
    bar = _bar(progress, None, "kernel_regression Lanczos", "step")
    operator.on_product = (lambda: bar.update(1)) if bar is not None else None
    try:
        gains = np.zeros((s.size,) + problem.y.shape)
        if finite.any():
            value = basis.apply(spectral.flow_gain, (s[finite],), problem.tol, min(kernel.n, max_iterations))
            if value is None:
                raise ValueError(f"kernel_regression: Lanczos did not converge to tol = {problem.tol:g} within "
                                 f"max_iterations = {max_iterations} steps; raise max_iterations or tol")
            gains[finite] = value
        if (~finite).any():
            value = basis.apply(_inverse, (), problem.tol, min(kernel.n, max_iterations))
            if value is None:
                raise ValueError(f"kernel_regression: Lanczos did not converge to tol = {problem.tol:g} within "
                                 f"max_iterations = {max_iterations} steps; raise max_iterations or tol")
            gains[~finite] = value[0]
    finally:
        if bar is not None:
            bar.close()
    x_test = _test_inputs(problem)
    predictions = np.stack([_predict(kernel, x_test, g) for g in gains])
    return predictions, basis.last_change, basis.size, kernel.dtype


def _inverse(evals):
    """1 / lambda as a spectral filter of one 'time' (`theory.krylov` evaluates it on Ritz values > 0)."""
    return (1.0 / np.where(evals > 0, evals, np.inf))[None]


class _Operator:
    """`A @ v` for `theory.krylov`: the regularized kernel product, counted for the progress bar."""

    def __init__(self, apply_a, n):
        self.apply_a, self.shape, self.on_product = apply_a, (n, n), None

    def __matmul__(self, v):
        if self.on_product is not None:
            self.on_product()
        return self.apply_a(np.asarray(v, np.float64))


# ----------------------------------------------------------------------------- Nyström (FALKON)

def nystrom_centres(n, m, seed):
    """The first `m` of a seeded permutation of `range(n)`: nested in `m` for one seed."""
    return np.random.default_rng(seed).permutation(n)[:m]


def _solve_nystrom(where, kernel_fn, problem, m, path, max_iterations, memory_bytes, seed, progress, fingerprint):
    n = problem.x_train.shape[0]
    rows = _block_rows(where, memory_bytes, max(n, m))
    centres = nystrom_centres(n, m, seed)
    kernel = KernelRows(kernel_fn, problem.x_train, problem.get, rows)
    x_centres = problem.x_train[centres]
    if path is None:
        k_nm = np.empty((n, m))
        for r0 in kernel.blocks():
            r1 = min(r0 + rows, n)
            k_nm[r0:r1] = kernel.cross(problem.x_train[r0:r1], x_centres)
    else:
        store = os.path.join(os.fspath(path), f"nystrom-{problem.get}-{m}-seed{seed}")
        k_nm = kernels.batch(kernel_fn, rows, path=store, progress=progress, fingerprint=fingerprint)(
            problem.x_train, x_centres, problem.get)
        kernel.dtype = np.dtype(k_nm.dtype)
        k_nm = np.asarray(k_nm, np.float64)
    k_mm = k_nm[centres]
    k_mm = 0.5 * (k_mm + k_mm.T)
    trace = float(np.sum(kernel.diagonal()))
    shift = _shift(problem, trace, n)
    rhs = k_nm.T @ problem.y

    def apply_h(v):
        return k_nm.T @ (k_nm @ v) + shift * (k_mm @ v)

    precondition = falkon_preconditioner(k_mm, n, shift)
    bar = _bar(progress, max_iterations, "kernel_regression Nyström PCG", "it")

    def on_iteration(x, iterations, worst):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(residual=f"{worst:.2e}")

    try:
        beta, residual, iterations = conjugate_gradients(apply_h, precondition, rhs, np.zeros_like(rhs), problem.tol,
                                                         max_iterations, 0, on_iteration, "the Nyström system")
    finally:
        if bar is not None:
            bar.close()
    _warn_unconverged(residual, problem.tol, iterations, max_iterations)
    predictions = _predict(kernel, _test_inputs(problem), beta, centres)
    return predictions[None], residual, iterations, kernel.dtype


def falkon_preconditioner(k_mm, n, shift):
    """`v -> P^{-1} v`, `P = (N/M) K_MM^2 + shift K_MM = T^T A^T A T` (Rudi et al. 2017, Alg. 1).

    `T` is the upper Cholesky factor of `K_MM` with the smallest jitter (from
    `1e-14 M` times its mean diagonal up) that makes it succeed: the jitter only
    changes the preconditioner, never the system solved.
    """
    m = k_mm.shape[0]
    t_factor = _jittered_cholesky(k_mm)
    inner = (n / m) * (t_factor @ t_factor.T) + shift * np.eye(m)
    a_factor = _jittered_cholesky(inner)

    def precondition(v):
        w = scipy.linalg.solve_triangular(t_factor, v, trans="T")
        w = scipy.linalg.solve_triangular(a_factor, w, trans="T")
        w = scipy.linalg.solve_triangular(a_factor, w)
        return scipy.linalg.solve_triangular(t_factor, w)

    return precondition


def _jittered_cholesky(k):
    m = k.shape[0]
    scale = float(np.mean(np.abs(np.diagonal(k)))) or 1.0
    jitter = 0.0
    for _ in range(20):
        try:
            return scipy.linalg.cholesky(k + jitter * np.eye(m), lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            jitter = 1e-14 * m * scale if jitter == 0 else 10 * jitter
    raise ValueError("kernel_regression: the centres' kernel K_MM has no Cholesky factor even with jitter "
                     f"{jitter:.3g}; it is not positive semi-definite")


# ----------------------------------------------------------------------------- random features

def _feature_source(where, problem, network, n_samples, features, seed):
    """The feature function `x -> Phi` of ``method="random_features"``: `features`, or `network`'s outputs."""
    if features is not None:
        if network is not None:
            raise arguments.argument_error(where, "network", "None when features is given (one source of "
                                           "features)", "an argument")
        if n_samples != 1:
            raise arguments.argument_error(where, "n_samples", "1 when features is given (the feature map "
                                           "fixes its own size)", n_samples)
        return _check_features(where, features, problem.get)
    if network is None:
        raise arguments.argument_error(where, "network", "(init_fn, apply_fn) of the finite network (or "
                                       "features=, a kernels.features.FeatureMap) for method='random_features'",
                                       None)
    if not (isinstance(network, (tuple, list)) and len(network) == 2 and all(callable(f) for f in network)):
        raise arguments.argument_error(where, "network", "a pair (init_fn, apply_fn)", type(network).__name__,
                                       TypeError)
    n_samples = arguments.integer(where, "n_samples", n_samples, low=1)
    if problem.get != "nngp":
        raise arguments.argument_error(where, "get", "'nngp' with network= (a random network's outputs estimate "
                                       "the NNGP; for the NTK pass features=kernels.features."
                                       "network_feature_map(..., get='ntk') or relu_mlp_feature_map)", problem.get)
    return lambda x: random_features(network, x, n_samples, seed)


def _check_features(where, features, get):
    if not isinstance(features, FeatureMap):
        raise arguments.argument_error(where, "features", "None or a kernels.features.FeatureMap (e.g. "
                                       "relu_mlp_feature_map(...))", type(features).__name__, TypeError)
    if features.get != get:
        raise arguments.argument_error(where, "features", f"a FeatureMap of the kernel regressed with, "
                                       f"get={get!r}", f"a FeatureMap of get={features.get!r}")
    return features


def feature_blocks(feature_fn, x, memory_bytes, first_rows=256):
    """`(r0, r1, Phi[r0:r1])` as float64, row block by row block; a block of F features is ~memory_bytes / 3."""
    n = x.shape[0]
    r0, rows = 0, min(n, first_rows)
    while r0 < n:
        r1 = min(n, r0 + rows)
        block = feature_fn(x[r0:r1])
        dtype = np.dtype(block.dtype)
        block = np.asarray(block, np.float64)
        if block.ndim != 2 or block.shape[0] != r1 - r0:
            raise ValueError(f"kernel_regression: the feature map gave shape {block.shape} for {r1 - r0} inputs; "
                             "expected (inputs, features)")
        if not np.all(np.isfinite(block)):
            raise FloatingPointError("kernel_regression: the random features are not finite")
        yield r0, r1, block, dtype
        r0, rows = r1, max(1, int(memory_bytes // (3 * 8 * block.shape[1])))


def _solve_random_features(where, problem, source, memory_bytes):
    """Regression with `K ~ Phi Phi^T`, exactly in feature space, never holding `Phi` of the training set.

    The `F x F` Gram `Phi^T Phi` and `Phi^T y` are accumulated row block by row block.
    With `K~ = Phi Phi^T + shift I` and the flow gain `g` (`theory.spectral`),
    `Phi^T g(K~) y = g(Phi^T Phi + shift) Phi^T y` (push-through: `Phi^T` maps the
    eigenvectors of `Phi Phi^T` onto those of `Phi^T Phi`); predictions are `Phi_x` times
    that. At `t = None` with `shift > 0` it is one Cholesky solve (Rahimi & Recht 2007:
    ridge regression in the features); otherwise an eigendecomposition of the Gram, with
    directions below `F eps` of its largest eigenvalue dropped (the pseudo-inverse at `shift = 0`).
    """
    y = problem.y
    gram = rhs = dtype = None
    for r0, r1, phi, dtype in feature_blocks(source, problem.originals[0], memory_bytes):
        if gram is None:
            gram, rhs = np.zeros((phi.shape[1],) * 2), np.zeros((phi.shape[1], y.shape[1]))
        gram += phi.T @ phi
        rhs += phi.T @ y[r0:r1]
    n, f = y.shape[0], gram.shape[0]
    shift = _shift(problem, float(np.trace(gram)), n)
    weights = None
    if problem.times is None and shift > 0:
        try:
            weights = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram + shift * np.eye(f)), rhs)[None]
            w_inf = weights[0]
        except np.linalg.LinAlgError:
            weights = None
    if weights is None:
        evals, evecs = scipy.linalg.eigh(gram)
        live = evals > f * np.finfo(np.float64).eps * max(float(evals[-1]), 0.0)
        lam = np.where(live, evals, 0.0) + shift
        projected = evecs.T @ rhs  # (F, C)
        inverse = np.where(live, 1.0 / np.where(live, lam, 1.0), 0.0)
        w_inf = evecs @ (inverse[:, None] * projected)
        if problem.times is None:
            weights = w_inf[None]
        else:
            gains = np.where(live, spectral.flow_gain(lam, problem.times.reshape(-1) * problem.time_scale), 0.0)
            weights = np.einsum("fg,tg,gc->tfc", evecs, gains, projected)
    res = gram @ w_inf + shift * w_inf - rhs
    rhs_norm = float(np.linalg.norm(rhs))
    residual = float(np.linalg.norm(res)) / (rhs_norm if rhs_norm > 0 else 1.0)
    x_test = problem.originals[0] if problem.originals[1] is None else problem.originals[1]
    predictions = np.empty((weights.shape[0], x_test.shape[0], y.shape[1]))
    for r0, r1, phi, _ in feature_blocks(source, x_test, memory_bytes):
        predictions[:, r0:r1] = np.einsum("mf,tfc->tmc", phi, weights)
    return predictions, residual, 0, dtype


def woodbury_preconditioner(phi, shift):
    """`v -> P^{-1} v` for `P = Phi Phi^T + shift I` (random features as a KRR preconditioner).

    Avron, Clarkson & Woodruff 2017 ("Faster kernel ridge regression using sketching and
    preconditioning", SIAM J. Matrix Anal. Appl. 38): with `Phi Phi^T ~ K` the
    preconditioned matrix `P^{-1} (K + shift I)` is close to the identity. By the Woodbury
    identity `P^{-1} = (I - Phi (shift I + Phi^T Phi)^{-1} Phi^T) / shift`: one `F x F`
    Cholesky factor, two `N x F` products per application. Needs `shift > 0`.
    """
    inner = scipy.linalg.cho_factor(phi.T @ phi + shift * np.eye(phi.shape[1]))
    return lambda v: (v - phi @ scipy.linalg.cho_solve(inner, phi.T @ v)) / shift


def random_features(network, x, n_samples, seed):
    """`Phi (N, n_samples * K)`: the `K` outputs of `n_samples` networks drawn by `init_fn`, over `sqrt(n_samples K)`.

    `kernels.features.network_features` with `jax.random.PRNGKey(seed)` (Lee et al. 2018,
    §2.2: each output unit of a random network is a draw of the GP); its error falls like
    `width^{-1/2}`.
    """
    init_fn, apply_fn = network
    return network_features(init_fn, apply_fn, x, n_samples, jax.random.PRNGKey(seed), "nngp")
