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
import math
from typing import Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from kernels import structured_ntk
from kernels.checks import argument_error, parse_get, positive_int

NAMES = ("nngp", "ntk")


class NtkImplementation(enum.IntEnum):
    """neural-tangents' names for the ways of computing an empirical NTK (Novak et al. 2022,
    "Fast finite width neural tangent kernel", ICML); all give the same kernel.

    JACOBIAN_CONTRACTION (1): ``J(x1) J(x2)^T`` from the Jacobians in every parameter (§3.1).
    NTK_VECTOR_PRODUCTS (2): the NTK as the linear map ``v -> J(x1) J(x2)^T v`` (a VJP at ``x2``
      then a JVP at ``x1``), applied to every basis vector of ``f(x2)``'s outputs (§3.2).
    STRUCTURED_DERIVATIVES (3): weights entering through one matrix product or convolution are
      contracted from the cotangents of that product and its input, without their Jacobians (§4;
      `kernels.structured_ntk`); other parameters by their Jacobians.
    AUTO (0): whichever of 1, 2, 3 `kernels.structured_ntk.estimated_flops` estimates cheapest
      for these networks and input shapes (ties go to the lower number).
    """
    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


IMPLEMENTATIONS = (None,) + tuple(int(v) for v in NtkImplementation)
_LETTERS = "abcdefgh"  # output axes; `kernels.structured_ntk` uses letters after these


def _parse_implementation(where, implementation) -> int:
    """An int or `NtkImplementation` member (``None``: Jacobian contraction) as an int 0-3."""
    value = getattr(implementation, "value", implementation)
    if isinstance(value, bool) or value not in IMPLEMENTATIONS:
        raise argument_error(where, "implementation", f"one of {IMPLEMENTATIONS[1:]} (or None)", implementation)
    return 1 if value is None else int(value)


def _parse_vmap_axes(where, vmap_axes) -> bool:
    """Whether ``f`` is certified to act on each example alone along the batch axis 0.

    As in neural-tangents, ``vmap_axes`` promises that ``f(params, x)`` stacks ``f`` of single
    examples; every implementation then works on one example (pair) at a time under ``jax.vmap``.
    ``0`` or ``(0, 0, None)`` (inputs, outputs, keyword arguments; ``{}`` for the last also) are
    supported; other axes are refused.
    """
    if vmap_axes is None:
        return False
    if isinstance(vmap_axes, int) and not isinstance(vmap_axes, bool) and vmap_axes == 0:
        return True
    if (isinstance(vmap_axes, (tuple, list)) and len(vmap_axes) == 3 and vmap_axes[0] == 0 and vmap_axes[1] == 0
            and vmap_axes[2] in (None, {})):
        return True
    raise argument_error(where, "vmap_axes", "None, 0 or (0, 0, None) (examples along the batch axis 0, "
                         "keyword arguments shared)", vmap_axes)


def _check_private_rules(where, _j_rules, _s_rules, _fwd):
    """neural-tangents' private switches of structured derivatives: accepted at their defaults only
    (widekit's rules are always on, and the order of each contraction is chosen by FLOPs)."""
    for name, value, default in (("_j_rules", _j_rules, True), ("_s_rules", _s_rules, True),
                                 ("_fwd", _fwd, None)):
        if value is not default:
            raise argument_error(where, name, f"{default} (widekit's structured-derivative rules cannot be "
                                 "switched)", value)


def _output_axes(where, ndim, trace_axes, diagonal_axes):
    """(traced, diagonal) output axes as sorted non-negative ints, checked."""
    if ndim > len(_LETTERS):
        raise ValueError(f"{where}: outputs of more than {len(_LETTERS)} axes are not supported; received {ndim}")
    traced = tuple(sorted({a % ndim for a in trace_axes}))
    diagonal = tuple(sorted({a % ndim for a in diagonal_axes}))
    if 0 in traced:
        raise argument_error(where, "trace_axes", "output axes other than the batch axis 0", tuple(trace_axes))
    if set(traced) & set(diagonal):
        raise argument_error(where, "diagonal_axes", f"axes not in trace_axes={tuple(trace_axes)}",
                             tuple(diagonal_axes))
    return traced, diagonal


