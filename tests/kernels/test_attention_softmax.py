"""`GlobalSelfAttention` with ``linear_scaling=False`` (``1/sqrt(d)`` logits) and a nonlinear mechanism:
the Monte Carlo kernel of `kernels.stax.attention_sampled` (Hron et al. 2020, "Infinite attention").

Independent truths: the Isserlis closed form of the IDENTITY mechanism (the same sampler run with
``phi`` the identity), the arc-cosine closed forms of E[relu relu], E[|u||v|] and their derivatives
(RELU, ABS), and Monte Carlo averages of wide finite networks (SOFTMAX). Next to each agreement, a
deliberately wrong theory fails the same check. Then the sampler's promises: deterministic,
exactly symmetric, the same under any block size, positive semi-definite within its stated tolerance.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, monte_carlo_kernel_fn, stax
from kernels.stax.attention_sampled import (logit_draws, monte_carlo_standard_error, pair_expectations,
                                            sampled_kernels)

P = 3  # positions in the pair-level checks
QK, OV = 1.3, 0.9


def _pair(seed=0, p=P):
    """Cross and self covariances of one pair (``z`` what queries/keys see, ``y`` values, and NTKs)."""
    rng = np.random.default_rng(seed)

    def cov():
        a = rng.standard_normal((2 * p, 3 * p))
        return a @ a.T / (3 * p)
    z, y, nz, ny = cov(), cov(), cov(), cov()
    y = 0.5 * z + 0.5 * y  # values correlated with queries/keys, as after a shared layer
    return dict(z11=z[:p, :p], z12=z[:p, p:], z22=z[p:, p:], y12=y[:p, p:], ntk_z12=nz[:p, p:], ntk_y12=ny[:p, p:])


MECHANISMS = {"IDENTITY": lambda g: g, "RELU": jax.nn.relu, "ABS": jnp.abs,
              "SOFTMAX": lambda g: jax.nn.softmax(g, axis=-1)}


@functools.lru_cache(maxsize=None)
def _replicates(mechanism, seed=0, replicas=16, n_samples=512, qk=QK):
    """``pair_expectations`` of `_pair` ``(seed)`` for ``replicas`` independent sets of draws (one compilation)."""
    pair = _pair(seed)
    f = jax.jit(lambda d: pair_expectations(**pair, mechanism=mechanism, phi=MECHANISMS[mechanism], qk=qk, draws=d))
    out = [f(logit_draws(n_samples, 2 * P, jnp.float64, (seed, 11))) for seed in range(replicas)]
    return {k: np.stack([np.asarray(o[k]) for o in out]) for k in out[0]}


def _within(samples, exact, sigmas=4.5):
    """Mean of replicas within ``sigmas`` standard errors (plus rounding) of ``exact``, entry by entry."""
    mean, error = samples.mean(0), samples.std(0, ddof=1) / math.sqrt(len(samples))
    return bool(np.all(np.abs(mean - exact) <= sigmas * error + 1e-10 * np.abs(exact).max()))


# ----------------------------------------------------------------------------- closed forms

def _isserlis(pair, qk=QK):
    """IDENTITY: ``E[G A G'^T] = qk^2 <z12, A> z12`` and ``T(A, B) = <A, B>`` (Gaussian logits' covariance)."""
    z12, y12 = pair["z12"], pair["y12"]
    return dict(value=qk ** 2 * np.sum(z12 * y12) * z12, value_ntk=qk ** 2 * np.sum(z12 * pair["ntk_y12"]) * z12,
                logit=np.full((P, P), np.sum(y12 * z12)), logit_ntk=np.full((P, P), np.sum(y12 * pair["ntk_z12"])))


def _arccos(mechanism, pair, qk=QK):
    """RELU/ABS: the four expectations summed over the Gaussian logits' bivariate laws (arc-cosine
    kernels, Cho & Saul 2009): E[phi phi] and E[phi' phi'] for every (p, q, p', q')."""
    d1, d2 = np.diag(pair["z11"]), np.diag(pair["z22"])
    v1 = qk ** 2 * np.einsum("p,q->pq", d1, d1)[:, :, None, None]
    v2 = qk ** 2 * np.einsum("p,q->pq", d2, d2)[None, None]
    c = qk ** 2 * np.einsum("ps,qt->pqst", pair["z12"], pair["z12"])  # (p, q, p', q')
    root = np.sqrt(v1 * v2)
    theta = np.arccos(np.clip(c / root, -1, 1))
    if mechanism == "RELU":
        phi = root / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
        dphi = (np.pi - theta) / (2 * np.pi)
    else:
        phi = 2 / np.pi * root * (np.sin(theta) + (np.pi / 2 - theta) * np.cos(theta))
        dphi = 1 - 2 * theta / np.pi
    y, ny = pair["y12"], pair["ntk_y12"]
    return dict(value=np.einsum("pqst,qt->ps", phi, y), value_ntk=np.einsum("pqst,qt->ps", phi, ny),
                logit=np.einsum("pqst,qt->ps", dphi, y * pair["z12"]),
                logit_ntk=np.einsum("pqst,qt->ps", dphi, y * pair["ntk_z12"]))


@pytest.mark.slow  # the default suite checks the sampler through IDENTITY (below) and finite networks
@pytest.mark.parametrize("mechanism", ["IDENTITY", "RELU", "ABS"])
def test_sampler_matches_closed_forms(mechanism):
    pair = _pair()
    samples = _replicates(mechanism)
    exact = (_isserlis if mechanism == "IDENTITY" else lambda p: _arccos(mechanism, p))(pair)
    for name in exact:
        assert _within(samples[name], exact[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["IDENTITY", "RELU"])
def test_a_wrong_logit_variance_fails_the_closed_forms(mechanism):
    pair = _pair()
    samples = _replicates(mechanism)
    wrong = (_isserlis(pair, QK * math.sqrt(2)) if mechanism == "IDENTITY"
             else _arccos(mechanism, pair, QK * math.sqrt(2)))  # logit variance twice the truth
    assert not _within(samples["value"], wrong["value"])


def test_sampled_kernels_combine_into_the_identity_closed_form():
    """`sampled_kernels` with the IDENTITY mechanism is the layer's Isserlis closed form: the
    coefficients of the NTK's value and logit terms (module docstring) are right."""
    pair = _pair(3)

    def four(a11, a12, a22):  # (N1, N2, P, P) with N1 = N2 = 1, and the self covariances
        return dict(nngp=a12[None, None], ntk=None, cov1=a11[None], cov2=a22[None])
    z = four(pair["z11"], pair["z12"], pair["z22"])
    z["ntk"] = pair["ntk_z12"][None, None]
    y = dict(z, nngp=pair["y12"][None, None], ntk=pair["ntk_y12"][None, None])
    b2 = 0.04

    run = jax.jit(lambda d: sampled_kernels(z, y, mechanism="IDENTITY", phi=MECHANISMS["IDENTITY"], qk=QK, ov=OV,
                                            b2=b2, draws=d))
    out = [run(logit_draws(256, 2 * P, jnp.float64, (seed, 5))) for seed in range(12)]
    c, zy = (QK * OV) ** 2, np.sum(pair["z12"] * pair["y12"])
    cross = np.sum(pair["z12"] * pair["ntk_y12"]) + np.sum(pair["y12"] * pair["ntk_z12"])
    exact_ntk = c * (zy * (pair["ntk_z12"] + 4 * pair["z12"]) + cross * pair["z12"]) + b2  # attention.py's rule
    samples = np.stack([np.asarray(o["ntk"][0, 0]) for o in out])
    assert _within(samples, exact_ntk)
    wrong = c * (zy * (pair["ntk_z12"] + 2 * pair["z12"]) + cross * pair["z12"]) + b2  # W_query, W_key forgotten
    assert not _within(samples, wrong)


