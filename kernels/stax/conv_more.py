"""Two more convolutions with neural-tangents 0.6.5's names: `ConvTranspose` and `ConvLocal`.

Both are linear in their inputs with independent Gaussian weights, so their kernels follow from
one fact about covariances (Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs",
eq. 7): two outputs correlate through the weights they share, a weight entering both with the
same input position.

* A transposed convolution (`jax.lax.conv_transpose`) is an ordinary stride-one convolution of the
  input dilated by the strides (``s - 1`` zeros between positions) and padded (XLA's rule for the
  forward convolution's padding). Its kernel is therefore `kernels.spatial.conv_positions` of the
  dilated, padded covariance, where the inserted zeros have zero covariance. CIRCULAR padding
  wraps the VALID output around a torus of ``n * s`` positions (position ``v`` lands on
  ``(v - c) mod (n s)``, ``c = max(k - s, 0) // 2``), as neural-tangents defines it; the wrapped
  positions come from inputs ``n`` apart, which share no weight, so the equal-position kernel
  wraps as the outputs do.
* A locally connected layer (a convolution with unshared weights; Novak et al. 2019, §3.1 and
  its "LCN") has independent weights at every output position: outputs at different positions
  are uncorrelated, and at equal positions they are those of `Conv`. Only the input's equal
  positions are read; position pairs, where a later layer mixes positions, are zero off the
  diagonal (bias included).

The NTK follows the affine rule of `kernels.stax.linear` (Jacot et al. 2018, Thm. 1; the
``standard`` parameterization of Sohl-Dickstein et al. 2020 with its width scalings ``s``), with
neural-tangents' fan-in ``C prod(filter_shape)`` for both layers (for a strided transposed
convolution more than the number of weights an output sees).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import spatial
from kernels.checks import argument_error, positive_int
from kernels.kernel import HIGHEST, Kernel, flip_parity
from kernels.stax import masking
from kernels.stax.layer import Requires, describe, leaf
from kernels.stax.linear import (_affine_rule, _check_affine, _check_padding, _check_parameterization,
                                 _circular_pad, _conv_geometry, _scales, _weights, _window_args)

# Spatial letters of neural-tangents' default dimension numbers: the alphabet without N, C, I, O.
_SPATIAL_LETTERS = "ABDEFGHJKLMPQRSTUVWXYZ"


class _Layout:
    """A layer's ``dimension_numbers``: where its filter and stride sizes go, how its output axes are ordered.

    ``filter_shape`` and ``strides`` are given in the order of the filter's (``rhs_spec``'s) spatial
    letters, as `jax.lax` reads them; the kernel works in the inputs' axis order (``lhs_spec``'s), and
    its output's spatial axes come in ``out_spec``'s order.
    """

    def __init__(self, name: str, d: int, dimension_numbers):
        if dimension_numbers is None:
            if d > len(_SPATIAL_LETTERS):  # jax.lax names each spatial axis by a letter
                raise argument_error(name, "filter_shape", f"at most {len(_SPATIAL_LETTERS)} spatial axes", d)
            letters = _SPATIAL_LETTERS[:d]
            dimension_numbers = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
        self.specs = _check_dimension_numbers(name, d, dimension_numbers)
        lhs, rhs, out = self.specs
        self.rhs_letters = [c for c in rhs if c not in "IO"]
        self.lhs_letters = list(lhs[1:-1])
        # out position j holds lhs position out_from_lhs[j]
        self.out_from_lhs = tuple(self.lhs_letters.index(c) for c in out[1:-1])

    def in_lhs_order(self, sizes) -> tuple:
        """Per-axis sizes given in the filter's letter order, reordered to the inputs' axis order."""
        return tuple(sizes[self.rhs_letters.index(c)] for c in self.lhs_letters)

    def to_out_order(self, sizes) -> tuple:
        """Per-axis values in the inputs' axis order, reordered to the outputs'."""
        return tuple(sizes[i] for i in self.out_from_lhs)

    def permute_positions(self, a, full: bool, d: int):
        """``a``'s trailing position axes (``(..., *S, *S')`` or ``(..., *S)``) in the outputs' order."""
        if self.out_from_lhs == tuple(range(d)):
            return a
        lead = a.ndim - (2 * d if full else d)
        groups = [lead + i for i in self.out_from_lhs]
        if full:
            groups += [lead + d + i for i in self.out_from_lhs]
        return jnp.transpose(a, tuple(range(lead)) + tuple(groups))


