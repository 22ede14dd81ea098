"""A test-local closed-form kernel of a fully connected network.

`theory/` tests must not wait for `kernels.stax`, so they use this small,
independent implementation of the NNGP/NTK recursion of a dense network in
neural-tangents' "ntk" parameterization (NNGP: Lee et al. 2018, "Deep neural
networks as Gaussian processes", eq. 4; NTK: Jacot et al. 2018, Theorem 1), with
the ReLU arc-cosine dual (Cho & Saul 2009, eq. 6) and the Erf dual (Williams 1997,
eq. 11). Its values are checked against the neural-tangents oracle in
`test_closed_form_mlp.py`.
"""
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np

Kernels = namedtuple("Kernels", ("nngp", "ntk"))


def _relu_dual(k12, k11, k22, xp):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]); xp: np or jnp."""
    norm = xp.sqrt(k11 * k22)
    cos = xp.clip(k12 / norm, -1.0, 1.0)
    # arccos has an infinite derivative at correlation 1 (the diagonal), where the
    # duals below have zero derivative in theta: keep gradients finite.
    near_one = cos > 1 - 1e-12
    theta = xp.where(near_one, 0.0, xp.arccos(xp.where(near_one, 0.0, cos)))
    nngp = norm * (xp.sin(theta) + (xp.pi - theta) * cos) / (2 * xp.pi)
    dot = (xp.pi - theta) / (2 * xp.pi)
    return nngp, dot


def _erf_dual(k12, k11, k22, xp):
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] (Williams 1997, eq. 11)."""
    a = 1 + 2 * k11
    b = 1 + 2 * k22
    nngp = 2 / xp.pi * xp.arcsin(xp.clip(2 * k12 / xp.sqrt(a * b), -1.0, 1.0))
    dot = 4 / xp.pi / xp.sqrt(a * b - 4 * k12**2)
    return nngp, dot


_DUALS = {"relu": _relu_dual, "erf": _erf_dual}


def mlp_kernels(x1, x2, depth, W_std, b_std, activation="relu"):
    """NNGP and NTK of `depth` x [Dense(W_std, b_std), activation] + Dense, in float64.

    Computed in NumPy for concrete hyperparameters (nothing to compile) and in
    JAX when they are traced (model-selection tests differentiate through it).

    Args:
      x1: (N1, D); x2: (N2, D) or None (then x2 = x1).
      W_std, b_std: scalars or sequences of length depth + 1 (one per Dense).

    Returns:
      Kernels(nngp, ntk), each (N1, N2).
    """
    traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves((x1, x2, W_std, b_std)))
    xp = jnp if traced else np
    x1 = xp.asarray(x1, xp.float64)
    x2 = x1 if x2 is None else xp.asarray(x2, xp.float64)
    n_dense = depth + 1
    W = xp.broadcast_to(xp.asarray(W_std, xp.float64), (n_dense,))
    b = xp.broadcast_to(xp.asarray(b_std, xp.float64), (n_dense,))
    dual = _DUALS[activation]
    d = x1.shape[1]
    k12 = W[0] ** 2 * x1 @ x2.T / d + b[0] ** 2
    k11 = W[0] ** 2 * xp.sum(x1**2, 1) / d + b[0] ** 2
    k22 = W[0] ** 2 * xp.sum(x2**2, 1) / d + b[0] ** 2
    ntk = k12
    with np.errstate(invalid="ignore"):
        for layer in range(1, n_dense):
            e12, dot12 = dual(k12, k11[:, None], k22[None, :], xp)
            e11, _ = dual(k11, k11, k11, xp)
            e22, _ = dual(k22, k22, k22, xp)
            k12 = W[layer] ** 2 * e12 + b[layer] ** 2
            k11 = W[layer] ** 2 * e11 + b[layer] ** 2
            k22 = W[layer] ** 2 * e22 + b[layer] ** 2
            ntk = k12 + W[layer] ** 2 * dot12 * ntk
    return Kernels(k12, ntk)


def mlp_kernel_fn(depth=2, W_std=1.5, b_std=0.1, activation="relu", dtype=None):
    """A `kernel_fn(x1, x2=None, get=None)` with neural-tangents' `get` semantics.

    Values are computed in float64 (the test session enables x64) and returned
    as arrays of `dtype` (default: the dtype of `x1`).
    """

    def kernel_fn(x1, x2=None, get=None, **unused_kwargs):
        out_dtype = dtype or getattr(x1, "dtype", None) or np.asarray(x1).dtype
        k = mlp_kernels(x1, x2, depth, W_std, b_std, activation)
        k = Kernels(k.nngp.astype(out_dtype), k.ntk.astype(out_dtype))
        if get is None:
            return k
        if isinstance(get, str):
            return getattr(k, get)
        return namedtuple("Kernel", tuple(get))(*(getattr(k, g) for g in get))

    return kernel_fn
