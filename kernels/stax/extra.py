"""neural-tangents 0.6.5 `stax` names beyond the core layers.

* activations `Gabor` (a closed-form dual) and `ExpNormalized` (a kernel map without a
  finite network, Shankar et al. 2020);
* `Dropout` (Srivastava et al. 2014) in both modes;
* `Index` with its helper `Slice`: numpy basic indexing of spatial axes;
* `ImageResize`: `jax.image.resize` of the spatial axes;
* the enums `Padding`, `PositionalEmbedding`, `AttentionMechanism`,
  `AggregateImplementation`. They are string enums, so a member *is* its string
  (``Padding.SAME == "SAME"``) and is accepted wherever the string is.

Each rule is written from the layer's definition; the docstrings give the derivation.
"""
from __future__ import annotations

import dataclasses
import enum
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import duals
from kernels.checks import argument_error, finite_real
from kernels.kernel import Kernel, batch_diagonal
from kernels.stax import masking
from kernels.stax.attention import _mechanism
from kernels.stax.elementwise import _activation, activation_rule
from kernels.stax.layer import (Layer, Requires, describe, keep_requirement, leaf, needs_pairs,
                                spatial_description)
from kernels.stax.layout import Layout, axes_perm, canonical_shape, check_axis_argument, with_layout


# ----------------------------------------------------------------------------- enums

class Padding(enum.StrEnum):
    """Padding of convolutions and pooling: ``CIRCULAR`` (a torus), ``SAME`` (zeros), ``VALID`` (none)."""
    CIRCULAR = "CIRCULAR"
    SAME = "SAME"
    VALID = "VALID"


class PositionalEmbedding(enum.StrEnum):
    """Positional embeddings of `GlobalSelfAttention` (``pos_emb_type``): none, added, or concatenated."""
    NONE = "NONE"
    SUM = "SUM"
    CONCAT = "CONCAT"


class AttentionMechanism(enum.StrEnum):
    """The nonlinearity of `GlobalSelfAttention` applied to the query-key logits."""
    SOFTMAX = "SOFTMAX"
    IDENTITY = "IDENTITY"
    ABS = "ABS"
    RELU = "RELU"

    def fn(self):
        """The nonlinearity itself (softmax over the last axis, identity, abs, relu)."""
        return _mechanism(self.value)


class AggregateImplementation(enum.StrEnum):
    """The implementations of the graph layer `kernels.stax.graph.Aggregate`: a dense adjacency tensor or a list of edges."""
    DENSE = "DENSE"
    SPARSE = "SPARSE"


# ----------------------------------------------------------------------------- activations

def gabor_dual() -> duals.Dual:
    """phi(x) = exp(-x^2) sin(x).

    With ``sin u sin v = (cos(u - v) - cos(u + v)) / 2`` and the Gaussian integral
    ``E exp(-z^T z + i t^T z) = det(I + 2 S)^{-1/2} exp(-t^T S (I + 2 S)^{-1} t / 2)``
    for ``z ~ N(0, S)``, ``t = (1, -+1)``:

        ``E[phi(u) phi(v)] = exp(-(s + 2 delta) / (2 D)) sinh(c / D) / sqrt(D)``,

    ``c = cov12``, ``s = var1 + var2``, ``delta = 2 (var1 var2 - c^2)``,
    ``D = det(I + 2 S) = 1 + 2 s + 2 delta >= 1``. ``E[phi' phi']`` is its derivative in
    ``c`` (Price 1958), by forward-mode differentiation.
    """
    def nngp(cov12, var1, var2):
        delta = 2 * (var1 * var2 - cov12 ** 2)
        det = 1 + 2 * (var1 + var2) + 2 * delta
        return jnp.exp(-(var1 + var2 + 2 * delta) / (2 * det)) * jnp.sinh(cov12 / det) / jnp.sqrt(det)
    return duals.with_price_derivative(nngp)


def exp_normalized_dual(gamma: float, shift: float, do_clip: bool) -> duals.Dual:
    """``K' = sqrt(var1 var2) exp(gamma (rho + shift))`` with ``rho = cov12 / sqrt(var1 var2)``
    (the "Gaussian normalized kernel", Shankar et al. 2020, p. 6), and its derivative in
    ``cov12``, ``gamma exp(gamma (rho + shift))``. ``do_clip`` clips ``rho`` to ``[-1, 1]``."""
    def dual(cov12, var1, var2):
        scale = jnp.sqrt(jnp.maximum(var1 * var2, 1e-30))  # a zero variance: rho 0, not NaN
        rho = cov12 / scale
        if do_clip:
            rho = jnp.clip(rho, -1., 1.)
        e = jnp.exp(gamma * (rho + shift))
        return scale * e, gamma * e
    return dual


