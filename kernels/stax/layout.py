"""Layouts: neural-tangents' ``batch_axis``, ``channel_axis``, ``dimension_numbers`` and ``batch_axis_out``.

Every layer computes in widekit's canonical layout: batch first, channels last, the spatial axes
in between in the order the inputs have them, ``(N, *S, C)``. A layer given another layout is the
canonical layer between two transpositions (`with_layout`): inputs are transposed to the
canonical layout at its boundary and its outputs back to the layout it declares.

Its kernel needs no transposition. A kernel's arrays hold batch and position axes only, positions
in the order the inputs have them (neural-tangents orders them so too), and moving the batch axis
first and the channel axis last keeps that order. What a layout changes is the finite layer's
shape, which the kernel records (`kernels.kernel.Kernel.axes`: its batch and channel axes), so a
layer refuses a kernel whose channel axis is not the one it declares: its finite network would
take a spatial axis for the channels, and the infinite-width limit of that is another network's
(neural-tangents refuses it the same way). A convolution's ``out_spec`` may order the spatial axes
unlike its ``lhs_spec``; its kernel's position axes are permuted as its outputs' are.

Masked inputs (``mask_constant``, `kernels.stax.masking`): a position is masked when every entry along
the layout's channel axis is (neural-tangents 0.6.5 keeps a mask per entry, and each layer reduces it
over its own ``channel_axis``; `masked_inputs`). A kernel's masks ``(N, *S)`` order positions as its
arrays do, so they need no transposition either; a layer whose ``out_spec`` reorders the spatial axes
reorders them with its kernel's (`permute_positions`). Between the layers of ``apply_fn`` masked values
in a layout other than the canonical one carry their mask in the values' layout, of their rank with
size 1 on the channel axis (`layout_mask`), so that layers that know no layout (activations) broadcast
it; each layer takes it back to the canonical ``(N, *S)`` at its boundary.

A layout is a permutation ``perm`` of the axes: canonical axis ``j`` is axis ``perm[j]`` of the
layout, ``x_canonical = jnp.transpose(x, perm)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error
from kernels.kernel import Kernel
from kernels.stax import masking
from kernels.stax.layer import KernelFn, Layer


def check_axis_argument(where: str, argument: str, value, optional: bool = False):
    """``value`` as an int (an axis; its range is checked against the inputs' rank when they come)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise argument_error(where, argument, "an int axis" + (" or None" if optional else ""), value, TypeError)
    return int(value)


def _resolve(where: str, argument: str, value: int, ndim: int) -> int:
    if not -ndim <= value < ndim:
        raise argument_error(where, argument, f"an axis of the inputs, in [-{ndim}, {ndim})",
                             f"{value} for inputs of rank {ndim}")
    return value % ndim


def axes_perm(where: str, ndim: int, batch_axis: int, channel_axis: Optional[int]) -> tuple:
    """The layout whose batch and channel axes are these (``channel_axis=None``: the last other axis)."""
    b = _resolve(where, "batch_axis", batch_axis, ndim)
    if channel_axis is None:
        return (b,) + tuple(i for i in range(ndim) if i != b)
    c = _resolve(where, "channel_axis", channel_axis, ndim)
    if c == b:
        raise argument_error(where, "channel_axis", "an axis other than batch_axis",
                             f"channel_axis={channel_axis}, batch_axis={batch_axis} (both axis {b})")
    return (b,) + tuple(i for i in range(ndim) if i not in (b, c)) + (c,)


def is_canonical(perm: tuple) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


def inverse(perm: tuple) -> tuple:
    return tuple(int(i) for i in np.argsort(perm))


def to_canonical(x, perm: tuple):
    return x if is_canonical(perm) else jnp.transpose(x, perm)


def from_canonical(y, perm: tuple):
    return y if is_canonical(perm) else jnp.transpose(y, inverse(perm))


def canonical_shape(shape, perm: tuple) -> tuple:
    return tuple(shape) if is_canonical(perm) else tuple(shape[p] for p in perm)


def layout_shape(shape, perm: tuple) -> tuple:
    """``shape`` of canonical outputs in layout ``perm`` (a canonical ``perm`` of another rank: unchanged)."""
    return tuple(shape) if is_canonical(perm) else tuple(shape[i] for i in inverse(perm))


def kernel_axes(perm: tuple) -> Optional[tuple]:
    """`Kernel.axes` of outputs in layout ``perm`` (``None``: canonical)."""
    return None if is_canonical(perm) else (perm[0], perm[-1])


def same_axes(perm: tuple) -> tuple:
    """Outputs in the inputs' layout (layers that keep the rank)."""
    return perm


def pooled_axes(perm: tuple) -> tuple:
    """Global pooling: ``(N, C)`` or ``(C, N)``, batch and channels in the inputs' order (neural-tangents)."""
    return (0, 1) if perm[0] < perm[-1] else (1, 0)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a layer's inputs keep their batch and channel axes, and where its outputs do.

    Attributes:
      batch_axis: of the inputs, as the layer's argument gives it (negative counts from the end).
      channel_axis: likewise; ``None``: the layer has no channel axis of its own (``Flatten``), any
        axis but the batch axis may hold the channels.
      outputs: input perm -> output perm; `same_axes` for layers that keep the rank.
      rank: the inputs' rank where the layer fixes it (a convolution's ``lhs_spec``), else ``None``.
    """

    batch_axis: int = 0
    channel_axis: Optional[int] = -1
    outputs: Callable = same_axes
    rank: Optional[int] = None

    def inputs(self, where: str, ndim: int) -> tuple:
        if self.rank is not None and ndim != self.rank:
            raise ValueError(f"{where}: needs inputs with {self.rank - 2} spatial axes, of rank {self.rank} (as its "
                             f"dimension_numbers say); got inputs of rank {ndim}")
        return axes_perm(where, ndim, self.batch_axis, self.channel_axis)


DEFAULT = Layout()


def check_kernel_layout(where: str, layout: Layout, perm: tuple, k: Kernel) -> None:
    """Refuses a kernel whose finite layer keeps its batch or channel axis elsewhere than ``layout`` says."""
    ndim = len(perm)
    for argument, declared, expected, actual in (("batch_axis", layout.batch_axis, perm[0], k.batch_axis),
                                                 ("channel_axis", layout.channel_axis, perm[-1], k.channel_axis)):
        if declared is not None and actual != expected:
            raise ValueError(f"{where}: argument `{argument}` is {declared} (axis {expected} of its rank-{ndim} "
                             f"inputs), but the layer before it keeps that axis at {actual} (its outputs have "
                             f"shape {k.shape1}); the finite layer would treat another axis as {argument[:-5]}, "
                             "whose infinite-width limit is another network's: give the layers one layout")


def permute_positions(k: Kernel, order: tuple) -> Kernel:
    """``k`` with its spatial axes reordered: new spatial axis ``i`` is old axis ``order[i]``."""
    d = len(order)
    if is_canonical(order):
        return k

    def permute(a, batch_ndim):
        groups = [batch_ndim + i for i in order]
        if k.full:
            groups += [batch_ndim + d + i for i in order]
        return jnp.transpose(a, tuple(range(batch_ndim)) + tuple(groups))
    def per_position(m):  # means and masks: (N, *S), also when pairs are kept
        return None if m is None else jnp.transpose(m, (0,) + tuple(1 + i for i in order))
    out = k.map_arrays(permute).map_means(per_position)
    return out.replace(mask1=per_position(k.mask1), mask2=per_position(k.mask2))


def out_order(perm: tuple) -> tuple:
    """``order`` with layout ``perm``'s spatial axis ``i`` canonical spatial axis ``order[i]``."""
    return tuple(perm.index(p) - 1 for p in sorted(perm[1:-1]))


