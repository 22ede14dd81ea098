"""Global self-attention over all positions (Hron et al. 2020, "Infinite attention").

Finite network (neural-tangents' conventions, so that it converges to the kernel):
inputs ``X: (N, P, C)`` after flattening positions; per head ``h`` with standard
normal weights, keys ``Z K_h``, queries ``Z Q_h`` (``Q_h = K_h``, tied, under
``linear_scaling``), values ``Y V_h``; logits
``G = W_query_std W_key_std (Z Q_h)(Z K_h)^T / (C_Z d)`` with ``d = n_chan_key`` under
``linear_scaling`` and ``sqrt(n_chan_key)`` otherwise; the mechanism ``phi``
(softmax over keys, identity, abs, relu) applied to ``G``; heads concatenated and
projected by ``W_out`` scaled by ``W_out_std W_value_std / sqrt(n_heads n_chan_val C_Y)``.

Positional embeddings (``pos_emb_type``; Hron et al. 2020 discuss their effect on the
limit; the construction is neural-tangents 0.6.5's): a trainable standard normal
``E: (P, C_E)`` shared by all examples, drawn with position covariance ``R`` (``E <- R^{1/2} E``)
and scaled by ``W_pos_emb_std``. ``R = I`` without ``pos_emb_decay_fn``, else
``R[p, q] = decay(sum_i |p_i - q_i|^pos_emb_p_norm)`` over the spatial coordinates ``p_i``.
``"SUM"`` uses ``Z = X + E`` (``C_E = C``), ``"CONCAT"`` ``Z = [X, E]`` along channels.
Queries and keys see ``Z``; values see ``Y = Z`` with ``val_pos_emb``, else ``Y = X``.
At infinite width ``X`` and ``E`` are uncorrelated, so every covariance ``K`` of ``X``
becomes ``mix(K) = w_X K + w_E R`` for ``Z`` with ``w_X = 1, w_E = W_pos_emb_std^2`` (SUM) or
``w_X = C / (C + C_E), w_E = W_pos_emb_std^2 C_E / (C + C_E)`` (CONCAT). As ``E`` is a
parameter, the NTK of ``Z`` is ``mix(ntk)`` too (its gradient adds ``W_pos_emb_std^2 R``).

Kernels, with ``QK = W_query_std W_key_std``, ``OV = W_out_std W_value_std``, ``K_Z = mix(K)``
(what queries and keys see) and ``K_Y`` (``K_Z`` with ``val_pos_emb``, else ``K``):

* ``linear_scaling=True``: logits converge to ``QK cov_Z(x, x)`` (Hron et al. 2020, §3),
  so ``A_x = phi(QK cov_Z(x, x))`` is deterministic and
  ``nngp' = OV^2 A_1 K_Y A_2^T + b^2``, ``ntk' = OV^2 A_1 (ntk_Y + 2 K_Y) A_2^T + b^2``
  (``W_out`` and ``W_value`` each contribute one ``A K_Y A^T``; queries and keys none).
* ``linear_scaling=False`` with ``IDENTITY``: logits stay Gaussian, and by Isserlis
  ``nngp'[p, p'] = (QK OV)^2 <K_Z, K_Y> K_Z[p, p'] + b^2`` with
  ``<A, B> = sum_{q,q'} A[q,q'] B[q,q']``, and
  ``ntk' = (QK OV)^2 (<K_Z, K_Y> (ntk_Z + 4 K_Z) + (<K_Z, ntk_Y> + <K_Y, ntk_Z>) K_Z) + b^2``
  (four weight matrices; the input's NTK through queries, keys and values).
* ``linear_scaling=False`` with ``SOFTMAX``, ``ABS`` or ``RELU``: the logits are the same Gaussian
  field, but ``E[phi(G) ... phi(G')]`` has no closed form; it is a Monte Carlo average over the
  logits with common random numbers (`kernels.stax.attention_sampled`, which gives the formulas).

Masked inputs (``mask_constant``, `kernels.stax.masking`), as neural-tangents 0.6.5: masked keys get
no weight (logit ``-1e20`` under softmax, 0 otherwise), and the embeddings are zero at masked positions,
so ``R`` is zero wherever either position is masked. This counts where logits are Gaussian
(``linear_scaling=False``): ``<K_Z, K_Y>`` sums over every pair of positions. The Monte Carlo kernels
refuse masks (neural-tangents has no kernel there).

Layouts (``batch_axis``, ``channel_axis``: `kernels.stax.layout`): the layer computes on canonical
``(N, *S, C)`` inputs. Its embeddings are kept in the inputs' layout, as neural-tangents draws them
(``(1, *S, C_E)`` with the batch and channel axes moved where the inputs have theirs); ``R`` is the same
in any layout, as distances between positions do not depend on the order of the spatial axes.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error, finite_real, positive_int
from kernels.kernel import HIGHEST, Kernel
from kernels.stax.attention_sampled import logit_draws, sampled_kernels, sampling_arguments
from kernels.stax import masking
from kernels.stax.layer import Requires, describe, leaf, needs_pairs
from kernels.stax.layout import Layout, check_axis_argument, layout_shape, to_canonical, with_layout

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")
POSITIONAL_EMBEDDINGS = ("NONE", "SUM", "CONCAT")
# The embedding arguments and their defaults: with pos_emb_type="NONE" they must keep them.
_EMBEDDING_DEFAULTS = dict(pos_emb_p_norm=2, pos_emb_decay_fn=None, n_chan_pos_emb=None, W_pos_emb_std=1.,
                           val_pos_emb=False)


def _mechanism(name):
    return {
        "SOFTMAX": lambda g: jax.nn.softmax(g, axis=-1),
        "IDENTITY": lambda g: g,
        "ABS": jnp.abs,
        "RELU": jax.nn.relu,
    }[name]


def position_distances(shape: tuple, p_norm: float) -> np.ndarray:
    """``D[p, q] = sum_i |p_i - q_i|^p_norm`` over the positions of ``shape`` (row-major), ``(P, P)``."""
    coordinates = np.indices(shape).reshape(len(shape), -1).astype(np.float64)  # (d, P)
    return np.sum(np.abs(coordinates[:, :, None] - coordinates[:, None, :]) ** p_norm, axis=0)


def position_covariance(name: str, shape: tuple, p_norm: float, decay_fn) -> np.ndarray:
    """The embeddings' covariance over positions, ``(P, P)`` float64 (module docstring).

    ``I`` without ``decay_fn``; else ``decay_fn(position_distances(shape, p_norm))``, refused,
    naming the layer, unless it is a finite, symmetric, positive semi-definite matrix of the
    distances' shape: anything else is the covariance of no embedding.
    """
    size = math.prod(shape)
    if decay_fn is None:
        return np.eye(size)
    distances = position_distances(shape, p_norm)
    with jax.ensure_compile_time_eval():  # a constant of the shape, also while a kernel is traced
        try:
            r = np.asarray(decay_fn(jnp.asarray(distances)), np.float64)
        except Exception as error:
            raise ValueError(f"{name}: pos_emb_decay_fn failed on the ({size}, {size}) matrix of position "
                             f"distances: {type(error).__name__}: {error}") from error
    if r.shape != distances.shape:
        raise ValueError(f"{name}: pos_emb_decay_fn must act elementwise: given distances of shape "
                         f"{distances.shape} it returned shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"{name}: pos_emb_decay_fn returned non-finite values on the distances of spatial "
                         f"shape {shape} (pos_emb_p_norm={p_norm})")
    if not np.allclose(r, r.T, rtol=1e-12, atol=0):
        raise ValueError(f"{name}: pos_emb_decay_fn must act elementwise on the (symmetric) distances; it "
                         f"returned a matrix that is not symmetric on spatial shape {shape}")
    smallest = float(np.linalg.eigvalsh(r)[0])
    if smallest < -1e-6 * max(1., float(np.abs(r).max())):
        raise ValueError(f"{name}: pos_emb_decay_fn with pos_emb_p_norm={p_norm} gives a position covariance "
                         f"that is not positive semi-definite on spatial shape {shape} (smallest eigenvalue "
                         f"{smallest:.3g}), the covariance of no embedding; e.g. exp(-d) needs "
                         "pos_emb_p_norm <= 2")
    return r


def _covariance_root(r: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = r`` for a positive semi-definite ``r``: the Cholesky factor, as
    neural-tangents 0.6.5 draws its embeddings (so that its parameters give its outputs), or, for a
    singular ``r`` where that fails, the eigenvalue root (eigenvalues clipped at 0)."""
    try:
        return np.linalg.cholesky(r)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(r)
        return vectors * np.sqrt(np.clip(values, 0., None))


