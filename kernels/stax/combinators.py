"""Combinators: series, parallel branches, fan-out and fan-in.

Branches carry independent weights, so kernels of a sum add, kernels of a
channel concatenation average by channel counts, and a product of independent
Gaussian fields has the product kernel (its NTK by the product rule).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error
from kernels.kernel import Kernel, majority_parity
from kernels.stax import masking
from kernels.stax.layer import (PASS_MASKS, KernelFn, Layer, any_requirement, checked, describe, guarded_apply,
                                input_axes_of, keywords_for, keywords_of, leaf)


def serial(*layers) -> Layer:
    """Layers in series: the output of each is the input of the next."""
    layers = [Layer(*layer) for layer in layers]
    names = ", ".join(layer.kernel_fn.name for layer in layers)
    name = f"serial({names})"

    def init_fn(rng, input_shape):
        params = []
        for layer in layers:
            rng, key = jax.random.split(rng)
            input_shape, p = layer.init_fn(key, input_shape)
            params.append(p)
        return input_shape, params  # a list, as neural-tangents' (jax.example_libraries) serial

    def apply_fn(params, x, **kwargs):
        for layer, p, kw in zip(layers, params, _split_rng(kwargs, len(layers))):
            x = layer.apply_fn(p, x, **keywords_for(layer, kw))
        return x

    def rule(k):
        for layer in layers:
            k = layer.kernel_fn.rule(k)
        return k

    def needs_full(out):
        for layer in reversed(layers):
            out = layer.kernel_fn.needs_full(out)
        return out

    keywords, input_axes = keywords_of(layers), input_axes_of(layers)
    return Layer(init_fn, guarded_apply(name, apply_fn, keywords, PASS_MASKS, input_axes),
                 KernelFn(name, rule, needs_full, keywords=keywords, input_axes=input_axes,
                          whole_batch=any(layer.kernel_fn.whole_batch for layer in layers)))


def _split_rng(kwargs: dict, n: int) -> list:
    """``kwargs`` for each of ``n`` sub-layers: an ``rng`` split into one key per layer (as
    neural-tangents does), so that two stochastic layers (Dropout) draw independent masks."""
    if kwargs.get("rng") is None:
        return [kwargs] * n
    return [dict(kwargs, rng=key) for key in jax.random.split(kwargs["rng"], n)]


def repeat(layer, n: int) -> Layer:
    """``layer`` applied ``n`` times, each time with its own weights; ``n=0`` is the identity
    (as in neural-tangents). The keywords the network takes are ``layer``'s for every ``n``: the
    identity of ``n=0`` accepts (and has no use for) e.g. the ``pattern`` of a ``layer`` with an
    `Aggregate`, as neural-tangents' ``repeat`` does, so that one call serves every depth."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"repeat: n must be a non-negative integer, got {n!r}")
    layer = Layer(*layer)
    if n == 0:
        return leaf(f"repeat({layer.kernel_fn.name}, 0)", lambda rng, input_shape: (input_shape, ()),
                    lambda params, x, **kwargs: x, lambda k: k, keywords=layer.kernel_fn.keywords,
                    masks=masking.POINTWISE)
    return serial(*[layer] * int(n))


def parallel(*layers) -> Layer:
    """Applies the i-th layer to the i-th of a list of inputs."""
    layers = [Layer(*layer) for layer in layers]
    name = f"parallel({', '.join(layer.kernel_fn.name for layer in layers)})"

    def _check(inputs, what):
        if len(inputs) != len(layers):
            raise ValueError(f"{name}: expects {len(layers)} {what}, got {len(inputs)}")

    def init_fn(rng, input_shapes):
        _check(input_shapes, "input shapes")
        keys = jax.random.split(rng, len(layers))
        outs = [layer.init_fn(key, shape) for layer, key, shape in zip(layers, keys, input_shapes)]
        return [o[0] for o in outs], tuple(o[1] for o in outs)

    def apply_fn(params, inputs, **kwargs):
        _check(inputs, "inputs")
        return [layer.apply_fn(p, x, **keywords_for(layer, kw))
                for layer, p, x, kw in zip(layers, params, inputs, _split_rng(kwargs, len(layers)))]

    def rule(ks):
        _check(ks, "inputs (use FanOut before parallel)")
        return tuple(layer.kernel_fn.rule(k) for layer, k in zip(layers, ks))

    def needs_full(out):
        outs = out if isinstance(out, tuple) else (out,) * len(layers)
        return tuple(layer.kernel_fn.needs_full(o) for layer, o in zip(layers, outs))

    keywords, input_axes = keywords_of(layers), input_axes_of(layers)
    return Layer(init_fn, guarded_apply(name, apply_fn, keywords, PASS_MASKS, input_axes),
                 KernelFn(name, rule, needs_full, keywords=keywords, input_axes=input_axes,
                          whole_batch=any(layer.kernel_fn.whole_batch for layer in layers)))


