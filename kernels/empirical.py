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
from kernels.checks import all_none, argument_error, parse_get, positive_int
from kernels.checks import device_count as check_device_count

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


def _parse_vmap_axes(where, vmap_axes):
    """``vmap_axes`` as ``None`` or the triple ``(in_axes, out_axes, kwargs_axes)``.

    As in neural-tangents, ``vmap_axes`` promises that ``f(params, x, **kwargs)`` is ``f`` of single
    examples stacked along ``out_axes``, the examples being slices of ``x`` along ``in_axes`` and of
    the keyword arguments named in ``kwargs_axes`` along its values (the others shared). A triple is
    read as such; anything else as ``in_axes = out_axes = vmap_axes`` with no keyword axes. Each of
    ``in_axes``, ``out_axes`` and a ``kwargs_axes`` value is an int (every leaf), or a pytree of ints
    (``None`` for a leaf that is not batched) shaped like the inputs, outputs or that argument.
    """
    if vmap_axes is None:
        return None
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        in_axes, out_axes, kwargs_axes = vmap_axes
    else:
        in_axes, out_axes, kwargs_axes = vmap_axes, vmap_axes, {}
    kwargs_axes = {} if kwargs_axes is None else kwargs_axes
    expected = ("None, an int, or (in_axes, out_axes, kwargs_axes): pytrees of int axes (None: not batched) "
                "and a dict of them by keyword")
    if not isinstance(kwargs_axes, dict):
        raise argument_error(where, "vmap_axes", expected, vmap_axes)
    for part in (in_axes, out_axes, *kwargs_axes.values()):
        if any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in jax.tree.leaves(part)):
            raise argument_error(where, "vmap_axes", expected, vmap_axes)
    if out_axes is None or not jax.tree.leaves(out_axes):
        raise argument_error(where, "vmap_axes", "out_axes naming the batch axis of every output", vmap_axes)
    return in_axes, out_axes, kwargs_axes


def _leaf_axes(where, name, axes, tree) -> list:
    """One axis (an int, or None: not batched) per leaf of ``tree``: ``axes`` an int for every leaf,
    a pytree prefix of ``tree``, or a pytree with as many int leaves as ``tree`` (neural-tangents
    pairs lists with tuples)."""
    leaves = jax.tree.leaves(tree)
    if axes is None or isinstance(axes, (int, np.integer)):
        return [None if axes is None else int(axes) % max(np.ndim(leaf), 1) for leaf in leaves]
    try:
        subtrees = jax.tree.structure(axes).flatten_up_to(tree)
        per_leaf = [a for a, sub in zip(jax.tree.leaves(axes), subtrees) for _ in jax.tree.leaves(sub)]
    except (ValueError, TypeError):
        per_leaf = jax.tree.leaves(axes)
    if len(per_leaf) != len(leaves):
        raise argument_error(where, "vmap_axes", f"{name} shaped like {jax.tree.structure(tree)}", axes)
    return [int(a) % np.ndim(leaf) for a, leaf in zip(per_leaf, leaves)]


def split_kwargs(kwargs: dict, x1, x2):
    """The keyword arguments of ``f`` for ``x1`` and for ``x2``, as neural-tangents splits them: a
    pair ``(for_x1, for_x2)`` is split; ``rng`` (one key) serves ``x1`` and, unless ``x2`` is
    ``None`` or equal to ``x1``, ``jax.random.fold_in(rng, 1)`` serves ``x2``, so that stochastic
    layers (Dropout) draw independent masks for different inputs and the same mask for the same
    input; a pair of keys ``rng=(k1, k2)`` with ``x2`` given is read likewise: ``k2`` becomes ``k1``
    for the same inputs, and ``fold_in(k2, 1)`` where ``k1 == k2`` for different ones; anything else
    is shared."""
    kwargs1, kwargs2 = {}, {}
    for k, v in kwargs.items():
        if k == "rng" and isinstance(v, tuple) and len(v) == 2 and x2 is not None:
            kwargs1[k], key2 = v
            key2 = jnp.where(jnp.array_equal(v[0], key2), jax.random.fold_in(key2, 1), key2)
            kwargs2[k] = jnp.where(_same_inputs(x1, x2), v[0], key2)
        elif isinstance(v, tuple) and len(v) == 2:
            kwargs1[k], kwargs2[k] = v
        elif k == "rng" and v is not None and x2 is not None:
            kwargs1[k] = v
            kwargs2[k] = jnp.where(_same_inputs(x1, x2), v, jax.random.fold_in(v, 1))
        else:
            kwargs1[k] = kwargs2[k] = v
    return kwargs1, kwargs2


