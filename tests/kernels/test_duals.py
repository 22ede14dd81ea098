"""Dual maps against an independent numerical integral, at unit and non-unit variances.

E[f(u) g(v)] = int f(s1 z) E[g(v) | z] phi(z) dz, each level by adaptive quadrature
(scipy.integrate.quad), so kinks (ReLU, sign) are handled. This is where
neural-tangents is not the exact kernel (Hermite assumes unit variance, Sign and
RectifiedMonomial lose precision): ours is held against mathematics instead.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from kernels import duals

POINTS = [(0.3, 1.0, 1.0), (0.45, 0.7, 1.6), (-0.8, 1.3, 0.9), (1.2, 1.2, 1.2)]


def gaussian_expectation(f, g, cov12, var1, var2):
    s1 = math.sqrt(var1)
    slope = cov12 / var1
    rest = math.sqrt(max(var2 - cov12 ** 2 / var1, 0.))
    limit = 9.

    def inner(z):
        mean = slope * s1 * z
        if rest == 0:
            return g(mean)
        return integrate.quad(lambda w: g(mean + rest * w) * _pdf(w), -limit, limit,
                              points=[-mean / rest] if abs(mean / rest) < limit else None, limit=200)[0]

    return integrate.quad(lambda z: f(s1 * z) * inner(z) * _pdf(z), -limit, limit,
                          points=[0.], limit=200)[0]


relu = lambda t: max(t, 0.)
_cdf = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # scalar math: scipy.stats per point is slow
_pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
step = lambda t: float(t > 0)
he3 = lambda t: (t ** 3 - 3 * t) / math.sqrt(6)

FUNCTIONS = {
    "abrelu": (duals.abrelu_dual(-0.3, 0.8), lambda t: -0.3 * t if t < 0 else 0.8 * t,
               lambda t: -0.3 if t < 0 else 0.8),
    "erf": (duals.erf_dual(1.2, 0.7, 0.1), lambda t: 1.2 * special.erf(0.7 * t) + 0.1,
            lambda t: 1.2 * 0.7 * 2 / math.sqrt(math.pi) * math.exp(-0.49 * t * t)),
    "gelu": (duals.gelu_dual(), lambda t: t * _cdf(t), lambda t: _cdf(t) + t * _pdf(t)),
    "sin": (duals.sin_dual(1.1, 0.9, 0.2), lambda t: 1.1 * math.sin(0.9 * t + 0.2),
            lambda t: 0.99 * math.cos(0.9 * t + 0.2)),
    "exp": (duals.exp_dual(0.8, 0.4), lambda t: 0.8 * math.exp(0.4 * t), lambda t: 0.32 * math.exp(0.4 * t)),
    "gaussian": (duals.gaussian_dual(1.0, -0.5), lambda t: math.exp(-0.5 * t * t),
                 lambda t: -t * math.exp(-0.5 * t * t)),
    "sign": (duals.sign_dual(), lambda t: float(np.sign(t)), lambda t: 0.),
    "rectified_monomial_0": (duals.rectified_monomial_dual(0), step, lambda t: 0.),
    "rectified_monomial_1": (duals.rectified_monomial_dual(1), relu, step),
    "rectified_monomial_3": (duals.rectified_monomial_dual(3), lambda t: relu(t) ** 3, lambda t: 3 * relu(t) ** 2),
    "hermite_3": (duals.polynomial_dual(duals.hermite_polynomial_coefficients(3)), he3,
                  lambda t: (3 * t * t - 3) / math.sqrt(6)),
    "polynomial": (duals.polynomial_dual([0.2, -0.5, 0.3, 0.1]), lambda t: 0.2 - 0.5 * t + 0.3 * t * t + 0.1 * t ** 3,
                   lambda t: -0.5 + 0.6 * t + 0.3 * t * t),
    "gauss_hermite_tanh": (duals.gauss_hermite_dual(jnp.tanh, 80), math.tanh, lambda t: 1 - math.tanh(t) ** 2),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("point", POINTS, ids=lambda p: "c={},v1={},v2={}".format(*p))
def test_dual_matches_integral(name, point):
    dual, f, df = FUNCTIONS[name]
    cov12, var1, var2 = point
    nngp, dot = (float(a) for a in dual(np.float64(cov12), np.float64(var1), np.float64(var2)))
    assert nngp == pytest.approx(gaussian_expectation(f, f, *point), rel=1e-6, abs=1e-8)
    assert dot == pytest.approx(gaussian_expectation(df, df, *point), rel=1e-6, abs=1e-8)


def test_duals_are_finite_with_finite_gradients_at_correlation_one():
    import jax
    for name, (dual, _, _) in FUNCTIONS.items():
        if name == "gauss_hermite_tanh":
            continue
        value = dual(np.float64(1.3), np.float64(1.3), np.float64(1.3))
        assert all(np.isfinite(v) for v in value), name
        grad = jax.jit(jax.grad(lambda s: dual(s * 1.3, s * 1.3, s * 1.3)[0]))(1.0)
        assert np.isfinite(grad), name


@pytest.mark.parametrize("name", ["abrelu", "erf", "sign", "rectified_monomial_1"])
@pytest.mark.parametrize("point", POINTS, ids=lambda p: "c={},v1={},v2={}".format(*p))
def test_float32_overflow_of_variance_products_is_never_a_wrong_number(name, point):
    """Variances of 1e20 (a deep ReLU network at W_std = 2, or one Dense with W_std = 1e10) make
    ``var1 var2`` overflow float32 (3.4e38). That once passed the correlation-one test and gave a
    finite, wrong kernel (16% off after Dense(W_std=1e10) -> Relu); now the map gives NaN (reported
    by the layer), or, with neural-tangents' ``do_stabilize`` for the arc-cosine, the float64 value.
    Truth: the same map in float64, where nothing overflows, and the arc-cosine's scaling law
    ``nngp(l c, l v1, l v2) = l nngp(c, v1, v2)``, ``dot`` unchanged."""
    dual = FUNCTIONS[name][0]
    scale = 1e20
    big = [jnp.asarray(np.float32(v * scale)) for v in point]
    nngp32, dot32 = (np.asarray(a, np.float64) for a in dual(*big))
    assert np.isnan(nngp32) or np.isnan(dot32), (nngp32, dot32)
    if name == "abrelu":
        stable = duals.abrelu_dual(-0.3, 0.8, stabilize=True)
        nngp32, dot32 = (np.asarray(a, np.float64) for a in stable(*big))
        nngp64, dot64 = (float(a) for a in stable(*(np.float64(v) * scale for v in point)))
        nngp1, dot1 = (float(a) for a in dual(*(np.float64(v) for v in point)))
        assert nngp32 == pytest.approx(nngp64, rel=1e-5) and dot32 == pytest.approx(dot64, rel=1e-5)
        assert nngp64 == pytest.approx(scale * nngp1, rel=1e-12) and dot64 == pytest.approx(dot1, rel=1e-12)


def test_do_stabilize_keeps_a_float32_network_right_where_variance_products_overflow():
    """``Dense(W_std=1e10) -> Relu -> Dense`` in float32: without ``do_stabilize`` an error naming the
    layer (it was 16% off, silently); with it, float64's kernel (the same network at W_std = 1 times
    1e20, by homogeneity). The flag changes nothing at ordinary scales."""
    from kernels import stax
    x = np.random.default_rng(0).normal(size=(3, 4))
    exact = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))[2](x, None, ("nngp", "ntk"))
    for do_stabilize in (False, True):
        kernel_fn = stax.serial(stax.Dense(8, W_std=1e10), stax.Relu(do_stabilize=do_stabilize), stax.Dense(1))[2]
        if not do_stabilize:
            with pytest.raises(FloatingPointError, match=r"Relu\(\)"):
                kernel_fn(x.astype(np.float32), None, ("nngp", "ntk"))
            continue
        k = kernel_fn(x.astype(np.float32), None, ("nngp", "ntk"))
        np.testing.assert_allclose(np.asarray(k.nngp, np.float64) / 1e20, exact.nngp, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(k.ntk, np.float64) / 1e20, exact.ntk, rtol=1e-5)
    for act in (stax.Relu(), stax.LeakyRelu(0.2), stax.Abs()):  # ordinary scale: the same bits
        plain = stax.serial(stax.Dense(8), act, stax.Dense(1))[2](x, None, "ntk")
        name = act[2].name.split("(")[0]
        stable = stax.serial(stax.Dense(8), getattr(stax, name)(*([0.2] if name == "LeakyRelu" else []),
                                                                 do_stabilize=True), stax.Dense(1))[2](x, None, "ntk")
        np.testing.assert_array_equal(plain, stable)
