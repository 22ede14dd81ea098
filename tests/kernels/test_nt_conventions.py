"""Conventions of neural-tangents that its users' code (and its own tests) rely on.

- A user's ``jax_numpy_rank_promotion='raise'`` governs their own code, not the layers': a bias
  ``(C,)`` added onto ``(N, ..., C)`` is the layer's design, so every network runs and gives the
  same numbers under the strict setting, and the setting is the user's again afterwards.
- ``init_fn``, ``apply_fn`` and ``kernel_fn`` carry the layer's name (``Relu``, ``serial``).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax

NETWORKS = {
    "dense": (lambda: stax.serial(stax.Dense(8, b_std=0.1), stax.Relu(), stax.Dense(1, b_std=0.1)), (3, 5)),
    "conv_local": (lambda: stax.serial(stax.ConvLocal(8, (3,), b_std=0.1), stax.Erf(), stax.GlobalAvgPool(),
                                       stax.Dense(1, b_std=0.1)), (3, 6, 2)),
    "attention": (lambda: stax.serial(stax.Dense(8), stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="SUM"),
                                      stax.GlobalAvgPool(), stax.Dense(1)), (3, 5, 2)),
}


def test_elementwise_numerical_is_built_and_differentiated_under_strict_rank_promotion():
    """neural-tangents' tests build ElementwiseNumerical (its quadrature error is estimated at construction)
    and differentiate kernels with rank promotion set to 'raise'; the results are those of the default."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))

    def grad():
        _, _, kernel_fn = stax.serial(stax.Dense(3), stax.ElementwiseNumerical(jnp.cos, 25), stax.Dense(1))
        return jax.grad(lambda x: kernel_fn(x, None, "ntk").sum())(x)
    expected = grad()
    with jax.numpy_rank_promotion("raise"):
        np.testing.assert_array_equal(grad(), expected)


@pytest.mark.parametrize("name", ["dense", pytest.param("conv_local", marks=pytest.mark.slow),
                                  pytest.param("attention", marks=pytest.mark.slow)])
def test_strict_rank_promotion_changes_nothing(name):
    build, shape = NETWORKS[name]
    init_fn, apply_fn, kernel_fn = build()
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    _, params = init_fn(jax.random.PRNGKey(1), shape)
    expected_out = apply_fn(params, x)
    expected = kernel_fn(x, x[:2], ("nngp", "ntk"))
    with jax.numpy_rank_promotion("raise"):
        out = apply_fn(params, x)
        k = kernel_fn(x, x[:2], ("nngp", "ntk"))
        with pytest.raises(ValueError, match="rank_promotion"):  # the user's own code is still strict
            jnp.ones((3, 4)) + jnp.ones(4)
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(k.nngp, expected.nngp)
    np.testing.assert_array_equal(k.ntk, expected.ntk)


def test_functions_are_named_after_their_layer():
    cases = {"Relu": stax.Relu(), "Identity": stax.Identity(), "Conv": stax.Conv(3, (2, 2)),
             "serial": stax.serial(stax.Dense(2), stax.Relu()), "parallel": stax.parallel(stax.Relu(), stax.Erf()),
             "Flatten": stax.Flatten(), "Sin": stax.Sin()}
    for name, layer in cases.items():
        assert [f.__name__ for f in layer] == [name] * 3
    # naming a network does not rename its parts
    relu = stax.Relu()
    stax.serial(relu, stax.Dense(1))
    assert relu[0].__name__ == "Relu"


def test_shapes_without_the_nngp():
    """``get=("ntk", "shape1", "shape2")`` reports the finite network's output shapes (neural-tangents'
    LayerNorm tests ask for them without the NNGP)."""
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.LayerNorm())
    x1, x2 = jnp.ones((2, 4, 4, 3)), jnp.ones((1, 4, 4, 3))
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    k = kernel_fn(x1, x2, ("ntk", "shape1", "shape2"))
    assert (k.shape1, k.shape2) == (apply_fn(params, x1).shape, apply_fn(params, x2).shape)