def _same_inputs(x1, x2):
    """Whether the pytrees ``x1`` and ``x2`` are equal (a traced bool)."""
    l1, l2 = jax.tree.leaves(x1), jax.tree.leaves(x2)
    if jax.tree.structure(x1) != jax.tree.structure(x2) or any(a.shape != b.shape for a, b in zip(l1, l2)):
        return jnp.bool_(False)
    return jnp.all(jnp.array([jnp.array_equal(a, b) for a, b in zip(l1, l2)]))


def _check_private_rules(where, _j_rules, _s_rules, _fwd) -> "structured_ntk.Switches":
    """neural-tangents' private switches of structured derivatives, as `structured_ntk.Switches`."""
    for name, value in (("_j_rules", _j_rules), ("_s_rules", _s_rules)):
        if not isinstance(value, (bool, np.bool_)):
            raise argument_error(where, name, "True or False", value)
    if _fwd is not None and not isinstance(_fwd, (bool, np.bool_)):
        raise argument_error(where, "_fwd", "None (by FLOPs), True (forward mode) or False (reverse mode)", _fwd)
    return structured_ntk.Switches(bool(_j_rules), bool(_s_rules), None if _fwd is None else bool(_fwd))


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
      _j_rules, _s_rules, _fwd: neural-tangents' private switches of structured derivatives
        (implementations 0 and 3), which change how the same NTK is computed: ``_s_rules=False``
        takes weight matrices and convolution kernels by their Jacobians, ``_j_rules=False``
        takes biases and other broadcast parameters by theirs, ``_fwd`` computes the derivatives
        in forward (True) or reverse (False) mode, or whichever costs fewer FLOPs (None).
      batch_size: examples of ``x1`` and of ``x2`` per chunk (without ``vmap_axes``), which bounds
        memory to ``2 * batch_size * outputs * parameters``. ``None`` does all at once.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``; for an ``f`` whose
      output is a list of arrays (a network ending in branches), a list of results, one per
      branch, as neural-tangents returns them.
    """
    where = "empirical_kernel_fn"
    method = _parse_implementation(where, implementation)
    axes = _parse_vmap_axes(where, vmap_axes)
    switches = _check_private_rules(where, _j_rules, _s_rules, _fwd)
    trace_axes, diagonal_axes = tuple(trace_axes), tuple(diagonal_axes)
    if batch_size is not None:
        positive_int(where, "batch_size", batch_size)

    def side(x, kw):
        """``(x, kw)`` with one vmap axis (or None) per leaf, by ``vmap_axes``."""
        kw_axes = axes[2]
        return ((x, kw), (_leaf_axes(where, "in_axes", axes[0], x),
                          {k: _leaf_axes(where, f"kwargs_axes[{k!r}]", kw_axes.get(k), v) for k, v in kw.items()}))

    def per_example(fn, *sides):
        """``fn(*sides_i)`` for every example ``i`` under ``jax.vmap`` (stacked along a new axis 0),
        each ``sides_i`` keeping a batch axis of size 1 where ``vmap_axes`` puts the batch."""
        trees = [t for t, _ in sides]
        flat_axes = jax.tree.leaves([a for _, a in sides], is_leaf=lambda a: a is None)
        leaves, treedef = jax.tree.flatten(trees)

        def one(*ls):
            return fn(*jax.tree.unflatten(treedef, [a if ax is None else jnp.expand_dims(a, ax)
                                                    for a, ax in zip(ls, flat_axes)]))
        return jax.vmap(one, in_axes=tuple(flat_axes))(*leaves)

    def blocks(block, x1, kw1, x2, kw2, diagonal_batch, p, per_example_ok=True):
        """``block((xa, kwa), (xb, kwb))`` (the kernel of two batches) over all of ``x1 x x2``: per
        example (pair) under ``vmap`` (``p``: the position of the outputs' batch axis in the
        kernel; not with ``per_example_ok=False``), by chunks of ``batch_size`` along axis 0, or at once."""
        if axes is not None and per_example_ok:
            if diagonal_batch:  # (N, *K), K[p] = 1
                res = per_example(block, side(x1, kw1), side(x2, kw2))
                return jnp.moveaxis(jnp.squeeze(res, axis=1 + p), 0, p)
            res = per_example(lambda a: per_example(lambda b: block(a, b), side(x2, kw2)), side(x1, kw1))
            return jnp.moveaxis(jnp.squeeze(res, axis=(2 + p, 3 + p)), (0, 1), (p, p + 1))  # from (N1, N2, *K)
        n1, n2 = (jax.tree.leaves(x)[0].shape[0] for x in (x1, x2))
        if batch_size is None or max(n1, n2) <= batch_size:
            return block((x1, kw1), (x2, kw2))
        def part(k, v, n, s):
            """Keyword ``k``'s value for the chunk from ``s``: one key per chunk for ``rng`` (independent
            across chunks, the same for the same chunk of the same input); arrays (``pattern``) batch
            first, as neural-tangents' ``batch`` slices them; other values whole."""
            if v is None or not hasattr(v, "shape"):
                return v
            if k == "rng":
                return jax.random.fold_in(v, s)
            if v.ndim == 0 or v.shape[0] != n:
                raise argument_error("empirical kernel_fn", k, f"an array batch first (leading axis {n}, the "
                                     "examples of its input) when batch_size chunks the inputs", f"shape {v.shape}")
            return v[s:s + batch_size]

        def chunk(x, kw, s, n):
            return jax.tree.map(lambda a: a[s:s + batch_size], x), {k: part(k, v, n, s) for k, v in kw.items()}
        starts1, starts2 = range(0, n1, batch_size), range(0, n2, batch_size)
        if diagonal_batch:
            return jnp.concatenate([block(chunk(x1, kw1, s, n1), chunk(x2, kw2, s, n2)) for s in starts1], axis=p)
        return jnp.concatenate([jnp.concatenate([block(chunk(x1, kw1, s, n1), chunk(x2, kw2, t, n2))
                                                 for t in starts2], axis=p + 1) for s in starts1], axis=p)

    def one_output(g, out_axis, params, x1, x2, kw1, kw2, names) -> dict:
        """The kernels of one output array ``g(params, x, kw)``; ``out_axis`` its batch axis (vmapped)."""
        s1 = jax.eval_shape(lambda x: g(params, x, kw1), x1)
        s2 = jax.eval_shape(lambda x: g(params, x, kw2), x2)
        ndim = s1.ndim
        traced, diagonal = _output_axes("empirical kernel_fn", ndim, trace_axes, diagonal_axes)
        for a in traced + diagonal:
            if s1.shape[a] != s2.shape[a]:
                raise argument_error("empirical kernel_fn", "x2", f"outputs of size {s1.shape[a]} along axis {a} "
                                     "as x1's (trace_axes and diagonal_axes pair equal positions)", s2.shape)
        b = 0 if axes is None else out_axis % ndim
        if axes is not None and b in traced:
            raise argument_error(where, "vmap_axes", f"out_axes not in trace_axes={trace_axes}", vmap_axes)
        p = sum(1 if a in diagonal else 2 for a in range(b) if a not in traced)
        letters = _output_letters(ndim, traced, diagonal)
        n1, n2 = (s1.shape[b], s2.shape[b]) if axes is not None else (1, 1)
        counts = (n1, n2, n1 if b in diagonal else n1 * n2)

        def h(xk):
            x, kw = xk
            return lambda p_, x_: g(p_, x_, kw), x

        out = {}
        if "nngp" in names:  # from whole batches, vmap_axes or not, as in neural-tangents: the same
            # outputs either way, except where a stochastic layer (Dropout) draws its masks per call
            out["nngp"] = blocks(lambda a, c: _pair(g(params, *a)[..., None], g(params, *c)[..., None], letters),
                                 x1, kw1, x2, kw2, b in diagonal, p, per_example_ok=False)
        if "ntk" in names:
            out["ntk"] = blocks(lambda a, c: _ntk_block(method, *h(a), *h(c), params, letters, counts, switches),
                                x1, kw1, x2, kw2, b in diagonal, p)
        return out

    def values(params, x1, x2, names, kwargs):
        """A list of name -> array dicts, one per leaf of ``f``'s output (one array, or a pytree of
        them: a network ending in branches); each leaf's NTK from its Jacobian in all parameters
        (zero in those of other branches)."""
        same = all_none(x2)
        kw1, kw2 = split_kwargs(kwargs, x1, None if same else x2)
        x2, kw2 = (x1, kw1) if same else (x2, kw2)
        shapes = jax.eval_shape(lambda x: f(params, x, **kw1), x1)
        count = len(jax.tree.leaves(shapes))
        out_axes = [None] * count if axes is None else _leaf_axes(where, "out_axes", axes[1], shapes)

        def branch(i):
            return one_output(lambda p, x, kw: jax.tree.leaves(f(p, x, **kw))[i], out_axes[i], params,
                              x1, x2, kw1, kw2, names)
        return [branch(i) for i in range(count)]

    def structure(params, x1, kwargs):
        """The pytree structure of ``f``'s output (a single array: a leaf)."""
        kw1, _ = split_kwargs(kwargs, x1, None)
        return jax.tree.structure(jax.eval_shape(lambda p, x: f(p, x, **kw1), params, x1))

    compiled = jax.jit(lambda params, x1, x2, names: values(params, x1, x2, names, {}), static_argnames="names")

    def kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs):
        where = "empirical kernel_fn"
        if params is None:
            raise argument_error(where, "params", "the finite network's parameters", None)
        request = parse_get(get, NAMES, where)
        kw1, kw2 = split_kwargs(apply_fn_kwargs, x1, None if all_none(x2) else x2)
        _check_params_fit(where, f, params, x1, kw1, None if all_none(x2) else x2, kw2)
        if apply_fn_kwargs:  # may hold non-array options: trace them as Python values
            out = values(params, x1, x2, request.names, apply_fn_kwargs)
        else:  # eager Jacobians of a width-16 net took 14-30 s; compiled, well under one
            out = compiled(params, x1, None if all_none(x2) else x2, request.names)
        return _pack(request, out, structure(params, x1, apply_fn_kwargs))

    kernel_fn.values = values
    kernel_fn.structure = structure
    return kernel_fn


