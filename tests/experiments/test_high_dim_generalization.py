"""high-dim-generalization at the tiny size: the simulated E_g(t) agrees with Advani & Saxe point by point, and a theory with any one quantity wrong is rejected."""
import numpy as np
import pytest

from experiments import agreement
from experiments import high_dim_generalization as exp
from tests.experiments import saved_run
from theory import high_dim

TRUE_GENERALIZATION_ERROR = high_dim.generalization_error
TRUE_EDGES = high_dim._edges


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run through the command line: its record and its saved pieces."""
    return saved_run.run_and_read("high-dim-generalization", exp, tmp_path_factory.mktemp("hdg") / "run")


def resummarized(run):
    return saved_run.resummarized(exp, run)


def test_tiny_run_agrees_point_by_point(tiny_run):
    entries = agreement.check(tiny_run["record"]["agreement"])
    assert agreement.failures(entries) == []
    names = [e["name"] for e in entries]
    assert names == ["E_g(t) alpha=0.5", "E_g(t) alpha=2", "E_g(t=inf) over alpha"]
    # with margin: every max |z| well inside its Šidák threshold
    for e in entries:
        assert e["value"] < 0.8 * agreement.sidak_threshold(81 if "(t)" in e["name"] else 2)
    assert (tiny_run["out"] / "high-dim-generalization.png").exists()
    caption = exp.caption(tiny_run["record"])
    assert f"{entries[0]['value']:.2f}" in caption


def test_resummarizing_the_saved_pieces_gives_the_recorded_agreement(tiny_run):
    assert resummarized(tiny_run) == tiny_run["record"]["agreement"]


def _with(**changes):
    """generalization_error with the named arguments multiplied by the given factors."""
    def wrong(t, alpha, sigma_w2=1.0, sigma_w0_2=0.0, sigma_eps2=0.0, tau=1.0):
        args = dict(alpha=alpha, sigma_w2=sigma_w2, sigma_w0_2=sigma_w0_2, sigma_eps2=sigma_eps2,
                    tau=tau)
        for key, factor in changes.items():
            args[key] *= factor
        return TRUE_GENERALIZATION_ERROR(t, **args)
    return wrong


# the smallest errors the tiny run (N = 200, 16 seeds) rejects; `--size small` rejects 10%
# in each (5% in all but tau): see the slow test below
@pytest.mark.parametrize("quantity, factor", [
    ("alpha", 1.1), ("alpha", 1 / 1.1), ("sigma_w2", 1.1), ("sigma_w2", 1 / 1.1),
    ("sigma_eps2", 1.1), ("sigma_eps2", 1 / 1.1), ("tau", 1.3), ("tau", 1 / 1.3)])
def test_a_wrong_theory_quantity_is_rejected(tiny_run, monkeypatch, quantity, factor):
    monkeypatch.setattr(high_dim, "generalization_error", _with(**{quantity: factor}))
    assert agreement.failures(resummarized(tiny_run))


@pytest.mark.parametrize("factor", [1.15, 1 / 1.15])
def test_wrong_marchenko_pastur_eigenvalues_are_rejected(tiny_run, monkeypatch, factor):
    monkeypatch.setattr(high_dim, "_edges", lambda alpha: tuple(factor * v for v in TRUE_EDGES(alpha)))
    assert agreement.failures(resummarized(tiny_run))


def test_a_dropped_noise_term_is_rejected(tiny_run, monkeypatch):
    # the test label's own noise, sigma_eps2, left out of E_g
    monkeypatch.setattr(high_dim, "generalization_error", lambda t, alpha, **kw: TRUE_GENERALIZATION_ERROR(
        t, alpha, **kw) - kw.get("sigma_eps2", 0.0))
    assert agreement.failures(resummarized(tiny_run))


@pytest.mark.slow
def test_small_rejects_ten_percent_errors(tmp_path, monkeypatch):
    run = saved_run.run_and_read("high-dim-generalization", exp, tmp_path / "small", size="small")
    assert agreement.failures(resummarized(run)) == []
    errors = [{q: f} for q in ("alpha", "sigma_w2", "sigma_eps2", "tau") for f in (1.1, 1 / 1.1)]
    errors += [{q: f} for q in ("alpha", "sigma_w2", "sigma_eps2") for f in (1.05, 1 / 1.05)]
    for change in errors:
        with monkeypatch.context() as patch:
            patch.setattr(high_dim, "generalization_error", _with(**change))
            assert agreement.failures(resummarized(run)), change
    for factor in (1.05, 1 / 1.05):
        with monkeypatch.context() as patch:
            patch.setattr(high_dim, "_edges", lambda a: tuple(factor * v for v in TRUE_EDGES(a)))
            assert agreement.failures(resummarized(run)), factor


def test_exact_flow_matches_gradient_descent_steps():
    config = exp.Config(n=40, n_seeds=1, sigma_w0_2=0.5, sigma_eps2=0.3)
    for alpha in (0.5, 2.0):
        x, teacher, w, eps = exp.draw_problem(config, alpha, 0)
        y = x @ teacher + eps
        lr, steps = 1e-3, 3000
        for _ in range(steps):
            w = w + lr * x.T @ (y - x @ w) / x.shape[0]
        e = exp.flow_error(*exp.draw_problem(config, alpha, 0), [steps * lr])[0]
        # discrete steps vs the flow: O(lr) relative difference
        np.testing.assert_allclose(w - teacher, e, rtol=0, atol=5e-3 * np.abs(e).max())
        # and E_g from the modes (what run_piece records) is |e|^2 + sigma_eps2
        modes, _ = exp.flow_error_modes(*exp.draw_problem(config, alpha, 0), [steps * lr])
        np.testing.assert_allclose(np.sum(modes ** 2), np.sum(e ** 2), rtol=1e-10)
