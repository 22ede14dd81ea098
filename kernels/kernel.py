"""The `Kernel` value that flows through a network's layers.

A layer's kernel rule maps one `Kernel` to another. The arrays hold the
covariances of the layer's outputs at infinite width (Neal 1996; Lee et al. 2018)
and the neural tangent kernel (Jacot et al. 2018), averaged over channels.

Layout (inside the library):

* ``full=True`` keeps every pair of positions:
  ``nngp, ntk: (N1, N2, *S, *S')``, ``cov1: (N1, *S, *S')``, ``cov2: (N2, *S, *S')``;
* ``full=False`` keeps only equal positions:
  ``nngp, ntk: (N1, N2, *S)``, ``cov1: (N1, *S)``, ``cov2: (N2, *S)``;

where ``S`` are the spatial sizes (none for an MLP). ``cov1``/``cov2`` are each
example's covariance with itself, which the dual maps of activations need.
``cov2 is None`` means ``x2 is None``: the second batch is the first.

At the public boundary `to_neural_tangents_layout` interleaves position axes as
neural-tangents does: ``(N1, N2, S_1, S'_1, S_2, S'_2, ...)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

# Kernels are computed in the input dtype at full precision: on GPUs with tensor cores a
# float32 product otherwise defaults to TF32 (about 1e-3 relative error).
HIGHEST = jax.lax.Precision.HIGHEST


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of a layer's outputs for two batches of inputs.

    Attributes:
      nngp: covariance of outputs, ``(N1, N2, ...)`` (see module docstring).
      ntk: neural tangent kernel, same shape as ``nngp``.
      cov1: covariance of each example of the first batch with itself.
      cov2: the same for the second batch, or ``None`` when it is the first.
      full: whether position pairs are kept (static).
      channels: number of channels of the finite layer this kernel stands for;
        only the ``standard`` parameterization and channel concatenation need it (static).
      is_gaussian: whether the outputs are one Gaussian field (true after Dense, Conv,
        attention), so that an activation's dual map applies to them (static).
      own_weights: whether a layer with its own random weights (Dense, Conv, attention)
        produced the outputs since the last `FanOut` (static). Branches without one are
        functions of one shared field, so their covariances with each other are unknown to
        the merging layers, which refuse more than one such branch.
      mean1: the mean over channels of each output of the first batch, per position,
        ``(N1, *S)``, at infinite width (zero after Dense, Conv and attention, ``E[phi(u)]``
        after an activation); ``None`` where it has no closed form. `LayerNorm` needs it.
      mean2: the same for the second batch, or ``None`` when it is the first.
      x1_is_x2: whether the second batch is the first (``x2=None``), as neural-tangents'
        field of that name; set on the kernels `kernel_fn` returns (static).
      pattern1: the graph of each example of the first batch that `kernels.stax.graph.Aggregate`
        aggregates over (``kernel_fn``'s ``pattern``), batch first; ``None`` without one. Other
        rules pass it on with `replace`.
      pattern2: the same for the second batch, or ``None`` when it is the first.
      mask1: which positions of each example of the first batch are masked (``kernel_fn``'s
        ``mask_constant``), booleans ``(N1, *S)``; ``None`` without masking (`kernels.stax.masking`).
      mask2: the same for the second batch, or ``None`` when it is the first.
      is_reversed: whether the position-pair axes of these arrays are in reversed order (neural-tangents'
        field of that name): only in what ``kernel_fn(..., neural_tangents_axis_order=True)`` returns (static).
      odd_convolutions: whether an odd number of weight-sharing convolutions (`Conv`,
        `ConvTranspose`) acted on position pairs since the input, merges taking the majority of
        their branches: where neural-tangents' kernels have their spatial axes reversed (its
        ``is_reversed``). widekit's arrays never are; ``kernel_fn(...,
        neural_tangents_axis_order=True)`` reverses them on the way out (static).
      axes: ``(batch_axis, channel_axis)`` of the finite layer's outputs when they are not batch first and
        channels last (a layer given neural-tangents' ``batch_axis``, ``channel_axis`` or
        ``dimension_numbers``: `kernels.stax.layout`); ``None`` for that canonical layout. The arrays
        are the same either way: positions in the outputs' order (static).
      selves: during a block-by-block evaluation, the self covariances recorded for the
        leaf layers and where this kernel stands in the network (`kernels.stax.blocks.Selves`);
        ``None`` otherwise. Rules pass it on with `replace` and never read it.
      diagonal_batch: whether ``cov1``/``cov2`` hold each example's covariance with itself,
        ``(N1, ...)`` (``True``: always inside a network), or the covariance of every pair of
        examples of the batch, ``(N1, N1, ...)``, as ``kernel_fn(..., diagonal_batch=False)``
        returns them (neural-tangents' field of that name; static).
    """

    nngp: jax.Array
    ntk: jax.Array
    cov1: jax.Array
    cov2: Optional[jax.Array]
    full: bool = dataclasses.field(metadata=dict(static=True), default=False)
    channels: int = dataclasses.field(metadata=dict(static=True), default=1)
    is_gaussian: bool = dataclasses.field(metadata=dict(static=True), default=False)
    own_weights: bool = dataclasses.field(metadata=dict(static=True), default=False)
    mean1: Optional[jax.Array] = None
    mean2: Optional[jax.Array] = None
    pattern1: Optional[Any] = None
    pattern2: Optional[Any] = None
    mask1: Optional[jax.Array] = None
    mask2: Optional[jax.Array] = None
    selves: Optional[Any] = None
    diagonal_batch: bool = dataclasses.field(metadata=dict(static=True), default=True)
    x1_is_x2: bool = dataclasses.field(metadata=dict(static=True), default=False)
    is_reversed: bool = dataclasses.field(metadata=dict(static=True), default=False)
    odd_convolutions: bool = dataclasses.field(metadata=dict(static=True), default=False)
    axes: Optional[tuple] = dataclasses.field(metadata=dict(static=True), default=None)

    def replace(self, **changes) -> "Kernel":
        """`dataclasses.replace`, plus neural-tangents' ``shape1``/``shape2``: their batch sizes and
        positions are the arrays', so only the channel count (``channels``, which the standard
        parameterization's NTK reads) may differ from the kernel's own."""
        for name in ("shape1", "shape2"):
            given = changes.pop(name, None)
            if given is None:
                continue
            have, given, c = getattr(self, name), tuple(given), self.channel_axis
            if len(given) != len(have) or any(g != h for i, (g, h) in enumerate(zip(given, have)) if i != c):
                raise ValueError(f"Kernel.replace: argument `{name}` must be {have} but for its channel count "
                                 f"(axis {c}): the batch size and positions are the kernel's arrays'; "
                                 f"received {given}")
            if changes.setdefault("channels", given[c]) != given[c]:
                raise ValueError(f"Kernel.replace: argument `{name}` has {given[c]} channels, and "
                                 f"{changes['channels']} were given for the other batch or as `channels`: "
                                 "both batches' outputs have the same channels")
        return dataclasses.replace(self, **changes)

    @property
    def shape1(self) -> tuple:
        """The shape of the finite layer's outputs on the first batch, ``(N1, *spatial, channels)`` (in `axes`' layout)."""
        return self._shape(self._some_array().shape[0])

    @property
    def shape2(self) -> tuple:
        """The shape of the finite layer's outputs on the second batch, ``(N2, *spatial, channels)`` (in `axes`' layout)."""
        return self._shape(self._some_array().shape[1])

    def _shape(self, n: int) -> tuple:
        if self.axes is None:
            return (n,) + self._spatial() + (self.channels,)
        spatial = iter(self._spatial())
        return tuple(n if i == self.axes[0] else self.channels if i == self.axes[1] else next(spatial)
                     for i in range(self.spatial_ndim + 2))

    def _spatial(self) -> tuple:
        a = self._some_array()
        return tuple(a.shape[2::2]) if self.full else tuple(a.shape[2:])

    def _some_array(self):
        """The NNGP, or the NTK where ``get`` left the NNGP out: both have the same shape."""
        return self.nngp if self.nngp is not None else self.ntk

    # neural-tangents' field that a custom layer's rule may read (`kernels.stax.custom`): widekit's kernels
    # are always computed from inputs, never the inputs themselves.
    is_input = False

    @property
    def batch_axis(self) -> int:
        """The batch axis of the finite layer's outputs (neural-tangents' field of that name)."""
        return 0 if self.axes is None else self.axes[0]

    @property
    def diagonal_spatial(self) -> bool:
        """Whether only equal positions are kept (neural-tangents' field of that name)."""
        return not self.full and self.nngp.ndim > 2

    @property
    def channel_axis(self) -> int:
        """The channel axis of the finite layer's outputs (neural-tangents' field of that name)."""
        return self.spatial_ndim + 1 if self.axes is None else self.axes[1]

    @property
    def spatial_ndim(self) -> int:
        extra = self.nngp.ndim - 2
        return extra // 2 if self.full else extra

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.nngp.shape[2:2 + self.spatial_ndim])

    @property
    def cov2_or_cov1(self) -> jax.Array:
        return self.cov1 if self.cov2 is None else self.cov2

    @property
    def mean2_or_mean1(self) -> Optional[jax.Array]:
        return self.mean1 if self.mean2 is None else self.mean2

    @property
    def mask2_or_mask1(self) -> Optional[jax.Array]:
        return self.mask1 if self.mask2 is None else self.mask2

    def map_means(self, fn) -> "Kernel":
        """Applies ``fn`` to the per-position means ``(N, *S)``, where they are known."""
        if self.mean1 is None:
            return self
        return self.replace(mean1=fn(self.mean1), mean2=None if self.mean2 is None else fn(self.mean2))

    def with_zero_means(self) -> "Kernel":
        """Zero means at every position (the outputs of zero-mean weights: Dense, Conv, attention)."""
        def zeros(cov):
            return jnp.zeros(position_variances(cov, self.full, self.spatial_ndim).shape, cov.dtype)
        return self.replace(mean1=zeros(self.cov1), mean2=None if self.cov2 is None else zeros(self.cov2))

    def map_arrays(self, fn) -> "Kernel":
        """Applies ``fn(array, batch_ndim)`` to each array present: ``nngp``, ``ntk`` (two batch axes),
        ``cov1``, ``cov2`` (one, two without `diagonal_batch`)."""
        covs = 1 if self.diagonal_batch else 2
        ranks = {"nngp": 2, "ntk": 2, "cov1": covs, "cov2": covs}
        return self.replace(**{f: fn(getattr(self, f), b) for f, b in ranks.items() if getattr(self, f) is not None})

    def map_all(self, fn) -> "Kernel":
        """Applies ``fn`` (acting on trailing position axes) to every array."""
        return self.replace(
            nngp=fn(self.nngp),
            ntk=fn(self.ntk),
            cov1=fn(self.cov1),
            cov2=None if self.cov2 is None else fn(self.cov2),
        )


