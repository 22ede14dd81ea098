"""Issue 10, kernels: every input that once gave a silently wrong kernel is now exact or refused by name."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from kernels import empirical_kernel_fn, monte_carlo_kernel_fn, stax


def x(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


# ----------------------------------------------------------------------------- LayerNorm after an activation

def _finite_nngp(layers, inputs, width, samples):
    """Mean and standard error over random networks of the readout's channel-averaged f f^T."""
    init_fn, apply_fn, _ = stax.serial(*layers)
    with jax.enable_x64(False):
        z = jnp.asarray(inputs, jnp.float32)

        @jax.jit
        def one(key):
            _, params = init_fn(key, z.shape)
            f = apply_fn(params, z)
            return f @ f.T / f.shape[-1]
        draws = np.asarray(jax.lax.map(one, jax.random.split(jax.random.PRNGKey(3), samples)), np.float64)
    return draws.mean(0), draws.std(0, ddof=1) / np.sqrt(samples)


def test_layernorm_after_relu_on_orthogonal_inputs_is_the_networks_kernel():
    """The issue's case: a rule that ignores ReLU's channel mean gave 0.318 off the diagonal.

    Independent truth: finite networks of width 2048. Their mean must agree with the
    closed form, and must reject the mean-ignoring formula ``E[relu relu] / E[relu^2]``
    (the arc-cosine kernel at angle pi/2: 1/pi = 0.318).
    """
    inputs = np.eye(2)
    layers = [stax.Dense(2048), stax.Relu(), stax.LayerNorm(), stax.Dense(256)]
    closed = np.asarray(stax.serial(*layers)[2](jnp.asarray(inputs), None, "nngp"))
    mean, error = _finite_nngp(layers, inputs, 2048, 24)
    assert abs(closed[0, 1] - mean[0, 1]) < 4 * error[0, 1] + 2e-3
    np.testing.assert_allclose(np.diag(closed), 1, rtol=1e-9)
    # Off the diagonal, orthogonal inputs give independent pre-activations, so E[relu relu] = m^2:
    m2, q = 1 / (2 * np.pi), 0.5  # E[relu(u)]^2 and E[relu(u)^2] for u ~ N(0, 1)
    assert np.isclose(closed[0, 1], (1 / (2 * np.pi) - m2) / (q - m2), atol=1e-9)  # = 0 at right angles
    mean_ignoring = 1 / (2 * np.pi) / q  # what the old rule returned (0.318)
    assert abs(mean_ignoring - mean[0, 1]) > 10 * error[0, 1]


def test_layernorm_refuses_a_mean_without_closed_form():
    user = stax.Elementwise(jnp.tanh, lambda c, v1, v2: (2 / np.pi) * jnp.arcsin(
        2 * c / jnp.sqrt((1 + 2 * v1) * (1 + 2 * v2))))
    _, _, kernel_fn = stax.serial(stax.Dense(4), user, stax.LayerNorm(), stax.Dense(1))
    with pytest.raises(ValueError, match=r"LayerNorm\(.*channel mean of its inputs is unknown"):
        kernel_fn(x(3, 2))
    # A Dense between them resets the mean to zero: accepted.
    _, _, kernel_fn = stax.serial(stax.Dense(4), user, stax.Dense(4), stax.LayerNorm(), stax.Dense(1))
    assert np.isfinite(np.asarray(kernel_fn(x(3, 2), None, "nngp"))).all()


