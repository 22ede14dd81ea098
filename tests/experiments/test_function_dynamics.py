"""function-dynamics at the tiny size: trained networks approach their infinite-width prediction as width grows."""
import json

import numpy as np
import pytest

from experiments import function_dynamics as experiment
from experiments.__main__ import main
from experiments.precomputed import indices, precomputed_kernel_fn


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("function-dynamics")
    assert main(["run", "function-dynamics", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert (out / "function-dynamics.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / "results.json").read_text())


def test_rms_gap_shrinks_with_width(record):
    gaps = np.asarray(record["results"]["rms_gap"])
    widths = record["results"]["widths"]
    assert widths == sorted(widths) and len(widths) >= 3
    assert np.all(np.diff(gaps) < 0), gaps
    # three widths a factor 4 apart: width^-1/2 would halve the gap at each
    assert gaps[-1] < 0.5 * gaps[0], gaps
    agreement = record["agreement"]
    assert [agreement[f"rms_gap_width_{w}"] for w in widths] == pytest.approx(gaps.tolist())


def test_gradient_descent_and_flow_differ_less_than_the_widest_gap(record):
    results = record["results"]
    assert max(results["discretization_gap"]) < results["rms_gap"][-1]


def test_ensemble_starts_at_zero_mean_and_the_band_contains_it(record):
    results = record["results"]
    mean, low, high = (np.asarray(results[k]) for k in ("theory_mean", "theory_low", "theory_high"))
    assert results["steps"][0] == 0 and np.all(np.diff(results["steps"]) > 0)
    np.testing.assert_allclose(mean[0], 0.0, atol=1e-6)
    assert np.all(low <= mean) and np.all(mean <= high) and np.all(high[0] - low[0] > 0.1)
    # most trained outputs of the widest networks fall inside the 10-90% band
    assert results["band_coverage"][-1] > 0.6


def test_precomputed_kernel_fn_picks_the_blocks_that_theory_asks_for():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    nngp, ntk = a @ a.T, a @ a.T + np.eye(6)
    kernel_fn = precomputed_kernel_fn(nngp=nngp, ntk=ntk)
    train, test = indices(0, 4), indices(4, 6)
    np.testing.assert_array_equal(kernel_fn(train, None, "ntk"), ntk[:4, :4])
    both = kernel_fn(test, train, ("nngp", "ntk"))
    np.testing.assert_array_equal(both.nngp, nngp[4:, :4])
    np.testing.assert_array_equal(both.ntk, ntk[4:, :4])
    with pytest.raises(ValueError, match="cov1"):
        kernel_fn(train, None, "cov1")


def test_record_steps_and_configs():
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        steps = experiment.record_steps(config)
        assert steps[0] == 0 and steps[-1] == config.steps and np.all(np.diff(steps) > 0)
    with pytest.raises(ValueError, match="seeds_per_piece"):
        experiment.Config(n_seeds=10, seeds_per_piece=4)