def input_kernel(x1: jax.Array, x2: Optional[jax.Array], full: bool) -> Kernel:
    """The kernel of the inputs themselves: channel-averaged inner products.

    Args:
      x1: ``(N1, *S, C)``.
      x2: ``(N2, *S, C)`` or ``None``.
      full: keep position pairs.
    """
    d = x1.ndim - 2
    channels = x1.shape[-1]

    def pair(a, b):
        # One matrix product then a transpose: XLA's CPU einsum with several free
        # axes was measured 20x slower on (N, 32, 32, 3) images.
        n1, n2, spatial = a.shape[0], b.shape[0], a.shape[1:-1]
        if full:
            prod = jnp.matmul(a.reshape(-1, channels), b.reshape(-1, channels).T, precision=HIGHEST)
            prod = prod.reshape((n1,) + spatial + (n2,) + spatial)
            order = (0, d + 1) + tuple(range(1, d + 1)) + tuple(range(d + 2, 2 * d + 2))
            return jnp.transpose(prod, order) / channels
        flat_a = jnp.moveaxis(a.reshape(n1, -1, channels), 1, 0)
        flat_b = jnp.moveaxis(b.reshape(n2, -1, channels), 1, 0)
        prod = jnp.matmul(flat_a, jnp.swapaxes(flat_b, -1, -2), precision=HIGHEST)  # (P, N1, N2)
        return jnp.moveaxis(prod, 0, -1).reshape((n1, n2) + spatial) / channels

    def self_cov(a):
        n, spatial = a.shape[0], a.shape[1:-1]
        flat = a.reshape(n, -1, channels)
        if full:
            return (jnp.matmul(flat, jnp.swapaxes(flat, -1, -2), precision=HIGHEST).reshape((n,) + spatial + spatial)
                    / channels)
        return jnp.sum(flat * flat, -1).reshape((n,) + spatial) / channels

    nngp = pair(x1, x1 if x2 is None else x2)
    if x2 is None:
        # The same bits as nngp's diagonal, so that correlation one is exact.
        cov1 = batch_diagonal(nngp)
    else:
        cov1 = self_cov(x1)
    return Kernel(
        nngp=nngp,
        ntk=jnp.zeros_like(nngp),
        cov1=cov1,
        cov2=None if x2 is None else self_cov(x2),
        full=full,
        channels=channels,
        mean1=x1.mean(-1),
        mean2=None if x2 is None else x2.mean(-1),
    )


