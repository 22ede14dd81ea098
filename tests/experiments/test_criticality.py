"""criticality at the tiny size: sampled ReLU-network kurtosis within 3 standard errors of 3 (1 + 5/n)^L for L/n <= 0.25."""
import json

import numpy as np

from experiments import criticality as exp
from experiments.__main__ import main


def test_tiny_kurtosis_within_three_standard_errors(tmp_path):
    out = tmp_path / "crit"
    assert main(["run", "criticality", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["agreement"]["kurtosis_max_abs_z_L_over_n_le_0.25"] < 3
    points = record["results"]["kurtosis"]
    assert {(p["width"], p["depth"]) for p in points} == {(8, 1), (8, 2), (16, 2), (16, 4)}
    # the finite-width correction is resolved: at L/n = 0.25 the kurtosis is far above 3
    assert all(p["kurtosis"] - 3 > 10 * p["se"] for p in points)
    flows = record["results"]["flows"]
    # ReLU at criticality keeps K and has chi = 1; off criticality chi = C_W / 2
    np.testing.assert_allclose(flows["relu C_W=2"]["var"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(flows["relu C_W=2"]["chi_perp"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(flows["relu C_W=2.2"]["chi_par"], 1.1, rtol=1e-6)
    assert (out / "criticality.png").exists()


def test_sampler_depth_zero_is_gaussian_with_the_input_kernel():
    rng = np.random.default_rng(0)
    z, g = exp.sample_networks(rng, 8, 0, 4000, 4)
    np.testing.assert_allclose(g, 2.0, rtol=1e-5)        # C_W |x|^2 / n0
    k, se = exp.kurtosis_with_se(np.mean(z ** 4, 1), np.mean(z ** 2, 1))
    assert abs(k - 3) < 4 * se
