"""The agreement criteria: their thresholds against independent computations, and that each
rejects what it should (a shifted mean, a wide interval, a malformed entry)."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments import agreement


def test_sidak_threshold_is_the_quantile_of_the_largest_of_n_normals():
    # P(max_i |Z_i| <= c) = (2 Phi(c) - 1)^n = 1 - level, solved independently by bisection
    for n, level in [(1, 0.05), (49, 0.01), (1000, 0.01)]:
        c = agreement.sidak_threshold(n, level)
        assert (2 * stats.norm.cdf(c) - 1) ** n == pytest.approx(1 - level, rel=1e-10)
    assert agreement.sidak_threshold(1, 0.05) == pytest.approx(1.959963985, rel=1e-9)
    # with a Student-t(dof) statistic: P(max |T_i| <= c) = (1 - 2 t.sf(c, dof))^n
    c = agreement.sidak_threshold(20, 0.01, dof=7)
    assert (1 - 2 * stats.t.sf(c, 7)) ** 20 == pytest.approx(0.99, rel=1e-10)
    assert c > agreement.sidak_threshold(20, 0.01)


def test_max_z_passes_noise_at_its_level_and_rejects_a_ten_percent_shift():
    rng = np.random.default_rng(0)
    theory = np.linspace(1.0, 2.0, 50)
    se = 0.01 * np.ones(50)
    passes = [agreement.max_z("k", theory + se * rng.standard_normal(50), theory, se)["passed"]
              for _ in range(400)]
    assert 0.97 <= np.mean(passes) <= 1.0  # family level 0.01
    shifted = 1.1 * theory + se * rng.standard_normal(50)
    assert not agreement.max_z("k", shifted, theory, se)["passed"]
    # a resolution bound refuses a comparison too noisy to see 10%
    coarse = agreement.max_z("k", theory, theory, 0.2 * theory, max_relative_se=0.03)
    assert coarse["value"] == 0.0 and not coarse["passed"]


def test_chi_squared_per_dof_against_scipy():
    measured, theory, se = np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.5, 3.0]), 0.5
    item = agreement.chi_squared("c", measured, theory, se)
    assert item["value"] == pytest.approx((0 + 1 + 1) / 3)
    assert item["passed"] == (2 <= stats.chi2.ppf(0.99, 3))


def test_z_score_interval_and_uncertainty_bound():
    item = agreement.z_score("m", 1.02, 1.0, 0.01)
    assert item["interval"] == pytest.approx([1.02 - 1.96 * 0.01, 1.02 + 1.96 * 0.01], abs=1e-4)
    assert item["passed"]  # |z| = 2 < 2.576 at level 0.01
    assert not agreement.z_score("m", 1.04, 1.0, 0.01)["passed"]
    assert not agreement.z_score("m", 1.0, 1.0, 0.5, max_uncertainty=0.1)["passed"]


def test_slope_needs_the_theory_inside_a_narrow_enough_interval():
    rng = np.random.default_rng(1)
    widths = np.array([64, 128, 256, 512, 1024])
    samples = widths ** -0.5 * np.exp(0.05 * rng.standard_normal((32, 5)))
    good = agreement.slope("s", widths, samples, -0.5, 0.1)
    assert good["passed"] and good["interval"][0] <= -0.5 <= good["interval"][1]
    assert good["value"] == pytest.approx(agreement.log_log_slope(widths, samples.mean(0)))
    assert not agreement.slope("s", widths, samples, -0.6, 0.1)["passed"]  # outside the interval
    noisy = widths ** -0.5 * np.exp(1.0 * rng.standard_normal((4, 5)))
    wide = agreement.slope("s", widths, noisy, -0.5, 0.1)
    assert (wide["interval"][1] - wide["interval"][0]) / 2 > 0.1 and not wide["passed"]


def test_relative_and_absolute():
    assert agreement.relative("r", 1.05, 1.0, 0.1)["passed"]
    assert not agreement.relative("r", 1.15, 1.0, 0.1)["passed"]
    assert not agreement.relative("r", math.nan, 1.0, 0.1)["passed"]
    assert not agreement.absolute("a", 0.2, 0.1)["passed"]


@pytest.mark.parametrize("bad, match", [
    ({"name": "x"}, "a list"),
    ([{"name": "x"}], "exactly the keys"),
    ([{"name": "x", "value": 1, "theory": None, "uncertainty": None, "interval": None,
       "criterion": "c", "passed": True}], "not a float"),
    ([{"name": "x", "value": 1.0, "theory": None, "uncertainty": None, "interval": [2.0, 1.0],
       "criterion": "c", "passed": True}], "interval"),
    ([{"name": "x", "value": math.nan, "theory": None, "uncertainty": None, "interval": None,
       "criterion": "c", "passed": True}], "non-finite"),
])
def test_check_refuses_malformed_entries(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        agreement.check(bad)


def test_check_refuses_repeated_names_and_table_marks_failures():
    one = agreement.relative("same", 1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="unique"):
        agreement.check([one, one])
    lines = agreement.table([one, agreement.relative("off", 2.0, 1.0, 0.1)])
    assert lines[1].startswith("ok") and lines[2].startswith("FAIL") and "off" in lines[2]
