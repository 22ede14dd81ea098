"""Synthetic inputs and targets used in the infinite-width papers.

- `unit_circle` / `circle_points`: x(g) = (cos g, sin g), the inputs of Jacot,
  Gabriel & Hongler 2018, "Neural Tangent Kernel", Figs. 1-2.
- `sphere`: points uniform on the sphere of radius r in R^d, as Gaussian
  vectors divided by their norm (Muller 1959, "A note on a method for
  generating points uniformly on n-dimensional spheres").
- `dirichlet`: points on the probability simplex, rows ~ Dirichlet(alpha).
- `random_teacher` + `teacher_targets`: targets from a fixed random network
  (the teacher-student setting, Gardner & Derrida 1989; Seung, Sompolinsky &
  Tishby 1992), or from any `apply_fn(params, x)` the caller supplies.

All return NumPy arrays, float32 unless `dtype` says otherwise; seeds feed
`numpy.random.default_rng`.
"""
import math

import jax.numpy as jnp
import numpy as np


def circle_points(gamma, dtype=np.float32):
    """Angles `gamma: (N,)` -> points `(N, 2)` = (cos g, sin g) on the unit circle."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.stack([np.cos(gamma), np.sin(gamma)], axis=-1).astype(dtype)


def unit_circle(n, *, dtype=np.float32):
    """`n` evenly spaced angles on [-pi, pi] and their points.

    Returns:
      `(gamma (n,), x (n, 2))`; `gamma` includes both ends and, when `n` is odd,
      0, where x = (1, 0) is the reference point x0 of Jacot et al. 2018, Fig. 1.
    """
    gamma = np.linspace(-np.pi, np.pi, n)
    return gamma.astype(dtype), circle_points(gamma, dtype)


def sphere(n, dim, *, radius=1.0, seed=0, dtype=np.float32):
    """`n` points uniform on the sphere {x in R^dim : |x| = radius}: `(n, dim)`."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    gaussian = np.random.default_rng(seed).standard_normal((n, dim))
    return (radius * gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)).astype(dtype)


def dirichlet(n, dim, *, concentration=1.0, seed=0, dtype=np.float32):
    """`n` points on the simplex in R^dim, rows ~ Dirichlet(concentration * ones(dim))."""
    alpha = np.full(dim, concentration, dtype=np.float64)
    return np.random.default_rng(seed).dirichlet(alpha, n).astype(dtype)


def random_teacher(in_dim, *, hidden=(), out_dim=1, seed=0):
    """A fixed random network to produce targets: linear, or a ReLU MLP.

    Every layer is `h -> h @ W / sqrt(fan_in)` with W ~ N(0, 1) and no bias;
    between layers `sqrt(2) * relu`, the He et al. 2015 gain that keeps
    E|h|^2 / width constant through depth. So with `hidden=()` the teacher is
    the linear map f(x) = x W / sqrt(in_dim), and f(x) has variance |x|^2 /
    in_dim for either kind.

    Args:
      in_dim: input features.
      hidden: widths of the hidden layers; `()` gives a linear teacher.
      out_dim: outputs.
      seed: seed of the weights.

    Returns:
      `(apply_fn, params)` with `apply_fn(params, x: (N, in_dim)) -> (N, out_dim)`.
    """
    rng = np.random.default_rng(seed)
    sizes = (in_dim, *hidden, out_dim)
    params = [rng.standard_normal((fan_in, fan_out))
              for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]

    def apply_fn(params, x):
        h = jnp.asarray(x)
        for i, w in enumerate(params):
            if i:
                h = math.sqrt(2.0) * jnp.maximum(h, 0.0)
            h = h @ w / math.sqrt(w.shape[0])
        return h

    return apply_fn, params


def teacher_targets(apply_fn, params, x, *, noise_std=0.0, seed=0, dtype=np.float32):
    """Targets y = apply_fn(params, x) + noise_std * N(0, 1), as a NumPy array.

    Args:
      apply_fn, params: any network, e.g. from `random_teacher` or a `stax` layer.
      x: inputs the network accepts.
      noise_std: standard deviation of the label noise.
      seed: seed of the noise.
      dtype: dtype of the result.
    """
    y = np.asarray(apply_fn(params, x), dtype=np.float64)
    if noise_std:
        y = y + noise_std * np.random.default_rng(seed).standard_normal(y.shape)
    return y.astype(dtype)