def _output_letters(ndim, traced, diagonal):
    """einsum letters (U1, U2, out) of two outputs' axes and their kernel: a traced axis shares one
    letter (summed), a diagonal one shares it and keeps it once, every other axis is kept as a
    pair in neural-tangents' interleaved order ``(N1, N2, S1, S'1, ...)``."""
    u1 = _LETTERS[:ndim]
    u2 = "".join(c if i in traced or i in diagonal else c.upper() for i, c in enumerate(u1))
    out = "".join(c if i in diagonal else c + c.upper() for i, c in enumerate(u1) if i not in traced)
    return u1, u2, out


def empirical_kernel_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, implementation=None,
                        _j_rules=True, _s_rules=True, _fwd=None, batch_size: Optional[int] = None):
    """Empirical NNGP and NTK of the finite network ``f(params, x, **kwargs)``.

    Args:
      f: an ``apply_fn``.
      trace_axes: output axes averaged over (default the channel axis); not the batch axis.
      diagonal_axes: output axes of which only the diagonal pairs are kept (axis 0: the kernel
        of each example with itself, which needs as many ``x2`` as ``x1``). The kernel's axes are
        the outputs' other axes in order, each a pair ``(S1, S'1)`` or one diagonal axis, as in
        neural-tangents.
      vmap_axes: ``None``, or ``0`` / ``(0, 0, None)``: a promise that ``f`` acts on each example
        alone, which lets every implementation work one example (pair) at a time.
      implementation: `NtkImplementation` or its int, 0 (AUTO) to 3 (structured derivatives); all
        give the same NTK; ``None`` means 1.
      _j_rules, _s_rules, _fwd: neural-tangents' private switches, accepted at their defaults
        (True, True, None) and refused otherwise.
      batch_size: examples of ``x1`` and of ``x2`` per chunk (without ``vmap_axes``), which bounds
        memory to ``2 * batch_size * outputs * parameters``. ``None`` does all at once.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``; for an ``f`` whose
      output is a list of arrays (a network ending in branches), a list of results, one per
      branch, as neural-tangents returns them.
    """
    where = "empirical_kernel_fn"
    method = _parse_implementation(where, implementation)
    per_example = _parse_vmap_axes(where, vmap_axes)
    _check_private_rules(where, _j_rules, _s_rules, _fwd)
    trace_axes, diagonal_axes = tuple(trace_axes), tuple(diagonal_axes)
    if batch_size is not None:
        positive_int(where, "batch_size", batch_size)

    def blocks(block, x1, x2, diagonal_batch):
        """``block(xa, xb)`` (the kernel of two batches) over all of ``x1 x x2``: per example pair
        under ``vmap``, by chunks of ``batch_size``, or at once."""
        if per_example:
            def one(a, b):
                return block(a[None], b[None])
            if diagonal_batch:
                return jax.vmap(one)(x1, x2)[:, 0]
            return jax.vmap(lambda a: jax.vmap(lambda b: one(a, b))(x2))(x1)[:, :, 0, 0]
        if batch_size is None or max(x1.shape[0], x2.shape[0]) <= batch_size:
            return block(x1, x2)
        starts1, starts2 = range(0, x1.shape[0], batch_size), range(0, x2.shape[0], batch_size)
        if diagonal_batch:
            return jnp.concatenate([block(x1[s:s + batch_size], x2[s:s + batch_size]) for s in starts1], axis=0)
        return jnp.concatenate([jnp.concatenate([block(x1[s:s + batch_size], x2[t:t + batch_size])
                                                 for t in starts2], axis=1) for s in starts1], axis=0)

    def one_output(f, params, x1, x2, names, kwargs) -> dict:
        x2_ = x1 if x2 is None else x2
        ndim = jax.eval_shape(lambda x: f(params, x, **kwargs), x1).ndim
        traced, diagonal = _output_axes("empirical kernel_fn", ndim, trace_axes, diagonal_axes)
        if 0 in diagonal and x1.shape[0] != x2_.shape[0]:
            raise argument_error("empirical kernel_fn", "x2", f"{x1.shape[0]} examples as x1 (diagonal_axes "
                                 "holds the batch axis 0)", x2_.shape)
        letters = _output_letters(ndim, traced, diagonal)
        n1, n2 = (x1.shape[0], x2_.shape[0]) if per_example else (1, 1)
        counts = (n1, n2, n1 if 0 in diagonal else n1 * n2)

        def h(p, x):
            return f(p, x, **kwargs)

        out = {}
        if "nngp" in names:
            out["nngp"] = blocks(lambda a, b: _pair(h(params, a)[..., None], h(params, b)[..., None], letters),
                                 x1, x2_, 0 in diagonal)
        if "ntk" in names:
            out["ntk"] = blocks(lambda a, b: _ntk_block(method, h, params, a, b, letters, counts),
                                x1, x2_, 0 in diagonal)
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