def Gabor():
    """``exp(-x^2) sin(x)``; kernel: `gabor_dual` (closed form, as neural-tangents)."""
    return _activation("Gabor()", lambda x: jnp.exp(-x ** 2) * jnp.sin(x), gabor_dual(), duals.constant_mean(0.))


def ExpNormalized(gamma: float = 1., shift: float = -1., do_clip: bool = False):
    """The "Gaussian normalized kernel" of Shankar et al. 2020 (p. 6), as a kernel map.

    ``K'[x, x'] = sqrt(q q') exp(gamma (K[x, x'] / sqrt(q q') + shift))`` with ``q, q'`` the
    inputs' variances; ``Theta' = gamma Theta exp(gamma (rho + shift))`` (`exp_normalized_dual`).
    Like neural-tangents it has no finite network (``apply_fn`` raises ``NotImplementedError``);
    being a map of covariances, it applies to any input, Gaussian or not. (At unit input variance
    it is the kernel of ``Exp(a=exp(gamma (shift - 1) / 2), b=sqrt(gamma))``.) Masked positions
    (``mask_constant``) stay zero, as neural-tangents re-masks this layer's kernel.

    Args:
      gamma: the exponent's scale.
      shift: added to the normalized covariance before exponentiating.
      do_clip: clip the normalized covariance to ``[-1, 1]``.
    """
    name = describe("ExpNormalized", gamma=gamma, shift=shift, do_clip=do_clip)
    # A bool shift is its number, as in neural-tangents (whose own tests pass do_clip in shift's place).
    shift = float(shift) if isinstance(shift, (bool, np.bool_)) else shift
    gamma, shift = finite_real(name, "gamma", gamma), finite_real(name, "shift", shift)
    if not isinstance(do_clip, (bool, np.bool_)):
        raise argument_error(name, "do_clip", "True or False", do_clip, TypeError)

    def apply_fn(params, x, **kwargs):
        raise NotImplementedError(f"{name}: apply_fn: a kernel map without a finite network (as in "
                                  "neural-tangents); only kernel_fn is defined")
    return leaf(name, lambda rng, input_shape: (input_shape, ()), apply_fn,
                activation_rule(exp_normalized_dual(gamma, shift, bool(do_clip)), None), masks=masking.POINTWISE)


# ----------------------------------------------------------------------------- Dropout

DROPOUT_MODES = ("train", "test")


