"""Kernels of finite networks: one network's empirical NNGP/NTK, and their Monte Carlo average.

The empirical NTK of a network ``f(params, x)`` is ``J(x1) J(x2)^T`` with ``J`` the
Jacobian in all parameters (Jacot et al. 2018, eq. 2); the empirical NNGP is
``f(x1) f(x2)^T``. Both are averaged over ``trace_axes`` of the outputs (by
default the channel axis), so that they estimate the closed forms of
`kernels.stax` (Novak et al. 2022, "Fast finite width NTK", for the contraction).
"""
from __future__ import annotations

import enum
import functools
from typing import Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error, parse_get, positive_int

NAMES = ("nngp", "ntk")


class NtkImplementation(enum.IntEnum):
    """neural-tangents' names for the ways of computing an empirical NTK (Novak et al. 2022).

    Each gives the same kernel; widekit computes all of them as a Jacobian contraction
    (so they differ here in nothing but the name).
    """
    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


IMPLEMENTATIONS = (None,) + tuple(int(v) for v in NtkImplementation)


def _check_options(where: str, diagonal_axes, vmap_axes, implementation) -> None:
    """Options that change only how neural-tangents computes a kernel, not the kernel, are checked here.

    ``vmap_axes`` and ``implementation`` are performance hints there: any valid value gives the
    same kernel, which is computed here by Jacobian contraction (``implementation=1``).
    """
    if tuple(diagonal_axes) != ():
        raise argument_error(where, "diagonal_axes", "() (only full kernels are computed)", diagonal_axes)
    if getattr(implementation, "value", implementation) not in IMPLEMENTATIONS:  # an int or an enum member
        raise argument_error(where, "implementation", f"one of {IMPLEMENTATIONS[1:]} (or None)", implementation)
    if vmap_axes is not None and not isinstance(vmap_axes, (int, tuple, list, dict)):
        raise argument_error(where, "vmap_axes", "None, an int or a pytree of ints", vmap_axes, TypeError)


def _check_private_rules(where, _j_rules, _s_rules, _fwd):
    """neural-tangents' private switches of structured derivatives: accepted at their defaults only."""
    for name, value, default in (("_j_rules", _j_rules, True), ("_s_rules", _s_rules, True),
                                 ("_fwd", _fwd, None)):
        if value is not default:
            raise argument_error(where, name, f"{default} (widekit has no structured-derivative rules "
                                 "to switch)", value)


