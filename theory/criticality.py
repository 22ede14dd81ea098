"""Criticality of deep networks at initialization, and a finite-width correction.

Roberts, Yaida & Hanin 2021, "The Principles of Deep Learning Theory" (PDLT,
arXiv:2106.10165), chapters 4–5. A fully connected network

    z^{(1)} = b^{(1)} + W^{(1)} x,    z^{(l+1)} = b^{(l+1)} + W^{(l+1)} phi(z^{(l)}),

with Var b = C_b and Var W_ij = C_W / n_l (n_l the fan-in), has at infinite
width the kernel recursion (PDLT §4.3)

    K^{(l+1)}_{ab} = C_b + C_W E[phi(z_a) phi(z_b)],   (z_a, z_b) ~ N(0, K^{(l)}),

started from K^{(1)}_{ab} = C_b + C_W x_a . x_b / n_0. Small deviations from a
single-input kernel K grow per layer by the susceptibilities (PDLT §5.1)

    chi_parallel(K) = C_W d/dK E_K[phi(z)^2]
                    = (C_W / (2 K^2)) E_K[phi(z)^2 (z^2 - K)],
    chi_perp(K)     = C_W E_K[phi'(z)^2],

the first for a change of the common variance, the second for a change of the
covariance between two inputs at fixed variance. Criticality is a fixed point
K* with chi_parallel(K*) = chi_perp(K*) = 1 (PDLT §5.2–5.3): ReLU (scale
invariant: chi_parallel = chi_perp = C_W / 2 at every K) at C_b = 0,
C_W = 2; tanh (K* = 0 class: chi -> C_W phi'(0)^2 as K -> 0) at C_b = 0,
C_W = 1; erf(x) at C_b = 0, C_W = pi / 4 (phi'(0) = 2 / sqrt(pi)).

Activations enter as dual maps, the convention of `kernels.duals`:
dual(cov12, var1, var2) -> (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for
(u, v) Gaussian with those covariances, elementwise over broadcast arrays.
Everything here is evaluated on the host in float64 NumPy whatever JAX's x64
flag says; a JAX dual (e.g. from `kernels.duals`) is accepted and its output
converted, but computes in float32 unless x64 is enabled. The closed-form ReLU
and erf duals and the quadrature tanh dual below are NumPy for that reason.
"""
import collections
import functools

import numpy as np
from scipy.special import roots_hermitenorm

from theory import arguments

__all__ = [
    "relu_dual", "erf_dual", "tanh_dual", "quadrature_dual",
    "CriticalInitialization", "critical_initialization",
    "KernelFlow", "kernel_recursion", "susceptibilities", "relu_output_kurtosis",
]

CriticalInitialization = collections.namedtuple("CriticalInitialization", ["C_b", "C_W"])
KernelFlow = collections.namedtuple("KernelFlow", ["cov12", "var1", "var2"])

_CRITICAL = {
    "relu": CriticalInitialization(C_b=0.0, C_W=2.0),
    "tanh": CriticalInitialization(C_b=0.0, C_W=1.0),
    "erf": CriticalInitialization(C_b=0.0, C_W=np.pi / 4),
}


def _as_float64(where, cov12, var1, var2):
    """The covariances of a pair of Gaussians, checked (real, finite, var >= 0, |cov12| <= sqrt(var1 var2))
    and broadcast as float64 arrays."""
    cov12 = arguments.real_values(where, "cov12", cov12)
    var1 = arguments.real_values(where, "var1", var1, low=0)
    var2 = arguments.real_values(where, "var2", var2, low=0)
    try:
        cov12, var1, var2 = np.broadcast_arrays(cov12, var1, var2)
    except ValueError:
        raise arguments.argument_error(where, "cov12", "broadcastable with var1 and var2",
                                       f"shapes {cov12.shape}, {var1.shape}, {var2.shape}") from None
    if np.any(cov12 ** 2 > var1 * var2 * (1 + 1e-12)):
        raise arguments.argument_error(where, "cov12", "a covariance: |cov12| <= sqrt(var1 var2)",
                                       "a value beyond it (not a covariance)")
    return cov12, var1, var2


