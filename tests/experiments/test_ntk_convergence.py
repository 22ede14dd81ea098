"""ntk-convergence at the tiny size: the true closed form passes every agreement entry, and a
deliberately wrong one (scaled, or distorted away from x0) fails one."""
import jax
import numpy as np
import pytest

from experiments import agreement as agreement_entries
from experiments import ntk_convergence as experiment
from experiments import registry
from kernels import empirical_kernel_fn
from tests.experiments import saved_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    made = saved_run.run_and_read("ntk-convergence", experiment,
                                  tmp_path_factory.mktemp("ntk-convergence"))
    assert (made["out"] / "ntk-convergence.png").read_bytes()[:4] == b"\x89PNG"
    return made


@pytest.fixture(scope="module")
def record(run):
    return run["record"]


def agreement_under(monkeypatch, run, nngp_factor=1.0, ntk_factor=1.0, distortion=0.0):
    """The agreement entries with the closed form changed: NNGP and NTK scaled, and the NTK
    multiplied by 1 + distortion (1 - cos g) / 2 (1 at x0, 1 + distortion opposite it)."""
    original = experiment.closed_form

    def wrong(config):
        nngp, ntk = original(config)
        gamma = experiment.reference_grid(config, np.float64)[0]
        return nngp * nngp_factor, ntk * ntk_factor * (1 + distortion * (1 - np.cos(gamma)) / 2)

    monkeypatch.setattr(experiment, "closed_form", wrong)
    return saved_run.resummarized(experiment, run)


def test_closed_form_matches_jacot_et_al_at_the_reference_point():
    """Four Dense layers (three hidden of them), W_std 1, b_std 0.1, unit-circle inputs."""
    config = experiment.Config.tiny()
    nngp, ntk = experiment.closed_form(config)
    middle = config.n_grid // 2
    assert experiment.reference_grid(config)[0][middle] == 0.0
    assert nngp[middle] == pytest.approx(0.08125, abs=5e-6)
    assert ntk[middle] == pytest.approx(0.2825, abs=5e-6)


def test_the_true_closed_form_passes_every_entry(record):
    entries = record["agreement"]
    assert agreement_entries.failures(entries) == [], agreement_entries.table(entries)
    names = {item["name"] for item in entries}
    assert {"ntk_init_pointwise", "nngp_init_pointwise", "ntk_trained_pointwise",
            "distance_to_limit_slope", "ntk_change_in_training_slope"} <= names
    results = record["results"]
    assert np.all(np.asarray(results["train_loss_final_mean"])
                  < 0.5 * np.asarray(results["train_loss_initial_mean"]))


@pytest.mark.parametrize("change, fails", [
    (dict(ntk_factor=1.05), "ntk_init_pointwise"),
    (dict(ntk_factor=0.95), "ntk_init_pointwise"),
    (dict(distortion=0.10), "ntk_init_pointwise"),
    (dict(distortion=-0.10), "ntk_init_pointwise"),
    (dict(nngp_factor=1.05), "nngp_init_pointwise"),
    (dict(nngp_factor=0.95), "nngp_init_pointwise"),
])
def test_a_wrong_closed_form_fails(monkeypatch, run, change, fails):
    """5% errors are rejected at tiny (and at small: see the caption)."""
    entries = agreement_under(monkeypatch, run, **change)
    assert fails in agreement_entries.failures(entries), agreement_entries.table(entries)


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
        assert any(w >= config.pointwise_min_width for w in config.widths)
    paper = experiment.Config.paper()
    assert {500, 10000} <= set(paper.widths) and paper.n_seeds == 10 and paper.n_hidden == 3
    assert paper.learning_rate == 1.0 and paper.steps == 200
    with pytest.raises(ValueError, match="odd"):
        experiment.Config(n_grid=64)
    with pytest.raises(ValueError, match="n_trained"):
        experiment.Config(n_trained=3)
