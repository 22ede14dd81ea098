"""experiments.train.inverse_gamma_readout against the distributions it stands for (scipy.stats).

A single Dense readout on a fixed input x0 makes the output, given sigma^2, exactly
N(0, sigma^2 K) with K = W_std^2 |x0|^2 / d + b_std^2, so the outputs of many seeds are exactly
Student-t with 2a degrees of freedom and scale sqrt(b / a K) (Lee, Yun, Yang & Lee 2021), variance
b / (a - 1) K: checked with the sample variance and a Kolmogorov-Smirnov test; the Gaussian with
that variance, and the unscaled networks (deliberately wrong theories), are rejected by the same tests.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import train as tr
from kernels import stax

W_STD, B_STD = 1.3, 0.2
X0 = np.asarray([[0.5, -1.0, 2.0]])


@pytest.fixture(scope="module")
def dense_ensemble():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(1, W_std=W_STD, b_std=B_STD))
    seeds = np.arange(20000)
    return seeds, tr.init_ensemble(init_fn, (-1, 3), seeds), jax.jit(jax.vmap(lambda p: apply_fn(p, X0)[0, 0]))


def test_outputs_are_student_t_with_variance_b_over_a_minus_1_times_k(dense_ensemble):
    seeds, params, outputs_of = dense_ensemble
    a, b = 3.0, 3.0
    k = W_STD ** 2 * float(np.sum(X0 ** 2)) / 3 + B_STD ** 2
    scaled, variances = tr.inverse_gamma_readout(params, seeds + 10 ** 6, a, b)
    outputs = np.asarray(outputs_of(scaled), np.float64)
    assert variances.shape == (len(seeds),)
    # The variances: InvGamma(a, b).
    assert stats.kstest(variances, stats.invgamma(a, scale=b).cdf).pvalue > 1e-3
    # The outputs: sample variance (se from the t's kurtosis, excess 6 / (2a - 4)) and their distribution.
    variance = b / (a - 1) * k
    se = variance * np.sqrt((2 + 6 / (2 * a - 4)) / len(outputs))
    assert abs(outputs.var() - variance) < 4 * se
    assert stats.kstest(outputs, stats.t(2 * a, scale=np.sqrt(b / a * k)).cdf).pvalue > 1e-3
    # Wrong theories: the Gaussian of the same variance; networks without the scale mixture.
    assert stats.kstest(outputs, stats.norm(scale=np.sqrt(variance)).cdf).pvalue < 1e-4
    unscaled = np.asarray(outputs_of(params), np.float64)
    assert abs(unscaled.var() - variance) > 4 * se


def test_only_the_readout_is_scaled_each_network_by_its_own_sigma():
    _, apply_fn, _ = stax.serial(stax.Dense(8, W_std=1.4, b_std=0.1), stax.Relu(),
                                 stax.Dense(1, W_std=1.0), stax.Relu())  # readout: the last with params
    rng = np.random.default_rng(0)  # five networks' parameters in stax.serial's layout (init compiles for 5 s)
    params = ((rng.normal(size=(5, 2, 8)), rng.normal(size=(5, 8))), (), (rng.normal(size=(5, 8, 1)), None), ())
    scaled, variances = tr.inverse_gamma_readout(params, [3, 1, 4, 1, 5], 2.0, 0.5)
    assert type(scaled) is type(params)
    np.testing.assert_allclose(variances, [0.5 / np.random.default_rng(s).gamma(2.0) for s in (3, 1, 4, 1, 5)])
    assert variances[1] == variances[3]  # the same seed, the same variance, wherever in the ensemble
    np.testing.assert_array_equal(scaled[0][0], params[0][0])
    np.testing.assert_array_equal(scaled[0][1], params[0][1])
    assert scaled[2][1] is None and scaled[3] == ()
    np.testing.assert_allclose(scaled[2][0], params[2][0] * np.sqrt(variances)[:, None, None], rtol=1e-6)
    x = np.asarray([[0.3, -0.7], [1.0, 0.2]])
    apply_fn = jax.jit(apply_fn)  # eagerly, every operation of every layer would compile on its own
    one = jax.tree_util.tree_map(lambda p: np.asarray(p)[1], scaled)
    original = jax.tree_util.tree_map(lambda p: np.asarray(p)[1], params)
    # Relu after the readout is positively homogeneous: outputs scale by sigma too.
    np.testing.assert_allclose(apply_fn(one, x), np.sqrt(variances[1]) * apply_fn(original, x), rtol=1e-5)


@pytest.mark.parametrize("change, name", [(dict(a=0.0), "a"), (dict(b=np.nan), "b"), (dict(a=True), "a"),
                                          (dict(params={"w": 1}), "params"), (dict(params=((), ())), "params"),
                                          (dict(seeds=[0]), "seeds"), (dict(seeds=[0, -1]), "seeds")])
def test_bad_arguments_are_named(change, name):
    params = ((jnp.ones((2, 3, 1)), jnp.ones((2, 1))),)
    arguments = dict(params=params, seeds=[0, 1], a=1.0, b=1.0) | change
    with pytest.raises((TypeError, ValueError), match=f"inverse_gamma_readout: argument `{name}`"):
        tr.inverse_gamma_readout(**arguments)
