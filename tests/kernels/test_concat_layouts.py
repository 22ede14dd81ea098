"""`FanInConcat(axis)` along every axis neural-tangents 0.6.5 accepts: channels (negative and positive axis, branches
of different channel counts), a spatial axis (branches of different sizes along it, 1-D and 2-D, position pairs or
``diagonal_spatial``, channels-first layouts), and the batch axis; against its reference values
(tests/data/nt_keywords2_reference.npz), against the closed form from the branches' own kernels, and against Monte
Carlo of finite networks, with deliberately wrong rules shown to fail."""
import jax
import numpy as np
import pytest

from kernels import batch, monte_carlo_kernel_fn, stax
from tests.kernels.keywords2_reference import arrays, cases, close
from tests.kernels.spec import network_from_spec

DEFAULT = ("concat_mlp_channel_neg", "concat_mlp_batch_axis_x2none", "concat_conv_spatial_pairs_out")  # others: slow


def _cases():
    return cases("concat_")


_load, _close = arrays, close


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(_cases())])
def test_matches_neural_tangents(name):
    case, ref = _cases()[name], _load(name)
    k = network_from_spec(case["spec"])[2](ref["x1"], ref.get("x2"), None, **case["keywords"])
    for field in ("nngp", "ntk", "cov1", "cov2"):
        if field in ref:
            assert _close(getattr(k, field), ref[field]), field


def _branch_kernels(axis, x1, x2):
    """A network concatenating two Dense branches of widths 3 and 5 along ``axis``, and the branches' own kernels."""
    trunk = stax.serial(stax.Dense(4, W_std=1.3, b_std=0.1), stax.Relu())
    a = stax.Dense(3, W_std=1.2)
    b = stax.Dense(5, W_std=0.8, b_std=0.3)
    net = stax.serial(trunk, stax.FanOut(2), stax.parallel(a, b), stax.FanInConcat(axis))
    ka, kb = (stax.serial(trunk, branch)[2](x1, x2, ("nngp", "ntk")) for branch in (a, b))
    return net[2](x1, x2, ("nngp", "ntk")), ka, kb


X1 = np.random.RandomState(0).randn(3, 2)
X2 = np.random.RandomState(1).randn(2, 2)


def test_channel_concat_is_the_channel_weighted_mean_and_the_plain_mean_is_wrong():
    k, ka, kb = _branch_kernels(-1, X1, X2)
    for f in ("nngp", "ntk"):
        weighted = (3 * getattr(ka, f) + 5 * getattr(kb, f)) / 8
        np.testing.assert_allclose(getattr(k, f), weighted, rtol=1e-12)
        assert not np.allclose(getattr(k, f), (getattr(ka, f) + getattr(kb, f)) / 2, rtol=1e-3)  # unweighted


def test_batch_concat_is_block_diagonal_in_the_examples():
    net = stax.serial(stax.Dense(4, W_std=1.3, b_std=0.1), stax.Relu(), stax.FanOut(2),
                      stax.parallel(stax.Dense(3, W_std=1.2), stax.Dense(3, W_std=0.8, b_std=0.3)),
                      stax.FanInConcat(0))
    trunk = stax.serial(stax.Dense(4, W_std=1.3, b_std=0.1), stax.Relu())
    ka = stax.serial(trunk, stax.Dense(3, W_std=1.2))[2](X1, X2, ("nngp", "ntk", "cov1"))
    kb = stax.serial(trunk, stax.Dense(3, W_std=0.8, b_std=0.3))[2](X1, X2, ("nngp", "ntk", "cov1"))
    k = net[2](X1, X2, ("nngp", "ntk", "cov1"))
    for f in ("nngp", "ntk"):
        expected = np.zeros((6, 4))
        expected[:3, :2], expected[3:, 2:] = getattr(ka, f), getattr(kb, f)
        np.testing.assert_allclose(getattr(k, f), expected, rtol=1e-12)
    np.testing.assert_allclose(k.cov1, np.concatenate([ka.cov1, kb.cov1]), rtol=1e-12)
    x = np.random.RandomState(2).randn(5, 2)  # above the size where blocks would be used
    with pytest.raises(NotImplementedError, match="block_size"):
        net[2](x, None, "nngp", block_size=2)
    with pytest.raises(ValueError, match="batch axis"):
        batch(net[2], 2)


