"""Elementwise activations: the function for finite networks, its dual map for kernels.

The kernel rule is the same for every activation (Lee et al. 2018, eq. 4;
Jacot et al. 2018, Thm. 1): ``nngp' = E[phi(u) phi(v)]``, ``ntk' = ntk E[phi'(u) phi'(v)]``
with ``(u, v)`` Gaussian with the input kernel's covariances. The dual maps live
in `kernels.duals`, each with its source.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from kernels import duals
from kernels.checks import argument_error
from kernels.kernel import Kernel, position_variances
from kernels.stax import masking
from kernels.stax.layer import Requires, describe, leaf


def activation_rule(dual: duals.Dual, mean: Optional[duals.Mean]):
    """``Kernel -> Kernel`` for an elementwise activation with dual map ``dual``.

    ``mean`` (``var -> E[phi(u)]``, `kernels.duals`) sets the outputs' channel means, which
    `LayerNorm` subtracts; ``None`` where it has no closed form. The input must be a
    Gaussian field (declared by `_activation`).
    """
    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        var1 = position_variances(k.cov1, k.full, d)
        var2 = position_variances(k.cov2_or_cov1, k.full, d)
        shape = k.spatial_shape

        if k.full:
            def left(v):
                return v.reshape((v.shape[0],) + shape + (1,) * d)

            def right(v):
                return v.reshape((v.shape[0],) + (1,) * d + shape)
            nngp, dot = dual(k.nngp, left(var1)[:, None], right(var2)[None])
            cov1 = dual(k.cov1, left(var1), right(var1))[0]
            cov2 = None if k.cov2 is None else dual(k.cov2, left(var2), right(var2))[0]
        else:
            nngp, dot = dual(k.nngp, var1[:, None], var2[None])
            cov1 = dual(k.cov1, k.cov1, k.cov1)[0]
            cov2 = None if k.cov2 is None else dual(k.cov2, k.cov2, k.cov2)[0]
        means = dict(mean1=None, mean2=None)
        if mean is not None:
            means = dict(mean1=mean(var1), mean2=None if k.cov2 is None else mean(var2))
        return k.replace(nngp=nngp, ntk=k.ntk * dot, cov1=cov1, cov2=cov2, is_gaussian=False, **means)
    return rule


def _activation(name: str, fn, dual: duals.Dual, mean: Optional[duals.Mean]):
    return leaf(name, lambda rng, input_shape: (input_shape, ()),
                lambda params, x, **kwargs: fn(x), activation_rule(dual, mean),
                requires=Requires(gaussian=True), masks=masking.POINTWISE)


def ABRelu(a: float, b: float, do_stabilize: bool = False):
    """``a x`` for ``x < 0``, ``b x`` for ``x >= 0`` (arc-cosine kernel, Cho & Saul 2009).
    ``do_stabilize``: as in `Relu`."""
    return _activation(describe("ABRelu", a=a, b=b, **_stabilized("ABRelu", do_stabilize)),
                       lambda x: jnp.where(x < 0, a * x, b * x),
                       duals.abrelu_dual(a, b, do_stabilize), duals.abrelu_mean(a, b))


def _stabilized(layer_name: str, do_stabilize) -> dict:
    """The ``do_stabilize`` argument for a layer's name, when it is on (checked: a bool)."""
    if not isinstance(do_stabilize, (bool, np.bool_)):
        raise argument_error(f"{layer_name}()", "do_stabilize", "True or False", do_stabilize, TypeError)
    return {"do_stabilize": True} if do_stabilize else {}


def Relu(do_stabilize: bool = False):
    """``max(x, 0)``. ``do_stabilize=True`` (neural-tangents' option) evaluates the arc-cosine on
    covariances scaled by powers of two (`kernels.duals._balanced`), which keeps float32 kernels
    right where products of variances overflow (variances above 1.8e19: a deep network at
    ``W_std = 2``, or ``W_std = 1e10``); the results are otherwise the same to the bit, and deep
    networks compile about 2.5x slower. Without it such kernels raise an error naming the layer."""
    return _activation(describe("Relu", **_stabilized("Relu", do_stabilize)), jax.nn.relu,
                       duals.abrelu_dual(0., 1., do_stabilize), duals.abrelu_mean(0., 1.))


def LeakyRelu(alpha: float, do_stabilize: bool = False):
    """``alpha x`` for ``x < 0``, ``x`` otherwise. ``do_stabilize``: as in `Relu`."""
    return _activation(describe("LeakyRelu", alpha=alpha, **_stabilized("LeakyRelu", do_stabilize)),
                       lambda x: jnp.where(x < 0, alpha * x, x),
                       duals.abrelu_dual(alpha, 1., do_stabilize), duals.abrelu_mean(alpha, 1.))


