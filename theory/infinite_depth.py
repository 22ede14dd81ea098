"""Infinitely deep, infinitely wide classifiers: the normalized dual and its iteration.

Radhakrishnan, Belkin & Uhler 2022, "Wide and deep neural networks achieve consistency
for classification" (arXiv:2204.14126; PNAS 120, e2208779120, 2023). A bias-free fully
connected network on unit-norm inputs, with activation phi scaled so that E[phi(z)^2] = 1,
has at infinite width the normalized kernels (inputs at cosine similarity rho)

    Sigma_0 = rho,    Sigma_l = xi(Sigma_{l-1})                               (NNGP)
    Theta_0 = rho,    Theta_l = xi(Sigma_{l-1}) + xi'(Sigma_{l-1}) Theta_{l-1}    (NTK)

(Lee et al. 2018, eq. 4; Jacot et al. 2018, Thm. 1), where the normalized dual is

    xi(rho) = E[phi(u) phi(v)] / E[phi(u)^2],    (u, v) standard bivariate normal, Corr = rho,

so xi(1) = 1, and xi'(rho) = E[phi'(u) phi'(v)] / E[phi(u)^2] by Price's theorem (Price
1958). In Hermite terms xi(rho) = sum_n c_n^2 rho^n with sum_n c_n^2 = 1 (Daniely, Frostig
& Singer 2016, "Toward deeper understanding of neural networks"), so xi(0) = c_0^2 >= 0,
xi'(0) = c_1^2 <= 1 and xi'(1) = sum_n n c_n^2.

What an infinitely deep network classifies like is decided by xi near 0 (where the
iteration Sigma_l flows for rho < 1) and near 1 (a fixed point, repelling once xi'(1) > 1).
The paper's taxonomy (`taxonomy`):

* xi(0) > 0 ("majority_vote", e.g. ReLU): every rho < 1 flows to the same value, the kernel
  becomes constant off the diagonal and the classifier predicts the most frequent label.
* xi(0) = 0, xi'(0) = 0 ("nearest_neighbor"): Sigma_L(rho) decays super-exponentially, the
  nearest training point dominates (1-NN).
* xi(0) = 0, 0 < xi'(0) < 1 ("singular"): Sigma_L(rho) ~ xi'(0)^L h(rho), with h the Koenigs
  function of xi at 0 (h(xi(rho)) = xi'(0) h(rho)). Near rho = 1 a point takes
  ln(1 / (1 - rho)) / ln xi'(1) layers to leave the repelling fixed point, after which each
  layer multiplies by xi'(0); hence h(rho) ~ (1 - rho)^(-alpha) with

      alpha = ln(1 / xi'(0)) / ln(xi'(1)).

  On the unit sphere 1 - rho = ||x - z||^2 / 2, so the limit is the singular kernel
  ||x - z||^(-2 alpha). The Hilbert kernel ||x - z||^(-d), i.e. 2 alpha = d, is the
  interpolating kernel estimate that is consistent for densities in d dimensions
  (Devroye, Györfi & Krzyżak 1998, "The Hilbert kernel regression estimate"); this is the
  sense in which the paper's activations with alpha = d / 2 are consistent in dimension d,
  the dimension of the space the data's density lives in. (The exponent of each kernel is
  in `taxonomy`; the NTK's is discussed there.)

Everything is evaluated on the host in float64 (a widekit layer's kernel rule is run in
JAX inside `theory.linalg.float64`, without touching the global x64 flag).
"""
import collections
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels import duals
from kernels.kernel import Kernel
from kernels.stax.layer import KernelFn
from theory import arguments, linalg

__all__ = ["NormalizedDual", "normalized_dual", "deep_correlation", "Taxonomy", "taxonomy"]

KERNELS = ("nngp", "ntk")
# |rho| may exceed 1 by rounding in an iteration; beyond this it is an error.
_RHO_SLACK = 1e-12
# Correlations are evaluated in padded blocks of a power-of-two size from _BLOCK_MIN up to
# these, so a dual compiles once per block size rather than once per input shape (a
# compilation took 1-4 s on the loaded 2-core CI machine, an evaluation of 64 values well
# under 1 ms); quadrature blocks hold block * deg^2 values.
_BLOCK_MIN = 64
_BLOCK_CLOSED_FORM = 1 << 14
_BLOCK_QUADRATURE = 256
# Finite-difference step for callables without a `derivative`: central differences have a
# truncation error ~ h^2 |xi'''| / 6 ~ 1e-10 and a rounding error ~ eps / h ~ 1e-11.
_FD_STEP = 1e-5