def relu_dual(cov12, var1, var2):
    """Dual map of phi(x) = max(x, 0): the degree-1 and degree-0 arc-cosine kernels.

    Cho & Saul 2009, eq. 6 (with the normalization of a Gaussian expectation):
    with theta the angle between u and v and s = sqrt(var1 var2 - cov12^2),

        E[phi(u) phi(v)]   = (s + (pi - theta) cov12) / (2 pi),
        E[phi'(u) phi'(v)] = (pi - theta) / (2 pi).

    Args:
      cov12, var1, var2: broadcastable arrays, var >= 0, |cov12| <= sqrt(var1 var2).

    Returns:
      (nngp, dot), float64 arrays of the broadcast shape.
    """
    cov12, var1, var2 = _as_float64("relu_dual", cov12, var1, var2)
    s = np.sqrt(np.clip(var1 * var2 - cov12 ** 2, 0.0, None))
    theta = np.arctan2(s, cov12)
    return (s + (np.pi - theta) * cov12) / (2 * np.pi), (np.pi - theta) / (2 * np.pi)


def erf_dual(cov12, var1, var2):
    """Dual map of phi(x) = erf(x).

    Williams 1997, "Computing with infinite networks", eq. 11:

        E[erf(u) erf(v)] = (2 / pi) arcsin(2 cov12 / sqrt((1 + 2 var1)(1 + 2 var2))),

    and, differentiating in cov12 (Price 1958),
        E[erf'(u) erf'(v)] = (4 / pi) / sqrt((1 + 2 var1)(1 + 2 var2) - 4 cov12^2).

    Args:
      cov12, var1, var2: broadcastable arrays, var >= 0, |cov12| <= sqrt(var1 var2).

    Returns:
      (nngp, dot), float64 arrays of the broadcast shape.
    """
    cov12, var1, var2 = _as_float64("erf_dual", cov12, var1, var2)
    det = (1 + 2 * var1) * (1 + 2 * var2) - 4 * cov12 ** 2
    nngp = (2 / np.pi) * np.arctan2(2 * cov12, np.sqrt(np.clip(det, 0.0, None)))
    return nngp, (4 / np.pi) / np.sqrt(det)


@functools.lru_cache(maxsize=40)
def _hermite_rule(degree):
    """Probabilists' Gauss–Hermite nodes and normalized weights (underflowed ones dropped)."""
    nodes, weights = roots_hermitenorm(int(degree))
    keep = weights > 0
    return nodes[keep], weights[keep] / weights[keep].sum()