def test_softmax_tangent_contraction_is_the_jacobians():
    """The four-term O(P^3) form of ``T(A, B)`` for softmax equals the sum over its definition with
    ``D^p = dS_p / dG_p`` from automatic differentiation."""
    from kernels.stax.attention_sampled import _tangent_contraction
    rng = np.random.default_rng(4)
    p = 4
    g1, g2 = rng.standard_normal((1, p, p)), rng.standard_normal((1, p, p))
    a, b = rng.standard_normal((p, p)), rng.standard_normal((p, p))
    softmax = MECHANISMS["SOFTMAX"]
    ours = _tangent_contraction("SOFTMAX", g1, g2, softmax(g1), softmax(g2), np.ones(1), a, b)

    def jacobians(g, h=1e-5):  # (p, q, r) = dS_pq / dG_pr by central differences, in NumPy
        def soft(v):
            e = np.exp(v - v.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
        steps = h * np.eye(p)
        return np.stack([(soft(g[i] + steps) - soft(g[i] - steps)).T / (2 * h) for i in range(p)])
    d1, d2 = jacobians(g1[0]), jacobians(g2[0])
    by_definition = np.einsum("pqr,qs,ust,rt->pu", d1, a, d2, b)
    np.testing.assert_allclose(ours, by_definition, rtol=1e-8, atol=1e-9)
    # the diagonal term alone (the elementwise mechanisms' form) is not it
    assert np.abs(np.einsum("pq,qs,us->pu", np.einsum("pqq->pq", d1), a * b, np.einsum("pqq->pq", d2))
                  - by_definition).max() > 1e-2


# ----------------------------------------------------------------------------- finite networks

L, C, N = 4, 4, 3
KEY_WIDTH, HEADS, VALUE_WIDTH = 256, 16, 16  # heads ~ sqrt(key width), as neural-tangents' tests scale them
GROUPS, PER_GROUP = 16, 8


def _softmax_layer(key_width=KEY_WIDTH, heads=HEADS, **changes):
    args = dict(W_query_std=1.5, W_key_std=1.4, W_value_std=1.1, W_out_std=0.9, b_std=0.2, linear_scaling=False,
                attention_mechanism="SOFTMAX")
    args.update(changes)
    return stax.GlobalSelfAttention(VALUE_WIDTH, key_width, VALUE_WIDTH, heads, **args)


def _finite_groups(layer, get, groups=GROUPS, per_group=PER_GROUP):
    """Means of ``GROUPS`` disjoint groups of ``PER_GROUP`` finite networks' empirical kernels, from one
    `monte_carlo_kernel_fn` (running averages at every group's end)."""
    init_fn, apply_fn, _ = layer
    x = np.random.default_rng(0).standard_normal((N, L, C))
    counts = [per_group * (g + 1) for g in range(groups)]
    with jax.enable_x64(False):  # sampling error (~1e-2) dwarfs float32 rounding
        key = jax.random.key(1, impl="unsafe_rbg")  # threefry would cost ~3 s of CPU to compile
        running = [np.asarray(m, np.float64) for m in
                   monte_carlo_kernel_fn(init_fn, apply_fn, key, counts)(jnp.asarray(x, jnp.float32), None, get)]
    totals = [r * n for r, n in zip(running, counts)]
    return x, np.stack([totals[0]] + [b - a for a, b in zip(totals, totals[1:])]) / per_group


@pytest.fixture(scope="module")
def finite_nngp():
    return _finite_groups(_softmax_layer(), "nngp")


def _agrees(exact, groups, sigmas=4.5, bias=0.02):
    """Every entry within ``sigmas`` standard errors of the finite networks' mean plus ``bias`` of the
    largest entry (finite key width: the logits are a sum of 256 products, not yet Gaussian).
    Measured: largest |z| 1.8 over 144 entries, worst relative gap 3.5%; 0.8 without the bias term."""
    mean, error = groups.mean(0), groups.std(0, ddof=1) / math.sqrt(len(groups))
    return bool(np.all(np.abs(mean - exact) <= sigmas * error + bias * np.abs(exact).max()))


@functools.lru_cache(maxsize=None)
def _theory(x_bytes):
    """The layer's NNGP as a function of ``W_query_std`` (a traced hyperparameter: the true and the
    wrong theories below share one compilation)."""
    x = np.frombuffer(x_bytes).reshape(N, L, C)
    return jax.jit(lambda w_query: _softmax_layer(W_query_std=w_query).kernel_fn(x, None, "nngp"))


def test_softmax_nngp_matches_finite_networks(finite_nngp):
    x, groups = finite_nngp
    assert _agrees(np.asarray(_theory(x.tobytes())(1.5)), groups)


@pytest.mark.parametrize("w_query", [
    1.5 * math.sqrt(2),  # logit variance twice the truth: measured |z| up to 8.5
    0.,                  # logits as deterministic (their mean, 0): uniform attention, |z| 21
])
def test_a_wrong_softmax_theory_fails_the_finite_networks(finite_nngp, w_query):
    x, groups = finite_nngp
    assert not _agrees(np.asarray(_theory(x.tobytes())(w_query)), groups)


@pytest.mark.slow
def test_softmax_ntk_matches_finite_networks():
    """The NTK through a Dense layer first (so that the input's NTK enters through queries, keys and
    values), against finite networks' empirical NTKs (narrower than for the NNGP: Jacobians of the
    queries' and keys' weights; about 20 s of CPU). Measured: largest |z| 4.0, worst relative gap
    5.3% (finite widths 64 and 128), against |z| 22 for a logit variance off by 2 and 28 for
    deterministic logits, which fail."""
    def network(**changes):
        return stax.serial(stax.Dense(64, W_std=1.1), _softmax_layer(key_width=128, heads=8, **changes))
    x, groups = _finite_groups(network(), "ntk", groups=8, per_group=4)
    assert _agrees(np.asarray(network().kernel_fn(x, None, "ntk")), groups, bias=0.03)
    for wrong in (1.5 * math.sqrt(2), 0.):
        assert not _agrees(np.asarray(network(W_query_std=wrong).kernel_fn(x, None, "ntk")), groups, bias=0.03)


# ----------------------------------------------------------------------------- the sampler's promises

def _hygiene_layer(n_samples=64, **changes):
    return stax.serial(stax.Dense(8, W_std=1.2), stax.GlobalSelfAttention(
        8, 8, 8, 2, linear_scaling=False, W_query_std=1.6, n_samples=n_samples, **changes))


def test_deterministic_symmetric_and_the_same_in_blocks():
    """Common random numbers: the same kernel on every call, ``k(x, x') = k(x', x)^T`` exactly, and
    the same numbers whether pairs are evaluated all at once or block by block."""
    _, _, kernel_fn = _hygiene_layer()
    x = np.random.default_rng(5).standard_normal((4, 3, 2))
    get = ("nngp",)
    whole = kernel_fn(x, None, get, block_size=0)
    again = kernel_fn(x, None, get, block_size=0)
    blocks = kernel_fn(x, None, get, block_size=1)
    k12 = kernel_fn(x[:2], x[2:], get, block_size=0)
    k21 = kernel_fn(x[2:], x[:2], get, block_size=0)
    for name in ("nngp",):  # and the NTK: test_the_same_under_batch_tiles (slow)
        a = np.asarray(getattr(whole, name))
        np.testing.assert_array_equal(np.asarray(getattr(again, name)), a)
        np.testing.assert_array_equal(np.asarray(getattr(k21, name)), np.asarray(getattr(k12, name)).transpose(1, 0, 3, 2))
        # Same draws in other XLA programs: they agree to 1e-12 under XLA's default pipeline, to 5e-7
        # under the cheap one the tests compile with (tests/conftest.py); other draws per block would
        # differ by the Monte Carlo error, ~1e-2.
        np.testing.assert_allclose(np.asarray(getattr(blocks, name)), a, rtol=2e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(getattr(k12, name)), a[:2, 2:], rtol=2e-6, atol=1e-9)


@pytest.mark.slow
def test_the_same_under_batch_tiles():
    _, _, kernel_fn = _hygiene_layer()
    x = np.random.default_rng(6).standard_normal((5, 3, 2))
    whole = np.asarray(kernel_fn(x, None, "ntk", block_size=0))
    for size in (2, 3):
        tiled = np.asarray(batch(kernel_fn, batch_size=size, progress=False)(x, None, "ntk"))
        # other XLA programs: 1e-12 under the default pipeline, ~1e-7 under the tests' cheap one (conftest)
        np.testing.assert_allclose(tiled, whole, rtol=2e-6, atol=1e-9)
    k12, k21 = (np.asarray(kernel_fn(a, b, "ntk", block_size=0)) for a, b in ((x[:2], x[2:4]), (x[2:4], x[:2])))
    np.testing.assert_array_equal(k21, k12.transpose(1, 0, 3, 2))
    np.testing.assert_allclose(k12, whole[:2, 2:4], rtol=2e-6, atol=1e-9)


def _matrix(a):
    n, _, p, _ = a.shape
    return np.transpose(a, (0, 2, 1, 3)).reshape(n * p, n * p)


@pytest.mark.slow
def test_positive_semi_definite_up_to_its_monte_carlo_error():
    """Each entry comes from its own pair of inputs, so the matrix is PSD only up to its error
    ``E``: ``lambda_min >= -||E||_2``, bounded here by 3 ||SE||_F with the standard errors of
    `monte_carlo_standard_error`. Low-rank inputs (one channel) make the true kernel nearly
    singular, the hard case: measured lambda_min / lambda_max -1.5e-2 (nngp) at 1024 draws."""
    x = np.random.default_rng(12).standard_normal((12, 3, 1))

    def layer(key=None):
        return stax.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False, W_query_std=2., key=key)
    k = np.asarray(layer().kernel_fn(x, None, "nngp"))
    error = monte_carlo_standard_error(layer, x, None, "nngp", n_keys=6)
    smallest = np.linalg.eigvalsh(_matrix(k))[0]
    assert smallest < 0  # the case this test is about: not PSD by construction
    assert smallest >= -3 * np.linalg.norm(_matrix(error))


