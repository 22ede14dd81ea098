"""Kernel of attention with ``1/sqrt(d)`` logits and a nonlinear mechanism, by Monte Carlo over the logits.

Hron, Bahri, Sohl-Dickstein & Novak 2020 ("Infinite attention: NNGP and NTK for deep attention
networks", ICML), §3 with the ``d^{-1/2}`` scaling: at infinite width the logits
``G^h = QK (Z W_Q^h)(Z W_K^h)^T / (C_Z sqrt(d))`` of each head are a centred Gaussian field over
(input, query position, key position), independent of the values, with

    Cov(G_pq(x), G_p'q'(x')) = QK^2 K_Z(x, x')[p, p'] K_Z(x, x')[q, q']        (QK = W_query_std W_key_std)

(one factor from the queries' weights, one from the keys'; ``x = x'`` gives the self terms with
``K_Z(x, x)``). Writing ``C`` for the ``(2P, 2P)`` covariance of ``Z``'s positions over both inputs
and ``R = C^{1/2}`` (the symmetric root), ``G = QK R Xi R^T`` with ``Xi`` a ``(2P, 2P)`` matrix of
independent standard normals has exactly that covariance (``Cov(G_ab, G_cd) = C_ac C_bd``);
``G(x)`` and ``G(x')`` are its two diagonal blocks. With ``S = phi(G)`` (softmax over keys, abs or
relu) and ``OV = W_out_std W_value_std``, the output kernels are (the paper's NNGP theorem and its
NTK, written for this layer):

    nngp = OV^2 E[S(x) K_Y S(x')^T] + b^2
    ntk  = OV^2 ( E[S(x) (ntk_Y + 2 K_Y) S(x')^T]                                 (values, W_V, W_out)
                  + QK^2 ((2 K_Z + ntk_Z) o E[T(K_Y, K_Z)] + K_Z o E[T(K_Y, ntk_Z)]) ) + b^2   (logits)

where every ``K``, ``ntk`` is the pair's cross covariance, ``o`` is the elementwise product and
``T(A, B)[p, p'] = sum_{q,q',r,r'} D^p(x)[q, r] A[q, q'] D^p'(x')[q', r'] B[r, r']`` with
``D^p[q, r] = dS_pq / dG_pr`` (softmax: ``s_q (delta_qr - s_r)``, ``s`` the row ``p`` of ``S``;
elementwise ``phi``: ``phi'(G_pq) delta_qr``). The tangent kernel of the logits,
``QK^2 ((2 K_Z + ntk_Z)[p, p'] K_Z[r, r'] + K_Z[p, p'] ntk_Z[r, r'])``, is deterministic (two weight
matrices and the input's NTK through queries and keys). With ``phi`` the identity, ``T(A, B)`` is
``<A, B>`` and these are the closed forms of `kernels.stax.attention` (tested).

The expectations are averages over ``n_samples`` draws of ``Xi`` from a fixed ``key``: common
random numbers, the same draws for every pair of inputs, so the kernel is a deterministic function
of the inputs, the same for any block size. Each draw is used in both input orders and the two
results averaged (``Xi`` and its block-swapped copy have the same law), which makes
``k(x, x') = k(x', x)^T`` exact. An entry needs only its own pair's covariances, so the estimate is
not an average of outer products ``phi_s(x) phi_s(x')^T`` over the data set and is positive
semi-definite only up to its Monte Carlo error (see `GlobalSelfAttention`'s docstring for the
measured size); `monte_carlo_standard_error` estimates that error for given inputs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.checks import argument_error, positive_int
from kernels.kernel import HIGHEST

DEFAULT_SAMPLES = 1024
DEFAULT_SEED = 0
# Draws per step of the scan over draws. Fixed (not chosen from the batch), so that every pair's
# sums are taken in the same order whatever the block size: block-by-block evaluation gives the
# same numbers. One step holds pairs x _CHUNK x P^2 floats per array.
_CHUNK = 8


def sampling_arguments(name: str, n_samples, key):
    """``(n_samples, seed)`` checked and defaulted: a positive int, and the words of the PRNG key
    ``key`` (an int seed, a typed key or a raw ``uint32[2]`` key), a tuple of ints."""
    n_samples = DEFAULT_SAMPLES if n_samples is None else positive_int(name, "n_samples", n_samples)
    if key is None:
        key = DEFAULT_SEED
    with jax.ensure_compile_time_eval():  # concrete words also while a user's jit builds the layer
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0:
            key = jax.random.PRNGKey(int(key))
        if isinstance(key, (jax.Array, np.ndarray)) and not isinstance(key, jax.core.Tracer):
            if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
                key = jax.random.key_data(key)
            if key.dtype == np.uint32 and key.ndim == 1:
                return n_samples, tuple(int(w) for w in np.asarray(key))
    raise argument_error(name, "key", "a non-negative int seed or one concrete PRNG key (jax.random.key or "
                         "jax.random.PRNGKey)", key, TypeError)


def _symmetric_root(c):
    """``C^{1/2}`` of a symmetric positive semi-definite ``c`` (eigenvalues clipped at 0): unique, so
    continuous in ``c``, also where ``c`` is singular (``x = x'``)."""
    values, vectors = jnp.linalg.eigh(c)
    return jnp.matmul(vectors * jnp.sqrt(jnp.clip(values, 0., None)), vectors.T, precision=HIGHEST)


def _mm(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


def _t(a):
    return jnp.swapaxes(a, -1, -2)


@functools.lru_cache(maxsize=16)
def _draws_for(n_samples: int, size: int, dtype_name: str, seed: tuple):
    steps = -(-n_samples // _CHUNK)
    xi = np.random.default_rng(seed).standard_normal((steps * _CHUNK, size, size)).astype(dtype_name)
    weight = np.where(np.arange(steps * _CHUNK) < n_samples, 1 / n_samples, 0.).astype(dtype_name)
    return xi.reshape(steps, _CHUNK, size, size), weight.reshape(steps, _CHUNK)


def logit_draws(n_samples: int, size: int, dtype, seed: tuple):
    """The standard normal ``Xi``, ``(steps, _CHUNK, size, size)``, and each draw's weight ``(steps, _CHUNK)``
    (``1 / n_samples``; ``0`` for the last step's spare draws).

    Drawn by NumPy's default generator seeded with the key's words ``seed``, once per shape, outside any
    trace, and embedded as constants: no random number generator is compiled into the kernel
    (JAX's threefry cost about 5 s of CPU to compile for these shapes).
    """
    return _draws_for(n_samples, size, jnp.dtype(dtype).name, seed)


def _es(spec, *operands):
    return jnp.einsum(spec, *operands, precision=HIGHEST)


def _tangent_contraction(mechanism, g1, g2, s1, s2, w, a, b):
    """``sum_c w_c T_c(a, b)`` (module docstring) over a step's draws ``c``: ``g, s: (c, P, P)``,
    ``w: (c,)``, ``a, b: (P, P)``. Sums over draws are folded into the products (one matrix product
    per step, not one per draw)."""
    if mechanism != "SOFTMAX":
        derivative = {"RELU": lambda g: (g > 0).astype(g.dtype), "ABS": jnp.sign,
                      "IDENTITY": jnp.ones_like}[mechanism]
        return _es("cpq,qr,cir->pi", w[:, None, None] * derivative(g1), a * b, derivative(g2))
    # D^p = diag(s) - s s^T: four terms, O(P^3) per draw instead of O(P^5) for the sum as written.
    ws1 = w[:, None, None] * s1
    s1a, s1b = _es("cpq,qr->cpr", s1, a), _es("cpq,qr->cpr", s1, b)
    as2, bs2 = _es("qr,cir->cqi", a, s2), _es("qr,cir->cqi", b, s2)
    return (_es("cpq,qr,cir->pi", ws1, a * b, s2) - _es("cpq,cqi->pi", ws1, as2 * bs2)
            - _es("cpq,ciq->pi", w[:, None, None] * s1a * s1b, s2)
            + _es("c,cpi,cpi->pi", w, _es("cpq,ciq->cpi", s1a, s2), _es("cpq,ciq->cpi", s1b, s2)))


def _one_order(z11, z12, z22, y12, ntk_z12, ntk_y12, *, mechanism, phi, qk, draws):
    """The four expectations of the module docstring for one pair, inputs in this order.

    ``ntk_z12 is None``: only ``"value"`` (what the NNGP needs).
    """
    p = z11.shape[-1]
    c = jnp.concatenate([jnp.concatenate([z11, z12], 1), jnp.concatenate([_t(z12), z22], 1)], 0)
    root = _symmetric_root(c)
    l1, l2 = root[:p], root[p:]
    with_ntk = ntk_z12 is not None

    def step(sums, draw):
        xi, w = draw
        g1 = qk * _es("pi,cij,qj->cpq", l1, xi, l1)
        g2 = qk * _es("pi,cij,qj->cpq", l2, xi, l2)
        s1, s2 = phi(g1), phi(g2)
        ws1 = w[:, None, None] * s1
        terms = dict(value=_es("cpq,qr,cir->pi", ws1, y12, s2))
        if with_ntk:
            terms.update(value_ntk=_es("cpq,qr,cir->pi", ws1, ntk_y12, s2),
                         logit=_tangent_contraction(mechanism, g1, g2, s1, s2, w, y12, z12),
                         logit_ntk=_tangent_contraction(mechanism, g1, g2, s1, s2, w, y12, ntk_z12))
        return {k: sums[k] + v for k, v in terms.items()}, None

    names = ("value", "value_ntk", "logit", "logit_ntk") if with_ntk else ("value",)
    sums, _ = lax.scan(step, {k: jnp.zeros((p, p), z11.dtype) for k in names}, draws)
    return sums


def pair_expectations(z11, z12, z22, y12, ntk_z12=None, ntk_y12=None, *, mechanism, phi, qk, draws):
    """``E[S(x) K_Y S(x')^T]`` (``"value"``) and, given the NTKs, ``E[S(x) ntk_Y S(x')^T]``
    (``"value_ntk"``), ``E[T(K_Y, K_Z)]`` (``"logit"``) and ``E[T(K_Y, ntk_Z)]`` (``"logit_ntk"``)
    for one pair of inputs, each ``(P, P)``; the mean of both input orders (module docstring).

    Args:
      z11, z22: ``(P, P)`` self covariances of what queries and keys see; ``z12`` their cross covariance.
      y12: ``(P, P)`` cross covariance of what values see; ``ntk_z12``, ``ntk_y12``: the NTKs.
      mechanism: ``"SOFTMAX"``, ``"ABS"``, ``"RELU"`` (or ``"IDENTITY"``, to test against its closed form).
      phi: the mechanism as a function of the logits ``(..., P, P)``.
      qk: ``W_query_std * W_key_std``.
      draws: ``(Xi, weights)`` of `logit_draws` for ``2 P`` positions.
    """

    def both(a, b):  # this order and the swapped one, stacked: one scan serves both
        return None if a is None else jnp.stack([a, b])
    orders = jax.vmap(functools.partial(_one_order, mechanism=mechanism, phi=phi, qk=qk, draws=draws))(
        both(z11, z22), both(z12, _t(z12)), both(z22, z11), both(y12, _t(y12)),
        both(ntk_z12, None if ntk_z12 is None else _t(ntk_z12)), both(ntk_y12, None if ntk_y12 is None else _t(ntk_y12)))
    return {k: (v[0] + _t(v[1])) / 2 for k, v in orders.items()}


def sampled_kernels(z: dict, y: dict, *, mechanism, phi, qk, ov, b2, draws) -> dict:
    """The layer's new ``nngp, ntk: (N1, N2, P, P)``, ``cov1, cov2: (N, P, P)`` (module docstring).

    ``z``, ``y``: what queries/keys and values see, dicts of ``nngp, ntk, cov1, cov2`` (``cov2``
    ``None`` when ``x2`` is ``None``); ``draws``: `logit_draws` for ``2 P`` positions.
    """
    expect = functools.partial(pair_expectations, mechanism=mechanism, phi=phi, qk=qk, draws=draws)
    z_cov2 = z["cov1"] if z["cov2"] is None else z["cov2"]
    over_second = jax.vmap(expect, in_axes=(None, 0, 0, 0, 0, 0))
    pairs = jax.vmap(over_second, in_axes=(0, 0, None, 0, 0, 0))(
        z["cov1"], z["nngp"], z_cov2, y["nngp"], z["ntk"], y["ntk"])
    ntk = ov ** 2 * (pairs["value_ntk"] + 2 * pairs["value"]
                     + qk ** 2 * ((2 * z["nngp"] + z["ntk"]) * pairs["logit"] + z["nngp"] * pairs["logit_ntk"]))

    # each input with itself, computed as every pair is; both batches in one scan
    z_self, y_self = z["cov1"], y["cov1"]
    if z["cov2"] is not None:
        z_self, y_self = jnp.concatenate([z_self, z["cov2"]]), jnp.concatenate([y_self, y["cov2"]])
    selves = ov ** 2 * jax.vmap(lambda a, b: expect(a, a, a, b)["value"])(z_self, y_self) + b2
    n1 = z["cov1"].shape[0]
    return dict(nngp=ov ** 2 * pairs["value"] + b2, ntk=ntk + b2, cov1=selves[:n1],
                cov2=None if z["cov2"] is None else selves[n1:])


def monte_carlo_standard_error(network, x1, x2=None, get="nngp", n_keys: int = 8, seed: int = 1):
    """Standard error of a sampled attention kernel (``linear_scaling=False`` with ``SOFTMAX``,
    ``ABS`` or ``RELU``) at given inputs, entry by entry.

    The kernel with ``key = k`` is an average of ``n_samples`` independent draws; its spread over
    independent keys is its standard error. This evaluates the network for ``n_keys`` keys split
    from ``seed`` (each a fresh ``kernel_fn``, so each compiles once) and returns the entries'
    standard deviation over them (``ddof=1``; relative accuracy about ``1 / sqrt(2 (n_keys - 1))``).
    It holds for any key, the default one included, as long as the network passes the same
    ``n_samples``.

    Args:
      network: ``key -> layer`` (or ``-> kernel_fn``), e.g.
        ``lambda key: stax.serial(stax.Dense(64), stax.GlobalSelfAttention(..., linear_scaling=False, key=key))``.
      x1, x2, get: as for ``kernel_fn``; ``get`` one name.
      n_keys: keys to spread over, at least 2.
      seed: where the keys come from.

    Returns:
      NumPy array of the kernel's shape.
    """
    where = "monte_carlo_standard_error"
    if isinstance(n_keys, bool) or not isinstance(n_keys, (int, np.integer)) or n_keys < 2:
        raise argument_error(where, "n_keys", "an int >= 2", n_keys)
    if not isinstance(get, str):
        raise argument_error(where, "get", "one name ('nngp' or 'ntk')", get, TypeError)
    estimates = []
    for key in jax.random.split(jax.random.PRNGKey(seed), n_keys):
        made = network(key)
        kernel_fn = made[2] if isinstance(made, tuple) else made
        estimates.append(np.asarray(kernel_fn(x1, x2, get)))
    return np.std(np.stack(estimates), axis=0, ddof=1)
