"""The accelerator code path (JAX on the device), exercised on the CPU by pretending the arrays live on a GPU.

On a CPU every solve runs on the host in SciPy; a kernel on an accelerator is
factorized there by jitted JAX code. Both must give the same answers.
"""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from theory import linalg, predict, spectral
from theory.linalg import JitterWarning
from tests.theory.closed_form_mlp import mlp_kernel_fn, mlp_kernels


@pytest.fixture
def device(monkeypatch):
    monkeypatch.setattr(linalg, "on_accelerator", lambda x: hasattr(x, "devices") and not isinstance(x, np.ndarray))


def _problem():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((24, 5)), rng.standard_normal((7, 5))
    y = np.sin(x[:, :2])
    k, k_td = mlp_kernels(x, None, 2, 1.5, 0.1), mlp_kernels(x_test, x, 2, 1.5, 0.1)
    return x, x_test, y, np.asarray(k.ntk), np.asarray(k_td.ntk)


def test_device_means_match_host(device, monkeypatch):
    monkeypatch.setattr(spectral, "LANCZOS_MIN_SIZE", 16)
    _, _, y, k, k_td = _problem()
    t = np.array([0.0, 1.0, 30.0, np.inf])
    host = predict.gradient_descent_mse(k, y, diag_reg=1e-3, solver="eigh")(t, 0.2, 0.0, k_td)
    for solver in ("eigh", "lanczos"):
        ours = predict.gradient_descent_mse(jnp.asarray(k), y, diag_reg=1e-3, solver=solver)(t, 0.2, 0.0, k_td)
        for a, b in zip(ours, host):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    steps = predict.gradient_descent_mse_discrete(jnp.asarray(k), y, 1.0)([3, 40], 0.0)
    np.testing.assert_allclose(steps, predict.gradient_descent_mse_discrete(k, y, 1.0)([3, 40], 0.0), rtol=1e-10)


def test_device_covariances_match_host(device):
    x, x_test, y, _, _ = _problem()
    kernel_fn = mlp_kernel_fn()

    def device_kernel_fn(*args, **kwargs):
        out = kernel_fn(*args, **kwargs)
        return jnp.asarray(out) if isinstance(out, np.ndarray) else type(out)(*map(jnp.asarray, out))

    host = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-3)
    ours = predict.gradient_descent_mse_ensemble(device_kernel_fn, x, y, diag_reg=1e-3)
    for x_eval in (x_test, None):
        a = ours(np.array([2.0, np.inf]), x_eval, None, compute_cov=True)
        b = host(np.array([2.0, np.inf]), x_eval, None, compute_cov=True)
        for g in ("nngp", "ntk"):
            np.testing.assert_allclose(getattr(a, g).mean, getattr(b, g).mean, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(getattr(a, g).covariance, getattr(b, g).covariance, rtol=1e-8, atol=1e-11)


def test_device_jitter_and_errors(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 4))
    x = np.concatenate([x, x[:4]])
    y = np.sin(x[:, :1])
    k = jnp.asarray(mlp_kernels(x, None, 2, 1.5, 0.1).ntk)
    with pytest.warns(JitterWarning, match="jitter"):
        out = predict.gradient_descent_mse(k, y)(None, None, 0.0, k[:5])
    assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        predict.gradient_descent_mse(k - 2 * jnp.eye(len(x)) * jnp.max(k), y)(None, None, 0.0, k[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitterWarning)
        assert np.all(np.isfinite(predict.gradient_descent_mse(k, y)([1.0, 100.0], 0.0)))