@pytest.mark.slow
def test_standard_error_predicts_the_distance_to_a_precise_estimate():
    x = np.random.default_rng(8).standard_normal((3, 4, 2))

    def layer(key=None, n_samples=256):
        return stax.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False, W_query_std=1.5, key=key,
                                        n_samples=n_samples)
    error = monte_carlo_standard_error(layer, x, None, "nngp", n_keys=10)
    rough = np.asarray(layer().kernel_fn(x, None, "nngp"))
    precise = np.asarray(layer(key=99, n_samples=16384).kernel_fn(x, None, "nngp"))  # error / 8
    z = np.abs(rough - precise) / error
    assert z.max() < 5 and 0.3 < np.sqrt(np.mean(z ** 2)) < 2  # standard errors, not 10x off either way


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs, argument", [
    (dict(linear_scaling=True, n_samples=64), "n_samples"),
    (dict(linear_scaling=False, attention_mechanism="IDENTITY", key=3), "key"),
    (dict(linear_scaling=False, n_samples=0), "n_samples"),
    (dict(linear_scaling=False, n_samples=10.), "n_samples"),
    (dict(linear_scaling=False, key="seed"), "key"),
    (dict(linear_scaling=False, key=-1), "key"),
])
def test_sampling_arguments_are_checked_by_name(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"GlobalSelfAttention.*argument `{argument}`"):
        stax.GlobalSelfAttention(8, 8, 8, 2, **kwargs)


@pytest.mark.slow
def test_every_key_form_is_one_seed_and_the_key_is_used():
    x = np.random.default_rng(2).standard_normal((2, 3, 2))
    kernels = [np.asarray(stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False, attention_mechanism="RELU",
                                                   n_samples=8, key=key).kernel_fn(x, None, "nngp"))
               for key in (7, jax.random.PRNGKey(7), jax.random.key(7), 8)]
    np.testing.assert_array_equal(kernels[0], kernels[1])
    np.testing.assert_array_equal(kernels[0], kernels[2])
    assert np.abs(kernels[3] - kernels[0]).max() > 1e-6  # another key, another (equally valid) estimate
