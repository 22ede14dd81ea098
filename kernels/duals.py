"""Dual maps of elementwise activations.

For pre-activations ``(u, v)`` jointly Gaussian with ``Var u = var1``,
``Var v = var2`` and ``Cov(u, v) = cov12``, a dual map returns

    (E[phi(u) phi(v)], E[phi'(u) phi'(v)])

elementwise over broadcast arrays: the first is the next layer's NNGP, the
second scales the NTK (Lee et al. 2018, eq. 4; Jacot et al. 2018, Thm. 1).
By Price's theorem (Price 1958) the second is the derivative of the first in
``cov12``, which `price_derivative` uses where no closed form is written out.

Closed forms are written so that they stay finite and differentiable at
correlation one (the diagonal of every kernel): square roots of
``var1 * var2 - cov12**2`` go through `_safe_sqrt`, and angles use ``atan2``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Dual = Callable[[jax.Array, jax.Array, jax.Array], Tuple[jax.Array, jax.Array]]


def _safe_sqrt(x):
    """sqrt(max(x, 0)), with a finite gradient everywhere (zero where x <= 0).

    One ``maximum`` rather than the usual double ``where``: XLA may recompute
    ``x`` inside a fusion with different rounding, and two ``where``s that see
    different signs of a rounding-level ``x`` returned sqrt(1) at correlation one.
    """
    return jnp.sqrt(jnp.maximum(x, jnp.finfo(jnp.result_type(x)).tiny))


def _atan_series_terms(dtype) -> int:
    """Terms of the arctan Taylor series on |r| <= tan(pi/8) that reach the dtype's precision."""
    return 11 if jnp.finfo(dtype).bits <= 32 else 22


def arctan2(y, x):
    """``atan2(y, x)`` from arithmetic alone, to the precision of the dtype.

    XLA's CPU ``atan2`` is not vectorized (measured 100 ns per float32 element,
    against under 1 ns for a multiply-add), and it dominates pooled-CNN kernels,
    which take one angle per pair of positions. Range reduction to
    ``|r| <= tan(pi/8)`` (via ``atan t = pi/4 + atan((t-1)/(t+1))``) makes the
    alternating Taylor series converge to below one ulp in 11 terms (float32)
    or 22 (float64).
    """
    ax, ay = jnp.abs(x), jnp.abs(y)
    big, small = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
    t = small / jnp.where(big > 0, big, 1)
    reduce = t > 0.41421356237309503
    r = jnp.where(reduce, (t - 1) / (t + 1), t)
    r2 = r * r
    terms = _atan_series_terms(jnp.result_type(r))
    poly = jnp.zeros_like(r)
    for k in reversed(range(terms)):
        poly = poly * r2 + (-1) ** k / (2 * k + 1)
    angle = jnp.where(reduce, jnp.pi / 4, 0) + r * poly
    angle = jnp.where(ay > ax, jnp.pi / 2 - angle, angle)
    angle = jnp.where(x < 0, jnp.pi - angle, angle)
    return jnp.where(y < 0, -angle, angle)


def _sine_squared(cov12, var1, var2):
    """``var1 var2 - cov12^2``, snapped to zero within rounding of correlation one.

    A pair at correlation one (every kernel's diagonal) gets ``var1 var2 - cov12^2``
    of a few ulps of either sign from rounding, which an angle turns into
    ``sqrt(eps)`` (1e-8 in float64, 3e-4 in float32) per layer; below 16 ulps
    of ``var1 var2`` the difference is taken to be zero, so the diagonal is exact.
    """
    product = var1 * var2
    s2 = product - cov12 ** 2
    s2 = jnp.where(s2 <= 16 * jnp.finfo(jnp.result_type(s2)).eps * product, 0, s2)
    # A product that overflows (float32 variances above 1.8e19) passed the test above as "correlation
    # one" and gave a wrong, finite kernel; now it is NaN, which the layer reports by name.
    return jnp.where(jnp.isfinite(product), s2, jnp.nan)


