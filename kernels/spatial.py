"""How convolution and pooling act on covariances over positions.

All functions act on the trailing position axes of an array, so the same code
serves ``nngp``/``ntk`` (two batch axes) and ``cov1``/``cov2`` (one):
``(..., *S, *S')`` when ``full`` and ``(..., *S)`` otherwise, ``d = len(S)``.

A convolution has independent weights at each filter offset, so only equal
offsets of the two inputs correlate: ``K'[p, p'] = mean_t K[s p + t, s p' + t]``
(Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs", eq. 7).
Averaging shares one weight over a window, so every pair of offsets correlates:
``K'[p, p'] = sum_{t, t'} K[s p + t, s p' + t'] / w^2`` (Novak et al. 2019, §3.2).
Both are separable over spatial dimensions, so they are applied one dimension
(one pair of axes) at a time.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.kernel import HIGHEST

PADDINGS = ("VALID", "SAME", "CIRCULAR")


def output_size(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "VALID":
        return (size - window) // stride + 1
    return -(-size // stride)


def pad_amounts(size: int, window: int, stride: int, padding: str) -> tuple:
    """(low, high) padding as XLA's SAME rule; CIRCULAR wraps by the same amounts."""
    if padding == "VALID":
        return (0, 0)
    out = output_size(size, window, stride, padding)
    total = max((out - 1) * stride + window - size, 0)
    return (total // 2, total - total // 2)


def _pad(a, axes, amounts, padding):
    """``a`` padded along ``axes``, materialized for the shifted slices that read it.

    The optimization barrier keeps XLA from fusing ``a``'s elementwise producers (an activation's
    dual map) into each of those slices: fused, they were recomputed once per filter offset and
    layer, and the fused kernels grew with depth. A 21-layer 3x3 CNN's kernel compiled in 441 s
    (seconds with the barrier); see experiments/benchmarks/RESULTS.md.
    """
    widths = [(0, 0)] * a.ndim
    for ax in axes:
        widths[ax] = amounts
    padded = jnp.pad(a, widths, mode="wrap") if padding == "CIRCULAR" else jnp.pad(a, widths)
    return lax.optimization_barrier(padded)


def _strided(a, axis, start, count, stride):
    return lax.slice_in_dim(a, start, start + stride * (count - 1) + 1, stride, axis)


def conv_positions(a, full: bool, d: int, filter_shape, strides, padding: str):
    """Covariance after a convolution's spatial mixing, before weights' variance.

    Returns the mean over filter offsets of the (padded) covariance: the
    weight variance and the bias are applied by the caller.
    """
    if not full:
        return _conv_diagonal(a, d, filter_shape, strides, padding)
    for i, (k, s) in enumerate(zip(filter_shape, strides)):
        axes = (a.ndim - 2 * d + i, a.ndim - d + i)
        size = a.shape[axes[0]]
        out = output_size(size, k, s, padding)
        a = _pad(a, axes, pad_amounts(size, k, s, padding), padding)
        total = 0.
        for t in range(k):
            piece = a
            for ax in axes:
                piece = _strided(piece, ax, t, out, s)
            total = total + piece
        a = total
    return a / math.prod(filter_shape)


def window_matrix(size: int, window: int, stride: int, padding: str) -> np.ndarray:
    """``T[o, i]``: how many of output ``o``'s window offsets land on input ``i`` (0 or 1).

    Padded positions contribute zero (VALID, SAME) or wrap around (CIRCULAR).
    """
    out = output_size(size, window, stride, padding)
    low = pad_amounts(size, window, stride, padding)[0]
    t = np.zeros((out, size))
    for o in range(out):
        for offset in range(window):
            i = o * stride + offset - low
            if padding == "CIRCULAR":
                t[o, i % size] += 1
            elif 0 <= i < size:
                t[o, i] += 1
    return t


def _conv_diagonal(a, d: int, filter_shape, strides, padding: str):
    """`conv_positions` for equal positions only: a 1-D window sum along each spatial axis.

    Written as a product with `window_matrix` per axis rather than padded slices: XLA's
    CPU compiler fused the slices' elementwise producers (an activation's dual map) into
    every slice and recomputed them, layer after layer (a 4-layer Flatten CNN kernel: 62 ns
    per entry and layer, against 10 ns for a materialized product).
    """
    for i, (k, s) in enumerate(zip(filter_shape, strides)):
        axis = a.ndim - d + i
        t = jnp.asarray(window_matrix(a.shape[axis], k, s, padding), a.dtype)
        a = jnp.moveaxis(jnp.tensordot(a, t, axes=[[axis], [1]], precision=HIGHEST), -1, axis)
    return a / math.prod(filter_shape)


def pool_positions(a, d: int, window_shape, strides, padding: str, normalize_edges: bool, average: bool):
    """Covariance after local sum or average pooling; needs position pairs (``full``)."""
    for i, (w, s) in enumerate(zip(window_shape, strides)):
        for ax in (a.ndim - 2 * d + i, a.ndim - d + i):
            size = a.shape[ax]
            out = output_size(size, w, s, padding)
            padded = _pad(a, (ax,), pad_amounts(size, w, s, padding), padding)
            a = sum(_strided(padded, ax, t, out, s) for t in range(w))
            if average:
                if normalize_edges and padding == "SAME":
                    counts = jnp.asarray(window_matrix(size, w, s, padding).sum(1))  # real entries per window
                else:
                    counts = jnp.full((out,), float(w))
                shape = [1] * a.ndim
                shape[ax] = out
                a = a / counts.reshape(shape).astype(a.dtype)
    return a


def global_pool_positions(a, d: int, average: bool):
    """Covariance of the global sum or mean over positions; needs ``full``."""
    axes = tuple(range(a.ndim - 2 * d, a.ndim))
    return a.mean(axes) if average else a.sum(axes)


def diagonal_mean(a, full: bool, d: int):
    """Mean over positions of the equal-position covariance (a Flatten readout)."""
    if d == 0:
        return a
    if full:
        lead = a.shape[:a.ndim - 2 * d]
        size = math.prod(a.shape[a.ndim - d:])
        a = jnp.diagonal(a.reshape(lead + (size, size)), axis1=-2, axis2=-1)
        return a.mean(-1)
    return a.mean(tuple(range(a.ndim - d, a.ndim)))
