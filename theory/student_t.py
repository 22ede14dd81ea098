"""Student-t processes from an inverse-gamma prior on the last layer's weight variance.

Lee, Yun, Yang & Lee 2021, "Scale mixtures of neural network Gaussian processes"
(arXiv:2107.01408, ICLR 2022), their inverse-gamma case: if the readout weights of an
infinitely wide network have variance sigma^2 ~ InvGamma(a, b) (density
b^a / Gamma(a) s^(-a-1) exp(-b / s)), its outputs are, given sigma^2, the GP with kernel
sigma^2 K (K: the NNGP with readout ``W_std = 1``), and integrating sigma^2 out gives the
Student-t process TP(2a, 0, (b / a) K).

Regression with `theory.predict`'s ``diag_reg`` adds noise of variance sigma^2 * delta
(delta = diag_reg, times trace(K) / n unless ``diag_reg_absolute_scale``), the same scale
mixture, which keeps the inverse gamma conjugate (noise inside the scaled kernel, as
Shah, Wilson & Ghahramani 2014, "Student-t processes as alternatives to Gaussian
processes", recommend for TP regression). With
Kd = K + delta I, n training points and k output columns that share sigma^2 (given sigma^2
the columns are independent GPs):

    sigma^2 | y  ~  InvGamma(a + n k / 2,  b + q / 2),      q = sum over columns y_c' Kd^{-1} y_c,

and the posterior of the noiseless test outputs f_* is, per column, multivariate t with

    df = 2a + n k,   mean = K_*X Kd^{-1} y,   scale = (2b + q) / (2a + n k) (K_** - K_*X Kd^{-1} K_X*),
    covariance = scale df / (df - 2)   (infinite for df <= 2).

(the columns are uncorrelated but dependent through sigma^2: jointly matrix-t). The
evidence of y, integrating the Gaussian likelihood over the prior, is

    log p(y) = -(n k / 2) log(2 pi) - (k / 2) log|Kd| + a log b - log Gamma(a)
               + log Gamma(a + n k / 2) - (a + n k / 2) log(b + q / 2),

for one column the log density of the multivariate t TP(2a, 0, (b / a) Kd) at y.

Solves run in float64 through `theory.spectral.TrainKernel` (one Cholesky factorization of
Kd, with `theory.linalg`'s reported jitter or its ValueError for a kernel that is not
positive semi-definite); results come back in the dtype of the kernels.
"""
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

from theory import arguments, linalg
from theory.regression import finish, result_dtype
from theory.spectral import TrainKernel

__all__ = ["StudentT", "posterior", "log_marginal_likelihood"]


class StudentT(NamedTuple):
    """The posterior of the test outputs of a Student-t process (`posterior`).

    Attributes:
      df: degrees of freedom, 2a + n k (a Python float).
      mean: (m,) or (m, k), shaped like the targets' columns.
      scale: (m, m) scale matrix shared by every output column; None without `k_test_test`.
      covariance: (m, m), scale df / (df - 2), all +inf when df <= 2; None without `k_test_test`.
    """

    df: float
    mean: jax.Array
    scale: Optional[jax.Array]
    covariance: Optional[jax.Array]


def _shape_parameters(where, a, b):
    return (arguments.scalar(where, "a", a, low=0, low_open=True),
            arguments.scalar(where, "b", b, low=0, low_open=True))


def _train_kernel(where, k, y, diag_reg, diag_reg_absolute_scale, name):
    """(TrainKernel of Kd, y as (n, k) float64) after checking shapes and values."""
    k = arguments.real_array(where, name, k)
    y = arguments.real_array(where, "y_train" if name == "k_train_train" else "y", y)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise arguments.argument_error(where, name, "a square (n, n) kernel matrix", f"shape {tuple(k.shape)}")
    if y.ndim not in (1, 2) or y.shape[0] != k.shape[0]:
        raise arguments.argument_error(where, "y_train" if name == "k_train_train" else "y",
                                       f"targets (n,) or (n, k) with n = {k.shape[0]} (the kernel's size)",
                                       f"shape {tuple(y.shape)}")
    diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0)
    diag_reg_absolute_scale = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
    y2 = np.asarray(y, np.float64).reshape(k.shape[0], -1)
    return TrainKernel(k, diag_reg, diag_reg_absolute_scale, name), y2


