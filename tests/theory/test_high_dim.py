"""theory.high_dim against adaptive quadrature and against simulated students.

Three independent references:
  * scipy.integrate.quad of the Marchenko–Pastur integrals in the eigenvalue
    variable with the algebraic edge weights (the module uses a change of
    variables and a fixed Gauss–Legendre rule instead);
  * finite students: N = 200 inputs, the exact gradient flow of each sampled
    (X, teacher, initial student, label noise), averaged over seeds, and
    plain gradient descent with tau = 1 / learning_rate;
  * the t -> inf limits from the inverse-Wishart mean
    E tr((X^T X)^{-1}) = N / (P - N - 1) (least squares, alpha > 1) and
    E tr((X X^T)^{-1}) = P / (N - P - 1) (minimum-norm interpolation from the
    initial student, alpha < 1).
"""
import numpy as np
import pytest
from scipy.integrate import quad

from theory.high_dim import generalization_error, marchenko_pastur_density

SIGMA_W2, SIGMA_W0_2, SIGMA_EPS2 = 1.0, 0.25, 0.3


def _quad_reference(t, alpha, sigma_w2, sigma_w0_2, sigma_eps2, tau):
    lo, hi = (1 - alpha ** -0.5) ** 2, (1 + alpha ** -0.5) ** 2
    c, s = alpha / (2 * np.pi), t / tau
    opts = dict(epsabs=0.0, epsrel=1e-12, limit=400)
    # rho(l) = c sqrt((hi - l)(l - lo)) / l: quad's 'alg' weight carries the
    # square roots; at alpha = 1 (lo = 0) one 1/sqrt(l) is moved into the weight.
    if alpha != 1.0:
        w = dict(weight="alg", wvar=(0.5, 0.5))
        init = quad(lambda l: c * np.exp(-2 * l * s) / l, lo, hi, **w, **opts)[0]
        noise = quad(lambda l: c * np.expm1(-l * s) ** 2 / l ** 2, lo, hi, **w, **opts)[0]
    else:
        init = quad(lambda l: c * np.exp(-2 * l * s), 0, hi,
                    weight="alg", wvar=(-0.5, 0.5), **opts)[0]
        noise = quad(lambda l: c * np.expm1(-l * s) ** 2 / l ** 2 if l > 0 else c * s * s,
                     0, hi, weight="alg", wvar=(0.5, 0.5), **opts)[0]
    return ((sigma_w2 + sigma_w0_2) * (max(1 - alpha, 0) + init)
            + sigma_eps2 / alpha * noise + sigma_eps2)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9, 1.0, 1.2, 2.0, 6.0])
def test_matches_adaptive_quadrature(alpha):
    times = np.array([0.0, 0.05, 0.7, 3.0, 30.0, 400.0, 1e5])
    got = generalization_error(times, alpha, SIGMA_W2, SIGMA_W0_2, SIGMA_EPS2, tau=1.7)
    want = [_quad_reference(t, alpha, SIGMA_W2, SIGMA_W0_2, SIGMA_EPS2, 1.7) for t in times]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_initial_value_and_asymptotes():
    for alpha in [0.4, 1.0, 3.0]:
        assert generalization_error(0.0, alpha, 1.3, 0.2, 0.1) == pytest.approx(1.6, rel=1e-12)
    a, s = 3.0, SIGMA_EPS2
    # alpha > 1: least squares, E|e|^2 = s N / (P - N - 1) -> s / (alpha - 1).
    assert generalization_error(np.inf, a, 1.0, 0.25, s) == pytest.approx(s + s / (a - 1), rel=1e-12)
    # alpha < 1: frozen (1 - alpha) of the initial error, plus the noise of the
    # minimum-norm fit, s P / (N - P - 1) -> s alpha / (1 - alpha).
    a = 0.4
    want = (1 - a) * 1.25 + s * a / (1 - a) + s
    assert generalization_error(np.inf, a, 1.0, 0.25, s) == pytest.approx(want, rel=1e-12)
    assert generalization_error(np.inf, 1.0, 1.0, 0.0, s) == np.inf
    assert generalization_error(np.inf, 1.0, 1.0, 0.0, 0.0) == 0.0
    # The quadrature joins the closed-form limit continuously.
    for a in [0.4, 3.0]:
        assert generalization_error(1e8, a, 1.0, 0.25, s) == pytest.approx(
            generalization_error(np.inf, a, 1.0, 0.25, s), rel=1e-10)
    # Overtraining peak: the late-time error is largest near alpha = 1.
    alphas = np.array([0.5, 0.8, 0.95, 1.05, 1.25, 2.0])
    late = [generalization_error(1e4, a, 1.0, 0.0, 0.5) for a in alphas]
    assert np.argmax(late) in (2, 3)