def Dropout(rate: float, mode: str = "train"):
    """Dropout with keep probability ``rate`` (Srivastava et al. 2014), as neural-tangents.

    ``mode="train"``: ``apply_fn(params, x, rng=key)`` keeps each entry with probability
    ``rate`` and divides it by ``rate``, a new mask per call (``rng`` is required);
    ``mode="test"``: the identity.

    Kernel (train). Masks ``m ~ Bernoulli(rate) / rate`` are independent of the weights and of
    each other, with ``E m = 1``, ``E m^2 = 1 / rate``. At infinite width the next layer
    averages over infinitely many channels, so only the mask's moments count: the covariance
    of two outputs is unchanged unless they are the same entry of the same forward pass, where
    it is divided by ``rate``; the NTK alike, each parameter's gradient passing through the same
    mask. So ``cov1``, ``cov2`` are divided by ``rate`` at equal positions, and ``nngp``, ``ntk`` at
    equal positions of the same example when the two batches are one batch, as neural-tangents
    decides (``x2 is None``, or ``x2`` equal to ``x1``: here, the two batches' covariances at the
    layer's input agree to ``sqrt(eps)`` of the dtype, which evaluation block by block, whose
    diagonal blocks are computed as pairs, needs too). The outputs are no longer Gaussian (an
    activation right after it is refused), and their channel means are unchanged.

    The layer needs infinitely many input channels, so it is refused where the inputs may be
    the network's own (no Dense, Conv or attention layer before it since the input or the last
    `FanOut`): there the masks do not average out and the next layer's outputs are not Gaussian.

    Masked inputs (``mask_constant``, `kernels.stax.masking`): a pointwise layer, as in
    neural-tangents 0.6.5 (its outputs masked where its inputs are). Masked positions carry zeros,
    which dropout keeps zero, and their covariances are zero, which the factor keeps zero.

    Args:
      rate: the keep probability, ``0 < rate <= 1``.
      mode: ``"train"`` or ``"test"``.
    """
    name = describe("Dropout", rate=rate, mode=mode)
    rate = finite_real(name, "rate", rate)
    if not 0 < rate <= 1:
        raise argument_error(name, "rate", "the keep probability, in (0, 1]", rate)
    if mode not in DROPOUT_MODES:
        raise argument_error(name, "mode", f"one of {DROPOUT_MODES}", mode)

    def init_fn(rng, input_shape):
        return input_shape, ()

    def apply_fn(params, x, rng=None, **kwargs):
        if mode == "test":
            return x
        if rng is None:
            raise ValueError(f"{name}: apply_fn needs argument `rng` (a jax.random key) in mode='train', "
                             "e.g. apply_fn(params, x, rng=jax.random.PRNGKey(0)); received rng=None")
        keep = jax.random.bernoulli(rng, rate, x.shape)
        return jnp.where(keep, x / rate, jnp.zeros((), x.dtype))

    if mode == "test":
        return leaf(name, init_fn, apply_fn, lambda k: k, masks=masking.POINTWISE)

    def rule(k: Kernel) -> Kernel:
        if not k.own_weights:
            raise ValueError(f"{name}: its inputs must have infinitely many channels: put a Dense, Conv or "
                             "GlobalSelfAttention before it (since the network's input or the last FanOut); "
                             "on the network's inputs the masks do not average out over channels")
        boost = 1 / rate - 1
        positions = _position_identity(k)  # 1 at equal positions, broadcastable to one example's array
        same = _same_examples(k).reshape(k.nngp.shape[:2] + (1,) * (k.nngp.ndim - 2))
        pair = 1 + boost * same * positions

        def self_cov(cov):
            return None if cov is None else cov * (1 + boost * positions)
        return k.replace(nngp=k.nngp * pair, ntk=k.ntk * pair, cov1=self_cov(k.cov1), cov2=self_cov(k.cov2),
                         is_gaussian=False)
    return leaf(name, init_fn, apply_fn, rule, masks=masking.POINTWISE)


def _position_identity(k: Kernel) -> jax.Array:
    """1 where two positions are equal: ``eye`` over positions for position pairs, else 1."""
    if not k.full or k.spatial_ndim == 0:
        return jnp.ones((), k.nngp.dtype)
    shape = k.spatial_shape
    return jnp.eye(math.prod(shape), dtype=k.nngp.dtype).reshape(shape + shape)


def _same_examples(k: Kernel) -> jax.Array:
    """``(N1, N2)``: 1 where entry ``(i, j)`` pairs an example with itself in one forward pass.

    That is the diagonal when the second batch is the first: ``x2 is None``, or (as
    neural-tangents' ``x1_is_x2``) both batches equal, seen here at the layer's input as
    ``cov2 == cov1 == diag(nngp)`` to ``sqrt(eps)`` relatively.
    """
    n1, n2 = k.nngp.shape[:2]
    eye = jnp.eye(n1, n2, dtype=k.nngp.dtype)
    if k.cov2 is None:
        return eye
    if n1 != n2:
        return jnp.zeros_like(eye)
    diagonal = batch_diagonal(k.nngp)  # (N, ...) like cov1
    scale = jnp.maximum(jnp.abs(k.cov1).max(), jnp.abs(k.cov2).max())
    tolerance = jnp.sqrt(jnp.finfo(k.nngp.dtype).eps) * scale
    equal = (jnp.abs(k.cov1 - k.cov2).max() <= tolerance) & (jnp.abs(diagonal - k.cov1).max() <= tolerance)
    return eye * equal


# ----------------------------------------------------------------------------- Index, Slice

class _Slice:
    """``Slice[1:5, ::2]`` is ``(slice(1, 5), slice(None, None, 2))``: how to write an `Index`."""

    def __getitem__(self, idx):
        return idx


Slice = _Slice()


def _check_index(name: str, idx) -> tuple:
    """``idx`` as a tuple of ints, slices of ints and at most one Ellipsis, else an error naming it."""
    items = idx if isinstance(idx, tuple) else (idx,)

    def bad(item):
        if item is Ellipsis:
            return False
        if isinstance(item, slice):
            return any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)))
                       for v in (item.start, item.stop, item.step)) or item.step == 0
        return isinstance(item, bool) or not isinstance(item, (int, np.integer))
    if any(bad(i) for i in items) or sum(i is Ellipsis for i in items) > 1:
        raise argument_error(name, "idx", "basic indexing: ints, slices of ints (non-zero step) and at most "
                             "one Ellipsis, e.g. stax.Slice[:, 1:5, ::2]", idx, TypeError)
    return items