def test_nested_numbers_are_one_array():
    """Several arrays are several inputs (below); nested lists of numbers are still one array."""
    _, _, kernel_fn = stax.serial(stax.Dense(2), stax.Relu())
    np.testing.assert_array_equal(kernel_fn([[1., 0., 0.], [0., 1., 0.]], None, "nngp"),
                                  kernel_fn(jnp.eye(3)[:2], None, "nngp"))


def test_odd_convolutions_is_the_same_composed_or_chained():
    """neural-tangents' composition test: serial(Block, Readout) and Readout(Block(x)) agree, the
    static flag too (Flatten and global pooling clear it, as neural-tangents' do)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 3))
    block = stax.serial(stax.Conv(4, (3, 3)), stax.Relu())
    for readout in (stax.serial(stax.Flatten(), stax.Dense(2)),
                    stax.serial(stax.Conv(4, (3, 3)), stax.GlobalAvgPool(), stax.Dense(2))):
        composed = stax.serial(block, readout).kernel_fn(x)
        chained = readout.kernel_fn(block.kernel_fn(x))
        assert composed.odd_convolutions == chained.odd_convolutions is False
        np.testing.assert_allclose(chained.ntk, composed.ntk, rtol=1e-12)
    assert block.kernel_fn(x).odd_convolutions  # one convolution on position pairs


def test_exp_normalized_takes_a_bool_shift_as_its_number():
    """neural-tangents' own tests call ``ExpNormalized(gamma, do_clip)``, putting a bool in ``shift``'s
    place; neural-tangents reads it as 0 or 1, and so does widekit."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    for flag in (True, False):
        as_bool = stax.serial(stax.Dense(2), stax.ExpNormalized(1.0, flag)).kernel_fn(x, None, "nngp")
        as_number = stax.serial(stax.Dense(2), stax.ExpNormalized(1.0, float(flag))).kernel_fn(x, None, "nngp")
        np.testing.assert_array_equal(as_bool, as_number)


def test_several_inputs():
    """A network that starts with ``parallel`` takes a list of inputs, one per branch, as in
    neural-tangents. Independent truth: a Dense layer on raw inputs has NNGP = NTK = W_std^2 x x'/d,
    so parallel Dense layers merged by FanInSum give the sum of the two; an unmerged network gives
    each branch's own kernel, and swapped inputs give a different one."""
    xa = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    xb = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    _, _, merged = stax.serial(stax.parallel(stax.Dense(7, W_std=1.3), stax.Dense(7, W_std=0.7)), stax.FanInSum())
    for x2a, x2b in ((xa, xb), (xa[:2], xb[:2])):
        k = merged([xa, xb], None if x2a is xa else [x2a, x2b], ("nngp", "ntk"))
        expected = 1.3 ** 2 * xa @ x2a.T / 4 + 0.7 ** 2 * xb @ x2b.T / 5
        np.testing.assert_allclose(k.nngp, expected, rtol=1e-12)
        np.testing.assert_allclose(k.ntk, expected, rtol=1e-12)
    ya = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 2))
    branches = stax.parallel(stax.Dense(7), stax.serial(stax.Conv(3, (2,)), stax.Relu(), stax.GlobalAvgPool()))
    out = branches.kernel_fn((xa, ya), None, "ntk")
    np.testing.assert_allclose(out[0], stax.Dense(7).kernel_fn(xa, None, "ntk"), rtol=1e-12)
    np.testing.assert_allclose(out[1], stax.serial(stax.Conv(3, (2,)), stax.Relu(), stax.GlobalAvgPool()).kernel_fn(
        ya, None, "ntk"), rtol=1e-12)
    swapped = merged([xb[:, :4], xa], None, "nngp")  # the first branch's width on the other input
    assert not np.allclose(swapped, merged([xa, xb], None, "nngp"), rtol=1e-3)
    np.testing.assert_array_equal(merged((xa, xb), (None, None), "ntk"), merged([xa, xb], None, "ntk"))
    with pytest.raises(TypeError, match=r"argument `x2` must be a list or tuple of 2 entries"):
        merged([xa, xb], xa)
    with pytest.raises(ValueError, match=r"argument `block_size` must be None with several inputs"):
        merged([xa, xb], None, block_size=2)


