"""MSE training dynamics: discrete vs explicit steps, continuous limits, solvers, shapes, dtypes, errors."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from theory import linalg, predict, spectral
from tests.theory.closed_form_mlp import mlp_kernel_fn, mlp_kernels


def _problem(n=24, m=7, d=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    x, x_test = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    y = np.sin(x[:, :c]) + 0.1 * rng.standard_normal((n, c))
    k = mlp_kernels(x, None, 2, 1.5, 0.1)
    k_td = mlp_kernels(x_test, x, 2, 1.5, 0.1)
    return x, x_test, y, np.asarray(k.ntk), np.asarray(k_td.ntk)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
@pytest.mark.parametrize("lr_fraction", [0.3, 0.9, 1.5])
def test_discrete_matches_explicit_gradient_descent_steps(lr_fraction, diag_reg):
    """Closed form vs a loop of GD steps on the linearized model, f <- f - (lr/|y|) K (f - y)."""
    _, _, y, k, k_td = _problem()
    rng = np.random.default_rng(1)
    f_train, f_test = rng.standard_normal(y.shape), rng.standard_normal((k_td.shape[0], y.shape[1]))
    lr = lr_fraction * predict.max_learning_rate(k, y.size)
    k_reg = k + diag_reg * np.trace(k) / len(k) * np.eye(len(k))
    predict_fn = predict.gradient_descent_mse_discrete(k, y, lr, diag_reg=diag_reg)
    steps = [0, 1, 7, 50]
    train_pred, test_pred = predict_fn(steps, f_train, f_test, k_td)
    h = lr / y.size
    ft, fs = f_train.copy(), f_test.copy()
    for step in range(max(steps) + 1):
        if step in steps:
            i = steps.index(step)
            np.testing.assert_allclose(train_pred[i], ft, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(test_pred[i], fs, rtol=1e-9, atol=1e-9)
        residual = ft - y
        ft, fs = ft - h * k_reg @ residual, fs - h * k_td @ residual


def test_discrete_tends_to_gradient_flow_as_learning_rate_shrinks():
    _, _, y, k, k_td = _problem()
    flow = predict.gradient_descent_mse(k, y, learning_rate=1e-3)
    t = np.array([10.0, 1000.0, 20000.0])
    errors = []
    for lr in (1e-2, 1e-3):
        discrete = predict.gradient_descent_mse_discrete(k, y, lr)
        steps = np.round(t * 1e-3 / lr)
        ours = discrete(steps, 0.0, 0.0, k_td)[1]
        ref = flow(t, 0.0, 0.0, k_td)[1]
        errors.append(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    assert errors[1] < 1e-3
    assert errors[1] < errors[0] / 5  # first order in the learning rate


def test_infinite_time_is_kernel_ridge_regression():
    """t -> infinity (large t, t=None, t=inf, discrete steps=None) all equal the ridge solution."""
    _, _, y, k, k_td = _problem()
    reg = 1e-3 * np.trace(k) / len(k)
    ridge = k_td @ np.linalg.solve(k + reg * np.eye(len(k)), y)
    flow = predict.gradient_descent_mse(k, y, diag_reg=1e-3)
    np.testing.assert_allclose(flow(None, None, 0.0, k_td), ridge, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(flow(np.inf, None, 0.0, k_td), ridge, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(flow(1e12, None, 0.0, k_td), ridge, rtol=1e-7, atol=1e-10)
    gp = predict.gp_inference(k, y, diag_reg=1e-3)("ntk", k_td)
    np.testing.assert_allclose(gp, ridge, rtol=1e-9, atol=1e-12)
    discrete = predict.gradient_descent_mse_discrete(k, y, 0.5 * predict.max_learning_rate(k, y.size), diag_reg=1e-3)
    np.testing.assert_allclose(discrete(None, None, 0.0, k_td), ridge, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(flow(None, 0.0), y)  # train outputs reach the targets


def test_time_shapes_and_mixed_infinite_times():
    _, _, y, k, k_td = _problem()
    flow = predict.gradient_descent_mse(k, y)
    t = np.array([[0.0, 1.0, np.inf], [5.0, 2.0, 0.5]])
    train, test = flow(t, 0.0, 0.0, k_td)
    assert train.shape == (2, 3) + y.shape and test.shape == (2, 3, k_td.shape[0], y.shape[1])
    np.testing.assert_allclose(train[0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(test[0, 2], flow(None, 0.0, 0.0, k_td)[1], rtol=1e-12)
    np.testing.assert_allclose(test[1, 1], flow(2.0, 0.0, 0.0, k_td)[1], rtol=1e-12)
    assert flow(3.0, 0.0).shape == y.shape
    assert flow(3.0, None, 1.0, k_td).shape == (k_td.shape[0], y.shape[1])


def test_learning_rate_and_time_are_interchangeable():
    _, _, y, k, k_td = _problem()
    a = predict.gradient_descent_mse(k, y, learning_rate=2.0)(3.0, 0.0, 0.0, k_td)
    b = predict.gradient_descent_mse(k, y, learning_rate=1.0)(6.0, 0.0, 0.0, k_td)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)


def test_lanczos_agrees_with_eigh_and_auto_avoids_the_eigendecomposition(monkeypatch):
    # Thresholds lowered so a small problem takes the large-problem path.
    monkeypatch.setattr(spectral, "LANCZOS_MIN_SIZE", 64)
    monkeypatch.setattr(spectral, "LANCZOS_MAX_FRACTION", 0.5)
    _, _, y, k, k_td = _problem(n=150, m=7, d=8, c=2)
    t = np.array([0.5, 10.0, 300.0])
    ref = predict.gradient_descent_mse(k, y, diag_reg=1e-3, solver="eigh")(t, 0.5, 0.0, k_td)
    calls = []
    original = linalg._eigh
    monkeypatch.setattr(linalg, "_eigh", lambda k: calls.append(1) or original(k))
    for solver in ("lanczos", "auto"):
        ours = predict.gradient_descent_mse(k, y, diag_reg=1e-3, solver=solver)(t, 0.5, 0.0, k_td)
        for a, b in zip(ours, ref):
            assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-9
    assert not calls  # neither path computed an eigendecomposition
    # A request Lanczos cannot meet within its budget falls back to the eigendecomposition.
    monkeypatch.setattr(spectral, "LANCZOS_MAX_FRACTION", 0.1)
    hard = predict.gradient_descent_mse(k, y, solver="auto")(1e7, 0.5, 0.0, k_td)
    assert calls == [1]
    easy = predict.gradient_descent_mse(k, y, solver="eigh")(1e7, 0.5, 0.0, k_td)
    np.testing.assert_allclose(hard[1], easy[1], rtol=1e-9, atol=1e-12)


def test_more_times_reuse_one_decomposition(monkeypatch):
    calls = {"eigh": 0, "factor": 0}
    for name in calls:
        original = getattr(linalg, "_" + name)

        def counted(k, _original=original, _name=name):
            calls[_name] += 1
            return _original(k)

        monkeypatch.setattr(linalg, "_" + name, counted)
    _, x_test, y, k, k_td = _problem()
    flow = predict.gradient_descent_mse(k, y, solver="eigh")
    for t in (1.0, [2.0, 3.0], None, 10.0, None):
        flow(t, 0.0, 0.0, k_td)
        flow(t, 0.0, 1.0, 2 * k_td)
    assert calls == {"eigh": 1, "factor": 1}
    x, x_test, y, _, _ = _problem()
    ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y)
    for t in (1.0, None, [4.0, 5.0]):
        ensemble(t, x_test, "ntk", compute_cov=True)
        ensemble(t, x_test[:3], "ntk")
    assert calls == {"eigh": 2, "factor": 2}


def test_trace_axes_empty_with_block_kernel_equals_shared_kernel():
    """A kernel K ⊗ I given explicitly with trace_axes=() predicts what K with trace_axes=(-1,) does."""
    _, _, y, k, k_td = _problem(c=3)
    eye = np.eye(y.shape[1])
    k_full = np.einsum("ij,ab->iajb", k, eye).transpose(0, 2, 1, 3)  # zipped (N, N, C, C)
    k_td_full = np.einsum("ij,ab->iajb", k_td, eye).transpose(0, 2, 1, 3)
    shared = predict.gradient_descent_mse(k, y, diag_reg=1e-3)
    full = predict.gradient_descent_mse(k_full, y, diag_reg=1e-3, trace_axes=())
    for t in (2.0, None):
        for a, b in zip(full(t, 0.1, 0.0, k_td_full), shared(t, 0.1, 0.0, k_td)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_float32_in_float32_out_with_float64_solve():
    """A float32 kernel gets a float64 solve: the result is as accurate as float32 rounding of the answer."""
    _, _, y, k, k_td = _problem(n=60, d=3)
    k32, k_td32, y32 = k.astype(np.float32), k_td.astype(np.float32), y.astype(np.float32)
    ref = k_td32.astype(np.float64) @ np.linalg.solve(k32.astype(np.float64), y32.astype(np.float64))
    out = predict.gradient_descent_mse(k32, y32)(None, None, 0.0, k_td32)
    assert out.dtype == np.float32
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-6


def test_package_never_flips_x64_and_keeps_float32():
    """In a fresh process without x64: float32 in, float32 out, accurate solve, flag untouched."""
    code = textwrap.dedent(
        """
        import jax, numpy as np
        import theory
        from theory import predict
        assert not jax.config.jax_enable_x64
        rng = np.random.default_rng(0)
        a = rng.standard_normal((40, 40))
        k = (a @ a.T / 40 + 1e-4 * np.eye(40))
        y = rng.standard_normal((40, 1))
        k32, y32 = k.astype(np.float32), y.astype(np.float32)
        out = predict.gradient_descent_mse(k32, y32)(None, None, 0.0, k32[:5])
        k64, y64 = k32.astype(np.float64), y32.astype(np.float64)
        ref = k64[:5] @ np.linalg.solve(k64, y64)
        assert out.dtype == np.float32, out.dtype
        assert not jax.config.jax_enable_x64
        err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)) / np.max(np.abs(ref)))
        print(err)
        assert err < 1e-5, err
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_max_learning_rate_is_the_stability_limit():
    _, _, y, k, _ = _problem()
    lr = predict.max_learning_rate(k, y.size)
    np.testing.assert_allclose(lr, 2 * y.size / np.linalg.eigvalsh(k)[-1], rtol=1e-10)
    np.testing.assert_allclose(predict.max_learning_rate(k, y.size, momentum=0.5), 1.5 * lr, rtol=1e-10)
    big = np.kron(np.eye(20), k)  # large enough for the Lanczos path
    np.testing.assert_allclose(predict.max_learning_rate(big), lr * len(big) / y.size, rtol=1e-9)
    stable = predict.gradient_descent_mse_discrete(k, y, 0.99 * lr)
    assert np.all(np.isfinite(stable(None, 0.0)))
    unstable = predict.gradient_descent_mse_discrete(k, y, 1.05 * lr)
    with pytest.raises(ValueError, match="stability limit"):
        unstable(None, 0.0)
    grown = unstable([10, 200], 0.0)
    assert np.max(np.abs(grown[1] - y)) > 100 * np.max(np.abs(grown[0] - y))
    with pytest.raises(ValueError, match="diverged"):
        unstable(100_000, 0.0)


