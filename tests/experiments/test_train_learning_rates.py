"""Per-layer learning rates of the training engine against gradient descent written out in NumPy."""
import jax
import numpy as np
import pytest

from experiments import train
from kernels import stax


def test_scaled_steps_match_hand_written_gradient_descent():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=(5, 2)).astype(np.float32)
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Dense(2))
    params = init_fn(jax.random.PRNGKey(0), (-1, 3))[1]
    scales = ((2.0, None), (0.25, None))  # serial params are a tuple of per-layer tuples
    eta, steps = 0.3, 7
    trajectory = train.train(apply_fn, params, x, y, learning_rate=eta, record_steps=[steps],
                             learning_rate_scales=scales)
    # NTK parameterization: f = (x W1 / sqrt(3)) W2 / sqrt(4); loss |f - y|^2 / (2 y.size)
    w1, w2 = (np.asarray(params[0][0], np.float64), np.asarray(params[1][0], np.float64))
    for _ in range(steps):
        h = x @ w1 / np.sqrt(3)
        r = (h @ w2 / 2 - y) / y.size
        g2 = h.T @ r / 2
        g1 = x.T @ (r @ w2.T / 2) / np.sqrt(3)
        w1, w2 = w1 - eta * 2.0 * g1, w2 - eta * 0.25 * g2
    np.testing.assert_allclose(trajectory.train_outputs[-1], (x @ w1 / np.sqrt(3)) @ w2 / 2, rtol=2e-5)
    plain = train.train(apply_fn, params, x, y, learning_rate=eta, record_steps=[steps])
    assert np.abs(np.asarray(plain.train_outputs[-1]) - (x @ w1 / np.sqrt(3)) @ w2 / 2).max() > 1e-3


def test_abc_learning_rates_reads_widths_by_role():
    params = [(np.zeros((3, 8)), None), (), (np.zeros((8, 8)), np.zeros(8)), (np.zeros((8, 2)), None)]
    scales = train.abc_learning_rates(params, [("input", -1), None, ("hidden", 0.5), ("output", 1)])
    assert scales == [(8.0, None), (), (8 ** -0.5, 8 ** -0.5), (1 / 8, None)]
    stacked = [(np.zeros((5, 3, 8)), None), (), (np.zeros((5, 8, 8)), np.zeros((5, 8))), (np.zeros((5, 8, 2)), None)]
    assert train.abc_learning_rates(stacked, [("input", -1), None, ("hidden", 0.5), ("output", 1)]) == scales


@pytest.mark.parametrize("layers, match", [
    ([("input", -1)], "one entry per layer"),
    ([("middle", 0), None], r"layers\[0\]"),
    ([None, ("output", 1)], r"layers\[1\].*no weight matrix"),
])
def test_abc_learning_rates_refuses_bad_layers(layers, match):
    with pytest.raises(ValueError, match=match):
        train.abc_learning_rates([(np.zeros((3, 8)), None), ()], layers)


@pytest.mark.parametrize("scales, match", [
    ([(1.0, None)], "structure"),
    (((1.0, None), (-1.0, None)), "positive"),
    (((1.0, None), (float("inf"), None)), "positive"),
])
def test_bad_scales_are_refused(scales, match):
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Dense(2))
    params = init_fn(jax.random.PRNGKey(0), (-1, 3))[1]
    x, y = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=rf"learning_rate_scales.*{match}"):
        train.train(apply_fn, params, x, y, learning_rate=0.1, record_steps=[1], learning_rate_scales=scales)