def _check_dimension_numbers(name, d, dimension_numbers):
    """``(lhs_spec, rhs_spec, out_spec)`` checked: lax's letter strings, inputs and outputs batch first and
    channels last (the layout every other widekit layer's kernel assumes; a filter layout and an order of
    the spatial axes are free)."""
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
    for label, spec in (("lhs_spec", lhs), ("out_spec", out)):
        if spec[0] != "N" or spec[-1] != "C":
            raise argument_error(name, "dimension_numbers", f"a {label} with N first and C last (batch first, "
                                 "channels last: the kernels of the layers around it assume that layout, so "
                                 "another one would be computed as if it were this one); transpose the inputs "
                                 "instead", dimension_numbers)
    return tuple(dimension_numbers)


class _Setup(NamedTuple):
    """A checked layer's arguments: ``filter_shape``/``strides`` in the filter's letter order (as given),
    ``filter_lhs``/``strides_lhs`` in the inputs' axis order; ``width = out_chan * s_out``;
    ``apply_padding`` is what `jax.lax` is given (CIRCULAR pads or wraps around it)."""
    name: str
    filter_shape: tuple
    strides: tuple
    padding: str
    layout: _Layout
    s_in: int
    width: int
    filter_lhs: tuple
    strides_lhs: tuple
    apply_padding: str


def _arguments(layer_name, out_chan, filter_shape, strides, padding, W_std, b_std, dimension_numbers,
               parameterization, s):
    """The checked arguments shared by both layers, as a `_Setup`."""
    scaled = tuple(s) != (1, 1) if isinstance(s, (tuple, list)) else True
    name = describe(layer_name, out_chan=out_chan,
                    filter_shape=tuple(filter_shape) if isinstance(filter_shape, list) else filter_shape,
                    strides=strides,
                    padding=padding, W_std=W_std, b_std=b_std, parameterization=parameterization,
                    **(dict(dimension_numbers=dimension_numbers) if dimension_numbers is not None else {}),
                    **(dict(s=s) if scaled else {}))
    if not isinstance(filter_shape, (tuple, list)):
        raise argument_error(name, "filter_shape", "a tuple of positive ints, one per spatial axis",
                             filter_shape, TypeError)
    _check_padding(name, padding)
    _check_parameterization(name, parameterization)
    _check_affine(name, out_chan, W_std, b_std)
    filter_shape, strides = _window_args(name, filter_shape, strides, (1,) * len(filter_shape))
    if not isinstance(s, (tuple, list)) or len(s) != 2:
        raise argument_error(name, "s", "a pair of positive ints (s_in, s_out)", s, TypeError)
    s_in, s_out = (positive_int(name, "s", v) for v in s)
    if scaled and parameterization != "standard":
        raise argument_error(name, "s", "(1, 1) with parameterization='ntk' (width scalings belong to the "
                             "standard parameterization)", s)
    layout = _Layout(name, len(filter_shape), dimension_numbers)
    return _Setup(name, filter_shape, strides, str(padding), layout, s_in, out_chan * s_out,  # Padding as its string
                  layout.in_lhs_order(filter_shape), layout.in_lhs_order(strides),
                  "VALID" if padding == "CIRCULAR" else str(padding))


