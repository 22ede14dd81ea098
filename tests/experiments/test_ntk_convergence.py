"""ntk-convergence at the tiny size: the empirical NTK approaches the closed form as width^-1/2."""
import json

import jax
import numpy as np
import pytest

from experiments import ntk_convergence as experiment
from experiments import registry
from experiments.__main__ import main
from kernels import empirical_kernel_fn


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("ntk-convergence")
    assert main(["run", "ntk-convergence", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert (out / "ntk-convergence.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / "results.json").read_text())


def test_closed_form_matches_jacot_et_al_at_the_reference_point():
    """Four Dense layers (three hidden of them), W_std 1, b_std 0.1, unit-circle inputs."""
    config = experiment.Config.tiny()
    nngp, ntk = experiment.closed_form(config)
    middle = config.n_grid // 2
    assert experiment.reference_grid(config)[0][middle] == 0.0
    assert nngp[middle] == pytest.approx(0.08125, abs=5e-6)
    assert ntk[middle] == pytest.approx(0.2825, abs=5e-6)


def test_slope_of_the_distance_to_the_limit_is_minus_one_half(record):
    agreement = record["agreement"]
    assert -0.65 <= agreement["slope_init"] <= -0.35, agreement


def test_widest_networks_mean_ntk_at_x0_is_within_three_standard_errors(record):
    agreement = record["agreement"]
    assert agreement["widest_width"] == max(experiment.Config.tiny().widths)
    assert abs(agreement["widest_ntk_x0_init_mean"] - 0.2825) <= 3 * agreement["widest_ntk_x0_init_se"]
    assert abs(agreement["widest_ntk_x0_init_z"]) <= 3


def test_training_reduced_the_loss_and_the_ntk_moved_less_than_its_spread(record):
    results = record["results"]
    assert np.all(np.asarray(results["train_loss_final_mean"])
                  < 0.5 * np.asarray(results["train_loss_initial_mean"]))
    assert np.all(np.asarray(results["drift_rms"]) < np.asarray(results["deviation_init_rms"]))


def test_ntk_against_x0_equals_the_empirical_kernel_of_kernels():
    """The JVP shortcut gives the same numbers as `kernels.empirical_kernel_fn`."""
    init_fn, apply_fn, _ = experiment.relu_network(16)
    _, params = init_fn(jax.random.PRNGKey(3), (-1, 2))
    _, x = experiment.reference_grid(experiment.Config.tiny(), np.float64)
    x0 = x[len(x) // 2:len(x) // 2 + 1]
    ours = jax.jit(lambda p: experiment.ntk_against(apply_fn, p, x, x0))(params)
    kernel_fn = empirical_kernel_fn(apply_fn)
    reference = jax.jit(lambda p: kernel_fn(x, x0, "ntk", params=p))(params)[:, 0]
    np.testing.assert_allclose(ours, reference, rtol=1e-10)


def test_registered_and_configs_are_valid():
    assert registry.load_experiment("ntk-convergence") is experiment
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        assert min(config.widths) >= 64 and len(experiment.pieces(config)) >= len(config.widths)
    paper = experiment.Config.paper()
    assert {500, 10000} <= set(paper.widths) and paper.n_seeds == 10
    with pytest.raises(ValueError, match="odd"):
        experiment.Config(n_grid=64)
    with pytest.raises(ValueError, match="n_trained"):
        experiment.Config(n_trained=3)
