"""Linear layers: Dense, Conv, pooling, Flatten, Identity, LayerNorm.

Kernel rules follow Lee et al. 2018 (eq. 4, NNGP), Jacot et al. 2018 (Thm. 1, NTK),
Novak et al. 2019 (convolutions and pooling, eqs. 7-8) and Arora et al. 2019
(CNTK, §4). Finite networks follow neural-tangents' conventions so that they
converge to these kernels: in the ``ntk`` parameterization weights are standard
normal and scaled by ``W_std / sqrt(fan_in)`` in the forward pass; in the
``standard`` one they are drawn with that variance.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels import spatial
from kernels.kernel import Kernel, position_variances
from kernels.stax.layer import (describe, keep_requirement, leaf, needs_diagonal, needs_pairs,
                                spatial_description)

PARAMETERIZATIONS = ("ntk", "standard")


def _check_parameterization(name, parameterization):
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"{name}: parameterization={parameterization!r}; expected one of {PARAMETERIZATIONS}")


def _affine_rule(k: Kernel, mix, fan_in: int, W_std, b_std, parameterization, channels) -> Kernel:
    """NNGP and NTK after a linear spatial mixing ``mix`` (identity for Dense) and weights.

    ntk:      nngp' = W^2 mix(nngp) + b^2,  ntk' = mix(W^2 ntk + W^2 nngp) + b^2
    standard: nngp' = W^2 mix(nngp) + b^2,  ntk' = mix(W^2 ntk + fan_in nngp) + [bias] 1

    (Jacot et al. 2018, Thm. 1; Sohl-Dickstein et al. 2020 for ``standard``). ``mix`` is
    linear, so the NTK mixes one sum rather than reusing ``mix(nngp)``: with two
    consumers of one convolution XLA materialized every shifted copy of its input
    (a first convolution of a 32x32 Myrtle kernel: 195 ms before, 50 ms after, CPU).
    """
    b2 = 0. if b_std is None else b_std ** 2
    if parameterization == "ntk":
        grad_scale, grad_bias = W_std ** 2, b2
    else:
        grad_scale, grad_bias = fan_in, (0. if b_std is None else 1.)

    def covariance(a):
        return W_std ** 2 * mix(a) + b2

    return k.replace(
        nngp=covariance(k.nngp),
        ntk=mix(W_std ** 2 * k.ntk + grad_scale * k.nngp) + grad_bias,
        cov1=covariance(k.cov1),
        cov2=None if k.cov2 is None else covariance(k.cov2),
        channels=channels, is_gaussian=True)


def _weights(key, shape, fan_in, W_std, b_std, out, parameterization):
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is on
    k1, k2 = jax.random.split(key)
    W = jax.random.normal(k1, shape, dtype)
    b = None if b_std is None else jax.random.normal(k2, (out,), dtype)
    if parameterization == "standard":
        W = W * (W_std / math.sqrt(fan_in))
        b = None if b is None else b * b_std
    return W, b


def _scales(fan_in, W_std, b_std, parameterization):
    if parameterization == "ntk":
        return W_std / math.sqrt(fan_in), (0. if b_std is None else b_std)
    return 1., 1.


def Dense(out_dim: int, W_std: float = 1., b_std=None, batch_axis: int = 0, channel_axis: int = -1,
          parameterization: str = "ntk"):
    """Fully connected layer acting on the last (channel) axis.

    Args:
      out_dim: output width.
      W_std: weight standard deviation (times ``1/sqrt(fan_in)``).
      b_std: bias standard deviation; ``None`` for no bias.
      parameterization: ``"ntk"`` or ``"standard"`` (Sohl-Dickstein et al. 2020).
    """
    name = describe("Dense", out_dim=out_dim, W_std=W_std, b_std=b_std, parameterization=parameterization)
    _check_parameterization(name, parameterization)
    if batch_axis != 0 or channel_axis not in (-1,):
        raise ValueError(f"{name}: only batch_axis=0 and channel_axis=-1 are supported")

    def init_fn(rng, input_shape):
        fan_in = input_shape[-1]
        params = _weights(rng, (fan_in, out_dim), fan_in, W_std, b_std, out_dim, parameterization)
        return tuple(input_shape[:-1]) + (out_dim,), params

    def apply_fn(params, x, **kwargs):
        W, b = params
        w_scale, b_scale = _scales(x.shape[-1], W_std, b_std, parameterization)
        out = w_scale * (x @ W)
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        return _affine_rule(k, lambda a: a, k.channels, W_std, b_std, parameterization, out_dim)

    return leaf(name, init_fn, apply_fn, rule)


def _conv_geometry(name, k: Kernel, filter_shape, strides, padding):
    d = len(filter_shape)
    if k.spatial_ndim != d:
        raise ValueError(f"{name}: a {d}-D filter needs inputs of rank {d + 2} (N, {d} spatial axes, C); "
                         f"got inputs of shape {spatial_description(k)}")
    if padding == "VALID":
        for size, f in zip(k.spatial_shape, filter_shape):
            if f > size:
                raise ValueError(f"{name}: filter {tuple(filter_shape)} is larger than the VALID input's "
                                 f"spatial shape {k.spatial_shape} (inputs {spatial_description(k)})")


def _check_padding(name, padding):
    if padding not in spatial.PADDINGS:
        raise ValueError(f"{name}: padding={padding!r}; expected one of {spatial.PADDINGS}")


def _window_args(name, window_shape, strides, default_strides):
    window_shape = tuple(int(w) for w in window_shape)
    strides = default_strides if strides is None else tuple(int(s) for s in strides)
    if len(strides) != len(window_shape):
        raise ValueError(f"{name}: strides {strides} and window {window_shape} differ in length")
    if any(w < 1 for w in window_shape) or any(s < 1 for s in strides):
        raise ValueError(f"{name}: window and strides must be positive; got {window_shape}, {strides}")
    return window_shape, strides


def _circular_pad(x, window_shape, strides):
    widths = [(0, 0)]
    for size, w, s in zip(x.shape[1:-1], window_shape, strides):
        widths.append(spatial.pad_amounts(size, w, s, "SAME"))
    return jnp.pad(x, widths + [(0, 0)], mode="wrap")


def Conv(out_chan: int, filter_shape, strides=None, padding: str = "VALID", W_std: float = 1., b_std=None,
         dimension_numbers=None, parameterization: str = "ntk"):
    """Convolution over 1, 2 or 3 spatial axes of ``(N, *S, C)`` inputs.

    Args:
      out_chan: output channels.
      filter_shape: spatial filter shape, e.g. ``(3, 3)``.
      strides: defaults to ones.
      padding: ``"VALID"``, ``"SAME"`` or ``"CIRCULAR"`` (periodic).
      W_std, b_std, parameterization: as in `Dense`; ``fan_in = C * prod(filter_shape)``.

    Kernel: ``K'[p, p'] = W^2 mean_t K[s p + t, s p' + t] + b^2`` (Novak et al. 2019, eq. 7).
    """
    name = describe("Conv", out_chan=out_chan, filter_shape=tuple(filter_shape), strides=strides,
                    padding=padding, W_std=W_std, b_std=b_std, parameterization=parameterization)
    _check_padding(name, padding)
    _check_parameterization(name, parameterization)
    filter_shape, strides = _window_args(name, filter_shape, strides, (1,) * len(filter_shape))
    if not 1 <= len(filter_shape) <= 3:
        raise ValueError(f"{name}: filters of 1, 2 or 3 spatial dimensions are supported")
    if dimension_numbers is not None:
        raise ValueError(f"{name}: only channels-last inputs (dimension_numbers=None) are supported")
    d = len(filter_shape)
    spatial_letters = "DHW"[3 - d:]
    numbers = ("N" + spatial_letters + "C", spatial_letters + "IO", "N" + spatial_letters + "C")

    def init_fn(rng, input_shape):
        if len(input_shape) != d + 2:
            raise ValueError(f"{name}: expects inputs of rank {d + 2}, got shape {tuple(input_shape)}")
        fan_in = input_shape[-1] * math.prod(filter_shape)
        params = _weights(rng, filter_shape + (input_shape[-1], out_chan), fan_in, W_std, b_std, out_chan,
                          parameterization)
        out_spatial = [spatial.output_size(s, f, st, padding)
                       for s, f, st in zip(input_shape[1:-1], filter_shape, strides)]
        return (input_shape[0], *out_spatial, out_chan), params

    def apply_fn(params, x, **kwargs):
        W, b = params
        pad = padding
        if padding == "CIRCULAR":
            x, pad = _circular_pad(x, filter_shape, strides), "VALID"
        w_scale, b_scale = _scales(x.shape[-1] * math.prod(filter_shape), W_std, b_std, parameterization)
        out = lax.conv_general_dilated(x, W.astype(x.dtype), strides, pad, dimension_numbers=numbers)
        out = w_scale * out
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        _conv_geometry(name, k, filter_shape, strides, padding)
        fan_in = k.channels * math.prod(filter_shape)
        return _affine_rule(k, lambda a: spatial.conv_positions(a, k.full, d, filter_shape, strides, padding),
                            fan_in, W_std, b_std, parameterization, out_chan)

    return leaf(name, init_fn, apply_fn, rule)


def _pool(layer_name, window_shape, strides, padding, normalize_edges, average):
    name = describe(layer_name, window_shape=tuple(window_shape), strides=strides, padding=padding)
    _check_padding(name, padding)
    window_shape, strides = _window_args(name, window_shape, strides, (1,) * len(window_shape))
    d = len(window_shape)

    def init_fn(rng, input_shape):
        out_spatial = [spatial.output_size(s, w, st, padding)
                       for s, w, st in zip(input_shape[1:-1], window_shape, strides)]
        return (input_shape[0], *out_spatial, input_shape[-1]), ()

    def apply_fn(params, x, **kwargs):
        pad = padding
        if padding == "CIRCULAR":
            x, pad = _circular_pad(x, window_shape, strides), "VALID"
        dims, steps = (1,) + window_shape + (1,), (1,) + strides + (1,)
        out = lax.reduce_window(x, 0., lax.add, dims, steps, pad)
        if not average:
            return out
        if normalize_edges and pad == "SAME":
            counts = lax.reduce_window(jnp.ones_like(x), 0., lax.add, dims, steps, pad)
            return out / counts
        return out / math.prod(window_shape)

    def rule(k: Kernel) -> Kernel:
        if k.spatial_ndim != d:
            raise ValueError(f"{name}: a {d}-D window needs inputs with {d} spatial axes; "
                             f"got inputs of shape {spatial_description(k)}")
        if padding == "VALID" and any(w > s for w, s in zip(window_shape, k.spatial_shape)):
            raise ValueError(f"{name}: window {window_shape} is larger than the VALID input's "
                             f"spatial shape {k.spatial_shape}")
        return k.map_all(lambda a: spatial.pool_positions(a, d, window_shape, strides, padding,
                                                          normalize_edges, average))

    return leaf(name, init_fn, apply_fn, rule, needs_pairs)


def AvgPool(window_shape, strides=None, padding: str = "VALID", normalize_edges: bool = False,
            batch_axis: int = 0, channel_axis: int = -1):
    """Local average pooling; ``strides=None`` means strides of one (as neural-tangents).

    With ``normalize_edges`` and SAME padding, windows at the edge divide by the
    number of real (unpadded) entries. Kernel: Novak et al. 2019, §3.2.
    """
    return _pool("AvgPool", window_shape, strides, padding, normalize_edges, average=True)


def SumPool(window_shape, strides=None, padding: str = "VALID", batch_axis: int = 0, channel_axis: int = -1):
    """Local sum pooling; ``strides=None`` means strides of one."""
    return _pool("SumPool", window_shape, strides, padding, False, average=False)


def _global_pool(layer_name, average):
    name = f"{layer_name}()"

    def init_fn(rng, input_shape):
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, x, **kwargs):
        axes = tuple(range(1, x.ndim - 1))
        return x.mean(axes) if average else x.sum(axes)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        if d == 0:
            raise ValueError(f"{name}: needs inputs with spatial axes (N, *S, C); got {spatial_description(k)}")
        return k.map_all(lambda a: spatial.global_pool_positions(a, d, average)).replace(full=False)

    return leaf(name, init_fn, apply_fn, rule, needs_pairs)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1):
    """Mean over all spatial positions: ``K' = mean_{p, p'} K[p, p']``."""
    return _global_pool("GlobalAvgPool", average=True)


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1):
    """Sum over all spatial positions: ``K' = sum_{p, p'} K[p, p']``."""
    return _global_pool("GlobalSumPool", average=False)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0):
    """Flattens ``(N, *S, C)`` to ``(N, prod(S) C)``.

    Kernel: the mean over positions of equal-position covariances, since a
    following layer's weights are independent across positions (Novak et al. 2019,
    eq. 9) and its fan-in counts all positions: only equal positions are needed.
    """
    name = "Flatten()"

    def init_fn(rng, input_shape):
        return (input_shape[0], math.prod(input_shape[1:])), ()

    def apply_fn(params, x, **kwargs):
        return x.reshape(x.shape[0], -1)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        flat = k.map_all(lambda a: spatial.diagonal_mean(a, k.full, d))
        return flat.replace(full=False, channels=k.channels * math.prod(k.spatial_shape), is_gaussian=False)

    return leaf(name, init_fn, apply_fn, rule, needs_diagonal)


