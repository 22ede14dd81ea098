"""Random features of infinite-width kernels: `Phi (N, F)` with `Phi(x1) Phi(x2)^T ~ kernel_fn(x1, x2, get)`.

Two constructions:

* **Sketched arc-cosine features of a ReLU MLP** (`relu_nngp_features`,
  `relu_ntk_features`): the random-features construction of Zandieh, Han,
  Avron, Shoham, Kim & Shin 2021 ("Scaling neural tangent kernels via
  sketching and random features", NeurIPS 34, arXiv:2106.07880, the "NTK
  random features" construction: arc-cosine random features of orders 0 and 1 composed
  layer by layer, the tensor product sketched by TensorSRHT), written for the kernel that
  `kernels.stax` gives `serial(Dense(W_std, b_std), Relu(), ..., Dense(W_std,
  b_std))` in the "ntk" parameterization, with biases and per-layer `W_std`,
  `b_std`. With `depth` hidden ReLU layers the recursion (Lee et al. 2018, eq. 4;
  Jacot et al. 2018, Theorem 1) is

      K^0 = W_0^2 <x, y> / D + b_0^2,                      Theta^0 = K^0,
      K^l = W_l^2 E[relu(u) relu(v)] + b_l^2,              (u, v) ~ N(0, K^{l-1}),
      Theta^l = K^l + W_l^2 E[step(u) step(v)] Theta^{l-1},  l = 1..depth.

  Features follow it layer by layer. `phi^0(x) = [W_0 x / sqrt(D), b_0]` is exact.
  `E[relu(u) relu(v)]` and `E[step(u) step(v)]` are the arc-cosine kernels of order
  1 and 0 (Cho & Saul 2009, "Kernel methods for deep learning", eq. 1 and the
  closed forms of eq. 6, here without their factor 2) of the covariance
  `phi^{l-1} phi^{l-1}^T`; their Monte Carlo features are
  `a_n(h) = sigma_n(h G) / sqrt(m)`, `G` an `F x m` standard Gaussian matrix
  (`arc_cosine_features`), so

      phi^l   = [W_l a_1(phi^{l-1}), b_l]                  (the NNGP's features),
      psi^l   = [phi^l, W_l S(psi^{l-1} (x) a_0(phi^{l-1}))]  (the NTK's, psi^0 = phi^0),

  with `S` a TensorSRHT sketch of the tensor product (`tensor_srht`; Ahle, Kapralov,
  Knudsen, Pagh, Velingker, Woodruff & Zandieh 2020, "Oblivious sketching of
  high-degree polynomial kernels", SODA; as used by Zandieh et al. 2021), an
  unbiased estimate of `<psi, psi'> <a_0, a_0'>` in `m` columns instead of
  `dim(psi) m`. Every piece is unbiased given the layer below; composition adds a
  bias of order `1/m`, so the relative error of `Phi Phi^T` falls like `m^{-1/2}`
  (tested). Zandieh et al. draw the order-0 and order-1 features from independent
  Gaussian matrices, as here, and work on inputs normalised to the sphere with
  `c_sigma = 2`; with biases no normalisation is possible, and none is needed:
  the Gaussian features are exact in expectation for any covariance. The draws are
  NumPy's (`SeedSequence` of the `jax.random` key's words, layer and role), made on
  the host: each `jax.random` draw costs ~1 s to compile on CPU, for every shape.
* **Features of finite networks** (`network_features`): the outputs of
  `n_samples` networks drawn by `init_fn` (their covariance is the NNGP: Lee et
  al. 2018, §2.2) or their Jacobians in all parameters (the empirical NTK: Jacot
  et al. 2018, eq. 2), for any network that `init_fn`/`apply_fn` describe.

`FeatureMap` packages either as one function of `x` with the kernel it
estimates (`get`), which `theory.large.kernel_regression` takes as a solver
(`method="random_features"`) and as a CG preconditioner.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from kernels.checks import argument_error, check_examples, positive_int

__all__ = ["FeatureMap", "arc_cosine_features", "tensor_srht", "relu_nngp_features", "relu_ntk_features",
           "network_features", "relu_mlp_feature_map", "network_feature_map"]

GETS = ("nngp", "ntk")


class FeatureMap(NamedTuple):
    """A random feature map: `feature_map(x)` is `Phi (N, n_features)`, `Phi(x1) Phi(x2)^T ~ kernel(x1, x2)`.

    Attributes:
      function: `x (N, ...) -> Phi (N, n_features)`; deterministic (its randomness is fixed
        when the map is made), so rows computed in any blocks are the same.
      get: the kernel estimated, "nngp" or "ntk".
      description: what drew it (kind, sizes, key), recorded by solvers that save state.
    """

    function: Callable
    get: str
    description: str

    def __call__(self, x):
        return self.function(x)


# ----------------------------------------------------------------------------- building blocks

def arc_cosine_features(h, order, n_features, rng):
    """`sigma_n(h G) / sqrt(m)`: Monte Carlo features of the arc-cosine kernel of order `n` (0 or 1).

    `E_G[a(h_i) . a(h_j)] = E[sigma_n(u) sigma_n(v)]` for `(u, v) ~ N(0, [[h_i.h_i, h_i.h_j],
    [h_i.h_j, h_j.h_j]])`, with `sigma_1 = relu` (the NNGP's `E[relu relu]`) and `sigma_0 = step`
    (the NTK's `E[relu' relu']`) (Cho & Saul 2009, eq. 1, here without their factor 2).

    Args:
      h: `(N, F)` features of the pre-activations' covariance (NumPy or JAX).
      order: 0 or 1.
      n_features: `m`, the number of random directions (columns returned).
      rng: a `numpy.random.Generator` drawing `G ~ N(0, 1)^{F x m}` (on the host: NumPy draws
        need no compilation, where each `jax.random` draw compiles for ~1 s on CPU).

    Returns:
      `(N, m)` in `h`'s dtype: a JAX array for a JAX `h` (on its device), else NumPy.
    """
    xp = _namespace(h)
    g = xp.asarray(rng.standard_normal((h.shape[1], n_features)), h.dtype)
    u = h @ g
    activated = xp.maximum(u, 0) if order == 1 else (u > 0).astype(h.dtype)
    return activated * math.sqrt(1.0 / n_features)


def _next_power_of_two(n):
    return 1 << max(0, (n - 1).bit_length())


def _hadamard(x):
    """`x @ H` for the unnormalised Sylvester Hadamard matrix `H` (entries +-1) of side `x.shape[1]` (a power of 2).

    `H_{ab} = H_a (x) H_b` (Sylvester's construction), so with `x` reshaped to `(N, a, b)`
    the product is two small dense products, `O(N P (a + b))` with `a, b ~ sqrt(P)`: one
    einsum to compile (a butterfly per bit, the fast Walsh-Hadamard transform, compiled
    ~10x slower for P = 4096 on XLA CPU and was no faster to run at these sizes).
    """
    n, p = x.shape
    bits = p.bit_length() - 1
    a, b = 1 << (bits // 2), 1 << (bits - bits // 2)
    xp = _namespace(x)
    h_a = xp.asarray(scipy.linalg.hadamard(a), x.dtype)
    h_b = xp.asarray(scipy.linalg.hadamard(b), x.dtype)
    return xp.einsum("nkl,ki,lj->nij", x.reshape(n, a, b), h_a, h_b).reshape(n, p)


def tensor_srht(a, b, n_features, rng):
    """TensorSRHT of the row-wise tensor products: `S(a_i (x) b_i)`, `(N, m)`, unbiased for `<a_i,a_j><b_i,b_j>`.

    `S(a (x) b) = (P_1 H D_1 a) * (P_2 H D_2 b) / sqrt(m)` (Ahle et al. 2020; Zandieh et al.
    2021): `D_1, D_2` independent Rademacher diagonals, `H` the +-1 Hadamard
    matrix (each factor zero-padded to a power of 2), `P_1, P_2` independent uniform
    samples of `m` coordinates (with replacement). For any fixed coordinates,
    `E_D[(H D a)_k (H D c)_k] = <a, c>` since `H_kj^2 = 1`; the two factors are
    independent, so each of the `m` products is unbiased for `<a, c><b, d>`.

    Args:
      a: `(N, p)`; b: `(N, q)`, in one dtype.
      n_features: `m`, columns returned.
      rng: a `numpy.random.Generator` for the signs and coordinates.
    """
    xp = _namespace(a)
    a, b = xp.asarray(a), xp.asarray(b)
    pa, pb = _next_power_of_two(a.shape[1]), _next_power_of_two(b.shape[1])
    sign_a = xp.asarray(rng.choice([-1.0, 1.0], pa), a.dtype)
    sign_b = xp.asarray(rng.choice([-1.0, 1.0], pb), b.dtype)
    rows_a, rows_b = rng.integers(0, pa, n_features), rng.integers(0, pb, n_features)
    ha = _hadamard(xp.pad(a, ((0, 0), (0, pa - a.shape[1]))) * sign_a)
    hb = _hadamard(xp.pad(b, ((0, 0), (0, pb - b.shape[1]))) * sign_b)
    return ha[:, rows_a] * hb[:, rows_b] * math.sqrt(1.0 / n_features)


# ----------------------------------------------------------------------------- ReLU MLPs

def _layer_values(where, name, value, n_dense, optional):
    """A scalar or a sequence of `n_dense` finite reals (None -> 0 where optional), as a list of floats."""
    if value is None and optional:
        return [0.0] * n_dense
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n_dense
    expected = f"a finite real or a sequence of {n_dense} (one per Dense layer: depth + 1)" + \
        (", or None" if optional else "")
    if len(values) != n_dense:
        raise argument_error(where, name, expected, value)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            raise argument_error(where, name, expected, value)
        out.append(float(v))
    return out


def _relu_arguments(where, x, depth, n_features, key, W_std, b_std, parameterization, get):
    host = check_examples(where, "x", x)
    x = x if isinstance(x, jax.Array) else host
    if x.ndim != 2:
        raise argument_error(where, "x", "an array (N, D) of flat inputs (an MLP's)", f"shape {x.shape}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise argument_error(where, "depth", "an int >= 0 (the number of hidden ReLU layers)", depth)
    n_features = positive_int(where, "n_features", n_features)
    allowed = ("ntk", "standard") if get == "nngp" else ("ntk",)
    if parameterization not in allowed:
        why = "" if get == "nngp" else " (the standard parameterization's NTK depends on the layer widths)"
        raise argument_error(where, "parameterization", " or ".join(map(repr, allowed)) + why, parameterization)
    w = _layer_values(where, "W_std", W_std, depth + 1, False)
    return x, int(depth), n_features, _key_words(where, key), w, _layer_values(where, "b_std", b_std, depth + 1, True)


def _relu_features(x, depth, n_features, words, w, b, ntk):
    """phi^depth (ntk=False) or psi^depth (ntk=True) of the module docstring, in x's dtype."""
    xp = _namespace(x)
    ones = xp.ones((x.shape[0], 1), x.dtype)
    phi = xp.concatenate([w[0] / math.sqrt(x.shape[1]) * x, b[0] * ones], axis=1)
    psi = phi
    for layer in range(1, depth + 1):
        relu_rng, step_rng, sketch_rng = (np.random.default_rng(words + [layer, role]) for role in range(3))
        below = phi
        phi = xp.concatenate([w[layer] * arc_cosine_features(below, 1, n_features, relu_rng), b[layer] * ones],
                              axis=1)
        if ntk:
            step = arc_cosine_features(below, 0, n_features, step_rng)
            psi = xp.concatenate([phi, w[layer] * tensor_srht(psi, step, n_features, sketch_rng)], axis=1)
    return psi if ntk else phi


def relu_nngp_features(x, depth, n_features, key, W_std=1.0, b_std=None, parameterization="ntk"):
    """Random features of the NNGP of `serial(Dense, Relu) x depth + Dense` (module docstring).

    Args:
      x: `(N, D)` inputs.
      depth: hidden ReLU layers (0: a single Dense, whose features are exact).
      n_features: `m`, random features per layer.
      key: a `jax.random` key (the same key gives the same features for any rows).
      W_std, b_std: as `kernels.stax.Dense` (`b_std=None`: no bias); a scalar for every
        Dense layer or a sequence of `depth + 1`, one per layer.
      parameterization: "ntk" or "standard" (the same NNGP).

    Returns:
      `Phi (N, m + 1)` (`(N, D + 1)` at depth 0) in `x`'s dtype (JAX for a JAX `x`, else NumPy),
      `Phi Phi^T ~ K^depth`.
    """
    x, depth, m, words, w, b = _relu_arguments("relu_nngp_features", x, depth, n_features, key, W_std, b_std,
                                               parameterization, "nngp")
    return _relu_features(x, depth, m, words, w, b, ntk=False)


def relu_ntk_features(x, depth, n_features, key, W_std=1.0, b_std=None, parameterization="ntk"):
    """Sketched random features of the NTK of `serial(Dense, Relu) x depth + Dense` (module docstring).

    Arguments as `relu_nngp_features`; only the "ntk" parameterization (the standard one's
    NTK depends on the widths, which a kernel without them cannot know).

    Returns:
      `Psi (N, 2 m + 1)` (`(N, D + 1)` at depth 0) in `x`'s dtype (JAX for a JAX `x`, else NumPy),
      `Psi Psi^T ~ Theta^depth`.
    """
    x, depth, m, words, w, b = _relu_arguments("relu_ntk_features", x, depth, n_features, key, W_std, b_std,
                                               parameterization, "ntk")
    return _relu_features(x, depth, m, words, w, b, ntk=True)


def relu_mlp_feature_map(depth, n_features, key, W_std=1.0, b_std=None, get="ntk", parameterization="ntk"):
    """`FeatureMap` of `relu_ntk_features` (get="ntk") or `relu_nngp_features` (get="nngp") with fixed draws."""
    where = "relu_mlp_feature_map"
    if get not in GETS:
        raise argument_error(where, "get", "'nngp' or 'ntk'", get)
    probe = np.zeros((1, 1))
    _relu_arguments(where, probe, depth, n_features, key, W_std, b_std, parameterization, get)  # all but x
    function = relu_ntk_features if get == "ntk" else relu_nngp_features

    def feature_map(x):
        return function(x, depth, n_features, key, W_std, b_std, parameterization)

    description = (f"relu_mlp_feature_map(depth={depth}, n_features={n_features}, W_std={W_std!r}, b_std={b_std!r}, "
                   f"get={get!r}, parameterization={parameterization!r}, key={_key_words(where, key)})")
    return FeatureMap(feature_map, get, description)


# ----------------------------------------------------------------------------- finite networks

def network_features(init_fn, apply_fn, x, n_samples, key, get="nngp"):
    """Features of `n_samples` finite networks drawn by `init_fn`: outputs (NNGP) or parameter Jacobians (NTK).

    `Phi Phi^T` is the Monte Carlo kernel of the finite network averaged over its `K`
    outputs and the samples: for "nngp" `Phi = [f_s(x)]_s / sqrt(n_samples K)` (Lee et al.
    2018, §2.2); for "ntk" `Phi = [d f_{s,k}(x) / d params]_{s,k} / sqrt(n_samples K)` (Jacot et
    al. 2018, eq. 2). Its error falls like `width^{-1/2}`. Networks are drawn from
    `jax.random.split(key, n_samples)`.

    Args:
      init_fn, apply_fn: a finite network (`kernels.stax` or any with that signature;
        "ntk" needs an `apply_fn` that `jax.jacrev` can differentiate).
      x: `(N, ...)` inputs.
      n_samples: networks drawn.
      key: a `jax.random` key.
      get: "nngp" or "ntk".

    Returns:
      `Phi (N, F)` as a NumPy array in the networks' output dtype.
    """
    where = "network_features"
    if get not in GETS:
        raise argument_error(where, "get", "'nngp' or 'ntk'", get)
    n_samples = positive_int(where, "n_samples", n_samples)
    blocks = []
    outputs = 1
    for sample_key in jax.random.split(key, n_samples):
        _, params = init_fn(sample_key, np.shape(x))
        if get == "nngp":
            out = np.asarray(apply_fn(params, x))
            outputs = int(np.prod(out.shape[1:]))
            blocks.append(out.reshape(out.shape[0], -1))
            continue
        jacobian = jax.jacrev(lambda p: apply_fn(p, x))(params)  # leaves (N, *outputs, *leaf)
        n = np.shape(x)[0]
        outputs = int(np.prod(jax.eval_shape(lambda: apply_fn(params, x)).shape[1:]))
        leaves = [np.asarray(leaf).reshape(n, outputs, -1) for leaf in jax.tree.leaves(jacobian)]
        blocks.append(np.concatenate(leaves, axis=2).reshape(n, -1))
    phi = np.concatenate(blocks, axis=1)
    return phi / np.sqrt(n_samples * outputs).astype(phi.dtype)


def network_feature_map(init_fn, apply_fn, n_samples, key, get="nngp"):
    """`FeatureMap` of `network_features` (the same `n_samples` networks for every call)."""
    where = "network_feature_map"
    if not (callable(init_fn) and callable(apply_fn)):
        raise argument_error(where, "init_fn/apply_fn", "two functions of a finite network",
                             f"{type(init_fn).__name__}, {type(apply_fn).__name__}", TypeError)
    if get not in GETS:
        raise argument_error(where, "get", "'nngp' or 'ntk'", get)
    n_samples = positive_int(where, "n_samples", n_samples)

    def feature_map(x):
        return network_features(init_fn, apply_fn, x, n_samples, key, get)

    description = (f"network_feature_map({getattr(apply_fn, '__qualname__', type(apply_fn).__name__)}, "
                   f"n_samples={n_samples}, get={get!r}, key={_key_words(where, key)})")
    return FeatureMap(feature_map, get, description)


def _namespace(x):
    """jax.numpy for JAX arrays (on their device), NumPy for host arrays (nothing to compile)."""
    return jnp if isinstance(x, jax.Array) else np


def _key_words(where, key):
    """The words of a `jax.random` key (raw uint32 or typed) as ints: the entropy of NumPy's `SeedSequence`."""
    data = jax.random.key_data(key) if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key) else key
    data = np.asarray(data)
    if data.dtype != np.uint32 or data.size == 0:
        raise argument_error(where, "key", "a jax.random key (jax.random.PRNGKey(seed) or "
                             "jax.random.key(seed))", key, TypeError)
    return [int(v) for v in data.ravel()]
