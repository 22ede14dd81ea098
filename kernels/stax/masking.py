"""Masked inputs (``mask_constant``): which positions of a layer's outputs are absent.

As in neural-tangents 0.6.5, ``kernel_fn(x1, x2, mask_constant=c)`` and
``apply_fn(params, x, mask_constant=c)`` treat every input entry equal to ``c`` (NaN entries
when ``c`` is NaN) as absent: it is set to zero, and a position whose channels are all absent is
*masked* (a padded token of a variable-length sequence, neural-tangents' ``examples/imdb.py``).
The mask is a boolean array ``(N, *S)``, one flag per example and position, carried as data:
`Kernel.mask1`/`Kernel.mask2` in kernels, `Masked` between layers of ``apply_fn``.

A layer that honours masks declares a `Masking` (`kernels.stax.layer.leaf`); one that does not
refuses masked inputs, naming itself and ``mask_constant``. A masking layer sees its inputs
zero at masked positions (in ``apply_fn`` the values, in ``kernel_fn`` every covariance with a
masked position), and its outputs are zero there too: neural-tangents' ``apply_fn`` zeroes each
layer's inputs at masked positions and `unmask_fn` its outputs, and the kernels here are those of
these finite networks. Layers that mix positions exclude masked ones: global pooling averages
over the unmasked positions only, attention gives masked keys no weight, `LayerNorm` normalizes
over unmasked positions. ``mask_fn`` maps the mask of a layer's inputs to that of its outputs
(``Flatten`` and global pooling: an example is masked when all its positions are).

Local layers (`Conv`, `ConvLocal`, `AvgPool`, `SumPool`, `ConvTranspose`) mix masked inputs in as
the zeros they are: nothing is renormalized (an `AvgPool` window still divides by its size, or by
its unpadded size with ``normalize_edges``), as in neural-tangents. Which of their outputs are
masked is neural-tangents' rule too: `window_centres` for windows that read the input (an output
is masked when the input at its window's centre is), `transposed_reach` for a transposed
convolution (when any masked input reaches it through the filter).

Branching networks (neural-tangents 0.6.5's ``FanOut``, ``parallel`` and fan-in layers): each branch
carries its own mask, `FanOut` copying its input's; `masked_in_all` and `concatenated_along` merge
them at a fan-in layer, each branch entering it zero at its own masked positions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import spatial
from kernels.checks import argument_error
from kernels.kernel import Kernel

# The logit given to masked keys of softmax attention, as neural-tangents' (a finite value: an
# example with every key masked gets uniform weights instead of NaN).
MASKED_LOGIT = -1e20


def same_mask(mask):
    """Pointwise layers (Dense, activations, LayerNorm, attention): outputs masked where inputs are."""
    return mask


def all_positions(mask):
    """Layers that merge positions into one (Flatten, global pooling): ``(N, *S) -> (N,)``."""
    return jnp.all(mask.reshape(mask.shape[0], -1), axis=1)


def window_centres(window_shape, strides, padding: str, out_order=None) -> Callable:
    """``mask_fn`` of a layer whose output ``o`` reads the window ``s o - low + [0, w)`` of its
    inputs (`Conv`, `ConvLocal`, `AvgPool`, `SumPool`): ``o`` is masked when the input at the
    window's centre ``s o - low + (w - 1) // 2`` is (neural-tangents 0.6.5's rule; ``low`` is
    the SAME padding's leading zeros, 0 for VALID). CIRCULAR windows are placed as SAME ones
    (neural-tangents does so for `Conv`; it fails on masked CIRCULAR pooling, where this
    extends the same rule). For stride one and SAME padding the output mask is the input's.

    ``window_shape``, ``strides``: per spatial axis in the inputs' order; ``out_order``: the input
    axis each output spatial axis comes from (``None``: the same order).
    """
    placement = "SAME" if padding == "CIRCULAR" else padding

    def mask_fn(mask):
        for i, (w, s) in enumerate(zip(window_shape, strides)):
            n = mask.shape[1 + i]
            low = spatial.pad_amounts(n, w, s, placement)[0]
            centres = (w - 1) // 2 - low + s * np.arange(spatial.output_size(n, w, s, placement))
            mask = jnp.take(mask, centres, axis=1 + i)
        return _reordered(mask, out_order)

    return mask_fn


def transposed_reach(filter_shape, strides, padding: str, out_order=None) -> Callable:
    """``mask_fn`` of `ConvTranspose`: an output is masked when any masked input reaches it through
    the filter, i.e. where the transposed convolution of the mask with a filter of ones is nonzero
    (neural-tangents 0.6.5's rule; an output that no input reaches is not masked). CIRCULAR is
    placed as SAME there, as neural-tangents does. Arguments as `window_centres`."""
    placement = "SAME" if padding == "CIRCULAR" else padding
    d = len(filter_shape)
    channels_last = (0, d + 1) + tuple(range(1, d + 1))
    numbers = lax.ConvDimensionNumbers(lhs_spec=channels_last, rhs_spec=(d + 1, d) + tuple(range(d)),
                                       out_spec=channels_last)

    def mask_fn(mask):
        ones = jnp.ones(tuple(filter_shape) + (1, 1), jnp.float32)
        reach = lax.conv_transpose(mask[..., None].astype(jnp.float32), ones, tuple(strides), placement,
                                   dimension_numbers=numbers)
        return _reordered(reach[..., 0] > 0.5, out_order)  # counts of masked inputs: exact small integers

    return mask_fn


def _reordered(mask, out_order):
    if out_order is None or tuple(out_order) == tuple(range(mask.ndim - 1)):
        return mask
    return jnp.transpose(mask, (0,) + tuple(1 + i for i in out_order))


@dataclasses.dataclass(frozen=True)
class Masking:
    """How a layer treats masked inputs, declared on the layer (`kernels.stax.layer.leaf`).

    Attributes:
      mask_fn: the mask of the outputs, ``(N, *S')``, from that of the inputs, ``(N, *S)``.
      apply_takes_mask: ``apply_fn`` reads the mask (``mask=`` keyword, ``(N, *S)`` booleans)
        because it mixes positions (pooling, attention, normalization over positions).
    """

    mask_fn: Callable = same_mask
    apply_takes_mask: bool = False


POINTWISE = Masking()


def check_mask_constant(where: str, mask_constant) -> None:
    """``mask_constant``: ``None`` or a real number (NaN allowed, as in neural-tangents)."""
    if mask_constant is None or isinstance(mask_constant, jax.core.Tracer):
        return
    if isinstance(mask_constant, (bool, np.bool_)) or np.ndim(mask_constant) != 0 \
            or not np.issubdtype(np.asarray(mask_constant).dtype, np.number) \
            or np.iscomplexobj(mask_constant):
        raise argument_error(where, "mask_constant", "None or a real number (NaN allowed): input entries equal "
                             "to it are masked", mask_constant, TypeError)


def input_mask(x: jax.Array, mask_constant):
    """``(x zeroed where masked, position mask (N, *S))`` of inputs ``x: (N, *S, C)``.

    An entry is masked when it equals ``mask_constant`` (is NaN when that is NaN); a position
    when all its channels are (neural-tangents' `Dense`/`Conv` collapse the channels this way).
    """
    c = jnp.asarray(mask_constant)
    entries = jnp.where(jnp.isnan(c), jnp.isnan(x), x == c.astype(x.dtype))
    return jnp.where(entries, jnp.zeros((), x.dtype), x), jnp.all(entries, axis=-1)


def is_masked(k) -> bool:
    """Whether a kernel (or any of a tuple of branch kernels) carries masks."""
    if isinstance(k, Kernel):
        return k.mask1 is not None
    return any(is_masked(b) for b in k)


def refuse(where: str) -> NotImplementedError:
    return NotImplementedError(f"{where}: masked inputs (argument `mask_constant`) are not supported by this "
                               "layer; remove mask_constant, or remove the masked entries from the inputs")


# ------------------------------------------------------------------------------- kernels

def _left(m, d, full):
    return m.reshape(m.shape + (1,) * d) if full else m


def _right(m, d, full):
    return m.reshape(m.shape[:1] + (1,) * d + m.shape[1:]) if full else m


def pair_mask(k: Kernel) -> jax.Array:
    """``True`` where an entry of ``k.nngp`` involves a masked position of either example."""
    d, full = k.spatial_ndim, k.full
    m2 = k.mask2_or_mask1
    return _left(k.mask1, d, full)[:, None] | _right(m2, d, full)[None]


def self_mask(m: jax.Array, k: Kernel) -> jax.Array:
    """``True`` where an entry of a self covariance (``cov1`` for ``m = mask1``) involves a masked position."""
    d, full = k.spatial_ndim, k.full
    return _left(m, d, full) | _right(m, d, full)


def zero_masked(k: Kernel) -> Kernel:
    """``k`` with every covariance (and mean) that involves a masked position set to zero."""
    if k.mask1 is None:
        return k

    def zero(a, mask):
        return None if a is None else jnp.where(mask, jnp.zeros((), a.dtype), a)
    m2 = k.mask2_or_mask1
    pair = pair_mask(k)
    return k.replace(nngp=zero(k.nngp, pair), ntk=zero(k.ntk, pair), cov1=zero(k.cov1, self_mask(k.mask1, k)),
                     cov2=zero(k.cov2, self_mask(m2, k)), mean1=zero(k.mean1, k.mask1),
                     mean2=zero(k.mean2, m2))


def through(masking: Masking, rule: Callable, k: Kernel):
    """A masking layer's ``rule`` on ``k``: inputs and outputs zero at masked positions (module docstring)."""
    out = rule(zero_masked(k))
    fn = masking.mask_fn
    return zero_masked(out.replace(mask1=fn(k.mask1), mask2=None if k.mask2 is None else fn(k.mask2)))


def unmasked_count(mask: jax.Array) -> jax.Array:
    """Unmasked positions per example, ``(N,)``, at least one (neural-tangents' ``mean_and_var``)."""
    return jnp.maximum(jnp.sum(~mask.reshape(mask.shape[0], -1), axis=1), 1)


# ------------------------------------------------------------------------------- apply_fn

class Masked(NamedTuple):
    """A layer's outputs inside a masked ``apply_fn``: ``value (N, *S, C)`` and ``mask (N, *S)``."""

    value: jax.Array
    mask: jax.Array


def _map(fn, tree, kind):
    if isinstance(tree, kind):
        return fn(tree)
    if isinstance(tree, (list, tuple)) and not isinstance(tree, Masked):
        return type(tree)(_map(fn, t, kind) for t in tree)
    return fn(tree)


def carries_masks(inputs) -> bool:
    found = []
    _map(lambda t: found.append(isinstance(t, Masked)), inputs, Masked)
    return any(found)


def mask_inputs(inputs, mask_constant):
    """The network's inputs (an array or a list of them) as `Masked` values."""
    return _map(lambda x: Masked(*input_mask(jnp.asarray(x), mask_constant)), inputs, Masked)


def zero_at(value: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape(mask.shape + (1,) * (value.ndim - mask.ndim)), jnp.zeros((), value.dtype), value)


def unmask(outputs):
    """Plain arrays, zero at masked positions (neural-tangents' `unmask_fn`)."""
    return _map(lambda t: zero_at(t.value, t.mask) if isinstance(t, Masked) else t, outputs, Masked)


def apply_leaf(name: str, masking: Masking, apply_fn: Callable, params, inputs, kwargs: dict):
    """A leaf layer's ``apply_fn`` on `Masked` inputs: zeroed at masked positions, the mask passed
    on through ``masking.mask_fn``."""
    if masking is None:
        raise refuse(f"{name}: apply_fn")
    if not isinstance(inputs, Masked):
        raise NotImplementedError(f"{name}: apply_fn: masked inputs (argument `mask_constant`) reach this layer "
                                  "as several branches, which it does not support with masks")
    value = zero_at(inputs.value, inputs.mask)
    extra = dict(mask=inputs.mask) if masking.apply_takes_mask else {}
    return Masked(apply_fn(params, value, **extra, **kwargs), masking.mask_fn(inputs.mask))


# ------------------------------------------------------------------------------- branches

def masked_in_all(masks):
    """Mask of a sum, product or channel concatenation of branches: a position is masked when it is
    masked in every branch (neural-tangents 0.6.5's ``_sum_masks``; after a channel concatenation its
    per-channel mask is collapsed by the next layer the same way). A position masked in some branches
    only holds their zeros there."""
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def concatenated_along(axis: int):
    """Mask of a concatenation of branches along a non-channel ``axis`` of the ``(N, *S)`` mask:
    the branches' masks side by side (neural-tangents 0.6.5's ``_concat_masks``)."""
    return lambda masks: jnp.concatenate(masks, axis=axis)


def _filled(masks):
    """Branch masks with a branch that carries none (``None``) taken as unmasked."""
    shape = next(m.shape for m in masks if m is not None)
    return [jnp.zeros(shape, bool) if m is None else m for m in masks]


def merged_kernel_masks(name: str, ks, merge: Callable) -> dict:
    """``mask1``/``mask2`` of the kernel of merged branches ``ks`` by ``merge`` (a list of masks -> one)."""
    if any(k.mask2 is not None for k in ks) and any(k.mask2 is None for k in ks):
        raise ValueError(f"{name}: branches disagree on whether x2 is given")
    mask1 = merge(_filled([k.mask1 for k in ks]))
    mask2 = None if ks[0].mask2 is None else merge(_filled([k.mask2 for k in ks]))
    return dict(mask1=mask1, mask2=mask2)


def merged_branches(name: str, xs, merge: Callable):
    """``(values, mask)`` of branches ``xs`` (`Masked` or arrays) entering a fan-in layer's ``apply_fn``:
    each value zero at its branch's masked positions, and the merged mask."""
    if isinstance(xs, Masked) or not isinstance(xs, (list, tuple)):
        raise ValueError(f"{name}: apply_fn expects a list of branches (after FanOut and parallel)")
    if not all(isinstance(x, Masked) for x in xs):
        raise NotImplementedError(f"{name}: apply_fn: masked inputs (argument `mask_constant`) reach only some "
                                  "of the branches; every branch must come from the masked inputs")
    return [zero_at(x.value, x.mask) for x in xs], merge([x.mask for x in xs])
