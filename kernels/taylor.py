"""Taylor expansions of a finite network in its parameters: `linearize` and `taylor_expand`.

The linearized network f_lin(p, x) = f(p0, x) + J(x) (p - p0) trained by gradient descent
follows the NTK dynamics of its kernel J J^T exactly (Lee et al. 2019, "Wide neural networks
of any depth evolve as linear models under gradient descent", eq. 6); the wider the
network, the closer f stays to f_lin. Both functions keep neural-tangents' signatures.
"""
import math

import jax


def _displacement(params, p):
    return jax.tree.map(lambda new, old: new - old, p, params)


def linearize(f, params):
    """``f_lin(p, *args, **kwargs) = f(params, *args, **kwargs) + J_params f . (p - params)``.

    Args:
      f: ``apply_fn(params, *args, **kwargs)``.
      params: the expansion point p0.

    Returns:
      The first-order Taylor expansion of ``f`` in its parameters around ``params``, with
      ``f``'s signature; one Jacobian-vector product per call.
    """
    def f_lin(p, *args, **kwargs):
        value, change = jax.jvp(lambda q: f(q, *args, **kwargs), (params,), (_displacement(params, p),))
        return jax.tree.map(lambda a, b: a + b, value, change)

    return f_lin


def taylor_expand(f, params, degree):
    """The Taylor polynomial of ``f`` in its parameters around ``params``, to order ``degree``.

    ``f_tayl(p, ...) = sum_{k=0}^{degree} (1/k!) d^k/dt^k f(params + t (p - params), ...) at t = 0``,
    each derivative a nested Jacobian-vector product along the displacement (cost grows
    like 2^degree, so keep ``degree`` small).

    Args:
      f: ``apply_fn(params, *args, **kwargs)``.
      params: the expansion point.
      degree: a non-negative int; 0 gives the constant f(params), 1 `linearize`.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"taylor_expand: argument `degree` must be a non-negative int; received {degree!r}")

    def f_tayl(p, *args, **kwargs):
        step = _displacement(params, p)

        def along(t):
            return f(jax.tree.map(lambda a, d: a + t * d, params, step), *args, **kwargs)

        total, derivative = along(0.0), along
        for k in range(1, degree + 1):
            derivative = (lambda g: lambda t: jax.jvp(g, (t,), (1.0,))[1])(derivative)
            total = jax.tree.map(lambda a, b, k=k: a + b / math.factorial(k), total, derivative(0.0))
        return total

    return f_tayl