def empirical_kernel_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, implementation=None,
                        _j_rules=True, _s_rules=True, _fwd=None, batch_size: Optional[int] = None):
    """Empirical NNGP and NTK of the finite network ``f(params, x, **kwargs)``.

    Args:
      f: an ``apply_fn``.
      trace_axes: output axes averaged over (default the channel axis); the others are
        kept as pairs, interleaved: ``(N1, N2, S_1, S'_1, ...)`` as the closed forms.
      diagonal_axes: only ``()`` is supported (refused otherwise).
      vmap_axes, implementation: neural-tangents' performance hints; checked, and the
        kernel (the same for every valid value) is computed by Jacobian contraction.
      _j_rules, _s_rules, _fwd: neural-tangents' private switches, accepted at their defaults
        (True, True, None) and refused otherwise.
      batch_size: examples of ``x1`` and of ``x2`` per chunk of the Jacobian
        contraction, which bounds memory to ``2 * batch_size * outputs * parameters``.
        ``None`` does all at once.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``; for an ``f`` whose
      output is a list of arrays (a network ending in branches), a list of results, one per
      branch, as neural-tangents returns them.
    """
    _check_options("empirical_kernel_fn", diagonal_axes, vmap_axes, implementation)
    _check_private_rules("empirical_kernel_fn", _j_rules, _s_rules, _fwd)
    if batch_size is not None:
        positive_int("empirical_kernel_fn", "batch_size", batch_size)

    def output_axes(ndim):
        traced = tuple(sorted(a % ndim for a in trace_axes))
        if 0 in traced:
            raise ValueError("empirical_kernel_fn: trace_axes must not include the batch axis 0")
        kept = tuple(a for a in range(1, ndim) if a not in traced)
        return traced, kept

    def pair(a, b, ndim):
        """a: (N1, *out, extra), b: (N2, *out, extra) -> (N1, N2, k_1, k'_1, ...) averaged over traced.

        Kept output axes pair up in neural-tangents' interleaved order, as closed forms do.
        """
        traced, kept = output_axes(ndim)
        letters = "abcdefgh"
        la = ["x"] + [letters[i] for i in range(ndim - 1)] + ["z"]
        lb = ["y"] + [letters[i] if (i + 1) in traced else letters[i].upper() for i in range(ndim - 1)] + ["z"]
        out = ["x", "y"] + [c for i in kept for c in (letters[i - 1], letters[i - 1].upper())]
        size = 1
        for t in traced:
            size *= a.shape[t]
        return jnp.einsum(f"{''.join(la)},{''.join(lb)}->{''.join(out)}", a, b) / size

    def ntk_of(params, x1, x2, kwargs, f=f):
        def jacobian(x):
            j = jax.jacrev(lambda p: f(p, x, **kwargs))(params)
            return [leaf.reshape(leaf.shape[:ndim] + (-1,)) for leaf in jax.tree.leaves(j)]

        def chunks(x):
            if batch_size is None or x.shape[0] <= batch_size:
                return [x]
            return [x[s:s + batch_size] for s in range(0, x.shape[0], batch_size)]

        ndim = jax.eval_shape(lambda x: f(params, x, **kwargs), x1).ndim
        rows = []
        for a in chunks(x1):
            ja = jacobian(a)
            cols = [sum(pair(l1, l2, ndim) for l1, l2 in zip(ja, jacobian(b))) for b in chunks(x2)]
            rows.append(jnp.concatenate(cols, axis=1))
        return jnp.concatenate(rows, axis=0)

    def one_output(f, params, x1, x2, names, kwargs) -> dict:
        x2_ = x1 if x2 is None else x2
        out = {}
        if "nngp" in names:
            f1 = f(params, x1, **kwargs)
            f2 = f1 if x2 is None else f(params, x2_, **kwargs)
            out["nngp"] = pair(f1[..., None], f2[..., None], f1.ndim)
        if "ntk" in names:
            out["ntk"] = ntk_of(params, x1, x2_, kwargs, f)
        return out

    def values(params, x1, x2, names, kwargs):
        """name -> array; for an ``f`` whose output is a (nested) list of arrays (a network ending in
        branches), a list of those, one per branch: each output's kernels, its NTK from its
        Jacobian in all parameters (zero in those of other branches)."""
        shapes = jax.eval_shape(lambda x: f(params, x, **kwargs), x1)
        if not isinstance(shapes, (list, tuple)):
            return one_output(f, params, x1, x2, names, kwargs)
        count = len(jax.tree.leaves(shapes))

        def branch(i):
            return one_output(lambda p, x, **kw: jax.tree.leaves(f(p, x, **kw))[i], params, x1, x2, names, kwargs)
        return _as_lists(jax.tree.unflatten(jax.tree.structure(shapes), [branch(i) for i in range(count)]))

    compiled = jax.jit(lambda params, x1, x2, names: values(params, x1, x2, names, {}), static_argnames="names")

    def kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs):
        where = "empirical kernel_fn"
        if params is None:
            raise argument_error(where, "params", "the finite network's parameters", None)
        request = parse_get(get, NAMES, where)
        _check_params_fit(where, f, params, x1, x2, apply_fn_kwargs)
        if apply_fn_kwargs:  # may hold non-array options: trace them as Python values
            out = values(params, x1, x2, request.names, apply_fn_kwargs)
        else:  # eager Jacobians of a width-16 net took 14-30 s; compiled, well under one
            out = compiled(params, x1, x2, request.names)
        return _pack(request, out)

    kernel_fn.values = values
    return kernel_fn


def empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
                     implementation=NtkImplementation.JACOBIAN_CONTRACTION, _j_rules=True, _s_rules=True,
                     _fwd=None):
    """neural-tangents' ``empirical_ntk_fn``: ``ntk_fn(x1, x2, params, **apply_fn_kwargs)``.

    The empirical NTK J(x1) J(x2)^T of ``f`` (Jacot et al. 2018, eq. 2), averaged over
    ``trace_axes``; ``x2=None`` means ``x1``. Arguments as in `empirical_kernel_fn`.
    """
    kernel_fn = empirical_kernel_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation,
                                    _j_rules, _s_rules, _fwd)

    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        return kernel_fn(x1, x2, "ntk", params, **apply_fn_kwargs)

    return ntk_fn


def empirical_nngp_fn(f, trace_axes=(-1,), diagonal_axes=()):
    """neural-tangents' ``empirical_nngp_fn``: ``nngp_fn(x1, x2, params, **apply_fn_kwargs)``,
    the outputs' product f(x1) f(x2)^T averaged over ``trace_axes``; ``x2=None`` means ``x1``."""
    kernel_fn = empirical_kernel_fn(f, trace_axes, diagonal_axes)

    def nngp_fn(x1, x2, params, **apply_fn_kwargs):
        return kernel_fn(x1, x2, "nngp", params, **apply_fn_kwargs)

    return nngp_fn


