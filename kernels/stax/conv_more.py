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
from kernels.checks import argument_error
from kernels.kernel import HIGHEST, Kernel, flip_parity
from kernels.stax import masking
from kernels.stax.layer import Requires, describe, leaf
from kernels.stax.layout import ConvSpecs, with_layout
from kernels.stax.linear import (_affine_rule, _check_affine, _check_padding, _check_parameterization,
                                 _circular_pad, _conv_geometry, _scales, _weights, _window_args,
                                 named_scalings, width_scalings)

class _Setup(NamedTuple):
    """A checked layer's arguments: ``filter_shape``/``strides`` in the filter's letter order (as given),
    ``filter_lhs``/``strides_lhs`` in the inputs' axis order; ``width = out_chan * s_out``;
    ``apply_padding`` is what `jax.lax` is given (CIRCULAR pads or wraps around it)."""
    name: str
    filter_shape: tuple
    strides: tuple
    padding: str
    layout: ConvSpecs
    s_in: int
    width: int
    filter_lhs: tuple
    strides_lhs: tuple
    apply_padding: str


def _arguments(layer_name, out_chan, filter_shape, strides, padding, W_std, b_std, dimension_numbers,
               parameterization, s):
    """The checked arguments shared by both layers, as a `_Setup`."""
    name = describe(layer_name, out_chan=out_chan,
                    filter_shape=tuple(filter_shape) if isinstance(filter_shape, list) else filter_shape,
                    strides=strides,
                    padding=padding, W_std=W_std, b_std=b_std, parameterization=parameterization,
                    **(dict(dimension_numbers=dimension_numbers) if dimension_numbers is not None else {}),
                    **named_scalings(s))
    if not isinstance(filter_shape, (tuple, list)):
        raise argument_error(name, "filter_shape", "a tuple of positive ints, one per spatial axis",
                             filter_shape, TypeError)
    _check_padding(name, padding)
    _check_parameterization(name, parameterization)
    _check_affine(name, out_chan, W_std, b_std)
    filter_shape, strides = _window_args(name, filter_shape, strides, (1,) * len(filter_shape))
    s_in, s_out = width_scalings(name, s, parameterization)
    layout = ConvSpecs(name, len(filter_shape), dimension_numbers)
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
        reads them, any layout of inputs, filters and outputs (`kernels.stax.layout`: the layer is the
        one on ``(N, *S, C)`` inputs between transpositions; the kernel's spatial axes follow ``out_spec``).

    Kernel: ``K'[o, o'] = W^2 mean_t D[o + t, o' + t] + b^2`` with ``D`` the input covariance dilated by
    the strides and padded as the inputs are (Novak et al. 2019, eq. 7, on the dilated input).
    """
    name, filter_shape, strides, padding, layout, s_in, width, filter_lhs, strides_lhs, apply_padding = _arguments(
        "ConvTranspose", out_chan, filter_shape, strides, padding, W_std, b_std, dimension_numbers,
        parameterization, s)
    d, rhs_spec = len(filter_shape), layout.specs[1]

    def out_spatial(input_shape):  # (N, *S, C) inputs here, and outputs in their spatial order
        return [_transpose_size(n, k, st, padding) for n, k, st in zip(input_shape[1:-1], filter_lhs, strides_lhs)]

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
        out = lax.conv_transpose(x, W.astype(x.dtype), strides, apply_padding, dimension_numbers=layout.canonical)
        if padding == "CIRCULAR":
            for j, (n, k, st) in enumerate(zip(x.shape[1:-1], filter_lhs, strides_lhs)):
                out = _along(out, 1 + j, _wrap_matrix(n, k, st))
        out = (w_scale / math.sqrt(s_in)) * out  # s_in is 1 in the ntk parameterization
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        def mix(a):
            return _transpose_positions(a, k.full, d, k.spatial_shape, filter_lhs, strides_lhs, padding)
        return flip_parity(_affine_rule(k, mix, k.channels * math.prod(filter_shape) / s_in, W_std, b_std,
                                        parameterization, width))

    # An output is masked where any masked input reaches it (masking.transposed_reach).
    return with_layout(layout.layout, lambda perm: leaf(
        name, init_fn, apply_fn, rule, requires=Requires(spatial_ndim=d),
        masks=masking.Masking(masking.transposed_reach(filter_lhs, strides_lhs, padding))))


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
    ``(*out_spatial, out)`` in ``out_spec``'s order (without its unit batch axis).

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
        W, _ = _weights(rng, shape, fan_in / s_in, W_std, None, width, parameterization)
        b = None
        if b_std is not None:  # one bias per output position, from the key _weights gives biases
            b = jax.random.normal(jax.random.split(rng)[1], bias_shape(sizes), W.dtype)
            b = b * b_std if parameterization == "standard" else b
        return (input_shape[0], *sizes, width), (W, b)

    out_letters = [c for c in layout.specs[2] if c != "N"]  # the biases' axes, as neural-tangents has them

    def bias_shape(sizes):
        return tuple(width if c == "C" else sizes[layout.lhs_letters.index(c)] for c in out_letters)

    # biases -> (*S, C) in the inputs' spatial order (the canonical layer's outputs)
    bias_perm = tuple(out_letters.index(c) for c in layout.lhs_letters + ["C"])

    def apply_fn(params, x, **kwargs):
        W, b = params
        w_scale, b_scale = _scales(x.shape[-1] * math.prod(filter_shape), W_std, b_std, parameterization)
        if padding == "CIRCULAR":
            x = _circular_pad(x, filter_lhs, strides_lhs)
        out = lax.conv_general_dilated_local(x, W.astype(x.dtype), strides, apply_padding, filter_shape,
                                             dimension_numbers=layout.canonical, precision=HIGHEST)
        out = (w_scale / math.sqrt(s_in)) * out
        return out if b is None else out + b_scale * jnp.transpose(b, bias_perm)

    def rule(k: Kernel) -> Kernel:
        _conv_geometry(name, k, filter_lhs, strides_lhs, padding)
        equal = k.map_all(lambda a: _equal_positions(a, d)).replace(full=False) if k.full else k
        out = _affine_rule(equal, lambda a: spatial.conv_positions(a, False, d, filter_lhs, strides_lhs, padding),
                           k.channels * math.prod(filter_shape) / s_in, W_std, b_std, parameterization, width)
        if k.full:
            out = out.map_all(lambda a: _diagonal_pairs(a, d)).replace(full=True)
        return out

    # An output is masked where its window's centre is (masking.window_centres).
    return with_layout(layout.layout, lambda perm: leaf(
        name, init_fn, apply_fn, rule, requires=Requires(spatial_ndim=d),
        masks=masking.Masking(masking.window_centres(filter_lhs, strides_lhs, padding))))


def _check_rank(name, input_shape, d):
    if len(input_shape) != d + 2:
        raise ValueError(f"{name}: expects inputs of rank {d + 2}, (N, {d} spatial axes, C); got shape "
                         f"{tuple(input_shape)}")