def FanOut(num: int) -> Layer:
    """Copies its input into ``num`` branches (with masked inputs, each copy keeps the mask, as in
    neural-tangents)."""
    name = describe("FanOut", num=num)

    def needs_full(out):
        return any_requirement(out)

    def rule(k):
        return (k.replace(own_weights=False),) * num
    return Layer(lambda rng, shape: ([shape] * num, ()),
                 guarded_apply(name, lambda params, x, **kwargs: [x] * num, (), PASS_MASKS),
                 KernelFn(name, checked(name, rule), needs_full))


def _fan_in(name, init_fn, apply_fn, combine, merge_masks=masking.masked_in_all):
    """A fan-in layer; with masked inputs each branch is zero at its own masked positions (as its
    last layer left it) and ``merge_masks(masks)`` gives the output's mask (`kernels.stax.masking`)."""
    def rule(ks):
        if isinstance(ks, Kernel) or len(ks) < 1:
            raise ValueError(f"{name}: expects a list of branches (after FanOut and parallel)")
        shapes = {k.nngp.shape for k in ks}
        if len(shapes) != 1:
            raise ValueError(f"{name}: branches' kernels differ in shape {sorted(shapes)}; "
                             "their outputs must have the same spatial shape")
        if not masking.is_masked(ks):
            return combine(ks)
        ks = [masking.zero_masked(k) for k in ks]
        return combine(ks).replace(**masking.merged_kernel_masks(name, ks, merge_masks))

    def masked_apply(params, xs, **kwargs):
        if masking.carries_masks(xs):
            values, mask = masking.merged_branches(name, xs, merge_masks)
            return masking.Masked(apply_fn(params, values, **kwargs), mask)
        return apply_fn(params, xs, **kwargs)
    return Layer(init_fn, guarded_apply(name, masked_apply, (), PASS_MASKS), KernelFn(name, rule))


def _block_diagonal(arrays, ax1: int, ax2: int):
    """``arrays`` placed side by side along both ``ax1`` and ``ax2`` (the two axes of one pair of
    indices), zero between blocks: the covariance of concatenated independent zero-mean fields."""
    t1, t2 = sum(a.shape[ax1] for a in arrays), sum(a.shape[ax2] for a in arrays)
    total, o1, o2 = 0., 0, 0
    for a in arrays:
        widths = [(0, 0)] * a.ndim
        widths[ax1] = (o1, t1 - o1 - a.shape[ax1])
        widths[ax2] = (o2, t2 - o2 - a.shape[ax2])
        total = total + jnp.pad(a, widths)
        o1, o2 = o1 + a.shape[ax1], o2 + a.shape[ax2]
    return total


def _fields(ks, field):
    return [getattr(k, field) for k in ks]


def _combined_means(ks, combine) -> dict:
    """``mean1``/``mean2`` of merged branches by ``combine(field_name)``; unknown if any branch's is."""
    if any(k.mean1 is None for k in ks):
        return dict(mean1=None, mean2=None)
    return dict(mean1=combine("mean1"), mean2=None if ks[0].mean2 is None else combine("mean2"))