@dataclasses.dataclass(frozen=True, eq=False)
class NormalizedDual:
    """xi(rho) = E[phi(u) phi(v)] / E[phi(u)^2] of one activation, and its derivative.

    Call it on an array of correlations in [-1, 1]; it returns float64 NumPy values of the
    same shape (a NumPy scalar for a scalar).

    Attributes:
      name: the activation, for messages.
      derivative: rho -> xi'(rho) = E[phi'(u) phi'(v)] / E[phi(u)^2] (Price 1958), finite and
        accurate at rho = 1 wherever the dual's closed form is (ReLU: xi'(1) = 1).
      error: estimated relative error of a Python function's Gauss–Hermite dual (its
        difference from a rule of 2 deg + 1 points); 0 for a layer (closed forms, and
        ``ElementwiseNumerical``, which checks its own rule at its ``tolerance``).
      second_moment: E[phi(u)^2] at unit variance, the normalization.
    """

    name: str
    values: Callable = dataclasses.field(repr=False)
    derivative: Callable = dataclasses.field(repr=False)
    error: float = 0.0
    second_moment: float = 1.0

    def __call__(self, rho):
        return self.values(rho)


def normalized_dual(activation, *, deg=None, tolerance=None) -> NormalizedDual:
    """The normalized dual xi of an activation (Radhakrishnan, Belkin & Uhler 2022).

    Args:
      activation: a widekit activation layer (``stax.Relu()``, ``stax.Erf()``,
        ``stax.Hermite(k)``, ``stax.ElementwiseNumerical(...)``, ...: a `Layer` or its
        `KernelFn`), or a Python function phi on JAX arrays (e.g. ``jnp.tanh``).
        A layer's dual comes from its own kernel rule evaluated at unit variances (closed
        forms where the layer has them, its own quadrature otherwise); phi's from a
        ``deg x deg`` Gauss–Hermite rule (`kernels.duals.gauss_hermite_dual`) with phi' by
        ``jax.grad``.
      deg: quadrature points per dimension for a Python function, 1 to 350 (None: 64).
        A layer brings its own rule, so passing `deg` or `tolerance` with one is an error.
      tolerance: the largest estimated relative error accepted for a Python function
        (None: 1e-6): the
        rule is compared with one of 2 deg + 1 points at correlations 0, 0.5, 0.9, 1
        (`kernels.duals.gauss_hermite_gap`, in float64). Measured: erf 4e-6 at deg = 32,
        9e-12 at 64; tanh (poles of sech^2 at +-i pi / 2 slow it down) 1e-4 at 32, 2e-7 at
        64, 8e-10 at 100, 4e-13 at 160; sin 1e-15 at 32. A kink (ReLU as a Python function)
        converges like 1 / deg and is refused: use its closed-form layer.

    Returns:
      A `NormalizedDual`: callable on correlations in [-1, 1], xi(1) = 1, with a
      ``derivative`` attribute. Its derivative is the layer's E[phi' phi'] (exact at
      rho = 1 where autodiff of an arc-cosine is not); where that disagrees with the
      derivative of E[phi phi] (a layer whose phi jumps, ``Sign`` or
      ``RectifiedMonomial(0)``, reports E[phi' phi'] = 0, dropping phi''s delta), the
      derivative in rho of E[phi phi] by autodiff is used instead, and xi'(+-1) = inf (a
      jump in phi makes 1 - xi(rho) ~ sqrt(1 - rho)).

    Raises:
      TypeError: `activation` is neither an activation layer nor a callable.
      ValueError: E[phi^2] is not positive and finite, or the quadrature is not accurate.
    """
    where = "normalized_dual"
    if isinstance(activation, NormalizedDual):
        return activation
    kernel_fn = activation.kernel_fn if hasattr(activation, "kernel_fn") else activation
    if isinstance(kernel_fn, KernelFn):
        if kernel_fn.requires is None or not kernel_fn.requires.gaussian:
            raise arguments.argument_error(where, "activation", "an elementwise activation layer (stax.Relu(), "
                                           "stax.Erf(), ...) or a Python function", kernel_fn.name, TypeError)
        for option, value in (("deg", deg), ("tolerance", tolerance)):
            if value is not None:
                raise arguments.argument_error(where, option, "None for a layer (it brings its own rule; set it on "
                                               "stax.ElementwiseNumerical instead)", value)
        name, pair, error = kernel_fn.name, _layer_pair(kernel_fn.rule), 0.0
        block = _BLOCK_CLOSED_FORM
    elif callable(activation):
        deg = arguments.integer(where, "deg", 64 if deg is None else deg, low=1)
        if deg > 350:
            raise arguments.argument_error(where, "deg", "an integer from 1 to 350", deg)
        tolerance = arguments.scalar(where, "tolerance", 1e-6 if tolerance is None else tolerance, low=0,
                                     low_open=True)
        name = getattr(activation, "__name__", type(activation).__name__)
        pair, error = _quadrature_pair(where, activation, deg, tolerance)
        block = _BLOCK_QUADRATURE
    else:
        raise arguments.argument_error(where, "activation", "an activation layer or a Python function",
                                       type(activation).__name__, TypeError)
    return _normalize(where, name, _in_blocks(pair, block), error)