def Identity():
    """The identity: outputs equal inputs, and so do kernels."""
    return leaf("Identity()", lambda rng, input_shape: (input_shape, ()),
                lambda params, x, **kwargs: x, lambda k: k)


def LayerNorm(axis=-1, eps: float = 1e-12, batch_axis: int = 0, channel_axis: int = -1):
    """Normalizes each example to zero mean and unit variance over ``axis``.

    At infinite width the mean over channels vanishes and the variance becomes
    the (position-averaged, over ``axis``) diagonal of the input kernel, so
    ``K'[p, p'] = K[p, p'] / sqrt(v1[p] v2[p'])``, the NTK likewise (the
    normalizer's own fluctuations vanish) (Xiao et al. 2020, App. C).
    ``axis`` must include the channel axis and not the batch axis.
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    name = describe("LayerNorm", axis=axis, eps=eps)

    def init_fn(rng, input_shape):
        return input_shape, ()

    def apply_fn(params, x, **kwargs):
        mean = x.mean(axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        ndim = d + 2
        resolved = sorted(a % ndim if -ndim <= a < ndim else -1 for a in axes)
        if -1 in resolved or 0 in resolved or ndim - 1 not in resolved:
            raise ValueError(f"{name}: axis must name the channel axis and optionally spatial axes of "
                             f"inputs {spatial_description(k)}, never the batch axis")
        mean_axes = tuple(a - 1 for a in resolved if a != ndim - 1)  # axes of per-position variances
        var1 = position_variances(k.cov1, k.full, d)
        var2 = position_variances(k.cov2_or_cov1, k.full, d)
        if mean_axes:
            var1 = var1.mean(tuple(a + 1 for a in mean_axes), keepdims=True)
            var2 = var2.mean(tuple(a + 1 for a in mean_axes), keepdims=True)
            var1 = jnp.broadcast_to(var1, (var1.shape[0],) + k.spatial_shape)
            var2 = jnp.broadcast_to(var2, (var2.shape[0],) + k.spatial_shape)
        var1, var2 = var1 + eps, var2 + eps
        s1, s2 = jnp.sqrt(var1), jnp.sqrt(var2)
        n1, n2 = s1.shape[0], s2.shape[0]
        shape = k.spatial_shape
        if k.full:
            left1 = s1.reshape((n1,) + shape + (1,) * d)
            right1 = s1.reshape((n1,) + (1,) * d + shape)
            right2 = s2.reshape((n2,) + (1,) * d + shape)
            pair = left1[:, None] * right2[None]
            norm1 = left1 * right1
            norm2 = s2.reshape((n2,) + shape + (1,) * d) * right2
        else:
            pair = s1[:, None] * s2[None]
            norm1, norm2 = var1, var2
        return k.replace(nngp=k.nngp / pair, ntk=k.ntk / pair, cov1=k.cov1 / norm1,
                         cov2=None if k.cov2 is None else k.cov2 / norm2)

    return leaf(name, init_fn, apply_fn, rule, keep_requirement)