def _half_exponent_scales(var):
    """``(2**-h, 2**h)`` with ``h = floor(e / 2)`` for frexp's exponent ``e`` of each variance
    (``var = m 2**e``, ``1/2 <= m < 1``), so that ``var 4**-h`` lies in ``[1/4, 1)``; read off the
    bits (zero and subnormals as the smallest normal number)."""
    info = jnp.finfo(var.dtype)
    uint = jnp.uint32 if info.bits == 32 else jnp.uint64
    bias = info.maxexp - 1
    biased = (jax.lax.bitcast_convert_type(var, uint) >> info.nmant) & (2 * bias + 1)  # e + bias - 1
    half = (jnp.maximum(biased, 1).astype(jnp.int32) - (bias - 1)) >> 1  # floor(e / 2)

    def power(k):  # 2.0 ** k, exactly (|k| <= bias / 2 here)
        return jax.lax.bitcast_convert_type((k + bias).astype(uint) << info.nmant, var.dtype)
    return power(-half), power(half)


def _balanced(cov12, var1, var2):
    """``(cov12, var1, var2)`` scaled by powers of two to variances in ``[1/4, 1)``, and the factor
    ``g`` (a power of two) with ``sqrt(var1 var2) = g sqrt(v1 v2)`` for the scaled ``v1, v2``.

    neural-tangents' ``do_stabilize``: products of variances overflow long before the variances
    do (in float32 from variances of 1.8e19: a deep ReLU network at ``W_std = 2``, one ``Dense``
    with ``W_std = 1e10``). Scaling by powers of two is exact, so results are unchanged to the bit
    where nothing overflowed. Opt-in, as there: it makes deep networks compile about 2.5x slower.
    """
    dtype = jnp.result_type(cov12, var1, var2)
    var1, var2 = jnp.asarray(var1, dtype), jnp.asarray(var2, dtype)
    (down1, up1), (down2, up2) = (_half_exponent_scales(jax.lax.stop_gradient(v)) for v in (var1, var2))
    return cov12 * down1 * down2, var1 * down1 * down1, var2 * down2 * down2, up1 * up2


def _angle(cov12, var1, var2, stabilize: bool = False):
    """(theta, sqrt(var1 var2 - cov12^2)) with theta the angle between u and v; ``stabilize``:
    computed on `_balanced` arguments, so that products of large variances do not overflow."""
    c, v1, v2, g = _balanced(cov12, var1, var2) if stabilize else (cov12, var1, var2, None)
    s = _safe_sqrt(_sine_squared(c, v1, v2))
    return arctan2(s, c), s if g is None else s * g


def abrelu_dual(a: float, b: float, stabilize: bool = False) -> Dual:
    """phi(x) = a x for x < 0, b x for x >= 0 (``stabilize``: see `_balanced`).

    With J the arc-cosine kernel of degree one (Cho & Saul 2009, eq. 6),
    ``E[phi phi] = (b - a)^2 J + a b cov12`` since ``phi = (b - a) relu(x) + a x``
    and ``E[relu(u) v] = cov12 / 2``; likewise
    ``E[phi' phi'] = a b + (b - a)^2 (pi - theta) / (2 pi)``.
    """
    def dual(cov12, var1, var2):
        theta, s = _angle(cov12, var1, var2, stabilize)
        arc1 = (s + (jnp.pi - theta) * cov12) / (2 * jnp.pi)
        arc0 = (jnp.pi - theta) / (2 * jnp.pi)
        return (b - a) ** 2 * arc1 + a * b * cov12, a * b + (b - a) ** 2 * arc0
    return dual


def rectified_monomial_dual(degree: int) -> Dual:
    """phi(x) = max(x, 0)^degree: the arc-cosine kernel of that degree (Cho & Saul 2009).

    Uses the three-term recursion, derived from Price's theorem and the
    degree-0 and degree-1 closed forms, with ``s^2 = var1 var2 - cov12^2``:
    ``K_n = (2n - 1) cov12 K_{n-1} + (n - 1)^2 s^2 K_{n-2}`` for n >= 2.
    It has no division by ``sin(theta)``, so it is finite at correlation one.
    """
    def arc(n, cov12, theta, s):
        k0 = (jnp.pi - theta) / (2 * jnp.pi)
        if n == 0:
            return k0
        k1 = (s + (jnp.pi - theta) * cov12) / (2 * jnp.pi)
        for m in range(2, n + 1):
            k0, k1 = k1, (2 * m - 1) * cov12 * k1 + (m - 1) ** 2 * s ** 2 * k0
        return k1

    def dual(cov12, var1, var2):
        theta, s = _angle(cov12, var1, var2)
        nngp = arc(degree, cov12, theta, s)
        dot = degree ** 2 * arc(degree - 1, cov12, theta, s) if degree > 0 else jnp.zeros_like(nngp)
        return nngp, dot
    return dual