def _in_blocks(pair, block):
    """``pair`` on a flat float64 array, run in padded blocks of at most ``block``, as NumPy arrays."""
    def run(rho):
        outs = []
        for start in range(0, rho.size, block):
            part = rho[start:start + block]
            size = max(_BLOCK_MIN, 1 << (part.size - 1).bit_length())
            padded = np.concatenate([part, np.zeros(size - part.size)])
            with linalg.float64():
                values = pair(jnp.asarray(padded, jnp.float64))
            outs.append([np.asarray(v, np.float64)[:part.size] for v in values])
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return run


def _unit_variance_kernel(rho):
    """The `Kernel` of N pairs of unit-variance Gaussians with correlations ``rho`` (N,)."""
    r = rho.reshape(-1, 1)
    ones = jnp.ones(r.shape[0], r.dtype)
    return Kernel(nngp=r, ntk=jnp.ones_like(r), cov1=ones, cov2=ones[:1], full=False, is_gaussian=True)


def _layer_pair(rule):
    """rho (N,) -> (E[phi phi], E[phi' phi'], d/drho E[phi phi]) from a layer's kernel rule, jitted.

    The rule maps nngp -> E[phi(u) phi(v)] and ntk -> ntk * E[phi'(u) phi'(v)]
    (`kernels.stax.elementwise.activation_rule`); with ntk = 1 the second is the dual's
    derivative half.
    """
    def moments(rho):
        out = rule(_unit_variance_kernel(rho))
        return out.nngp[:, 0], out.ntk[:, 0]

    def with_price(rho):
        (nngp, dot), (slope, _) = jax.jvp(moments, (rho,), (jnp.ones_like(rho),))
        return nngp, dot, slope
    return jax.jit(with_price)


def _quadrature_pair(where, phi, deg, tolerance):
    """The same triple for a Python function by Gauss–Hermite, and its estimated error."""
    dual = duals.gauss_hermite_dual(phi, deg)
    reference = duals.gauss_hermite_dual(phi, duals.gauss_hermite_reference_degree(deg))
    with linalg.float64():
        try:
            error = float(jax.jit(lambda v: duals.gauss_hermite_gap(dual, reference, v))(jnp.ones((), jnp.float64)))
        except Exception as failure:  # phi does not take JAX arrays, or jax.grad fails on it
            raise arguments.argument_error(where, "activation", "a function of JAX arrays that jax.grad can "
                                           "differentiate", f"{phi!r} ({type(failure).__name__}: {failure})",
                                           TypeError) from None
    if not error <= tolerance:
        raise ValueError(f"{where}: the {deg}-point Gauss–Hermite dual of {phi!r} has an estimated relative "
                         f"error of {error:.2g}, above tolerance={tolerance:g}; raise deg (at most 350), or for a "
                         "function with a kink (ReLU, abs) pass its closed-form layer (stax.Relu(), ...)")

    def with_price(rho):
        ones = jnp.ones_like(rho)
        (nngp, dot), (slope, _) = jax.jvp(lambda r: dual(r, ones, ones), (rho,), (ones,))
        return nngp, dot, slope
    return jax.jit(with_price), error