def Abs(do_stabilize: bool = False):
    """``|x|``. ``do_stabilize``: as in `Relu`."""
    return _activation(describe("Abs", **_stabilized("Abs", do_stabilize)), jnp.abs,
                       duals.abrelu_dual(-1., 1., do_stabilize), duals.abrelu_mean(-1., 1.))


def Erf(a: float = 1., b: float = 1., c: float = 0.):
    """``a erf(b x) + c`` (Williams 1997)."""
    return _activation(describe("Erf", a=a, b=b, c=c), lambda x: a * erf(b * x) + c, duals.erf_dual(a, b, c),
                       duals.constant_mean(c))


def Sigmoid_like():
    """``erf(x / 2.4020563531719796) / 2 + 1/2``, an Erf close to the logistic sigmoid."""
    return _activation("Sigmoid_like()", lambda x: 0.5 * erf(x / 2.4020563531719796) + 0.5,
                       duals.erf_dual(0.5, 1 / 2.4020563531719796, 0.5), duals.constant_mean(0.5))


def Gelu(approximate: bool = False):
    """``x Phi(x)`` with ``Phi`` the standard normal CDF (Hendrycks & Gimpel 2016).

    ``approximate=True`` uses the tanh approximation in the finite network; its
    kernel is then computed by a 64-point Gauss–Hermite rule for that function
    (neural-tangents keeps the exact GELU's kernel, which the finite network
    does not converge to; the two differ by about 1e-4).
    """
    if approximate:
        fn = functools.partial(jax.nn.gelu, approximate=True)
        return _activation("Gelu(approximate=True)", fn, duals.gauss_hermite_dual(fn, 64),
                           duals.gauss_hermite_mean(fn, 64))
    return _activation("Gelu()", lambda x: jax.nn.gelu(x, approximate=False), duals.gelu_dual(),
                       duals.gelu_mean())


def Sin(a: float = 1., b: float = 1., c: float = 0.):
    """``a sin(b x + c)``."""
    return _activation(describe("Sin", a=a, b=b, c=c), lambda x: a * jnp.sin(b * x + c), duals.sin_dual(a, b, c),
                       duals.sin_mean(a, b, c))


def Cos(a: float = 1., b: float = 1., c: float = 0.):
    """``a cos(b x + c) = a sin(b x + c + pi/2)``."""
    return _activation(describe("Cos", a=a, b=b, c=c), lambda x: a * jnp.cos(b * x + c),
                       duals.sin_dual(a, b, c + jnp.pi / 2), duals.sin_mean(a, b, c + math.pi / 2))


def Rbf(gamma: float = 1.):
    """``sqrt(2) sin(sqrt(2 gamma) x + pi/4)``: its NNGP is ``exp(-gamma E(u - v)^2)``,
    the RBF kernel of the pre-activations (Rahimi & Recht 2007)."""
    a, b, c = 2 ** 0.5, (2 * gamma) ** 0.5, math.pi / 4
    return _activation(describe("Rbf", gamma=gamma), lambda x: a * jnp.sin(b * x + c), duals.sin_dual(a, b, c),
                       duals.sin_mean(a, b, c))


def Gaussian(a: float = 1., b: float = -1.):
    """``a exp(b x^2)``; finite for ``b < 1 / (2 var)``."""
    return _activation(describe("Gaussian", a=a, b=b), lambda x: a * jnp.exp(b * x ** 2), duals.gaussian_dual(a, b),
                       duals.gaussian_mean(a, b))


def Exp(a: float = 1., b: float = 1.):
    """``a exp(b x)``."""
    return _activation(describe("Exp", a=a, b=b), lambda x: a * jnp.exp(b * x), duals.exp_dual(a, b),
                       duals.exp_mean(a, b))


def Sign():
    """``sign(x)``: NNGP ``(2/pi) arcsin(rho)``; its derivative, and so its NTK term, is zero."""
    return _activation("Sign()", jnp.sign, duals.sign_dual(), duals.constant_mean(0.))


def Monomial(degree: int):
    """``x^degree``, exact for any input variance (Hermite expansion)."""
    _check_degree("Monomial", degree)
    coef = [0.] * degree + [1.]
    return _activation(describe("Monomial", degree=degree), lambda x: x ** degree, duals.polynomial_dual(coef),
                       duals.polynomial_mean(coef))