def _pair(a, b, letters):
    """``sum_p a[U1, p] b[U2, p]`` arranged by ``letters`` (`_output_letters`), averaged over the
    traced axes. a: (*Y1, P), b: (*Y2, P)."""
    u1, u2, out = letters
    return jnp.einsum(f"{u1}p,{u2}p->{out}", a, b) / _traced_size(a.shape, letters)


def _traced_size(shape, letters):
    u1, _, out = letters
    return math.prod(n for c, n in zip(u1, shape) if c not in out)


def _ntk_block(method, ha, xa, hb, xb, params, letters, counts, switches):
    """The NTK of ``ha(params, xa)`` and ``hb(params, xb)`` (one network on two batches, each with
    its keyword arguments) by implementation ``method`` (0-3); ``switches``: structured derivatives'
    `structured_ntk.Switches`."""
    if method in (0, 3):
        leaves, tree = jax.tree.flatten(params)

        def flat(h):
            return lambda ls, x: h(jax.tree.unflatten(tree, ls), x)

        closed_a, closed_b = structured_ntk.trace(flat(ha), leaves, xa), structured_ntk.trace(flat(hb), leaves, xb)
        rules_a, rules_b = structured_ntk.agreed_rules(closed_a, closed_b, len(leaves), switches)
        if method == 0:
            flops = structured_ntk.estimated_flops(closed_a, closed_b, rules_a, rules_b, letters, counts)
            method = min(flops, key=lambda m: (flops[m], m))
        if method == 3:
            side_a = structured_ntk.factors(closed_a, leaves, xa, rules_a, switches.fwd)
            side_b = structured_ntk.factors(closed_b, leaves, xb, rules_b, switches.fwd)
            shape_a = closed_a.jaxpr.outvars[0].aval.shape
            return structured_ntk.contract(side_a, side_b, letters, counts, _traced_size(shape_a, letters))
    if method == 2:
        return _ntk_vector_products_block(ha, xa, hb, xb, params, letters)

    def jacobian(h, x):
        j = jax.jacrev(lambda p: h(p, x))(params)
        return [structured_ntk.flat_after(leaf, len(letters[0])) for leaf in jax.tree.leaves(j)]
    return sum(_pair(a, b, letters) for a, b in zip(jacobian(ha, xa), jacobian(hb, xb)))