def _normalize(where, name, raw, error):
    """A `NormalizedDual` from the unnormalized triple ``raw``, after checking E[phi^2] and the derivative."""
    probe = np.array([-0.5, 0.0, 0.5, 1.0])
    nngp, dot, slope = raw(probe)
    second_moment = float(nngp[-1])
    if not (np.isfinite(second_moment) and second_moment > 0):
        raise ValueError(f"{where}: {name} has E[phi(u)^2] = {second_moment!r} at unit variance; "
                         "the normalized dual needs it positive and finite")
    # E[phi' phi'] is the derivative of E[phi phi] (Price) unless phi' is a distribution that the
    # layer drops (Sign: phi' = 2 delta, reported as 0); then differentiate E[phi phi] instead.
    scale = max(float(np.max(np.abs(slope[:3]))), 1e-300)
    use_price = not np.allclose(dot[:3], slope[:3], rtol=1e-6, atol=1e-6 * scale)

    def values(rho):
        return _on_correlations(where, name, rho, lambda r: raw(r)[0] / second_moment)

    def price(r):
        # The autodiff derivative of E[phi phi] is wrong at |rho| = 1 (the square root there is
        # clipped to keep gradients finite); with a jump in phi the true value is +inf.
        return np.where(np.abs(r) == 1.0, np.inf, raw(r)[2] / second_moment)

    def derivative(rho):
        return _on_correlations(where, name, rho, price if use_price else lambda r: raw(r)[1] / second_moment,
                                allow_inf=use_price)
    return NormalizedDual(name, values, derivative, error, second_moment)


def _on_correlations(where, name, rho, fn, allow_inf=False):
    """fn on ``rho`` checked to lie in [-1, 1] (rounding beyond it is clipped), shaped like ``rho``;
    a NaN (or, unless `allow_inf`, an infinite) result is an error."""
    r = arguments.real_values(where, "rho", rho)
    if np.any(np.abs(r) > 1 + _RHO_SLACK):
        raise arguments.argument_error(where, "rho", "correlations in [-1, 1]",
                                       f"values from {r.min():.17g} to {r.max():.17g}")
    out = fn(np.clip(r, -1.0, 1.0).reshape(-1)).reshape(r.shape)
    if not np.all(np.isfinite(out) | (allow_inf & np.isinf(out))):
        raise FloatingPointError(f"{where}: the dual of {name} is not finite at some correlations "
                                 f"(first at rho = {r.reshape(-1)[~np.isfinite(out.reshape(-1))][0]!r})")
    return out[()] if out.ndim == 0 else out


def _call(xi, rho):
    """xi on a float64 array, as a float64 array of the same shape."""
    return np.asarray(xi(rho), np.float64).reshape(np.shape(rho))


def _derivative_of(xi):
    """xi's `derivative` attribute, or central finite differences of xi (one-sided, second
    order, within `_FD_STEP` of +-1)."""
    given = getattr(xi, "derivative", None)
    if callable(given):
        return lambda rho: _call(given, rho)
    h = _FD_STEP

    def derivative(rho):
        rho = np.asarray(rho, np.float64)
        central = (_call(xi, np.minimum(rho + h, 1.0)) - _call(xi, np.maximum(rho - h, -1.0))) / (
            np.minimum(rho + h, 1.0) - np.maximum(rho - h, -1.0))
        lo, hi = np.maximum(rho - 2 * h, -1.0), np.minimum(rho + 2 * h, 1.0)
        backward = (3 * _call(xi, rho) - 4 * _call(xi, np.maximum(rho - h, -1.0)) + _call(xi, lo)) / (2 * h)
        forward = (-3 * _call(xi, rho) + 4 * _call(xi, np.minimum(rho + h, 1.0)) - _call(xi, hi)) / (2 * h)
        return np.where(rho + h > 1.0, backward, np.where(rho - h < -1.0, forward, central))
    return derivative


