"""Ill-conditioned and non-PSD kernels: accurate answers, reported jitter or clear errors, never NaN."""
import warnings

import numpy as np
import pytest

from theory import predict
from theory.linalg import MAX_RELATIVE_JITTER, JitterWarning
from tests.theory import oracle
from tests.theory.closed_form_mlp import mlp_kernels


def _data(n=30, m=8, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((m, d))


def _no_warning(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitterWarning)
        return fn(*args)


def test_duplicated_training_points():
    """An exactly singular kernel: finite t needs no jitter; t=None reports one and gives the pseudo-inverse answer."""
    x, x_test = _data()
    x = np.concatenate([x, x[:6]])
    y = np.sin(x[:, :2])
    k = np.asarray(mlp_kernels(x, None, 3, 1.5, 0.1).ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, 3, 1.5, 0.1).ntk)
    flow = predict.gradient_descent_mse(k, y)
    limit = k_td @ np.linalg.pinv(k, rcond=1e-12) @ y
    late = _no_warning(flow, 1e7, None, 0.0, k_td)
    assert np.all(np.isfinite(late))
    np.testing.assert_allclose(late, limit, rtol=1e-6, atol=1e-8)
    with pytest.warns(JitterWarning, match=r"k_train_train of shape \(36, 36\).*jitter"):
        inf = flow(None, None, 0.0, k_td)
    np.testing.assert_allclose(inf, limit, rtol=1e-6, atol=1e-8)
    # Inconsistent labels on the duplicates still give finite predictions.
    y_bad = y.copy()
    y_bad[-6:] += 1.0
    with pytest.warns(JitterWarning):
        assert np.all(np.isfinite(predict.gradient_descent_mse(k, y_bad)(None, None, 0.0, k_td)))
    assert np.all(np.isfinite(predict.gradient_descent_mse(k, y_bad)([1.0, 1e9], None, 0.0, k_td)))


@pytest.mark.parametrize("depth", [12, 40])
def test_deep_erf_network_in_its_ordered_phase(depth):
    """Deep Erf with small weights: correlations -> 1, the kernel tends to rank one."""
    x, x_test = _data()
    y = np.sin(x[:, :1])
    k = np.asarray(mlp_kernels(x, None, depth, 0.6, 0.3, "erf").ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, depth, 0.6, 0.3, "erf").ntk)
    evals = np.linalg.eigvalsh(k)
    assert evals[0] < 1e-8 * evals[-1]  # near-singular indeed
    flow = predict.gradient_descent_mse(k, y)
    for t in ([1.0, 100.0, 1e6], None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = flow(t, None, 0.0, k_td)
        assert np.all(np.isfinite(out))
        assert all(issubclass(w.category, JitterWarning) for w in caught)
    # With diag_reg the ridge answer is well defined and needs no jitter.
    ridge = _no_warning(predict.gradient_descent_mse(k, y, diag_reg=1e-6), None, None, 0.0, k_td)
    reg = 1e-6 * np.trace(k) / len(k)
    ref = k_td @ np.linalg.solve(k + reg * np.eye(len(k)), y)
    np.testing.assert_allclose(ridge, ref, rtol=1e-6, atol=1e-9)


def test_cnn_global_average_pooling_kernel_from_oracle():
    """The oracle's GAP CNN kernels (correlated, small) with and without diag_reg."""
    case = oracle.case(oracle.load(), "cnn2d_circular_globalavgpool")
    y = np.arange(8.0).reshape(4, 2)
    for get in ("nngp", "ntk"):
        flow = predict.gradient_descent_mse(case[f"{get}_11"], y)
        for t in ([0.0, 10.0], None):
            assert np.all(np.isfinite(_no_warning(flow, t, None, 0.0, case[get].T)))


def test_cnn_global_average_pooling_with_shifted_copies():
    """A circular GAP CNN kernel is invariant to circular shifts: shifted copies are duplicates."""
    network_from_spec = oracle.network_from_spec_or_skip()
    spec = [
        ["Conv", {"out_chan": 64, "filter_shape": [3, 3], "padding": "CIRCULAR", "W_std": 1.5, "b_std": 0.1}],
        ["Relu", {}],
        ["GlobalAvgPool", {}],
        ["Dense", {"out_dim": 1}],
    ]
    _, _, kernel_fn = network_from_spec(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 4, 2))
    x = np.concatenate([x, np.roll(x[:3], 1, axis=1)])
    x_test = rng.standard_normal((3, 4, 4, 2))
    y = np.sin(x.reshape(len(x), -1)[:, :2])
    k_dd = kernel_fn(x, None, ("nngp", "ntk"))
    k_td = kernel_fn(x_test, x, ("nngp", "ntk"))
    evals = np.linalg.eigvalsh(np.asarray(k_dd.ntk, np.float64))
    assert evals[0] < 1e-10 * evals[-1]  # singular indeed
    fn = predict.gradient_descent_mse(np.asarray(k_dd.ntk), y)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for t in (1.0, 1e6, None):
            assert np.all(np.isfinite(fn(t, None, 0.0, np.asarray(k_td.ntk))))
        out = predict.gp_inference(k_dd, y)(None, k_td, kernel_fn(x_test, None, ("nngp", "ntk")))
    for g in out:
        assert np.all(np.isfinite(g.mean)) and np.all(np.isfinite(g.covariance))


def test_slightly_indefinite_kernel_gets_reported_jitter():
    x, x_test = _data()
    y = np.sin(x[:, :1])
    k = np.asarray(mlp_kernels(x, None, 2, 1.5, 0.1).ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, 2, 1.5, 0.1).ntk)
    evals, evecs = np.linalg.eigh(k)
    scale = np.mean(np.diag(k))
    evals[:2] = [-1e-7 * scale, 0.0]  # e.g. float32 rounding of a singular kernel
    bad = (evecs * evals) @ evecs.T
    flow = predict.gradient_descent_mse(bad, y)
    with pytest.warns(JitterWarning, match="jitter"):
        assert np.all(np.isfinite(flow(None, None, 0.0, k_td)))
    with pytest.warns(JitterWarning, match="negative eigenvalues"):
        assert np.all(np.isfinite(flow([1.0, 1e3], None, 0.0, k_td)))


def test_indefinite_kernel_is_a_clear_error():
    x, x_test = _data()
    y = np.sin(x[:, :1])
    k = np.asarray(mlp_kernels(x, None, 2, 1.5, 0.1).ntk)
    k_td = np.asarray(mlp_kernels(x_test, x, 2, 1.5, 0.1).ntk)
    shift = np.linalg.eigvalsh(k)[0] + 10 * MAX_RELATIVE_JITTER * np.mean(np.diag(k))
    bad = k - shift * np.eye(len(k))  # smallest eigenvalue -10 x the largest jitter
    flow = predict.gradient_descent_mse(bad, y)
    with pytest.raises(ValueError, match=r"k_train_train of shape \(30, 30\) is not positive semi-definite"):
        flow(None, None, 0.0, k_td)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        flow(1.0, None, 0.0, k_td)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        predict.gp_inference(bad, y)("nngp", k_td)