def map_branches(fn, out, path: tuple = ()):
    """``fn(path, kernel)`` for each branch of a network's result, in the same structure.

    A network that ends in several branches (`FanOut`, `parallel` without a merge) gives one
    kernel per branch, as neural-tangents does: its rule returns a (nested) tuple of kernels,
    which come back as (nested) lists; ``path`` is a branch's index in them, ``()`` for a
    network with one output (then this is ``fn((), out)``).
    """
    if isinstance(out, Kernel):
        return fn(path, out)
    if not isinstance(out, (tuple, list)):
        raise TypeError(f"a network's kernel rule returned {type(out).__name__}; expected a Kernel or a tuple of them")
    return [map_branches(fn, o, path + (i,)) for i, o in enumerate(out)]


def branch_items(out) -> list:
    """``[(path, kernel), ...]`` of every branch of a network's result, depth first (`map_branches`)."""
    items = []
    map_branches(lambda path, k: items.append((path, k)), out)
    return items


def branch_at(result, path: tuple):
    """The part of a kernel_fn result (nested lists for a network ending in branches) at branch ``path``."""
    for i in path:
        result = result[i]
    return result


def batch_diagonal(cov: jax.Array) -> jax.Array:
    """``(N, N, ...)`` -> ``(N, ...)``: each example's covariance with itself."""
    return jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)