def _pair(a, b, letters):
    """``sum_p a[U1, p] b[U2, p]`` arranged by ``letters`` (`_output_letters`), averaged over the
    traced axes. a: (*Y1, P), b: (*Y2, P)."""
    u1, u2, out = letters
    return jnp.einsum(f"{u1}p,{u2}p->{out}", a, b) / _traced_size(a.shape, letters)


def _traced_size(shape, letters):
    u1, _, out = letters
    return math.prod(n for c, n in zip(u1, shape) if c not in out)


def _ntk_block(method, h, params, xa, xb, letters, counts):
    """The NTK of the batches ``xa``, ``xb`` of ``h(params, x)`` by implementation ``method`` (0-3)."""
    if method in (0, 3):
        leaves, tree = jax.tree.flatten(params)

        def flat(ls, x):
            return h(jax.tree.unflatten(tree, ls), x)

        closed_a, closed_b = structured_ntk.trace(flat, leaves, xa), structured_ntk.trace(flat, leaves, xb)
        rules_a, rules_b = structured_ntk.agreed_rules(closed_a, closed_b, len(leaves))
        if method == 0:
            flops = structured_ntk.estimated_flops(closed_a, closed_b, rules_a, rules_b, letters, counts)
            method = min(flops, key=lambda m: (flops[m], m))
        if method == 3:
            side_a = structured_ntk.factors(closed_a, leaves, xa, rules_a)
            side_b = structured_ntk.factors(closed_b, leaves, xb, rules_b)
            shape_a = closed_a.jaxpr.outvars[0].aval.shape
            return structured_ntk.contract(side_a, side_b, letters, counts, _traced_size(shape_a, letters))
    if method == 2:
        return _ntk_vector_products_block(h, params, xa, xb, letters)

    def jacobian(x):
        j = jax.jacrev(lambda p: h(p, x))(params)
        return [leaf.reshape(leaf.shape[:len(letters[0])] + (-1,)) for leaf in jax.tree.leaves(j)]
    return sum(_pair(a, b, letters) for a, b in zip(jacobian(xa), jacobian(xb)))


def _ntk_vector_products_block(h, params, xa, xb, letters):
    """``Theta v = J(xa) (J(xb)^T v)`` for every basis vector ``v`` of ``h(xb)``'s outputs (Novak et
    al. 2022, §3.2): a VJP at ``xb`` (once) and a JVP at ``xa`` per vector, then the traced and
    diagonal axes taken from the full block."""
    fb, vjp = jax.vjp(lambda p: h(p, xb), params)
    shape_a = jax.eval_shape(lambda p: h(p, xa), params).shape

    def column(v):
        tangent, = vjp(v.reshape(fb.shape))
        return jax.jvp(lambda p: h(p, xa), (params,), (tangent,))[1]

    columns = jax.vmap(column)(jnp.eye(fb.size, dtype=fb.dtype))  # (|Yb|, *Ya)
    u1, u2, out = letters
    full = columns.reshape(fb.shape + shape_a)
    return jnp.einsum(f"{u2}{u1}->{out}", full) / _traced_size(shape_a, letters)


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
