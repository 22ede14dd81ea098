"""theory.infinite_depth against computations written here without the module.

References:
  * closed forms: the degree-1 arc-cosine kernel (Cho & Saul 2009) for ReLU, Williams'
    arcsin for erf, (2 / pi) arcsin for sign, each normalized here by hand;
  * Monte Carlo of correlated Gaussian pairs (u, v) for E[phi phi] and E[phi' phi'];
  * the NNGP and NTK recursions iterated directly (unnormalized, then divided);
  * the four polynomial duals of issue 12 (alpha = 0.5, 1, 2, 4) and their exponents,
    measured as log-log slopes of the deep kernels against 1 - rho.
Every agreement test has a neighbour showing that a plausible wrong formula is rejected.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from theory.infinite_depth import deep_correlation, normalized_dual, taxonomy


def relu_xi(rho):
    """Normalized degree-1 arc-cosine kernel: E[relu(u) relu(v)] / E[relu(u)^2], E[relu^2] = 1/2."""
    rho = np.asarray(rho, float)
    return (np.sqrt(np.clip(1 - rho ** 2, 0, None)) + (np.pi - np.arccos(rho)) * rho) / np.pi


def relu_dxi(rho):
    return (np.pi - np.arccos(np.asarray(rho, float))) / np.pi


def polynomial(coefficients, with_derivative=True):
    """xi(rho) = sum_k c_k rho^k as a NumPy callable (with an exact `derivative`, or without)."""
    def xi(rho):
        rho = np.asarray(rho, float)
        return sum(c * rho ** k for k, c in coefficients.items())
    if with_derivative:
        xi.derivative = lambda rho: sum(c * k * np.asarray(rho, float) ** (k - 1) for k, c in coefficients.items())
    return xi


# issue 12's duals and their alpha = ln(1 / xi'(0)) / ln xi'(1)
SINGULAR = {
    0.5: {7: 0.5, 1: 0.5},
    1.0: {3: 0.5, 1: 0.5},
    2.0: {3: 0.25, 2: 0.5, 1: 0.25},
    4.0: {3: 1 / 16, 2: 7 / 8, 1: 1 / 16},
}


@pytest.fixture(scope="module")
def relu():
    return normalized_dual(stax.Relu())


def test_relu_dual_is_the_normalized_arc_cosine_kernel(relu):
    rho = np.array([-1.0, -0.7, 0.0, 0.3, 0.99, 1 - 1e-9, 1.0])
    np.testing.assert_allclose(relu(rho), relu_xi(rho), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(relu.derivative(rho), relu_dxi(rho), rtol=1e-12, atol=1e-15)
    assert relu(1.0) == 1.0 and relu.derivative(1.0) == 1.0  # exact at rho = 1
    assert relu.second_moment == pytest.approx(0.5, rel=1e-14)
    # Not normalized (E[relu^2] = 1/2 kept) would give xi(1) = 1/2 and xi'(1) = 1/2.
    assert abs(relu(0.3) - 0.5 * relu_xi(0.3)) > 0.1 and abs(relu.derivative(1.0) - 0.5) > 0.4


def test_duals_match_monte_carlo_of_correlated_pairs(relu):
    rng = np.random.default_rng(0)
    n = 400_000
    z1, z2 = rng.standard_normal((2, n))
    for rho in (-0.6, 0.4, 0.9):
        u, v = z1, rho * z1 + math.sqrt(1 - rho ** 2) * z2
        for values, target in ((np.maximum(u, 0) * np.maximum(v, 0) / 0.5, relu(rho)),
                               ((u > 0) * (v > 0) / 0.5, relu.derivative(rho))):
            se = values.std() / math.sqrt(n)
            assert abs(values.mean() - target) < 5 * se, (rho, values.mean(), target, se)
            # the derivative is E[phi' phi'] / E[phi^2]; E[phi' phi'] alone is 2x off
            assert abs(values.mean() - 0.5 * target) > 20 * se


@pytest.mark.slow
def test_python_function_by_quadrature_matches_monte_carlo():
    from scipy.integrate import quad
    xi = normalized_dual(jnp.tanh)
    assert 0 < xi.error <= 1e-6
    gauss = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    second = quad(lambda z: math.tanh(z) ** 2 * gauss(z), -np.inf, np.inf, epsabs=1e-13)[0]
    assert xi.second_moment == pytest.approx(second, rel=max(xi.error, 1e-12))
    rng = np.random.default_rng(1)
    n = 400_000
    z1, z2 = rng.standard_normal((2, n))
    for rho in (-0.5, 0.8, 1.0):
        u, v = z1, rho * z1 + math.sqrt(1 - rho ** 2) * z2
        for values, target in ((np.tanh(u) * np.tanh(v), xi(rho)),
                               ((1 - np.tanh(u) ** 2) * (1 - np.tanh(v) ** 2), xi.derivative(rho))):
            se = values.std() / math.sqrt(n)
            assert abs(values.mean() - second * target) < 5 * se, (rho, values.mean(), second * target, se)
    assert xi(1.0) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.slow
def test_a_kinked_python_function_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        normalized_dual(lambda x: jnp.maximum(x, 0.0))


def test_bad_activation_arguments_are_named():
    with pytest.raises(TypeError, match="activation"):
        normalized_dual(stax.Dense(1))
    with pytest.raises(TypeError, match="activation"):
        normalized_dual(3.0)
    with pytest.raises(ValueError, match="deg"):
        normalized_dual(jnp.tanh, deg=400)
    with pytest.raises(ValueError, match="tolerance"):
        normalized_dual(jnp.tanh, tolerance=0.0)
    with pytest.raises(ValueError, match="deg"):
        normalized_dual(stax.Relu(), deg=32)  # a layer brings its own rule


def test_rho_outside_the_unit_interval_is_refused(relu):
    with pytest.raises(ValueError, match="rho"):
        relu(np.array([0.5, 1.01]))
    with pytest.raises(ValueError, match="rho"):
        deep_correlation(relu, [-1.5], 2)
    assert np.shape(relu(np.zeros((2, 3)))) == (2, 3) and np.ndim(relu(0.2)) == 0


def _direct_recursions(dual, dual_derivative, rho, depth):
    """Sigma_L and Theta_L iterated as written, unnormalized (Theta_L(1) computed the same way)."""
    sigma, theta = np.array(rho, float), np.array(rho, float)
    sigma1, theta1 = 1.0, 1.0
    for _ in range(depth):
        theta = dual(sigma) + dual_derivative(sigma) * theta
        theta1 = dual(sigma1) + dual_derivative(sigma1) * theta1
        sigma, sigma1 = dual(sigma), dual(sigma1)
    return sigma, theta / theta1


def test_deep_correlation_matches_direct_iteration(relu):
    rho = np.linspace(-1, 1, 9).reshape(3, 3)
    for depth in (0, 1, 5):
        sigma, theta = _direct_recursions(relu_xi, relu_dxi, rho, depth)
        np.testing.assert_allclose(deep_correlation(relu, rho, depth, "nngp"), sigma, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(deep_correlation(relu, rho, depth, "ntk"), theta, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(deep_correlation(relu, rho, 0, "ntk"), rho)
    # one layer by hand: Theta_1 = (xi + xi' rho) / (1 + xi'(1)) = (xi + xi' rho) / 2
    np.testing.assert_allclose(deep_correlation(relu, 0.3, 1, "ntk"), (relu_xi(0.3) + relu_dxi(0.3) * 0.3) / 2,
                               rtol=1e-13)
    # xi'(Sigma_l) instead of xi'(Sigma_{l-1}) in the NTK recursion is a different kernel
    assert abs(deep_correlation(relu, 0.3, 1, "ntk") - (relu_xi(0.3) + relu_dxi(relu_xi(0.3)) * 0.3) / 2) > 1e-3


def test_ntk_ratio_does_not_overflow_at_great_depth():
    xi = polynomial(SINGULAR[1.0])  # Theta_L(1) ~ 2^L overflows float64 past L ~ 1024
    values = deep_correlation(xi, np.array([0.2, 1 - 1e-3, 1.0]), 1100, "ntk")
    assert np.all(np.isfinite(values)) and values[-1] == pytest.approx(1.0) and np.all(values <= 1.0)
    sigma, theta = _direct_recursions(xi, xi.derivative, np.array([0.2, 0.9]), 40)
    np.testing.assert_allclose(deep_correlation(xi, [0.2, 0.9], 40, "ntk"), theta, rtol=1e-12)


def test_finite_differences_stand_in_for_a_missing_derivative():
    exact, bare = polynomial(SINGULAR[2.0]), polynomial(SINGULAR[2.0], with_derivative=False)
    rho = np.array([-0.4, 0.1, 0.95, 1.0])
    np.testing.assert_allclose(deep_correlation(bare, rho, 6, "ntk"), deep_correlation(exact, rho, 6, "ntk"),
                               rtol=1e-8)


@pytest.mark.parametrize("alpha", sorted(SINGULAR))
def test_taxonomy_of_the_singular_polynomial_duals(alpha):
    for with_derivative, tol in ((True, 1e-12), (False, 1e-8)):
        xi = polynomial(SINGULAR[alpha], with_derivative)
        ntk, nngp = taxonomy(xi), taxonomy(xi, "nngp")
        assert ntk.kind == nngp.kind == "singular"
        assert ntk.alpha == pytest.approx(alpha, abs=tol) and nngp.alpha == pytest.approx(alpha, abs=tol)
        assert nngp.exponent == pytest.approx(alpha, abs=tol) and ntk.exponent == pytest.approx(1 + alpha, abs=tol)
        # the inverted ratio ln xi'(1) / ln(1 / xi'(0)) agrees only at alpha = 1
        if alpha != 1.0:
            assert abs(ntk.alpha - 1 / alpha) > 0.4


def test_taxonomy_of_relu_identity_and_a_nearest_neighbour_dual(relu):
    assert taxonomy(relu) == ("majority_vote", None, 0.0)
    assert taxonomy(lambda r: np.asarray(r, float)) == ("other", None, None)
    assert taxonomy(lambda r: np.asarray(r, float) ** 2) == ("nearest_neighbor", math.inf, math.inf)
    with pytest.raises(ValueError, match="xi"):
        taxonomy(lambda r: 2 * np.asarray(r, float))  # not normalized: xi(1) = 2
    with pytest.raises(ValueError, match="kernel"):
        taxonomy(relu, kernel="gp")


def _slope(log_values, eps):
    """Least-squares exponent e in values ~ eps^(-e)."""
    return -np.polyfit(np.log(eps), log_values, 1)[0]


@pytest.mark.parametrize("alpha", sorted(SINGULAR))
def test_deep_kernels_have_the_taxonomy_exponents(alpha):
    """NNGP: the Koenigs-rescaled Sigma_L(rho) / xi'(0)^L ~ (1 - rho)^(-alpha); NTK at depth L:
    Theta_L(rho) / Theta_L(1) ~ (1 - rho)^(-(1 + alpha)) for xi'(1)^(-L) << 1 - rho << 1 / L.
    Fitted over 1 - rho in [1e-10, 1e-4], many periods of the log-periodic ripple (period
    ln xi'(1) in ln(1 - rho), amplitude up to 0.02 in the local slope at alpha = 0.5)."""
    xi = polynomial(SINGULAR[alpha])
    eps = np.logspace(-10, -4, 25)
    depth = 80
    log_a = math.log(xi.derivative(0.0))
    nngp = _slope(np.log(deep_correlation(xi, 1 - eps, depth, "nngp")) - depth * log_a, eps)
    ntk = _slope(np.log(deep_correlation(xi, 1 - eps, depth, "ntk")), eps)
    assert nngp == pytest.approx(taxonomy(xi, "nngp").exponent, abs=2e-3)
    assert ntk == pytest.approx(taxonomy(xi, "ntk").exponent, abs=2e-3)
    # swapped exponents are rejected
    assert abs(nngp - (1 + alpha)) > 0.9 and abs(ntk - alpha) > 0.9
    # the rescaling has converged: Sigma_L / xi'(0)^L is the Koenigs function h, not still moving
    h60 = np.log(deep_correlation(xi, 1 - eps[:3], 60, "nngp")) - 60 * log_a
    h80 = np.log(deep_correlation(xi, 1 - eps[:3], 80, "nngp")) - 80 * log_a
    np.testing.assert_allclose(h60, h80, atol=1e-9)


def test_ntk_exponent_window_closes_at_fixed_rho_as_depth_grows():
    """At fixed 1 - rho in [0.01, 0.1] the NTK's effective exponent falls from near 1 + alpha
    towards the NNGP's as the depth grows (Theta_L / xi'(0)^L = L h + g, the L h term wins)."""
    xi = polynomial(SINGULAR[1.0])
    eps = np.array([1e-2, 1e-1])
    nngp = _slope(np.log(deep_correlation(xi, 1 - eps, 100, "nngp")), eps)
    effective = [_slope(np.log(deep_correlation(xi, 1 - eps, depth, "ntk")), eps) for depth in (25, 100, 400)]
    assert effective[0] > effective[1] > effective[2] > nngp
    assert effective[0] > 1.6 and effective[2] - nngp < 0.2


def test_depth_and_kernel_arguments_are_checked(relu):
    for depth in (-1, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="depth"):
            deep_correlation(relu, 0.5, depth)
    with pytest.raises(ValueError, match="kernel"):
        deep_correlation(relu, 0.5, 2, kernel="nngp_ntk")
    with pytest.raises(TypeError, match="xi"):
        deep_correlation("relu", 0.5, 2)


@pytest.mark.slow
def test_erf_and_sign_layers():
    """Erf: Williams' arcsin, normalized; Sign: (2 / pi) arcsin, whose layer drops phi''s delta,
    so the derivative comes from E[phi phi] (Price) and is infinite at rho = 1."""
    c = math.asin(2 / 3)
    erf = normalized_dual(stax.Erf())
    rho = np.array([-1.0, -0.2, 0.5, 1.0])
    np.testing.assert_allclose(erf(rho), np.arcsin(2 * rho / 3) / c, rtol=1e-12)
    np.testing.assert_allclose(erf.derivative(rho), (2 / 3) / np.sqrt(1 - 4 * rho ** 2 / 9) / c, rtol=1e-12)
    t = taxonomy(erf)
    assert t.kind == "singular"
    assert t.alpha == pytest.approx(math.log(c / (2 / 3)) / math.log(2 / (math.sqrt(5) * c)), rel=1e-12)
    sign = normalized_dual(stax.Sign())
    inner = np.array([-0.9, 0.0, 0.6])
    np.testing.assert_allclose(sign(inner), 2 / np.pi * np.arcsin(inner), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sign.derivative(inner), 2 / np.pi / np.sqrt(1 - inner ** 2), rtol=1e-9)
    assert sign.derivative(1.0) == np.inf
    assert taxonomy(sign, "nngp") == ("singular", 0.0, 0.0)
    with pytest.raises(ValueError, match="finite xi'"):
        deep_correlation(sign, 0.5, 3, "ntk")
    hermite = normalized_dual(stax.Hermite(2))
    np.testing.assert_allclose(hermite(rho), rho ** 2, atol=1e-14)
    assert taxonomy(hermite).kind == "nearest_neighbor"
    assert taxonomy(normalized_dual(stax.Monomial(1))) == ("other", None, None)


@pytest.mark.slow
def test_a_numerical_layer_agrees_with_the_same_function_by_quadrature():
    """Same rule (deg = 40, estimated error 2e-5 for tanh), through the layer's kernel rule or directly."""
    layer = normalized_dual(stax.ElementwiseNumerical(jnp.tanh, 40))
    function = normalized_dual(jnp.tanh, deg=40, tolerance=1e-4)
    assert 1e-6 < function.error < 1e-4
    rho = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(layer(rho), function(rho), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.derivative(rho), function.derivative(rho), rtol=1e-12)
    assert layer(1.0) == 1.0 and taxonomy(layer).kind == "singular"