def RectifiedMonomial(degree: int):
    """``max(x, 0)^degree``: the arc-cosine kernel of that degree (Cho & Saul 2009)."""
    _check_degree("RectifiedMonomial", degree)
    return _activation(describe("RectifiedMonomial", degree=degree),
                       lambda x: jnp.where(x > 0, x, 0.) ** degree if degree else (x > 0).astype(x.dtype),
                       duals.rectified_monomial_dual(degree), duals.rectified_monomial_mean(degree))


def Polynomial(coef):
    """``sum_i coef[i] x^i``, exact for any input variance (Hermite expansion)."""
    coef = [float(c) for c in coef]
    if not coef:
        raise ValueError("Polynomial: coef must not be empty")

    def fn(x):
        out = jnp.zeros_like(x)
        for c in reversed(coef):
            out = out * x + c
        return out
    return _activation(describe("Polynomial", coef=tuple(coef)), fn, duals.polynomial_dual(coef),
                       duals.polynomial_mean(coef))


def Hermite(degree: int):
    """The normalized probabilists' Hermite polynomial ``He_n(x) / sqrt(n!)``.

    neural-tangents' kernel assumes unit-variance inputs (then ``E = rho^n``);
    ours is exact for any variance, through the same Hermite expansion as `Polynomial`.
    """
    _check_degree("Hermite", degree)
    coef = duals.hermite_polynomial_coefficients(degree)
    polynomial = Polynomial(coef).apply_fn
    return _activation(describe("Hermite", degree=degree), lambda x: polynomial((), x),
                       duals.polynomial_dual(coef), duals.polynomial_mean(coef))


def _check_degree(name, degree):
    if int(degree) != degree or degree < 0:
        raise ValueError(f"{name}: degree must be a non-negative integer, got {degree!r}")


def Elementwise(fn=None, nngp_fn=None, d_nngp_fn=None):
    """Any activation with a user-supplied dual map, in neural-tangents' signature.

    Args:
      fn: the activation, for finite networks.
      nngp_fn: ``(cov12, var1, var2) -> E[fn(u) fn(v)]``; ``None`` (with ``fn``) makes a layer for
        finite networks only, whose ``kernel_fn`` raises an error naming ``nngp_fn``.
      d_nngp_fn: ``(cov12, var1, var2) -> E[fn'(u) fn'(v)]``; by default the
        derivative of ``nngp_fn`` in ``cov12`` (Price's theorem, Price 1958).
    """
    if nngp_fn is None:
        if fn is None:
            raise ValueError("Elementwise: give fn (the finite network's activation), nngp_fn (its dual), or both")
        if d_nngp_fn is not None:
            raise ValueError("Elementwise: d_nngp_fn was given without nngp_fn; give both, or nngp_fn alone")

        def no_dual(cov12, var1, var2):
            raise NotImplementedError("Elementwise(fn) without nngp_fn is a finite network only: its kernel_fn "
                                      "needs nngp_fn (argument `nngp_fn`), or use ElementwiseNumerical(fn, deg) "
                                      "for a numerical dual")
        return _activation("Elementwise()", fn, no_dual, None)
    if d_nngp_fn is None:
        dual = duals.with_price_derivative(nngp_fn)
    else:
        def dual(cov12, var1, var2):
            return nngp_fn(cov12, var1, var2), d_nngp_fn(cov12, var1, var2)

    def missing(x):
        raise ValueError("Elementwise: no fn was given, so there is no finite network")
    return _activation("Elementwise()", fn if fn is not None else missing, dual, None)


