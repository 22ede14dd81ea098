"""Dense's abc-parametrizations (Yang & Hu 2021): finite layers against independent facts, refusals by name.

- abc (a, b) = (1/2, 0) is the NTK parameterization and (0, 1/2) the standard one (same weights,
  same outputs): the abc form contains both.
- muP's layers have the variances of its definition: h = W1 x with W1 entries of variance
  W_std^2 / d_in (Monte Carlo); the readout's outputs have variance W_std^2 |h|^2 / n^2.
- muP trained at one learning rate (c = 0) equals, step by step, the formulation of Yang et
  al. 2022, Table 3 (no multipliers; input layer at eta fan_out, readout at eta / fan_in),
  through `experiments.train`'s per-layer learning rates; without them it does not.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train
from kernels import stax


def outputs(layer, x, seed=0):
    init_fn, apply_fn, _ = layer
    _, params = init_fn(jax.random.PRNGKey(seed), x.shape)
    return np.asarray(apply_fn(params, x))


@pytest.mark.parametrize("role", ["hidden", "output"])
def test_abc_contains_ntk_and_standard(role):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)), jnp.float32)
    np.testing.assert_allclose(outputs(stax.Dense(5, W_std=1.3, parameterization="abc", role=role, abc=(0.5, 0)), x),
                               outputs(stax.Dense(5, W_std=1.3), x), rtol=1e-6)
    np.testing.assert_allclose(outputs(stax.Dense(5, W_std=1.3, parameterization="abc", role=role, abc=(0, 0.5)), x),
                               outputs(stax.Dense(5, W_std=1.3, parameterization="standard"), x), rtol=1e-6)
    wrong = outputs(stax.Dense(5, W_std=1.3, parameterization="abc", role=role, abc=(0.5, 0.5)), x)
    assert not np.allclose(wrong, outputs(stax.Dense(5, W_std=1.3), x), rtol=0.1)


def test_mup_layer_variances():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5)), jnp.float32)
    n = 20000
    h = outputs(stax.Dense(n, W_std=1.5, parameterization="mup", role="input"), x)[0]
    expected = 1.5 ** 2 * float(jnp.sum(x ** 2)) / 5
    assert abs(h.var() / expected - 1) < 4 * np.sqrt(2 / n)
    n, seeds = 400, 400
    features = jnp.ones((1, n), jnp.float32)  # |h|^2 = n
    init_fn, apply_fn, _ = stax.Dense(1, W_std=0.7, parameterization="mup", role="output")
    f = np.asarray(jax.jit(jax.vmap(lambda k: apply_fn(init_fn(k, (1, n))[1], features)[0, 0]))(
        jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds))))
    assert abs(f.var() * n ** 2 / (0.7 ** 2 * n) - 1) < 4 * np.sqrt(2 / seeds)  # var f = W^2 |h|^2 / n^2


def test_mup_trains_as_table_3_of_yang_et_al_2022():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    width = 64
    mup = stax.serial(stax.Dense(width, parameterization="mup", role="input"),
                      stax.Dense(2, parameterization="mup", role="output"))
    table3 = stax.serial(stax.Dense(width, parameterization="abc", role="input", abc=(0, 0)),
                         stax.Dense(2, parameterization="abc", role="output", abc=(0, 1)))
    key = jax.random.PRNGKey(3)
    mup_params, table3_params = mup[0](key, (-1, 3))[1], table3[0](key, (-1, 3))[1]
    scales = train.abc_learning_rates(table3_params, [("input", -1), ("output", 1)])
    assert jax.tree_util.tree_leaves(scales) == [64.0, 1 / 64]
    steps = [0, 1, 10, 30]
    reference = train.train(mup[1], mup_params, x, y, learning_rate=0.5, record_steps=steps)
    same = train.train(table3[1], table3_params, x, y, learning_rate=0.5, record_steps=steps,
                       learning_rate_scales=scales)
    np.testing.assert_allclose(same.train_outputs, reference.train_outputs, rtol=1e-4, atol=1e-5)
    unscaled = train.train(table3[1], table3_params, x, y, learning_rate=0.5, record_steps=[0, 1])
    assert np.abs(np.asarray(unscaled.train_outputs[-1] - reference.train_outputs[1])).max() > 0.05


@pytest.mark.parametrize("parameterization, extra", [("mup", {}), ("abc", {"abc": (0.0, 0.5)})])
def test_kernel_fn_refuses_by_name(parameterization, extra):
    _, _, kernel_fn = stax.serial(stax.Dense(8, parameterization=parameterization, role="input", **extra),
                                  stax.Relu(), stax.Dense(1))
    with pytest.raises(ValueError, match=rf"Dense\(out_dim=8.*kernel_fn: argument `parameterization`.*"
                                         rf"received '{parameterization}'"):
        kernel_fn(jnp.ones((2, 3)), get="ntk")


@pytest.mark.parametrize("kwargs, argument", [
    (dict(role="input"), "role"),
    (dict(parameterization="standard", abc=(0, 0)), "abc"),
    (dict(parameterization="mup"), "role"),
    (dict(parameterization="mup", role="middle"), "role"),
    (dict(parameterization="mup", role="input", abc=(0, 1)), "abc"),
    (dict(parameterization="abc", role="hidden"), "abc"),
    (dict(parameterization="abc", role="hidden", abc=(0, float("nan"))), "abc"),
    (dict(parameterization="abc", role="hidden", abc=(0, 0.5), b_std=0.1), "b_std"),
    (dict(parameterization="mup", role="hidden", s=(1, 2)), "s"),
    (dict(parameterization="mean-field"), "parameterization"),
])
def test_bad_arguments_are_refused_by_name(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=rf"Dense\(.*{argument}"):
        stax.Dense(4, **kwargs)