def posterior(k_train_train, k_test_train, k_test_test, y_train, a, b, diag_reg=0.0,
              diag_reg_absolute_scale=False):
    """Posterior of a Student-t process TP(2a, 0, (b / a) K) given targets (module docstring).

    Lee, Yun, Yang & Lee 2021 (the conjugate inverse-gamma update of the last layer's
    variance); the mean is the GP's (Rasmussen & Williams 2006, eq. 2.23), the scale its
    covariance (eq. 2.24) times the posterior mean-square of the targets, (2b + q) / (2a + n k).

    Args:
      k_train_train: (n, n) NNGP of the training inputs, readout ``W_std = 1``.
      k_test_train: (m, n) NNGP between test and training inputs.
      k_test_test: (m, m) NNGP of the test inputs, or None for the mean alone.
      y_train: (n,) or (n, k) targets; the k columns share one variance sigma^2.
      a, b: the inverse-gamma prior's shape and scale, both > 0 (prior TP with 2a degrees of
        freedom and scale kernel (b / a) K).
      diag_reg: noise variance sigma^2 * diag_reg (relative to trace(K) / n unless
        ``diag_reg_absolute_scale``), `theory.predict`'s meaning; the posterior is of the
        noiseless outputs, as `theory.predict.gp_inference`'s covariance.
      diag_reg_absolute_scale: take ``diag_reg`` in absolute units.

    Returns:
      `StudentT(df, mean, scale, covariance)`; ``mean`` shaped (m,) or (m, k) like
      ``y_train``'s columns, ``scale`` and ``covariance`` (m, m).
    """
    where = "student_t.posterior"
    a, b = _shape_parameters(where, a, b)
    train, y = _train_kernel(where, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, "k_train_train")
    n, columns = y.shape
    k_td = arguments.real_array(where, "k_test_train", k_test_train)
    if k_td.ndim != 2 or k_td.shape[1] != n:
        raise arguments.argument_error(where, "k_test_train", f"an (m, {n}) kernel matrix",
                                       f"shape {tuple(k_td.shape)}")
    m = k_td.shape[0]
    dtype = result_dtype(k_train_train, k_test_train)
    k_td = np.asarray(k_td, np.float64)
    weights = train.solve(y)  # Kd^{-1} y, (n, k)
    q = float(np.sum(y * weights))
    df = 2 * a + n * columns
    mean = k_td @ weights
    mean = finish("student_t.posterior mean", mean.reshape(m) if np.ndim(y_train) == 1 else mean, dtype)
    if k_test_test is None:
        return StudentT(df, mean, None, None)
    k_tt = arguments.real_array(where, "k_test_test", k_test_test)
    if k_tt.shape != (m, m):
        raise arguments.argument_error(where, "k_test_test", f"an ({m}, {m}) kernel matrix (m rows, like "
                                       "k_test_train)", f"shape {tuple(k_tt.shape)}")
    gp_covariance = np.asarray(k_tt, np.float64) - k_td @ train.solve(k_td.T)
    gp_covariance = 0.5 * (gp_covariance + gp_covariance.T)
    scale = (2 * b + q) / df * gp_covariance
    with linalg.float64():
        covariance = (jnp.full((m, m), jnp.inf, dtype) if df <= 2
                      else finish("student_t.posterior covariance", scale * df / (df - 2), dtype))
    return StudentT(df, mean, finish("student_t.posterior scale", scale, dtype), covariance)


def log_marginal_likelihood(k, y, a, b, diag_reg=0.0, diag_reg_absolute_scale=False):
    """Natural log of the evidence of targets under a Student-t process TP(2a, 0, (b / a) K).

    The Gaussian evidence (Rasmussen & Williams 2006, eq. 2.30) of all k columns at variance
    sigma^2, integrated over sigma^2 ~ InvGamma(a, b) in closed form (module docstring; Lee,
    Yun, Yang & Lee 2021). The columns share sigma^2, so for k > 1 this is their joint
    log density (summed over outputs through q and n k), not a sum of k separate t densities.

    Args:
      k: (n, n) kernel (NNGP with readout ``W_std = 1``).
      y: (n,) or (n, k) targets.
      a, b: the inverse-gamma prior's shape and scale, both > 0.
      diag_reg, diag_reg_absolute_scale: noise as in `posterior`.

    Returns:
      A scalar JAX array in the dtype of `k`.
    """
    where = "student_t.log_marginal_likelihood"
    a, b = _shape_parameters(where, a, b)
    train, y2 = _train_kernel(where, k, y, diag_reg, diag_reg_absolute_scale, "k")
    n, columns = y2.shape
    q = float(np.sum(y2 * train.solve(y2)))
    logdet = 2 * float(np.sum(np.log(np.diagonal(np.asarray(train.cholesky().factor)))))
    half = n * columns / 2
    value = (-half * math.log(2 * math.pi) - 0.5 * columns * logdet + a * math.log(b) - gammaln(a)
             + gammaln(a + half) - (a + half) * math.log(b + q / 2))
    with linalg.float64():
        return jnp.asarray(value, result_dtype(k))
