"""feature-learning at the tiny size: the true theory passes every agreement entry; swapped
feature-change or best-learning-rate exponents, or a muP limit changed by 10%, fail.

The tiny run costs about 45 s of CPU here (a dozen XLA compilations: one per width and
parameterization for initialisation, training and the learning-rate sweep); it runs in the default
suite, as every experiment's tiny size does, and the default suite saves that time elsewhere."""
import numpy as np
import pytest

from experiments import agreement as agreement_entries
from experiments import feature_learning as experiment
from experiments import registry
from tests.experiments import saved_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    made = saved_run.run_and_read("feature-learning", experiment, tmp_path_factory.mktemp("feature-learning"))
    assert (made["out"] / "feature-learning.png").read_bytes()[:4] == b"\x89PNG"
    return made


def test_the_true_theory_passes_every_entry(run):
    entries = run["record"]["agreement"]
    assert agreement_entries.failures(entries) == [], agreement_entries.table(entries)
    results = run["record"]["results"]
    assert results["limit_final_loss"] < 0.2 * results["limit_initial_loss"]  # the limit does learn


def test_swapped_feature_change_exponents_fail(monkeypatch, run):
    monkeypatch.setattr(experiment, "feature_change_exponent", lambda p: {"ntk": 0.0, "mup": -0.5}[p])
    failed = agreement_entries.failures(saved_run.resummarized(experiment, run))
    assert {"feature_change_slope_ntk", "feature_change_slope_mup"} <= set(failed)


@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_a_limit_changed_by_ten_percent_fails(monkeypatch, run, factor):
    original = experiment.limit

    def wrong(config):
        outputs, change = original(config)
        return outputs * factor, change * factor ** 2

    monkeypatch.setattr(experiment, "limit", wrong)
    failed = agreement_entries.failures(saved_run.resummarized(experiment, run))
    assert {"widest_matches_limit", "feature_change_mup_limit", "limit_distance_slope"} <= set(failed), failed


def test_swapped_best_learning_rate_exponents_fail(monkeypatch, run):
    monkeypatch.setattr(experiment, "best_learning_rate_exponent", lambda p: {"mup": -1.0, "standard": 0.0}[p])
    failed = agreement_entries.failures(saved_run.resummarized(experiment, run))
    assert {"best_learning_rate_slope_mup", "best_learning_rate_slope_standard"} <= set(failed)


def test_best_learning_rate_is_refined_between_grid_points():
    """A parabola in log2(rate) with its minimum at -3.3 is found there from a half-octave grid."""
    log2_rates = np.arange(-8.0, 2.0, 0.5)
    losses = np.exp((log2_rates + 3.3) ** 2)[None] * np.ones((4, 1))
    assert experiment.best_log2_learning_rate(log2_rates, losses) == pytest.approx(-3.3, abs=1e-9)
    losses[:, -3:] = np.inf  # diverged rates are never the best
    assert experiment.best_log2_learning_rate(log2_rates, losses) == pytest.approx(-3.3, abs=1e-9)


def test_registered_and_configs_are_valid():
    assert registry.load_experiment("feature-learning") is experiment
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        blocks = config.n_seeds // config.seeds_per_piece
        assert len(experiment.pieces(config)) == 2 * len(config.widths) * (blocks + 1)  # + the sweep
    with pytest.raises(ValueError, match="record_steps"):
        experiment.Config(record_steps=(0, 2, 5))
    with pytest.raises(ValueError, match="n_seeds"):
        experiment.Config(n_seeds=33)