def test_batch_concat_of_masked_sequences_keeps_each_examples_mask():
    """Masked sequences concatenated along the batch axis, then pooled: block-diagonal in the examples,
    each block the branch's own masked pooled kernel (checked once against neural-tangents 0.6.5 on a
    deeper network: 2e-16 relative). Dropping the concatenated masks would pool over padding."""
    trunk = (stax.Conv(4, (2,), padding="SAME", W_std=1.3, b_std=0.1), stax.Relu())
    branches = (stax.Dense(3, W_std=1.2), stax.Conv(3, (3,), padding="SAME", b_std=0.2))
    x1, x2 = np.random.RandomState(4).randn(3, 5, 2), np.random.RandomState(5).randn(2, 5, 2)
    x1[0, 3:], x1[1, 4:], x2[1, 2:] = -7., -7., -7.
    net = stax.serial(*trunk, stax.FanOut(2), stax.parallel(*branches), stax.FanInConcat(0), stax.GlobalAvgPool())
    k = net[2](x1, x2, ("nngp", "ntk"), mask_constant=-7.)
    own = [stax.serial(*trunk, b, stax.GlobalAvgPool())[2](x1, x2, ("nngp", "ntk"), mask_constant=-7.)
           for b in branches]
    unmasked = stax.serial(*trunk, branches[0], stax.GlobalAvgPool())[2](x1, x2, "nngp")
    for f in ("nngp", "ntk"):
        expected = np.zeros((6, 4))
        expected[:3, :2], expected[3:, 2:] = getattr(own[0], f), getattr(own[1], f)
        np.testing.assert_allclose(getattr(k, f), expected, rtol=1e-12, atol=1e-15)
    assert not np.allclose(k.nngp[:3, :2], unmasked, rtol=1e-3)


TRUNK = (stax.Conv(4, (2,), padding="SAME", W_std=1.3, b_std=0.1), stax.Relu())
BRANCH_A = stax.Conv(6, (2,), padding="VALID", W_std=1.2)  # 3 positions -> 2
BRANCH_B = stax.Conv(6, (3,), padding="SAME", b_std=0.2)  # 3 positions -> 3


def _pooled_concat(x):
    """The network pooling the concatenation of the branches, its nngp on ``x``, and the branches' own pooled nngps."""
    net = stax.serial(*TRUNK, stax.FanOut(2), stax.parallel(BRANCH_A, BRANCH_B), stax.FanInConcat(1),
                      stax.GlobalAvgPool())
    ka, kb = (np.asarray(stax.serial(*TRUNK, branch, stax.GlobalAvgPool())[2](x, None, "nngp"))
              for branch in (BRANCH_A, BRANCH_B))
    return net, np.asarray(net[2](x, None, "nngp")), ka, kb


X_SPATIAL = np.random.RandomState(3).randn(2, 3, 2)


def test_spatial_concat_of_different_lengths_is_the_length_weighted_sum_of_the_branches():
    # Average pooling of the concatenation of independent zero-mean branches of lengths 2 and 3 (5 positions):
    # K = (2^2 K_a + 3^2 K_b) / 5^2 with K_a, K_b the branches' own pooled kernels (cross-branch terms vanish).
    _, exact, ka, kb = _pooled_concat(X_SPATIAL)
    np.testing.assert_allclose(exact, (4 * ka + 9 * kb) / 25, rtol=1e-12)
    assert not np.allclose(exact, (ka + kb) / 2, rtol=1e-2)  # equal weights: wrong


@pytest.mark.slow
def test_spatial_concat_of_different_lengths_matches_monte_carlo():
    x = X_SPATIAL
    (init_fn, apply_fn, _), exact, ka, kb = _pooled_concat(x)
    mc = np.asarray(monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 300)(x, None, "nngp"))
    scale = np.abs(exact).max()
    assert np.abs(mc - exact).max() / scale < 0.08, np.abs(mc - exact).max() / scale
    # Wrong: the branches weighted equally (as a concatenation of equal channel counts would be).
    wrong = (ka + kb) / 2
    assert np.abs(mc - wrong).max() / scale > 0.15, np.abs(mc - wrong).max() / scale


def test_bad_axes_are_refused_by_name():
    with pytest.raises(TypeError, match="axis"):
        stax.FanInConcat(1.5)
    x = np.ones((2, 3))
    net = stax.serial(stax.Dense(2), stax.FanOut(2), stax.parallel(stax.Dense(2), stax.Dense(2)), stax.FanInConcat(2))
    with pytest.raises(ValueError, match="axis"):
        net[2](x)
    with pytest.raises(ValueError, match="axis"):
        net[0](jax.random.PRNGKey(0), x.shape)