def _gaussian_pair_moments(phi, dphi, cov12, var1, var2, degree, flat_degree=None):
    """(E[phi(u) phi(v)], E[dphi(u) dphi(v)]) on flat float64 arrays by Gauss–Hermite.

    u = sqrt(var1) x1, v = slope x1 + rest x2 with slope = cov12 / sqrt(var1),
    rest = sqrt(var2 - slope^2). Pairs at correlation +-1 (rest = 0) need the
    1-D rule only (of `flat_degree` nodes, default `degree`); the others use
    the tensor rule, in chunks of bounded memory.
    """
    x, w = _hermite_rule(flat_degree or degree)
    sd1 = np.sqrt(var1)
    slope = np.divide(cov12, sd1, out=np.zeros_like(cov12), where=sd1 > 0)
    rest = np.sqrt(np.clip(var2 - slope ** 2, 0.0, None))
    nngp, dot = np.empty_like(cov12), np.empty_like(cov12)
    flat = rest <= 1e-12 * np.sqrt(var2)
    if np.any(flat):
        u, v = sd1[flat, None] * x, slope[flat, None] * x
        nngp[flat], dot[flat] = (phi(u) * phi(v)) @ w, (dphi(u) * dphi(v)) @ w
    x, w = _hermite_rule(degree)
    pairs = np.flatnonzero(~flat)
    chunk = max(1, 2 ** 21 // x.size ** 2)
    for i in range(0, pairs.size, chunk):
        sel = pairs[i:i + chunk]
        u = sd1[sel, None] * x                                           # (b, d)
        v = slope[sel, None, None] * x[:, None] + rest[sel, None, None] * x  # (b, d, d)
        nngp[sel] = (phi(u) * (phi(v) @ w)) @ w
        dot[sel] = (dphi(u) * (dphi(v) @ w)) @ w
    return nngp, dot


# Largest estimated relative error of `quadrature_dual` that is accepted: the tolerance of
# kernels.stax.ElementwiseNumerical (kernels/stax/elementwise.py), whose check this mirrors.
QUADRATURE_TOLERANCE = 1e-3


def quadrature_error(phi, dphi, degree):
    """Estimated relative error of `quadrature_dual`'s rule of `degree` points per dimension.

    The estimate of `kernels.duals.gauss_hermite_error`, in float64 on NumPy functions: the
    rule against one of ``2 degree + 1`` points (SciPy's nodes, unlike NumPy's, hold to thousands) on unit-variance
    inputs at correlations 0, 0.5, 0.9 and 1, for both halves of the dual; the largest
    difference relative to the largest value of that half.
    """
    cov = np.array([0.0, 0.5, 0.9, 1.0])
    one = np.ones_like(cov)
    coarse = _gaussian_pair_moments(phi, dphi, cov, one, one, degree)
    fine = _gaussian_pair_moments(phi, dphi, cov, one, one, 2 * degree + 1)
    return max(float(np.max(np.abs(c - f)) / max(float(np.max(np.abs(f))), 1e-30)) for c, f in zip(coarse, fine))


def quadrature_dual(phi, dphi, degree=64):
    """Dual map of any elementwise phi by Gauss–Hermite quadrature.

    u = sqrt(var1) x1, v = (cov12 / sqrt(var1)) x1 + sqrt(var2 - cov12^2 / var1) x2,
    with x1, x2 independent standard normals, and E[f(x1, x2)] by the tensor
    product of `degree`-point Gauss–Hermite rules (probabilists' weights;
    the 1-D rule alone for pairs at correlation +-1, e.g. every diagonal).
    Exact for polynomials of degree < 2 degree in each variable; for a smooth
    phi the error grows with the variance (phi(sqrt(var) x) gets steeper):
    see `tanh_dual` for numbers.

    Args:
      phi, dphi: NumPy-vectorized activation and its derivative.
      degree: nodes per dimension (up to a few thousand; cost degree^2 per pair).

    Raises:
      ValueError: `degree` is too small for phi: the rule's estimated relative error
        (`quadrature_error`) exceeds `QUADRATURE_TOLERANCE` (1e-3), as in
        `kernels.stax.ElementwiseNumerical`.

    Returns:
      A dual map (cov12, var1, var2) -> (nngp, dot).
    """
    if not (callable(phi) and callable(dphi)):
        raise arguments.argument_error("quadrature_dual", "phi" if not callable(phi) else "dphi",
                                       "a NumPy-vectorized function", type(phi if not callable(phi) else dphi).__name__,
                                       TypeError)
    degree = arguments.integer("quadrature_dual", "degree", degree, low=1)
    error = quadrature_error(phi, dphi, degree)
    if not error <= QUADRATURE_TOLERANCE:
        raise arguments.argument_error(
            "quadrature_dual", "degree", "large enough for phi: a rule whose estimated relative error is at most "
            f"{QUADRATURE_TOLERANCE:g} (at unit variance; a function with a kink such as ReLU converges too slowly "
            "for any practical degree, use its closed-form dual)",
            f"degree={degree}, estimated relative error {error:.2g}")

    def dual(cov12, var1, var2):
        cov12, var1, var2 = _as_float64("quadrature_dual's dual", cov12, var1, var2)
        out = _gaussian_pair_moments(phi, dphi, cov12.ravel(), var1.ravel(), var2.ravel(), degree)
        return tuple(o.reshape(cov12.shape) for o in out)
    return dual


def _tanh_derivative(x):
    """sech(x)^2 = 4 e^{-2|x|} / (1 + e^{-2|x|})^2, without overflow."""
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def tanh_dual(cov12, var1, var2):
    """Dual map of phi(x) = tanh(x), by Gauss–Hermite quadrature.

    tanh has no closed-form Gaussian expectation, so this is the rule of
    `quadrature_dual`, with more nodes as the variance v (the larger of the
    pair's two) grows and tanh(sqrt(v) x) steepens towards a step: 2000 nodes
    for pairs at correlation +-1 (every diagonal; cheap, 1-D) and
    clip(300 sqrt(v), 64, 2000), rounded up to a multiple of 64, per
    dimension for the others. Measured against adaptive quadrature the error
    (of either output) is <= 1e-10 for v <= 10 and ~1e-9 at v = 30 off the
    diagonal; on the diagonal <= 5e-11 for v <= 20, ~5e-9 at 30, ~5e-5 at 100.

    Args:
      cov12, var1, var2: broadcastable arrays, var >= 0, |cov12| <= sqrt(var1 var2).

    Returns:
      (nngp, dot), float64 arrays of the broadcast shape.
    """
    cov12, var1, var2 = _as_float64("tanh_dual", cov12, var1, var2)
    c, v1, v2 = cov12.ravel(), var1.ravel(), var2.ravel()
    need = 300.0 * np.sqrt(np.maximum(v1, v2))
    degree = np.clip(64 * np.ceil(need / 64), 64, 2000).astype(int)
    nngp, dot = np.empty_like(c), np.empty_like(c)
    for d in np.unique(degree):
        sel = degree == d
        nngp[sel], dot[sel] = _gaussian_pair_moments(
            np.tanh, _tanh_derivative, c[sel], v1[sel], v2[sel], int(d), flat_degree=2000)
    return nngp.reshape(cov12.shape), dot.reshape(cov12.shape)


def critical_initialization(activation):
    """(C_b, C_W) at criticality (PDLT §5.2 ReLU, §5.3 tanh; erf as tanh's class).

    Args:
      activation: "relu" (C_b = 0, C_W = 2), "tanh" (C_b = 0, C_W = 1) or
        "erf" (C_b = 0, C_W = pi / 4, since erf'(0)^2 = 4 / pi).

    Returns:
      CriticalInitialization(C_b, C_W).
    """
    if not isinstance(activation, str) or activation not in _CRITICAL:
        raise arguments.argument_error("critical_initialization", "activation",
                                       f"one of {sorted(_CRITICAL)} (no critical initialization recorded otherwise)",
                                       repr(activation))
    return _CRITICAL[activation]


def _check_weights(where, C_W, C_b):
    return (arguments.scalar(where, "C_W", C_W, low=0, low_open=True),
            arguments.scalar(where, "C_b", C_b, low=0))


def _call_dual(dual, cov12, var1, var2, where):
    out = dual(cov12, var1, var2)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("dual must return a pair (E[phi phi], E[phi' phi']); "
                        f"got {type(out).__name__}.")
    nngp, dot = (np.broadcast_to(np.asarray(o, dtype=np.float64), cov12.shape) for o in out)
    if not (np.all(np.isfinite(nngp)) and np.all(np.isfinite(dot))):
        raise ValueError(f"dual returned a non-finite value {where}.")
    return nngp, dot


def kernel_recursion(dual, cov12, var1, var2, depth, C_W, C_b=0.0):
    """Infinite-width kernel of two inputs, layer by layer.

    PDLT §4.3 (the recursion in the module docstring): each layer maps
    (cov12, var1, var2) to C_b + C_W (E[phi(u) phi(v)], E[phi(u)^2], E[phi(v)^2]).

    Args:
      dual: dual(cov12, var1, var2) -> (E[phi phi], E[phi' phi']), vectorized.
      cov12, var1, var2: the first layer's pre-activation kernel,
        K^{(1)} = C_b + C_W x_a . x_b / n_0; broadcastable arrays (a batch of
        input pairs), var > 0, |cov12| <= sqrt(var1 var2).
      depth: number of further layers >= 0.
      C_W, C_b: weight and bias variances (C_W > 0, C_b >= 0).

    Returns:
      KernelFlow(cov12, var1, var2), each float64 of shape (depth + 1, *batch);
      entry l is the kernel l layers above the first (entry 0 is the input).

    Raises:
      ValueError: bad arguments, or a non-finite kernel (naming the layer).
    """
    where = "kernel_recursion"
    if not callable(dual):
        raise arguments.argument_error(where, "dual", "callable: dual(cov12, var1, var2) -> (nngp, dot)",
                                       type(dual).__name__, TypeError)
    depth = int(arguments.real_values(where, "depth", depth, low=0, integer_valued=True).reshape(()))
    C_W, C_b = _check_weights(where, C_W, C_b)
    cov12, var1, var2 = _as_float64(where, cov12, var1, var2)
    for name, var in (("var1", var1), ("var2", var2)):
        if not np.all(var > 0):
            raise arguments.argument_error(where, name, "> 0 (the first layer's variances)", "a value <= 0")
    flow = [(cov12, var1, var2)]
    for layer in range(1, int(depth) + 1):
        c, v1, v2 = flow[-1]
        where = f"at layer {layer} of the recursion"
        e12 = _call_dual(dual, c, v1, v2, where)[0]
        e11 = _call_dual(dual, v1, v1, v1, where)[0]
        e22 = _call_dual(dual, v2, v2, v2, where)[0]
        flow.append((C_b + C_W * e12, C_b + C_W * e11, C_b + C_W * e22))
    return KernelFlow(*(np.stack(parts) for parts in zip(*flow)))


def susceptibilities(dual, K, C_W):
    """Parallel and perpendicular susceptibilities at single-input kernel K.

    PDLT §5.1, eqs. for chi_parallel and chi_perp (module docstring):
    chi_perp = C_W E_K[phi'^2] is the dual's second output on the diagonal;
    chi_parallel = C_W d/dK E_K[phi^2] is the derivative of its first output
    along the diagonal, taken by a Richardson-extrapolated central difference
    (step 1e-3 K; error ~1e-10 relative for smooth duals), so any dual works.

    Args:
      dual: dual(cov12, var1, var2) -> (E[phi phi], E[phi' phi']), vectorized.
      K: single-input kernels > 0 (any shape). (K -> 0 limits, e.g. tanh's
        fixed point K* = 0, must be taken as limits: C_W phi'(0)^2.)
      C_W: weight variance > 0.

    Returns:
      (chi_parallel, chi_perp), float64 arrays of K's shape.
    """
    where = "susceptibilities"
    if not callable(dual):
        raise arguments.argument_error(where, "dual", "callable: dual(cov12, var1, var2) -> (nngp, dot)",
                                       type(dual).__name__, TypeError)
    C_W = _check_weights(where, C_W, 0.0)[0]
    K = arguments.real_values(where, "K", K, low=0, low_open=True)
    diag = lambda k: _call_dual(dual, k, k, k, "at the susceptibility's kernel K")
    chi_perp = C_W * diag(K)[1]

    def slope(h):
        return (diag(K + h)[0] - diag(K - h)[0]) / (2 * h)

    h = 1e-3 * K
    chi_parallel = C_W * (4 * slope(h / 2) - slope(h)) / 3
    return chi_parallel, chi_perp


def relu_output_kurtosis(width, depth):
    """E[z^4] / E[z^2]^2 of one output of a finite bias-free ReLU network.

    The network has `depth` hidden layers of width n, weights of variance
    C_W / fan-in, no biases, one fixed input x != 0. The result, exact at every
    width, is

        kurtosis = 3 (1 + 5 / n)^depth

    (independent of C_W and of the input width); its 1/n expansion
    3 (1 + 5 depth / n) is PDLT's leading finite-width correction for the
    scale-invariant class, §5.4: V / K^2 = (3 A_4 / A_2^2 - 1) depth / n with
    A_2 = A_4 = 1/2 for ReLU.

    Derivation. Given layer l's activations, the next pre-activations are i.i.d.
    N(0, G_l) with G_l = (C_W / n) sum_j relu(z_j^{(l)})^2. Given G_{l-1}, the
    z_j^{(l)} are i.i.d. N(0, G_{l-1}), and for z ~ N(0, G):
    E[relu(z)^2] = G / 2, E[relu(z)^4] = 3 G^2 / 2. Hence
        E[G_l | G_{l-1}]   = (C_W / 2) G_{l-1},
        E[G_l^2 | G_{l-1}] = (C_W / n)^2 (n 3 G^2 / 2 + n (n - 1) G^2 / 4)
                           = (C_W / 2)^2 G_{l-1}^2 (1 + 5 / n).
    G_0 = C_W |x|^2 / n_0 is deterministic (the first layer's pre-activations
    are exactly Gaussian), so E[G_L^2] / E[G_L]^2 = (1 + 5 / n)^L, and the
    output, Gaussian given G_L, has E[z^4] / E[z^2]^2 = 3 E[G_L^2] / E[G_L]^2.
    One hidden layer gives 3 (1 + 5 / n).

    Args:
      width: hidden width n >= 1 (array-like allowed).
      depth: number of hidden layers, integer >= 0 (array-like allowed).

    Returns:
      float64 array of the broadcast shape (a float for scalars).
    """
    width = arguments.real_values("relu_output_kurtosis", "width", width, low=1)
    depth = arguments.real_values("relu_output_kurtosis", "depth", depth, low=0, integer_valued=True)
    out = 3.0 * (1.0 + 5.0 / width) ** depth
    return out[()] if out.ndim == 0 else out