def test_ensemble_train_set_and_finite_time_covariance_limits():
    x, x_test, y, _, _ = _problem()
    kernel_fn = mlp_kernel_fn()
    ensemble = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-3)
    both = ensemble([1e9, np.inf], x_test, None, compute_cov=True)
    for g in ("nngp", "ntk"):
        gaussian = getattr(both, g)
        np.testing.assert_allclose(gaussian.mean[0], gaussian.mean[1], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gaussian.covariance[0], gaussian.covariance[1], rtol=1e-6, atol=1e-9)
    # At t = 0 the ensemble is the prior: mean 0, covariance the NNGP.
    prior = ensemble(0.0, x_test, ("ntk",), compute_cov=True).ntk
    np.testing.assert_allclose(prior.mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(prior.covariance, kernel_fn(x_test, None, "nngp"), rtol=1e-10)
    train = ensemble(None, None, "nngp", compute_cov=True)
    np.testing.assert_allclose(train.mean, y)
    np.testing.assert_allclose(train.covariance, 0.0)
    train_t = ensemble(0.0, None, "ntk", compute_cov=True)
    np.testing.assert_allclose(train_t.covariance, kernel_fn(x, None, "nngp"), rtol=1e-10)


def test_errors_name_the_argument():
    x, x_test, y, k, k_td = _problem()
    with pytest.raises(ValueError, match="diag_reg"):
        predict.gradient_descent_mse(k, y, diag_reg=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        predict.gradient_descent_mse(k, y, learning_rate=0.0)
    with pytest.raises(ValueError, match=r"`k_train_train` must be of shape \(24, 24\)"):
        predict.gradient_descent_mse(k[:-1, :-1], y)
    with pytest.raises(ValueError, match="`k_train_train` must be finite"):
        predict.gradient_descent_mse(np.where(np.eye(len(k)) > 0, np.nan, k), y)
    with pytest.raises(ValueError, match="solver"):
        predict.gradient_descent_mse(k, y, solver="qr")
    with pytest.raises(ValueError, match="trace_axes"):
        predict.gradient_descent_mse(k, y, trace_axes=(0,))
    flow = predict.gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match="k_test_train"):
        flow(1.0, 0.0, 0.0, k_td[:, :-1])
    with pytest.raises(ValueError, match="k_test_train"):
        flow(1.0, 0.0, 0.0, None)
    with pytest.raises(ValueError, match="`fx_train_0` must be given when fx_test_0 is None"):
        flow(1.0, None, None)
    with pytest.raises(ValueError, match="`t` must be real numbers >= 0"):
        flow(-1.0, 0.0)
    with pytest.raises(ValueError, match="fx_train_0"):
        flow(1.0, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="integers"):
        predict.gradient_descent_mse_discrete(k, y, 1.0)(2.5, 0.0)
    with pytest.raises(ValueError, match=r"`x_train` must be one example per row of y_train \(shape \(24, 2\)\); received shape \(23, 5\)"):
        predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x[:-1], y)
    ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y)
    with pytest.raises(ValueError, match="get"):
        ensemble(1.0, x_test, "ntkk")
    with pytest.raises(ValueError, match="get"):
        predict.gp_inference(k, y)("nngpp", k_td)
    with pytest.raises(ValueError, match="momentum"):
        predict.max_learning_rate(k, momentum=1.0)