def erf_dual(a: float, b: float, c: float) -> Dual:
    """phi(x) = a erf(b x) + c (Williams 1997, eq. 11).

    ``E[erf(bu) erf(bv)] = (2/pi) arcsin(2 b^2 cov12 / sqrt((1 + 2 b^2 var1)(1 + 2 b^2 var2)))``;
    ``E[phi' phi'] = (4 a^2 b^2 / pi) / sqrt((1 + 2b^2 var1)(1 + 2b^2 var2) - 4 b^4 cov12^2)``.
    """
    def dual(cov12, var1, var2):
        d1, d2 = 1 + 2 * b ** 2 * var1, 1 + 2 * b ** 2 * var2
        num = 2 * b ** 2 * cov12
        product = d1 * d2
        det = jnp.where(jnp.isfinite(product), product - num ** 2, jnp.nan)  # overflow: reported, not wrong
        nngp = a ** 2 * (2 / jnp.pi) * arctan2(num, _safe_sqrt(det)) + c ** 2
        dot = 4 * a ** 2 * b ** 2 / jnp.pi / jnp.sqrt(det)
        return nngp, dot
    return dual


def sin_dual(a: float, b: float, c: float) -> Dual:
    """phi(x) = a sin(b x + c): Gaussian characteristic function of u -+ v.

    ``E[sin(bu+c) sin(bv+c)] = (exp(-b^2 (var1+var2-2cov12)/2) - cos(2c) exp(-b^2 (var1+var2+2cov12)/2)) / 2``
    and the cosine counterpart with a plus sign for ``E[phi' phi'] / (a b)^2``.
    """
    def dual(cov12, var1, var2):
        minus = jnp.exp(-b ** 2 * (var1 + var2 - 2 * cov12) / 2)
        plus = jnp.cos(2 * c) * jnp.exp(-b ** 2 * (var1 + var2 + 2 * cov12) / 2)
        return a ** 2 * (minus - plus) / 2, (a * b) ** 2 * (minus + plus) / 2
    return dual


def exp_dual(a: float, b: float) -> Dual:
    """phi(x) = a exp(b x): ``E[phi phi] = a^2 exp(b^2 (var1 + var2 + 2 cov12) / 2)``."""
    def dual(cov12, var1, var2):
        nngp = a ** 2 * jnp.exp(b ** 2 * (var1 + var2 + 2 * cov12) / 2)
        return nngp, b ** 2 * nngp
    return dual


def gaussian_dual(a: float, b: float) -> Dual:
    """phi(x) = a exp(b x^2), b < 1/(2 var): ``E[phi phi] = a^2 det(I - 2 b Sigma)^{-1/2}``.

    ``E[phi' phi'] = d/dcov12 E[phi phi] = 4 a^2 b^2 cov12 det^{-3/2}`` (Price's theorem).
    """
    def dual(cov12, var1, var2):
        det = (1 - 2 * b * var1) * (1 - 2 * b * var2) - 4 * b ** 2 * cov12 ** 2
        nngp = a ** 2 / jnp.sqrt(det)
        return nngp, 4 * a ** 2 * b ** 2 * cov12 / det ** 1.5
    return dual


def sign_dual() -> Dual:
    """phi(x) = sign(x): ``E = (2/pi) arcsin(rho)``; its derivative is zero almost everywhere."""
    def dual(cov12, var1, var2):
        s = _safe_sqrt(_sine_squared(cov12, var1, var2))
        nngp = (2 / jnp.pi) * arctan2(cov12, s)
        return nngp, jnp.zeros_like(nngp)
    return dual


def _hermite_coefficients(i: int, m: int) -> float:
    """a_{i,m} with x^i = sum_m a_{i,m} He_m(x): i! / (m! ((i-m)/2)! 2^((i-m)/2))."""
    j = (i - m) // 2
    return math.factorial(i) / (math.factorial(m) * math.factorial(j) * 2 ** j)


