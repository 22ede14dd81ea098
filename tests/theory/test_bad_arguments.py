"""Issue 10, item 2 (theory): every bad argument ends in an error naming it, never in a silent wrong answer.

Each case below returned a result (often plausible, sometimes NaN-free but wrong) or failed with a
raw NumPy/JAX error before `theory.arguments`; each asserts the error type and that the message
names the argument (`kernels.checks.argument_error`'s wording: "argument `name` must be ...").
"""
import re

import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory import criticality, deep_linear, eigenlearning, high_dim, predict
from tests.theory.closed_form_mlp import mlp_kernel_fn, mlp_kernels


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((6, 3)), rng.standard_normal((2, 3))
    y = rng.standard_normal((6, 2))
    k = np.asarray(mlp_kernels(x, None, 1, 1.5, 0.1).ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, 1, 1.5, 0.1).ntk)
    return x, x_test, y, k, k_td


def network(depth=1, W_std=1.5, b_std=0.1):
    return None, None, mlp_kernel_fn(depth, W_std, b_std)


def mse(f, y):
    return 0.5 * jnp.mean((f - y) ** 2)


def raises(kind, argument, fn, *args, **kwargs):
    with pytest.raises(kind, match=re.escape(f"argument `{argument}`")):
        fn(*args, **kwargs)


# Times: complex, string, boolean, NaN and negative `t` in every predictor.
BAD_TIMES = [(1j, TypeError), (1 + 0j, TypeError), ("1", TypeError), (True, TypeError), (np.nan, ValueError),
             (-1.0, ValueError), (np.array([1.0, -2.0]), ValueError)]


@pytest.mark.parametrize("t, kind", BAD_TIMES)
def test_times_are_real_and_non_negative(problem, t, kind):
    x, x_test, y, k, k_td = problem
    raises(kind, "t", predict.gradient_descent_mse(k, y), t, 0.0)
    raises(kind, "t", predict.gradient_descent_mse_ensemble(mlp_kernel_fn(1, 1.5, 0.1), x, y), t, x_test)
    raises(kind, "t", predict.gradient_descent(mse, k, y), t, 0.0)
    raises(kind, "t", deep_linear.mode_strength, t, 1.0, 0.1)
    raises(kind, "t", high_dim.generalization_error, t, 2.0)
    raises(kind, "steps", predict.gradient_descent_mse_discrete(k, y, 1.0), t, 0.0)


def test_negative_time_is_refused_not_integrated_backwards(problem):
    """neural-tangents accepts t < 0 silently; gradient flow backwards amplifies exp(s lambda)."""
    _, _, y, k, _ = problem
    raises(ValueError, "t", predict.gradient_descent_mse(k, y), -0.5, 0.0)


def test_max_learning_rate_of_a_kernel_that_is_not_psd(problem):
    _, _, y, k, _ = problem
    raises(ValueError, "ntk_train_train", predict.max_learning_rate, -k, y.size)  # was a negative rate
    evals, evecs = np.linalg.eigh(k)
    indefinite = evecs @ np.diag(np.where(np.arange(6) == 0, -0.01 * evals[-1], evals)) @ evecs.T
    raises(ValueError, "ntk_train_train", predict.max_learning_rate, indefinite, y.size)  # was plausible
    raises(ValueError, "ntk_train_train", predict.max_learning_rate, np.zeros((3, 3)))
    raises(TypeError, "ntk_train_train", predict.max_learning_rate, k + 0j)
    raises(ValueError, "ntk_train_train", predict.max_learning_rate, np.zeros((0, 0)))
    # Rounding-level negative eigenvalues (float32) are still accepted.
    assert predict.max_learning_rate(k.astype(np.float32), y.size) > 0


