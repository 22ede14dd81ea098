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
from kernels.checks import argument_error, finite_real, positive_int
from kernels.kernel import Kernel, flip_parity, position_variances
from kernels.stax import masking
from kernels.stax.layer import (Requires, describe, keep_requirement, leaf, needs_diagonal, needs_pairs,
                                spatial_description)
from kernels.stax.layout import (DEFAULT, ConvSpecs, Layout, check_axis_argument, in_layout, pooled_axes,
                                 with_layout)

PARAMETERIZATIONS = ("ntk", "standard")
# Dense only: Yang & Hu 2021's abc-parametrizations, whose infinite-width limit may learn features.
FEATURE_LEARNING_PARAMETERIZATIONS = ("mup", "abc")
ROLES = ("input", "hidden", "output")
# muP for SGD in the abc form of Yang & Hu 2021 (arXiv:2011.14522), §3 (W = n^-a w, w ~ N(0, n^-2b),
# learning rate eta n^-c) with the muP exponents of their §5 (Def. 5.1, the "width-inf feature
# learning networks" of their Fig. 1):
# a_1 = -1/2 for the input layer, a = 0 for hidden layers, a_{L+1} = 1/2 for the readout,
# b = 1/2 for every layer and c = 0 (one width-independent learning rate).
MUP_EXPONENTS = {"input": (-0.5, 0.5), "hidden": (0.0, 0.5), "output": (0.5, 0.5)}


def _check_parameterization(name, parameterization, allowed=PARAMETERIZATIONS):
    if parameterization not in allowed:
        raise ValueError(f"{name}: parameterization={parameterization!r}; expected one of {allowed}")


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
        channels=channels, is_gaussian=True, own_weights=True).with_zero_means()


def _check_affine(name, width, W_std, b_std):
    positive_int(name, "out_dim" if name.startswith("Dense") else "out_chan", width)
    finite_real(name, "W_std", W_std)
    finite_real(name, "b_std", b_std, optional=True)


def named_scalings(s) -> dict:
    """``{"s": s}`` for a layer's name when ``s`` is not the default ``(1, 1)`` (a bad one is shown too)."""
    return {} if isinstance(s, (tuple, list)) and tuple(s) == (1, 1) else {"s": s}


def width_scalings(name, s, parameterization) -> tuple:
    """``(s_in, s_out)`` of a linear layer's ``s`` (Sohl-Dickstein et al. 2020, §3), checked: a pair of
    positive ints, other than ``(1, 1)`` only in the standard parameterization."""
    if not isinstance(s, (tuple, list)) or len(s) != 2:
        raise argument_error(name, "s", "a pair of positive ints (s_in, s_out)", s, TypeError)
    s_in, s_out = (positive_int(name, "s", v) for v in s)
    if (s_in, s_out) != (1, 1) and parameterization != "standard":
        raise argument_error(name, "s", f"(1, 1) with parameterization={parameterization!r} (width scalings "
                             "belong to the standard parameterization)", s)
    return s_in, s_out


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


def _abc_exponents(name, parameterization, role, abc, b_std):
    """``(a, b)`` of a ``"mup"`` or ``"abc"`` Dense; refuses ``role``/``abc`` where they do not apply."""
    if parameterization not in FEATURE_LEARNING_PARAMETERIZATIONS:
        for argument, value in (("role", role), ("abc", abc)):
            if value is not None:
                raise argument_error(name, argument, "None with parameterization='ntk' or 'standard' (it "
                                     "belongs to parameterization='mup' or 'abc')", value)
        return None
    if role not in ROLES:
        raise argument_error(name, "role", f"one of {ROLES} with parameterization={parameterization!r} (the "
                             "layer's place fixes its width exponents)", role)
    if parameterization == "mup":
        if abc is not None:
            raise argument_error(name, "abc", "None with parameterization='mup' (its exponents are fixed "
                                 "by the role; use parameterization='abc' to choose them)", abc)
        return MUP_EXPONENTS[role]
    if not isinstance(abc, (tuple, list)) or len(abc) != 2:
        raise argument_error(name, "abc", "a pair (a, b) of finite reals with parameterization='abc'", abc,
                             TypeError)
    if b_std is not None:
        raise argument_error(name, "b_std", "None with parameterization='abc' (a general abc-parametrization "
                             "defines no bias; parameterization='mup' has one)", b_std)
    return tuple(finite_real(name, "abc", v) for v in abc)


