"""Model selection for NNGP / NTK-GP inference: the log marginal likelihood and its maximization.

For GP regression with prior covariance K and Gaussian noise of variance
sigma^2, the evidence of targets y is (Rasmussen & Williams 2006, "Gaussian
Processes for Machine Learning", eq. 2.30, computed as in Algorithm 2.1)

    log p(y | X) = -1/2 y^T (K + sigma^2 I)^{-1} y - 1/2 log|K + sigma^2 I| - n/2 log 2π

summed here over the independent output columns that share K. Maximizing it
over the hyperparameters of the network that defines K (weight and bias
standard deviations, the ridge) is type-II maximum likelihood (ibid., §5.4.1);
its gradient (ibid., eq. 5.9) is obtained by differentiating through the
closed-form kernel with JAX.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from theory import arguments, linalg, output_axes
from theory.regression import result_dtype


def _log_marginal_likelihood(k, y, diag_reg, diag_reg_absolute_scale):
    """Pure JAX (traceable) LML of (P, C) targets under a (P, P) kernel; NaN if not positive definite."""
    k = 0.5 * (k + k.T)
    shift = diag_reg if diag_reg_absolute_scale else diag_reg * jnp.trace(k) / k.shape[0]
    factor = jnp.linalg.cholesky(k + shift * jnp.eye(k.shape[0], dtype=k.dtype))
    alpha = jax.scipy.linalg.cho_solve((factor, True), y)
    n, c = y.shape
    return (
        -0.5 * jnp.sum(y * alpha)
        - c * jnp.sum(jnp.log(jnp.diagonal(factor)))
        - 0.5 * n * c * math.log(2 * math.pi)
    )


def log_marginal_likelihood(k_train_train, y_train, diag_reg=0.0, diag_reg_absolute_scale=False, trace_axes=(-1,)):
    """Log evidence of GP regression with kernel `k_train_train` (NNGP, or NTK for NTK-GP inference).

    Rasmussen & Williams 2006, eq. 2.30, summed over the output columns along
    `trace_axes` (independent, sharing the kernel). The noise variance is
    `diag_reg`, relative to the mean diagonal entry `trace(K) / N` unless
    `diag_reg_absolute_scale` (the convention of `theory.predict`).

    Computed in float64 by one Cholesky factorization; a kernel that is not
    numerically positive definite gets the reported jitter of
    `theory.linalg.cholesky` (or a ValueError), never NaN. Returns a scalar
    JAX array in the dtype of `k_train_train`.

    Args:
      k_train_train: `(N, N)` kernel (zipped kept axes in general).
      y_train: targets `(N, ...)`.
      diag_reg: non-negative noise variance (relative unless absolute scale).
      diag_reg_absolute_scale: take `diag_reg` in absolute units.
      trace_axes: independent output axes.
    """
    where = "log_marginal_likelihood"
    layout = output_axes.output_layout(where, y_train, trace_axes)
    n = layout.y_shape[0]
    diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0)
    diag_reg_absolute_scale = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
    k = output_axes.kernel_2d(layout, "k_train_train", k_train_train, n, n)
    y = output_axes.targets_2d(layout, np.asarray(y_train, np.float64))
    dtype = result_dtype(k_train_train)
    with linalg.float64():
        k = jnp.asarray(k, jnp.float64)
        k = 0.5 * (k + k.T)
        shift = diag_reg if diag_reg_absolute_scale else diag_reg * float(jnp.trace(k)) / n
        factor = linalg.cholesky(k + shift * jnp.eye(n), "k_train_train").factor
        alpha = np.asarray(linalg.cho_solve(factor, jnp.asarray(y)))
        logdet = 2 * float(jnp.sum(jnp.log(jnp.diagonal(factor))))
        value = -0.5 * float(np.sum(y * alpha)) - 0.5 * y.shape[1] * logdet - 0.5 * y.size * math.log(2 * math.pi)
        return jnp.asarray(value, dtype)


# scipy.optimize.minimize's methods that need neither a Hessian nor constraints (lower case).
_METHODS = ("l-bfgs-b", "nelder-mead", "powell", "cg", "bfgs", "tnc", "slsqp", "trust-constr", "cobyla")


class FitResult(NamedTuple):
    """Outcome of `fit_hyperparameters`.

    Attributes:
      hyperparameters: the fitted values, a dict with the keys of `init`.
      log_marginal_likelihood: the log evidence there (a Python float).
      n_evaluations: how many times the objective was evaluated.
      success: whether the optimizer reported convergence.
      message: the optimizer's message.
    """

    hyperparameters: dict
    log_marginal_likelihood: float
    n_evaluations: int
    success: bool
    message: str


def fit_hyperparameters(
    network,
    x_train,
    y_train,
    init,
    *,
    fixed=None,
    get="nngp",
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
    method="L-BFGS-B",
    max_iterations=200,
    **kernel_fn_kwargs,
):
    """Maximize the log marginal likelihood over continuous network hyperparameters.

    `network(**hyperparameters)` returns a `stax` triple `(init_fn, apply_fn,
    kernel_fn)`. The hyperparameters named in `init` (all positive, e.g.
    `W_std`, `b_std`) are optimized in log space, together with the noise
    `diag_reg` if `init` names it (else `diag_reg` is `fixed.get("diag_reg",
    0.)`); those in `fixed` are passed to `network` unchanged (e.g. `depth`).
    With the default `method="L-BFGS-B"` gradients come from JAX through the
    kernel, so `network`'s kernel must accept traced hyperparameters;
    `method="Nelder-Mead"` needs only values. Kernels are computed in
    float64.

    Args:
      network: function of keyword hyperparameters returning a stax triple.
      x_train: training inputs, batch first.
      y_train: targets `(N, ...)`, `N == len(x_train)`.
      init: {name: positive initial value}.
      fixed: {name: value} passed to `network` (and `diag_reg`), not fitted.
      get: "nngp" (NNGP inference) or "ntk" (NTK-GP inference).
      diag_reg_absolute_scale, trace_axes: as in `log_marginal_likelihood`.
      method: a `scipy.optimize.minimize` method; "L-BFGS-B" uses gradients.
      max_iterations: optimizer iteration limit.
      **kernel_fn_kwargs: passed to `kernel_fn`.

    Returns:
      `FitResult`.

    Raises:
      ValueError, TypeError: an argument out of range or of the wrong type,
        naming it (non-positive initial values, inputs that are empty, not
        real or not finite, mismatched `x_train` / `y_train`, an unknown `get`
        or `method`), or a kernel that JAX cannot differentiate in the
        hyperparameters (use `method="Nelder-Mead"` then).
    """
    where = "fit_hyperparameters"
    if not callable(network):
        raise arguments.argument_error(where, "network", "a function of keyword hyperparameters returning a "
                                       "stax triple", type(network).__name__, TypeError)
    layout = output_axes.output_layout(where, y_train, trace_axes)
    n = layout.y_shape[0]
    output_axes.check_inputs_match(layout, x_train)
    get = arguments.one_name(where, "get", get, ("nngp", "ntk"))
    diag_reg_absolute_scale = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
    max_iterations = arguments.integer(where, "max_iterations", max_iterations, low=1)
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise arguments.argument_error(where, "method", f"a scipy.optimize.minimize method, one of {_METHODS}",
                                       method)
    if not isinstance(init, dict) or not init:
        raise arguments.argument_error(where, "init", "a non-empty dict {name: positive initial value}", init,
                                       TypeError if not isinstance(init, dict) else ValueError)
    fixed = dict(fixed or {})
    names = list(init)
    start = np.array([arguments.scalar(where, f"init[{name!r}]", init[name], low=0, low_open=True)
                      for name in names], np.float64)
    overlap = set(names) & set(fixed)
    if overlap:
        raise arguments.argument_error(where, "fixed", "disjoint from init", f"{fixed!r}, which repeats "
                                       f"{sorted(overlap)}")
    arguments.scalar(where, "fixed['diag_reg']", fixed.get("diag_reg", 0.0), low=0)
    y = output_axes.targets_2d(layout, np.asarray(y_train, np.float64))
    scale = 1.0 / y.size  # the objective per target, so tolerances do not depend on N

    def lml(log_values, x):
        values = dict(zip(names, jnp.exp(log_values)))
        hyper = {**fixed, **values}
        diag_reg = hyper.pop("diag_reg", 0.0)
        kernel_fn = network(**hyper)[2]
        k = kernel_fn(x, None, get, **kernel_fn_kwargs)
        k = _kernel_2d_traced(layout, jnp.asarray(k), n)
        return _log_marginal_likelihood(k.astype(jnp.float64), jnp.asarray(y), diag_reg, diag_reg_absolute_scale)

    evaluations = {"count": 0, "best": (np.inf, start)}

    with linalg.float64():
        x = jnp.asarray(x_train, jnp.float64)
        if method.lower() == "l-bfgs-b":
            # x is an argument, not a closed-over constant: it stays out of the compiled program.
            value_and_grad = jax.jit(jax.value_and_grad(lambda p, x: -scale * lml(p, x)))
            try:
                value_and_grad(jnp.log(start), x)
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                    jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError) as error:
                raise ValueError(
                    "JAX cannot differentiate this network's kernel in the hyperparameters "
                    f"{names}; use method='Nelder-Mead'. ({type(error).__name__})"
                ) from error

            def objective(p):
                value, grad = value_and_grad(jnp.asarray(p), x)
                value, grad = float(value), np.asarray(grad, np.float64)
                return _record(evaluations, p, value, grad)

            result = scipy.optimize.minimize(
                objective, np.log(start), jac=True, method=method, options={"maxiter": max_iterations}
            )
        else:
            value_only = jax.jit(lambda p, x: -scale * lml(p, x))

            def objective(p):
                return _record(evaluations, p, float(value_only(jnp.asarray(p), x)), None)

            result = scipy.optimize.minimize(
                objective, np.log(start), method=method, options={"maxiter": max_iterations}
            )
    best_value, best_point = evaluations["best"]
    if not np.isfinite(best_value):
        raise ValueError(
            "the log marginal likelihood (or its gradient) was not finite at any point tried: the kernel "
            "is not positive definite there, or not differentiable in the hyperparameters; start from "
            "other values, fit diag_reg too, or use method='Nelder-Mead'."
        )
    fitted = dict(zip(names, (float(v) for v in np.exp(best_point))))
    return FitResult(fitted, -best_value / scale, evaluations["count"], bool(result.success), str(result.message))


def _kernel_2d_traced(layout, k, n):
    """The flattening of `output_axes.kernel_2d` for traced kernels (shapes are static)."""
    if k.ndim != 2 * len(layout.kept_axes) or k.shape[0] != n or k.shape[1] != n:
        raise ValueError(f"kernel_fn(x_train, None) must have shape zipped from {layout.kept_shape}, got {k.shape}.")
    k = jnp.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    p = int(np.prod(layout.kept_shape))
    return k.reshape((p, p))


def _record(evaluations, point, value, grad):
    """Count an evaluation, keep the best finite one; a non-finite value becomes +inf (rejected by the optimizer)."""
    evaluations["count"] += 1
    if not np.isfinite(value) or (grad is not None and not np.all(np.isfinite(grad))):
        if grad is None:
            return np.inf
        return np.inf, np.zeros_like(grad)
    if value < evaluations["best"][0]:
        evaluations["best"] = (value, np.array(point, np.float64))
    return value if grad is None else (value, grad)
