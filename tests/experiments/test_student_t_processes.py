"""student-t-processes at the tiny size: the true theory passes every agreement entry, and deliberately
wrong ones (the Gaussian of the same variance, a wrong degree of freedom or scale for the finite
networks; intervals without the noise or 20% too narrow on the real data) fail one, re-summarized from
the saved pieces of one run."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments import agreement as agreement_entries
from experiments import registry
from experiments import student_t_processes as experiment
from tests.experiments import saved_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    made = saved_run.run_and_read("student-t-processes", experiment, tmp_path_factory.mktemp("stp"))
    assert (made["out"] / "student-t-processes.png").read_bytes()[:4] == b"\x89PNG"
    return made


def test_the_true_theory_passes_every_entry(run):
    entries = run["record"]["agreement"]
    assert agreement_entries.failures(entries) == [], agreement_entries.table(entries)
    names = {item["name"] for item in entries}
    assert {"ks_t_width_512", "ks_t_pooled", "ks_gaussian_same_variance_rejected", "coverage_t_90",
            "coverage_t_95", "coverage_gp_90", "coverage_gp_95"} <= names
    results = run["record"]["results"]
    assert results["n_held_out"] == 442
    assert "diabetes" in experiment.caption(run["record"])


def test_nngp_at_x0_is_the_relu_recursion():
    """K(x0, x0) by hand: Dense(W_std^2 |x0|^2 / d + b_std^2) -> ReLU halves it -> readout W_std 1."""
    config = experiment.Config.tiny()
    q = config.W_std ** 2 * float(np.sum(np.square(config.x0))) / len(config.x0) + config.b_std ** 2
    assert experiment.nngp_at_x0(config) == pytest.approx(q / 2, rel=1e-6)


def wrong_marginal(wrong):
    def marginal(config):
        k = experiment.nngp_at_x0(config)
        if wrong == "gaussian":  # the Gaussian of the t's variance
            return stats.norm(scale=math.sqrt(config.b / (config.a - 1) * k))
        if wrong == "df":  # one degree of freedom per unit of a (a Student t with a, not 2a)
            return stats.t(config.a, scale=math.sqrt(config.b / config.a * k))
        return stats.t(2 * config.a, scale=1.1 * math.sqrt(config.b / config.a * k))  # 10% too wide
    return marginal


def wrong_predictives(wrong_t, wrong_gp):
    true_t, true_gp = experiment.t_predictive, experiment.gaussian_predictive

    def t_predictive(fold, a):
        if wrong_t == "without_noise":  # the interval of f, not of y = f + noise
            return true_t(dict(fold, k_test=np.asarray(fold["k_test"]) - float(fold["noise_t"])
                               * np.eye(len(fold["y_test"]))), a)
        df, mean, scale = true_t(fold, a)
        return df, mean, 0.8 * scale  # 20% too narrow

    def gaussian_predictive(fold):
        mean, std = true_gp(fold)
        if wrong_gp == "without_noise":
            return mean, np.sqrt(np.clip(std ** 2 - float(fold["noise_gp"]), 1e-12, None))
        return mean, 0.8 * std
    return t_predictive, gaussian_predictive


# Each run re-summarizes under three wrong theories at once (one per part), each failing its own entries.
@pytest.mark.parametrize("marginal, wrong_t, wrong_gp", [
    ("gaussian", "without_noise", "narrow"), ("df", "narrow", "without_noise"), ("scale", "narrow", "narrow")])
def test_wrong_theories_fail(monkeypatch, run, marginal, wrong_t, wrong_gp):
    t_predictive, gaussian_predictive = wrong_predictives(wrong_t, wrong_gp)
    monkeypatch.setattr(experiment, "output_marginal", wrong_marginal(marginal))
    monkeypatch.setattr(experiment, "t_predictive", t_predictive)
    monkeypatch.setattr(experiment, "gaussian_predictive", gaussian_predictive)
    entries = saved_run.resummarized(experiment, run)
    failed = agreement_entries.failures(entries)
    assert {"ks_t_pooled", "ks_t_width_512", "coverage_t_90", "coverage_gp_95"} <= set(failed), \
        agreement_entries.table(entries)


def test_the_gaussian_rejection_entry_fails_if_the_outputs_were_gaussian(monkeypatch, run):
    """With the 'wrong' Gaussian replaced by the t itself, the rejection entry fails: its criterion
    passes only when the outputs' law and the Gaussian differ."""
    monkeypatch.setattr(experiment, "gaussian_with_the_same_variance", experiment.output_marginal)
    monkeypatch.setattr(experiment, "_summarize_regression", lambda config, folds: {
        "n_held_out": 100, "coverage_levels": [], "coverage_t": [], "coverage_gp": []})
    entries = saved_run.resummarized(experiment, run)
    assert "ks_gaussian_same_variance_rejected" in agreement_entries.failures(entries)


def test_t_predictive_is_the_t_posterior_of_the_noisy_targets(run):
    """Against numpy.linalg.solve and Lee et al. 2021's conjugate update, on the first saved fold."""
    fold = next(p for p in run["pieces"] if "fold" in p)
    a = run["config"].a_regression
    r, b = float(fold["noise_t"]), float(fold["b_t"])
    kd = fold["k_train"] + r * np.eye(len(fold["y_train"]))
    mean = fold["k_test_train"] @ np.linalg.solve(kd, fold["y_train"])
    q = fold["y_train"] @ np.linalg.solve(kd, fold["y_train"])
    variance = (np.diag(fold["k_test"]) + r
                - np.einsum("ij,ji->i", fold["k_test_train"], np.linalg.solve(kd, fold["k_test_train"].T)))
    df, ours_mean, ours_scale = experiment.t_predictive(fold, a)
    n = len(fold["y_train"])
    assert df == 2 * a + n
    np.testing.assert_allclose(ours_mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours_scale ** 2, (2 * b + q) / (2 * a + n) * variance, rtol=1e-8)
    # b = a q / n maximizes the evidence at (a, r): the theory's evidence is lower on either side.
    lml = [float(experiment.student_t.log_marginal_likelihood(fold["k_train"], fold["y_train"], a, b * f,
                                                              diag_reg=r, diag_reg_absolute_scale=True))
           for f in (0.9, 1.0, 1.1)]
    assert lml[1] > lml[0] and lml[1] > lml[2]


def test_registered_and_configs_are_valid():
    assert registry.load_experiment("student-t-processes") is experiment
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        assert any(w >= config.min_width for w in config.widths) and config.a > 1
    with pytest.raises(ValueError, match="seeds_per_piece"):
        experiment.Config(n_seeds=100, seeds_per_piece=30)
    with pytest.raises(ValueError, match="min_width"):
        experiment.Config(widths=(4, 16))
    with pytest.raises(ValueError, match="a must exceed 1"):
        experiment.Config(a=1.0)