def _abc_width(role, fan_in, fan_out):
    """The width n that an abc exponent refers to: the layer's output width for the input layer
    (its fan-in, the data dimension, stays fixed as n grows), its fan-in otherwise."""
    return fan_out if role == "input" else fan_in


def _abc_factors(role, a, b, fan_in, fan_out, W_std, b_std):
    """``(init_w, mult_w, init_b, mult_b)``: stored weights are ``init_w`` times standard normals and
    enter the product times ``mult_w`` (likewise the bias).

    ``W = n^-a w``, ``w ~ N(0, W_std^2 n^-2b / m)`` (Yang & Hu 2021, §3), ``m = fan_in`` for the
    input layer, a width-independent constant that keeps its outputs O(1) for any data dimension
    (as ``"ntk"``/``"standard"`` do and Yang et al. 2022, Table 3, "input weights": 1/fan_in),
    ``m = 1`` otherwise. Biases follow Yang et al. 2022, Table 3 ("all biases" with the input
    weights): a vector of width n is an input layer of one constant input (``a = -1/2, b = 1/2``);
    the readout's bias has no width to scale with (``a = b = 0``).
    """
    n = _abc_width(role, fan_in, fan_out)
    m = fan_in if role == "input" else 1
    init_w, mult_w = W_std * n ** -b / math.sqrt(m), n ** -a
    b_a, b_b = (0.0, 0.0) if role == "output" else (-0.5, 0.5)
    init_b = None if b_std is None else b_std * n ** -b_b
    return init_w, mult_w, init_b, n ** -b_a