def test_marchenko_pastur_moments():
    for alpha in [0.5, 2.0]:
        lo, hi = (1 - alpha ** -0.5) ** 2, (1 + alpha ** -0.5) ** 2
        mass = quad(marchenko_pastur_density, lo, hi, args=(alpha,), limit=200)[0]
        mean = quad(lambda l: l * marchenko_pastur_density(l, alpha), lo, hi, limit=200)[0]
        second = quad(lambda l: l * l * marchenko_pastur_density(l, alpha), lo, hi, limit=200)[0]
        # tr(Sigma)/N = 1 and tr(Sigma^2)/N = 1 + 1/alpha for Sigma = X^T X / P.
        assert mass == pytest.approx(min(1.0, alpha), rel=1e-7)
        assert mean == pytest.approx(1.0, rel=1e-7)
        assert second == pytest.approx(1.0 + 1.0 / alpha, rel=1e-7)


def _simulated_errors(alpha, times, n_inputs, seeds):
    """Exact gradient flow of finite students; returns (seeds, len(times))."""
    p = int(round(alpha * n_inputs))
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((p, n_inputs))
        teacher = rng.standard_normal(n_inputs) * np.sqrt(SIGMA_W2 / n_inputs)
        student = rng.standard_normal(n_inputs) * np.sqrt(SIGMA_W0_2 / n_inputs)
        noise = rng.standard_normal(p) * np.sqrt(SIGMA_EPS2)
        lam, vecs = np.linalg.eigh(x.T @ x / p)
        e0 = vecs.T @ (student - teacher)
        drive = vecs.T @ (x.T @ noise / p)
        lam_t = np.outer(times, lam)
        gain = np.where(lam > 1e-9, -np.expm1(-lam_t) / np.where(lam > 1e-9, lam, 1.0), times[:, None])
        err = e0 * np.exp(-lam_t) + drive * gain            # error coordinates, (T, N)
        rows.append(np.sum(err ** 2, axis=1) + SIGMA_EPS2)
    return np.array(rows)


@pytest.mark.parametrize("alpha", [0.5, 0.9, 2.0])
def test_matches_simulated_students(alpha):
    times = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0])
    sims = _simulated_errors(alpha, times, n_inputs=200, seeds=24)
    mean, se = sims.mean(0), sims.std(0, ddof=1) / np.sqrt(len(sims))
    theory = generalization_error(times, alpha, SIGMA_W2, SIGMA_W0_2, SIGMA_EPS2)
    assert np.all(np.abs(mean - theory) <= 3 * se), (mean, theory, se)


def test_gradient_descent_time_convention():
    # Plain gradient descent on the loss (1/2P)|y - X w|^2 with learning rate
    # eta: step k is time t = k in units of tau = 1 / eta.
    alpha, n_inputs, eta, steps = 2.0, 100, 0.02, 1000
    p = int(alpha * n_inputs)
    checkpoints = [0, 50, 200, 1000]
    rows = []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        x = rng.standard_normal((p, n_inputs))
        teacher = rng.standard_normal(n_inputs) * np.sqrt(SIGMA_W2 / n_inputs)
        w = rng.standard_normal(n_inputs) * np.sqrt(SIGMA_W0_2 / n_inputs)
        y = x @ teacher + rng.standard_normal(p) * np.sqrt(SIGMA_EPS2)
        row = []
        for k in range(steps + 1):
            if k in checkpoints:
                row.append(np.sum((w - teacher) ** 2) + SIGMA_EPS2)
            w = w + eta * x.T @ (y - x @ w) / p
        rows.append(row)
    sims = np.array(rows)
    mean, se = sims.mean(0), sims.std(0, ddof=1) / np.sqrt(len(sims))
    theory = generalization_error(np.array(checkpoints, float), alpha,
                                  SIGMA_W2, SIGMA_W0_2, SIGMA_EPS2, tau=1 / eta)
    assert np.all(np.abs(mean - theory) <= 3 * se), (mean, theory, se)


@pytest.mark.parametrize("kwargs, match", [
    (dict(t=-1.0, alpha=1.0), "`t` must be"),
    (dict(t=np.nan, alpha=1.0), "`t` must be"),
    (dict(t=1.0, alpha=0.0), "alpha"),
    (dict(t=1.0, alpha=1.0, sigma_eps2=-0.1), "sigma_eps2"),
    (dict(t=1.0, alpha=1.0, sigma_w2=np.inf), "sigma_w2"),
    (dict(t=1.0, alpha=1.0, tau=0.0), "tau"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generalization_error(**kwargs)


def test_shapes():
    assert isinstance(generalization_error(1.0, 2.0), float)
    assert generalization_error(np.ones((3, 2)), 2.0).shape == (3, 2)
    assert generalization_error([0.0, np.inf], 0.5).shape == (2,)
