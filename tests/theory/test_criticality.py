"""theory.criticality against quadrature written here and against sampled networks.

References, each computed without the module:
  * a 2-D Gauss–Hermite rule (physicists' nodes, Cholesky factor of the 2x2
    covariance) for smooth activations (erf, tanh), where it converges to
    ~1e-13, used for the dual maps and for the whole kernel recursion;
  * for ReLU, whose kink makes Gauss–Hermite converge only like 1/degree,
    polar coordinates: the radial integral is exact and the angular one is
    Gauss–Legendre between the kinks (machine precision), plus a loose
    Gauss–Hermite check of the recursion;
  * nested adaptive quadrature (scipy) for the tanh dual, which the module
    itself computes by Gauss–Hermite;
  * PDLT's integral forms of the susceptibilities by 1-D Gauss–Hermite;
  * finite bias-free ReLU networks with sampled weight matrices for the
    output kurtosis.
"""
import functools

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import erf

from theory.criticality import (
    critical_initialization, erf_dual, kernel_recursion, quadrature_dual, relu_dual,
    relu_output_kurtosis, susceptibilities, tanh_dual)

relu = lambda x: np.maximum(x, 0.0)
step = lambda x: (x > 0).astype(float)
tanh_prime = lambda x: 1.0 - np.tanh(x) ** 2
erf_prime = lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-x * x)

PAIRS = [(0.3, 1.0, 2.0), (-0.5, 0.7, 1.5), (1.39, 1.4, 1.4), (1.4, 1.4, 1.4), (0.0, 3.0, 0.2)]


@functools.lru_cache(maxsize=None)
def _standard_normal_rule(degree):
    x, w = np.polynomial.hermite.hermgauss(degree)       # weight exp(-x^2)
    return np.sqrt(2.0) * x, w / np.sqrt(np.pi)