def Dense(out_dim: int, W_std: float = 1., b_std=None, batch_axis: int = 0, channel_axis: int = -1,
          parameterization: str = "ntk", s=(1, 1), role=None, abc=None):
    """Fully connected layer acting on the last (channel) axis.

    Args:
      out_dim: output width.
      W_std: weight standard deviation (times ``1/sqrt(fan_in)``).
      b_std: bias standard deviation; ``None`` for no bias.
      parameterization: ``"ntk"`` or ``"standard"`` (Sohl-Dickstein et al. 2020), or, for finite
        networks only, ``"mup"`` or ``"abc"`` (Yang & Hu 2021, arXiv:2011.14522). In the
        abc-parametrization of Yang & Hu (§3) a layer's weights are ``W = n^-a w`` with
        trained ``w ~ N(0, n^-2b)`` and learning rate ``eta n^-c``, n the width. Here the stored
        parameters are ``w`` (times ``W_std``, and ``1/sqrt(fan_in)`` for an input layer) and the
        factor ``n^-a`` is applied in the forward pass; the learning-rate exponent ``c`` is the
        training engine's (`experiments.train.abc_learning_rates`). ``"mup"`` is the Maximal Update
        Parametrization for SGD (Yang & Hu 2021, §5, Def. 5.1): ``(a, b) = (-1/2, 1/2)`` for the
        input layer, ``(0, 1/2)`` for hidden layers, ``(1/2, 1/2)`` for the readout, with ``c = 0``
        for all (so plain SGD at one learning rate trains it). Its infinite-width limit learns
        features and is not a kernel, so ``kernel_fn`` refuses both.
      s: ``"standard"`` only: the width scalings ``(s_in, s_out)`` of Sohl-Dickstein et al. 2020
        (§3): the layer has ``s_out * out_dim`` outputs, its inputs are ``s_in`` times a base width
        ``C / s_in``, weights have variance ``W_std^2 s_in / C`` and the product is divided by
        ``sqrt(s_in)``. The NNGP does not change; the NTK's weight term is ``C / s_in`` times the
        input NNGP instead of ``C``. The first layer has ``s_in = 1``, each next ``s_in`` is the
        previous ``s_out`` (as neural-tangents). ``"ntk"`` takes only ``(1, 1)``.
      role: ``"mup"``/``"abc"`` only (required there): ``"input"`` (the first layer: n is its output
        width), ``"hidden"`` or ``"output"`` (the readout; n is the fan-in of both). A Dense cannot
        know its place in a network, so it is told.
      abc: ``"abc"`` only (required there): the pair ``(a, b)``. ``b_std`` must then be ``None``;
        under ``"mup"`` a bias is an input layer of one constant input (see `_abc_factors`).
    """
    name = describe("Dense", out_dim=out_dim, W_std=W_std, b_std=b_std, parameterization=parameterization,
                    **named_scalings(s), **(dict(role=role) if role is not None else {}),
                    **(dict(abc=abc) if abc is not None else {}))
    _check_parameterization(name, parameterization, PARAMETERIZATIONS + FEATURE_LEARNING_PARAMETERIZATIONS)
    _check_affine(name, out_dim, W_std, b_std)
    s_in, s_out = width_scalings(name, s, parameterization)
    exponents = _abc_exponents(name, parameterization, role, abc, b_std)
    if exponents is not None:  # acting on the channel axis wherever the inputs keep it (kernels.stax.layout)
        return in_layout(name, batch_axis, channel_axis,
                         _abc_dense(name, parameterization, out_dim, W_std, b_std, role, *exponents))
    width = out_dim * s_out

    def init_fn(rng, input_shape):
        fan_in = input_shape[-1]
        params = _weights(rng, (fan_in, width), fan_in / s_in, W_std, b_std, width, parameterization)
        return tuple(input_shape[:-1]) + (width,), params

    def apply_fn(params, x, **kwargs):
        W, b = params
        w_scale, b_scale = _scales(x.shape[-1], W_std, b_std, parameterization)
        out = (w_scale / math.sqrt(s_in)) * (x @ W)  # s_in is 1 in the ntk parameterization
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        return _affine_rule(k, lambda a: a, k.channels / s_in, W_std, b_std, parameterization, width)

    return in_layout(name, batch_axis, channel_axis, leaf(name, init_fn, apply_fn, rule, masks=masking.POINTWISE))


def _abc_dense(name, parameterization, out_dim, W_std, b_std, role, a, b):
    """The finite Dense of an abc-parametrization (`Dense`); its kernel_fn refuses, naming the layer."""
    def init_fn(rng, input_shape):
        fan_in = input_shape[-1]
        init_w, _, init_b, _ = _abc_factors(role, a, b, fan_in, out_dim, W_std, b_std)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is on
        k1, k2 = jax.random.split(rng)
        W = init_w * jax.random.normal(k1, (fan_in, out_dim), dtype)
        bias = None if b_std is None else init_b * jax.random.normal(k2, (out_dim,), dtype)
        return tuple(input_shape[:-1]) + (out_dim,), (W, bias)

    def apply_fn(params, x, **kwargs):
        W, bias = params
        _, mult_w, _, mult_b = _abc_factors(role, a, b, x.shape[-1], W.shape[-1], W_std, b_std)
        out = mult_w * (x @ W)
        return out if bias is None else out + mult_b * bias

    def rule(k: Kernel) -> Kernel:
        raise ValueError(f"{name}: kernel_fn: argument `parameterization` must be 'ntk' or 'standard' for an "
                         f"infinite-width kernel; received {parameterization!r}: "
                         "the infinite-width limit of an abc-parametrized network that learns features "
                         "(muP) is not a kernel method (Yang & Hu 2021, the dynamical dichotomy of §3); use "
                         "theory.mup for its limit, or init_fn/apply_fn for the finite network")

    return leaf(name, init_fn, apply_fn, rule)


