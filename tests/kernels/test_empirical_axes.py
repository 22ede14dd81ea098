"""Empirical kernels with neural-tangents' ``vmap_axes`` pytrees and keyword-argument splitting, and
Monte Carlo kernels of networks with Dropout or several input branches.

Truth: the NTK of a hand-written two-output function from its full Jacobian (``jax.jacrev``),
contracted in the test; the closed-form kernels of `kernels.stax` for the Monte Carlo averages.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.empirical import empirical_kernel_fn, empirical_ntk_vp_fn, monte_carlo_kernel_fn

N1, N2 = 3, 3  # equal sizes, so that a wrong in_axes still runs (and must then give a wrong kernel)


def f(params, x, scale=None):
    """Inputs ``{'a': (N, 4), 'b': (3, N)}`` (batch axes 0 and 1), per-example ``scale: (N,)``;
    outputs ``[h: (N, 2), g: (3, N)]`` (batch axes 0 and 1)."""
    w1, w2, w3 = params
    h = jnp.tanh(x["a"] @ w1 + x["b"].T @ w2)
    if scale is not None:
        h = h * scale[:, None]
    return [h, jnp.sin(h @ w3).T]


def setup():
    k = jax.random.split(jax.random.PRNGKey(0), 9)
    params = (jax.random.normal(k[0], (4, 2)), jax.random.normal(k[1], (3, 2)), jax.random.normal(k[2], (2, 3)))
    x1 = {"a": jax.random.normal(k[3], (N1, 4)), "b": jax.random.normal(k[4], (3, N1))}
    x2 = {"a": jax.random.normal(k[5], (N2, 4)), "b": jax.random.normal(k[6], (3, N2))}
    s1, s2 = jax.random.uniform(k[7], (N1,)) + .5, jax.random.uniform(k[8], (N2,)) + .5
    return params, x1, x2, s1, s2


def jacobian_ntk(params, x1, x2, s1, s2):
    """Both outputs' NTKs with trace_axes=(): ``sum_p dY1/dp dY2/dp`` in neural-tangents' interleaved
    axis order, from the full Jacobians."""
    def jac(x, s, i):
        j = jax.jacrev(lambda p: f(p, x, s)[i])(params)
        return [leaf.reshape(leaf.shape[:2] + (-1,)) for leaf in j]
    h = sum(jnp.einsum("ncp,mdp->nmcd", a, b) for a, b in zip(jac(x1, s1, 0), jac(x2, s2, 0)))
    g = sum(jnp.einsum("cnp,dmp->cdnm", a, b) for a, b in zip(jac(x1, s1, 1), jac(x2, s2, 1)))
    return [h, g]


@pytest.mark.parametrize("vmap_axes, implementation", [
    pytest.param(({"a": 0, "b": 1}, [0, 1], {"scale": 0}), 1, marks=pytest.mark.slow),
    (({"a": 0, "b": 1}, [0, 1], {"scale": 0}), 3),  # per-input, per-output and per-keyword axes
    pytest.param(({"a": 0, "b": -1}, (0, -1), {"scale": -1}), 1, marks=pytest.mark.slow),  # negative axes,
    pytest.param(({"a": 0, "b": -1}, (0, -1), {"scale": -1}), 3, marks=pytest.mark.slow),  # tuple for a list
])
def test_vmap_axes_pytrees_give_the_full_jacobian_ntk(vmap_axes, implementation, request):
    params, x1, x2, s1, s2 = setup()
    truth = jacobian_ntk(params, x1, x2, s1, s2)
    plain = empirical_kernel_fn(f, trace_axes=(), implementation=implementation)
    mapped = empirical_kernel_fn(f, trace_axes=(), vmap_axes=vmap_axes, implementation=implementation)
    slow = request.node.get_closest_marker("slow") is not None
    for kernel_fn in (plain, mapped) if slow else (mapped,):  # without vmap_axes: in the slow cases
        # a pair: one per input, as in neural-tangents; jitted (eager Jacobians are slow)
        out = jax.jit(lambda a, b, p, c, d: kernel_fn(a, b, "ntk", p, scale=(c, d)))(x1, x2, params, s1, s2)  # a pair: one per input, as in neural-tangents
        assert isinstance(out, list) and len(out) == 2
        for got, want in zip(out, truth):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_vmap_axes_diagonal_batch_axis_and_same_inputs():
    params, x1, _, s1, _ = setup()
    truth = jacobian_ntk(params, x1, x1, s1, s1)
    kernel_fn = empirical_kernel_fn(f, trace_axes=(), diagonal_axes=(0,), vmap_axes=({"a": 0, "b": 1}, [0, 1],
                                                                                     {"scale": 0}))
    h, g = jax.jit(lambda a, p, c: kernel_fn(a, None, "ntk", p, scale=c))(x1, params, s1)
    np.testing.assert_allclose(h, jnp.einsum("nncd->ncd", truth[0]), rtol=1e-5, atol=1e-5)
    # g's batch axis 1 is not in diagonal_axes=(0,) (its channel axis is): pairs kept
    np.testing.assert_allclose(g, jnp.einsum("ccnm->cnm", truth[1]), rtol=1e-5, atol=1e-5)


def test_a_batch_axis_left_in_front_gives_a_wrong_kernel():
    """The check above can fail: a vmap that leaves the example pair in front instead of at the
    output's batch axis (``g`` is batched along axis 1) returns a kernel far from the Jacobian's."""
    params, x1, x2, s1, s2 = setup()
    truth = jacobian_ntk(params, x1, x2, s1, s2)
    wrong = jnp.moveaxis(truth[1], (2, 3), (0, 1))  # same shape (3, 3, 3, 3), pairs misplaced
    assert float(jnp.max(jnp.abs(wrong - truth[1]))) > 0.1


def test_unmatched_axes_trees_are_refused_by_name():
    params, x1, x2, s1, s2 = setup()
    with pytest.raises(ValueError, match="argument `vmap_axes`"):
        empirical_kernel_fn(f, vmap_axes=({"a": 0}, 0, {}))(x1, x2, "ntk", params)


WIDTH, RATE = 512, 0.5


def dropout_net():
    # a narrow first layer: a mask reused by every sample then biases the average at O(1)
    return stax.serial(stax.Dense(4), stax.Dropout(RATE), stax.Dense(WIDTH))


def test_monte_carlo_draws_a_new_dropout_mask_per_sample():
    """The Monte Carlo NNGP of Dropout -> Dense matches the closed form (Dropout inflates the
    diagonal by 1/rate); the same estimator with one mask reused by every sample does not."""
    init_fn, apply_fn, kernel_fn = dropout_net()
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 6))
    exact = kernel_fn(x, None, "nngp")
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 96)(x, None, "nngp")
    err = float(jnp.max(jnp.abs(mc - exact)) / jnp.max(jnp.abs(exact)))
    assert err < 0.15, err

    def one_mask(params, x, rng=None, **kwargs):  # the wrong implementation: one rng for every sample
        return apply_fn(params, x, rng=jax.random.PRNGKey(7), **kwargs)
    reused = monte_carlo_kernel_fn(init_fn, one_mask, jax.random.PRNGKey(1), 96)(x, None, "nngp")
    wrong_err = float(jnp.max(jnp.abs(reused - exact)) / jnp.max(jnp.abs(exact)))
    assert wrong_err > 2 * err and wrong_err > 0.2, (err, wrong_err)


@pytest.mark.slow
def test_monte_carlo_of_a_network_with_list_inputs():
    """Two input branches, summed: the linear network's NNGP is ``a a'/3 + b b'/5`` exactly."""
    init_fn, apply_fn, _ = stax.serial(stax.parallel(stax.Dense(WIDTH), stax.Dense(WIDTH)), stax.FanInSum(),
                                       stax.Dense(WIDTH))
    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    x1 = [jax.random.normal(k1, (2, 3)), jax.random.normal(k2, (2, 5))]
    exact = x1[0] @ x1[0].T / 3 + x1[1] @ x1[1].T / 5
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 8)(x1, None, "nngp")
    assert float(jnp.max(jnp.abs(mc - exact)) / jnp.max(jnp.abs(exact))) < 0.1
    wrong = x1[0] @ x1[0].T / 3  # one branch forgotten
    assert float(jnp.max(jnp.abs(mc - wrong)) / jnp.max(jnp.abs(exact))) > 0.2