@pytest.mark.parametrize("size, kind", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_max_learning_rate_of_a_bad_y_train_size(problem, size, kind):
    raises(kind, "y_train_size", predict.max_learning_rate, problem[3], size)  # 0 returned 0.0


def test_max_learning_rate_other_arguments(problem):
    k = problem[3]
    raises(ValueError, "momentum", predict.max_learning_rate, k, momentum=np.nan)
    raises(ValueError, "eps", predict.max_learning_rate, k, eps=-1.0)  # was accepted


@pytest.mark.parametrize("bad, kind", [(lambda a: a.astype(str), TypeError), (lambda a: a.astype(object), TypeError),
                                       (lambda a: a + 0j, TypeError), (lambda a: a[:0], ValueError)])
def test_arrays_that_are_not_real_or_are_empty(problem, bad, kind):
    x, x_test, y, k, k_td = problem
    raises(kind, "y_train", predict.gradient_descent_mse, k, bad(y))
    raises(kind, "y_train", predict.gp_inference, k, bad(y))
    raises(kind, "y_train", theory.log_marginal_likelihood, k, bad(y))
    raises(kind, "x_train", predict.gradient_descent_mse_ensemble, mlp_kernel_fn(), bad(x), y)
    raises(kind, "x_train", theory.fit_hyperparameters, network, bad(x), y, {"W_std": 1.0})
    raises(kind, "x_test", predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y), 1.0, bad(x_test))
    flow = predict.gradient_descent_mse(k, y)
    raises(kind, "k_test_train", flow, 1.0, 0.0, 0.0, bad(k_td))  # complex and empty were silent
    if kind is TypeError:
        raises(kind, "k_train_train", predict.gradient_descent_mse, bad(k), y)  # complex was silent
        raises(kind, "fx_train_0", flow, 1.0, bad(np.zeros_like(y)))
        raises(kind, "ntk_train_train", predict.max_learning_rate, bad(k))


def test_fitting_on_zero_samples(problem):
    x, _, y, _, _ = problem
    raises(ValueError, "y_train", predict.gradient_descent_mse_ensemble, mlp_kernel_fn(), x[:0], y[:0])
    raises(ValueError, "y_train", theory.fit_hyperparameters, network, x[:0], y[:0], {"W_std": 1.0})
    raises(ValueError, "y_train", predict.gradient_descent_mse, np.zeros((0, 0)), y[:0])


def test_nan_inputs_are_refused_naming_them(problem):
    x, x_test, y, _, _ = problem
    bad = x.copy()
    bad[2, 1] = np.nan
    raises(ValueError, "x_train", theory.fit_hyperparameters, network, bad, y, {"W_std": 1.0})
    raises(ValueError, "x_train", predict.gradient_descent_mse_ensemble, mlp_kernel_fn(), bad, y)
    raises(ValueError, "x_test", predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y), 1.0, bad)


def test_x_train_and_y_train_counts_and_test_feature_shape(problem):
    x, x_test, y, _, _ = problem
    raises(ValueError, "x_train", predict.gradient_descent_mse_ensemble, mlp_kernel_fn(), x[:-1], y)
    raises(ValueError, "x_train", theory.fit_hyperparameters, network, x[:-1], y, {"W_std": 1.0})
    raises(ValueError, "x_test", predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y), 1.0, x_test[:, :2])


def test_get_is_parsed_once_case_insensitive(problem):
    x, x_test, y, k, k_td = problem
    ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(1, 1.5, 0.1), x, y)
    gp = predict.gp_inference(k, y)
    for fn, args in ((ensemble, (1.0, x_test)), (gp, ())):
        kwargs = {} if fn is ensemble else {"k_test_train": k_td}
        raises(ValueError, "get", fn, *args, get=(), **kwargs)
        raises(ValueError, "get", fn, *args, get=("ntk", "ntk"), **kwargs)  # was "duplicate field name"
        raises(TypeError, "get", fn, *args, get=123, **kwargs)  # was "not iterable"
        np.testing.assert_array_equal(fn(*args, get="NTK", **kwargs), fn(*args, get="ntk", **kwargs))
    assert theory.fit_hyperparameters(network, x, y, {"W_std": 1.0}, get="NTK", max_iterations=2).n_evaluations > 0
    raises(ValueError, "get", theory.fit_hyperparameters, network, x, y, {"W_std": 1.0}, get=("nngp", "ntk"))


def test_nonsense_scalars_and_flags(problem):
    x, _, y, k, _ = problem
    raises(TypeError, "learning_rate", predict.gradient_descent_mse, k, y, learning_rate=1j)
    raises(TypeError, "diag_reg", predict.gradient_descent_mse, k, y, diag_reg=1j)
    raises(TypeError, "diag_reg_absolute_scale", predict.gp_inference, k, y, diag_reg_absolute_scale="False")
    raises(TypeError, "compute_cov", predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y), 1.0,
           compute_cov="yes")
    raises(ValueError, "max_iterations", theory.fit_hyperparameters, network, x, y, {"W_std": 1.0},
           max_iterations=-1)  # was accepted
    raises(ValueError, "method", theory.fit_hyperparameters, network, x, y, {"W_std": 1.0}, method="foo")
    raises(ValueError, "init['W_std']", theory.fit_hyperparameters, network, x, y, {"W_std": np.nan})
    raises(ValueError, "rtol", predict.gradient_descent, mse, k, y, rtol=-1.0)  # was accepted
    raises(ValueError, "max_steps", predict.gradient_descent, mse, k, y, max_steps=0)
    raises(TypeError, "loss", predict.gradient_descent, 3, k, y)
    raises(TypeError, "solver", predict.gradient_descent, mse, k, y, solver="tsit5")


