"""The test-local closed-form MLP kernel agrees with the neural-tangents oracle."""
import pytest

from tests.theory import oracle
from tests.theory.closed_form_mlp import mlp_kernels


@pytest.mark.parametrize("name", ["mlp_relu_ntk", "mlp_relu_deep_critical", "mlp_erf_ntk"])
def test_closed_form_mlp_matches_oracle(name):
    data = oracle.case(oracle.load(), name)
    depth, W, b, act = oracle.dense_hyperparameters(data["spec"])
    k12 = mlp_kernels(data["x1"], data["x2"], depth, W, b, act)
    k11 = mlp_kernels(data["x1"], None, depth, W, b, act)
    for ours, key in [(k12.nngp, "nngp"), (k12.ntk, "ntk"), (k11.nngp, "nngp_11"), (k11.ntk, "ntk_11")]:
        assert oracle.relative_error(ours, data[key]) < 1e-7, key