def test_layernorm_on_raw_inputs_subtracts_their_channel_mean():
    """Independent truth: LayerNorm on the inputs is a deterministic map; its kernel is exact."""
    a = np.asarray(x(4, 5)) + 3.0  # far from zero mean
    _, _, kernel_fn = stax.LayerNorm()
    k = np.asarray(kernel_fn(jnp.asarray(a), None, "nngp"))
    centred = a - a.mean(-1, keepdims=True)
    normalized = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(k, normalized @ normalized.T / 5, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- quadrature and dtypes

def test_elementwise_numerical_refuses_a_degree_too_small():
    for deg in (1, 4):
        with pytest.raises(ValueError, match=rf"ElementwiseNumerical\(deg={deg}\): deg={deg} is too small"):
            stax.ElementwiseNumerical(jnp.tanh, deg)
    with pytest.raises(ValueError, match=r"deg=25 is too small"):  # a kink: 20% wrong at any practical deg
        stax.ElementwiseNumerical(jax.nn.relu, 25)
    for bad in (0, -3, 2.5, True, 400):
        with pytest.raises(ValueError, match="argument `deg` must be an int from 1 to 350"):
            stax.ElementwiseNumerical(jnp.tanh, bad)
    # Accepted degrees are accurate: against Erf's closed form.
    _, _, numerical = stax.serial(stax.Dense(1), stax.ElementwiseNumerical(jax.scipy.special.erf, 30))
    _, _, closed = stax.serial(stax.Dense(1), stax.Erf())
    np.testing.assert_allclose(numerical(x(4, 3), None, "ntk"), closed(x(4, 3), None, "ntk"), rtol=1e-3)


def test_elementwise_numerical_warns_between_1e3_and_its_tolerance():
    """neural-tangents' elementwise_numerical example: GELU at deg 25, input variance about 3.
    The estimated error (about 2e-3) is reported, the kernel is returned, and it agrees with
    GELU's closed form to the example's own 1e-3; at tolerance=1e-3 it is refused instead."""
    inputs = x(4, 3)
    inputs = inputs / jnp.sqrt(jnp.mean(inputs ** 2, axis=1, keepdims=True))  # every input variance W_std^2
    W_std = float(np.sqrt(3.2))
    _, _, closed = stax.serial(stax.Dense(1, W_std=W_std), stax.Gelu())
    with pytest.warns(UserWarning, match=r"ElementwiseNumerical\(deg=25\): at input variance .* estimated relative "
                                         r"error is .*raise deg"):
        _, _, numerical = stax.serial(stax.Dense(1, W_std=W_std), stax.ElementwiseNumerical(jax.nn.gelu, 25))
        k = numerical(inputs, None, "nngp")
    np.testing.assert_allclose(k, closed(inputs, None, "nngp"), atol=1e-3)
    _, _, strict = stax.serial(stax.Dense(1, W_std=W_std), stax.ElementwiseNumerical(jax.nn.gelu, 25, tolerance=1e-3))
    with pytest.raises(ValueError, match=r"deg=25 is too small for this function at input variance"):
        strict(inputs, None, "nngp")


@pytest.mark.parametrize("block_size, cases", [(0, ((0.5, True), (4.0, False))),
                                               pytest.param(1, ((4.0, False),), marks=pytest.mark.slow)])
def test_elementwise_numerical_is_checked_at_the_variances_reached(block_size, cases):
    """sin(3x) at deg 23 is exact at unit variance, but 28% off at variance 16: refused there,
    by the one-shot and the blocked evaluation alike."""
    numerical = stax.ElementwiseNumerical(lambda u: jnp.sin(3 * u), 23)
    inputs = x(3, 1)
    for W_std, accepted in cases:
        _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=W_std), numerical)
        _, _, closed_fn = stax.serial(stax.Dense(1, W_std=W_std), stax.Sin(1., 3., 0.))
        if accepted:
            np.testing.assert_allclose(kernel_fn(inputs, None, "nngp", block_size=block_size),
                                       closed_fn(inputs, None, "nngp"), rtol=1e-3, atol=1e-6)
        else:
            with pytest.raises(ValueError, match=r"ElementwiseNumerical\(deg=23\): deg=23 is too small for this "
                                                 r"function at input variance"):
                kernel_fn(inputs, None, "nngp", block_size=block_size)


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.int32, np.uint8, np.bool_,
                                   np.complex64, object, np.str_])
def test_kernel_fn_refuses_other_dtypes_by_name(dtype):
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Relu())
    a = np.ones((2, 3)).astype(dtype)
    with pytest.raises(TypeError, match=r"argument `x1` must be an array of dtype float16/bfloat16/float32/float64"):
        kernel_fn(a)
    with pytest.raises(TypeError, match=r"argument `x2`"):
        kernel_fn(np.ones((2, 3)), a)


def test_half_precision_inputs_are_computed_not_refused():
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Relu())
    exact = np.asarray(kernel_fn(x(3, 2), None, "nngp"))
    for dtype in (jnp.float16, jnp.bfloat16):
        k = kernel_fn(x(3, 2).astype(dtype), None, "nngp")
        assert k.dtype == dtype
        np.testing.assert_allclose(np.asarray(k, np.float64), exact, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 4, 1), (2, 4, 0, 1), (2, 4, 4, 0)])