def empirical_ntk_vp_fn(f, x1, x2, params, **apply_fn_kwargs):
    """neural-tangents' ``empirical_ntk_vp_fn``: ``ntk_vp_fn(cotangents)`` = Theta(x1, x2) v.

    The NTK-vector product J(x1) (J(x2)^T v) without forming the kernel (Novak et al. 2022,
    "Fast finite width neural tangent kernel", §3.2): a vector-Jacobian product at ``x2``
    followed by a Jacobian-vector product at ``x1``. ``cotangents`` has the shape of
    ``f(params, x2)``, the result that of ``f(params, x1)``; no axes are traced.
    """
    x2 = x1 if x2 is None else x2

    def ntk_vp_fn(cotangents):
        _, vjp = jax.vjp(lambda p: f(p, x2, **apply_fn_kwargs), params)
        tangents, = vjp(cotangents)
        return jax.jvp(lambda p: f(p, x1, **apply_fn_kwargs), (params,), (tangents,))[1]

    return ntk_vp_fn


def _as_lists(tree):
    """``tree`` with its lists and tuples (the branches of a network's output) as lists, as
    neural-tangents returns one kernel per branch."""
    return [_as_lists(t) for t in tree] if isinstance(tree, (list, tuple)) else tree


def _pack(request, out):
    """What ``get`` asks for (`kernels.checks.Get.pack`) of each branch of ``out`` (a dict, or lists of them)."""
    return [_pack(request, o) for o in out] if isinstance(out, list) else request.pack(out)


def _check_params_fit(where, f, params, x1, x2, kwargs) -> None:
    """Refuses, naming ``params``, parameters that ``f`` cannot be applied with (another network's)."""
    for label, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        try:
            jax.eval_shape(lambda p, z: f(p, z, **kwargs), params, x)
        except Exception as error:  # any failure of the user's function on these shapes
            shapes = jax.tree.map(lambda a: getattr(a, "shape", type(a).__name__), params)
            raise argument_error(where, "params", f"parameters of this network for inputs {label} of shape "
                                 f"{getattr(x, 'shape', None)}",
                                 f"parameters shaped {shapes}, on which apply_fn fails: "
                                 f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error


def monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples: Union[int, Iterable[int]], batch_size: int = 0,
                          device_count: int = -1, store_on_device: bool = True, trace_axes=(-1,),
                          diagonal_axes=(), vmap_axes=None, implementation=None):
    """Monte Carlo estimate of the NNGP/NTK: empirical kernels averaged over random inits.

    Args:
      init_fn, apply_fn: the finite network.
      key: PRNG key; sample ``i`` is initialized from ``jax.random.fold_in(key, i)``.
      n_samples: an int, or an increasing iterable of ints (then ``kernel_fn``
        returns a generator of running averages at those counts).
      batch_size: if positive, examples per chunk of the Jacobian contraction.
      device_count, store_on_device: samples run on the default device and results are
        device arrays; ``device_count`` must name existing devices (``-1``: all), and
        ``store_on_device=False`` returns NumPy arrays.
      trace_axes, diagonal_axes, vmap_axes, implementation: as in `empirical_kernel_fn`.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)``; a list of results, one per branch,
      for a network ending in branches.
    """
    where = "monte_carlo_kernel_fn"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise argument_error(where, "batch_size", "a non-negative int (0: no chunking)", batch_size)
    if not isinstance(device_count, int) or not -1 <= device_count <= jax.local_device_count():
        raise argument_error(where, "device_count", f"-1 (all) or 0..{jax.local_device_count()} local devices",
                             device_count)
    empirical = empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation,
                                    batch_size=batch_size if batch_size > 0 else None)
    try:
        counts = [n_samples] if isinstance(n_samples, int) else sorted(int(n) for n in n_samples)
    except (TypeError, ValueError):
        raise argument_error(where, "n_samples", "a positive int or an iterable of them", n_samples,
                             TypeError) from None
    if not counts or counts[0] < 1 or isinstance(n_samples, bool):
        raise argument_error(where, "n_samples", "a positive int or an iterable of them", n_samples)

    @functools.partial(jax.jit, static_argnames=("names",))
    def sample(i, x1, x2, names, kwargs):
        _, params = init_fn(jax.random.fold_in(key, i), x1.shape)
        return empirical.values(params, x1, x2, names, kwargs)

    def running(x1, x2, request, kwargs):
        total, done = None, 0
        for n in counts:
            for i in range(done, n):
                part = sample(i, x1, x2, request.names, kwargs)
                total = part if total is None else jax.tree.map(jnp.add, total, part)
            done = n
            mean = jax.tree.map(lambda a: a / n, total)
            yield _pack(request, mean if store_on_device else jax.tree.map(np.asarray, mean))

    def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
        gen = running(x1, x2, parse_get(get, NAMES, "monte_carlo kernel_fn"), apply_fn_kwargs)
        if isinstance(n_samples, int):
            return next(gen)
        return gen

    return kernel_fn