def _conv_geometry(name, k: Kernel, filter_shape, strides, padding):
    if padding == "VALID":
        for size, f in zip(k.spatial_shape, filter_shape):
            if f > size:
                raise ValueError(f"{name}: filter {tuple(filter_shape)} is larger than the VALID input's "
                                 f"spatial shape {k.spatial_shape} (inputs {spatial_description(k)})")


def _check_padding(name, padding):
    if padding not in spatial.PADDINGS:
        raise ValueError(f"{name}: padding={padding!r}; expected one of {spatial.PADDINGS}")


def _window_args(name, window_shape, strides, default_strides):
    try:
        window_shape = tuple(positive_int(name, "filter_shape/window_shape", w) for w in window_shape)
        strides = default_strides if strides is None else tuple(positive_int(name, "strides", s) for s in strides)
    except TypeError:  # not a sequence
        raise ValueError(f"{name}: the window and strides must be tuples of positive ints; got "
                         f"{window_shape!r}, {strides!r}") from None
    if len(strides) != len(window_shape):
        raise ValueError(f"{name}: strides {strides} and window {window_shape} differ in length")
    return window_shape, strides


def _circular_pad(x, window_shape, strides):
    widths = [(0, 0)]
    for size, w, s in zip(x.shape[1:-1], window_shape, strides):
        widths.append(spatial.pad_amounts(size, w, s, "SAME"))
    return jnp.pad(x, widths + [(0, 0)], mode="wrap")


