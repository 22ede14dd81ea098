"""``monte_carlo_kernel_fn`` draws neural-tangents 0.6.5's networks from the same key (kernels/empirical.py).

Truth: neural-tangents' own Monte Carlo kernels, a few samples of small networks (weights, and Dropout masks in
training mode), in tests/data/nt_monte_carlo_reference.npz (experiments/benchmarks/generate_reference_monte_carlo.py).
With JAX's pre-0.5 random stream (``jax_threefry_partitionable=False``, as neural-tangents ran) the same key must give
the same average to rounding; another way of deriving the samples' keys lands far off, which the last test shows.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

from kernels import empirical_kernel_fn, monte_carlo_kernel_fn
from tests.kernels.spec import network_from_spec
from tests.kernels.test_layers_nt2 import relative_error

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_monte_carlo_reference.npz"


def _cases():
    return json.loads(str(np.load(DATA)["_cases"]))


def _ours(data, name, x2):
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{name}/spec"]))
    key = jax.random.PRNGKey(int(data["_key"]))
    with jax.threefry_partitionable(False):
        return monte_carlo_kernel_fn(init_fn, apply_fn, key, int(data["_n_samples"]))(data[f"{name}/x1"], x2,
                                                                                     ("nngp", "ntk"))


@pytest.mark.parametrize("name", _cases())
def test_same_key_same_networks_as_neural_tangents(name):
    data = np.load(DATA)
    for suffix, x2 in (("", data[f"{name}/x2"]), ("_11", None)):
        k = _ours(data, name, x2)
        for field in ("nngp", "ntk"):
            ref = data[f"{name}/{field}{suffix}"]
            assert np.shape(getattr(k, field)) == ref.shape
            assert relative_error(getattr(k, field), ref) < 1e-10, (field + suffix, relative_error(getattr(k, field), ref))


def test_list_of_sample_counts_yields_neural_tangents_running_estimates():
    """``n_samples=[1, 3, 4]``: a generator of the estimates after 1, 3 and 4 samples (neural-tangents'
    ``monte_carlo_kernel_fn`` docstring example), each the same draws' average as neural-tangents'."""
    data, name = np.load(DATA), "mlp_relu"
    counts = [int(n) for n in data["_generator_samples"]]
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{name}/spec"]))
    with jax.threefry_partitionable(False):
        estimates = list(monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(int(data["_key"])), counts)(
            data[f"{name}/x1"], data[f"{name}/x2"], ("nngp", "ntk")))
    assert len(estimates) == len(counts)
    for n, k in zip(counts, estimates):
        for field in ("nngp", "ntk"):
            ref = data[f"{name}/{field}_at_{n}"]
            assert relative_error(getattr(k, field), ref) < 1e-10, (n, field, relative_error(getattr(k, field), ref))
    # the estimates differ from each other, so matching each one checks the count it stops at
    assert relative_error(data[f"{name}/ntk_at_1"], data[f"{name}/ntk_at_4"]) > 1e-2


def test_other_sample_keys_fail_the_reference():
    """Samples keyed ``fold_in(key, i)`` (widekit's draws before) are as valid an estimate, and far from these."""
    data, name = np.load(DATA), "mlp_relu"
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{name}/spec"]))
    key, x1, x2 = jax.random.PRNGKey(int(data["_key"])), data[f"{name}/x1"], data[f"{name}/x2"]
    with jax.threefry_partitionable(False):
        samples = [empirical_kernel_fn(apply_fn)(x1, x2, "ntk", init_fn(jax.random.fold_in(key, i), x1.shape)[1])
                   for i in range(int(data["_n_samples"]))]
    assert relative_error(np.mean(samples, 0), data[f"{name}/ntk"]) > 1e-2
