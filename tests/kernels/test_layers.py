"""One test over every layer and activation: closed form against finite networks, and kernel hygiene.

Each case is ``serial(first, LAYER, readout)``: a linear first layer makes the
layer's input Gaussian, a wide readout averages over its channels. The closed
form must lie within a few standard errors of the Monte Carlo mean of empirical
kernels of finite networks built from the same description (init_fn/apply_fn).
With one hidden layer the finite-width mean is exact (each channel of the first
layer is exactly Gaussian over draws), so only sampling error counts; layers with
a random normalizer (LayerNorm, attention) get an O(1/width) bias allowance.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import empirical_kernel_fn, monte_carlo_kernel_fn, stax

WIDTH = 128
SAMPLES = 64
# Spatial networks keep every position's outputs, so their Jacobians hold
# outputs x parameters entries: a narrower width keeps them to tens of MB.
SPATIAL_WIDTH = 32


def dense():
    return stax.Dense(WIDTH, W_std=1.2, b_std=0.3)


def conv(d=2):
    return stax.Conv(SPATIAL_WIDTH, (2,) * d, padding="SAME", W_std=1.2, b_std=0.3)


def tanh_nngp(cov12, var1, var2):
    """E[erf(u) erf(v)] (Williams 1997): an Elementwise with a user-given dual."""
    return (2 / jnp.pi) * jnp.arcsin(2 * cov12 / jnp.sqrt((1 + 2 * var1) * (1 + 2 * var2)))


MLP = (3, 4)
IMG = (3, 4, 4, 2)
SEQ = (3, 4, 3)

# id: (network body, input shape, bias allowance relative to max |kernel|)
CASES = {
    "Relu": (lambda: [dense(), stax.Relu()], MLP, 0),
    "LeakyRelu": (lambda: [dense(), stax.LeakyRelu(0.1)], MLP, 0),
    "ABRelu": (lambda: [dense(), stax.ABRelu(-0.3, 0.8)], MLP, 0),
    "Abs": (lambda: [dense(), stax.Abs()], MLP, 0),
    "Erf": (lambda: [dense(), stax.Erf(1.2, 0.7, 0.1)], MLP, 0),
    "Sigmoid_like": (lambda: [dense(), stax.Sigmoid_like()], MLP, 0),
    "Gelu": (lambda: [dense(), stax.Gelu()], MLP, 0),
    "Sin": (lambda: [dense(), stax.Sin(1.1, 0.9, 0.2)], MLP, 0),
    "Cos": (lambda: [dense(), stax.Cos()], MLP, 0),
    "Rbf": (lambda: [dense(), stax.Rbf(0.5)], MLP, 0),
    "Gaussian": (lambda: [dense(), stax.Gaussian(1., -0.5)], MLP, 0),
    "Exp": (lambda: [dense(), stax.Exp(1., 0.3)], MLP, 0),
    "Sign": (lambda: [dense(), stax.Sign()], MLP, 0),
    "Monomial": (lambda: [dense(), stax.Monomial(3)], MLP, 0),
    "RectifiedMonomial": (lambda: [dense(), stax.RectifiedMonomial(2)], MLP, 0),
    "Polynomial": (lambda: [dense(), stax.Polynomial([0.2, -0.5, 0.3])], MLP, 0),
    "Hermite": (lambda: [dense(), stax.Hermite(3)], MLP, 0),
    "Elementwise": (lambda: [dense(), stax.Elementwise(jax.scipy.special.erf, tanh_nngp)], MLP, 0),
    "ElementwiseNumerical": (lambda: [dense(), stax.ElementwiseNumerical(jnp.tanh, 30)], MLP, 0),
    "Dense_standard": (lambda: [stax.Dense(WIDTH, 1.1, 0.2, parameterization="standard"), stax.Relu()], MLP, 0),
    "Identity": (lambda: [dense(), stax.Identity(), stax.Erf()], MLP, 0),
    "LayerNorm": (lambda: [dense(), stax.LayerNorm(), stax.Relu()], MLP, 0.05),
    # After an activation LayerNorm subtracts its nonzero channel mean (Erf's is zero: the
    # normalization alone); a rule that ignored the mean was off by 0.32 after Relu.
    "LayerNorm_after_Relu": (lambda: [dense(), stax.Relu(), stax.LayerNorm()], MLP, 0.05),
    "LayerNorm_after_Gelu": (lambda: [dense(), stax.Gelu(), stax.LayerNorm()], MLP, 0.05),
    "LayerNorm_after_Erf": (lambda: [dense(), stax.Erf(), stax.LayerNorm()], MLP, 0.05),
    "FanInSum": (lambda: [dense(), stax.FanOut(2), stax.parallel(stax.serial(dense(), stax.Relu()), stax.Identity()),
                          stax.FanInSum()], MLP, 0),
    # Two ReLU branches have nonzero channel means, whose product is their covariance: a plain
    # sum of the branches' kernels (as neural-tangents computes) misses it.
    "FanInSum_relu_branches": (lambda: [dense(), stax.FanOut(2), stax.parallel(stax.serial(dense(), stax.Relu()),
                                                                               stax.serial(dense(), stax.Relu())),
                                        stax.FanInSum()], MLP, 0),
    "FanInSum_relu_and_shared": (lambda: [dense(), stax.Relu(), stax.FanOut(2),
                                          stax.parallel(stax.serial(dense(), stax.Relu()), stax.Identity()),
                                          stax.FanInSum()], MLP, 0.05),
    "FanInProd": (lambda: [stax.FanOut(2), stax.parallel(dense(), dense()), stax.FanInProd()], MLP, 0),
    "FanInConcat": (lambda: [stax.FanOut(2), stax.parallel(stax.serial(dense(), stax.Relu()),
                                                           stax.serial(stax.Dense(WIDTH // 2), stax.Erf())),
                             stax.FanInConcat()], MLP, 0),
    "repeat": (lambda: [stax.repeat(stax.serial(dense(), stax.Relu()), 2)], MLP, 0.05),
    "Conv_SAME": (lambda: [conv(), stax.Relu(), stax.Conv(SPATIAL_WIDTH, (3, 3), padding="SAME")], IMG, 0),
    "Conv_VALID_strided": (lambda: [conv(), stax.Relu(), stax.Conv(SPATIAL_WIDTH, (2, 2), (2, 1), padding="VALID")], IMG, 0),
    "Conv_CIRCULAR": (lambda: [conv(), stax.Relu(), stax.Conv(SPATIAL_WIDTH, (3, 2), padding="CIRCULAR")], IMG, 0),
    "Conv_standard": (lambda: [stax.Conv(SPATIAL_WIDTH, (2, 2), padding="SAME", b_std=0.1, parameterization="standard"),
                               stax.Relu()], IMG, 0),
    "Conv_standard_s": (lambda: [stax.Conv(SPATIAL_WIDTH // 2, (2, 2), padding="SAME", b_std=0.1, parameterization="standard",
                                           s=(1, 2)), stax.Relu(),
                                 stax.Conv(SPATIAL_WIDTH, (2, 1), padding="VALID", W_std=1.2, parameterization="standard",
                                           s=(2, 1))], IMG, 0),
    "Conv1D": (lambda: [stax.Conv(SPATIAL_WIDTH, (2,), (2,), padding="SAME", W_std=1.3, b_std=0.1), stax.Relu()], SEQ, 0),
    "Conv3D": (lambda: [stax.Conv(SPATIAL_WIDTH, (2, 2, 2), padding="SAME"), stax.Relu()], (3, 3, 3, 3, 2), 0),
    "AvgPool": (lambda: [conv(), stax.Relu(), stax.AvgPool((2, 2), (1, 2), padding="SAME")], IMG, 0),
    "AvgPool_normalize_edges": (lambda: [conv(), stax.AvgPool((3, 3), padding="SAME", normalize_edges=True)], IMG, 0),
    "SumPool": (lambda: [conv(), stax.Relu(), stax.SumPool((2, 2), (2, 2))], IMG, 0),
    "GlobalAvgPool": (lambda: [conv(), stax.Relu(), stax.GlobalAvgPool()], IMG, 0),
    "GlobalSumPool": (lambda: [conv(), stax.Erf(), stax.GlobalSumPool()], IMG, 0),
    "Flatten": (lambda: [conv(), stax.Relu(), stax.Flatten()], IMG, 0),
    "LayerNorm_spatial": (lambda: [conv(), stax.LayerNorm(axis=(1, 2, 3)), stax.Relu()], IMG, 0.05),
    "LayerNorm_spatial_after_Relu": (lambda: [conv(), stax.Relu(), stax.LayerNorm()], IMG, 0.05),
    "LayerNorm_spatial_axes_after_Gelu": (lambda: [conv(), stax.Gelu(), stax.LayerNorm(axis=(1, 2, 3))], IMG, 0.05),
    "LayerNorm_spatial_after_Erf_pooled": (lambda: [conv(), stax.Erf(), stax.AvgPool((2, 2)), stax.LayerNorm()],
                                           IMG, 0.05),
    # neural-tangents 0.6.5 names of kernels/stax/extra.py (wrong rules fail these: test_layers_nt2.py)
    "Gabor": (lambda: [dense(), stax.Gabor()], MLP, 0),
    "Dense_standard_s": (lambda: [stax.Dense(WIDTH // 2, 1.1, 0.2, parameterization="standard", s=(1, 2)), stax.Relu(),
                                  stax.Dense(WIDTH, 1.2, 0.1, parameterization="standard", s=(2, 1))], MLP, 0),
    "Index": (lambda: [conv(), stax.Relu(), stax.Index(stax.Slice[:, 1:, ::-2])], IMG, 0),
    "ImageResize_linear": (lambda: [conv(), stax.Relu(), stax.ImageResize((-1, 5, 3, -1), "linear")], IMG, 0),
    "ImageResize_cubic": (lambda: [conv(), stax.Relu(), stax.ImageResize((-1, 3, 6, -1), "cubic")], IMG, 0),
    "Attention_SOFTMAX": (lambda: [stax.Dense(SPATIAL_WIDTH), stax.GlobalSelfAttention(SPATIAL_WIDTH, SPATIAL_WIDTH, SPATIAL_WIDTH, 2)], SEQ, 0.1),
    "Attention_RELU": (lambda: [stax.Dense(SPATIAL_WIDTH), stax.GlobalSelfAttention(
        SPATIAL_WIDTH, SPATIAL_WIDTH, SPATIAL_WIDTH, 2, attention_mechanism="RELU", b_std=0.2)], SEQ, 0.1),
    # 1/sqrt(d) softmax (Hron et al. 2020): a Monte Carlo kernel; heads ~ sqrt(width), as the limit needs
    "Attention_softmax_sqrt_d": (lambda: [stax.Dense(SPATIAL_WIDTH), stax.GlobalSelfAttention(
        SPATIAL_WIDTH, SPATIAL_WIDTH, SPATIAL_WIDTH, 6, linear_scaling=False, attention_mechanism="SOFTMAX")], SEQ, 0.1),
    "Attention_quadratic": (lambda: [stax.Dense(SPATIAL_WIDTH), stax.GlobalSelfAttention(
        SPATIAL_WIDTH, SPATIAL_WIDTH, SPATIAL_WIDTH, 2, linear_scaling=False, attention_mechanism="IDENTITY")], SEQ, 0.1),
}


def network(case):
    body, shape, _ = CASES[case]
    width = WIDTH if len(shape) == 2 else SPATIAL_WIDTH
    return stax.serial(*body(), stax.Dense(width, W_std=0.9, b_std=0.1)), shape


def inputs(shape, seed=0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@functools.lru_cache(maxsize=None)
def closed_and_samples(case):
    """The closed form, and per-network empirical kernels of SAMPLES random networks.

    The NNGP is averaged over the readout's channels; the NTK is taken of its
    first channel only (channels are exchangeable, so its mean is the same) to
    keep Jacobians small. All samples run in one vectorized, compiled call.
    """
    (init_fn, apply_fn, kernel_fn), shape = network(case)
    nngp_fn = empirical_kernel_fn(apply_fn)
    ntk_fn = empirical_kernel_fn(lambda params, z: apply_fn(params, z)[..., :1])
    # Finite networks in float32 (sampling error, about 1e-2, dwarfs its rounding),
    # one sample after another (vmapped weights turn convolutions into slow grouped ones).
    with jax.enable_x64(False):
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)

        @jax.jit
        def draw(keys):
            def one(key):
                _, params = init_fn(key, x.shape)
                return nngp_fn(x, None, "nngp", params), ntk_fn(x, None, "ntk", params)
            return jax.lax.map(one, keys)

        nngp, ntk = draw(jax.random.split(jax.random.PRNGKey(0), SAMPLES))
    closed = kernel_fn(jnp.asarray(np.asarray(x), jnp.float64), None, ("nngp", "ntk"))
    return closed, {"nngp": np.asarray(nngp, np.float64), "ntk": np.asarray(ntk, np.float64)}


# The rows the default suite runs (each about 5-10 s of CPU, mostly compiling): one per distinct piece
# of kernel code (the activation wiring, each linear, pooling, normalization, merging and attention
# rule, the standard parameterization, widekit's own mean corrections). Every other row runs with the
# slow checks (`-m slow`); its layer is still checked in the default suite elsewhere: each activation's
# dual map and its derivative against quadrature (tests/kernels/test_duals.py) and the networks
# against neural-tangents' values (test_oracle.py, test_layers_nt2.py).
DEFAULT_ROWS = {"Relu", "Erf", "Elementwise", "Dense_standard", "Conv_VALID_strided", "Conv_standard",
                "AvgPool_normalize_edges", "GlobalAvgPool", "Flatten", "LayerNorm_after_Relu",
                "LayerNorm_spatial_after_Erf_pooled", "FanInSum_relu_branches", "FanInSum_relu_and_shared",
                "FanInConcat", "FanInProd", "Attention_SOFTMAX", "Attention_quadratic", "Index", "ImageResize_linear"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in DEFAULT_ROWS else pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_closed_form_matches_finite_networks(case):
    closed, samples = closed_and_samples(case)
    allowance = CASES[case][2]
    for field in ("nngp", "ntk"):
        exact = np.asarray(getattr(closed, field))
        mean = samples[field].mean(0)
        standard_error = samples[field].std(0, ddof=1) / math.sqrt(SAMPLES)
        scale = np.abs(exact).max()
        gap = np.abs(mean - exact)
        bound = 4.5 * standard_error + (allowance + 1e-3) * scale
        worst = np.unravel_index(np.argmax(gap - bound), gap.shape)
        assert np.all(gap <= bound), (f"{field} at {worst}: closed {exact[worst]:.5f}, Monte Carlo "
                                      f"{mean[worst]:.5f} +- {standard_error[worst]:.5f}")


def test_monte_carlo_kernel_fn_is_the_mean_of_empirical_kernels():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(3))
    x = inputs((4, 3))
    key = jax.random.PRNGKey(7)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, key, 5)(x, None, ("nngp", "ntk"))
    empirical = empirical_kernel_fn(apply_fn)
    keys, chain = [], key  # neural-tangents 0.6.5's draws: a chain of splits, each sample's key split again
    for _ in range(5):
        chain, sample_key = jax.random.split(chain)
        keys.append(jax.random.split(sample_key)[0])
    by_hand = [empirical(x, None, ("nngp", "ntk"), init_fn(k, x.shape)[1]) for k in keys]
    np.testing.assert_allclose(mc.nngp, np.mean([k.nngp for k in by_hand], 0), rtol=1e-12)
    np.testing.assert_allclose(mc.ntk, np.mean([k.ntk for k in by_hand], 0), rtol=1e-12)
    running = list(monte_carlo_kernel_fn(init_fn, apply_fn, key, [2, 5])(x, None, "ntk"))
    np.testing.assert_allclose(running[-1], mc.ntk, rtol=1e-12)


def test_empirical_ntk_by_hand_for_a_linear_model():
    """f(x) = W x / sqrt(d): NTK = x x'^T / d exactly, NNGP = W-dependent f f'."""
    init_fn, apply_fn, _ = stax.Dense(1, W_std=1.0)
    x = inputs((5, 3))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    k = empirical_kernel_fn(apply_fn)(x, None, ("nngp", "ntk"), params)
    np.testing.assert_allclose(k.ntk, x @ x.T / 3, rtol=1e-12)
    f = apply_fn(params, x)
    np.testing.assert_allclose(k.nngp, f @ f.T, rtol=1e-12)
    chunked = empirical_kernel_fn(apply_fn, batch_size=2)(x, x[:3], "ntk", params)
    np.testing.assert_allclose(chunked, k.ntk[:, :3], rtol=1e-12)


def _matrix(a, n):
    """(N, N, S1, S1', ...) in neural-tangents' order -> (N * P, N * P) PSD matrix."""
    d = (a.ndim - 2) // 2
    order = [0] + [2 + 2 * i for i in range(d)] + [1] + [3 + 2 * i for i in range(d)]
    a = np.transpose(a, order)
    size = int(np.sqrt(a.size))
    return a.reshape(size, size)


# Hygiene (jit, symmetry, positive semi-definiteness, dtype, blocks) is a property of the shared
# machinery more than of one rule: the default suite checks it on one row of each kind of layout
# (flat, per-position, position pairs, branches, attention, indexing); all rows with `-m slow`.
HYGIENE_ROWS = {"Relu", "Dense_standard", "Conv_VALID_strided", "AvgPool", "Flatten", "LayerNorm_spatial",
                "FanInConcat", "Attention_SOFTMAX", "Index", "repeat"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in HYGIENE_ROWS else pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_kernel_hygiene(case):
    (_, _, kernel_fn), shape = network(case)
    x32 = inputs(shape, seed=1, dtype=np.float32)
    x64 = inputs(shape, seed=1)
    k = kernel_fn(x64, None, ("nngp", "ntk"))
    # jit-able, with get static
    jitted = jax.jit(kernel_fn, static_argnames="get")(x64, None, ("nngp", "ntk"))
    np.testing.assert_allclose(jitted.ntk, k.ntk, rtol=1e-10, atol=1e-12)
    # symmetric and positive semi-definite for x2=None
    for a in (k.nngp, k.ntk):
        m = _matrix(np.asarray(a), shape[0])
        np.testing.assert_allclose(m, m.T, rtol=1e-10, atol=1e-12)
        assert np.linalg.eigvalsh(m).min() >= -1e-9 * np.abs(m).max()
    # keeps the input dtype
    k32 = kernel_fn(x32, None, ("nngp", "ntk"))
    assert k32.nngp.dtype == jnp.float32 and k32.ntk.dtype == jnp.float32
    np.testing.assert_allclose(k32.nngp, k.nngp, rtol=2e-3, atol=2e-4 * np.abs(k.nngp).max())
    # the kernel of a concatenated batch is made of the blocks
    block = kernel_fn(x64[:2], x64[2:], ("nngp", "ntk"))
    # The sampled softmax attention draws the same logits in another XLA program, which the tests' cheap
    # pipeline (conftest) rounds differently: ~1e-7 there, 1e-12 under the default one.
    rtol = 2e-6 if "softmax_sqrt_d" in case else 1e-10
    np.testing.assert_allclose(k.ntk[:2, 2:], block.ntk, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(k.nngp[:2, 2:], block.nngp, rtol=rtol, atol=1e-12)
