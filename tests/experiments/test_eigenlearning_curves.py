"""eigenlearning-curves at the tiny size: the eigenframework, fed the spectrum of digits disjoint from the test digits, predicts held-out KRR and random-ReLU-feature errors point by point, and a theory with one quantity wrong is rejected."""
import dataclasses
import numpy as np
import pytest

from experiments import agreement
from experiments import eigenlearning_curves as exp
from tests.experiments import saved_run
from theory import eigenlearning

TRUE = {name: getattr(eigenlearning, name) for name in
        ("kernel_ridge_risk", "random_feature_risk", "_learnabilities", "_root_in_log", "_estimate")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run through the command line: its record and its saved pieces."""
    return saved_run.run_and_read("eigenlearning-curves", exp, tmp_path_factory.mktemp("eig") / "run")


def resummarized(run):
    return saved_run.resummarized(exp, run)


def test_tiny_run_agrees_point_by_point(tiny_run):
    entries = agreement.check(tiny_run["record"]["agreement"])
    assert agreement.failures(entries) == []
    assert [e["name"] for e in entries] == [
        "KRR test MSE (n <= 40)", "KRR train MSE (n <= 40)", "RF test MSE", "RF train MSE",
        "RF more is better"]
    assert (tiny_run["out"] / "eigenlearning-curves.png").exists()
    assert f"{entries[0]['value']:.2f}" in exp.caption(tiny_run["record"])


def test_theory_never_sees_a_test_or_training_digit(tiny_run):
    config = tiny_run["config"]
    for kind in ("krr", "rf"):
        test, reserve, _ = exp.split(config, kind, 0)
        # indices into the digits after the spectrum digits: disjoint from them by construction,
        # and test and training digits disjoint from each other
        assert len(set(test) & set(reserve)) == 0
        assert len(test) == config.n_test and len(reserve) == config.n_data - config.n_spectrum - config.n_test


def _scaled_argument(name, factor):
    """kernel_ridge_risk and random_feature_risk with one argument multiplied by `factor`."""
    def wrap(true):
        def wrong(eigenvalues, target_power, n, *args, **kwargs):
            if name == "eigenvalues":
                eigenvalues = np.asarray(eigenvalues) * factor
            elif name == "target_power":
                target_power = np.asarray(target_power) * factor
            else:
                kwargs[name] = kwargs[name] * factor
            return true(eigenvalues, target_power, n, *args, **kwargs)
        return wrong
    return {"kernel_ridge_risk": wrap(TRUE["kernel_ridge_risk"]),
            "random_feature_risk": wrap(TRUE["random_feature_risk"])}


def _without_overfitting_coefficient(*args, **kwargs):
    estimate = TRUE["_estimate"](*args, **kwargs)
    return dataclasses.replace(estimate, test_mse=estimate.test_mse / estimate.overfitting_coefficient)


# the errors the tiny run rejects; `--size small` rejects 10% in each (the slow test)
WRONG = {
    "target powers x 1.1": _scaled_argument("target_power", 1.1),
    "target powers / 1.1": _scaled_argument("target_power", 1 / 1.1),
    "noise x 1.1": _scaled_argument("noise", 1.1),
    "noise / 1.1": _scaled_argument("noise", 1 / 1.1),
    "eigenvalues x 1.5": _scaled_argument("eigenvalues", 1.5),
    "ridge x 1.5": _scaled_argument("ridge", 1.5),
    "kappa x 1.2": {"_root_in_log": lambda *a, **k: 1.2 * TRUE["_root_in_log"](*a, **k)},
    "kappa / 1.2": {"_root_in_log": lambda *a, **k: TRUE["_root_in_log"](*a, **k) / 1.2},
    "learnabilities L^1.1": {"_learnabilities": lambda lam, kappa: TRUE["_learnabilities"](lam, kappa) ** 1.1},
    "overfitting coefficient dropped": {"_estimate": _without_overfitting_coefficient},
}


@pytest.mark.parametrize("error", list(WRONG))
def test_a_wrong_theory_is_rejected(tiny_run, monkeypatch, error):
    for name, function in WRONG[error].items():
        monkeypatch.setattr(eigenlearning, name, function)
    assert agreement.failures(resummarized(tiny_run)), error


def test_resummarizing_gives_the_recorded_agreement(tiny_run):
    assert resummarized(tiny_run) == tiny_run["record"]["agreement"]