def test_replace_of_a_derived_shape():
    """neural-tangents' tests call ``Kernel.replace(shape1=...)``. The batch sizes and positions are the
    arrays' (another is refused by name); the channel count is the finite outputs' width, which the
    standard parameterization's NTK reads. Truth: Dense(3)'s kernel relabelled to 7 channels acts on a
    standard-parameterized layer as Dense(7)'s kernel does (the infinite-width arrays are equal)."""
    x1, x2 = jax.random.normal(jax.random.PRNGKey(0), (2, 4)), jax.random.normal(jax.random.PRNGKey(1), (1, 4))
    k3, k7 = stax.Dense(3).kernel_fn(x1, x2), stax.Dense(7).kernel_fn(x1, x2)
    assert k3.replace(shape1=(2, 3), shape2=(1, 3)).shape2 == (1, 3)
    relabelled = k3.replace(shape1=(2, 7), shape2=(1, 7))
    assert (relabelled.shape1, relabelled.shape2) == ((2, 7), (1, 7))
    standard = stax.Dense(1, W_std=1.5, b_std=0.2, parameterization="standard").kernel_fn
    np.testing.assert_allclose(standard(relabelled, get="ntk"), standard(k7, get="ntk"), rtol=1e-6)
    assert not np.allclose(standard(k3, get="ntk"), standard(k7, get="ntk"), rtol=1e-3)  # the width matters
    with pytest.raises(ValueError, match=r"Kernel.replace: argument `shape1` must be \(2, 3\) but for its channel"):
        k3.replace(shape1=(5, 3))
    with pytest.raises(ValueError, match=r"argument `shape2` has 4 channels, and 7 were given"):
        k3.replace(shape1=(2, 7), shape2=(1, 4))


@pytest.mark.parametrize("path", ["direct", pytest.param("batch", marks=pytest.mark.slow)])
def test_nested_inputs_through_kernel_fn_and_batch(path):
    """neural-tangents' nested ``parallel`` takes nested inputs, and its tests batch a network applied to
    another's list of Kernels. Truth: Dense(W_std=1) on raw inputs has NNGP x x'^T/d, and a second
    Dense(W_std=1) of a Dense keeps it; every path (direct, jitted, batched by 2) must give it."""
    from functools import partial

    from kernels import batch
    keys = jax.random.split(jax.random.PRNGKey(3), 6)
    xs1 = [jax.random.normal(k, (5, d)) for k, d in zip(keys[:3], (2, 3, 4))]
    xs2 = [jax.random.normal(k, (3, d)) for k, d in zip(keys[3:], (2, 3, 4))]

    def net(n):
        return stax.parallel(stax.Dense(n), stax.parallel(stax.Dense(n + 1), stax.Dense(n + 2)))[2]
    readin, readout = net(8), partial(net(1), get="nngp")
    nested1, nested2 = (xs1[0], (xs1[1], xs1[2])), (xs2[0], (xs2[1], xs2[2]))
    cases = ([(readout(readin(nested1, nested2)), xs2), (readout(readin(nested1, (None, (None, None)))), xs1)]
             if path == "direct" else [(batch(readout, 2)(batch(readin, 2)(nested1)), xs1),
                                       (batch(readin, 4)(nested1, nested2, "nngp"), xs2)])
    for out, b in cases:
        for got, a, c in zip(jax.tree.leaves(out), xs1, b):
            np.testing.assert_allclose(got, a @ c.T / a.shape[1], rtol=1e-12, atol=1e-14)
