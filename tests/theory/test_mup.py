"""theory.mup: the width-(d_in + d_out) network against the direct iteration of the second-moment
recursion, and against wide finite muP networks written out here in NumPy (Yang & Hu 2021's
abc form: W1 = n^{1/2} w1, w1 ~ N(0, 1/(n d_in)); W2 = n^{-1/2} w2, w2 ~ N(0, 1/n); SGD on w)."""
import numpy as np
import pytest

from theory import mup

D_IN, D_OUT, N_TRAIN, ETA, STEPS = 3, 2, 6, 0.8, 25


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N_TRAIN, D_IN))
    return x, rng.normal(size=(N_TRAIN, D_OUT)), rng.normal(size=(4, D_IN))


def moment_recursion(x, y, eta, steps, w_in=1.0, w_out=1.0):
    """f_t(x) = x^T C_uv(t) with C <- A C A^T, A = I - eta [[0, M], [M^T, 0]], M = X^T R (module doc)."""
    c = np.diag(np.r_[np.full(D_IN, w_in ** 2 / D_IN), np.full(D_OUT, w_out ** 2)])
    outputs = []
    for _ in range(steps + 1):
        outputs.append(x @ c[:D_IN, D_IN:])
        m = x.T @ ((x @ c[:D_IN, D_IN:] - y) / y.size)
        a = np.eye(D_IN + D_OUT)
        a[:D_IN, D_IN:] -= eta * m
        a[D_IN:, :D_IN] -= eta * m.T
        c = a @ c @ a.T
    return np.stack(outputs)


def finite_mup_network(x, y, x_test, eta, steps, width, seed):
    """A width-n muP network, trained by gradient descent on its stored weights w1, w2."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(D_IN, width)) / np.sqrt(width * D_IN)
    w2 = rng.normal(size=(width, D_OUT)) / np.sqrt(width)
    for _ in range(steps):
        h = np.sqrt(width) * (x @ w1)
        residual = (h @ w2 / np.sqrt(width) - y) / y.size
        grad_w2 = h.T @ residual / np.sqrt(width)
        grad_w1 = np.sqrt(width) * x.T @ (residual @ w2.T / np.sqrt(width))
        w1, w2 = w1 - eta * grad_w1, w2 - eta * grad_w2
    return np.sqrt(width) * (x_test @ w1) @ w2 / np.sqrt(width)


def test_the_limit_network_equals_the_direct_moment_recursion(data):
    x, y, _ = data
    limit = mup.linear_mup_limit(x, y, ETA, list(range(STEPS + 1)))
    np.testing.assert_allclose(limit.train_outputs, moment_recursion(x, y, ETA, STEPS), atol=1e-12)
    assert np.abs(limit.train_outputs[-1] - limit.train_outputs[0]).max() > 0.3  # it did move


def test_a_wrong_limit_differs_from_the_recursion(data):
    x, y, _ = data
    wrong = mup.linear_mup_limit(x, y, ETA, [STEPS], W_std_out=1.1)  # the readout scale off by 10%
    assert np.abs(wrong.train_outputs[-1] - moment_recursion(x, y, ETA, STEPS)[-1]).max() > 1e-3


def test_wide_finite_networks_converge_at_rate_one_over_root_width(data):
    x, y, x_test = data
    limit = mup.linear_mup_limit(x, y, ETA, [STEPS], x_test=x_test).test_outputs[-1]
    widths = [256, 1024, 4096]
    distances = [np.sqrt(np.mean([np.mean((finite_mup_network(x, y, x_test, ETA, STEPS, n, s) - limit) ** 2)
                                  for s in range(24)])) for n in widths]
    slope = np.polyfit(np.log(widths), np.log(distances), 1)[0]
    assert -0.65 < slope < -0.35, (distances, slope)
    assert distances[-1] < 0.05 * np.abs(limit).max()
    # a limit 10% off is not approached: the widest networks stay away from it
    assert np.sqrt(np.mean((1.1 * limit - limit) ** 2)) > 3 * distances[-1]


def test_feature_change_after_one_step(data):
    x, y, x_test = data
    theory = mup.feature_change_rms(x, y, ETA, x_test)
    width, seeds = 4096, 16
    samples = []
    for s in range(seeds):
        rng = np.random.default_rng(100 + s)
        u = rng.normal(size=(width, D_IN)) / np.sqrt(D_IN)
        v = rng.normal(size=(width, D_OUT))
        residual = ((x @ u.T) @ v / width - y) / y.size
        du = -ETA * v @ (x.T @ residual).T                   # per-coordinate step of u_i
        samples.append(np.mean((x_test @ du.T) ** 2, axis=1))  # ||Delta h||^2 / n per probe
    samples = np.array(samples)
    z = (samples.mean(0) - theory ** 2) / (samples.std(0, ddof=1) / np.sqrt(seeds))
    assert np.all(np.abs(z) < 4), z
    assert np.all(np.abs(samples.mean(0) / (1.1 * theory) ** 2 - 1) > 0.1)  # a 10% error is seen


def test_bad_arguments_are_refused(data):
    x, y, _ = data
    with pytest.raises(ValueError, match="learning_rate"):
        mup.linear_mup_limit(x, y, -1.0, [1])
    with pytest.raises(ValueError, match="record_steps"):
        mup.linear_mup_limit(x, y, 0.1, [3, 1])
    with pytest.raises(ValueError, match="x_train"):
        mup.linear_mup_limit(x[:, 0], y, 0.1, [1])