def relayout_kernel(k: Kernel, perm: tuple) -> Kernel:
    """A canonical output kernel ``k`` as that of outputs in layout ``perm``: its axes recorded, its
    position axes (and masks) in the layout's spatial order."""
    return permute_positions(k, out_order(perm)).replace(axes=kernel_axes(perm))


def layout_mask(mask, perm: tuple):
    """A canonical mask of positions ``(N, *S)`` as masked values in layout ``perm`` carry it between layers:
    of their rank, size 1 on the channel axis (neural-tangents' per-entry masks, reduced over channels),
    so that layers that know no layout (activations, `FanOut`, the final unmasking) broadcast it. In the
    canonical layout: ``mask`` itself."""
    return mask if is_canonical(perm) else from_canonical(mask[..., None], perm)


def canonical_mask(where: str, x: "masking.Masked", perm: tuple):
    """The mask of positions ``(N, *S)``, canonical, of masked values ``x`` in layout ``perm``: from one of
    their rank (`layout_mask`) a position is masked when its every entry along this layer's channel axis
    is, as neural-tangents 0.6.5's per-entry masks are reduced (``Flatten``, which takes any axis but the
    batch axis for the channels, reads them so too); in the canonical layout a mask of positions is one."""
    shape = canonical_shape(x.value.shape, perm)
    if x.mask.ndim == x.value.ndim:
        entries = to_canonical(jnp.broadcast_to(x.mask, x.value.shape), perm)
        return jnp.all(entries, axis=-1)
    if is_canonical(perm) and tuple(x.mask.shape) == shape[:-1]:
        return x.mask
    raise ValueError(f"{where}: apply_fn: masked inputs of shape {tuple(x.value.shape)} carry a mask of shape "
                     f"{tuple(x.mask.shape)}, which does not fit this layer's layout (batch axis {perm[0]}, channel "
                     f"axis {perm[-1]}): the layer before it keeps its batch or channel axis elsewhere; give the "
                     "layers one layout")