def test_ode_loss_with_a_nan_gradient(problem):
    _, _, y, k, _ = problem
    # NaN at the start: the gradient of sqrt(f - 10) at f = 0.
    raises(ValueError, "loss", predict.gradient_descent(lambda f, y: jnp.sum(jnp.sqrt(f - 10)), k, y), 1.0, 0.0)
    # NaN on the way: sqrt(0.6 - f) pushes f up to 0.6, where its gradient becomes infinite, then NaN.
    on_the_way = predict.gradient_descent(lambda f, y: jnp.sum(jnp.sqrt(0.6 - f)), k, y, max_steps=500)
    with pytest.raises(ValueError, match="`loss` stopped before t="):
        on_the_way([1.0, 50.0], 0.0)


def test_closed_form_modules(problem):
    raises(TypeError, "eigenvalues", eigenlearning.kernel_ridge_risk, np.array([1.0, 0.5]) + 0j, [1.0, 1.0], 3)
    raises(TypeError, "n", eigenlearning.kernel_ridge_risk, [1.0, 0.5], [1.0, 1.0], "3")  # was accepted
    raises(ValueError, "lam", high_dim.marchenko_pastur_density, np.nan, 2.0)  # returned 0.0
    raises(TypeError, "alpha", high_dim.generalization_error, 1.0, 2.0 + 1j)
    raises(ValueError, "cov12", criticality.relu_dual, np.nan, 1.0, 1.0)  # returned NaN
    raises(ValueError, "var1", criticality.relu_dual, 0.5, -1.0, 1.0)  # returned a number
    raises(ValueError, "cov12", criticality.kernel_recursion, criticality.relu_dual, [], [], [], 1, 2.0)
    raises(TypeError, "C_W", criticality.kernel_recursion, criticality.relu_dual, 0.5, 1.0, 1.0, 1, "2")
    raises(ValueError, "degree", criticality.quadrature_dual, np.tanh, np.tanh, degree=0)
    raises(TypeError, "K", criticality.susceptibilities, criticality.relu_dual, 1j, 2.0)
    raises(TypeError, "width", criticality.relu_output_kurtosis, 10 + 1j, 1)


def test_non_symmetric_train_kernel_is_refused_as_such(problem):
    """It was reported as "not positive semi-definite: smallest eigenvalue -0.46", unnamed."""
    x, x_test, y, k, k_td = problem
    bad = k.copy()
    bad[0, 1] += 0.5 * np.max(np.abs(k))
    for fn in (lambda: theory.predict.gradient_descent_mse(bad, y)(1.0, 0.0),
               lambda: predict.gp_inference(bad, y)("nngp", k_test_train=k_td),
               lambda: theory.log_marginal_likelihood(bad, y)):
        with pytest.raises(ValueError, match=r"argument `k_train_train[^`]*` must be symmetric"):
            fn()
    # float32 rounding is not asymmetry
    k32 = np.asarray(k, np.float32)
    k32[0, 1] *= 1 + 1e-6
    predict.gradient_descent_mse(k32, y)(1.0, 0.0)


def test_network_that_returns_no_triple_is_named(problem):
    x, _, y, _, _ = problem
    raises(TypeError, "network", theory.KernelRegressor(network=lambda **kw: 3).fit, x, y)
    raises(TypeError, "network", theory.KernelRegressor(network=lambda **kw: (None, None)).fit, x, y)


@pytest.mark.parametrize("phi, dphi, degree", [
    (np.tanh, lambda u: 1 - np.tanh(u) ** 2, 1),   # gave an all-zero kernel
    (np.tanh, lambda u: 1 - np.tanh(u) ** 2, 2),   # 8% off
    (lambda u: np.maximum(u, 0), lambda u: (u > 0) * 1.0, 4),  # 0.6425 against 0.609
])
def test_quadrature_dual_with_too_few_nodes_is_refused(phi, dphi, degree):
    with pytest.raises(ValueError, match=r"argument `degree`.*0\.001.*estimated relative error"):
        criticality.quadrature_dual(phi, dphi, degree=degree)