def test_kernel_fn_refuses_empty_axes(shape):
    layers = [stax.Dense(4)] if len(shape) == 2 else [stax.Conv(4, (1, 1)), stax.GlobalAvgPool()]
    _, _, kernel_fn = stax.serial(*layers)
    with pytest.raises(ValueError, match=rf"argument `x1` must be non-empty along every axis.*{shape}".replace("(", r"\(")
                       .replace(")", r"\)")):
        kernel_fn(np.ones(shape))


# ----------------------------------------------------------------------------- get, one parser

@pytest.mark.parametrize("get, error, message", [
    ((), ValueError, r"argument `get` must be at least one name"),
    (("nngp", "nngp"), ValueError, r"argument `get` must be distinct names.*repeats \['nngp'\]"),
    (123, TypeError, r"argument `get` must be None, a name or a tuple of names"),
    (("nngp", 3), TypeError, r"argument `get` must be names \(strings\)"),
    ("ntkk", ValueError, r"unknown name 'ntkk'"),
])
def test_get_is_parsed_once_everywhere(get, error, message):
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(2))
    _, params = init_fn(jax.random.PRNGKey(0), (3, 2))
    calls = [lambda: kernel_fn(x(3, 2), None, get),
             lambda: empirical_kernel_fn(apply_fn)(x(3, 2), None, get, params),
             lambda: monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2)(x(3, 2), None, get)]
    for call in calls:
        with pytest.raises(error, match=message):
            call()


def test_get_is_case_insensitive_and_keeps_its_form():
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Relu())
    both = kernel_fn(x(3, 2), None, ("NTK", "nngp"))
    assert both._fields == ("ntk", "nngp")
    np.testing.assert_array_equal(kernel_fn(x(3, 2), None, "Ntk"), both.ntk)


# ----------------------------------------------------------------------------- finite networks

def test_empirical_kernel_refuses_another_networks_params():
    init_a, apply_a, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(2))
    init_b, _, _ = stax.serial(stax.Dense(5), stax.Relu(), stax.Dense(2))
    _, params_b = init_b(jax.random.PRNGKey(0), (3, 7))
    with pytest.raises(ValueError, match=r"empirical kernel_fn: argument `params` must be parameters of this network"):
        empirical_kernel_fn(apply_a)(x(3, 4), None, "ntk", params_b)
    with pytest.raises(ValueError, match=r"argument `params`"):
        empirical_kernel_fn(apply_a)(x(3, 4), None, "ntk", None)


def test_finite_kernel_options_are_checked_not_ignored():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu())
    with pytest.raises(ValueError, match="argument `vmap_axes`"):  # an int, or neural-tangents' (in, out, kwargs) axes
        empirical_kernel_fn(apply_fn, vmap_axes="examples")
    with pytest.raises(ValueError, match="argument `implementation`"):
        empirical_kernel_fn(apply_fn, implementation=7)
    with pytest.raises(ValueError, match="argument `batch_size`"):
        empirical_kernel_fn(apply_fn, batch_size=0)
    with pytest.raises(ValueError, match="argument `n_samples`"):
        monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="argument `device_count`"):
        monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2, device_count=-2)
    with pytest.warns(UserWarning, match="device_count=99 but there are 1 local devices; using 1"):
        many = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2, device_count=99)
    np.testing.assert_array_equal(many(x(3, 2), None, "ntk"),
                                  monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2)(x(3, 2), None, "ntk"))
    host = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2, store_on_device=False)(x(3, 2), None, "ntk")
    assert isinstance(host, np.ndarray)


# ----------------------------------------------------------------------------- merging dependent branches

MERGES = {  # merge layer, a layer with weights before it, inputs
    "FanInSum": (stax.FanInSum, lambda: stax.Dense(4), (3, 4)),
    "FanInProd": (stax.FanInProd, lambda: stax.Dense(4), (3, 4)),
    "FanInConcat_spatial": (lambda: stax.FanInConcat(axis=1), lambda: stax.Conv(4, (1,)), (3, 5, 2)),
}