def _embedding_weights(pos_emb_type: str, channels: int, n_chan_pos_emb, W_pos_emb_std):
    """``(w_X, w_E)`` of ``mix(K) = w_X K + w_E R`` (module docstring)."""
    if pos_emb_type == "SUM":
        return 1., W_pos_emb_std ** 2
    c_e = channels if n_chan_pos_emb is None else n_chan_pos_emb
    return channels / (channels + c_e), W_pos_emb_std ** 2 * c_e / (channels + c_e)


def _check_embedding_arguments(name, pos_emb_type, arguments):
    """The embedding arguments, checked; with ``"NONE"`` they must keep their defaults (unused)."""
    if pos_emb_type == "NONE":
        for argument, default in _EMBEDDING_DEFAULTS.items():
            value = arguments[argument]
            if value is not default and value != default:
                raise argument_error(name, argument, f"{default!r} when pos_emb_type='NONE' (no embeddings "
                                     "use it)", value)
        return
    if arguments["pos_emb_decay_fn"] is not None and not callable(arguments["pos_emb_decay_fn"]):
        raise argument_error(name, "pos_emb_decay_fn", "None or a function of the position distances",
                             arguments["pos_emb_decay_fn"], TypeError)
    if arguments["pos_emb_decay_fn"] is None and arguments["pos_emb_p_norm"] != 2:
        raise argument_error(name, "pos_emb_p_norm", "2 (the default) when pos_emb_decay_fn is None (identity "
                             "embedding covariance, no distances)", arguments["pos_emb_p_norm"])
    p_norm = finite_real(name, "pos_emb_p_norm", arguments["pos_emb_p_norm"])
    if not isinstance(p_norm, jax.core.Tracer) and p_norm <= 0:
        raise argument_error(name, "pos_emb_p_norm", "a positive real number", arguments["pos_emb_p_norm"])
    if arguments["n_chan_pos_emb"] is not None:
        positive_int(name, "n_chan_pos_emb", arguments["n_chan_pos_emb"])
    finite_real(name, "W_pos_emb_std", arguments["W_pos_emb_std"])
    if not isinstance(arguments["val_pos_emb"], (bool, np.bool_)):
        raise argument_error(name, "val_pos_emb", "True or False", arguments["val_pos_emb"], TypeError)


