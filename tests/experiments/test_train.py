"""The training engine follows the documented loss/time convention exactly, and
an ensemble trained under vmap is the same as the networks trained one by one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from experiments import train as tr


def mlp(width, out_dim=1, b_std=0.1):
    """A two-layer ReLU network in NTK parameterization, neural-tangents' signatures."""
    def init_fn(rng, input_shape):
        k1, k2, k3, k4 = jax.random.split(rng, 4)
        d = input_shape[-1]
        params = ((jax.random.normal(k1, (d, width)), jax.random.normal(k2, (width,))),
                  (jax.random.normal(k3, (width, out_dim)), jax.random.normal(k4, (out_dim,))))
        return input_shape[:-1] + (out_dim,), params

    def apply_fn(params, x):
        (w1, b1), (w2, b2) = params
        h = jax.nn.relu(x @ w1 / jnp.sqrt(x.shape[-1]) + b_std * b1)
        return h @ w2 / jnp.sqrt(width) + b_std * b2

    return init_fn, apply_fn


def linear_apply(w, x):
    return x @ w


@pytest.fixture
def linear_problem():
    """An over-parameterised linear model (d > N) with K = 3 outputs, float64."""
    rng = np.random.default_rng(0)
    n, m, d, k = 8, 5, 20, 3
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    x_test = rng.standard_normal((m, d)) / np.sqrt(d)
    y = rng.standard_normal((n, k))
    w0 = rng.standard_normal((d, k))
    return x, y, x_test, w0


def test_linear_model_discrete_steps_are_exact(linear_problem):
    """f_s - y = (I - lr * Theta / y.size)^s (f_0 - y), Theta = X X^T per output."""
    x, y, x_test, w0 = linear_problem
    lr, steps = 0.7, [0, 1, 5, 40]
    result = tr.train(linear_apply, jnp.asarray(w0), x, y, learning_rate=lr,
                      record_steps=steps, x_test=x_test)
    step_matrix = np.eye(len(x)) - lr * (x @ x.T) / y.size
    for i, s in enumerate(steps):
        expected = np.linalg.matrix_power(step_matrix, s) @ (x @ w0 - y) + y
        np.testing.assert_allclose(result.train_outputs[i], expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.times, np.array(steps) * lr)
    assert result.train_outputs.shape == (4, 8, 3) and result.test_outputs.shape == (4, 5, 3)
    np.testing.assert_allclose(
        result.train_loss, np.sum((result.train_outputs - y) ** 2, axis=(1, 2)) / (2 * y.size))


def test_linear_model_follows_gradient_flow_with_factor_one_over_y_size(linear_problem):
    """At small learning rate, f_t = y + exp(-t Theta / y.size)(f_0 - y) on the
    training points, and on test points
    f_t(x*) = f_0(x*) + Theta(x*, X) Theta^-1 (I - exp(-t Theta / y.size)) (y - f_0)
    (Lee et al. 2019, eqs. 10-11 with 1/|D| -> 1/y.size)."""
    x, y, x_test, w0 = linear_problem
    lr, steps = 1e-3, [0, 2000, 8000]
    result = tr.train(linear_apply, jnp.asarray(w0), x, y, learning_rate=lr,
                      record_steps=steps, x_test=x_test)
    theta, theta_test = x @ x.T, x_test @ x.T
    f0, f0_test = x @ w0, x_test @ w0

    def flow(t, scale):
        decay = scipy.linalg.expm(-t * theta / scale)
        train = y + decay @ (f0 - y)
        test = f0_test + theta_test @ np.linalg.solve(theta, (np.eye(len(x)) - decay) @ (y - f0))
        return train, test

    for i, t in enumerate(result.times):
        train, test = flow(t, y.size)
        # discretisation error is O(lr * t * lambda^2); here well below 1e-3
        np.testing.assert_allclose(result.train_outputs[i], train, atol=2e-3)
        np.testing.assert_allclose(result.test_outputs[i], test, atol=2e-3)
    # The factor matters: normalising by the number of examples instead is far off.
    wrong_train, _ = flow(result.times[-1], len(x))
    assert np.abs(np.asarray(result.train_outputs[-1]) - wrong_train).max() > 0.05


def test_trajectory_matches_theory_predict_at_t_equal_steps(linear_problem):
    """The contract with `theory.predict` (neural-tangents' API): its `t` counts
    steps, so a trajectory is compared at t = trajectory.steps."""
    predict = pytest.importorskip("theory.predict")
    x, y, x_test, w0 = linear_problem
    lr, steps = 1e-3, [0, 2000, 8000]
    result = tr.train(linear_apply, jnp.asarray(w0), x, y, learning_rate=lr,
                      record_steps=steps, x_test=x_test)
    predict_fn = predict.gradient_descent_mse(x @ x.T, y, lr)
    train, test = predict_fn(result.steps.astype(float), x @ w0, x_test @ w0, x_test @ x.T)
    np.testing.assert_allclose(result.train_outputs, train, atol=2e-3)
    np.testing.assert_allclose(result.test_outputs, test, atol=2e-3)


