"""theory.student_t against the scale mixture it stands for, integrated numerically here.

The model: sigma^2 ~ InvGamma(a, b); given sigma^2 the k target columns are independent
N(0, sigma^2 (K + delta I)) and the test outputs f_* follow the GP posterior with covariance
sigma^2 C. References, none using the module's closed forms:
  * the posterior of sigma^2 by quadrature of likelihood x prior (scipy.integrate.quad),
    its mean times the GP posterior covariance (solved here with numpy.linalg.solve) for
    the t covariance, and the marginal density of a test output as a quadrature over sigma^2
    of Gaussian densities (the scale mixture) against scipy.stats.t with the module's df,
    mean and scale;
  * the log evidence as log of the quadrature over the prior of the Gaussian evidence
    (scipy.stats.multivariate_normal), and for one column scipy.stats.multivariate_t.
"""
import math

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import quad

from theory import student_t
from theory.regression import gp_inference


def problem(n=6, m=3, columns=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + m, 4))
    k = np.exp(-0.5 * np.sum((x[:, None] - x[None]) ** 2, -1) / 2.0) + 0.3 * (x @ x.T) / 4
    y = rng.normal(size=(n, columns)) * 1.5
    return k[:n, :n], k[n:, :n], k[n:, n:], (y[:, 0] if columns == 1 else y)


def noisy(k, diag_reg, absolute):
    shift = diag_reg if absolute else diag_reg * np.trace(k) / k.shape[0]
    return k + shift * np.eye(k.shape[0])


def log_gaussian_evidence(kd, y2):
    """s -> sum over columns of log N(y_c; 0, s Kd), checked once against scipy.stats."""
    n, columns = y2.shape
    logdet = np.linalg.slogdet(kd)[1]
    q = float(np.sum(y2 * np.linalg.solve(kd, y2)))

    def log_evidence(s):
        return -0.5 * n * columns * math.log(2 * math.pi * s) - 0.5 * columns * logdet - q / (2 * s)
    direct = sum(stats.multivariate_normal(np.zeros(n), 0.7 * kd).logpdf(col) for col in y2.T)
    assert log_evidence(0.7) == pytest.approx(direct, rel=1e-12)
    return log_evidence


def sigma2_posterior(kd, y2, a, b):
    """t = log sigma^2 -> likelihood x prior x ds/dt, divided by its peak; the peak's location and log."""
    log_evidence = log_gaussian_evidence(kd, y2)

    def log_prior(s):  # InvGamma(a, b); scipy's logpdf is 100x slower per scalar call inside quad
        return a * math.log(b) - math.lgamma(a) - (a + 1) * math.log(s) - b / s
    assert log_prior(0.9) == pytest.approx(stats.invgamma(a, scale=b).logpdf(0.9), rel=1e-12)
    log_joint = lambda t: log_evidence(math.exp(t)) + log_prior(math.exp(t)) + t
    grid = np.linspace(-12, 12, 481)
    logs = np.array([log_joint(t) for t in grid])
    peak, centre = logs.max(), grid[np.argmax(logs)]
    return (lambda t: math.exp(log_joint(t) - peak)), centre, peak


def integrate(f, centre):
    return quad(f, centre - 15, centre + 15, points=[centre], epsabs=0, epsrel=1e-11, limit=400)[0]