def Conv(out_chan: int, filter_shape, strides=None, padding: str = "VALID", W_std: float = 1., b_std=None,
         dimension_numbers=None, parameterization: str = "ntk", s=(1, 1)):
    """Convolution over any number of spatial axes of ``(N, *S, C)`` inputs.

    Args:
      out_chan: output channels.
      filter_shape: spatial filter shape, e.g. ``(3, 3)``.
      strides: defaults to ones.
      padding: ``"VALID"``, ``"SAME"`` or ``"CIRCULAR"`` (periodic).
      W_std, b_std, parameterization, s: as in `Dense`; ``fan_in = C * prod(filter_shape)`` (divided by
        ``s_in``); ``out_chan * s_out`` output channels.
      dimension_numbers: ``None`` (``(N, *S, C)`` inputs and outputs, filters ``(*F, C_in, C_out)``) or
        ``(lhs_spec, rhs_spec, out_spec)`` as `jax.lax` reads them, e.g. ``("NCHW", "OIHW", "NCHW")``:
        ``filter_shape`` and ``strides`` then follow ``rhs_spec``'s spatial letters, the weights have
        ``rhs_spec``'s shape, outputs ``out_spec``'s layout (`kernels.stax.layout`: the layer is the
        channels-last one between transpositions; the kernel's positions follow ``out_spec``).

    Kernel: ``K'[p, p'] = W^2 mean_t K[s p + t, s p' + t] + b^2`` (Novak et al. 2019, eq. 7).
    """
    if not isinstance(filter_shape, (tuple, list)):
        raise argument_error("Conv", "filter_shape", "a tuple of positive ints, one per spatial axis",
                             filter_shape, TypeError)
    name = describe("Conv", out_chan=out_chan, filter_shape=tuple(filter_shape), strides=strides,
                    padding=padding, W_std=W_std, b_std=b_std, parameterization=parameterization,
                    **(dict(dimension_numbers=dimension_numbers) if dimension_numbers is not None else {}),
                    **named_scalings(s))
    _check_padding(name, padding)
    _check_parameterization(name, parameterization)
    _check_affine(name, out_chan, W_std, b_std)
    s_in, s_out = width_scalings(name, s, parameterization)
    width = out_chan * s_out
    filter_shape, strides = _window_args(name, filter_shape, strides, (1,) * len(filter_shape))
    d, filter_rhs = len(filter_shape), filter_shape
    specs = None if dimension_numbers is None else ConvSpecs(name, d, dimension_numbers)
    if specs is not None:  # the canonical layer below works in the inputs' spatial order
        filter_shape, strides = specs.in_lhs_order(filter_shape), specs.in_lhs_order(strides)
    # Any number of spatial axes: inputs (N, *S, C), filters (*F, C_in, C_out), as axis indices
    # (lax's letter strings stop at three spatial axes).
    numbers = lax.ConvDimensionNumbers(lhs_spec=(0, d + 1) + tuple(range(1, d + 1)),
                                       rhs_spec=(d + 1, d) + tuple(range(d)),
                                       out_spec=(0, d + 1) + tuple(range(1, d + 1)))

    def init_fn(rng, input_shape):
        if len(input_shape) != d + 2:
            raise ValueError(f"{name}: expects inputs of rank {d + 2}, got shape {tuple(input_shape)}")
        fan_in = input_shape[-1] * math.prod(filter_shape)
        shape = filter_shape + (input_shape[-1], width) if specs is None \
            else specs.weight_shape(filter_rhs, input_shape[-1], width)  # drawn as neural-tangents does
        params = _weights(rng, shape, fan_in / s_in, W_std, b_std, width, parameterization)
        out_spatial = [spatial.output_size(n, f, st, padding)
                       for n, f, st in zip(input_shape[1:-1], filter_shape, strides)]
        return (input_shape[0], *out_spatial, width), params

    def apply_fn(params, x, **kwargs):
        W, b = params
        pad = padding
        if padding == "CIRCULAR":
            x, pad = _circular_pad(x, filter_shape, strides), "VALID"
        w_scale, b_scale = _scales(x.shape[-1] * math.prod(filter_shape), W_std, b_std, parameterization)
        W = W if specs is None else jnp.transpose(W, specs.weight_perm)
        out = lax.conv_general_dilated(x, W.astype(x.dtype), strides, pad, dimension_numbers=numbers)
        out = (w_scale / math.sqrt(s_in)) * out  # s_in is 1 in the ntk parameterization
        return out if b is None else out + b_scale * b

    def rule(k: Kernel) -> Kernel:
        _conv_geometry(name, k, filter_shape, strides, padding)
        fan_in = k.channels * math.prod(filter_shape) / s_in
        return flip_parity(_affine_rule(k, lambda a: spatial.conv_positions(a, k.full, d, filter_shape, strides,
                                                                            padding),
                                        fan_in, W_std, b_std, parameterization, width))

    # Masked inputs enter as zeros; an output is masked where its window's centre is (masking.window_centres).
    return with_layout(DEFAULT if specs is None else specs.layout, lambda perm: leaf(
        name, init_fn, apply_fn, rule, requires=Requires(spatial_ndim=d),
        masks=masking.Masking(masking.window_centres(filter_shape, strides, padding))))


def _pool(layer_name, window_shape, strides, padding, normalize_edges, average):
    if not isinstance(window_shape, (tuple, list)):
        raise argument_error(layer_name, "window_shape", "a tuple of positive ints, one per spatial axis",
                             window_shape, TypeError)
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
        if padding == "VALID" and any(w > s for w, s in zip(window_shape, k.spatial_shape)):
            raise ValueError(f"{name}: window {window_shape} is larger than the VALID input's "
                             f"spatial shape {k.spatial_shape}")
        pooled = k.map_all(lambda a: spatial.pool_positions(a, d, window_shape, strides, padding,
                                                            normalize_edges, average))
        # Pooling is linear, so the channel means are pooled as the outputs are.
        return pooled.map_means(lambda m: apply_fn((), m[..., None])[..., 0])

    # Masked inputs pool as the zeros they are, with the same divisor (neural-tangents 0.6.5);
    # an output is masked where its window's centre is (masking.window_centres).
    return leaf(name, init_fn, apply_fn, rule, needs_pairs, Requires(spatial_ndim=d),
                masks=masking.Masking(masking.window_centres(window_shape, strides, padding)))