def _canonical_index(name: str, items: tuple, ndim: int) -> tuple:
    """One entry per axis: the Ellipsis expanded, missing trailing axes ``slice(None)``."""
    if len([i for i in items if i is not Ellipsis]) > ndim:
        raise argument_error(name, "idx", f"at most {ndim} indices for inputs of rank {ndim}", items)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + (slice(None),) * (ndim - len(items) + 1) + items[at + 1:]
    return items + (slice(None),) * (ndim - len(items))


def _indexed_shape(name: str, shape: tuple, idx) -> tuple:
    """The shape of ``x[idx]`` for ``x`` of ``shape``; an error naming ``idx`` if out of bounds or empty.

    (JAX clamps an out-of-bounds index silently; NumPy's check is used instead.)
    """
    try:
        out = np.broadcast_to(np.zeros((), np.int8), tuple(shape))[idx].shape
    except IndexError as error:
        raise argument_error(name, "idx", f"within the inputs' shape {tuple(shape)}", f"{idx!r} ({error})") from None
    if 0 in out:
        raise argument_error(name, "idx", "a selection of at least one entry along every axis",
                             f"{idx!r}, which leaves shape {out} of inputs {tuple(shape)}")
    return out


def Index(idx, batch_axis: int = 0, channel_axis: int = -1):
    """``x[idx]``: numpy basic indexing (as neural-tangents' ``Index``; write ``idx`` as ``stax.Slice[...]``).

    Kernel: positions are selected, so the covariances of the selected positions are those of
    the input, ``K'[p, p'] = K[idx(p), idx(p')]``; an int removes its spatial axis. The channel
    axis (infinitely wide) can not be indexed, and the batch axis only in ``apply_fn``:
    ``kernel_fn`` of a network indexing its batch equals ``kernel_fn(x1[i], x2[i])`` of the
    network without it, which is how to compute it here.

    Masked inputs (``mask_constant``, `kernels.stax.masking`): the mask is indexed as the inputs
    are, ``mask[idx]`` without the channel entry (neural-tangents 0.6.5's ``mask_fn``); a channel
    slice keeps every position's mask. An int on the channel axis is refused with masks: the
    outputs' channels would be the inputs' last spatial axis, whose positions are masked one by
    one, which a mask per position can not say (neural-tangents keeps a mask per entry there).
    (Partly masked positions of the network's inputs count as unmasked, as everywhere here;
    neural-tangents masks their entries one by one until a Dense or Conv collapses them, so a
    channel slice of such raw inputs can differ there.)

    Args:
      idx: an int, a slice, an Ellipsis or a tuple of them, e.g. ``stax.Slice[:, 1:5, ::2]``, indexing the
        inputs' axes as they come.
      batch_axis, channel_axis: where the inputs keep their examples and channels (`kernels.stax.layout`).
    """
    name = describe("Index", idx=idx)
    items = _check_index(name, idx)
    declared = (check_axis_argument(name, "batch_axis", batch_axis),
                check_axis_argument(name, "channel_axis", channel_axis))

    def canonical(perm):  # idx for the canonical (N, *S, C) inputs
        full = _canonical_index(name, items, len(perm))
        return tuple(full[p] for p in perm)

    def outputs(perm):  # the kept axes, in the order the inputs have them
        full = _canonical_index(name, items, len(perm))
        kept = [a for a in range(len(perm)) if not isinstance(full[a], (int, np.integer))]
        return tuple(kept.index(p) for p in perm if p in kept)

    return with_layout(Layout(*declared, outputs),
                       lambda perm: _index(name, items if perm is None else canonical(perm)))