def masked_inputs(where: str, inputs, mask_constant, axes: tuple):
    """A network's inputs (an array or a list of them) in the layout whose ``(batch_axis,
    channel_axis)`` are ``axes``, as `masking.Masked` values: entries equal to ``mask_constant`` zeroed,
    in the inputs' layout, and masked positions those whose every entry along the channel axis is, the
    mask in `layout_mask`'s form (neural-tangents 0.6.5 reduces its per-entry mask over the first
    layer's ``channel_axis``; `kernels.stax.masking.input_mask` for channels last)."""
    if isinstance(inputs, (list, tuple)) and not isinstance(inputs, masking.Masked):
        return type(inputs)(masked_inputs(where, x, mask_constant, axes) for x in inputs)
    x = jnp.asarray(inputs)
    perm = axes_perm(where, x.ndim, *axes)
    value, mask = masking.input_mask(to_canonical(x, perm), mask_constant)
    return masking.Masked(from_canonical(value, perm), layout_mask(mask, perm))


def with_layout(layout: Layout, make: Callable[[Optional[tuple]], Layer]) -> Layer:
    """The layer ``make`` builds, taking and giving arrays in ``layout``.

    ``make(perm)`` returns the canonical layer for inputs in layout ``perm`` (``None``: canonical
    inputs; a layer whose arguments name axes, such as ``LayerNorm(axis)``, translates them by
    ``perm``). Masked inputs (``mask_constant``) keep their position masks (module docstring).
    """
    base = Layer(*make(None))
    name = base.kernel_fn.name
    built = {}  # one canonical layer per input layout: block-by-block evaluation names a leaf by its rule

    def inner(perm) -> Layer:
        if is_canonical(perm):
            return base
        if perm not in built:
            built[perm] = Layer(*make(perm))
        return built[perm]

    def init_fn(rng, input_shape):
        perm = layout.inputs(name, len(input_shape))
        out_shape, params = inner(perm).init_fn(rng, canonical_shape(tuple(input_shape), perm))
        return layout_shape(tuple(out_shape), layout.outputs(perm)), params

    def apply_fn(params, x, **kwargs):
        value = x.value if isinstance(x, masking.Masked) else x
        perm = layout.inputs(name, value.ndim)
        layer, out_perm = inner(perm), layout.outputs(perm)
        if isinstance(x, masking.Masked):
            # Zero the masked entries first: a mask carried in the values' rank marks entries, and a layer
            # that reads another axis as the channels (Flatten reads the last) keeps positions some of
            # whose entries are masked; neural-tangents zeroes a layer's masked input entries so too.
            value = masking.zero_at(x.value, x.mask) if x.mask.ndim == x.value.ndim else x.value
            x = masking.Masked(to_canonical(value, perm), canonical_mask(name, x, perm))
        else:  # a plain array, masked (mask_constant) by the canonical layer along the right channel axis
            x = to_canonical(x, perm)
        out = layer.apply_fn(params, x, **kwargs)
        if is_canonical(out_perm):
            return out
        if isinstance(out, masking.Masked):
            return masking.Masked(from_canonical(out.value, out_perm), layout_mask(out.mask, out_perm))
        return from_canonical(out, out_perm)

    def rule(k):
        if not isinstance(k, Kernel):
            return base.kernel_fn.rule(k)  # the canonical layer's own error for branches
        perm = layout.inputs(name, k.spatial_ndim + 2)
        check_kernel_layout(name, layout, perm, k)
        layer, out_perm = inner(perm), layout.outputs(perm)
        if k.axes is None and is_canonical(perm) and is_canonical(out_perm):
            return layer.kernel_fn.rule(k)
        return relayout_kernel(layer.kernel_fn.rule(k.replace(axes=None)), out_perm)

    return Layer(init_fn, apply_fn, KernelFn(name, rule, base.kernel_fn.needs_full, base.kernel_fn.requires,
                                             base.kernel_fn.keywords, input_axes=(layout.batch_axis,
                                                                                  layout.channel_axis),
                                             whole_batch=base.kernel_fn.whole_batch))


# ----------------------------------------------------------------------------- convolutions

# Spatial letters of the default dimension numbers: the alphabet without N, C, I, O (as jax.lax's).
SPATIAL_LETTERS = "ABDEFGHJKLMPQRSTUVWXYZ"