def _ntk_vector_products_block(ha, xa, hb, xb, params, letters):
    """``Theta v = J(xa) (J(xb)^T v)`` for every basis vector ``v`` of ``hb(xb)``'s outputs (Novak et
    al. 2022, §3.2): a VJP at ``xb`` (once) and a JVP at ``xa`` per vector, then the traced and
    diagonal axes taken from the full block."""
    fb, vjp = jax.vjp(lambda p: hb(p, xb), params)
    shape_a = jax.eval_shape(lambda p: ha(p, xa), params).shape

    def column(v):
        tangent, = vjp(v.reshape(fb.shape))
        return jax.jvp(lambda p: ha(p, xa), (params,), (tangent,))[1]

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
    ``f(params, x2)``, the result that of ``f(params, x1)``; no axes are traced. ``apply_fn_kwargs``
    are split between ``x1`` and ``x2`` as `split_kwargs` says (a pair, or ``rng``: the same key for
    the same inputs, another for different ones), as in `empirical_ntk_fn` and neural-tangents.
    """
    kw1, kw2 = split_kwargs(apply_fn_kwargs, x1, x2)
    x2 = x1 if x2 is None else x2

    def ntk_vp_fn(cotangents):
        _, vjp = jax.vjp(lambda p: f(p, x2, **kw2), params)
        tangents, = vjp(cotangents)
        return jax.jvp(lambda p: f(p, x1, **kw1), (params,), (tangents,))[1]

    return ntk_vp_fn


def _pack(request, flat: list, structure):
    """What ``get`` asks for (`kernels.checks.Get.pack`) of each output leaf's kernels ``flat``,
    arranged as ``f``'s output was (``structure``): a single array's as it is, otherwise lists for
    its lists and tuples (as neural-tangents returns one kernel per branch), dicts for its dicts."""
    packed = [request.pack(d) for d in flat]
    if structure.num_nodes == 1 and structure.num_leaves == 1:
        return packed[0]

    def rebuild(t):
        if isinstance(t, int):
            return packed[t]
        if isinstance(t, (list, tuple)):
            return [rebuild(c) for c in t]
        if isinstance(t, dict):
            return {k: rebuild(v) for k, v in t.items()}
        return t  # None: an empty branch
    return rebuild(jax.tree.unflatten(structure, list(range(len(packed)))))


def _check_params_fit(where, f, params, x1, kw1, x2, kw2) -> None:
    """Refuses, naming ``params``, parameters that ``f`` cannot be applied with (another network's)."""
    for label, x, kwargs in (("x1", x1, kw1), ("x2", x2, kw2)):
        if x is None:
            continue
        try:
            jax.eval_shape(lambda p, z: f(p, z, **kwargs), params, x)
        except Exception as error:  # any failure of the user's function on these shapes
            shapes = jax.tree.map(lambda a: getattr(a, "shape", type(a).__name__), params)
            raise argument_error(where, "params", f"parameters of this network for inputs {label} of shape "
                                 f"{jax.tree.map(jnp.shape, x)}",
                                 f"parameters shaped {shapes}, on which apply_fn fails: "
                                 f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error


def monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples: Union[int, Iterable[int]], batch_size: int = 0,
                          device_count: int = -1, store_on_device: bool = True, trace_axes=(-1,),
                          diagonal_axes=(), vmap_axes=None, implementation=None):
    """Monte Carlo estimate of the NNGP/NTK: empirical kernels averaged over random inits.

    Args:
      init_fn, apply_fn: the finite network.
      key: PRNG key, used as neural-tangents 0.6.5 uses it, so that the same key draws the same networks:
        sample ``i`` (from 1) takes ``s_i`` of ``k_i, s_i = jax.random.split(k_{i-1})``, ``k_0 = key``, and
        ``init_key, rng = jax.random.split(s_i)``; its weights come from ``init_key`` and its stochastic
        layers (Dropout) get ``rng`` (split between ``x1`` and ``x2`` as `split_kwargs` says).
      n_samples: an int, or an increasing iterable of ints (then ``kernel_fn``
        returns a generator of running averages at those counts).
      batch_size: if positive, examples per chunk of the Jacobian contraction.
      device_count, store_on_device: samples run on the default device and results are
        device arrays; ``device_count`` is checked as `kernels.batch` checks it, and
        ``store_on_device=False`` returns NumPy arrays.
      trace_axes, diagonal_axes, vmap_axes, implementation: as in `empirical_kernel_fn`.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)``; a list of results, one per branch,
      for a network ending in branches.
    """
    where = "monte_carlo_kernel_fn"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise argument_error(where, "batch_size", "a non-negative int (0: no chunking)", batch_size)
    check_device_count(where, device_count)
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
    def sample(sample_key, x1, x2, names, kwargs):
        init_key, rng = jax.random.split(sample_key)
        _, params = init_fn(init_key, jax.tree.map(jnp.shape, x1))
        return empirical.values(params, x1, x2, names, dict(kwargs, rng=rng))

    def running(x1, x2, request, kwargs, structure):
        total, done, chain = None, 0, key
        for n in counts:
            for _ in range(done, n):
                chain, sample_key = jax.random.split(chain)
                part = sample(sample_key, x1, x2, request.names, kwargs)
                total = part if total is None else jax.tree.map(jnp.add, total, part)
            done = n
            mean = jax.tree.map(lambda a: a / n, total)
            yield _pack(request, mean if store_on_device else jax.tree.map(np.asarray, mean), structure)

    def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
        if "rng" in apply_fn_kwargs:
            raise argument_error("monte_carlo kernel_fn", "rng", "not given (each sample draws its own from `key`)",
                                 "an rng")
        x2 = None if all_none(x2) else x2
        _, params = jax.eval_shape(lambda k: init_fn(k, jax.tree.map(jnp.shape, x1)), key)
        structure = empirical.structure(params, x1, dict(apply_fn_kwargs, rng=key))
        gen = running(x1, x2, parse_get(get, NAMES, "monte_carlo kernel_fn"), apply_fn_kwargs, structure)
        if isinstance(n_samples, int):
            return next(gen)
        return gen

    return kernel_fn
