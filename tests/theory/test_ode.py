"""gradient_descent (any loss, by diffrax) against the MSE closed form, SciPy's integrator and heavy-ball steps.

Cross-entropy, with and without momentum, is checked against neural-tangents in
test_predict_reference.py.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory import predict
from tests.theory.closed_form_mlp import mlp_kernels


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    x, x_test = rng.standard_normal((16, 4)), rng.standard_normal((5, 4))
    k = np.asarray(mlp_kernels(x, None, 2, 1.5, 0.1).ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, 2, 1.5, 0.1).ntk)
    labels = rng.integers(0, 3, 16)
    y = np.eye(3)[labels]
    f0, g0 = 0.1 * rng.standard_normal(y.shape), 0.1 * rng.standard_normal((5, 3))
    return k, k_td, y, f0, g0


def mse(f, y):
    return 0.5 * jnp.mean((f - y) ** 2)


def test_mse_ode_matches_closed_form(problem):
    k, k_td, y, f0, g0 = problem
    t = np.array([3.0, 0.0, 50.0, 400.0])  # unsorted on purpose
    ode = predict.gradient_descent(mse, k, y, learning_rate=0.5)(t, f0, g0, k_td)
    closed = predict.gradient_descent_mse(k, y, learning_rate=0.5)(t, f0, g0, k_td)
    for a, b in zip(ode, closed):
        assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-6


@pytest.mark.slow  # one more ODE compilation; momentum is also checked against neural-tangents
def test_momentum_matches_scipy_and_heavy_ball_steps(problem):
    """The damped-oscillator ODE (checked by SciPy) is the small-step limit of heavy-ball steps.

    Heavy ball: v <- mu v - lr K grad, f <- f + v.
    """
    k, k_td, y, f0, g0 = problem
    mu, lr, steps = 0.9, 1e-3, 3000
    train, test = predict.gradient_descent(mse, k, y, learning_rate=lr, momentum=mu)([steps / 3, steps], f0, g0, k_td)
    n = y.size

    def field(_, state):
        f, g, v, w = np.split(state, [f0.size, f0.size + g0.size, 2 * f0.size + g0.size])
        grad = (f.reshape(y.shape) - y) / n
        friction = (1 - mu) / np.sqrt(lr)
        return np.concatenate([v, w, (-k @ grad).ravel() - friction * v, (-k_td @ grad).ravel() - friction * w])

    tau = np.sqrt(lr) * np.array([steps / 3, steps])
    start = np.concatenate([f0.ravel(), g0.ravel(), np.zeros(f0.size + g0.size)])
    ref = solve_ivp(field, (0, tau[-1]), start, t_eval=tau, rtol=1e-11, atol=1e-12, method="DOP853").y.T
    assert np.max(np.abs(train.reshape(2, -1) - ref[:, : f0.size])) < 1e-6 * np.max(np.abs(ref))
    assert np.max(np.abs(test.reshape(2, -1) - ref[:, f0.size : f0.size + g0.size])) < 1e-6 * np.max(np.abs(ref))
    f, g, v, w = f0.copy(), g0.copy(), np.zeros_like(f0), np.zeros_like(g0)
    for _ in range(steps):
        grad = (f - y) / y.size
        v, w = mu * v - lr * k @ grad, mu * w - lr * k_td @ grad
        f, g = f + v, g + w
    assert max(np.max(np.abs(train[1] - f)), np.max(np.abs(test[1] - g))) < 1e-2 * np.max(np.abs(f))


def test_ode_state_in_and_out(problem):
    k, k_td, y, f0, g0 = problem
    fn = predict.gradient_descent(mse, k, y, learning_rate=0.5)
    t = np.array([3.0, 0.0, 50.0, 400.0])  # the shapes of test_mse_ode_matches_closed_form: no new compilation
    state = fn(t, predict.ODEState(f0, g0), None, k_td)
    assert isinstance(state, predict.ODEState) and state.qx_train is None
    assert state.fx_train.shape == (4,) + y.shape and state.fx_test.shape == (4,) + g0.shape
    # Resuming from the state at t=3 equals running on from the start.
    resumed = fn(t - 3.0 + np.array([0, 3, 0, 0]), predict.ODEState(state.fx_train[0], state.fx_test[0]), None, k_td)
    np.testing.assert_allclose(resumed.fx_test[2:], state.fx_test[2:], rtol=1e-6, atol=1e-9)
    assert fn(0.0, f0).shape == y.shape
    np.testing.assert_allclose(fn(0.0, f0), f0)


def test_ode_errors(problem):
    k, k_td, y, f0, g0 = problem
    fn = predict.gradient_descent(mse, k, y)
    with pytest.raises(ValueError, match="finite times"):
        fn(None, f0)
    with pytest.raises(ValueError, match="`t` must be real numbers >= 0, finite"):
        fn(np.inf, f0)
    with pytest.raises(ValueError, match="momentum"):
        fn(1.0, predict.ODEState(f0, None, f0))
    with pytest.raises(ValueError, match="k_test_train"):
        fn(1.0, f0, g0)
    with pytest.raises(ValueError, match="momentum"):
        predict.gradient_descent(mse, k, y, momentum=1.5)