def _check_sum_channels(name, n_chan_pos_emb, channels):
    if n_chan_pos_emb is not None and n_chan_pos_emb != channels:
        raise ValueError(f"{name}: with pos_emb_type='SUM' the embeddings are added to the inputs, so "
                         f"argument `n_chan_pos_emb` must be None or the inputs' {channels} channels; "
                         f"received {n_chan_pos_emb}")


def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                        linear_scaling: bool = True, W_key_std: float = 1., W_value_std: float = 1.,
                        W_query_std: float = 1., W_out_std: float = 1., b_std=None,
                        attention_mechanism: str = "SOFTMAX", pos_emb_type: str = "NONE",
                        pos_emb_p_norm: float = 2, pos_emb_decay_fn=None, n_chan_pos_emb=None,
                        W_pos_emb_std: float = 1., val_pos_emb: bool = False, batch_axis: int = 0,
                        channel_axis: int = -1, n_samples=None, key=None):
    """Multi-head self-attention over all spatial positions of ``(N, *S, C)`` inputs.

    Args:
      n_chan_out, n_chan_key, n_chan_val: widths of the output, keys/queries and values.
      n_heads: number of heads.
      linear_scaling: logits scaled by ``1/n_chan_key`` (deterministic attention at
        infinite width) rather than ``1/sqrt(n_chan_key)``.
      W_key_std, W_value_std, W_query_std, W_out_std, b_std: weight and bias scales.
      attention_mechanism: ``"SOFTMAX"``, ``"IDENTITY"``, ``"ABS"`` or ``"RELU"`` (or
        `stax.AttentionMechanism`); with ``linear_scaling=False`` only ``"IDENTITY"`` has a
        closed-form kernel, the others a Monte Carlo one (``n_samples``, ``key``).
      pos_emb_type: ``"NONE"``, ``"SUM"`` or ``"CONCAT"`` (or `stax.PositionalEmbedding`):
        trainable positional embeddings added to, or concatenated with, the inputs of
        queries and keys (and of values with ``val_pos_emb``); module docstring.
      pos_emb_p_norm: ``p`` of the distances ``sum_i |p_i - q_i|^p`` given to ``pos_emb_decay_fn``;
        only with a ``pos_emb_decay_fn``.
      pos_emb_decay_fn: elementwise function from those distances to the embeddings'
        position covariance (e.g. ``lambda d: jnp.exp(-d)``); ``None``: independent
        positions (identity covariance). It must give a positive semi-definite matrix.
      n_chan_pos_emb: channels of the embeddings (``None``: the inputs'); with ``"SUM"``
        only ``None`` or the inputs' channel count.
      W_pos_emb_std: scale of the embeddings.
      val_pos_emb: whether values see the embeddings too.
      n_samples: only with ``linear_scaling=False`` and ``SOFTMAX``/``ABS``/``RELU``: draws of the
        logits per kernel entry (default 1024); the error falls as ``1 / sqrt(n_samples)``.
      key: only there too: an int seed or a PRNG key (default 0) for those draws. The same draws
        serve every pair of inputs (common random numbers).

    With ``pos_emb_type="NONE"`` the five embedding arguments must keep their defaults.

    The Monte Carlo kernel (``linear_scaling=False``, ``SOFTMAX``/``ABS``/``RELU``) is a
    deterministic function of the inputs, exactly symmetric (``k(x, x') = k(x', x)^T``), and the
    same for any block size of ``kernel_fn`` or ``kernels.batch`` (to 1e-12). Its cost grows as
    ``n_samples P^3`` per pair of inputs with ``P`` positions (measured, 2-core CPU, ``P = 8``, 10
    inputs, 1024 draws: NNGP 0.4-0.7 s, NNGP and NTK 1.7-2.2 s, after a compilation of 2-4 s). Its standard
    error for given inputs comes from `kernels.stax.attention_sampled.monte_carlo_standard_error`.
    Positive semi-definite only within that error: each entry is estimated from its own pair of
    inputs, not as an average of outer products over the data set, so the smallest eigenvalue of
    the ``(N P, N P)`` matrix can be negative, down to ``-||error||_2``. Measured at 1024 draws:
    ``lambda_min / lambda_max`` between -5e-4 and -1.5e-2 for NNGP and NTK on few-channel inputs
    (nearly singular true kernels; 3 of 5 cases negative), positive on 8 positions with 4 channels.
    For GP inference add a jitter above that (``theory.regression`` reports the one it uses) or
    raise ``n_samples``.
    """
    name = describe("GlobalSelfAttention", n_chan_out=n_chan_out, n_heads=n_heads,
                    linear_scaling=linear_scaling, attention_mechanism=str(attention_mechanism),
                    pos_emb_type=str(pos_emb_type))
    if attention_mechanism not in MECHANISMS:
        raise ValueError(f"{name}: attention_mechanism={attention_mechanism!r}; expected one of {MECHANISMS}")
    sampled = not linear_scaling and attention_mechanism != "IDENTITY"
    if sampled:
        n_samples, seed = sampling_arguments(name, n_samples, key)
    else:
        for argument, value in dict(n_samples=n_samples, key=key).items():
            if value is not None:
                raise argument_error(name, argument, "None (the default): only linear_scaling=False with "
                                     "attention_mechanism SOFTMAX, ABS or RELU has a Monte Carlo kernel", value)
    if not isinstance(pos_emb_type, str) or pos_emb_type not in POSITIONAL_EMBEDDINGS:
        raise argument_error(name, "pos_emb_type", f"one of {POSITIONAL_EMBEDDINGS} or a "
                             "stax.PositionalEmbedding", pos_emb_type)
    pos_emb_type = str(pos_emb_type)  # a stax.PositionalEmbedding is its value
    _check_embedding_arguments(name, pos_emb_type, dict(
        pos_emb_p_norm=pos_emb_p_norm, pos_emb_decay_fn=pos_emb_decay_fn, n_chan_pos_emb=n_chan_pos_emb,
        W_pos_emb_std=W_pos_emb_std, val_pos_emb=val_pos_emb))
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
    embedded = pos_emb_type != "NONE"

    @functools.lru_cache(maxsize=8)
    def covariance(shape):
        return position_covariance(name, shape, pos_emb_p_norm, pos_emb_decay_fn)

    @functools.lru_cache(maxsize=8)
    def covariance_root(shape):
        return None if pos_emb_decay_fn is None else _covariance_root(covariance(shape))

    def make(perm):
        """The canonical layer for inputs in layout ``perm`` (`kernels.stax.layout.with_layout`): its
        embeddings, a parameter, are kept in the inputs' layout, ``(1, *S, C_E)`` with the batch and
        channel axes where the inputs have theirs, as neural-tangents 0.6.5 draws and keeps them."""
        perm = () if perm is None else perm  # canonical: no transposition
        return leaf(name, functools.partial(init_fn, perm=perm), functools.partial(apply_fn, perm=perm), rule,
                    needs_pairs, Requires(spatial=True), masks=masking.Masking(apply_takes_mask=True))

    def init_fn(rng, input_shape, perm):
        if len(input_shape) < 3:
            raise ValueError(f"{name}: needs inputs with spatial axes (N, *S, C); got shape {tuple(input_shape)}")
        c = c_keys = c_values = input_shape[-1]
        kq, kk, kv, ko, kb, ke = jax.random.split(rng, 6)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
        embedding = None
        if embedded:
            if pos_emb_type == "SUM":
                _check_sum_channels(name, n_chan_pos_emb, c)
            c_e = c if n_chan_pos_emb is None else n_chan_pos_emb
            covariance(tuple(input_shape[1:-1]))  # refuses a decay_fn that gives no covariance, now
            shape = (1,) + tuple(input_shape[1:-1]) + (c_e,)  # canonical; drawn in the inputs' layout
            embedding = jax.random.normal(ke, layout_shape(shape, perm), dtype)
            if pos_emb_type == "CONCAT":
                c_keys += c_e
                c_values += c_e if val_pos_emb else 0
        keys = jax.random.normal(kk, (n_heads, c_keys, n_chan_key), dtype)
        queries = None if linear_scaling else jax.random.normal(kq, (n_heads, c_keys, n_chan_key), dtype)
        values = jax.random.normal(kv, (n_heads, c_values, n_chan_val), dtype)
        out = jax.random.normal(ko, (n_heads * n_chan_val, n_chan_out), dtype)
        bias = None if b_std is None else jax.random.normal(kb, (n_chan_out,), dtype)
        return tuple(input_shape[:-1]) + (n_chan_out,), (queries, keys, values, out, bias, embedding)

    def embed(flat, embedding, spatial_shape):
        """``(Z, Y)``: the inputs of queries/keys and of values, ``(N, P, C_Z)``, ``(N, P, C_Y)``."""
        if embedding is None:
            return flat, flat
        if embedding.shape[1:-1] != spatial_shape:
            raise ValueError(f"{name}: apply_fn: inputs of spatial shape {spatial_shape}, but the positional "
                             f"embeddings were initialised for {embedding.shape[1:-1]}")
        e = embedding.reshape(-1, embedding.shape[-1])  # (P, C_E)
        root = covariance_root(spatial_shape)
        if root is not None:
            e = jnp.matmul(jnp.asarray(root, e.dtype), e, precision=HIGHEST)
        e = W_pos_emb_std * e
        if pos_emb_type == "SUM":
            _check_sum_channels(name, e.shape[-1], flat.shape[-1])
            z = flat + e
        else:
            z = jnp.concatenate([flat, jnp.broadcast_to(e, flat.shape[:2] + e.shape[-1:])], -1)
        return z, (z if val_pos_emb else flat)

    def masked_logits(logits, key_mask):
        """Masked keys (``key_mask``: ``(..., P)`` booleans, broadcast against the logits' last axis)
        get no weight: logit `masking.MASKED_LOGIT` under softmax, zero under the other mechanisms
        (their weight is the mechanism of the logit), as in neural-tangents."""
        fill = masking.MASKED_LOGIT if attention_mechanism == "SOFTMAX" else 0.
        return jnp.where(key_mask, jnp.asarray(fill, logits.dtype), logits)

    def apply_fn(params, x, mask=None, perm=None, **kwargs):
        queries, keys, values, out, bias, embedding = params
        if embedding is not None and len(perm) == embedding.ndim:  # else embed() names the shapes that differ
            embedding = to_canonical(embedding, perm)
        n, spatial_shape = x.shape[0], x.shape[1:-1]
        z, y = embed(x.reshape(n, -1, x.shape[-1]), embedding, spatial_shape)
        if mask is not None:  # masked positions' embeddings are zero too, as in neural-tangents
            z, y = (jnp.where(mask.reshape(n, -1, 1), jnp.zeros((), a.dtype), a) for a in (z, y))
        k = jnp.einsum("npc,hcd->nhpd", z, keys)
        q = k if queries is None else jnp.einsum("npc,hcd->nhpd", z, queries)
        scale = n_chan_key if linear_scaling else math.sqrt(n_chan_key)
        logits = qk * jnp.einsum("nhpd,nhqd->nhpq", q, k) / (z.shape[-1] * scale)
        if mask is not None:
            logits = masked_logits(logits, mask.reshape(n, 1, 1, -1))
        # Heads concatenated value channel first, head second (row v * n_heads + h of W_out), as
        # neural-tangents 0.6.5 lays them out, so that its parameters give its outputs.
        heads = jnp.einsum("nhpq,nqc,hcv->npvh", mechanism(logits), y, values)
        heads = heads.reshape(n, y.shape[1], n_chan_val * n_heads)
        f = ov * heads @ out / math.sqrt(n_heads * n_chan_val * y.shape[-1])
        if bias is not None:
            f = f + b_std * bias
        return f.reshape((n,) + spatial_shape + (n_chan_out,))

    def rule(k: Kernel) -> Kernel:
        d = k.spatial_ndim
        shape = k.spatial_shape
        p = math.prod(shape)

        def flat(a):
            return None if a is None else a.reshape(a.shape[:a.ndim - 2 * d] + (p, p))

        def unflat(a):
            return None if a is None else a.reshape(a.shape[:-2] + shape + shape)

        if k.mask1 is not None and sampled:
            raise NotImplementedError(f"{name}: kernel_fn: masked inputs (argument `mask_constant`) are supported "
                                      "with linear_scaling=True or the IDENTITY mechanism (neural-tangents has no "
                                      "kernel for the others)")
        x = dict(nngp=flat(k.nngp), ntk=flat(k.ntk), cov1=flat(k.cov1), cov2=flat(k.cov2))
        z = x  # what queries and keys see
        if embedded:
            if pos_emb_type == "SUM":
                _check_sum_channels(name, n_chan_pos_emb, k.channels)
            w_x, w_e = _embedding_weights(pos_emb_type, k.channels, n_chan_pos_emb, W_pos_emb_std)
            r = jnp.asarray(covariance(shape), x["nngp"].dtype)
            rs = dict(nngp=r, ntk=r, cov1=r, cov2=r)
            if k.mask1 is not None:  # masked positions' embeddings are zero (apply_fn), so R is there too
                hidden = dict(nngp=masking.pair_mask(k), cov1=masking.self_mask(k.mask1, k),
                              cov2=masking.self_mask(k.mask2_or_mask1, k))
                hidden["ntk"] = hidden["nngp"]
                rs = {f: jnp.where(flat(hidden[f]), jnp.zeros((), r.dtype), r) for f in rs}
            z = {f: None if a is None else w_x * a + w_e * rs[f] for f, a in x.items()}
        y = z if val_pos_emb else x  # what values see
        if linear_scaling:
            g1, g2 = qk * z["cov1"], None if z["cov2"] is None else qk * z["cov2"]
            if k.mask1 is not None:  # (N, P, P) logits, keys last (Hron et al. 2020, eq. 9 with masked keys)
                g1 = masked_logits(g1, k.mask1.reshape(k.mask1.shape[0], 1, -1))
                if g2 is not None:
                    g2 = masked_logits(g2, k.mask2.reshape(k.mask2.shape[0], 1, -1))
            a1 = mechanism(g1)
            a2 = a1 if g2 is None else mechanism(g2)

            def sandwich(m, left, right):
                inner = jnp.einsum("...pq,...qr->...pr", left, m, precision=HIGHEST)
                return ov ** 2 * jnp.einsum("...pq,...rq->...pr", inner, right, precision=HIGHEST) + b2
            new = dict(nngp=sandwich(y["nngp"], a1[:, None], a2[None]),
                       ntk=sandwich(y["ntk"] + 2 * y["nngp"], a1[:, None], a2[None]),
                       cov1=sandwich(y["cov1"], a1, a1),
                       cov2=None if y["cov2"] is None else sandwich(y["cov2"], a2, a2))
        elif sampled:
            draws = logit_draws(n_samples, 2 * p, x["nngp"].dtype, seed)
            new = sampled_kernels(z, y, mechanism=str(attention_mechanism), phi=mechanism, qk=qk, ov=ov, b2=b2,
                                  draws=draws)
        else:
            c = (qk * ov) ** 2

            def inner(a, b):
                return jnp.sum(a * b, axis=(-2, -1), keepdims=True)
            zy = inner(z["nngp"], y["nngp"])
            cross = inner(z["nngp"], y["ntk"]) + inner(y["nngp"], z["ntk"])
            new = dict(nngp=c * zy * z["nngp"] + b2,
                       ntk=c * (zy * (z["ntk"] + 4 * z["nngp"]) + cross * z["nngp"]) + b2,
                       cov1=c * inner(z["cov1"], y["cov1"]) * z["cov1"] + b2,
                       cov2=None if y["cov2"] is None else c * inner(z["cov2"], y["cov2"]) * z["cov2"] + b2)
        return k.replace(**{f: unflat(a) for f, a in new.items()}, channels=n_chan_out,
                         is_gaussian=True, own_weights=True).with_zero_means()  # W_out has mean zero

    return with_layout(Layout(check_axis_argument(name, "batch_axis", batch_axis),
                              check_axis_argument(name, "channel_axis", channel_axis)), make)