def _along(a, axis: int, matrix):
    """``a`` with ``matrix`` (out x in) applied along ``axis``."""
    m = jnp.asarray(matrix, a.dtype)
    return jnp.moveaxis(jnp.tensordot(a, m, axes=[[axis], [1]], precision=HIGHEST), -1, axis)


def _transpose_padding(k: int, s: int, padding: str) -> tuple:
    """(low, high) zeros that `jax.lax.conv_transpose` adds to the dilated input of one axis (XLA's rule
    for the transposed convolution of a forward one with this ``padding``; CIRCULAR computes VALID first)."""
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    return low, total - low


def _transpose_size(n: int, k: int, s: int, padding: str) -> int:
    """Output length of a transposed convolution of ``n`` positions."""
    return n * s if padding in ("SAME", "CIRCULAR") else n * s + max(k - s, 0)


def _wrap_matrix(n: int, k: int, s: int) -> np.ndarray:
    """``R[o, v]``: the VALID transposed output ``v`` lands on the CIRCULAR output ``o`` (neural-tangents'
    torus: ``o = (v - c) mod (n s)``, ``c = max(k - s, 0) // 2``)."""
    size, valid = n * s, _transpose_size(n, k, s, "VALID")
    shift = (valid - size) // 2
    r = np.zeros((size, valid))
    r[(np.arange(valid) - shift) % size, np.arange(valid)] = 1.
    return r


def _position_axes(a, full: bool, d: int, i: int) -> tuple:
    """The axes of spatial axis ``i`` among ``a``'s trailing position axes."""
    return (a.ndim - 2 * d + i, a.ndim - d + i) if full else (a.ndim - d + i,)


def _transpose_positions(a, full: bool, d: int, sizes, filter_shape, strides, padding: str):
    """Covariance after a transposed convolution's spatial mixing (before the weights' variance):
    the dilated, padded covariance through a stride-one VALID convolution, wrapped for CIRCULAR."""
    config = [(0, 0, 0)] * a.ndim
    for i, (k, s) in enumerate(zip(filter_shape, strides)):
        low, high = _transpose_padding(k, s, "VALID" if padding == "CIRCULAR" else padding)
        for axis in _position_axes(a, full, d, i):
            config[axis] = (low, high, s - 1)
    a = lax.pad(a, jnp.zeros((), a.dtype), config)
    a = spatial.conv_positions(a, full, d, filter_shape, (1,) * d, "VALID")
    if padding == "CIRCULAR":
        for i, (n, k, s) in enumerate(zip(sizes, filter_shape, strides)):
            for axis in _position_axes(a, full, d, i):
                a = _along(a, axis, _wrap_matrix(n, k, s))
    return a