class ConvSpecs:
    """A convolution's ``dimension_numbers`` ``(lhs_spec, rhs_spec, out_spec)``, as `jax.lax` reads them.

    ``filter_shape`` and ``strides`` come in the order of the filter's (``rhs_spec``'s) spatial
    letters, as in `jax.lax`; the canonical layer works in the inputs' (``lhs_spec``'s) spatial order,
    on inputs ``(N, *S, C)`` and filters ``(*F, I, O)``; outputs follow ``out_spec``. Weights are drawn
    in ``rhs_spec``'s shape (``OIHW``, ...), as neural-tangents draws them.

    Attributes:
      specs: the three strings.
      layout: the `Layout` of inputs (``lhs_spec``) and outputs (``out_spec``).
      canonical: the specs of the canonical layer, ``("N...C", rhs_spec, "N...C")``.
      weight_perm: ``rhs_spec``'s weights -> canonical ``(*F, I, O)`` (inputs' spatial order).
    """

    def __init__(self, name: str, d: int, dimension_numbers):
        given = dimension_numbers is not None
        if not given:
            if d > len(SPATIAL_LETTERS):  # jax.lax names each spatial axis by a letter
                raise argument_error(name, "filter_shape", f"at most {len(SPATIAL_LETTERS)} spatial axes", d)
            letters = SPATIAL_LETTERS[:d]
            dimension_numbers = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
        self.specs = check_dimension_numbers(name, d, dimension_numbers)
        lhs, rhs, out = self.specs
        self.lhs_letters = [c for c in lhs if c not in "NC"]
        self.rhs_letters = [c for c in rhs if c not in "IO"]
        out_perm = (out.index("N"),) + tuple(out.index(c) for c in self.lhs_letters) + (out.index("C"),)
        self.layout = Layout(lhs.index("N"), lhs.index("C"), lambda perm: out_perm, d + 2) if given else DEFAULT
        canonical = "N" + "".join(self.lhs_letters) + "C"
        self.canonical = (canonical, rhs, canonical)
        self.weight_perm = tuple(rhs.index(c) for c in self.lhs_letters) + (rhs.index("I"), rhs.index("O"))

    def in_lhs_order(self, sizes) -> tuple:
        """Per-axis sizes given in the filter's letter order, in the inputs' spatial order."""
        return tuple(sizes[self.rhs_letters.index(c)] for c in self.lhs_letters)

    def weight_shape(self, filter_shape, fan_in: int, out: int) -> tuple:
        """``rhs_spec``'s shape of weights (``filter_shape`` in the filter's letter order)."""
        return tuple(out if c == "O" else fan_in if c == "I" else filter_shape[self.rhs_letters.index(c)]
                     for c in self.specs[1])


def check_dimension_numbers(name, d, dimension_numbers) -> tuple:
    """``(lhs_spec, rhs_spec, out_spec)`` checked as `jax.lax` (and neural-tangents) accept them: strings of
    length ``d + 2``, N and C once in ``lhs_spec`` and ``out_spec``, I and O once in ``rhs_spec``, the
    same spatial letters in all three."""
    expected = (f"None or a tuple of three strings (lhs_spec, rhs_spec, out_spec) of length {d + 2} "
                "as jax.lax.conv_general_dilated reads them")
    if not isinstance(dimension_numbers, (tuple, list)) or len(dimension_numbers) != 3 \
            or not all(isinstance(s, str) and len(s) == d + 2 for s in dimension_numbers):
        raise argument_error(name, "dimension_numbers", expected, dimension_numbers, TypeError)
    lhs, rhs, out = dimension_numbers
    spatial_letters = set(lhs) - set("NC")
    well_formed = (all(len(set(s)) == len(s) for s in dimension_numbers)
                   and {"N", "C"} <= set(lhs) and {"N", "C"} <= set(out) and {"I", "O"} <= set(rhs)
                   and spatial_letters == set(out) - set("NC") == set(rhs) - set("IO")
                   and not spatial_letters & set("NCIO"))
    if not well_formed:
        raise argument_error(name, "dimension_numbers", expected + " (N and C once in lhs_spec and out_spec, "
                             "I and O once in rhs_spec, the same spatial letters in all three)",
                             dimension_numbers)
    return tuple(dimension_numbers)


def in_layout(where: str, batch_axis, channel_axis, layer: Layer, outputs: Callable = same_axes) -> Layer:
    """``layer`` (canonical, naming no axes) taking inputs whose batch and channel axes are these."""
    declared = Layout(check_axis_argument(where, "batch_axis", batch_axis),
                      check_axis_argument(where, "channel_axis", channel_axis), outputs)
    return with_layout(declared, lambda perm: layer)
