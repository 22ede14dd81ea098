"""Kernels of finite networks: one network's empirical NNGP/NTK, and their Monte Carlo average.

The empirical NTK of a network ``f(params, x)`` is ``J(x1) J(x2)^T`` with ``J`` the
Jacobian in all parameters (Jacot et al. 2018, eq. 2); the empirical NNGP is
``f(x1) f(x2)^T``. Both are averaged over ``trace_axes`` of the outputs (by
default the channel axis), so that they estimate the closed forms of
`kernels.stax` (Novak et al. 2022, "Fast finite width NTK", for the contraction).
"""
from __future__ import annotations

import collections
import functools
from typing import Iterable, Optional, Union

import jax
import jax.numpy as jnp

from kernels.stax.layer import GET_NAMES

def _names(get):
    if get is None:
        return ("nngp", "ntk")
    names = (get,) if isinstance(get, str) else tuple(get)
    for n in names:
        if n not in ("nngp", "ntk"):
            raise ValueError(f"get={get!r}: finite-network kernels offer 'nngp' and 'ntk', not {n!r} "
                             f"(closed forms offer {GET_NAMES})")
    return names


def _pack(get, values: dict):
    if isinstance(get, str):
        return values[get]
    names = _names(get)
    return collections.namedtuple("Kernel", names)(*(values[n] for n in names))


def empirical_kernel_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, implementation=None,
                        batch_size: Optional[int] = None):
    """Empirical NNGP and NTK of the finite network ``f(params, x, **kwargs)``.

    Args:
      f: an ``apply_fn``.
      trace_axes: output axes averaged over (default the channel axis); the others are
        kept as pairs, interleaved: ``(N1, N2, S_1, S'_1, ...)`` as the closed forms.
      diagonal_axes: only ``()`` is supported.
      batch_size: examples of ``x1`` and of ``x2`` per chunk of the Jacobian
        contraction, which bounds memory to ``2 * batch_size * outputs * parameters``.
        ``None`` does all at once.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``.
    """
    if tuple(diagonal_axes) != ():
        raise ValueError("empirical_kernel_fn: diagonal_axes is not supported; use ()")

    def output_axes(ndim):
        traced = tuple(sorted(a % ndim for a in trace_axes))
        if 0 in traced:
            raise ValueError("empirical_kernel_fn: trace_axes must not include the batch axis 0")
        kept = tuple(a for a in range(1, ndim) if a not in traced)
        return traced, kept

    def pair(a, b, ndim):
        """a: (N1, *out, extra), b: (N2, *out, extra) -> (N1, N2, k_1, k'_1, ...) averaged over traced.

        Kept output axes pair up in neural-tangents' interleaved order, as closed forms do.
        """
        traced, kept = output_axes(ndim)
        letters = "abcdefgh"
        la = ["x"] + [letters[i] for i in range(ndim - 1)] + ["z"]
        lb = ["y"] + [letters[i] if (i + 1) in traced else letters[i].upper() for i in range(ndim - 1)] + ["z"]
        out = ["x", "y"] + [c for i in kept for c in (letters[i - 1], letters[i - 1].upper())]
        size = 1
        for t in traced:
            size *= a.shape[t]
        return jnp.einsum(f"{''.join(la)},{''.join(lb)}->{''.join(out)}", a, b) / size

    def ntk_of(params, x1, x2, kwargs):
        def jacobian(x):
            j = jax.jacrev(lambda p: f(p, x, **kwargs))(params)
            return [leaf.reshape(leaf.shape[:ndim] + (-1,)) for leaf in jax.tree.leaves(j)]

        def chunks(x):
            if batch_size is None or x.shape[0] <= batch_size:
                return [x]
            return [x[s:s + batch_size] for s in range(0, x.shape[0], batch_size)]

        ndim = jax.eval_shape(lambda x: f(params, x, **kwargs), x1).ndim
        rows = []
        for a in chunks(x1):
            ja = jacobian(a)
            cols = [sum(pair(l1, l2, ndim) for l1, l2 in zip(ja, jacobian(b))) for b in chunks(x2)]
            rows.append(jnp.concatenate(cols, axis=1))
        return jnp.concatenate(rows, axis=0)

    def values(params, x1, x2, names, kwargs) -> dict:
        x2_ = x1 if x2 is None else x2
        out = {}
        if "nngp" in names:
            f1 = f(params, x1, **kwargs)
            f2 = f1 if x2 is None else f(params, x2_, **kwargs)
            out["nngp"] = pair(f1[..., None], f2[..., None], f1.ndim)
        if "ntk" in names:
            out["ntk"] = ntk_of(params, x1, x2_, kwargs)
        return out

    compiled = jax.jit(lambda params, x1, x2, names: values(params, x1, x2, names, {}), static_argnames="names")

    def kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs):
        if params is None:
            raise ValueError("empirical kernel_fn: params of the finite network are required")
        names = _names(get)
        if apply_fn_kwargs:  # may hold non-array options: trace them as Python values
            out = values(params, x1, x2, names, apply_fn_kwargs)
        else:  # eager Jacobians of a width-16 net took 14-30 s; compiled, well under one
            out = compiled(params, x1, x2, names)
        return _pack(get if get is not None else ("nngp", "ntk"), out)

    kernel_fn.values = values
    return kernel_fn


def monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples: Union[int, Iterable[int]], batch_size: int = 0,
                          device_count: int = -1, store_on_device: bool = True, trace_axes=(-1,),
                          diagonal_axes=(), vmap_axes=None, implementation=None):
    """Monte Carlo estimate of the NNGP/NTK: empirical kernels averaged over random inits.

    Args:
      init_fn, apply_fn: the finite network.
      key: PRNG key; sample ``i`` is initialized from ``jax.random.fold_in(key, i)``.
      n_samples: an int, or an increasing iterable of ints (then ``kernel_fn``
        returns a generator of running averages at those counts).
      batch_size: if positive, examples per chunk of the Jacobian contraction.

    Returns:
      ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)``.
    """
    empirical = empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes,
                                    batch_size=batch_size if batch_size > 0 else None)
    counts = [n_samples] if isinstance(n_samples, int) else sorted(int(n) for n in n_samples)
    if not counts or counts[0] < 1:
        raise ValueError(f"monte_carlo_kernel_fn: n_samples must be positive, got {n_samples!r}")

    @functools.partial(jax.jit, static_argnames=("names",))
    def sample(i, x1, x2, names, kwargs):
        _, params = init_fn(jax.random.fold_in(key, i), x1.shape)
        return empirical.values(params, x1, x2, names, kwargs)

    def running(x1, x2, get, kwargs):
        names = _names(get)
        total, done = None, 0
        for n in counts:
            for i in range(done, n):
                part = sample(i, x1, x2, names, kwargs)
                total = part if total is None else jax.tree.map(jnp.add, total, part)
            done = n
            yield _pack(get if get is not None else ("nngp", "ntk"), {m: total[m] / n for m in names})

    def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
        gen = running(x1, x2, get, apply_fn_kwargs)
        if isinstance(n_samples, int):
            return next(gen)
        return gen

    return kernel_fn
