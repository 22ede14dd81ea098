"""log_marginal_likelihood against SciPy's Gaussian density; fit_hyperparameters finds the evidence maximum."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import theory
from tests.theory import oracle
from tests.theory.closed_form_mlp import mlp_kernel_fn, mlp_kernels


def network(W_std, b_std, depth=1):
    return None, None, mlp_kernel_fn(depth, W_std, b_std)


@pytest.fixture(scope="module")
def sample():
    """Targets drawn from the NNGP prior of a known network, plus noise."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 3))
    k = np.asarray(mlp_kernels(x, None, 1, 1.4, 0.6).nngp)
    noise = 0.05 * np.mean(np.diag(k))
    chol = np.linalg.cholesky(k + noise * np.eye(len(x)))
    y = chol @ rng.standard_normal((len(x), 6))
    return x, y, k


def test_log_marginal_likelihood_is_the_gaussian_log_density(sample):
    x, y, k = sample
    for diag_reg, absolute in ((0.05, False), (0.3, True)):
        noise = diag_reg if absolute else diag_reg * np.trace(k) / len(k)
        ref = sum(multivariate_normal(np.zeros(len(k)), k + noise * np.eye(len(k))).logpdf(col) for col in y.T)
        ours = theory.log_marginal_likelihood(k, y, diag_reg, diag_reg_absolute_scale=absolute)
        np.testing.assert_allclose(float(ours), ref, rtol=1e-10)
    assert ours.dtype == np.float64
    assert theory.log_marginal_likelihood(k.astype(np.float32), y.astype(np.float32), 0.05).dtype == np.float32


def test_log_marginal_likelihood_errors(sample):
    x, y, k = sample
    with pytest.raises(ValueError, match="diag_reg"):
        theory.log_marginal_likelihood(k, y, -0.1)
    with pytest.raises(ValueError, match="`k_train_train` must be of shape"):
        theory.log_marginal_likelihood(k[:5, :5], y)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        theory.log_marginal_likelihood(k - 2 * np.eye(len(k)) * np.max(np.diag(k)), y)


def test_fit_finds_the_evidence_maximum(sample):
    """Gradient fit from a poor start beats the truth's evidence and agrees with a derivative-free optimizer."""
    x, y, _ = sample
    init = {"W_std": 0.7, "b_std": 0.2, "diag_reg": 0.3}
    fit = theory.fit_hyperparameters(network, x, y, init)
    assert fit.success, fit.message

    def evidence(W_std, b_std, diag_reg):
        k = np.asarray(mlp_kernels(x, None, 1, W_std, b_std).nngp)
        return float(theory.log_marginal_likelihood(k, y, diag_reg))

    np.testing.assert_allclose(fit.log_marginal_likelihood, evidence(**fit.hyperparameters), rtol=1e-9)
    assert fit.log_marginal_likelihood > evidence(**init) + 10
    assert fit.log_marginal_likelihood >= evidence(1.4, 0.6, 0.05) - 1e-6  # the generating values
    other = theory.fit_hyperparameters(network, x, y, init, method="Nelder-Mead", max_iterations=600)
    assert other.log_marginal_likelihood <= fit.log_marginal_likelihood + 1e-3
    assert other.log_marginal_likelihood > fit.log_marginal_likelihood - 1e-2
    # The recovered values are near the generating ones (80 points x 6 outputs).
    assert abs(fit.hyperparameters["W_std"] - 1.4) < 0.35 and abs(fit.hyperparameters["diag_reg"] - 0.05) < 0.03


def test_fit_with_fixed_hyperparameters_and_errors(sample):
    x, y, _ = sample
    fit = theory.fit_hyperparameters(network, x, y, {"W_std": 1.0}, fixed={"b_std": 0.6, "diag_reg": 0.05, "depth": 1})
    assert set(fit.hyperparameters) == {"W_std"}
    with pytest.raises(ValueError, match=r"`init\['b_std'\]` must be a finite real number > 0"):
        theory.fit_hyperparameters(network, x, y, {"W_std": 1.0, "b_std": 0.0})
    with pytest.raises(ValueError, match="`x_train` must be one example per row"):
        theory.fit_hyperparameters(network, x[:-1], y, {"W_std": 1.0})
    with pytest.raises(ValueError, match="`fixed` must be disjoint from init"):
        theory.fit_hyperparameters(network, x, y, {"W_std": 1.0}, fixed={"W_std": 2.0})


@pytest.mark.slow  # differentiating through kernels.stax takes long to compile
def test_fit_through_stax(sample):
    """The same fit through a kernels.stax network (skips until kernels.stax exists)."""
    oracle.network_from_spec_or_skip()
    from kernels import stax

    def stax_network(W_std, b_std):
        dense = lambda width: stax.Dense(width, W_std=W_std, b_std=b_std)  # noqa: E731
        return stax.serial(dense(512), stax.Relu(), dense(1))

    x, y, _ = sample
    init = {"W_std": 0.7, "b_std": 0.2, "diag_reg": 0.3}
    ours = theory.fit_hyperparameters(stax_network, x, y, init)
    ref = theory.fit_hyperparameters(network, x, y, init)
    np.testing.assert_allclose(ours.log_marginal_likelihood, ref.log_marginal_likelihood, rtol=1e-6)