def AvgPool(window_shape, strides=None, padding: str = "VALID", normalize_edges: bool = False,
            batch_axis: int = 0, channel_axis: int = -1):
    """Local average pooling; ``strides=None`` means strides of one (as neural-tangents).

    With ``normalize_edges`` and SAME padding, windows at the edge divide by the
    number of real (unpadded) entries. Kernel: Novak et al. 2019, §3.2.
    """
    return in_layout("AvgPool", batch_axis, channel_axis,
                     _pool("AvgPool", window_shape, strides, padding, normalize_edges, average=True))


def SumPool(window_shape, strides=None, padding: str = "VALID", batch_axis: int = 0, channel_axis: int = -1):
    """Local sum pooling; ``strides=None`` means strides of one."""
    return in_layout("SumPool", batch_axis, channel_axis, _pool("SumPool", window_shape, strides, padding, False,
                                                                average=False))


def _global_pool(layer_name, average):
    name = f"{layer_name}()"

    def init_fn(rng, input_shape):
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, x, mask=None, **kwargs):
        axes = tuple(range(1, x.ndim - 1))
        if mask is not None and average:  # x is zero at masked positions: the mean of the others
            return x.sum(axes) / masking.unmasked_count(mask)[:, None].astype(x.dtype)
        return x.mean(axes) if average else x.sum(axes)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        if k.mask1 is not None and average:
            # Masked positions carry zeros (kernels.stax.masking.through): sum, then divide by the
            # unmasked positions of each example (neural-tangents' masked mean_and_var).
            n1 = masking.unmasked_count(k.mask1).astype(k.nngp.dtype)
            n2 = n1 if k.mask2 is None else masking.unmasked_count(k.mask2).astype(k.nngp.dtype)
            summed = k.map_all(lambda a: spatial.global_pool_positions(a, d, False)).replace(full=False)
            return summed.replace(nngp=summed.nngp / (n1[:, None] * n2[None]), ntk=summed.ntk / (n1[:, None] * n2[None]),
                                  cov1=summed.cov1 / n1 ** 2, cov2=None if k.cov2 is None else summed.cov2 / n2 ** 2,
                                  mean1=None if k.mean1 is None else _sum_positions(k.mean1) / n1,
                                  mean2=None if k.mean2 is None else _sum_positions(k.mean2) / n2)
        pooled = k.map_all(lambda a: spatial.global_pool_positions(a, d, average)).replace(full=False)
        return pooled.map_means(lambda m: apply_fn((), m[..., None])[..., 0])

    # Inputs without spatial axes (N, C) pass unchanged: the mean (sum) over no axes, as in neural-tangents,
    # so a readout written for any input (e.g. after Flatten) ports.
    return leaf(name, init_fn, apply_fn, rule, needs_pairs, Requires(),
                masks=masking.Masking(masking.all_positions, apply_takes_mask=True))


