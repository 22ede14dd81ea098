"""theory.eigenlearning against actual regressions on a kernel with a known eigensystem.

The synthetic kernel is diagonal with Gaussian features: x ~ N(0, I_M),
phi_i(x) = x_i (orthonormal under the data), K(x, x') = sum_i lambda_i x_i x'_i,
target f(x) = sum_i v_i x_i. Kernel ridge regression and explicit random-feature
regression (k Gaussian projections scaled by 1/sqrt(k)) are fitted on sampled
data, and their exact test MSE ||c_hat - v||^2 + noise and measured train MSE,
averaged over seeds, are compared with the eigenframework. Closed forms that
need no eigenframework (isotropic ridgeless regression, Hastie et al. 2019;
least squares through the inverse-Wishart mean) check the limits exactly.
"""
import numpy as np
import pytest

from theory.eigenlearning import RiskEstimate, kernel_ridge_risk, random_feature_risk

M = 200
EIGENVALUES = np.arange(1, M + 1) ** -1.5
EIGENVALUES /= EIGENVALUES.sum()
TARGET_POWER = np.arange(1, M + 1) ** -1.2
TARGET_POWER /= TARGET_POWER.sum()
SEEDS = 24


def _regress(n, ridge, noise, seed, k=None, eigenvalues=EIGENVALUES, target_power=TARGET_POWER):
    """One fit; returns (test MSE on noisy labels, train MSE)."""
    rng = np.random.default_rng(seed)
    m = len(eigenvalues)
    x = rng.standard_normal((n, m))
    y = x @ np.sqrt(target_power) + rng.standard_normal(n) * np.sqrt(noise)
    if k is None:
        lift = np.diag(np.sqrt(eigenvalues))                    # (M, M): features Lambda^1/2 x
    else:
        z = rng.standard_normal((k, m))
        lift = np.sqrt(eigenvalues)[:, None] * z.T / np.sqrt(k)  # (M, k): random features
    features = x @ lift                                           # (n, p)
    if ridge == 0 and features.shape[1] < n:
        theta = np.linalg.lstsq(features, y, rcond=None)[0]      # least squares
    else:
        gram = features @ features.T
        theta = features.T @ np.linalg.solve(gram + ridge * np.eye(n), y)
    coef = lift @ theta                                           # coefficients on phi_i
    test = np.sum((coef - np.sqrt(target_power)) ** 2) + noise
    train = np.mean((y - features @ theta) ** 2)
    return test, train


def _simulate(n, ridge, noise, k=None, seeds=SEEDS, **kw):
    runs = np.array([_regress(n, ridge, noise, s, k=k, **kw) for s in range(seeds)])
    return runs.mean(0), runs.std(0, ddof=1) / np.sqrt(seeds)


def _agrees(theory, mean, se, rel):
    # The eigenframework is exact as n, M -> inf; at n ~ 30-100 its finite-size
    # bias is a few percent, so allow that on top of 3 standard errors.
    return abs(mean - theory) <= 3 * se + rel * theory + 1e-12


@pytest.mark.parametrize("n", [25, 50, 100])
@pytest.mark.parametrize("ridge, noise", [(0.0, 0.0), (1e-3, 0.1), (0.05, 0.1)])
def test_kernel_ridge_risk_matches_regression(n, ridge, noise):
    est = kernel_ridge_risk(EIGENVALUES, TARGET_POWER, n, ridge=ridge, noise=noise)
    (test, train), (test_se, train_se) = _simulate(n, ridge, noise)
    assert _agrees(est.test_mse, test, test_se, rel=0.04), (est.test_mse, test, test_se)
    assert _agrees(est.train_mse, train, train_se, rel=0.04), (est.train_mse, train, train_se)
    assert abs(test / est.test_mse - 1) < 0.10  # the learning-curve criterion


@pytest.mark.parametrize("n, k", [(50, 20), (100, 60), (50, 120), (40, 200)])
@pytest.mark.parametrize("ridge, noise", [(0.0, 0.0), (1e-3, 0.1), (0.05, 0.1)])
def test_random_feature_risk_matches_regression(n, k, ridge, noise):
    est = random_feature_risk(EIGENVALUES, TARGET_POWER, n, k, ridge=ridge, noise=noise)
    (test, train), (test_se, train_se) = _simulate(n, ridge, noise, k=k)
    assert _agrees(est.test_mse, test, test_se, rel=0.05), (est.test_mse, test, test_se)
    assert _agrees(est.train_mse, train, train_se, rel=0.05), (est.train_mse, train, train_se)


def test_learnabilities_are_the_mean_learned_fraction():
    # Simon et al.'s learnability of mode i: E[c_hat_i] when the target is
    # phi_i itself, i.e. the diagonal of Lambda X^T (K + delta)^{-1} X.
    n, ridge = 60, 1e-3
    est = kernel_ridge_risk(EIGENVALUES, TARGET_POWER, n, ridge=ridge)
    learned = []
    for seed in range(20):
        x = np.random.default_rng(seed).standard_normal((n, M))
        gram = (x * EIGENVALUES) @ x.T
        learned.append(EIGENVALUES * np.sum(x * np.linalg.solve(gram + ridge * np.eye(n), x), 0))
    gap = np.abs(np.mean(learned, 0) - est.learnabilities)
    assert gap.max() < 0.05 and gap.mean() < 0.01, (gap.max(), gap.mean())
    assert np.sum(est.learnabilities) + ridge / est.kappa == pytest.approx(n, rel=1e-12)


