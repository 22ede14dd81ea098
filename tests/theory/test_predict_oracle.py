"""`theory.predict` against neural-tangents 0.6.5 (tests/data/nt065_reference.npz).

Agreement per array: max |ours - ref| / max |ref| < 1e-6 in float64.
"""
from collections import namedtuple

import pytest

from theory import predict
from tests.theory import oracle
from tests.theory.closed_form_mlp import mlp_kernel_fn

TOL = 1e-6
Pair = namedtuple("Pair", ("nngp", "ntk"))


@pytest.fixture(scope="module")
def data():
    return oracle.load()


@pytest.mark.parametrize("solver", ["eigh", "lanczos"])
@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("name", oracle.PREDICTION_CASES)
def test_gradient_descent_mse_means(data, name, get, solver):
    case = oracle.case(data, name)
    predict_fn = predict.gradient_descent_mse(
        case[f"{get}_11"], case["pred_ytr"], diag_reg=float(case["pred_diag_reg"]), solver=solver
    )
    k_test_train = case[get].T
    mean_t = predict_fn(case["pred_ts"], None, 0.0, k_test_train)
    mean_inf = predict_fn(None, None, 0.0, k_test_train)
    assert oracle.relative_error(mean_t, case[f"pred_{get}_mean_t"]) < TOL
    assert oracle.relative_error(mean_inf, case[f"pred_{get}_mean_inf"]) < TOL


@pytest.mark.parametrize("name", oracle.PREDICTION_CASES)
def test_gp_inference_means(data, name):
    case = oracle.case(data, name)
    k_train_train = Pair(case["nngp_11"], case["ntk_11"])
    k_test_train = Pair(case["nngp"].T, case["ntk"].T)
    predict_fn = predict.gp_inference(k_train_train, case["pred_ytr"], diag_reg=float(case["pred_diag_reg"]))
    out = predict_fn(None, k_test_train)
    assert out._fields == ("nngp", "ntk")
    for get in ("nngp", "ntk"):
        assert oracle.relative_error(getattr(out, get), case[f"pred_{get}_mean_inf"]) < TOL


def _check_ensemble(case, kernel_fn):
    predict_fn = predict.gradient_descent_mse_ensemble(
        kernel_fn, case["x1"], case["pred_ytr"], diag_reg=float(case["pred_diag_reg"])
    )
    for get in ("nngp", "ntk"):
        mean_t = predict_fn(t=case["pred_ts"], x_test=case["x2"], get=get)
        assert oracle.relative_error(mean_t, case[f"pred_{get}_mean_t"]) < TOL
        out = predict_fn(t=None, x_test=case["x2"], get=get, compute_cov=True)
        assert oracle.relative_error(out.mean, case[f"pred_{get}_mean_inf"]) < TOL
        assert oracle.relative_error(out.covariance, case[f"pred_{get}_cov_inf"]) < TOL


def test_ensemble_with_test_local_kernel(data):
    """mlp_relu_ntk, with the test-local closed-form kernel standing in for stax."""
    case = oracle.case(data, "mlp_relu_ntk")
    depth, W, b, act = oracle.dense_hyperparameters(case["spec"])
    _check_ensemble(case, mlp_kernel_fn(depth, W, b, act))


@pytest.mark.parametrize(
    "name",
    # The CNN's kernel takes long to compile, and mlp_relu_ntk is covered by the
    # test-local kernel above: both in the slow set.
    [n if n == "mlp_erf_standard" else pytest.param(n, marks=pytest.mark.slow) for n in oracle.PREDICTION_CASES],
)
def test_ensemble_with_stax(data, name):
    """The full check, covariance included, with the network built by kernels.stax (skips until it exists)."""
    network_from_spec = oracle.network_from_spec_or_skip()
    case = oracle.case(data, name)
    _, _, kernel_fn = network_from_spec(case["spec"])
    _check_ensemble(case, kernel_fn)