def _index(name, items):
    """`Index` of canonical inputs ``(N, *S, C)`` by ``items``."""

    def init_fn(rng, input_shape):
        return _indexed_shape(name, input_shape, items), ()

    def apply_fn(params, x, **kwargs):
        _indexed_shape(name, x.shape, items)
        return x[items]

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        full = _canonical_index(name, items, d + 2)
        if isinstance(full[0], slice) and full[0] != slice(None):
            k = _batch_sliced(k, full[0])
        elif full[0] != slice(None):
            raise NotImplementedError(f"{name}: kernel_fn can index the batch axis with a slice only (an int "
                                      f"would remove it; idx[0] = {full[0]!r}), as in neural-tangents")
        if full[-1] != slice(None):
            raise NotImplementedError(f"{name}: the channel axis is infinitely wide in kernel_fn and can not be "
                                      f"indexed; received {full[-1]!r} for it")
        spatial = full[1:-1]
        _indexed_shape(name, k.spatial_shape, spatial)
        pairs = spatial + spatial if k.full else spatial
        out = k.replace(nngp=k.nngp[(slice(None),) * 2 + pairs], ntk=k.ntk[(slice(None),) * 2 + pairs],
                        cov1=k.cov1[(slice(None),) + pairs],
                        cov2=None if k.cov2 is None else k.cov2[(slice(None),) + pairs])
        out = out.map_means(lambda m: m[(slice(None),) + spatial])
        return out.replace(full=False) if out.nngp.ndim == 2 else out  # every spatial axis indexed away
    layer = leaf(name, init_fn, apply_fn, rule, masks=masking.Masking(_index_mask(name, items)))
    if _indexes_batch(items):  # its rule must see whole batches, not blocks of them (`KernelFn.whole_batch`)
        layer = Layer(layer.init_fn, layer.apply_fn, dataclasses.replace(layer.kernel_fn, whole_batch=True))
    return layer


def _indexes_batch(items) -> bool:
    """Whether canonical ``items`` (batch first) select examples."""
    first = items[0] if isinstance(items, tuple) and items else items
    return first is not Ellipsis and first != slice(None) and not (isinstance(items, tuple) and not items)


def _batch_sliced(k: Kernel, s: slice) -> Kernel:
    """``k`` for the examples ``s`` of both batches (neural-tangents' ``Kernel[idx]`` on the batch axis)."""
    def rows(a):
        return None if a is None else a[s]
    return k.replace(nngp=k.nngp[s][:, s], ntk=k.ntk[s][:, s], cov1=k.cov1[s], cov2=rows(k.cov2),
                     mean1=rows(k.mean1), mean2=rows(k.mean2), mask1=rows(k.mask1), mask2=rows(k.mask2),
                     pattern1=rows(k.pattern1), pattern2=rows(k.pattern2))


def _index_mask(name, items):
    """`Index`'s ``mask_fn``: the mask ``(N, *S)`` indexed by ``items`` without their channel entry."""
    def mask_fn(mask):
        full = _canonical_index(name, items, mask.ndim + 1)
        if isinstance(full[-1], (int, np.integer)):
            raise NotImplementedError(
                f"{name}: masked inputs (argument `mask_constant`) can not be indexed by an int on the channel "
                f"axis (received {full[-1]!r}): the outputs' channels would be the inputs' last spatial axis, "
                f"whose positions are masked one by one; keep the channel axis with a slice, e.g. "
                f"{full[-1]}:{full[-1] + 1 if full[-1] != -1 else ''}")
        return mask[full[:-1]]
    return mask_fn


# ----------------------------------------------------------------------------- ImageResize