def test_isotropic_ridgeless_matches_hastie_closed_form():
    # M equal eigenvalues, n < M: risk = |v|^2 (1 - n/M) + noise M / (M - n)
    # (Hastie, Montanari, Rosset & Tibshirani 2019, Thm 1, plus the test noise).
    m, n, noise = 400, 100, 0.3
    est = kernel_ridge_risk(np.full(m, 1.0 / m), np.full(m, 2.0 / m), n, noise=noise)
    assert est.test_mse == pytest.approx(2.0 * (1 - n / m) + noise * m / (m - n), rel=1e-10)
    np.testing.assert_allclose(est.learnabilities, n / m, rtol=1e-10)
    assert est.train_mse == 0.0


def test_ridgeless_least_squares_limit():
    # rank < n: least squares on the M usable features; exact mean test error
    # noise (1 + M / (n - M - 1)) (inverse Wishart), the framework's n/(n-M) to O(1/n).
    m, n, noise = 30, 300, 0.2
    lam, v2 = np.linspace(1.0, 0.1, m), np.full(m, 0.5)
    est = kernel_ridge_risk(lam, v2, n, noise=noise)
    assert est.kappa == 0.0
    assert est.test_mse == pytest.approx(noise * n / (n - m), rel=1e-12)
    assert est.test_mse == pytest.approx(noise * (1 + m / (n - m - 1)), rel=0.01)
    assert est.train_mse == pytest.approx(noise * (n - m) / n, rel=1e-12)
    # Zero eigenvalues: their target power is never learned, and adds like noise.
    est0 = kernel_ridge_risk(np.append(lam, 0.0), np.append(v2, 0.4), n, noise=noise)
    assert est0.learnabilities[-1] == 0.0
    assert est0.test_mse == pytest.approx((noise + 0.4) * n / (n - m), rel=1e-12)
    (sim, _), (se, _) = _simulate(n, 0.0, noise, eigenvalues=np.append(lam, 0.0),
                                   target_power=np.append(v2, 0.4), seeds=40)
    assert abs(sim - est0.test_mse) <= 3 * se + 0.02 * est0.test_mse
    # At the interpolation threshold n = rank the noisy risk diverges.
    assert np.isinf(kernel_ridge_risk(lam, v2, m, noise=noise).test_mse)


def test_random_features_tend_to_the_kernel():
    for ridge in [0.0, 1e-3]:
        krr = kernel_ridge_risk(EIGENVALUES, TARGET_POWER, 50, ridge=ridge, noise=0.1)
        rf = random_feature_risk(EIGENVALUES, TARGET_POWER, 50, 1e9, ridge=ridge, noise=0.1)
        inf = random_feature_risk(EIGENVALUES, TARGET_POWER, 50, np.inf, ridge=ridge, noise=0.1)
        assert rf.test_mse == pytest.approx(krr.test_mse, rel=1e-6)
        assert rf.kappa == pytest.approx(krr.kappa, rel=1e-6)
        assert inf.test_mse == krr.test_mse and inf.gamma == inf.kappa
    # Ridgeless RF below the interpolation threshold k < n (least squares on
    # k features) and at it (k = n: diverges with noise).
    under = random_feature_risk(EIGENVALUES, TARGET_POWER, 50, 20, noise=0.1)
    assert under.gamma == 0.0 and under.overfitting_coefficient == pytest.approx(50 / 30)
    assert np.isinf(random_feature_risk(EIGENVALUES, TARGET_POWER, 50, 50, noise=0.1).test_mse)


def test_more_is_better_at_the_optimal_ridge():
    # Simon et al. 2023, Thm 1: at the optimal ridge, test risk falls with k and n.
    ridges = np.logspace(-6, 1, 36)
    best = lambda n, k: min(random_feature_risk(EIGENVALUES, TARGET_POWER, n, k, r, 0.1).test_mse
                            for r in ridges)
    over_k = [best(60, k) for k in [10, 30, 60, 120, 400, np.inf]]
    over_n = [best(n, 100) for n in [10, 30, 60, 120, 400]]
    assert np.all(np.diff(over_k) <= 1e-9) and np.all(np.diff(over_n) <= 1e-9)


def test_returns_risk_estimate_and_rejects_bad_arguments():
    est = kernel_ridge_risk([1.0, 0.5], [1.0, 0.0], 1, ridge=0.1)
    assert isinstance(est, RiskEstimate) and est.learnabilities.shape == (2,)
    bad = [
        (dict(eigenvalues=[[1.0]], target_power=[[1.0]], n=3), "1-D"),
        (dict(eigenvalues=[1.0, 0.5], target_power=[1.0], n=3), "target_power"),
        (dict(eigenvalues=[1.0, -0.5], target_power=[1.0, 1.0], n=3), "eigenvalues"),
        (dict(eigenvalues=[0.0, 0.0], target_power=[1.0, 1.0], n=3), "positive"),
        (dict(eigenvalues=[1.0], target_power=[np.nan], n=3), "target_power"),
        (dict(eigenvalues=[1.0], target_power=[1.0], n=0), "`n` must"),
        (dict(eigenvalues=[1.0], target_power=[1.0], n=3, ridge=-1.0), "ridge"),
        (dict(eigenvalues=[1.0], target_power=[1.0], n=3, noise=-1.0), "noise"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            kernel_ridge_risk(**kwargs)
    with pytest.raises(TypeError, match="`n` must be a finite real number"):
        kernel_ridge_risk([1.0], [1.0], n=[3, 4])
    with pytest.raises(ValueError, match="`k` must"):
        random_feature_risk([1.0], [1.0], 3, 0)
