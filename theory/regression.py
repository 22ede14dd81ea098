"""Exact GP inference and kernel ridge regression with NNGP / NTK kernels.

The posterior of a GP prior with covariance K given targets y (Rasmussen &
Williams 2006, "Gaussian Processes for Machine Learning", eqs. 2.23-2.24,
computed as in their Algorithm 2.1 by one Cholesky factorization):

    mean = K_td (K_dd + sigma^2 I)^{-1} y
    cov  = K_tt - K_td (K_dd + sigma^2 I)^{-1} K_dt

With the NNGP this is the exact posterior of an infinitely wide Bayesian
network (Lee et al. 2018, "Deep neural networks as Gaussian processes", §2.3);
with the NTK ("ntkgp") the NTK-GP posterior (He et al. 2020, "Bayesian deep
ensembles via the neural tangent kernel", §3). The mean alone is kernel ridge
regression with ridge sigma^2.

The "ntk" mode is different: the distribution of an infinite ensemble of
infinitely wide networks trained by gradient flow on MSE to t = infinity
(Lee et al. 2019, "Wide neural networks of any depth evolve as linear models
under gradient descent", §2.3.1, at t -> infinity): its mean is the NTK kernel
regression above, and its covariance

    cov = K_tt + Θ_td Θ^{-1} K_dd Θ^{-1} Θ_dt - (Θ_td Θ^{-1} K_dt + h.c.)

mixes the NTK Θ (which governs training) with the NNGP K (the distribution at
initialization).

`gp_inference` is traceable by `jax.jit` and `jax.grad`: with a traced kernel,
target or `diag_reg` the same formulas run as jax.numpy (`theory.linalg`).
"""
import functools
from collections import namedtuple
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory import arguments, linalg, output_axes
from theory.spectral import TrainKernel

GETS = ("nngp", "ntk")


class Gaussian(NamedTuple):
    """A `(mean, covariance)` pair.

    Attributes:
      mean: shape of the outputs (batch first, as `y_train`).
      covariance: shape of the corresponding kernel (zipped batch axes).
    """

    mean: jax.Array
    covariance: jax.Array


def named_output(get, values):
    """The result a parsed `get` asks for: one value, or a `Gaussians` named tuple in `get`'s order."""
    if get.form == "one":
        return values[get.names[0]]
    return _gaussians(get.names)(*(values[g] for g in get.names))


@functools.lru_cache(maxsize=None)
def _gaussians(names):
    return namedtuple("Gaussians", names)


def kernel_part(k, g, name):
    """The `g` ("nngp" / "ntk") matrix of `k`: an array (used for any g) or an object with `.nngp` / `.ntk`."""
    if isinstance(k, (np.ndarray, jax.Array)):
        return k
    value = getattr(k, g, None)
    if value is None:
        raise ValueError(f"{name} has no {g!r} kernel (got {type(k).__name__}); it is needed for get={g!r}.")
    return value


class NonFiniteResult(ValueError):
    """A prediction came out NaN or infinite (an ill-conditioned kernel, or diverging gradient descent)."""


def posterior_mean(train, k_td, y):
    """K_td K^{-1} y in float64 (train: `TrainKernel`; k_td (M, P); y (P, C))."""
    return k_td @ train.solve(y)


def gp_posterior_covariance(train, k_td, k_tt):
    """K_tt - K_td K^{-1} K_dt (Rasmussen & Williams 2006, eq. 2.24)."""
    cov = k_tt - k_td @ train.solve(k_td.T)
    return 0.5 * (cov + cov.T)


def ntk_ensemble_covariance(theta, theta_td, nngp_dd, nngp_td, nngp_tt):
    """Covariance of the gradient-flow ensemble at t = infinity (module docstring)."""
    gain = theta.solve(theta_td.T)  # Θ^{-1} Θ_dt, (P, M)
    cross = theta_td @ theta.solve(nngp_td.T)  # Θ_td Θ^{-1} K_dt
    cov = nngp_tt + gain.T @ nngp_dd @ gain - cross - cross.T
    return 0.5 * (cov + cov.T)


def finish(name, x, dtype, advice="the kernel is too ill-conditioned for this request; pass a positive diag_reg."):
    """Float64 NumPy result -> a JAX array of the input dtype; `NonFiniteResult` (saying `advice`) if not finite.

    A traced result is cast to the input dtype as JAX allows it now (float32 for float64 without
    x64 mode), unchecked."""
    if linalg.is_traced(x):
        return x.astype(jax.dtypes.canonicalize_dtype(dtype))
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise NonFiniteResult(f"{name} came out non-finite: {advice}")
    with linalg.float64():
        return jnp.asarray(x.astype(dtype))


