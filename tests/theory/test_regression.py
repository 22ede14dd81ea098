"""gp_inference against direct NumPy formulas (Rasmussen & Williams 2006, eqs. 2.23-2.24)."""
from collections import namedtuple

import numpy as np
import pytest

from theory import predict
from tests.theory.closed_form_mlp import mlp_kernels

Pair = namedtuple("Pair", ("nngp", "ntk"))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    x, x_test = rng.standard_normal((30, 4)), rng.standard_normal((6, 4))
    y = np.cos(x[:, :2])
    dd = mlp_kernels(x, None, 2, 1.3, 0.2)
    td = mlp_kernels(x_test, x, 2, 1.3, 0.2)
    tt = mlp_kernels(x_test, None, 2, 1.3, 0.2)
    as_np = lambda k: Pair(np.asarray(k.nngp), np.asarray(k.ntk))
    return y, as_np(dd), as_np(td), as_np(tt)


def test_posteriors_match_direct_formulas(problem):
    y, dd, td, tt = problem
    diag_reg = 1e-2
    out = predict.gp_inference(dd, y, diag_reg=diag_reg)(("nngp", "ntkgp", "ntk"), td, tt)
    for name, kernel in (("nngp", "nngp"), ("ntkgp", "ntk")):
        k = getattr(dd, kernel)
        a = k + diag_reg * np.trace(k) / len(k) * np.eye(len(k))
        k_td, k_tt = getattr(td, kernel), getattr(tt, kernel)
        gaussian = getattr(out, name)
        np.testing.assert_allclose(gaussian.mean, k_td @ np.linalg.solve(a, y), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gaussian.covariance, k_tt - k_td @ np.linalg.solve(a, k_td.T), rtol=1e-8, atol=1e-10)
    theta = dd.ntk + diag_reg * np.trace(dd.ntk) / len(y) * np.eye(len(y))
    gain = np.linalg.solve(theta, td.ntk.T)
    cross = td.ntk @ np.linalg.solve(theta, td.nngp.T)
    cov = tt.nngp + gain.T @ dd.nngp @ gain - cross - cross.T
    np.testing.assert_allclose(out.ntk.covariance, cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out.ntk.mean, out.ntkgp.mean, rtol=1e-12)


def test_absolute_diag_reg_and_train_set(problem):
    y, dd, td, tt = problem
    fn = predict.gp_inference(dd.nngp, y, diag_reg=0.3, diag_reg_absolute_scale=True)
    ref = td.nngp @ np.linalg.solve(dd.nngp + 0.3 * np.eye(len(y)), y)
    np.testing.assert_allclose(fn("nngp", td.nngp), ref, rtol=1e-9)
    train = fn("nngp", None, True)
    np.testing.assert_allclose(train.mean, y)
    np.testing.assert_allclose(train.covariance, np.zeros((len(y), len(y))))


def test_ntk_covariance_needs_both_kernels(problem):
    y, dd, td, tt = problem
    with pytest.raises(ValueError, match="needs the NNGP and the NTK"):
        predict.gp_inference(dd.ntk, y)("ntk", td.ntk, tt.nngp)
    with pytest.raises(ValueError, match="k_test_test"):
        predict.gp_inference(dd, y)("nngp", td, tt.nngp[:3, :3])