def ConvTranspose(out_chan: int, filter_shape, strides=None, padding: str = "VALID", W_std: float = 1.,
                  b_std=None, dimension_numbers=None, parameterization: str = "ntk", s=(1, 1)):
    """Transposed convolution (`jax.lax.conv_transpose`) over any number of spatial axes.

    Args:
      out_chan: output channels (times ``s[1]`` in the standard parameterization).
      filter_shape: spatial filter shape, in the order of ``dimension_numbers``' filter letters.
      strides: the input's dilation per spatial axis (that order too); defaults to ones.
      padding: ``"VALID"`` (``n s + max(k - s, 0)`` outputs per axis), ``"SAME"`` (``n s``) or
        ``"CIRCULAR"`` (``n s`` on a torus: the VALID output wrapped around, see the module docstring).
      W_std, b_std, parameterization, s: as in `Dense`; ``fan_in = C prod(filter_shape)``, as
        neural-tangents has it.
      dimension_numbers: ``None`` (channels last) or ``(lhs_spec, rhs_spec, out_spec)`` as `jax.lax`
        reads them; inputs and outputs must be batch first and channels last, their spatial axes and the
        filter's layout are free (the kernel's spatial axes follow ``out_spec``).

    Kernel: ``K'[o, o'] = W^2 mean_t D[o + t, o' + t] + b^2`` with ``D`` the input covariance dilated by
    the strides and padded as the inputs are (Novak et al. 2019, eq. 7, on the dilated input).
    """
    name, filter_shape, strides, padding, layout, s_in, width, filter_lhs, strides_lhs, apply_padding = _arguments(
        "ConvTranspose", out_chan, filter_shape, strides, padding, W_std, b_std, dimension_numbers,
        parameterization, s)
    d, rhs_spec = len(filter_shape), layout.specs[1]

    def out_spatial(input_shape):
        return layout.to_out_order([_transpose_size(n, k, st, padding)
                                    for n, k, st in zip(input_shape[1:-1], filter_lhs, strides_lhs)])

    def init_fn(rng, input_shape):
        _check_rank(name, input_shape, d)
        channels = input_shape[-1]
        shape = tuple(width if c == "O" else channels if c == "I" else filter_shape[layout.rhs_letters.index(c)]
                      for c in rhs_spec)
        params = _weights(rng, shape, channels * math.prod(filter_shape) / s_in, W_std, b_std, width,
                          parameterization)
        return (input_shape[0], *out_spatial(input_shape), width), params

    def apply_fn(params, x, **kwargs):
        W, b = params
        w_scale, b_scale = _scales(x.shape[-1] * math.prod(filter_shape), W_std, b_std, parameterization)
        out = lax.conv_transpose(x, W.astype(x.dtype), strides, apply_padding, dimension_numbers=layout.specs)
        if padding == "CIRCULAR":
            sizes = layout.to_out_order(x.shape[1:-1])
            for j, (n, k, st) in enumerate(zip(sizes, layout.to_out_order(filter_lhs),
                                               layout.to_out_order(strides_lhs))):
                out = _along(out, 1 + j, _wrap_matrix(n, k, st))
        out = (w_scale / math.sqrt(s_in)) * out  # s_in is 1 in the ntk parameterization
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        def mix(a):
            a = _transpose_positions(a, k.full, d, k.spatial_shape, filter_lhs, strides_lhs, padding)
            return layout.permute_positions(a, k.full, d)
        return flip_parity(_affine_rule(k, mix, k.channels * math.prod(filter_shape) / s_in, W_std, b_std,
                                        parameterization, width))

    # An output is masked where any masked input reaches it (masking.transposed_reach).
    return leaf(name, init_fn, apply_fn, rule, requires=Requires(spatial_ndim=d), masks=masking.Masking(
        masking.transposed_reach(filter_lhs, strides_lhs, padding, layout.out_from_lhs)))


def _equal_positions(a, d: int):
    """``(..., *S, *S')`` -> ``(..., *S)``: the covariances of equal positions."""
    lead, shape = a.shape[:a.ndim - 2 * d], a.shape[a.ndim - d:]
    size = math.prod(shape)
    return jnp.diagonal(a.reshape(lead + (size, size)), axis1=-2, axis2=-1).reshape(lead + shape)


def _diagonal_pairs(a, d: int):
    """``(..., *S)`` -> ``(..., *S, *S')``: zero covariance between different positions."""
    lead, shape = a.shape[:a.ndim - d], a.shape[a.ndim - d:]
    size = math.prod(shape)
    flat = a.reshape(lead + (size, 1)) * jnp.eye(size, dtype=a.dtype)
    return flat.reshape(lead + shape + shape)