def _kernel_name(where, kernel):
    if not isinstance(kernel, str) or kernel.lower() not in KERNELS:
        raise arguments.argument_error(where, "kernel", f"one of {KERNELS}", kernel)
    return kernel.lower()


def _check_xi(where, xi):
    if not callable(xi):
        raise arguments.argument_error(where, "xi", "a callable normalized dual (e.g. normalized_dual(stax.Relu()))",
                                       type(xi).__name__, TypeError)


def deep_correlation(xi, rho, depth, kernel="nngp"):
    """The normalized kernel of a bias-free network after `depth` layers (module docstring).

    ``"nngp"``: Sigma_depth(rho) = xi(xi(... xi(rho))). ``"ntk"``: Theta_depth(rho) /
    Theta_depth(1) with Theta_0 = rho and Theta_l = xi(Sigma_{l-1}) + xi'(Sigma_{l-1})
    Theta_{l-1} (Jacot et al. 2018, Thm. 1, in the normalization of Radhakrishnan, Belkin &
    Uhler 2022). The ratio is carried through the layers (with w_l = 1 / Theta_l(1),
    R_l = Sigma_l w_l + xi'(Sigma_{l-1}) R_{l-1} w_l / w_{l-1}), so no layer count
    overflows even when Theta_l(1) ~ xi'(1)^l does. Values below float64's range (about
    1e-308; Sigma_L ~ xi'(0)^L for a singular dual) underflow to 0.

    Args:
      xi: a normalized dual (`normalized_dual`), or any callable on float64 arrays in
        [-1, 1] with xi(1) = 1; its ``derivative`` attribute is used for the NTK, else
        central finite differences of xi (error ~1e-10).
      rho: correlations in [-1, 1], any shape.
      depth: number of layers, an integer >= 0 (0 returns ``rho``).
      kernel: ``"nngp"`` or ``"ntk"``.

    Returns:
      float64 NumPy array shaped like ``rho``.
    """
    where = "deep_correlation"
    _check_xi(where, xi)
    depth = arguments.integer(where, "depth", depth, low=0)
    kernel = _kernel_name(where, kernel)
    rho = arguments.real_values(where, "rho", rho)
    if np.any(np.abs(rho) > 1 + _RHO_SLACK):
        raise arguments.argument_error(where, "rho", "correlations in [-1, 1]",
                                       f"values from {rho.min():.17g} to {rho.max():.17g}")
    sigma = np.clip(rho, -1.0, 1.0)
    if kernel == "nngp":
        for _ in range(depth):
            sigma = np.clip(_call(xi, sigma), -1.0, 1.0)
        return sigma
    dxi = _derivative_of(xi)
    ratio, weight = sigma.copy(), 1.0  # R_0 = Theta_0(rho) / Theta_0(1) = rho; w_0 = 1
    slope_at_one = float(_call(dxi, np.ones(())))
    if not np.isfinite(slope_at_one):
        raise arguments.argument_error(where, "xi", "a dual with a finite xi'(1) for kernel='ntk' (an activation "
                                       "that jumps, such as Sign, has an infinite NTK at rho = 1); use "
                                       "kernel='nngp'", f"xi'(1) = {slope_at_one!r}")
    for _ in range(depth):
        shrink = 1.0 / (weight + slope_at_one)  # w_l / w_{l-1}, from Theta_l(1) = 1 + xi'(1) Theta_{l-1}(1)
        weight = weight * shrink
        next_sigma = np.clip(_call(xi, sigma), -1.0, 1.0)
        ratio = next_sigma * weight + _call(dxi, sigma) * ratio * shrink
        sigma = next_sigma
    return ratio


Taxonomy = collections.namedtuple("Taxonomy", ["kind", "alpha", "exponent"])
Taxonomy.__doc__ = """What an infinitely deep network with normalized dual xi classifies like (`taxonomy`).

Attributes:
  kind: "majority_vote", "nearest_neighbor", "singular" or "other".
  alpha: ln(1 / xi'(0)) / ln(xi'(1)) for "singular"; inf for "nearest_neighbor" (xi'(0) = 0,
    the alpha -> inf end of the singular kernels); None otherwise.
  exponent: e with which the deep normalized kernel grows like (1 - rho)^(-e) near rho = 1
    (see `taxonomy`); 0 for "majority_vote" (the limit is bounded), inf for
    "nearest_neighbor", None for "other".
"""