def test_monte_carlo_refuses_a_user_rng():
    init_fn, apply_fn, _ = dropout_net()
    kernel_fn = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 1)
    with pytest.raises(ValueError, match="argument `rng`"):
        kernel_fn(jnp.ones((2, 6)), None, "nngp", rng=jax.random.PRNGKey(0))


def test_ntk_vector_products_split_rng_as_the_kernel_does():
    """``empirical_ntk_vp_fn(f, x1, x2, params, rng=key)(v)`` of a Dropout network is the kernel's
    ``Theta(x1, x2) v`` with the keys split between ``x1`` and ``x2`` (as neural-tangents splits them);
    one key for both sides (what it did before) gives another product."""
    init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Dropout(RATE), stax.Dense(3))
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    x1, x2, v = jax.random.normal(k[0], (2, 5)), jax.random.normal(k[1], (3, 5)), jax.random.normal(k[2], (3, 3))
    _, params = init_fn(k[3], x1.shape)
    rng = jax.random.PRNGKey(5)
    theta = empirical_kernel_fn(apply_fn, trace_axes=())(x1, x2, "ntk", params, rng=rng)  # (N1, N2, 3, 3)
    expected = jnp.einsum("abij,bj->ai", theta, v)
    got = empirical_ntk_vp_fn(apply_fn, x1, x2, params, rng=rng)(v)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    _, vjp = jax.vjp(lambda p: apply_fn(p, x2, rng=rng), params)
    one_key = jax.jvp(lambda p: apply_fn(p, x1, rng=rng), (params,), vjp(v))[1]
    assert not np.allclose(one_key, expected, rtol=1e-3)