def FanInSum() -> Layer:
    """Sum of branches: ``nngp = sum_i nngp_i + sum_{i != j} m_i m_j'``, ``ntk = sum_i ntk_i``.

    Branches with their own weights are independent at infinite width, so their outputs'
    covariance is the product of their channel means ``m`` (zero after Dense, Conv or
    attention); their gradients are orthogonal. Refused for two branches without their own
    weights since the split (dependent: ``x + x`` has kernel ``4 K``, not ``2 K``) and for a
    branch whose mean has no closed form.
    """
    name = "FanInSum()"

    def combine(ks):
        _check_independent(name, ks)
        if len(ks) > 1 and any(k.mean1 is None for k in ks):
            raise ValueError(f"{name}: the channel mean of a branch is unknown (it ends in an Elementwise "
                             "activation given only its nngp_fn or a custom layer, or, in kernel_fn(Kernel), starts "
                             "at the end of another network that is not a Dense, Conv or attention), so the "
                             "covariance between branches is unknown; end the branch in a Dense or Conv")
        first = ks[0]
        add = lambda f: sum(_fields(ks, f)[1:], _fields(ks, f)[0])
        nngp, cov1, cov2 = add("nngp"), add("cov1"), None if first.cov2 is None else add("cov2")
        for i, a in enumerate(ks):
            for j, b in enumerate(ks):
                if i != j:
                    nngp = nngp + _mean_product(a, b, pair=True)
                    cov1 = cov1 + _mean_product(a, b, pair=False)
                    cov2 = None if cov2 is None else cov2 + _mean_product(a, b, pair=False, second=True)
        return first.replace(nngp=nngp, ntk=add("ntk"), cov1=cov1, cov2=cov2,
                             is_gaussian=all(k.is_gaussian for k in ks), own_weights=all(k.own_weights for k in ks),
                             odd_convolutions=majority_parity(ks),
                             **_combined_means(ks, add))
    return _fan_in(name, lambda rng, shapes: (shapes[0], ()),
                   lambda params, xs, **kwargs: sum(xs[1:], xs[0]), combine)


def _check_independent(name, ks):
    """Refuses two or more branches without their own weights since the split (`Kernel.own_weights`)."""
    shared = [i for i, k in enumerate(ks) if not k.own_weights]
    if len(shared) > 1:
        raise ValueError(f"{name}: branches {shared} have no layer with weights (Dense, Conv, GlobalSelfAttention) "
                         "since they split, so they depend on each other and their merged kernel is not a function "
                         "of theirs; give all but one of them such a layer")


def _mean_product(a: Kernel, b: Kernel, pair: bool, second: bool = False):
    """``m_a[p] m_b[p']`` laid out as ``nngp`` (``pair``) or as ``cov1``/``cov2``."""
    d, shape = a.spatial_ndim, a.spatial_shape

    def left(m):
        return m.reshape((m.shape[0],) + shape + (1,) * d) if a.full else m

    def right(m):
        return m.reshape((m.shape[0],) + (1,) * d + shape) if a.full else m

    if pair:
        return left(a.mean1)[:, None] * right(b.mean2_or_mean1)[None]
    if second:
        return left(a.mean2) * right(b.mean2)
    return left(a.mean1) * right(b.mean1)