@pytest.mark.parametrize("case", sorted(MERGES))
def test_merging_dependent_branches_is_refused(case):
    """``x + x`` has kernel ``4 K``; summing the branches' kernels would give ``2 K``: refused."""
    merge, weights, shape = MERGES[case]
    _, _, kernel_fn = stax.serial(weights(), stax.FanOut(2), stax.parallel(stax.Identity(), stax.Identity()), merge())
    with pytest.raises(ValueError, match=r"branches \[0, 1\] have no layer with weights"):
        kernel_fn(x(*shape))
    # One branch with its own weights makes them independent: accepted.
    _, _, kernel_fn = stax.serial(weights(), stax.FanOut(2), stax.parallel(stax.Identity(), weights()), merge())
    assert np.isfinite(np.asarray(kernel_fn(x(*shape), None, "nngp"))).all()


# ----------------------------------------------------------------------------- layer hyperparameters

@pytest.mark.parametrize("make, argument", [
    (lambda: stax.Dense(-5), "out_dim"), (lambda: stax.Dense(2.5), "out_dim"), (lambda: stax.Dense(0), "out_dim"),
    (lambda: stax.Dense(4, W_std=float("nan")), "W_std"), (lambda: stax.Dense(4, b_std="0.1"), "b_std"),
    (lambda: stax.Conv(0, (3, 3)), "out_chan"), (lambda: stax.Conv(4, (2.5, 2)), "filter_shape"),
    (lambda: stax.Conv(4, 3), "filter_shape"), (lambda: stax.Conv(4, (2,), strides=(0,)), "strides"),
    (lambda: stax.AvgPool((2,), batch_axis=1.5), "batch_axis"), (lambda: stax.SumPool(2), "window_shape"),
    (lambda: stax.GlobalAvgPool(channel_axis="1"), "channel_axis"), (lambda: stax.Flatten(batch_axis_out=2), "batch_axis_out"),
    (lambda: stax.LayerNorm(eps=-1.0), "eps"), (lambda: stax.LayerNorm(channel_axis=None), "channel_axis"),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 0), "n_heads"),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 1, W_out_std=float("inf")), "W_out_std"),
])
def test_nonsense_layer_arguments_are_refused_by_name(make, argument):
    """A negative width once weighted a channel concatenation; a float window was truncated."""
    with pytest.raises((ValueError, TypeError), match=f"argument `{argument}"):
        make()


def test_half_precision_is_computed_in_float32_and_cast_back():
    """float16 products of small variances went subnormal: an 8-layer ReLU NTK was 46% off."""
    inputs = np.asarray(x(4, 3), np.float32)
    _, _, kernel_fn = stax.serial(*[stax.Dense(8), stax.Relu()] * 8, stax.Dense(1))
    exact = np.asarray(kernel_fn(inputs, None, "ntk"))
    for dtype in (jnp.float16, jnp.bfloat16):
        half = kernel_fn(inputs.astype(dtype), None, "ntk")
        assert half.dtype == dtype
        np.testing.assert_allclose(np.asarray(half, np.float32), exact, rtol=1e-2, atol=1e-2 * np.abs(exact).max())
    _, _, layer_norm = stax.serial(stax.Dense(4), stax.Relu(), stax.LayerNorm(), stax.Dense(1))
    tiny = inputs * 1e-4
    np.testing.assert_allclose(np.asarray(layer_norm(tiny.astype(jnp.float16), None, "nngp"), np.float32),
                               np.asarray(layer_norm(tiny, None, "nngp")), atol=3e-3)
    assert kernel_fn(inputs.astype(jnp.float16), inputs[:2], "nngp").dtype == jnp.float32  # the wider dtype


def test_values_out_of_range_are_named():
    _, _, kernel_fn = stax.Dense(4)
    with pytest.raises(ValueError, match=r"argument `x1` must be at most .* in absolute value"):
        kernel_fn(np.asarray(x(4, 3)) * 1e200)
    with pytest.raises(FloatingPointError, match=r"exceeds the range of float16.*pass float32 inputs"):
        kernel_fn(np.asarray(x(4, 3), np.float16) * 300)


def test_layer_hyperparameters_can_be_differentiated():
    """The checks above must not refuse a traced W_std (theory.fit_hyperparameters takes its gradient)."""
    def total(w):
        _, _, kernel_fn = stax.serial(stax.Dense(4, W_std=w, b_std=w / 2), stax.Relu(), stax.Dense(1, W_std=w))
        return kernel_fn(x(3, 2), None, "nngp").sum()
    assert np.isfinite(float(jax.grad(total)(1.3)))