def test_a_pair_of_keys_is_read_as_neural_tangents_reads_it():
    """``rng=(k1, k2)``: equal keys on different inputs become ``k1, fold_in(k2, 1)`` (the single key's
    split); on the same inputs ``k2`` is replaced by ``k1``."""
    init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Dropout(RATE), stax.Dense(3))
    k = jax.random.split(jax.random.PRNGKey(6), 4)
    x1, x2 = jax.random.normal(k[0], (2, 5)), jax.random.normal(k[1], (3, 5))
    _, params = init_fn(k[2], x1.shape)
    kernel_fn = empirical_kernel_fn(apply_fn)
    one = kernel_fn(x1, x2, "ntk", params, rng=k[3])
    np.testing.assert_allclose(kernel_fn(x1, x2, "ntk", params, rng=(k[3], k[3])), one, rtol=1e-12)
    same = kernel_fn(x1, jnp.array(x1), "ntk", params, rng=(k[3], jax.random.PRNGKey(9)))
    np.testing.assert_allclose(same, kernel_fn(x1, None, "ntk", params, rng=k[3]), rtol=1e-12)
    assert not np.allclose(kernel_fn(x1, x2, "ntk", params, rng=(k[3], jax.random.PRNGKey(9))), one, rtol=1e-3)


def test_nngp_with_vmap_axes_draws_dropout_masks_for_the_whole_batch():
    """neural-tangents computes the empirical NNGP from whole batches whatever ``vmap_axes`` says, so a
    Dropout network's masks, drawn per call, are the same with and without it; per example (what widekit
    did) they differ. Numbers: neural-tangents 0.6.5 on this network and key (found by fuzzing)."""
    rs = np.random.RandomState(0)
    y1, y2 = jnp.asarray(rs.randn(4, 3)), jnp.asarray(rs.randn(2, 3))
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu(), stax.Dropout(0.7, mode="train"), stax.Dense(2))
    with jax.threefry_partitionable(False):
        _, params = init_fn(jax.random.PRNGKey(0), y1.shape)
        for vmap_axes in (None, 0):
            nngp = empirical_kernel_fn(apply_fn, vmap_axes=vmap_axes)(y1, y2, "nngp", params, rng=jax.random.PRNGKey(2))
            np.testing.assert_allclose(np.ravel(nngp)[:2], [0.166154, 0.122555], atol=1e-6)
        mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 1, vmap_axes=0)(y1, y2, "nngp")
        np.testing.assert_allclose(np.ravel(mc)[:2], [0.885669, 1.377909], atol=1e-6)