def taxonomy(xi, kernel="ntk", *, tol=1e-9):
    """Which classifier an infinitely wide and deep network implements (Radhakrishnan,
    Belkin & Uhler 2022, the taxonomy of their main theorem; see the module docstring).

    * xi(0) > 0: ``"majority_vote"`` (ReLU, erf + constant, ...);
    * xi(0) = 0, xi'(0) = 0: ``"nearest_neighbor"`` (e.g. xi(rho) = rho^2, ``stax.Hermite(2)``);
    * xi(0) = 0, 0 < xi'(0) < 1 (and xi'(1) > 1, which a normalized dual with xi'(0) < 1
      always has): ``"singular"`` with alpha = ln(1 / xi'(0)) / ln(xi'(1));
    * anything else (the identity, xi'(0) = 1): ``"other"``, alpha = None.

    The exponent of a "singular" network. NNGP: Sigma_L(rho) / xi'(0)^L -> h(rho)
    ~ (1 - rho)^(-alpha), so ``exponent = alpha``. NTK: Theta_L(rho) / xi'(0)^L =
    L h(rho) + g(rho) + o(1), where g(rho) = sum_l xi'(0)^(-l) Sigma_l h'(Sigma_l) - L h
    ~ (1 - rho)^(-(1 + alpha)) collects the layers before Sigma_l leaves rho = 1; at depth L
    the normalized NTK therefore grows like (1 - rho)^(-(1 + alpha)) for
    xi'(1)^(-L) << 1 - rho << 1 / L, so ``exponent = 1 + alpha`` (checked numerically in
    tests/theory/test_infinite_depth.py for the four polynomial duals with alpha = 0.5, 1, 2, 4).
    At fixed rho the L h term wins as L -> infinity, so on fixed data the infinitely deep
    NTK classifier approaches the NNGP's, the singular kernel h ~ ||x - z||^(-2 alpha) on the
    unit sphere: it is the Hilbert kernel, the consistent one, in dimension d = 2 alpha
    (Devroye, Györfi & Krzyżak 1998), hence the paper's dimension-dependent activations;
    at a finite depth, pairs closer than 1 - rho ~ 1 / L see the NTK's steeper
    ||x - z||^(-2 (1 + alpha)), the Hilbert kernel of dimension 2 + 2 alpha.

    Args:
      xi: a normalized dual (`normalized_dual`) or any callable with xi(1) = 1; its
        ``derivative`` attribute if it has one, else finite differences (central at 0,
        second-order one-sided at 1; error ~1e-10 for a smooth xi).
      kernel: ``"ntk"`` or ``"nngp"``, for ``exponent``.
      tol: how close to 0 (or to 1, for xi'(0)) a value must be to count as equal.

    Returns:
      `Taxonomy(kind, alpha, exponent)`.
    """
    where = "taxonomy"
    _check_xi(where, xi)
    kernel = _kernel_name(where, kernel)
    tol = arguments.scalar(where, "tol", tol, low=0)
    at_one = float(_call(xi, np.ones(())))
    if not abs(at_one - 1.0) <= 1e-6:
        raise arguments.argument_error(where, "xi", "a normalized dual, xi(1) = 1", f"xi(1) = {at_one!r}")
    dxi = _derivative_of(xi)
    value0 = float(_call(xi, np.zeros(())))
    slope0, slope1 = (float(s) for s in _call(dxi, np.array([0.0, 1.0])))
    if value0 > tol:
        return Taxonomy("majority_vote", None, 0.0)
    if value0 < -tol:
        return Taxonomy("other", None, None)
    if abs(slope0) <= tol:
        return Taxonomy("nearest_neighbor", math.inf, math.inf)
    if tol < slope0 < 1 - tol and slope1 > 1:
        alpha = math.log(1 / slope0) / math.log(slope1) if math.isfinite(slope1) else 0.0
        return Taxonomy("singular", alpha, alpha if kernel == "nngp" else 1 + alpha)
    return Taxonomy("other", None, None)