def result_dtype(*arrays):
    """The floating dtype results are returned in: that of the inputs (NumPy rules, so float64 survives without x64)."""
    dtype = np.result_type(*[a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype for a in arrays])
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def gp_inference(k_train_train, y_train, diag_reg=0.0, diag_reg_absolute_scale=False, trace_axes=(-1,)):
    """Posterior of NNGP / NTK-GP inference and the t = infinity NTK ensemble.

    neural-tangents 0.6.5's `predict.gp_inference`, with the same arguments
    and semantics; solves in float64 (Cholesky, factorized once per kernel and
    cached), results in the dtype of `k_train_train`.

    Args:
      k_train_train: train-train kernel: an array (used for every `get`) or an
        object with `.nngp` / `.ntk` arrays (a `Kernel` or a named tuple). Shape
        `(N, N)` for targets `(N, C)` with `trace_axes=(-1,)`; in general the
        kept output axes of `y_train` zipped (see `theory.output_axes`).
      y_train: targets, `(N, ...)`.
      diag_reg: non-negative ridge added to the diagonal: `diag_reg *
        trace(K) / N` unless `diag_reg_absolute_scale`.
      diag_reg_absolute_scale: take `diag_reg` in absolute units.
      trace_axes: output axes that are independent and share one kernel.

    Returns:
      `predict_fn(get=None, k_test_train=None, k_test_test=None)`. `get`:
      "nngp", "ntk", "ntkgp" or a tuple of them (None: ("nngp", "ntk")).
      `k_test_train`: `(M, N)` test-train kernel(s), or None for the train set
      without regularization: exactly `N(y_train, 0)`, whatever `diag_reg`, as in
      neural-tangents (for the regularized train-set posterior pass
      `k_test_train=k_train_train`). `k_test_test`: `(M, M)` kernel(s) to also get
      the covariance (NNGP for "nngp" and "ntk", NTK for "ntkgp"); for the "ntk"
      covariance both kernels must hold `.nngp` and `.ntk`. With
      `k_test_train=None` it only asks for that (zero) covariance: any value but
      None, its entries unused, as in neural-tangents. A string `get` gives one value; a tuple gives a `Gaussians`
      named tuple. Each value is the mean, or `Gaussian(mean, covariance)`
      when `k_test_test` is given.

    Raises:
      ValueError: negative `diag_reg`, shapes that do not match `y_train`, an
        unknown `get`, missing kernels, a kernel that is not positive
        semi-definite (a small violation is fixed by a reported jitter).
    """
    where = "gp_inference"
    layout = output_axes.output_layout(where, y_train, trace_axes)
    diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0, traceable=True)
    diag_reg_absolute_scale = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
    n_train = layout.y_shape[0]
    predict_where = "gp_inference's predict_fn"
    trains = {}

    def train_kernel(g):
        if g not in trains:
            k = output_axes.kernel_2d(
                layout, f"k_train_train.{g}", kernel_part(k_train_train, g, "k_train_train"), n_train, n_train
            )
            trains[g] = TrainKernel(k, diag_reg, diag_reg_absolute_scale, f"k_train_train.{g}")
        return trains[g]

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        parsed = arguments.parse_get(get, ("nngp", "ntk", "ntkgp"), predict_where, default=("nngp", "ntk"))
        out = {}
        num = linalg.numerics(k_train_train, y_train, diag_reg, k_test_train, k_test_test)
        with num.scope():
            y = output_axes.targets_2d(layout, num.asarray(y_train), num.xp)
            for g in parsed.names:
                kind = "nngp" if g == "nngp" else "ntk"
                dtype = result_dtype(kernel_part(k_train_train, kind, "k_train_train"))
                if k_test_train is None:
                    mean = finish("mean", y_train, dtype)
                    if k_test_test is None:
                        out[g] = mean
                    else:
                        p = int(np.prod(layout.kept_shape))
                        cov = output_axes.covariance_from_2d(num.zeros((p, p)), layout.kept_shape)
                        out[g] = Gaussian(mean, finish("covariance", cov, dtype))
                    continue
                train = train_kernel(kind)
                raw_td = kernel_part(k_test_train, kind, "k_test_train")
                k_td = _test_train_2d(layout, f"k_test_train.{kind}", raw_td, n_train, num)
                test_kept = output_axes.rows_shape(layout, raw_td)
                mean = output_axes.outputs_from_2d(layout, posterior_mean(train, k_td, y), test_kept)
                if k_test_test is None:
                    out[g] = finish(f"mean ({g})", mean, dtype)
                    continue
                m = k_td.shape[0]
                if g == "ntk":
                    if not all(getattr(k, "nngp", None) is not None for k in (k_train_train, k_test_train)):
                        raise ValueError(
                            "the 'ntk' covariance needs the NNGP and the NTK: pass k_train_train and "
                            "k_test_train as objects with .nngp and .ntk (e.g. kernel_fn(..., get=('nngp', 'ntk')))."
                        )
                    nngp_dd = output_axes.kernel_2d(layout, "k_train_train.nngp", k_train_train.nngp, n_train, n_train)
                    nngp_td = _test_train_2d(layout, "k_test_train.nngp", k_test_train.nngp, n_train, num)
                    nngp_tt = kernel_part(k_test_test, "nngp", "k_test_test")
                    nngp_tt = _test_test_2d(layout, "k_test_test.nngp", nngp_tt, m, num)
                    cov = ntk_ensemble_covariance(train, k_td, num.asarray(nngp_dd), nngp_td, nngp_tt)
                else:
                    k_tt = kernel_part(k_test_test, kind, "k_test_test")
                    k_tt = _test_test_2d(layout, f"k_test_test.{kind}", k_tt, m, num)
                    cov = gp_posterior_covariance(train, k_td, k_tt)
                cov = output_axes.covariance_from_2d(cov, test_kept)
                out[g] = Gaussian(finish(f"mean ({g})", mean, dtype), finish(f"covariance ({g})", cov, dtype))
        return named_output(parsed, out)

    return predict_fn


def _test_train_2d(layout, name, k, n_train, num=linalg.HOST):
    return num.asarray(output_axes.kernel_2d(layout, name, k, None, n_train))


def _test_test_2d(layout, name, k, m, num=linalg.HOST):
    k2 = output_axes.kernel_2d(layout, name, k)
    if k2.shape != (m, m):
        raise arguments.argument_error(layout.where, name, f"square with {m} rows (like k_test_train)",
                                       f"shape {np.shape(k)}")
    return num.asarray(k2)
