"""`import widekit as nt`: neural-tangents' names, and the finite-network tools it adds, against
closed forms (a linear model's NTK, the Taylor series of sin)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
import theory
import widekit as nt
from widekit import predict, stax
from widekit.stax import Dense, Relu, serial


def test_import_forms_and_names_of_neural_tangents():
    for name in ("stax", "predict", "batch", "empirical_ntk_fn", "empirical_nngp_fn", "empirical_kernel_fn",
                 "empirical_ntk_vp_fn", "monte_carlo_kernel_fn", "linearize", "taylor_expand",
                 "NtkImplementation", "Kernel"):
        assert hasattr(nt, name), name
    assert stax.Dense is Dense is kernels.stax.Dense and serial is kernels.stax.serial and Relu
    assert predict.gradient_descent_mse_ensemble is theory.predict.gradient_descent_mse_ensemble
    assert [m.name for m in nt.NtkImplementation] == [
        "AUTO", "JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES"]


def linear_model():
    """f(W, x) = x W: its NTK is (x1 . x2) times the identity over outputs (Jacot et al. 2018, eq. 2)."""
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
    x1 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    return (lambda params, x: x @ params), w, x1, x2


def test_empirical_ntk_nngp_and_vector_products_of_a_linear_model():
    f, w, x1, x2 = linear_model()
    gram = np.asarray(x1 @ x2.T)
    for implementation in (nt.NtkImplementation.AUTO, nt.NtkImplementation.STRUCTURED_DERIVATIVES):
        ntk = nt.empirical_ntk_fn(f, implementation=implementation)(x1, x2, w)
        np.testing.assert_allclose(ntk, gram, rtol=1e-5)
    np.testing.assert_allclose(nt.empirical_ntk_fn(f)(x1, None, w), x1 @ x1.T, rtol=1e-5)
    nngp = nt.empirical_nngp_fn(f)(x1, x2, w)
    np.testing.assert_allclose(nngp, (x1 @ w) @ (x2 @ w).T / 2, rtol=1e-5)
    v = jax.random.normal(jax.random.PRNGKey(3), (5, 2))
    np.testing.assert_allclose(nt.empirical_ntk_vp_fn(f, x1, x2, w)(v), gram @ v, rtol=1e-5)


@pytest.mark.parametrize("name", ["_j_rules", "_s_rules", "_fwd"])
def test_private_switches_reach_structured_derivatives(name):
    f, w, x1, x2 = linear_model()
    ntk = nt.empirical_ntk_fn(f, implementation=3, **{name: False})(x1, x2, w)
    np.testing.assert_allclose(ntk, np.asarray(x1 @ x2.T), rtol=1e-5)
    with pytest.raises(ValueError, match=name):
        nt.empirical_ntk_fn(f, **{name: "no"})


def test_linearize_and_taylor_expand_against_the_series_of_sin():
    f = lambda p, x: jnp.sin(p * x)  # noqa: E731
    p0, d = 0.7, 0.3
    x = jnp.linspace(-1.0, 1.0, 5)
    series = [jnp.sin(p0 * x), x * jnp.cos(p0 * x) * d, -x ** 2 * jnp.sin(p0 * x) * d ** 2 / 2,
              -x ** 3 * jnp.cos(p0 * x) * d ** 3 / 6]
    np.testing.assert_allclose(nt.linearize(f, p0)(p0 + d, x), series[0] + series[1], rtol=1e-6)
    for degree in range(4):
        np.testing.assert_allclose(nt.taylor_expand(f, p0, degree)(p0 + d, x), sum(series[:degree + 1]),
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="degree"):
        nt.taylor_expand(f, p0, -1)


def test_repeat_zero_is_the_identity_and_kernel_shapes_name_the_outputs():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    init_fn, apply_fn, kernel_fn = stax.repeat(stax.Dense(7), 0)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    np.testing.assert_array_equal(apply_fn(params, x), x)
    with pytest.raises(ValueError, match="non-negative"):
        stax.repeat(stax.Dense(7), -1)
    _, apply_fn, kernel_fn = stax.serial(stax.Conv(8, (3, 3)), stax.Relu(), stax.AvgPool((2, 2)))
    k = kernel_fn(x, x[:1])
    outputs = jax.eval_shape(lambda: apply_fn(stax.serial(stax.Conv(8, (3, 3)), stax.Relu(),
                                                          stax.AvgPool((2, 2)))[0](jax.random.PRNGKey(0),
                                                                                   x.shape)[1], x))
    assert k.shape1 == outputs.shape == (2, 1, 1, 8) and k.shape2 == (1, 1, 1, 8)
