"""The four `implementation`s of the empirical NTK against one independent truth.

Truth: the whole Jacobian of the network's outputs in its flattened parameters
(`jax.flatten_util.ravel_pytree`, forward mode), ``Theta = J J^T`` as one matrix over all output
entries, and the traced / diagonal axes taken from it by hand-written einsums (neural-tangents'
layout: kept axes in order, a pair each or one if diagonal). Float64 (tests/conftest.py), 1e-10.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from kernels import stax, structured_ntk
from kernels.empirical import empirical_kernel_fn, empirical_ntk_fn

KEY = jax.random.PRNGKey(0)
MLP = (stax.serial(stax.Dense(6, W_std=1.5, b_std=0.3), stax.Relu(), stax.Dense(3, b_std=0.2)), (3, 4))
CNN = (stax.serial(stax.Conv(4, (3, 3), padding="SAME", b_std=0.1), stax.Relu(), stax.AvgPool((2, 2)),
                   stax.Conv(3, (2, 2), strides=(1, 2), W_std=1.3)), (2, 6, 6, 2))
ATTENTION = (stax.serial(stax.Dense(4, b_std=0.2), stax.LayerNorm(), stax.GlobalSelfAttention(4, 4, 4, 2),
                         stax.Relu(), stax.Dense(2)), (2, 3, 3))


def full_ntk(apply_fn, params, x1, x2):
    """Theta[(*Y1), (*Y2)] from the full Jacobian in the raveled parameters."""
    flat, unravel = ravel_pytree(params)
    jacobian = jax.jit(lambda x: jax.jacfwd(lambda p: apply_fn(unravel(p), x))(flat))  # eager: 10x slower
    j1, j2 = jacobian(x1), jacobian(x2)
    return np.tensordot(np.asarray(j1), np.asarray(j2), axes=([-1], [-1]))


def setup(net, seed=0):
    (init_fn, apply_fn, _), shape = net
    x1 = jax.random.normal(jax.random.PRNGKey(seed + 1), shape)
    x2 = jax.random.normal(jax.random.PRNGKey(seed + 2), (shape[0] + 1,) + shape[1:])
    _, params = init_fn(KEY, shape)
    return apply_fn, params, x1, x2


# (network, trace_axes, diagonal_axes, vmap_axes, einsum taking the truth to the kernel, traced size axis)
CASES = {
    "mlp-trace": (MLP, (-1,), (), None, "icjc->ij", -1),
    "mlp-full-vmap": (MLP, (), (), 0, "icjd->ijcd", None),
    "mlp-diag-batch": (MLP, (-1,), (0,), 0, "icic->i", -1),
    "cnn-trace": (CNN, (-1,), (), 0, "ihwcjHWc->ijhHwW", -1),
    "cnn-diag-rows": (CNN, (-1,), (1,), None, "ihwcjhWc->ijhwW", -1),
    "cnn-trace-space": (CNN, (1, 2), (), None, "ihwcjhwC->ijcC", (1, 2)),
    "attention-trace": (ATTENTION, (-1,), (), None, "ilcjLc->ijlL", -1),
    "attention-diag": (ATTENTION, (), (0, 1), 0, "ilcilC->ilcC", None),
}
FAST = ("mlp-trace", "cnn-trace")  # the default suite's share (~10 s of compiling); the rest are slow


def expected(case):
    net, trace_axes, diagonal_axes, _, equation, traced = CASES[case]
    apply_fn, params, x1, x2 = setup(net)
    x2 = x1 if 0 in diagonal_axes else x2
    theta = full_ntk(apply_fn, params, x1, x2)
    out_shape = apply_fn(params, x1).shape
    size = 1 if traced is None else int(np.prod([out_shape[a] for a in np.atleast_1d(traced)]))
    return np.einsum(equation, theta) / size, (apply_fn, params, x1, x2)


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_every_implementation_gives_the_full_jacobians_ntk(case):
    truth, (apply_fn, params, x1, x2) = expected(case)
    _, trace_axes, diagonal_axes, vmap_axes, _, _ = CASES[case]
    implementations = {"mlp-trace": (2, 3), "cnn-trace": (3,)}.get(case, (0, 1, 2, 3))
    for implementation in implementations:
        ntk = empirical_ntk_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation)(x1, x2, params)
        np.testing.assert_allclose(ntk, truth, rtol=0, atol=1e-10 * np.abs(truth).max(),
                                   err_msg=f"implementation {implementation}")


def test_structured_rules_find_the_weights_and_biases():
    """Structured derivatives must not silently fall back to Jacobians for every parameter."""
    for net, kinds in ((MLP, ["bilinear", "broadcast", "bilinear", "broadcast"]),
                       (CNN, ["conv", "broadcast", "conv"])):
        apply_fn, params, x1, _ = setup(net)
        leaves, tree = jax.tree.flatten(params)
        closed = structured_ntk.trace(lambda ls, x: apply_fn(jax.tree.unflatten(tree, ls), x), leaves, x1)
        assert [r and r.kind for r in structured_ntk.plan(closed, len(leaves))] == kinds


def test_a_structured_rule_without_the_weights_scale_fails(monkeypatch):
    """Deliberately wrong: the constant a weight is multiplied by (b_std of the biases) dropped."""
    truth, (apply_fn, params, x1, x2) = expected("mlp-trace")
    monkeypatch.setattr(structured_ntk, "_value", lambda v, kept: 1.)
    ntk = empirical_ntk_fn(apply_fn, implementation=3)(x1, x2, params)
    assert np.abs(ntk - truth).max() > 1e-3 * np.abs(truth).max()


def test_a_convolution_rule_with_misaligned_patches_fails(monkeypatch):
    """Deliberately wrong: the patches of the conv input paired with the cotangents of other positions."""
    truth, (apply_fn, params, x1, x2) = expected("cnn-trace")
    right = structured_ntk._canonical_conv

    def shifted(dz, lhs, rule, out_ndim):
        dz_c, x_c = right(dz, lhs, rule, out_ndim)
        return dz_c, jnp.roll(x_c, 1, axis=1)
    monkeypatch.setattr(structured_ntk, "_canonical_conv", shifted)
    ntk = empirical_ntk_fn(apply_fn, (-1,), (), 0, 3)(x1, x2, params)
    assert np.abs(ntk - truth).max() > 1e-3 * np.abs(truth).max()


@pytest.mark.slow
def test_auto_estimates_structured_derivatives_cheapest_for_a_wide_convolution():
    """The paper's regime (§4): a wide 3x3 conv's weight Jacobian is much larger than its cotangents."""
    init_fn, apply_fn, _ = stax.serial(stax.Conv(64, (3, 3), padding="SAME"), stax.Relu(),
                                       stax.Conv(64, (3, 3), padding="SAME"), stax.GlobalAvgPool(),
                                       stax.Dense(10))
    _, params = init_fn(KEY, (1, 4, 4, 3))
    leaves, tree = jax.tree.flatten(params)
    closed = structured_ntk.trace(lambda ls, x: apply_fn(jax.tree.unflatten(tree, ls), x), leaves,
                                  jnp.zeros((1, 4, 4, 3)))
    rules = structured_ntk.agreed_rules(closed, closed, len(leaves))
    flops = structured_ntk.estimated_flops(closed, closed, *rules, ("ab", "Ab", "aA"), (8, 8, 64))
    assert flops[3] < flops[1] and flops[3] < flops[2]  # measured 9.0x faster than 1 (RESULTS.md); estimated 1.8x


@pytest.mark.parametrize("j_rules, s_rules, fwd", [(True, True, True), (False, True, False), (True, False, None),
                                                    (False, False, True)])
def test_private_switches_change_the_computation_not_the_ntk(j_rules, s_rules, fwd):
    """neural-tangents' ``_j_rules``/``_s_rules``/``_fwd``: each combination gives the full Jacobian's
    NTK, and the rules it turns off are really off (else the switch would be accepted and ignored)."""
    truth, (apply_fn, params, x1, x2) = expected("cnn-trace")
    ntk = empirical_ntk_fn(apply_fn, (-1,), (), 0, 3, _j_rules=j_rules, _s_rules=s_rules, _fwd=fwd)(x1, x2, params)
    np.testing.assert_allclose(ntk, truth, rtol=0, atol=1e-10 * np.abs(truth).max())
    leaves, tree = jax.tree.flatten(params)
    closed = structured_ntk.trace(lambda ls, x: apply_fn(jax.tree.unflatten(tree, ls), x), leaves, x1)
    switches = structured_ntk.Switches(j_rules, s_rules, fwd)
    rules, _ = structured_ntk.agreed_rules(closed, closed, len(leaves), switches)
    kinds = [r and r.kind for r in rules]
    assert kinds == [k if (k == "broadcast" and j_rules) or (k == "conv" and s_rules) else None
                     for k in ["conv", "broadcast", "conv"]]
    if fwd is not None:  # the mode asked for is the one used
        used = []
        for name in ("jacfwd", "jacrev"):
            original = getattr(jax, name)
            with pytest.MonkeyPatch.context() as m:
                m.setattr(jax, name, lambda *a, _o=original, _n=name, **k: used.append(_n) or _o(*a, **k))
                structured_ntk.factors(closed, leaves, x1, rules, fwd)
        assert used == ["jacfwd" if fwd else "jacrev"]


@pytest.mark.parametrize("name, value", [("_j_rules", None), ("_s_rules", "yes"), ("_fwd", 1)])
def test_private_switches_other_than_bools_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"empirical_kernel_fn: argument `{name}`"):
        empirical_kernel_fn(MLP[0][1], **{name: value})


def test_bad_options_are_refused_by_name():
    apply_fn, params, x1, x2 = setup(MLP)
    with pytest.raises(ValueError, match="argument `implementation`"):
        empirical_kernel_fn(apply_fn, implementation=4)
    with pytest.raises(ValueError, match="argument `vmap_axes`"):
        empirical_kernel_fn(apply_fn, vmap_axes="batch")
    with pytest.raises(ValueError, match="argument `vmap_axes`"):
        empirical_kernel_fn(apply_fn, vmap_axes=(0, 0, 0))  # kwargs_axes must be a dict
    with pytest.raises(ValueError, match="argument `vmap_axes`"):  # out_axes in the traced channel axis
        empirical_kernel_fn(apply_fn, vmap_axes=(0, -1, None))(x1, x2, "ntk", params)
    with pytest.raises(ValueError, match="argument `diagonal_axes`"):
        empirical_kernel_fn(apply_fn, trace_axes=(-1,), diagonal_axes=(1,))(x1, x2, "ntk", params)
    with pytest.raises(ValueError, match="argument `x2`"):
        empirical_kernel_fn(apply_fn, diagonal_axes=(0,))(x1, x2, "ntk", params)


@pytest.mark.parametrize("implementation", [1, 2, 3])
def test_empty_outputs_and_parameters(implementation):
    """neural-tangents' tests slice outputs to nothing: an empty output gives an empty kernel, and an
    empty parameter adds nothing (the NTK of x @ w is the Gram matrix of x)."""
    x = jax.random.normal(KEY, (2, 3))
    empty = empirical_ntk_fn(lambda p, x: (p * x)[:, :0], (), (), None, implementation)(x, x, jnp.ones(()))
    assert empty.shape == (2, 2, 0, 0)
    ntk = empirical_ntk_fn(lambda p, x: x @ p[0][:, None], (), (), None, implementation)(
        x, x, [jnp.ones(3), jnp.ones((0,))])
    np.testing.assert_allclose(ntk[:, :, 0, 0], x @ x.T, rtol=1e-12)