def _polynomial_moment(coef: Sequence[float]):
    """E[p(u) p(v)] for a polynomial p with coefficients ``coef`` (lowest first).

    Expanding ``p(sigma z)`` in probabilists' Hermite polynomials, orthogonal
    under correlated Gaussians (``E[He_m(z1) He_n(z2)] = delta_mn m! rho^m``),
    gives ``sum_m m! cov12^m g_m(var1) g_m(var2)`` with
    ``g_m(v) = sum_{i >= m, i = m mod 2} coef_i a_{i,m} v^((i-m)/2)``.
    """
    coef = [float(x) for x in coef]
    degree = len(coef) - 1

    def moment(cov12, var1, var2):
        total = jnp.zeros_like(cov12 * var1 * var2)
        for m in range(degree + 1):
            terms = [(coef[i] * _hermite_coefficients(i, m), (i - m) // 2)
                     for i in range(m, degree + 1, 2) if coef[i] != 0]
            if not terms:
                continue
            g1 = sum(c * var1 ** p for c, p in terms)
            g2 = sum(c * var2 ** p for c, p in terms)
            total = total + math.factorial(m) * cov12 ** m * g1 * g2
        return total
    return moment


def polynomial_dual(coef: Sequence[float]) -> Dual:
    """phi(x) = sum_i coef[i] x^i, exact for any input variances (Hermite expansion)."""
    coef = list(coef)
    derivative = [i * coef[i] for i in range(1, len(coef))] or [0.]
    nngp_fn, dot_fn = _polynomial_moment(coef), _polynomial_moment(derivative)
    return lambda cov12, var1, var2: (nngp_fn(cov12, var1, var2), dot_fn(cov12, var1, var2))


def hermite_polynomial_coefficients(degree: int) -> list:
    """Coefficients of He_n(x) / sqrt(n!) (probabilists' Hermite, unit norm under N(0, 1))."""
    coef = [0.] * (degree + 1)
    for k in range(degree // 2 + 1):
        coef[degree - 2 * k] = ((-1) ** k * math.factorial(degree)
                                / (math.factorial(k) * math.factorial(degree - 2 * k) * 2 ** k))
    norm = math.sqrt(math.factorial(degree))
    return [c / norm for c in coef]


def gelu_dual() -> Dual:
    """phi(x) = x Phi(x), Phi the standard normal CDF.

    Writing ``Phi(u) = P(z1 <= u)`` with independent ``z1, z2 ~ N(0, 1)``,
    ``E[phi(u) phi(v)] = E[u v 1{w1 >= 0} 1{w2 >= 0}]`` for ``w = (u - z1, v - z2)``,
    a second moment of a Gaussian over the positive quadrant of ``w``. With
    ``r`` the correlation of ``w`` and ``D = sqrt(1 - r^2)`` (Rosenbaum 1961):
    ``P(w >= 0) = 1/4 + arcsin(r) / (2 pi)``, ``E[w1^2 1] / var(w1) = P + r D / (2 pi)``,
    ``E[w1 w2 1] / sd1 sd2 = r P + D / (2 pi)``. The projection of (u, v) on w
    gives the rest. The derivative dual follows by Price's theorem.
    """
    def nngp(cov12, var1, var2):
        # w covariance
        s11, s22, s12 = var1 + 1, var2 + 1, cov12
        sd1, sd2 = jnp.sqrt(s11), jnp.sqrt(s22)
        r = s12 / (sd1 * sd2)
        dd = _safe_sqrt(1 - r ** 2)
        p = 0.25 + arctan2(r, dd) / (2 * jnp.pi)
        m11 = s11 * (p + r * dd / (2 * jnp.pi))
        m22 = s22 * (p + r * dd / (2 * jnp.pi))
        m12 = sd1 * sd2 * (r * p + dd / (2 * jnp.pi))
        # regression of (u, v) on w: Cov([u, v], w) = [[var1, cov12], [cov12, var2]] = A Sigma_w
        det = s11 * s22 - s12 ** 2
        cu1, cu2 = var1, cov12  # Cov(u, w1), Cov(u, w2)
        cv1, cv2 = cov12, var2
        # A = C Sigma_w^{-1}; Sigma_w^{-1} = [[s22, -s12], [-s12, s11]] / det
        au1 = (cu1 * s22 - cu2 * s12) / det
        au2 = (cu2 * s11 - cu1 * s12) / det
        av1 = (cv1 * s22 - cv2 * s12) / det
        av2 = (cv2 * s11 - cv1 * s12) / det
        residual = cov12 - (au1 * cv1 + au2 * cv2)  # Cov(u - A_u w, v - A_v w)
        second = au1 * av1 * m11 + (au1 * av2 + au2 * av1) * m12 + au2 * av2 * m22
        return residual * p + second
    return with_price_derivative(nngp)


def on_flat_arrays(dual: Dual) -> Dual:
    """``dual`` evaluated on its three arguments broadcast together and flattened, its two results
    reshaped back: the same values, computed where jaxlib's CPU backend computes them correctly.

    On the high-rank broadcasts of kernels with position pairs, XLA CPU (jaxlib 0.10) evaluated
    a user's arc-cosine ``nngp_fn`` and its derivative inconsistently: the derivative's large
    cancelling terms (``-c / sqrt(v1 v2 - c^2)`` at correlation one) no longer cancelled, giving
    1e8 where the closed form gives 0; and 0.10.2 corrupted memory running ``jit(jacrev)`` of a
    Gauss–Hermite rule. On flat arrays neither happens (tests/kernels/test_xla_workarounds.py).
    """
    def flat(cov12, var1, var2):
        cov12, var1, var2 = jnp.broadcast_arrays(cov12, var1, var2)
        shape = cov12.shape
        return tuple(out.reshape(shape) for out in dual(cov12.reshape(-1), var1.reshape(-1), var2.reshape(-1)))
    return flat


def with_price_derivative(nngp_fn) -> Dual:
    """A dual from its first half alone: ``E[phi' phi'] = d E[phi phi] / d cov12`` (Price 1958)."""
    def dual(cov12, var1, var2):
        return jax.jvp(lambda c: nngp_fn(c, var1, var2), (cov12,), (jnp.ones_like(cov12),))
    return on_flat_arrays(dual)


def gauss_hermite_dual(fn, deg: int, df=None) -> Dual:
    """E[fn(u) fn(v)] and E[df(u) df(v)] by a ``deg x deg`` Gauss–Hermite rule.

    ``u = sqrt(var1) x1``, ``v = cov12 / sqrt(var1) x1 + sqrt(var2 - cov12^2 / var1) x2``
    with ``x1, x2`` independent standard normals. Exact for polynomials of degree
    below ``2 deg`` in each variable; tested against closed forms.
    """
    if df is None:
        df = jnp.vectorize(jax.grad(fn))
    nodes, weights = np.polynomial.hermite_e.hermegauss(deg)
    weights = weights / weights.sum()

    def expectation(f, cov12, var1, var2):
        dtype = jnp.result_type(cov12)
        x = jnp.asarray(nodes, dtype)
        w = jnp.asarray(weights, dtype)
        sd1 = jnp.sqrt(var1)[..., None, None]
        slope = jnp.where(var1 > 0, cov12 / jnp.where(var1 > 0, jnp.sqrt(var1), 1), 0)[..., None, None]
        rest = _safe_sqrt(var2 - jnp.where(var1 > 0, cov12 ** 2 / jnp.where(var1 > 0, var1, 1), 0))[..., None, None]
        u = sd1 * x[:, None]
        v = slope * x[:, None] + rest * x[None, :]
        return jnp.einsum("...ij,i,j->...", f(u) * f(v), w, w)

    def dual(cov12, var1, var2):
        # The rule conditions v on u; averaging both orders makes kernels exactly symmetric.
        def symmetric(f):
            return (expectation(f, cov12, var1, var2) + expectation(f, cov12, var2, var1)) / 2
        return symmetric(fn), symmetric(df)
    return on_flat_arrays(dual)


# ----------------------------------------------------------------------------- means
# E[phi(u)] for u ~ N(0, var), elementwise over ``var``: the channel mean of an activation's
# outputs at infinite width, which `LayerNorm` subtracts. A ``Mean`` maps ``var`` to it.

Mean = Callable[[jax.Array], jax.Array]


def abrelu_mean(a: float, b: float) -> Mean:
    """phi = a x (x < 0), b x (x >= 0): ``E[u 1{u > 0}] = sqrt(var / (2 pi))``, so ``(b - a) sqrt(var / 2 pi)``."""
    return lambda var: (b - a) * jnp.sqrt(var / (2 * jnp.pi))


def constant_mean(c: float) -> Mean:
    """An odd function plus ``c`` (``a erf(b x) + c``, ``sign``): the mean is ``c``."""
    return lambda var: jnp.full_like(var, c)


def sin_mean(a: float, b: float, c: float) -> Mean:
    """phi = a sin(b x + c): ``E[sin(b u + c)] = sin(c) exp(-b^2 var / 2)`` (characteristic function)."""
    return lambda var: a * math.sin(c) * jnp.exp(-b ** 2 * var / 2)


def exp_mean(a: float, b: float) -> Mean:
    """phi = a exp(b x): the log-normal mean ``a exp(b^2 var / 2)``."""
    return lambda var: a * jnp.exp(b ** 2 * var / 2)


def gaussian_mean(a: float, b: float) -> Mean:
    """phi = a exp(b x^2), b < 1 / (2 var): ``a (1 - 2 b var)^(-1/2)``."""
    return lambda var: a / jnp.sqrt(1 - 2 * b * var)


def polynomial_mean(coef: Sequence[float]) -> Mean:
    """phi = sum_i coef[i] x^i: ``E[u^i] = (i - 1)!! var^(i/2)`` for even ``i``, zero for odd."""
    coef = [float(c) for c in coef]

    def mean(var):
        total = jnp.zeros_like(var)
        for i in range(0, len(coef), 2):
            if coef[i]:
                total = total + coef[i] * math.prod(range(i - 1, 0, -2)) * var ** (i // 2)
        return total
    return mean


def rectified_monomial_mean(degree: int) -> Mean:
    """phi = max(x, 0)^n: ``E[z^n 1{z > 0}] = 2^(n/2) Gamma((n + 1) / 2) / (2 sqrt(pi))`` for z ~ N(0, 1)."""
    constant = 2 ** (degree / 2) * math.gamma((degree + 1) / 2) / (2 * math.sqrt(math.pi))
    return lambda var: constant * var ** (degree / 2)


def gelu_mean() -> Mean:
    """phi = x Phi(x): by Stein's lemma ``E[u Phi(u)] = var E[N'(u)] = var / sqrt(2 pi (1 + var))``."""
    return lambda var: var / jnp.sqrt(2 * jnp.pi * (1 + var))


def gauss_hermite_mean(fn, deg: int) -> Mean:
    """``E[fn(u)]`` by a ``deg``-point Gauss–Hermite rule (exact for polynomials below degree ``2 deg``)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(deg)
    weights = weights / weights.sum()

    def mean(var):
        dtype = jnp.result_type(var)
        u = jnp.sqrt(var)[..., None] * jnp.asarray(nodes, dtype)
        return jnp.sum(fn(u) * jnp.asarray(weights, dtype), -1)
    return mean


def gauss_hermite_reference_degree(deg: int) -> int:
    """The rule a ``deg``-point rule is checked against: ``2 deg + 1`` points (sharing no node
    but zero), at most 351, since NumPy's weights overflow past about 350 points."""
    return min(2 * deg + 1, 351)


def gauss_hermite_gap(coarse: Dual, fine: Dual, var: jax.Array) -> jax.Array:
    """Relative difference of two quadrature duals at variances ``var`` (any shape), elementwise.

    At each variance, both halves of the dual are compared on equal-variance inputs at
    correlations 0, 0.5, 0.9 and 1; the largest difference is divided by the largest value
    of that half, and the larger of the two halves returned.
    """
    rho = jnp.asarray([0., 0.5, 0.9, 1.], jnp.result_type(var))
    v = jnp.broadcast_to(var[..., None], var.shape + rho.shape)
    tiny = jnp.finfo(v.dtype).tiny
    gaps = [jnp.max(jnp.abs(c - f), -1) / jnp.maximum(jnp.max(jnp.abs(f), -1), tiny)
            for c, f in zip(coarse(v * rho, v, v), fine(v * rho, v, v))]
    return jnp.maximum(*gaps)


@functools.lru_cache(maxsize=256)  # a network rebuilt with the same function is not re-checked
def gauss_hermite_error(fn, deg: int, df=None) -> float:
    """Estimated relative error of `gauss_hermite_dual` with ``deg`` points per dimension,
    at unit variance (`gauss_hermite_gap` against `gauss_hermite_reference_degree`).

    A smooth activation converges fast (tanh at ``deg = 25``: about 5e-4; sin: 1e-7), a kink
    slowly (ReLU at ``deg = 25``: 0.09, from its step-function derivative). The error grows
    with the variance (sin(3x) at variance 16 needs far more points than at 1), which
    `kernels.stax.ElementwiseNumerical` also checks at the variances a network reaches.
    """
    coarse = gauss_hermite_dual(fn, deg, df)
    fine = gauss_hermite_dual(fn, gauss_hermite_reference_degree(deg), df)
    # One compiled call: op by op, the same arithmetic took 3 s (a compilation per operation).
    with jax.ensure_compile_time_eval():
        return float(jax.jit(lambda v: gauss_hermite_gap(coarse, fine, v))(jnp.ones((), jnp.float32)))