def FanInProd() -> Layer:
    """Elementwise product of branches: ``nngp = prod nngp_i``,
    ``ntk = sum_i ntk_i prod_{j != i} nngp_j`` (product rule), exact for independent
    branches; refused, as `FanInSum`, for two branches without their own weights."""
    def combine(ks):
        def prod(arrays):
            out = arrays[0]
            for a in arrays[1:]:
                out = out * a
            return out
        nngps = _fields(ks, "nngp")
        ntk = sum(k.ntk * prod(nngps[:i] + nngps[i + 1:]) if len(ks) > 1 else k.ntk for i, k in enumerate(ks))
        _check_independent("FanInProd()", ks)
        first = ks[0]
        # Independent branches: the mean of a product is the product of the means.
        return first.replace(nngp=prod(nngps), ntk=ntk, cov1=prod(_fields(ks, "cov1")),
                             cov2=None if first.cov2 is None else prod(_fields(ks, "cov2")),
                             is_gaussian=first.is_gaussian and len(ks) == 1, own_weights=all(k.own_weights for k in ks),
                             odd_convolutions=majority_parity(ks),
                             **_combined_means(ks, lambda f: prod(_fields(ks, f))))

    def apply_fn(params, xs, **kwargs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out
    return _fan_in("FanInProd()", lambda rng, shapes: (shapes[0], ()), apply_fn, combine)


def FanInConcat(axis: int = -1) -> Layer:
    """Concatenation of branches along ``axis`` of their outputs (every axis neural-tangents accepts).

    ``axis`` counts in the finite layer's layout, ``(N, *S, C)`` unless a layer declared another
    (`Kernel.batch_axis`, `Kernel.channel_axis`); negative values count from the end.

    * The channel axis: the kernels average, weighted by the branches' channel counts
      (``sum_i C_i K_i / sum_i C_i``: a channel-averaged inner product over the joined channels).
    * A spatial axis: the branches are independent Gaussian fields, so the kernel of the
      concatenation is block diagonal in that axis' position pairs (zero across branches); the
      branches may differ in size along it.
    * The batch axis: each branch's outputs become further examples, ``n N1`` of them for ``n``
      branches, in branch order; the kernel is block diagonal in the examples (examples of different
      branches are outputs of independent weights). Such a network's kernel is evaluated in one piece
      (`KernelFn.whole_batch`, for ``axis=0``; a negative ``axis`` that turns out to be the batch axis
      needs ``block_size=0``), and `kernels.batch` does not tile it.

    Concatenation along any axis but the channel axis needs Gaussian branches (each ending in
    Dense, Conv or attention), as in neural-tangents, and at most one branch without weights of its own.
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise argument_error(describe("FanInConcat", axis=axis), "axis", "an int", axis, TypeError)
    name = describe("FanInConcat", axis=axis)

    def resolve(ndim: int) -> int:
        if not -ndim <= axis < ndim:
            raise argument_error(name, "axis", f"an axis of the branches' outputs, in [-{ndim}, {ndim})",
                                 f"{axis} for outputs of rank {ndim}")
        return axis % ndim

    def init_fn(rng, shapes):
        ax = resolve(len(shapes[0]))
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), ()

    def channel_concat(ks):
        if len({k.nngp.shape for k in ks}) != 1:
            raise ValueError(f"{name}: branches' kernels differ in shape {sorted({k.nngp.shape for k in ks})}; "
                             "along the channel axis every other axis must agree")
        total = sum(k.channels for k in ks)
        mean = lambda f: sum(k.channels * getattr(k, f) for k in ks) / total
        first = ks[0]
        return first.replace(nngp=mean("nngp"), ntk=mean("ntk"), cov1=mean("cov1"),
                             cov2=None if first.cov2 is None else mean("cov2"), channels=total,
                             is_gaussian=first.is_gaussian and len(ks) == 1,
                             own_weights=all(k.own_weights for k in ks),
                             odd_convolutions=majority_parity(ks), **_combined_means(ks, mean))

    def check_independent_gaussians(ks, what):
        if not all(k.is_gaussian for k in ks):
            raise ValueError(f"{name}: concatenation along {what} needs Gaussian branches "
                             "(each ending in Dense, Conv or attention)")
        if len({k.channels for k in ks}) != 1:
            raise ValueError(f"{name}: branches differ in channels {[k.channels for k in ks]}")
        _check_independent(name, ks)  # different branches are taken to be uncorrelated

    def spatial_concat(ks, dim):
        check_independent_gaussians(ks, "a spatial axis")
        first = ks[0]
        d = first.spatial_ndim
        others = {k.spatial_shape[:dim] + k.spatial_shape[dim + 1:] for k in ks}
        if len(others) != 1:
            raise ValueError(f"{name}: branches' spatial shapes {[k.spatial_shape for k in ks]} differ in an axis "
                             "other than the concatenated one")

        def combine(arrays):
            if not first.full:
                return jnp.concatenate(arrays, axis=arrays[0].ndim - d + dim)
            return _block_diagonal(arrays, arrays[0].ndim - 2 * d + dim, arrays[0].ndim - d + dim)

        def concatenate_means(field):  # (N, *S): positions side by side along the axis
            return jnp.concatenate(_fields(ks, field), axis=1 + dim)

        return first.replace(nngp=combine(_fields(ks, "nngp")), ntk=combine(_fields(ks, "ntk")),
                             cov1=combine(_fields(ks, "cov1")),
                             cov2=None if first.cov2 is None else combine(_fields(ks, "cov2")),
                             own_weights=all(k.own_weights for k in ks),
                             odd_convolutions=majority_parity(ks), **_combined_means(ks, concatenate_means))

    def batch_concat(ks):
        check_independent_gaussians(ks, "the batch axis")
        first = ks[0]
        if len({k.spatial_shape for k in ks}) != 1:
            raise ValueError(f"{name}: branches differ in spatial shape {[k.spatial_shape for k in ks]}")
        if first.selves is not None:
            raise NotImplementedError(f"{name}: concatenation along the batch axis must be evaluated in one piece; "
                                      "pass block_size=0 to kernel_fn (or write axis=0, which implies it)")
        if first.pattern1 is not None:
            raise NotImplementedError(f"{name}: concatenation along the batch axis of graphs (pattern) is not "
                                      "implemented")
        join = lambda f: jnp.concatenate(_fields(ks, f), axis=0)
        return first.replace(nngp=_block_diagonal(_fields(ks, "nngp"), 0, 1),
                             ntk=_block_diagonal(_fields(ks, "ntk"), 0, 1), cov1=join("cov1"),
                             cov2=None if first.cov2 is None else join("cov2"),
                             own_weights=all(k.own_weights for k in ks),
                             odd_convolutions=majority_parity(ks), **_combined_means(ks, join))

    def merge_for(ax: int, ndim: int, channel_axis: int):
        """How the branches' masks merge (`kernels.stax.masking`): ``ax`` of the outputs, masks ``(N, *S)``
        in the outputs' order of non-channel axes."""
        if ax == channel_axis:
            return masking.masked_in_all
        return masking.concatenated_along(ax if ax < channel_axis else ax - 1)

    def combine(ks):
        ndim = ks[0].spatial_ndim + 2
        layouts = {(k.spatial_ndim + 2, k.batch_axis % ndim, k.channel_axis % ndim) for k in ks}
        if len(layouts) != 1:
            raise ValueError(f"{name}: branches' outputs differ in rank or layout (rank, batch axis, channel axis) "
                             f"{sorted(layouts)}")
        (_, batch_axis, channel_axis), = layouts
        ax = resolve(ndim)
        if ax == channel_axis:
            return channel_concat(ks), masking.masked_in_all
        if ax == batch_axis:  # masks: the branches' examples one after another
            return batch_concat(ks), masking.concatenated_along(0)
        spatial_axes = [i for i in range(ndim) if i not in (batch_axis, channel_axis)]
        dim = spatial_axes.index(ax)
        return spatial_concat(ks, dim), masking.concatenated_along(1 + dim)  # masks: (N, *S) in the kernel's order

    def rule(ks):
        if isinstance(ks, Kernel) or len(ks) < 1:
            raise ValueError(f"{name}: expects a list of branches (after FanOut and parallel)")
        if not masking.is_masked(ks):
            return combine(ks)[0]
        ks = [masking.zero_masked(k) for k in ks]
        out, merge = combine(ks)
        return out.replace(**masking.merged_kernel_masks(name, ks, merge))

    def apply_fn(params, xs, **kwargs):
        if not masking.carries_masks(xs):
            return jnp.concatenate(xs, axis)
        ndim = xs[0].value.ndim
        values, mask = masking.merged_branches(name, xs, merge_for(resolve(ndim), ndim, ndim - 1))
        return masking.Masked(jnp.concatenate(values, axis), mask)

    return Layer(init_fn, guarded_apply(name, apply_fn, (), PASS_MASKS), KernelFn(name, rule, whole_batch=axis == 0))
