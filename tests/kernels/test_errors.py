"""Bad input gets a clear error naming the layer, the argument or the shapes; never a NaN kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax


def x(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def test_conv_on_wrong_rank_names_layer_and_shape():
    _, _, kernel_fn = stax.serial(stax.Conv(8, (3, 3)), stax.Relu())
    with pytest.raises(ValueError, match=r"Conv\(.*needs inputs with 2 spatial axes.*rank 4.*\(N, 5, 3\)"):
        kernel_fn(x(2, 5, 3))


def test_feature_mismatch_between_x1_and_x2():
    _, _, kernel_fn = stax.Dense(4)
    with pytest.raises(ValueError, match=r"x1 \(2, 3\) and x2 \(2, 4\)"):
        kernel_fn(x(2, 3), x(2, 4))
    _, _, kernel_fn = stax.Conv(4, (2, 2))
    with pytest.raises(ValueError, match=r"x1 \(2, 4, 4, 3\) and x2 \(2, 4, 4, 1\)"):
        kernel_fn(x(2, 4, 4, 3), x(2, 4, 4, 1))


def test_filter_larger_than_valid_input():
    _, _, kernel_fn = stax.Conv(8, (5, 5), padding="VALID")
    with pytest.raises(ValueError, match=r"Conv\(.*filter \(5, 5\) is larger than the VALID input's spatial shape \(3, 3\)"):
        kernel_fn(x(2, 3, 3, 1))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs(bad):
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Relu())
    a = np.array(x(3, 2))
    a[1, 0] = bad
    with pytest.raises(ValueError, match=r"argument `x1` must be finite .*non-finite value at index \(1, 0\) \(shape \(3, 2\)\)"):
        kernel_fn(a)
    with pytest.raises(ValueError, match="argument `x2` must be finite"):
        kernel_fn(x(3, 2), a)


def test_unknown_names():
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.*attention_mechanism='TANH'"):
        stax.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism="TANH")
    with pytest.raises(ValueError, match=r"argument `n_samples`"):  # only the sampled kernels take it
        stax.GlobalSelfAttention(4, 4, 4, 1, n_samples=8)
    with pytest.raises(ValueError, match=r"Conv\(.*padding='FULL'; expected one of"):
        stax.Conv(4, (3,), padding="FULL")
    with pytest.raises(ValueError, match=r"AvgPool\(.*padding='REFLECT'"):
        stax.AvgPool((2,), padding="REFLECT")
    with pytest.raises(ValueError, match=r"Dense\(.*parameterization='mup'"):
        stax.Dense(4, parameterization="mup")
    _, _, kernel_fn = stax.Dense(4)
    with pytest.raises(ValueError, match=r"argument `get` must be names from .*'ntks'.*unknown name 'ntks'"):
        kernel_fn(x(2, 3), None, ("nngp", "ntks"))


def test_activation_needs_gaussian_input():
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Relu(), stax.Erf())
    with pytest.raises(ValueError, match=r"Erf\(.*must be Gaussian"):
        kernel_fn(x(2, 3))


def test_global_pool_without_space_is_the_identity():
    """neural-tangents pools (N, C) inputs over no axes: the kernel and outputs pass unchanged."""
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(3))
    for pool in (stax.GlobalAvgPool(), stax.GlobalSumPool()):
        _, pooled_apply, pooled = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(3), pool)
        np.testing.assert_array_equal(pooled(x(2, 3), x(3, 3), "ntk"), kernel_fn(x(2, 3), x(3, 3), "ntk"))
        _, params = init_fn(jax.random.PRNGKey(0), (2, 3))
        np.testing.assert_array_equal(pooled_apply(params + [()], x(2, 3)), apply_fn(params, x(2, 3)))


def test_non_finite_kernel_is_an_error_naming_the_layer():
    # Gaussian(b) needs b < 1 / (2 var): here var = 4, so E[exp(b u^2) ...] diverges.
    _, _, kernel_fn = stax.serial(stax.Dense(4, W_std=2.), stax.Gaussian(1., 0.5), stax.Dense(1))
    with pytest.raises(FloatingPointError, match=r"Gaussian\(a=1.0, b=0.5\): produced NaN or infinite values"):
        kernel_fn(x(3, 5) / np.sqrt(np.mean(np.asarray(x(3, 5)) ** 2, axis=1, keepdims=True)))


def test_unmerged_branches():
    # A network ending in branches gives one kernel per branch (a list, as neural-tangents);
    # a layer that takes one input is still refused after unmerged branches, naming itself.
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.FanOut(2))
    kernels = kernel_fn(x(2, 3), None, "nngp")
    assert isinstance(kernels, list) and len(kernels) == 2
    alone = stax.Dense(4)[2](x(2, 3), None, "nngp")
    for k in kernels:
        np.testing.assert_allclose(k, alone, rtol=1e-12)
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.FanOut(2), stax.Relu())
    with pytest.raises(ValueError, match=r"Relu\(\): expects one input, got 2 branches"):
        kernel_fn(x(2, 3))


def test_integer_inputs_and_unexpected_keywords():
    _, _, kernel_fn = stax.Dense(4)
    with pytest.raises(TypeError, match="argument `x1` must be an array of dtype float16/bfloat16/float32/float64"):
        kernel_fn(np.ones((2, 3), dtype=np.int32))
    with pytest.raises(TypeError, match=r"kernel_fn: unexpected keyword argument\(s\) colour"):
        kernel_fn(x(2, 3), colour=None)
    with pytest.raises(TypeError, match=r"kernel_fn: unexpected keyword argument pattern: .* has none"):
        kernel_fn(x(2, 3), pattern=(x(2, 2), None))


def test_no_graph_is_accepted_by_a_network_without_aggregate():
    """``pattern=None`` (or ``(None, None)``) gives no graph, so a network without an `Aggregate`
    ignores nothing by taking it (neural-tangents' tests pass it to such networks); a graph is refused."""
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.Relu())
    _, params = init_fn(jax.random.PRNGKey(0), (2, 3))
    np.testing.assert_array_equal(apply_fn(params, x(2, 3), pattern=None), apply_fn(params, x(2, 3)))
    for pattern in (None, (None, None)):
        np.testing.assert_array_equal(kernel_fn(x(2, 3), None, "nngp", pattern=pattern),
                                      kernel_fn(x(2, 3), None, "nngp"))
    with pytest.raises(TypeError, match=r"apply_fn: unexpected keyword argument pattern: .* has none"):
        apply_fn(params, x(2, 3), pattern=x(2, 2, 2))


def test_non_finite_kernel_inside_a_branch_names_the_layer():
    # The diagnosis walks through FanOut, whose rule returns one kernel per branch.
    _, _, kernel_fn = stax.serial(stax.Dense(4, W_std=2.), stax.FanOut(2),
                                  stax.parallel(stax.serial(stax.Dense(4), stax.Gaussian(1., 0.5)),
                                                stax.serial(stax.Dense(4), stax.Relu())), stax.FanInSum(), stax.Dense(1))
    with pytest.raises(FloatingPointError, match=r"Gaussian\(a=1.0, b=0.5\): produced NaN or infinite values"):
        kernel_fn(x(3, 5) / np.sqrt(np.mean(np.asarray(x(3, 5)) ** 2, axis=1, keepdims=True)))