def _empirical_ntk(apply_fn, x):
    """Theta(x, x) = J J^T of a one-output network, from full Jacobians."""
    def ntk(params):
        jac = jax.jacobian(lambda p: apply_fn(p, x)[:, 0])(params)
        flat = jnp.concatenate([j.reshape(len(x), -1) for j in jax.tree_util.tree_leaves(jac)], 1)
        return flat @ flat.T
    return ntk


def test_ensemble_under_vmap_equals_loop_and_records_ntk():
    init_fn, apply_fn = mlp(16)
    rng = np.random.default_rng(1)
    x, x_test = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    y = rng.standard_normal((6, 1))
    seeds = [0, 1]
    ntk_fn = jax.jit(_empirical_ntk(apply_fn, x))
    kwargs = dict(learning_rate=0.5, record_steps=[0, 3, 10], x_test=x_test,
                  y_test=np.zeros((4, 1)), ntk_fn=ntk_fn)
    stacked = tr.init_ensemble(init_fn, (-1, 3), seeds)
    together = tr.train_ensemble(apply_fn, stacked, x, y, **kwargs)
    assert together.train_outputs.shape == (2, 3, 6, 1) and together.ntk.shape == (2, 3, 6, 6)
    assert together.test_loss.shape == (2, 3)
    init_one = jax.jit(lambda key: init_fn(key, (-1, 3))[1])
    for i, seed in enumerate(seeds):
        params = init_one(jax.random.PRNGKey(seed))
        alone = tr.train(apply_fn, params, x, y, **kwargs)
        for field in ("train_outputs", "train_loss", "test_outputs", "test_loss", "ntk"):
            np.testing.assert_allclose(getattr(together, field)[i], getattr(alone, field),
                                       rtol=1e-9, atol=1e-12, err_msg=field)
        np.testing.assert_allclose(together.ntk[i, 0], ntk_fn(params), rtol=1e-10)
    assert np.all(np.diff(np.asarray(together.train_loss), axis=1) < 0)


def test_sgd_full_batch_is_gradient_descent_and_smaller_batches_differ():
    init_fn, apply_fn = mlp(32)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 2)), rng.standard_normal((8, 1))
    params = jax.jit(lambda key: init_fn(key, (-1, 2))[1])(jax.random.PRNGKey(0))
    kwargs = dict(learning_rate=0.3, record_steps=[0, 20, 200])
    gd = tr.train(apply_fn, params, x, y, **kwargs)
    # a batch of all N examples is the full gradient: the batch loss is divided by its own size
    full = tr.train(apply_fn, params, x, y, batch_size=8, key=jax.random.PRNGKey(0), **kwargs)
    np.testing.assert_allclose(full.train_outputs, gd.train_outputs, rtol=1e-9, atol=1e-12)
    # two copies of one network in an SGD ensemble draw different batches (split keys)
    twins = jax.tree_util.tree_map(lambda a: np.stack([a, a]), params)
    sgd = tr.train_ensemble(apply_fn, twins, x, y, batch_size=3, key=jax.random.PRNGKey(0), **kwargs)
    assert not np.allclose(sgd.train_outputs[0, 1], sgd.train_outputs[1, 1])
    assert not np.allclose(sgd.train_outputs[0, 1], gd.train_outputs[1])
    assert np.all(sgd.train_loss[:, -1] < 0.5 * sgd.train_loss[:, 0])


def test_bad_arguments_are_named(linear_problem):
    x, y, _, w0 = linear_problem
    w0 = jnp.asarray(w0)
    with pytest.raises(ValueError, match=r"outputs \(8, 3\), but y_train has shape \(8, 1\)"):
        tr.train(linear_apply, w0, x, y[:, :1], learning_rate=0.1, record_steps=[1])
    with pytest.raises(ValueError, match="nondecreasing"):
        tr.train(linear_apply, w0, x, y, learning_rate=0.1, record_steps=[5, 1])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        tr.train(linear_apply, w0, x, y, learning_rate=0.1, record_steps=[1], batch_size=2)
    with pytest.warns(RuntimeWarning, match="stable limit"):
        tr.train(linear_apply, w0, x, y, learning_rate=1e4, record_steps=[0, 400])
