"""Global self-attention over all positions (Hron et al. 2020, "Infinite attention").

Finite network (neural-tangents' conventions, so that it converges to the kernel):
inputs ``X: (N, P, C)`` after flattening positions; per head ``h`` with standard
normal weights, keys ``X K_h``, queries ``X Q_h`` (``Q_h = K_h``, tied, under
``linear_scaling``), values ``X V_h``; logits
``G = W_query_std W_key_std (X Q_h)(X K_h)^T / (C d)`` with ``d = n_chan_key`` under
``linear_scaling`` and ``sqrt(n_chan_key)`` otherwise; the mechanism ``phi``
(softmax over keys, identity, abs, relu) applied to ``G``; heads concatenated and
projected by ``W_out`` scaled by ``W_out_std W_value_std / sqrt(n_heads n_chan_val C)``.

Kernels, with ``QK = W_query_std W_key_std`` and ``OV = W_out_std W_value_std``:

* ``linear_scaling=True``: logits converge to ``QK cov(x, x)`` (Hron et al. 2020, §3),
  so ``A_x = phi(QK cov(x, x))`` is deterministic and
  ``nngp' = OV^2 A_1 K A_2^T + b^2``, ``ntk' = OV^2 A_1 (ntk + 2 K) A_2^T + b^2``
  (``W_out`` and ``W_value`` each contribute one ``A K A^T``; queries and keys none).
* ``linear_scaling=False`` with ``IDENTITY``: logits stay Gaussian, and by Isserlis
  ``nngp'[p, p'] = (QK OV)^2 <K, K> K[p, p'] + b^2`` with ``<A, B> = sum_{q,q'} A[q,q'] B[q,q']``,
  ``ntk' = (QK OV)^2 (<K, K> (ntk + 4 K) + 2 <K, ntk> K) + b^2``
  (four weight matrices, and the input's NTK through queries, keys and values).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.checks import default_layout, finite_real, positive_int
from kernels.kernel import HIGHEST, Kernel
from kernels.stax.layer import Requires, describe, leaf, needs_pairs, spatial_description

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")


def _mechanism(name):
    return {
        "SOFTMAX": lambda g: jax.nn.softmax(g, axis=-1),
        "IDENTITY": lambda g: g,
        "ABS": jnp.abs,
        "RELU": jax.nn.relu,
    }[name]


def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                        linear_scaling: bool = True, W_key_std: float = 1., W_value_std: float = 1.,
                        W_query_std: float = 1., W_out_std: float = 1., b_std=None,
                        attention_mechanism: str = "SOFTMAX", pos_emb_type: str = "NONE",
                        pos_emb_p_norm: float = 2, pos_emb_decay_fn=None, n_chan_pos_emb=None,
                        W_pos_emb_std: float = 1., val_pos_emb: bool = False, batch_axis: int = 0,
                        channel_axis: int = -1):
    """Multi-head self-attention over all spatial positions of ``(N, *S, C)`` inputs.

    Args:
      n_chan_out, n_chan_key, n_chan_val: widths of the output, keys/queries and values.
      n_heads: number of heads.
      linear_scaling: logits scaled by ``1/n_chan_key`` (deterministic attention at
        infinite width) rather than ``1/sqrt(n_chan_key)``.
      W_key_std, W_value_std, W_query_std, W_out_std, b_std: weight and bias scales.
      attention_mechanism: ``"SOFTMAX"``, ``"IDENTITY"``, ``"ABS"`` or ``"RELU"``;
        with ``linear_scaling=False`` only ``"IDENTITY"`` has a closed-form kernel.
      pos_emb_type: only ``"NONE"`` is supported.
    """
    name = describe("GlobalSelfAttention", n_chan_out=n_chan_out, n_heads=n_heads,
                    linear_scaling=linear_scaling, attention_mechanism=attention_mechanism)
    if attention_mechanism not in MECHANISMS:
        raise ValueError(f"{name}: attention_mechanism={attention_mechanism!r}; expected one of {MECHANISMS}")
    if not linear_scaling and attention_mechanism != "IDENTITY":
        raise ValueError(f"{name}: with linear_scaling=False only attention_mechanism='IDENTITY' has a "
                         f"closed-form kernel; got {attention_mechanism!r}")
    if pos_emb_type != "NONE":
        raise ValueError(f"{name}: pos_emb_type={pos_emb_type!r} is not supported; only 'NONE'")
    default_layout(name, batch_axis=(batch_axis, 0), channel_axis=(channel_axis, -1))
    for argument, value in dict(n_chan_out=n_chan_out, n_chan_key=n_chan_key, n_chan_val=n_chan_val,
                                n_heads=n_heads).items():
        positive_int(name, argument, value)
    for argument, value in dict(W_key_std=W_key_std, W_value_std=W_value_std, W_query_std=W_query_std,
                                W_out_std=W_out_std).items():
        finite_real(name, argument, value)
    finite_real(name, "b_std", b_std, optional=True)
    mechanism = _mechanism(attention_mechanism)
    qk, ov = W_query_std * W_key_std, W_out_std * W_value_std
    b2 = 0. if b_std is None else b_std ** 2

    def init_fn(rng, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"{name}: needs inputs with spatial axes (N, *S, C); got shape {tuple(input_shape)}")
        c = input_shape[-1]
        kq, kk, kv, ko, kb = jax.random.split(rng, 5)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
        keys = jax.random.normal(kk, (n_heads, c, n_chan_key), dtype)
        queries = None if linear_scaling else jax.random.normal(kq, (n_heads, c, n_chan_key), dtype)
        values = jax.random.normal(kv, (n_heads, c, n_chan_val), dtype)
        out = jax.random.normal(ko, (n_heads * n_chan_val, n_chan_out), dtype)
        bias = None if b_std is None else jax.random.normal(kb, (n_chan_out,), dtype)
        return tuple(input_shape[:-1]) + (n_chan_out,), (queries, keys, values, out, bias)

    def apply_fn(params, x, **kwargs):
        queries, keys, values, out, bias = params
        n, spatial_shape, c = x.shape[0], x.shape[1:-1], x.shape[-1]
        flat = x.reshape(n, -1, c)
        k = jnp.einsum("npc,hcd->nhpd", flat, keys)
        q = k if queries is None else jnp.einsum("npc,hcd->nhpd", flat, queries)
        scale = n_chan_key if linear_scaling else math.sqrt(n_chan_key)
        logits = qk * jnp.einsum("nhpd,nhqd->nhpq", q, k) / (c * scale)
        heads = jnp.einsum("nhpq,nqc,hcv->nphv", mechanism(logits), flat, values)
        heads = heads.reshape(n, flat.shape[1], n_heads * n_chan_val)
        y = ov * heads @ out / math.sqrt(n_heads * n_chan_val * c)
        if bias is not None:
            y = y + b_std * bias
        return y.reshape((n,) + spatial_shape + (n_chan_out,))

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        shape = k.spatial_shape
        p = math.prod(shape)

        def flat(a):
            return a.reshape(a.shape[:a.ndim - 2 * d] + (p, p))

        def unflat(a):
            return a.reshape(a.shape[:-2] + shape + shape)

        nngp, ntk, cov1 = flat(k.nngp), flat(k.ntk), flat(k.cov1)
        cov2 = None if k.cov2 is None else flat(k.cov2)
        if linear_scaling:
            a1 = mechanism(qk * cov1)
            a2 = a1 if cov2 is None else mechanism(qk * cov2)

            def sandwich(x, left, right):
                inner = jnp.einsum("...pq,...qr->...pr", left, x, precision=HIGHEST)
                return jnp.einsum("...pq,...rq->...pr", inner, right, precision=HIGHEST)
            new_nngp = ov ** 2 * sandwich(nngp, a1[:, None], a2[None]) + b2
            new_ntk = ov ** 2 * sandwich(ntk + 2 * nngp, a1[:, None], a2[None]) + b2
            new_cov1 = ov ** 2 * sandwich(cov1, a1, a1) + b2
            new_cov2 = None if cov2 is None else ov ** 2 * sandwich(cov2, a2, a2) + b2
        else:
            c = (qk * ov) ** 2

            def inner(x, y):
                return jnp.sum(x * y, axis=(-2, -1), keepdims=True)
            kk = inner(nngp, nngp)
            new_nngp = c * kk * nngp + b2
            new_ntk = c * (kk * (ntk + 4 * nngp) + 2 * inner(nngp, ntk) * nngp) + b2
            new_cov1 = c * inner(cov1, cov1) * cov1 + b2
            new_cov2 = None if cov2 is None else c * inner(cov2, cov2) * cov2 + b2
        return k.replace(nngp=unflat(new_nngp), ntk=unflat(new_ntk), cov1=unflat(new_cov1),
                         cov2=None if new_cov2 is None else unflat(new_cov2), channels=n_chan_out,
                         is_gaussian=True, own_weights=True).with_zero_means()  # W_out has mean zero

    return leaf(name, init_fn, apply_fn, rule, needs_pairs, Requires(spatial=True))