def ElementwiseNumerical(fn, deg: int, df=None, *, tolerance: float = 1e-2):
    """Any activation, its dual by a ``deg x deg`` Gauss–Hermite rule.

    Args:
      fn: the activation.
      deg: quadrature points per dimension, at most 350 (NumPy's weights overflow past it).
        Measured for tanh at variance 1.3, relative error of the NNGP / NTK term: deg 25:
        3e-5 / 2e-4; 40: 8e-7 / 8e-6; 80: 6e-10 / 9e-9. Memory grows as ``deg^2`` times
        the kernel's size.
      df: its derivative; by default ``jax.grad(fn)``.
      tolerance: the largest estimated relative error accepted (below); between 1e-3 and it,
        the kernel comes with a warning that names the layer, the variance and the estimated
        error. neural-tangents' ``examples/elementwise_numerical.py`` runs GELU at ``deg = 25``,
        estimated 0.2% off at its variance 3.2 (its kernel is within its own 1e-3 check of the
        closed form): it runs, warned. tanh at ``deg = 25`` is 0.3% off at variance 1.4 and 3%
        at 2.6 (refused).

    The rule's accuracy is checked, not assumed: its relative error is estimated against a
    rule of `kernels.duals.gauss_hermite_reference_degree` points (`kernels.duals.gauss_hermite_gap`),
    first at unit variance when the layer is built, then at each example's largest input
    variance when a kernel is computed (the error grows with the variance: sin(3x) at
    deg 23 is exact to 1e-7 at variance 1 and 28% off at variance 16). Above ``tolerance`` the layer
    is refused (`ValueError`): at construction; at evaluation through the non-finite check
    of ``kernel_fn``, since the affected entries are NaN until that check names the layer
    (inside a user's own ``jax.jit`` they stay NaN, like every value check there).
    Functions with kinks (ReLU, abs) converge too slowly for any practical ``deg``; use
    their closed-form layers.
    """
    if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or not 1 <= deg <= 350:
        raise ValueError(f"ElementwiseNumerical: argument `deg` must be an int from 1 to 350; received {deg!r}")
    deg = int(deg)
    name = describe("ElementwiseNumerical", deg=deg)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ValueError(f"{name}: argument `tolerance` must be a number in (0, 1); received {tolerance!r}")
    with jax.numpy_rank_promotion("allow"):  # our quadrature broadcasts, whatever the caller set
        error = duals.gauss_hermite_error(fn, deg, df)
    if not error <= tolerance:
        raise ValueError(_too_small(name, deg, error, 1., tolerance))
    _warn_if_inaccurate(name, deg, error, 1.)
    dual = duals.gauss_hermite_dual(fn, deg, df)
    reference = duals.gauss_hermite_dual(fn, duals.gauss_hermite_reference_degree(deg), df)
    rule = activation_rule(dual, duals.gauss_hermite_mean(fn, deg))
    # Compiled once: the non-finite diagnosis runs rules op by op, which took seconds here.
    gap_at = jax.jit(lambda var: duals.gauss_hermite_gap(dual, reference, var))

    def checked_rule(k: Kernel) -> Kernel:
        def accurate(cov):  # (N,): whether the rule is accurate at each example's largest variance
            var = position_variances(cov, k.full, k.spatial_ndim).reshape(cov.shape[0], -1).max(-1)
            gap = gap_at(var)
            if not isinstance(gap, jax.core.Tracer) and not (gap <= tolerance).all():
                worst = int(jnp.argmax(jnp.where(jnp.isnan(gap), jnp.inf, gap)))
                raise ValueError(_too_small(name, deg, float(gap[worst]), float(var[worst]), tolerance))
            accepted = jnp.where(gap <= tolerance, gap, 0.)  # refused examples are reported by the refusal
            worst = jnp.argmax(accepted)
            # At run time, inside jit too: the warning needs the values.
            jax.debug.callback(lambda g, v: _warn_if_inaccurate(name, deg, float(g), float(v)),
                               accepted[worst], var[worst])
            return gap <= tolerance

        ok1, ok2 = accurate(k.cov1), accurate(k.cov2_or_cov1)  # before the rule: a refusal skips it
        out = rule(k)
        extra = (1,) * (out.nngp.ndim - 2)
        ok = (ok1[:, None] & ok2[None]).reshape(ok1.shape + ok2.shape + extra)
        return out.replace(nngp=jnp.where(ok, out.nngp, jnp.nan), ntk=jnp.where(ok, out.ntk, jnp.nan))

    return leaf(name, lambda rng, input_shape: (input_shape, ()), lambda params, x, **kwargs: fn(x),
                checked_rule, requires=Requires(gaussian=True), masks=masking.POINTWISE)


# Above this estimated relative error an accepted quadrature rule is reported (`warnings.warn`).
WARN_ERROR = 1e-3


def _warn_if_inaccurate(name: str, deg: int, error: float, variance: float) -> None:
    if error > WARN_ERROR:
        warnings.warn(f"{name}: at input variance {variance:.3g} the quadrature's estimated relative error "
                      f"is {error:.2g} (above {WARN_ERROR:g}); raise deg for a more accurate kernel", stacklevel=4)


def _too_small(name: str, deg: int, error: float, variance: float, tolerance: float) -> str:
    return (f"{name}: deg={deg} is too small for this function at input variance {variance:.3g}: the "
            f"quadrature's estimated relative error is {error:.2g} (tolerance={tolerance:g}); raise deg "
            "(or, knowingly, tolerance), or, for a function with a kink (ReLU, abs), use its closed-form "
            "layer or Elementwise with its dual")
