"""infinite-depth-classifiers at the tiny size: deep kernel classifiers against the classifiers
`theory.infinite_depth.taxonomy` names, and the deep kernels' exponents near rho = 1; a theory made
wrong (exponents 10% off, kinds swapped, a recursion one layer short) is rejected from the same saved
pieces. Independent checks: the Bayes and 1-NN accuracies by Monte Carlo, the closed-form duals
against widekit's layers, the recursion against the unnormalized NTK recursion, the spline against
the recursion at the data's own angles."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments import agreement, registry
from experiments import infinite_depth_classifiers as exp
from tests.experiments.saved_run import resummarized, run_and_read
from theory import infinite_depth

NAME = "infinite-depth-classifiers"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_and_read(NAME, exp, tmp_path_factory.mktemp("idc"))


def test_true_theory_passes_at_tiny(run):
    entries = run["record"]["agreement"]
    assert agreement.failures(entries) == []
    names = {e["name"] for e in entries}
    assert {"exponent_erf_ntk", "exponent_alpha_0.5_nngp", "deep_correlation", "relu_ntk_accuracy",
            "relu_ntk_matches_majority_vote", "hermite2_nngp_matches_nearest_neighbor",
            "alpha_1_nngp_matches_singular", "dimension_optimal_nngp_vs_bayes",
            "dimension_optimal_nngp_beats_nearest_neighbor"} <= names
    assert run["record"]["results"]["dimension_optimal"] == "alpha_0.5"
    assert agreement.failures(resummarized(exp, run)) == []  # the saved pieces give the same verdict


def _patched_taxonomy(monkeypatch, change):
    true = infinite_depth.taxonomy

    def wrong(xi, kernel="ntk", **kwargs):
        return change(xi, true(xi, kernel, **kwargs))
    monkeypatch.setattr(infinite_depth, "taxonomy", wrong)


def _failures(run):
    return agreement.failures(resummarized(exp, run))


def test_exponents_ten_percent_off_are_rejected(run, monkeypatch):
    def scaled(xi, tax):
        if tax.kind != "singular":
            return tax
        return infinite_depth.Taxonomy(tax.kind, 1.1 * tax.alpha, 1.1 * tax.exponent)
    _patched_taxonomy(monkeypatch, scaled)
    failed = _failures(run)
    for name in ("erf", "alpha_0.5", "alpha_1", "alpha_2"):
        assert f"exponent_{name}_nngp" in failed and f"exponent_{name}_ntk" in failed
    assert "dimension_optimal" in failed  # no dual has alpha = d / 2 any more


@pytest.mark.parametrize("swap, activation", [
    ({"majority_vote": "nearest_neighbor", "nearest_neighbor": "majority_vote"}, "relu"),
    ({"majority_vote": "nearest_neighbor", "nearest_neighbor": "majority_vote"}, "hermite2"),
    ({"singular": "majority_vote"}, "alpha_0.5"),
    ({"singular": "nearest_neighbor"}, "erf"),
])
def test_a_wrong_kind_is_rejected(run, monkeypatch, swap, activation):
    def wrong_kind(xi, tax):
        kind = swap.get(tax.kind, tax.kind)
        exponent = {"majority_vote": 0.0, "nearest_neighbor": math.inf}.get(kind, tax.exponent)
        return infinite_depth.Taxonomy(kind, tax.alpha, exponent)
    _patched_taxonomy(monkeypatch, wrong_kind)
    assert any(name.startswith(f"{activation}_") for name in _failures(run))


def test_a_recursion_one_layer_short_is_rejected(run, monkeypatch):
    true = infinite_depth.deep_correlation
    monkeypatch.setattr(infinite_depth, "deep_correlation",
                        lambda xi, rho, depth, kernel="nngp": true(xi, rho, depth - 1, kernel))
    assert "deep_correlation" in _failures(run)


def test_bayes_and_nearest_neighbor_accuracies_by_monte_carlo():
    prior = 0.4
    # closed form of the quadrature: prior P(p < prior | Beta(1,2)) + (1 - prior) P(p > prior | Beta(2,1))
    assert exp.bayes_accuracy(prior) == pytest.approx(prior * (1 - (1 - prior) ** 2) + (1 - prior) * (1 - prior ** 2),
                                                      abs=1e-12)
    rng = np.random.default_rng(5)
    theta, y, p = exp.sample(400_000, prior, rng)
    correct = exp.bayes_predictions(p, prior) == y
    se = correct.std() / math.sqrt(correct.size)
    assert abs(correct.mean() - exp.bayes_accuracy(prior)) < 4 * se
    assert abs(correct.mean() - 0.7) > 20 * se  # a wrong threshold (p < 0.5) gives 0.7
    # 1-NN with 40,000 training points is within ~1e-3 of its n -> infinity accuracy (Cover & Hart)
    train_theta, train_y, _ = exp.sample(40_000, prior, rng)
    order = np.argsort(train_theta)
    sorted_theta, sorted_y = train_theta[order], train_y[order]
    right = np.clip(np.searchsorted(sorted_theta, theta), 1, sorted_theta.size - 1)
    nearer_left = theta - sorted_theta[right - 1] < sorted_theta[right] - theta
    nn = np.where(nearer_left, sorted_y[right - 1], sorted_y[right]) == y
    assert abs(nn.mean() - exp.nearest_neighbor_accuracy(prior)) < 4 * nn.std() / math.sqrt(nn.size) + 2e-3


def test_data_are_the_two_dirichlet_classes_on_the_circle():
    theta, y, p = exp.sample(20_000, 0.4, np.random.default_rng(1))
    x = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    np.testing.assert_allclose(x[:, 1] / x[:, 0], (1 - p) / p, rtol=1e-9)
    assert np.all((theta >= 0) & (theta <= np.pi / 2))
    assert abs(np.mean(y > 0) - 0.4) < 4 * math.sqrt(0.24 / y.size)
    assert stats.kstest(p[y > 0], stats.beta(1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(p[y < 0], stats.beta(2, 1).cdf).pvalue > 1e-3
    assert stats.kstest(p[y > 0], stats.beta(2, 1).cdf).pvalue < 1e-10  # the classes differ


@pytest.mark.parametrize("name", ["relu", "alpha_0.5"])
def test_closed_form_duals_are_the_layers_duals(name):
    """The experiment's NumPy duals against widekit's layer, through theory.infinite_depth.normalized_dual."""
    rho = np.linspace(-1, 1, 41)
    xi, reference = exp.dual(name), infinite_depth.normalized_dual(exp.layer(name))
    np.testing.assert_allclose(xi(rho), reference(rho), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(xi.derivative(rho), reference.derivative(rho), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["erf", "hermite2", "alpha_1", "alpha_2"])
def test_closed_form_duals_are_the_layers_duals_slow(name):
    test_closed_form_duals_are_the_layers_duals(name)


def test_recursion_is_the_unnormalized_ntk_recursion():
    """Theta_L(rho) / Theta_L(1) with Theta_l = xi(Sigma_{l-1}) + xi'(Sigma_{l-1}) Theta_{l-1}, iterated
    as written (Jacot et al. 2018), against the experiment's carried normalization."""
    rho = np.array([-0.3, 0.2, 0.9, 0.999])
    for name in ("relu", "alpha_2"):
        xi = exp.dual(name)
        kernels = exp.deep_kernels(xi, rho, [3, 12])
        sigma, theta, sigma1, theta1 = rho.copy(), rho.copy(), 1.0, 1.0
        for depth in range(1, 13):
            theta, theta1 = xi(sigma) + xi.derivative(sigma) * theta, xi(sigma1) + xi.derivative(sigma1) * theta1
            sigma, sigma1 = xi(sigma), xi(sigma1)
            if depth in (3, 12):
                np.testing.assert_allclose(kernels[depth][0], sigma, rtol=1e-13)
                np.testing.assert_allclose(kernels[depth][1], theta / theta1, rtol=1e-12)