def ImageResize(shape, method, antialias: bool = True, precision=lax.Precision.HIGHEST, batch_axis: int = 0,
                channel_axis: int = -1):
    """``jax.image.resize`` of the spatial axes; ``-1`` in ``shape`` keeps an axis.

    Kernel: every method of ``jax.image.resize`` is linear and separable, an output position
    ``p`` being ``sum_q w[p, q] x[q]`` along each axis with weights fixed by the sizes, the
    method and ``antialias``. So ``K'[p, p'] = sum_{q, q'} w[p, q] w[p', q'] K[q, q']``: the same
    resize applied to both position axes of each covariance, and to the channel means. (neural-
    tangents does the same for ``"linear"`` and ``"nearest"`` and refuses the others, which are
    linear too.) Nearest-neighbour resizing only repeats positions and keeps what the next
    layer needs; the other methods mix positions, so need position pairs.

    Masked inputs (``mask_constant``, `kernels.stax.masking`), as neural-tangents 0.6.5: the inputs
    enter as zeros, and an output is masked when it reads no unmasked input, i.e. where the resize of
    the unmasked positions' indicator (in float32, as neural-tangents resizes the inverted boolean
    mask) is exactly zero: content wins over the mask, so a resize does not grow the mask. The
    kernel is then zeroed at masked outputs (its ``remask_kernel=True``). Every method, and a resize
    of the batch axis in ``apply_fn``, resizes the mask alike.

    Args:
      shape: the output shape, ``(N, *S, C)`` (in the inputs' layout); ``-1`` leaves an axis as it is.
        ``kernel_fn`` needs ``-1`` for the batch and channel axes.
      method: a ``jax.image.ResizeMethod`` or its name (``"linear"``, ``"nearest"``, ``"cubic"``,
        ``"lanczos3"``, ``"lanczos5"``).
      antialias, precision: as ``jax.image.resize``.
      batch_axis, channel_axis: where the inputs keep their examples and channels (`kernels.stax.layout`).
    """
    name = describe("ImageResize", shape=shape, method=method, antialias=antialias)
    declared = (check_axis_argument(name, "batch_axis", batch_axis),
                check_axis_argument(name, "channel_axis", channel_axis))
    try:
        shape = tuple(shape)
    except TypeError:
        raise argument_error(name, "shape", "a sequence of ints (-1 keeps an axis)", shape, TypeError) from None
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not (s == -1 or s >= 1) for s in shape):
        raise argument_error(name, "shape", "ints, each -1 (keep the axis) or a positive size", shape)
    try:
        resize_method = (method if isinstance(method, jax.image.ResizeMethod)
                         else jax.image.ResizeMethod.from_string(method))
    except (ValueError, AttributeError, TypeError):
        raise argument_error(name, "method", "a jax.image.ResizeMethod or its name ('linear', 'nearest', "
                             "'cubic', 'lanczos3', 'lanczos5')", method) from None
    if not isinstance(antialias, (bool, np.bool_)):
        raise argument_error(name, "antialias", "True or False", antialias, TypeError)
    # shape has one entry per axis of the inputs: the layout, and so shape in canonical order, is known now
    shape = canonical_shape(shape, axes_perm(name, len(shape), *declared))
    return with_layout(Layout(*declared), lambda perm: _image_resize(name, shape, resize_method, antialias, precision))


def _image_resize(name, shape, resize_method, antialias, precision):
    """`ImageResize` of canonical inputs ``(N, *S, C)`` to ``shape`` (canonical order)."""
    nearest = resize_method == jax.image.ResizeMethod.NEAREST
    resizes_space = any(s != -1 for s in shape[1:-1])

    def resolved(input_shape):
        if len(input_shape) != len(shape):
            raise argument_error(name, "shape", f"one entry per axis of the inputs, {len(input_shape)}",
                                 f"{shape} for inputs of shape {tuple(input_shape)}")
        return tuple(int(i) if s == -1 else int(s) for s, i in zip(shape, input_shape))

    def resize(a, out_shape):
        return jax.image.resize(a, out_shape, resize_method, antialias=antialias, precision=precision)

    def init_fn(rng, input_shape):
        return resolved(input_shape), ()

    def apply_fn(params, x, **kwargs):
        return resize(x, resolved(x.shape))

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        if len(shape) != d + 2:
            raise argument_error(name, "shape", f"one entry per axis of the inputs, {d + 2}",
                                 f"{shape} for inputs {spatial_description(k)}")
        if shape[0] != -1 or shape[-1] != -1:
            raise NotImplementedError(f"{name}: kernel_fn resizes spatial axes only: argument `shape` must be -1 "
                                      f"for the batch and channel axes; received {shape}")
        if not resizes_space:
            return k
        new = resolved((1,) + k.spatial_shape + (1,))[1:-1]
        pairs = new + new if k.full else new

        def batch_resize(a, batch_ndim):
            return resize(a, a.shape[:batch_ndim] + pairs)
        out = k.replace(nngp=batch_resize(k.nngp, 2), ntk=batch_resize(k.ntk, 2), cov1=batch_resize(k.cov1, 1),
                        cov2=None if k.cov2 is None else batch_resize(k.cov2, 1))
        return out.map_means(lambda m: resize(m, m.shape[:1] + new))

    def mask_fn(mask):  # (N, *S) -> (N', *S')
        return _reads_no_unmasked(resize, mask, resolved(mask.shape + (1,))[:-1])

    return leaf(name, init_fn, apply_fn, rule, keep_requirement if nearest or not resizes_space else needs_pairs,
                Requires(), masks=masking.Masking(mask_fn))


def _reads_no_unmasked(resize, mask, out_shape):
    """`ImageResize`'s ``mask_fn``: an output is masked where the resize of the unmasked positions'
    indicator is exactly zero (in float32, as neural-tangents 0.6.5 resizes its inverted boolean mask)."""
    return resize((~mask).astype(jnp.float32), out_shape) == 0