def _sum_positions(m):
    """``(N, *S) -> (N,)``."""
    return m.reshape(m.shape[0], -1).sum(-1)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1):
    """Mean over all spatial positions: ``K' = mean_{p, p'} K[p, p']``."""
    return in_layout("GlobalAvgPool", batch_axis, channel_axis, _global_pool("GlobalAvgPool", average=True),
                     pooled_axes)


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1):
    """Sum over all spatial positions: ``K' = sum_{p, p'} K[p, p']``."""
    return in_layout("GlobalSumPool", batch_axis, channel_axis, _global_pool("GlobalSumPool", average=False),
                     pooled_axes)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0):
    """Flattens ``(N, *S, C)`` to ``(N, prod(S) C)``.

    Kernel: the mean over positions of equal-position covariances, since a
    following layer's weights are independent across positions (Novak et al. 2019,
    eq. 9) and its fan-in counts all positions: only equal positions are needed.

    Args:
      batch_axis: the inputs' batch axis; the other axes, channels among them wherever they are, are
        flattened in their order (as neural-tangents does).
      batch_axis_out: ``0`` (or ``-2``): outputs ``(N, F)``; ``1`` (or ``-1``): ``(F, N)``.
    """
    name = "Flatten()"
    batch_axis = check_axis_argument(name, "batch_axis", batch_axis)
    if isinstance(batch_axis_out, bool) or batch_axis_out not in (0, 1, -1, -2):
        raise argument_error(name, "batch_axis_out", "0 or 1 (or -2, -1)", batch_axis_out)
    out_perm = (0, 1) if batch_axis_out in (0, -2) else (1, 0)

    def init_fn(rng, input_shape):
        return (input_shape[0], math.prod(input_shape[1:])), ()

    def apply_fn(params, x, **kwargs):
        return x.reshape(x.shape[0], -1)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        flat = k.map_all(lambda a: spatial.diagonal_mean(a, k.full, d))
        # The flat output's channels are all (position, channel) pairs: its mean is over positions.
        flat = flat.map_means(lambda m: m.reshape(m.shape[0], -1).mean(-1))
        return flat.replace(full=False, channels=k.channels * math.prod(k.spatial_shape), is_gaussian=False)

    # Masked positions are zeros among the flat features: they count in the fan-in, as in
    # neural-tangents' Flatten (it averages over every position). Any axis but the batch axis may hold
    # the channels (channel_axis=None).
    return with_layout(Layout(batch_axis, None, lambda perm: out_perm), lambda perm: leaf(
        name, init_fn, apply_fn, rule, needs_diagonal, masks=masking.Masking(masking.all_positions)))


def Identity():
    """The identity: outputs equal inputs, and so do kernels."""
    return leaf("Identity()", lambda rng, input_shape: (input_shape, ()),
                lambda params, x, **kwargs: x, lambda k: k, masks=masking.POINTWISE)


