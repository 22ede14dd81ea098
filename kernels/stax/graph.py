"""Linear maps of positions by constants: `DotGeneral` and the graph layer `Aggregate`.

Both layers map each example's positions linearly, ``Y[n, o, c] = sum_p M_n[o, p] X[n, p, c]``,
the same map for every channel ``c`` and no weights of their own (``M_n`` is a constant for
`DotGeneral`, the graph of example ``n`` for `Aggregate`). Channels stay independent, so the
channel-averaged covariances map as

    ``K'[n1, n2] = M_{n1} K[n1, n2] M_{n2}^T``  (positions ``o, o'``; Du et al. 2019, "Graph
    Neural Tangent Kernel", eq. 4 for the aggregation),

and the NTK the same way (no parameters are added). A Gaussian field stays Gaussian and the
channel means map by ``M_n``. `linear_kernel` computes this with the layer's own position map
applied twice, treating the other side's examples and positions as channels, so the kernel
and the finite network share one definition of ``M``.

Masked inputs (``mask_constant``, `kernels.stax.masking`), as neural-tangents 0.6.5: both layers
see zeros at masked positions, so a masked position contributes nothing to any output. `DotGeneral`
masks an output that reads no unmasked input with a nonzero weight (`unreached`); `Aggregate`
keeps its vertices' mask (a padded vertex stays padded whatever the graph's edges to it), its
outputs zero there.

Layouts other than batch first, channels last (``batch_axis``, ``channel_axis``) are the canonical
layer between transpositions (`kernels.stax.layout.with_layout`), the axes its arguments name
(``dimension_numbers``, ``aggregate_axis``) translated from the inputs' layout to the canonical one;
masked inputs in those layouts go through as `with_layout` takes them.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.checks import argument_error
from kernels.kernel import HIGHEST, Kernel
from kernels.stax import masking
from kernels.stax.extra import AggregateImplementation
from kernels.stax.layer import describe, keep_requirement, leaf, needs_pairs, spatial_description
from kernels.stax.layout import Layout, axes_perm, check_axis_argument, with_layout

__all__ = ["Aggregate", "DotGeneral", "linear_kernel"]

# A position map: (N, *S, R) -> (N, *O, R), linear in the positions, the same for each of the R columns.
PositionMap = Callable[[jax.Array], jax.Array]


def linear_kernel(k: Kernel, map1: PositionMap, map2: PositionMap) -> Kernel:
    """``k`` through a linear map of positions: ``M_1 K M_2^T`` (module docstring).

    ``map1`` maps the first batch's examples, ``map2`` the second's (``map1`` again for
    ``cov2`` when ``x2`` is ``None``). ``k`` keeps position pairs or has no positions;
    the result keeps position pairs if it has positions.
    """
    d = k.spatial_ndim

    def pair(a, left, right):  # (N1, N2, *S, *S') -> (N1, N2, *O, *O')
        n1, n2 = a.shape[:2]
        spatial = a.shape[2:2 + d]
        z = jnp.moveaxis(a, 1, 1 + d).reshape((n1,) + spatial + (-1,))
        z = left(z)  # (N1, *O, N2 * P)
        e = z.ndim - 2
        out_spatial = z.shape[1:1 + e]
        z = z.reshape((n1,) + out_spatial + (n2,) + spatial)
        z = jnp.transpose(z, (e + 1,) + tuple(range(e + 2, e + 2 + d)) + (0,) + tuple(range(1, e + 1)))
        z = right(z.reshape((n2,) + spatial + (-1,)))  # (N2, *O', N1 * Q)
        z = z.reshape((n2,) + out_spatial + (n1,) + out_spatial)
        return jnp.transpose(z, (e + 1, 0) + tuple(range(e + 2, 2 * e + 2)) + tuple(range(1, e + 1)))

    def self_cov(c, m):  # (N, *S, *S') -> (N, *O, *O'), one example's map on both sides
        n = c.shape[0]
        spatial = c.shape[1:1 + d]
        z = m(c.reshape((n,) + spatial + (-1,)))  # (N, *O, P)
        e = z.ndim - 2
        out_spatial = z.shape[1:1 + e]
        z = z.reshape((n,) + out_spatial + spatial)
        z = jnp.transpose(z, (0,) + tuple(range(e + 1, e + 1 + d)) + tuple(range(1, e + 1)))
        z = m(z.reshape((n,) + spatial + (-1,)))  # (N, *O', Q)
        z = z.reshape((n,) + out_spatial + out_spatial)
        return jnp.transpose(z, (0,) + tuple(range(e + 1, 2 * e + 1)) + tuple(range(1, e + 1)))

    def mean(m, f):
        return None if m is None else f(m[..., None])[..., 0]

    out = k.replace(nngp=pair(k.nngp, map1, map2), ntk=pair(k.ntk, map1, map2), cov1=self_cov(k.cov1, map1),
                    cov2=None if k.cov2 is None else self_cov(k.cov2, map2),
                    mean1=mean(k.mean1, map1), mean2=mean(k.mean2, map2))
    return out.replace(full=out.nngp.ndim > 2)


def unreached(reach: PositionMap) -> Callable:
    """``mask_fn`` of a linear map of positions: an output is masked when no unmasked input reaches
    it, ``reach`` being the map with every nonzero weight set to one. neural-tangents 0.6.5's
    `DotGeneral` rule ``~dot_general(~mask, constant != 0)`` (a boolean product: any unmasked input
    read with a nonzero weight); e.g. a constant's row of zeros gives an always masked output, a zero
    scalar masks everything.

    Masks are per position here and per entry there; the rule commutes with collapsing channels
    (a position masked when all its channels are), because every channel is mapped alike.
    """
    def mask_fn(mask):
        counts = reach((~mask)[..., None].astype(jnp.float32))  # exact small integers
        return counts[..., 0] < 0.5
    return mask_fn


# ----------------------------------------------------------------------------- DotGeneral

def _dimension_numbers(name: str, dimension_numbers) -> tuple:
    """``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`` as tuples of ints, else an error."""
    try:
        (lc, rc), (lb, rb) = dimension_numbers
        out = tuple(tuple(tuple(int(i) for i in axes) for axes in pair) for pair in ((lc, rc), (lb, rb)))
        bad = any(isinstance(i, bool) or int(i) != i for pair in dimension_numbers for axes in pair for i in axes)
    except (TypeError, ValueError):
        bad = True
    if bad or len(out[0][0]) != len(out[0][1]) or len(out[1][0]) != len(out[1][1]):
        raise argument_error(name, "dimension_numbers", "((lhs_contracting, rhs_contracting), (lhs_batch, "
                             "rhs_batch)), tuples of ints of equal lengths in each pair", dimension_numbers, TypeError)
    return out


def DotGeneral(*, lhs=None, rhs=None, dimension_numbers=(((), ()), ((), ())), precision=None, batch_axis: int = 0,
               channel_axis: int = -1):
    """``lax.dot_general`` of the inputs with a constant (neural-tangents' ``DotGeneral``).

    ``apply_fn`` is ``lax.dot_general(inputs, rhs, dimension_numbers, precision)`` when ``rhs`` is
    given, ``lax.dot_general(lhs, inputs, ...)`` when ``lhs`` is (neither: the identity), with
    the inputs' batch and channel axes moved back to ``batch_axis`` and ``channel_axis`` where the
    constant's free axes displace them (neural-tangents returns ``lax.dot_general``'s own order there,
    in which the next layer would read another axis as the channels; its docstring shows the
    order returned here). The remaining axes, in ``lax.dot_general``'s order, are the outputs'
    positions.

    Layouts (neural-tangents' meaning): ``dimension_numbers`` name axes of the inputs as they are
    given, in the layout ``batch_axis``/``channel_axis`` declare, and the outputs keep the batch
    axis at ``batch_axis`` and the channel axis at ``channel_axis`` of the outputs' rank (a negative
    one counted from the end), so the next layer declares the same layout. Where lax's order puts
    them there this is neural-tangents' output; a declared axis that the outputs' rank does not
    have is refused by name (count it from the other end).

    Kernel: a linear map of positions by a constant (`linear_kernel`): ``K' = M K M^T``, the NTK
    alike. Contracting the channel axis is refused (it is infinitely wide), so is the batch
    axis in ``dimension_numbers`` (a per-example constant: the kernel's examples would not be
    independent of the tiling).

    Masked inputs (``mask_constant``): they enter as zeros, and an output is masked when it reads
    no unmasked input with a nonzero weight of the constant (`unreached`, neural-tangents 0.6.5's
    rule: a zero scalar masks every output).

    Args:
      lhs: a constant (array or number) on the left of the inputs, or ``None``.
      rhs: a constant on the right of the inputs, or ``None``; at most one of the two.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`` as in
        ``lax.dot_general``, axes of the inputs counted with the batch and channel axes, in the
        inputs' layout.
      precision: ``lax.dot_general``'s precision for ``apply_fn``; ``kernel_fn`` is computed at
        ``HIGHEST`` (the package's rule for kernels).
      batch_axis, channel_axis: the inputs' batch and channel axes, and the outputs'.
    """
    name = describe("DotGeneral", lhs=None if lhs is None else np.shape(lhs),
                    rhs=None if rhs is None else np.shape(rhs), dimension_numbers=dimension_numbers)
    batch_axis = check_axis_argument(name, "batch_axis", batch_axis)
    channel_axis = check_axis_argument(name, "channel_axis", channel_axis)
    if lhs is not None and rhs is not None:
        raise ValueError(f"{name}: at most one of the constants `lhs` and `rhs` can be given (the other factor "
                         "is the layer's inputs); received both")
    numbers = _dimension_numbers(name, dimension_numbers)
    is_lhs = rhs is None
    constant = lhs if is_lhs else rhs
    if constant is not None:
        constant = np.asarray(constant) if not isinstance(constant, jax.Array) else constant
        if not (jnp.issubdtype(constant.dtype, jnp.number) or constant.dtype == bool):
            raise argument_error(name, "lhs" if is_lhs else "rhs", "a numeric array or number",
                                 f"dtype {constant.dtype}", TypeError)
    (lc, rc), (lb, rb) = numbers
    input_contract = rc if is_lhs else lc
    # Axes the constant adds (its free axes) and the inputs lose (their contracted ones).
    added = 0 if constant is None else np.ndim(constant) - len(lc + lb if is_lhs else rc + rb)

    def canonical(perm):
        """The layer on canonical inputs; ``perm``: the inputs' layout (``None``: canonical)."""
        if perm is None or constant is None:
            return _canonical_dot_general(name, constant, is_lhs, numbers, precision, dimension_numbers)
        _check_dimension_axes(name, dimension_numbers, numbers, is_lhs, len(perm), perm[0], perm[-1])
        translate = lambda axes: tuple(perm.index(a % len(perm)) for a in axes)  # layout axis -> canonical
        if is_lhs:
            moved = ((lc, translate(rc)), (lb, translate(rb)))
        else:
            moved = ((translate(lc), rc), (translate(lb), rb))
        return _canonical_dot_general(name, constant, is_lhs, moved, precision, dimension_numbers)

    def outputs(perm):
        rank = len(perm) - len(input_contract) + added
        return _declared_layout(name, rank, batch_axis, channel_axis)

    return with_layout(Layout(batch_axis, channel_axis, outputs), canonical)


def _declared_layout(name: str, rank: int, batch_axis: int, channel_axis: int) -> tuple:
    """The layout of rank ``rank`` with the declared batch and channel axes, refused by name if it has none."""
    for argument, value in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
        if not -rank <= value < rank:
            raise ValueError(f"{name}: argument `{argument}` is {value}, but its outputs have rank {rank}, no axis "
                             f"{value}; the outputs keep the batch and channel axes where the arguments say (count "
                             "the axis from the other end, or transpose the inputs)")
    if batch_axis % rank == channel_axis % rank:
        raise ValueError(f"{name}: arguments `batch_axis` {batch_axis} and `channel_axis` {channel_axis} are one "
                         f"axis ({batch_axis % rank}) of its rank-{rank} outputs; give them distinct axes")
    return axes_perm(name, rank, batch_axis, channel_axis)


def _check_dimension_axes(name: str, shown, numbers: tuple, is_lhs: bool, ndim: int, batch: int, channel: int) -> None:
    """Refuses ``dimension_numbers`` that name an axis the inputs (rank ``ndim``) lack, their batch axis or
    their channel axis (``batch``, ``channel``: those axes, non-negative), naming the argument."""
    (lc, rc), (lb, rb) = numbers
    given = (rc + rb) if is_lhs else (lc + lb)
    if any(not -ndim <= a < ndim for a in given):
        raise argument_error(name, "dimension_numbers", f"axes of the inputs within their rank {ndim}", shown)
    axes = [a % ndim for a in given]
    if channel in axes:
        raise ValueError(f"{name}: argument `dimension_numbers` contracts or batches the channel axis "
                         f"({channel}), which is infinitely wide in kernel_fn; received {shown}")
    if batch in axes:
        raise NotImplementedError(f"{name}: argument `dimension_numbers` names the batch axis {batch} (a constant "
                                  f"per example, or a sum over examples); received {shown}. "
                                  "Multiply the inputs by that constant before the network instead")


def _canonical_dot_general(name: str, constant, is_lhs: bool, numbers: tuple, precision, shown):
    """`DotGeneral` on inputs batch first, channels last, ``numbers`` naming axes of those; ``shown``: the
    ``dimension_numbers`` the user gave, for messages."""

    def raw(x, factor, dot_precision):
        c = factor.astype(x.dtype)
        args = (c, x) if is_lhs else (x, c)
        return lax.dot_general(*args, numbers, precision=dot_precision)

    def position_map(x, dot_precision=precision, factor=constant):
        """``x`` ``(N, *S, C)`` -> ``(N, *O, C)``: `raw` by ``factor`` (the constant, or another of its
        shape), its batch and channel axes put back."""
        if constant is None:
            return x
        _check_dimension_axes(name, shown, numbers, is_lhs, x.ndim, 0, x.ndim - 1)
        y = raw(x, factor, dot_precision)
        batch_out, channel_out = _axis_after_dot(x.ndim, constant.ndim, numbers, is_lhs)
        return jnp.moveaxis(y, (batch_out, channel_out), (0, -1))

    def init_fn(rng, input_shape):
        try:
            out = jax.eval_shape(position_map, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
        except TypeError as error:
            raise argument_error(name, "dimension_numbers", f"axes that lax.dot_general accepts for inputs of "
                                 f"shape {tuple(input_shape)} (batch first, channels last)",
                                 f"{shown} ({error})") from None
        return out.shape, ()

    def apply_fn(params, x, **kwargs):
        return position_map(x)

    def rule(k: Kernel) -> Kernel:
        if constant is None:
            return k
        if not k.full and k.spatial_ndim > 0:  # only a scalar keeps equal positions apart (needs_full)
            c = jnp.asarray(constant, k.nngp.dtype)
            return k.replace(nngp=c * c * k.nngp, ntk=c * c * k.ntk, cov1=c * c * k.cov1,
                             cov2=None if k.cov2 is None else c * c * k.cov2).map_means(lambda m: c * m)
        _check_dimension_axes(name, shown, numbers, is_lhs, k.spatial_ndim + 2, 0, k.spatial_ndim + 1)
        m = lambda z: position_map(z, HIGHEST)
        try:
            jax.eval_shape(m, jax.ShapeDtypeStruct(k.nngp.shape[:1] + k.spatial_shape + (1,), k.nngp.dtype))
        except TypeError as error:
            raise argument_error(name, "dimension_numbers", f"axes that lax.dot_general accepts for inputs "
                                 f"{spatial_description(k)}", f"{shown} ({error})") from None
        return linear_kernel(k, m, m)

    scalar = constant is None or np.ndim(constant) == 0  # a scalar has no axes to contract
    nonzero = None if constant is None else constant != 0
    masks = masking.Masking(unreached(lambda z: position_map(z, HIGHEST, nonzero)))
    return leaf(name, init_fn, apply_fn, rule, keep_requirement if scalar else needs_pairs, masks=masks)


def _axis_after_dot(ndim: int, other_ndim: int, numbers: tuple, is_lhs: bool) -> tuple:
    """Where the inputs' batch axis (0) and channel axis (``ndim - 1``) land in ``lax.dot_general``'s
    output: its batch axes first, then the left operand's free axes, then the right's."""
    (lc, rc), (lb, rb) = numbers
    if is_lhs:
        other_c, other_b, in_c, in_b = lc, lb, rc, rb
    else:
        in_c, in_b, other_c, other_b = lc, lb, rc, rb
    in_c = [a % ndim for a in in_c]
    in_b = [a % ndim for a in in_b]
    other_free = other_ndim - len(other_c) - len(other_b)
    in_free = [a for a in range(ndim) if a not in in_c and a not in in_b]
    offset = len(in_b) + (other_free if is_lhs else 0)
    return tuple(offset + in_free.index(a) for a in (0, ndim - 1))


# ----------------------------------------------------------------------------- Aggregate

def dense_as_given(pattern):
    """``Aggregate``'s default ``to_dense``: the pattern is already the dense adjacency tensor."""
    return pattern


def Aggregate(aggregate_axis=None, batch_axis: int = 0, channel_axis: int = -1,
              to_dense: Optional[Callable] = dense_as_given,
              implementation: str = AggregateImplementation.DENSE.value):
    """Graph aggregation (neural-tangents' ``Aggregate``; Du et al. 2019, "Graph Neural Tangent Kernel").

    Each vertex (a position along ``aggregate_axis``) is replaced by the weighted sum of its
    predecessors, ``Y[n, j] = sum_i A_n[i, j] X[n, i]``, for every channel and every position
    along the other spatial axes; ``apply_fn(params, x, pattern=...)`` takes the graphs, one per
    example (``pattern=None``: the identity), and ``kernel_fn(x1, x2, get, pattern=(pattern1,
    pattern2))`` those of both batches.

    Kernel (`linear_kernel`): ``K'[n1, n2] = A_{n1}^T K[n1, n2] A_{n2}`` over the aggregated
    positions (Du et al. 2019, eq. 4), the NTK alike, ``cov1``/``cov2`` with each example's own
    graph on both sides; the layer needs position pairs.

    Masked inputs (``mask_constant``): a masked vertex (a padded node) sends zeros along its edges
    and stays masked, its outputs and covariances zero, whatever reaches it; so with pooling over
    the unmasked vertices a padded graph gives the kernel and outputs of the graph without its
    padding, for every ``implementation`` (neural-tangents 0.6.5's rule).

    Layouts (neural-tangents' meaning): ``aggregate_axis`` names axes of the inputs as they are
    given, in the layout ``batch_axis``/``channel_axis`` declare; the outputs keep that layout. The
    ``pattern``'s layout does not follow the inputs': its leading axis is the examples whatever
    ``batch_axis`` is, then (DENSE) the aggregated axes in increasing order of the inputs' axes, twice;
    SPARSE coordinates ``K`` likewise in increasing axis order. Only when the inputs are transposed to
    another order of those axes must the pattern's axes (or coordinates) be permuted with them.

    Args:
      aggregate_axis: the spatial axes of the vertices (an int or a tuple, axes of the inputs in
        their layout; taken in increasing order, as neural-tangents sorts them); ``None``: every
        axis but the batch and channel axes.
      batch_axis, channel_axis: the inputs' (and outputs') batch and channel axes.
      to_dense: ``DENSE`` only: maps the given ``pattern`` to the dense tensor
        ``(N, *G, *G)`` (``G`` the aggregated axes' sizes), called in every ``apply_fn`` and
        ``kernel_fn``; the default takes it as given.
      implementation: ``"DENSE"`` (``pattern[n, i..., j...]`` the weight of the edge from
        vertex ``i`` to ``j``) or ``"SPARSE"`` (integer ``pattern`` ``(N, n_edges, K, 2)`` of
        edges' tail and head coordinates, or ``(N, n_edges, 2)`` for ``K = 1`` axis, each edge of
        weight one; an edge with a negative head coordinate is padding and ignored; a negative
        tail coordinate reads the last vertex, and coordinates past the end wrap, as in
        neural-tangents); `AggregateImplementation` members work too.
    """
    name = describe("Aggregate", aggregate_axis=aggregate_axis, implementation=str(implementation))
    batch_axis = check_axis_argument(name, "batch_axis", batch_axis)
    channel_axis = check_axis_argument(name, "channel_axis", channel_axis)
    try:
        implementation = AggregateImplementation(implementation)
    except ValueError:
        raise argument_error(name, "implementation", f"one of {[m.value for m in AggregateImplementation]}",
                             implementation) from None
    if to_dense is None:
        to_dense = dense_as_given
    if not callable(to_dense):
        raise argument_error(name, "to_dense", "a function or None", to_dense, TypeError)
    if implementation == AggregateImplementation.SPARSE and to_dense is not dense_as_given:
        raise ValueError(f"{name}: argument `to_dense` applies to implementation='DENSE' only; with 'SPARSE' the "
                         "pattern is a list of edges. Remove to_dense or use DENSE")
    items = None
    if aggregate_axis is not None:
        items = aggregate_axis if isinstance(aggregate_axis, (tuple, list)) else (aggregate_axis,)
        if not items or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in items):
            raise argument_error(name, "aggregate_axis", "None, an int or a non-empty tuple of ints",
                                 aggregate_axis, TypeError)
        items = tuple(int(a) for a in items)

    def canonical(perm):
        """The layer on canonical inputs; ``perm``: the inputs' layout (``None``: canonical)."""
        if perm is None or items is None:  # None: every spatial axis, in the inputs' order in both layouts
            return _canonical_aggregate(name, items, aggregate_axis, implementation, to_dense)
        axes = _aggregated_axes(name, items, aggregate_axis, len(perm), perm[0], perm[-1])
        return _canonical_aggregate(name, tuple(perm.index(a) for a in axes), aggregate_axis, implementation,
                                    to_dense)

    return with_layout(Layout(batch_axis, channel_axis), canonical)


def _aggregated_axes(name: str, items: Optional[tuple], shown, ndim: int, batch: int, channel: int) -> tuple:
    """`Aggregate`'s axes of inputs of rank ``ndim`` whose batch and channel axes are ``batch`` and
    ``channel`` (non-negative): ``items`` (``None``: every other axis) sorted, as neural-tangents sorts
    them, and checked."""
    if items is None:
        axes = tuple(a for a in range(ndim) if a not in (batch, channel))
    else:
        if any(not -ndim <= a < ndim for a in items):
            raise argument_error(name, "aggregate_axis", f"axes of inputs of rank {ndim}", shown)
        axes = tuple(sorted(a % ndim for a in items))
    if len(set(axes)) != len(axes) or batch in axes or channel in axes:
        raise argument_error(name, "aggregate_axis", f"distinct axes of the rank-{ndim} inputs, not their batch "
                             f"axis {batch} or channel axis {channel}", shown)
    if not axes:
        raise ValueError(f"{name}: its inputs need spatial axes (the graph's vertices); got inputs of rank {ndim}")
    return axes


def _canonical_aggregate(name: str, items: Optional[tuple], shown, implementation, to_dense):
    """`Aggregate` on inputs batch first, channels last, aggregating their axes ``items``; ``shown``: the
    ``aggregate_axis`` the user gave, for messages."""

    def axes_of(ndim: int) -> tuple:
        return _aggregated_axes(name, items, shown, ndim, 0, ndim - 1)

    def vertex_map(pattern, shape: tuple) -> PositionMap:
        """The aggregation of inputs of ``shape`` (``(N, *S, R)``) by ``pattern``, checked, as a position map."""
        axes = axes_of(len(shape))
        n, grid = shape[0], tuple(shape[a] for a in axes)
        vertices = math.prod(grid)
        if implementation == AggregateImplementation.DENSE:
            adjacency = to_dense(pattern)
            want = (n,) + grid + grid
            if not hasattr(adjacency, "shape") or tuple(adjacency.shape) != want:
                got = getattr(adjacency, "shape", type(adjacency).__name__)
                raise argument_error(name, "pattern", f"the dense adjacency (N, *G, *G) = {want} for inputs of "
                                     f"shape {shape[:-1] + ('C',)} (after to_dense)", f"shape {got}")
            adjacency = jnp.asarray(adjacency).reshape(n, vertices, vertices)

            def combine(x, precision):  # x: (N, V, ...) -> sum_v A[n, v, w] x[n, v, ...]
                return jnp.einsum("nv...,nvw->nw...", x, adjacency.astype(x.dtype), precision=precision)
        else:
            tails, heads = _edges(name, pattern, n, len(axes))
            tails, heads = _vertex_index(tails, grid), _vertex_index(heads, grid)

            def combine(x, precision):
                def one(t, h, v):
                    return jax.ops.segment_sum(v[t], h, num_segments=vertices)
                return jax.vmap(one)(tails, heads, x)

        def position_map(x, precision=None):
            moved = jnp.moveaxis(x, axes, tuple(range(1, len(axes) + 1)))
            rest = moved.shape[1 + len(axes):]
            out = combine(moved.reshape((n, vertices) + rest), precision).reshape(moved.shape)
            return jnp.moveaxis(out, tuple(range(1, len(axes) + 1)), axes)
        return position_map

    def apply_fn(params, x, pattern=None, **kwargs):
        if pattern is None:
            return x
        return vertex_map(pattern, x.shape)(x)

    def rule(k: Kernel) -> Kernel:
        if k.pattern1 is None:
            return k
        # (N, *S, 1): Kernel.shape1 reads the public layout's interleaved position axes, not the rule's
        map1 = vertex_map(k.pattern1, k.nngp.shape[:1] + k.spatial_shape + (1,))
        map2 = map1 if k.pattern2 is None else vertex_map(k.pattern2, k.nngp.shape[1:2] + k.spatial_shape + (1,))
        return linear_kernel(k, lambda z: map1(z, HIGHEST), lambda z: map2(z, HIGHEST))

    return leaf(name, lambda rng, input_shape: (tuple(input_shape), ()), apply_fn, rule, needs_pairs,
                keywords=("pattern",), masks=AGGREGATE_MASKING)


# neural-tangents 0.6.5's Aggregate keeps the mask of its inputs (a padded vertex stays padded
# whatever edges reach it) and zeroes the kernel there (``remask_kernel=True``): masking.through.
AGGREGATE_MASKING = masking.POINTWISE


def _edges(name: str, pattern, n: int, k: int) -> tuple:
    """Tails and heads ``(N, n_edges, K)`` of a SPARSE ``pattern``, checked."""
    pattern = jnp.asarray(pattern) if not isinstance(pattern, jax.Array) else pattern
    want = f"an integer array (N, n_edges, {k}, 2)" + (" or (N, n_edges, 2)" if k == 1 else "") + f" with N = {n}"
    if not jnp.issubdtype(pattern.dtype, jnp.integer):
        raise argument_error(name, "pattern", want + " (implementation='SPARSE')", f"dtype {pattern.dtype}", TypeError)
    if k == 1 and pattern.ndim == 3:
        pattern = pattern[:, :, None, :]
    if pattern.ndim != 4 or pattern.shape[0] != n or pattern.shape[2] != k or pattern.shape[3] != 2:
        raise argument_error(name, "pattern", want + " (implementation='SPARSE')", f"shape {pattern.shape}")
    return pattern[..., 0], pattern[..., 1]


def _vertex_index(coordinates, grid: tuple):
    """``(N, E, K)`` coordinates -> ``(N, E)`` flat vertex indices; -1 where any coordinate is negative
    (a head of -1 is dropped by ``segment_sum``; a tail of -1 reads the last vertex), past the end wrapping."""
    flat = jnp.ravel_multi_index(tuple(jnp.moveaxis(coordinates, -1, 0)), grid, mode="wrap")
    return jnp.where(jnp.all(coordinates >= 0, axis=-1), flat, -1)