@pytest.mark.parametrize("columns, diag_reg, absolute", [(1, 0.0, False), (2, 0.05, False), (1, 0.2, True)])
def test_posterior_is_the_gp_posterior_mixed_over_the_variance(columns, diag_reg, absolute):
    a, b = 1.7, 0.6
    k, k_td, k_tt, y = problem(columns=columns)
    post = student_t.posterior(k, k_td, k_tt, y, a, b, diag_reg=diag_reg, diag_reg_absolute_scale=absolute)
    kd, y2 = noisy(k, diag_reg, absolute), y.reshape(len(k), -1)
    mean = k_td @ np.linalg.solve(kd, y2)
    gp_cov = k_tt - k_td @ np.linalg.solve(kd, k_td.T)
    density, centre, _ = sigma2_posterior(kd, y2, a, b)
    z = integrate(density, centre)
    mean_sigma2 = integrate(lambda t: math.exp(t) * density(t), centre) / z
    assert post.df == 2 * a + len(k) * columns
    np.testing.assert_allclose(np.asarray(post.mean), mean.reshape(np.shape(post.mean)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(post.covariance), mean_sigma2 * gp_cov, rtol=1e-7, atol=1e-12)
    # The marginal density of the first test output: a scale mixture of Gaussians, against the t.
    t_marginal = stats.t(post.df, loc=float(np.asarray(post.mean).reshape(-1)[0]),
                         scale=math.sqrt(float(post.scale[0, 0])))
    for f in t_marginal.ppf([0.02, 0.3, 0.5, 0.9, 0.995]):
        normal = lambda t: math.exp(-(f - mean[0, 0]) ** 2 / (2 * math.exp(t) * gp_cov[0, 0])) / math.sqrt(
            2 * math.pi * math.exp(t) * gp_cov[0, 0])
        mixture = integrate(lambda t: density(t) * normal(t), centre) / z
        assert t_marginal.pdf(f) == pytest.approx(mixture, rel=1e-7)
        # Wrong theories: the prior's degrees of freedom (2a), or a scale without the data's q.
        wrong_df = stats.t(2 * a, loc=t_marginal.mean(), scale=math.sqrt(post.scale[0, 0]))
        wrong_scale = stats.t(post.df, loc=t_marginal.mean(), scale=math.sqrt(b / a * gp_cov[0, 0]))
        assert abs(wrong_df.pdf(f) / mixture - 1) > 1e-3
        assert abs(wrong_scale.pdf(f) / mixture - 1) > 1e-3


def test_posterior_agrees_with_gp_inference_up_to_the_variance_factor():
    a, b = 3.0, 2.0
    k, k_td, k_tt, y = problem(columns=2)
    post = student_t.posterior(k, k_td, k_tt, y, a, b, diag_reg=1e-2)
    gp = gp_inference(k, y, diag_reg=1e-2)("nngp", k_td, k_tt)
    q = float(np.sum(y * np.linalg.solve(noisy(k, 1e-2, False), y)))
    np.testing.assert_allclose(np.asarray(post.mean), np.asarray(gp.mean), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(post.scale), (2 * b + q) / (2 * a + 12) * np.asarray(gp.covariance),
                               rtol=1e-10, atol=1e-14)
    assert post.mean.shape == y[:3].shape and post.scale.shape == (3, 3)


def test_covariance_is_infinite_at_two_or_fewer_degrees_of_freedom():
    k, k_td, k_tt, y = problem(n=1)
    for a, df in ((0.5, 2.0), (0.25, 1.5)):
        post = student_t.posterior(k, k_td, k_tt, y, a, 1.0)
        assert post.df == df
        assert np.all(np.isinf(np.asarray(post.covariance))) and np.all(np.isfinite(np.asarray(post.scale)))
    post = student_t.posterior(k, k_td, k_tt, y, 0.6, 1.0)  # df = 2.2
    np.testing.assert_allclose(np.asarray(post.covariance), np.asarray(post.scale) * 2.2 / 0.2, rtol=1e-12)
    assert student_t.posterior(k, k_td, None, y, 1.0, 1.0)[2:] == (None, None)


@pytest.mark.parametrize("columns, diag_reg, absolute", [(1, 0.0, False), (3, 0.1, False), (2, 0.3, True)])
def test_log_marginal_likelihood_is_the_gaussian_evidence_mixed_over_the_prior(columns, diag_reg, absolute):
    a, b = 2.5, 1.3
    k, _, _, y = problem(n=7, columns=columns, seed=3)
    kd, y2 = noisy(k, diag_reg, absolute), y.reshape(len(k), -1)
    density, centre, peak = sigma2_posterior(kd, y2, a, b)
    reference = math.log(integrate(density, centre)) + peak
    value = float(student_t.log_marginal_likelihood(k, y, a, b, diag_reg, absolute))
    assert value == pytest.approx(reference, abs=1e-8)
    if columns == 1:
        t = stats.multivariate_t(np.zeros(len(k)), b / a * kd, df=2 * a)
        assert value == pytest.approx(t.logpdf(y), abs=1e-9)
    else:
        # Wrong theory: columns with a variance each (a sum of separate t densities).
        separate = sum(stats.multivariate_t(np.zeros(len(k)), b / a * kd, df=2 * a).logpdf(c) for c in y2.T)
        assert abs(value - separate) > 0.1


def test_float32_kernels_are_solved_in_float64():
    k, k_td, k_tt, y = problem()
    k = k + 1e-5 * np.eye(len(k))
    exact = student_t.posterior(k, k_td, k_tt, y, 2.0, 1.0)
    single = student_t.posterior(*(m.astype(np.float32) for m in (k, k_td, k_tt, y)), 2.0, 1.0)
    assert single.mean.dtype == np.float32 and single.covariance.dtype == np.float32
    np.testing.assert_allclose(np.asarray(single.mean), np.asarray(exact.mean), rtol=1e-5, atol=1e-6)
    lml = student_t.log_marginal_likelihood(k.astype(np.float32), y.astype(np.float32), 2.0, 1.0)
    assert lml.dtype == np.float32
    assert float(lml) == pytest.approx(float(student_t.log_marginal_likelihood(k, y, 2.0, 1.0)), rel=1e-5)


def test_bad_arguments_are_named():
    k, k_td, k_tt, y = problem()
    for name, change in (("a", dict(a=0.0)), ("b", dict(b=-1.0)), ("diag_reg", dict(diag_reg=-0.1)),
                         ("diag_reg_absolute_scale", dict(diag_reg_absolute_scale="yes"))):
        arguments = dict(a=1.0, b=1.0) | change
        with pytest.raises((TypeError, ValueError), match=name):
            student_t.posterior(k, k_td, k_tt, y, **arguments)
    with pytest.raises(ValueError, match="y_train"):
        student_t.posterior(k, k_td, k_tt, y[:-1], 1.0, 1.0)
    with pytest.raises(ValueError, match="y_train"):
        student_t.posterior(k, k_td, k_tt, np.where(np.arange(len(y)) == 2, np.nan, y), 1.0, 1.0)
    with pytest.raises(ValueError, match="k_test_train"):
        student_t.posterior(k, k_td[:, :-1], k_tt, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="k_test_test"):
        student_t.posterior(k, k_td, k_tt[:2, :2], y, 1.0, 1.0)
    with pytest.raises(ValueError, match="k_train_train"):
        student_t.posterior(k[:, :-1], k_td, k_tt, y, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        student_t.log_marginal_likelihood(k - 2 * np.eye(len(k)), y, 1.0, 1.0)
    with pytest.raises(ValueError, match="`y`"):
        student_t.log_marginal_likelihood(k, y[:2], 1.0, 1.0)