def gauss_hermite_2d(f, g, cov12, var1, var2, degree=300):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[var1, cov12], [cov12, var2]])."""
    x, w = _standard_normal_rule(degree)
    # Lower Cholesky factor of the 2x2 covariance, written out so that it
    # also holds at correlation one.
    l11 = np.sqrt(var1)
    l21 = cov12 / l11
    l22 = np.sqrt(max(var2 - l21 ** 2, 0.0))
    x1, x2 = np.meshgrid(x, x, indexing="ij")
    return np.sum(np.outer(w, w) * f(l11 * x1) * g(l21 * x1 + l22 * x2))


def gauss_hermite_1d(f, var, degree=300):
    x, w = _standard_normal_rule(degree)
    return np.sum(w * f(np.sqrt(var) * x))


def relu_polar(cov12, var1, var2):
    """(E[relu u relu v], E[step u step v]) in polar coordinates, exactly."""
    s = np.sqrt(max(var1 * var2 - cov12 ** 2, 0.0))
    a = np.array([np.sqrt(var1), 0.0])                   # u = a . xi
    b = np.array([cov12 / np.sqrt(var1), s / np.sqrt(var1)])  # v = b . xi
    kinks = sorted({(np.arctan2(vec[1], vec[0]) + sign * np.pi / 2) % (2 * np.pi)
                    for vec in (a, b) for sign in (-1, 1)} | {0.0, 2 * np.pi})
    nodes, weights = np.polynomial.legendre.leggauss(20)
    nngp = dot = 0.0
    for lo, hi in zip(kinks[:-1], kinks[1:]):
        phi = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
        e = np.stack([np.cos(phi), np.sin(phi)])
        wts = 0.5 * (hi - lo) * weights
        # int_0^inf r^3 e^{-r^2/2} dr / (2 pi) = 1 / pi;  int_0^inf r e^{-r^2/2} dr / (2 pi) = 1 / (2 pi)
        nngp += np.sum(wts * relu(a @ e) * relu(b @ e)) / np.pi
        dot += np.sum(wts * step(a @ e) * step(b @ e)) / (2 * np.pi)
    return nngp, dot


@pytest.mark.parametrize("cov12, var1, var2", PAIRS)
def test_relu_dual_matches_polar_quadrature(cov12, var1, var2):
    np.testing.assert_allclose(relu_dual(cov12, var1, var2), relu_polar(cov12, var1, var2),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cov12, var1, var2", PAIRS)
def test_erf_dual_matches_gauss_hermite(cov12, var1, var2):
    want = (gauss_hermite_2d(erf, erf, cov12, var1, var2),
            gauss_hermite_2d(erf_prime, erf_prime, cov12, var1, var2))
    np.testing.assert_allclose(erf_dual(cov12, var1, var2), want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cov12, var1, var2", [(0.3, 1.0, 2.0), (-2.0, 3.0, 5.0), (5.0, 10.0, 8.0),
                                               (1.4, 1.4, 1.4), (30.0, 30.0, 30.0)])
def test_tanh_dual_matches_adaptive_quadrature(cov12, var1, var2):
    slope = cov12 / np.sqrt(var1)
    rest = np.sqrt(max(var2 - slope ** 2, 0.0))
    gauss = lambda x: np.exp(-x * x / 2) / np.sqrt(2 * np.pi)

    def expect(f):
        opts = dict(epsabs=1e-14, epsrel=1e-12, limit=300)
        if rest == 0:
            inner = lambda x1: f(slope * x1)
        else:  # the steep part of the inner integrand sits at x2 = -slope x1 / rest
            inner = lambda x1: quad(lambda x2: f(slope * x1 + rest * x2) * gauss(x2), -12, 12,
                                    points=[-slope * x1 / rest], **opts)[0]
        return quad(lambda x1: f(np.sqrt(var1) * x1) * inner(x1) * gauss(x1), -12, 12,
                    points=[0.0], **opts)[0]

    # ~1e-9 at variance 30 (the documented accuracy there), ~1e-12 below 10.
    atol = 1e-8 if var1 >= 30 else 1e-11
    np.testing.assert_allclose(tanh_dual(cov12, var1, var2), (expect(np.tanh), expect(tanh_prime)),
                               rtol=0, atol=atol)


def _recursion_by_quadrature(f, cov12, var1, var2, depth, C_W, C_b):
    flow = [(cov12, var1, var2)]
    for _ in range(depth):
        c, v1, v2 = flow[-1]
        flow.append((C_b + C_W * gauss_hermite_2d(f, f, c, v1, v2),
                     C_b + C_W * gauss_hermite_2d(f, f, v1, v1, v1),
                     C_b + C_W * gauss_hermite_2d(f, f, v2, v2, v2)))
    return np.array(flow)                                # (depth + 1, 3)


@pytest.mark.parametrize("name, dual, f, rtol", [
    ("erf", erf_dual, erf, 1e-11),
    ("tanh", tanh_dual, np.tanh, 1e-10),
    ("relu", relu_dual, relu, 3e-3),   # Gauss–Hermite's own error on the kink
])
@pytest.mark.parametrize("C_W, C_b", [(1.0, 0.0), (1.7, 0.3), (2.0, 0.0)])
def test_kernel_recursion_matches_gauss_hermite(name, dual, f, rtol, C_W, C_b):
    flow = kernel_recursion(dual, 0.4, 1.2, 0.9, depth=6, C_W=C_W, C_b=C_b)
    assert flow.cov12.shape == (7,)
    want = _recursion_by_quadrature(f, 0.4, 1.2, 0.9, 6, C_W, C_b)
    got = np.stack([flow.cov12, flow.var1, flow.var2], axis=1)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12)


def test_kernel_recursion_batches_and_relu_closed_form():
    # A batch of input pairs; ReLU's single-input map is K -> C_b + C_W K / 2 exactly.
    corr = np.linspace(-0.9, 1.0, 5)
    flow = kernel_recursion(relu_dual, 2.0 * corr, 2.0, 2.0, depth=10, C_W=1.5, C_b=0.1)
    assert flow.cov12.shape == (11, 5)
    k = 2.0
    for layer in range(1, 11):
        k = 0.1 + 1.5 * k / 2
        np.testing.assert_allclose(flow.var1[layer], k, rtol=1e-13)
    # At criticality the ReLU correlation map drives every pair towards correlation one.
    crit = critical_initialization("relu")
    flow = kernel_recursion(relu_dual, 2.0 * corr, 2.0, 2.0, depth=50, C_W=crit.C_W, C_b=crit.C_b)
    np.testing.assert_allclose(flow.var1[-1], 2.0, rtol=1e-12)
    rho = flow.cov12[-1] / flow.var1[-1]
    # (ReLU approaches correlation one only polynomially in depth.)
    assert np.all(rho > 0.98) and np.all(np.diff(rho) >= -1e-12)
    assert np.all(flow.cov12[-1] / flow.var1[-1] > flow.cov12[10] / flow.var1[10] - 1e-12)


@pytest.mark.parametrize("dual, f, df", [(erf_dual, erf, erf_prime), (tanh_dual, np.tanh, tanh_prime),
                                         (relu_dual, relu, step)])
@pytest.mark.parametrize("K", [0.05, 0.8, 3.0])
def test_susceptibilities_match_pdlt_integrals(dual, f, df, K):
    C_W = 1.3
    chi_par, chi_perp = susceptibilities(dual, K, C_W)
    # PDLT §5.1: chi_par = C_W / (2 K^2) <phi^2 (z^2 - K)>_K, chi_perp = C_W <phi'^2>_K.
    want_par = C_W / (2 * K ** 2) * gauss_hermite_1d(lambda z: f(z) ** 2 * (z * z - K), K)
    want_perp = C_W * gauss_hermite_1d(lambda z: df(z) ** 2, K)
    rtol = 1e-3 if dual is relu_dual else 1e-8   # Gauss–Hermite on ReLU's kink
    np.testing.assert_allclose([chi_par, chi_perp], [want_par, want_perp], rtol=rtol)
    if dual is relu_dual:  # scale invariance: both are C_W / 2 exactly
        np.testing.assert_allclose([chi_par, chi_perp], C_W / 2, rtol=1e-9)


def test_susceptibilities_govern_small_perturbations():
    # One layer maps a variance shift eps to chi_par eps, and a covariance
    # deficit eps at fixed variance to chi_perp eps (PDLT §5.1), to O(eps^2).
    C_W, C_b, K, eps = 1.4, 0.2, 0.9, 1e-5
    chi_par, chi_perp = susceptibilities(tanh_dual, K, C_W)
    flow = kernel_recursion(tanh_dual, [K, K - eps], [K, K], [K + eps, K], depth=1, C_W=C_W, C_b=C_b)
    np.testing.assert_allclose(flow.var2[1, 0] - flow.var1[1, 0], chi_par * eps, rtol=1e-4)
    np.testing.assert_allclose(flow.var1[1, 1] - flow.cov12[1, 1], chi_perp * eps, rtol=1e-4)


def test_critical_initializations():
    for name, dual in [("relu", relu_dual), ("tanh", tanh_dual), ("erf", erf_dual)]:
        crit = critical_initialization(name)
        assert crit.C_b == 0.0
        # ReLU: critical at every K; tanh / erf: at the fixed point K* = 0 (approached as K -> 0).
        for K in ([0.1, 1.0, 10.0] if name == "relu" else [1e-7]):
            np.testing.assert_allclose(susceptibilities(dual, K, crit.C_W), 1.0, rtol=1e-5)
        # Off criticality the susceptibilities are not one.
        assert abs(susceptibilities(dual, 1e-3 if name != "relu" else 1.0, 1.2 * crit.C_W)[1] - 1) > 0.1
    assert critical_initialization("relu") == (0.0, 2.0)
    assert critical_initialization("tanh") == (0.0, 1.0)
    # The tanh kernel at criticality decays to K* = 0 like a power law (~1/l), not exponentially.
    flow = kernel_recursion(tanh_dual, 1.0, 1.0, 1.0, depth=200, C_W=1.0, C_b=0.0)
    assert 0 < flow.var1[200] < flow.var1[100] < flow.var1[10]
    assert 1.5 < flow.var1[100] / flow.var1[200] < 2.5


def test_quadrature_dual_of_a_polynomial_is_exact():
    # phi(x) = x^2: E[u^2 v^2] = var1 var2 + 2 cov12^2, E[(2u)(2v)] = 4 cov12.
    dual = quadrature_dual(lambda x: x ** 2, lambda x: 2 * x, degree=8)
    c, v1, v2 = np.array([0.2, -1.0]), np.array([1.0, 2.0]), np.array([3.0, 1.0])
    np.testing.assert_allclose(dual(c, v1, v2), (v1 * v2 + 2 * c ** 2, 4 * c), rtol=1e-12)


def _sample_outputs(width, depth, n_networks, seed, C_W=2.0, chunk=5000):
    """Outputs of bias-free ReLU networks with freshly sampled weight matrices."""
    rng = np.random.default_rng(seed)
    x = np.array([1.0, -0.5, 2.0])
    out = []
    for start in range(0, n_networks, chunk):
        b = min(chunk, n_networks - start)
        z = (rng.standard_normal((b, width, x.size)) * np.sqrt(C_W / x.size)) @ x
        for _ in range(depth - 1):
            w = rng.standard_normal((b, width, width)) * np.sqrt(C_W / width)
            z = (w @ relu(z)[..., None])[..., 0]
        w_out = rng.standard_normal((b, width)) * np.sqrt(C_W / width)
        out.append(np.sum(w_out * relu(z), axis=1))
    return np.concatenate(out)


def _kurtosis_and_se(z):
    """m4 / m2^2 and its delta-method standard error."""
    z2 = z * z
    m2, m4 = z2.mean(), (z2 * z2).mean()
    grad = np.array([1 / m2 ** 2, -2 * m4 / m2 ** 3])
    return m4 / m2 ** 2, np.sqrt(grad @ np.cov(np.stack([z2 * z2, z2])) @ grad / z.size)


@pytest.mark.parametrize("width, depth", [(4, 1), (8, 2), (12, 3)])
def test_relu_kurtosis_matches_sampled_networks(width, depth):
    kurt, se = _kurtosis_and_se(_sample_outputs(width, depth, 100_000, seed=width))
    want = relu_output_kurtosis(width, depth)
    assert abs(kurt - want) <= 3 * se, (kurt, want, se)
    assert want - 3 > 6 * se  # the check resolves the finite-width correction


@pytest.mark.slow
@pytest.mark.parametrize("width, depth", [(20, 5), (16, 4), (40, 10), (8, 1)])
def test_relu_kurtosis_matches_sampled_networks_deeper(width, depth):
    kurt, se = _kurtosis_and_se(_sample_outputs(width, depth, 100_000, seed=width + depth))
    assert abs(kurt - relu_output_kurtosis(width, depth)) <= 3 * se


def test_relu_kurtosis_values_and_errors():
    assert relu_output_kurtosis(10, 1) == pytest.approx(4.5)
    assert relu_output_kurtosis(7, 0) == 3.0
    np.testing.assert_allclose(relu_output_kurtosis(np.array([10, 100]), 3), 3 * (1 + 5 / np.array([10, 100])) ** 3)
    # 1/n expansion: PDLT's leading correction 3 (1 + 5 L / n).
    assert relu_output_kurtosis(1e6, 4) == pytest.approx(3 * (1 + 20 / 1e6), rel=1e-9)
    with pytest.raises(ValueError, match="width"):
        relu_output_kurtosis(0, 2)
    with pytest.raises(ValueError, match="depth"):
        relu_output_kurtosis(10, 1.5)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="C_W"):
        kernel_recursion(relu_dual, 0.1, 1.0, 1.0, depth=2, C_W=0.0)
    with pytest.raises(ValueError, match="C_b"):
        kernel_recursion(relu_dual, 0.1, 1.0, 1.0, depth=2, C_W=1.0, C_b=-1.0)
    with pytest.raises(ValueError, match="depth"):
        kernel_recursion(relu_dual, 0.1, 1.0, 1.0, depth=-1, C_W=1.0)
    with pytest.raises(ValueError, match="not a covariance"):
        kernel_recursion(relu_dual, 3.0, 1.0, 1.0, depth=2, C_W=1.0)
    with pytest.raises(ValueError, match="var1"):
        kernel_recursion(relu_dual, 0.0, 0.0, 1.0, depth=2, C_W=1.0)
    with pytest.raises(TypeError, match="callable"):
        kernel_recursion("relu", 0.1, 1.0, 1.0, depth=2, C_W=1.0)
    with pytest.raises(ValueError, match="non-finite value at layer 1"):
        kernel_recursion(lambda c, a, b: (c * np.nan, c), 0.1, 1.0, 1.0, depth=2, C_W=1.0)
    with pytest.raises(TypeError, match="pair"):
        kernel_recursion(lambda c, a, b: c, 0.1, 1.0, 1.0, depth=2, C_W=1.0)
    with pytest.raises(ValueError, match="`K` must"):
        susceptibilities(relu_dual, 0.0, 2.0)
    with pytest.raises(ValueError, match="no critical initialization"):
        critical_initialization("sigmoid")


def test_accepts_the_jax_duals_of_kernels():
    # The same (cov12, var1, var2) convention as kernels.duals; float64 here
    # because the test session enables JAX's x64 mode.
    duals = pytest.importorskip("kernels.duals")
    for theirs, ours in [(duals.abrelu_dual(0.0, 1.0), relu_dual), (duals.erf_dual(1.0, 1.0, 0.0), erf_dual)]:
        a = kernel_recursion(theirs, [0.3, -0.2], 1.1, 0.8, depth=3, C_W=1.6, C_b=0.1)
        b = kernel_recursion(ours, [0.3, -0.2], 1.1, 0.8, depth=3, C_W=1.6, C_b=0.1)
        np.testing.assert_allclose(np.stack(a), np.stack(b), rtol=1e-12)
        np.testing.assert_allclose(susceptibilities(theirs, 0.7, 1.6), susceptibilities(ours, 0.7, 1.6),
                                   rtol=1e-9)