def LayerNorm(axis=-1, eps: float = 1e-12, batch_axis: int = 0, channel_axis: int = -1):
    """Normalizes each example to zero mean and unit variance over ``axis``.

    At infinite width the mean ``m`` and the second moment ``q`` over channels (and the
    positions in ``axis``) are deterministic: ``m`` is the input kernel's `Kernel.mean1`
    (zero after Dense, Conv or attention; ``E[phi(u)]`` after an activation), ``q`` its
    variance diagonal, both averaged over the positions in ``axis``. With ``v = q - m^2``,

        ``K'[p, p'] = (K[p, p'] - m1[p] m2[p']) / sqrt(v1[p] v2[p'])``,
        ``Theta'[p, p'] = Theta[p, p'] / sqrt(v1[p] v2[p'])``,

    since the normalizer's own gradient terms vanish at infinite width (Xiao et al. 2020,
    App. C, for zero-mean inputs; the centring is the layer's definition). The output means
    are ``(m - M) / sqrt(v)`` per position, ``M`` the mean over ``axis`` (zero when ``axis``
    is the channel axis alone). ``axis`` must include the channel axis and not the batch
    axis. Refused after an `Elementwise` given only its ``nngp_fn`` (no closed-form mean).
    ``axis``, ``batch_axis`` and ``channel_axis`` name axes of the inputs as they come
    (`kernels.stax.layout`).
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    name = describe("LayerNorm", axis=axis, eps=eps)
    declared = Layout(check_axis_argument(name, "batch_axis", batch_axis),
                      check_axis_argument(name, "channel_axis", channel_axis))
    eps_value = finite_real(name, "eps", eps)
    if not isinstance(eps_value, jax.core.Tracer) and eps_value < 0:
        raise ValueError(f"{name}: argument `eps` must be non-negative; received {eps!r}")

    def canonical(perm):  # ``axis`` as axes of the canonical (N, *S, C) inputs; out of range ones left to refuse
        n = None if perm is None else len(perm)
        return axes if perm is None else tuple(perm.index(a % n) if -n <= a < n else a for a in axes)
    return with_layout(declared, lambda perm: _layer_norm(name, canonical(perm), eps))


def _layer_norm(name, axes, eps):
    """`LayerNorm` over ``axes`` of canonical inputs ``(N, *S, C)``."""

    def init_fn(rng, input_shape):
        return input_shape, ()

    def apply_fn(params, x, mask=None, **kwargs):
        if mask is None:
            mean = x.mean(axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axes, keepdims=True)
            return (x - mean) / jnp.sqrt(var + eps)
        # Statistics over the unmasked entries only (neural-tangents sums the squares of masked
        # entries too, which changes finite networks by O(mean^2) and vanishes at infinite width).
        w = jnp.broadcast_to((~mask)[..., None], x.shape).astype(x.dtype)
        count = jnp.maximum(w.sum(axes, keepdims=True), 1)
        mean = (w * x).sum(axes, keepdims=True) / count
        var = (w * (x - mean) ** 2).sum(axes, keepdims=True) / count
        return (x - mean) / jnp.sqrt(var + eps)

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        ndim = d + 2
        resolved = sorted(a % ndim if -ndim <= a < ndim else -1 for a in axes)
        if -1 in resolved or 0 in resolved or ndim - 1 not in resolved:
            raise ValueError(f"{name}: axis must name the channel axis and optionally spatial axes of "
                             f"inputs {spatial_description(k)}, never the batch axis")
        pooled_axes = tuple(a for a in resolved if a != ndim - 1)  # axes of (N, *S) per-position arrays

        def over_axes(a, mask):  # (N, *S): averaged over the normalized (unmasked) positions, broadcast back
            if not pooled_axes:
                return a
            if mask is None:
                return jnp.broadcast_to(a.mean(pooled_axes, keepdims=True), a.shape)
            w = (~mask).astype(a.dtype)  # masked positions are excluded (kernels.stax.masking)
            mean = (w * a).sum(pooled_axes, keepdims=True) / jnp.maximum(w.sum(pooled_axes, keepdims=True), 1)
            return jnp.broadcast_to(mean, a.shape)

        def normalizers(cov, m, mask):
            moment, mean = over_axes(position_variances(cov, k.full, d), mask), over_axes(m, mask)
            scale = jnp.sqrt(moment - mean ** 2 + eps)
            return scale, (m - mean) / scale

        mask2 = k.mask2_or_mask1
        s1, out_mean1 = normalizers(k.cov1, k.mean1, k.mask1)
        s2, out_mean2 = normalizers(k.cov2_or_cov1, k.mean2_or_mean1, mask2)
        shape = k.spatial_shape

        def left(v):
            return v.reshape((v.shape[0],) + shape + (1,) * d) if k.full else v

        def right(v):
            return v.reshape((v.shape[0],) + (1,) * d + shape) if k.full else v

        def pair(a, b):  # first batch against second: (N1, N2, ...)
            return left(a)[:, None] * right(b)[None]

        def same(a, b):  # one batch against itself: (N, ...)
            return left(a) * right(b)

        # E[(x[p] - M)(x'[p'] - M')] = K[p, p'] - m[p] m'[p'] + (m[p] - M)(m'[p'] - M') for
        # outputs x with channel means m and normalizing mean M (deterministic at infinite width).
        def normalized(cov, m1, m2, scale1, scale2, out1, out2, product):
            return (cov - product(m1, m2)) / product(scale1, scale2) + product(out1, out2)

        m1, m2 = k.mean1, k.mean2_or_mean1
        return k.replace(
            nngp=normalized(k.nngp, m1, m2, s1, s2, out_mean1, out_mean2, pair),
            ntk=k.ntk / pair(s1, s2),
            cov1=normalized(k.cov1, m1, m1, s1, s1, out_mean1, out_mean1, same),
            cov2=None if k.cov2 is None else normalized(k.cov2, m2, m2, s2, s2, out_mean2, out_mean2, same),
            mean1=out_mean1, mean2=None if k.mean2 is None else out_mean2)

    return leaf(name, init_fn, apply_fn, rule, keep_requirement, Requires(known_mean=True),
                masks=masking.Masking(apply_takes_mask=True))
