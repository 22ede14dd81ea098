"""eigenlearning-curves at the tiny size: eigenlearning's predicted NTK-regression test MSE on digits within 10% of measured over the learning curve."""
import json

import numpy as np

from experiments import eigenlearning_curves as exp
from experiments.__main__ import main


def test_tiny_learning_curve_within_ten_percent(tmp_path):
    out = tmp_path / "eig"
    assert main(["run", "eigenlearning-curves", "--size", "tiny", "--out", str(out),
                 "--no-progress"]) == 0
    record = json.loads((out / "results.json").read_text())
    agreement = record["agreement"]
    assert agreement["krr_max_rel_error"] < 0.10
    results = record["results"]
    measured = np.array(results["measured_pool"])[:, 0]
    assert np.all(np.diff(measured) < 0)                 # a learning curve: falls with n
    # random features at the optimal ridge: more is better, in k and in n (theory)
    assert agreement["rf_theory_monotone_in_k_and_n"]
    assert agreement["rf_max_rel_error_at_optimal_ridge"] < 0.2
    assert (out / "eigenlearning-curves.png").exists()


def test_eigendecomposition_reconstructs_the_pool_kernel_and_target():
    config = exp.Config.tiny()
    s = exp.setup(config)
    m = config.pool
    phi = np.sqrt(m) * s["u"]                            # orthonormal under the pool
    np.testing.assert_allclose(phi.T @ phi / m, np.eye(m), atol=1e-8)
    np.testing.assert_allclose((phi * s["lam"]) @ phi.T, s["k_pool"], atol=1e-4)
    # per-output target power sums to the per-output mean square of the targets
    np.testing.assert_allclose(s["power"].sum(), np.mean(s["y"] ** 2), rtol=1e-10)