def test_spline_carries_the_recursion_to_any_angle():
    """From angle 1e-5 up: below it rounding near the fixed point rho = 1, amplified by the layers,
    makes the float64 recursion itself noisy at ~1e-3 (erf, 1 - rho = 5e-13, depth 200), spline or not."""
    grid = exp.Grid(600)
    rho = np.cos(np.concatenate([np.geomspace(1e-5, 0.69, 40), np.linspace(0.71, np.pi / 2 - 1e-3, 20)]))
    angle = np.arccos(rho)  # the angles of the float correlations the direct recursion sees
    for name, depth in (("relu", 500), ("alpha_1", 60), ("erf", 200)):
        xi = exp.dual(name)
        on_grid = exp.deep_kernels(xi, grid.rho, [depth])[depth]
        exact = exp.deep_kernels(xi, rho, [depth])[depth]
        for values, truth in zip(on_grid, exact):
            np.testing.assert_allclose(grid.interpolate(values, angle), truth, rtol=2e-5)


def test_singular_classifier_with_a_huge_exponent_is_one_nearest_neighbor():
    (theta_train, y_train, _), (theta_test, _, _) = exp.problem(exp.Config.tiny())
    np.testing.assert_array_equal(exp.singular_predictions(theta_test, theta_train, y_train, 1e4),
                                  exp.nearest_neighbor_predictions(theta_test, theta_train, y_train))


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        exp.pieces(exp.Config(activations=("relu", "tanh")))


def test_registered():
    assert registry.load_experiment(NAME) is exp
