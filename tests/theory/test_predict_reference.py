"""`theory.predict` against tests/data/nt_predict_reference.npz (neural-tangents 0.6.5, float64).

Covers what the vendored oracle lacks: non-zero initial outputs, train-set
ensemble predictions and covariances at finite times, learning rates,
gp_inference's three modes, max_learning_rate and gradient_descent with
cross-entropy (plain and momentum). Agreement per array: max |ours - ref| /
max |ref| < 1e-6 (gradient_descent: neural-tangents integrated with
rtol = atol = 1.4e-8, so 1e-5 there).
"""
import json
import pathlib
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import predict
from tests.theory.oracle import relative_error

PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "nt_predict_reference.npz"
pytestmark = pytest.mark.skipif(not PATH.exists(), reason="nt_predict_reference.npz not generated yet")
Pair = namedtuple("Pair", ("nngp", "ntk"))
TOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    return np.load(PATH)


def _case_names():
    return json.loads(str(np.load(PATH)["_cases"])) if PATH.exists() else []


def _kernels(ref, name, which):
    return Pair(ref[f"{name}/k_{which}_nngp"], ref[f"{name}/k_{which}_ntk"])


def _table_kernel_fn(ref, name):
    """A kernel_fn that looks the stored kernels up by their inputs."""
    x_train, x_test = ref[f"{name}/x_train"], ref[f"{name}/x_test"]
    table = {
        ("train", None): _kernels(ref, name, "train_train"),
        ("test", "train"): _kernels(ref, name, "test_train"),
        ("test", None): _kernels(ref, name, "test_test"),
    }

    def which(x):
        if x is None:
            return None
        for label, stored in (("train", x_train), ("test", x_test)):
            if np.shape(x) == stored.shape and np.array_equal(x, stored):
                return label
        raise KeyError("unknown inputs")

    def kernel_fn(x1, x2=None, get=None):
        k = table[(which(x1), which(x2))]
        if isinstance(get, str):
            return getattr(k, get)
        return k

    return kernel_fn


@pytest.mark.parametrize("setting", [0, 1])
@pytest.mark.parametrize("name", _case_names())
def test_gradient_descent_mse_with_initial_outputs(ref, name, setting):
    lr, diag_reg = ref["_settings"][setting]
    times = ref["_times"]
    for g in ("nngp", "ntk"):
        k_dd, k_td = ref[f"{name}/k_train_train_{g}"], ref[f"{name}/k_test_train_{g}"]
        fn = predict.gradient_descent_mse(k_dd, ref[f"{name}/y_train"], learning_rate=lr, diag_reg=diag_reg)
        train, test = fn(times, ref[f"{name}/fx_train_0"], ref[f"{name}/fx_test_0"], k_td)
        base = f"{name}/gd_mse/s{setting}/{g}"
        assert relative_error(train, ref[f"{base}/fx_train"]) < TOL
        assert relative_error(test, ref[f"{base}/fx_test"]) < TOL


@pytest.mark.parametrize("setting", [0, 1])
@pytest.mark.parametrize("name", _case_names())
def test_ensemble_train_and_test_with_covariances(ref, name, setting):
    lr, diag_reg = ref["_settings"][setting]
    times = ref["_times"]
    fn = predict.gradient_descent_mse_ensemble(
        _table_kernel_fn(ref, name), ref[f"{name}/x_train"], ref[f"{name}/y_train"], learning_rate=lr, diag_reg=diag_reg
    )
    for g in ("nngp", "ntk"):
        base = f"{name}/ensemble/s{setting}/{g}"
        for x_test, where in ((ref[f"{name}/x_test"], "test"), (None, "train")):
            out = fn(times, x_test, g, compute_cov=True)
            assert relative_error(out.mean, ref[f"{base}/mean_{where}"]) < TOL, (g, where)
            cov_ref = ref[f"{base}/cov_{where}"]
            # A covariance that is exactly 0 in the reference (train set, t = inf) is compared absolutely.
            scale = max(np.max(np.abs(cov_ref)), 1.0)
            assert np.max(np.abs(np.asarray(out.covariance) - cov_ref)) / scale < TOL, (g, where)


@pytest.mark.parametrize("setting", [0, 1])
@pytest.mark.parametrize("name", _case_names())
def test_gp_inference_three_modes(ref, name, setting):
    _, diag_reg = ref["_settings"][setting]
    fn = predict.gp_inference(_kernels(ref, name, "train_train"), ref[f"{name}/y_train"], diag_reg=diag_reg)
    out = fn(("nngp", "ntk", "ntkgp"), _kernels(ref, name, "test_train"), _kernels(ref, name, "test_test"))
    for g in ("nngp", "ntk", "ntkgp"):
        base = f"{name}/gp/s{setting}/{g}"
        assert relative_error(getattr(out, g).mean, ref[f"{base}/mean"]) < TOL
        assert relative_error(getattr(out, g).covariance, ref[f"{base}/cov"]) < TOL


@pytest.mark.parametrize("name", _case_names())
def test_max_learning_rate(ref, name):
    k = ref[f"{name}/k_train_train_ntk"]
    np.testing.assert_allclose(predict.max_learning_rate(k), ref[f"{name}/max_lr"], rtol=1e-10)
    np.testing.assert_allclose(predict.max_learning_rate(k, 16), ref[f"{name}/max_lr_ysize"], rtol=1e-10)
    momentum = predict.max_learning_rate(k, 16, momentum=0.9)
    np.testing.assert_allclose(momentum, ref[f"{name}/max_lr_momentum"], rtol=1e-10)


def _cross_entropy(fx, y):
    return -jnp.mean(jax.nn.log_softmax(fx, axis=-1) * y)


@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("name", _case_names())
def test_gradient_descent_cross_entropy(ref, name, momentum):
    fn = predict.gradient_descent(
        _cross_entropy, ref[f"{name}/k_train_train_ntk"], ref[f"{name}/gd_ce/y_train"],
        learning_rate=float(ref["_ce_learning_rate"]), momentum=momentum,
    )
    f0, g0 = ref[f"{name}/fx_train_0"], ref[f"{name}/fx_test_0"]
    train, test = fn(ref["_ce_times"], f0, g0, ref[f"{name}/k_test_train_ntk"])
    base = f"{name}/gd_ce/{'plain' if momentum is None else 'momentum'}"
    assert relative_error(train, ref[f"{base}/fx_train"]) < 1e-5
    assert relative_error(test, ref[f"{base}/fx_test"]) < 1e-5