def branch_label(path: tuple) -> str:
    """How messages name a branch: ``""`` for a network with one output, ``" (branch 1.0)"``."""
    return f" (branch {'.'.join(map(str, path))})" if path else ""


def position_variances(cov: jax.Array, full: bool, d: int) -> jax.Array:
    """Per-position variances ``(N, *S)`` from a self-covariance ``cov``."""
    if not full or d == 0:
        return cov
    n, spatial = cov.shape[0], cov.shape[1:1 + d]
    size = 1
    for s in spatial:
        size *= s
    flat = cov.reshape(n, size, size)
    return jnp.diagonal(flat, axis1=1, axis2=2).reshape((n,) + spatial)


def to_neural_tangents_layout(array: jax.Array, batch_ndim: int, full: bool, d: int) -> jax.Array:
    """Reorders ``(B..., S_1..S_d, S'_1..S'_d)`` into neural-tangents' interleaved order."""
    if not full or d == 0:
        return array
    order = list(range(batch_ndim))
    for i in range(d):
        order += [batch_ndim + i, batch_ndim + d + i]
    return jnp.transpose(array, order)


def flip_parity(k: "Kernel") -> "Kernel":
    """`Kernel.odd_convolutions` after a weight-sharing convolution on ``k`` (on position pairs only)."""
    return k.replace(odd_convolutions=not k.odd_convolutions) if k.full and k.spatial_ndim else k


def majority_parity(ks) -> bool:
    """`Kernel.odd_convolutions` of a merge of ``ks``: more than half of them odd (neural-tangents)."""
    return 2 * sum(bool(k.odd_convolutions) for k in ks) > len(ks)


def reverse_spatial(array: jax.Array, batch_ndim: int) -> jax.Array:
    """Reverses the order of the position-pair axes of an interleaved array (``(B..., S_1, S'_1, ...)``)."""
    d = (array.ndim - batch_ndim) // 2
    order = list(range(batch_ndim))
    for i in reversed(range(d)):
        order += [batch_ndim + 2 * i, batch_ndim + 2 * i + 1]
    return jnp.transpose(array, order)


def from_neural_tangents_layout(array: jax.Array, batch_ndim: int) -> jax.Array:
    """The inverse of `to_neural_tangents_layout` for position pairs: ``(B..., S_1, S'_1, ...)`` ->
    ``(B..., S_1..S_d, S'_1..S'_d)``, ``d`` read off the array's rank."""
    d = (array.ndim - batch_ndim) // 2
    order = list(range(batch_ndim)) + [batch_ndim + 2 * i for i in range(d)] \
        + [batch_ndim + 2 * i + 1 for i in range(d)]
    return jnp.transpose(array, order)
