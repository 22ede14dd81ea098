"""`gradient_descent_mse_ensemble`'s keyword arguments for the test kernels (neural-tangents' pairing).

A graph network's `pattern` is given per input, ``(for x1, for x2)``: the train-train kernel takes
the training graphs' pair, `predict_fn` the test graphs' pair, and the test-train kernel must see
``(test graphs, training graphs)``. Independent truth: the infinite-time mean ``K_td K_dd^-1 y``
computed here from kernels called by hand.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from theory import predict


def _graphs(key, n, nodes=4):
    a = (jax.random.uniform(key, (n, nodes, nodes)) > 0.5).astype(jnp.float64)
    return a + jnp.swapaxes(a, 1, 2)


def test_pattern_pairs_test_with_train():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    x_train, x_test = jax.random.normal(k1, (5, 4, 3)), jax.random.normal(k2, (3, 4, 3))
    p_train, p_test = _graphs(k3, 5), _graphs(k4, 3)
    y_train = jnp.sin(x_train.sum((1, 2)))[:, None]
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Aggregate(), stax.Relu(), stax.GlobalAvgPool(),
                                  stax.Dense(1))
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-3,
                                                       pattern=(p_train, p_train))
    mean = predict_fn(None, x_test, "ntk", pattern=(p_test, p_test))

    k_dd = np.asarray(kernel_fn(x_train, None, "ntk", pattern=(p_train, p_train)))
    k_td = np.asarray(kernel_fn(x_test, x_train, "ntk", pattern=(p_test, p_train)))
    reg = k_dd + 1e-3 * np.trace(k_dd) / len(k_dd) * np.eye(len(k_dd))
    np.testing.assert_allclose(mean, k_td @ np.linalg.solve(reg, np.asarray(y_train)), rtol=1e-8, atol=1e-10)

    # What the merged keywords gave before: the test pattern against the training inputs.
    wrong = np.asarray(kernel_fn(x_test, x_train, "ntk", pattern=(p_test, p_test[:1].repeat(5, 0))))
    assert not np.allclose(wrong @ np.linalg.solve(reg, np.asarray(y_train)), mean, rtol=1e-3)


def test_other_keywords_must_agree():
    x = jnp.ones((3, 2))
    _, _, kernel_fn = stax.serial(stax.Dense(2), stax.Relu(), stax.Dense(1))
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x, jnp.ones((3, 1)), diag_reg=1e-2, block_size=0)
    with pytest.raises(ValueError, match=r"argument `block_size` must be the same value"):
        predict_fn(None, x, "nngp", block_size=1)


def test_keywords_without_x_test_only_repeat_the_train_kernels():
    """They are for the test kernels; with ``x_test=None`` none is computed (neural-tangents drops them).
    A repeat of the train-train kernel's keywords is accepted (neural-tangents' own tests pass those),
    anything else is refused by name rather than ignored."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    x, pattern = jax.random.normal(k1, (3, 4, 2)), _graphs(k2, 3)
    _, _, kernel_fn = stax.serial(stax.Dense(2), stax.Aggregate(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x, jnp.ones((3, 1)), diag_reg=1e-2,
                                                       pattern=(pattern, pattern))
    plain = predict_fn(1., None, "ntk")
    np.testing.assert_array_equal(predict_fn(1., None, "ntk", pattern=(pattern, jnp.array(pattern))), plain)
    with pytest.raises(ValueError, match=r"argument `pattern` must be absent when x_test is None"):
        predict_fn(1., None, "ntk", pattern=(pattern, 2 * pattern))
    with pytest.raises(ValueError, match=r"argument `diagonal_spatial` must be absent when x_test is None"):
        predict_fn(1., None, "ntk", diagonal_spatial=True)