def ConvLocal(out_chan: int, filter_shape, strides=None, padding: str = "VALID", W_std: float = 1.,
              b_std=None, dimension_numbers=None, parameterization: str = "ntk", s=(1, 1)):
    """Locally connected layer: a convolution with separate weights (and biases) at every output position
    (`jax.lax.conv_general_dilated_local`), over any number of spatial axes.

    Args: as `ConvTranspose`; ``padding`` is ``"VALID"``, ``"SAME"`` or ``"CIRCULAR"`` as in `Conv`.
    Parameters, as neural-tangents draws them: weights ``(*out_spatial, C prod(filter_shape), out)`` in
    ``rhs_spec``'s order (the input window flattened channel first, as `jax.lax` orders it) and biases
    ``(*out_spatial, out)``.

    Kernel (Novak et al. 2019, LCN): ``K'[p, p] = W^2 mean_t K[s p + t, s p + t] + b^2``, the equal
    positions of `Conv`'s, and ``K'[p, p'] = 0`` for ``p != p'``; the NTK likewise.
    """
    name, filter_shape, strides, padding, layout, s_in, width, filter_lhs, strides_lhs, apply_padding = _arguments(
        "ConvLocal", out_chan, filter_shape, strides, padding, W_std, b_std, dimension_numbers,
        parameterization, s)
    d, rhs_spec = len(filter_shape), layout.specs[1]
    shape_padding = "SAME" if padding == "CIRCULAR" else padding

    def out_spatial_lhs(input_shape):
        return [spatial.output_size(n, k, st, shape_padding)
                for n, k, st in zip(input_shape[1:-1], filter_lhs, strides_lhs)]

    def init_fn(rng, input_shape):
        _check_rank(name, input_shape, d)
        sizes = out_spatial_lhs(input_shape)
        if min(sizes) < 1:
            raise ValueError(f"{name}: filter {filter_shape} is larger than the VALID input's spatial shape "
                             f"{tuple(input_shape[1:-1])}")
        fan_in = input_shape[-1] * math.prod(filter_shape)
        shape = tuple(width if c == "O" else fan_in if c == "I" else sizes[layout.lhs_letters.index(c)]
                      for c in rhs_spec)
        out_sizes = layout.to_out_order(sizes)
        W, _ = _weights(rng, shape, fan_in / s_in, W_std, None, width, parameterization)
        b = None
        if b_std is not None:  # one bias per output position, from the key _weights gives biases
            b = jax.random.normal(jax.random.split(rng)[1], tuple(out_sizes) + (width,), W.dtype)
            b = b * b_std if parameterization == "standard" else b
        return (input_shape[0], *out_sizes, width), (W, b)

    def apply_fn(params, x, **kwargs):
        W, b = params
        w_scale, b_scale = _scales(x.shape[-1] * math.prod(filter_shape), W_std, b_std, parameterization)
        if padding == "CIRCULAR":
            x = _circular_pad(x, filter_lhs, strides_lhs)
        out = lax.conv_general_dilated_local(x, W.astype(x.dtype), strides, apply_padding, filter_shape,
                                             dimension_numbers=layout.specs, precision=HIGHEST)
        out = (w_scale / math.sqrt(s_in)) * out
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        _conv_geometry(name, k, filter_lhs, strides_lhs, padding)
        equal = k.map_all(lambda a: _equal_positions(a, d)).replace(full=False) if k.full else k
        out = _affine_rule(equal, lambda a: spatial.conv_positions(a, False, d, filter_lhs, strides_lhs, padding),
                           k.channels * math.prod(filter_shape) / s_in, W_std, b_std, parameterization, width)
        if k.full:
            out = out.map_all(lambda a: _diagonal_pairs(a, d)).replace(full=True)
        out = out.map_all(lambda a: layout.permute_positions(a, k.full, d))
        return out.map_means(lambda m: layout.permute_positions(m, False, d))

    # An output is masked where its window's centre is (masking.window_centres).
    return leaf(name, init_fn, apply_fn, rule, requires=Requires(spatial_ndim=d), masks=masking.Masking(
        masking.window_centres(filter_lhs, strides_lhs, padding, layout.out_from_lhs)))


def _check_rank(name, input_shape, d):
    if len(input_shape) != d + 2:
        raise ValueError(f"{name}: expects inputs of rank {d + 2}, (N, {d} spatial axes, C); got shape "
                         f"{tuple(input_shape)}")
