"""Access to the neural-tangents 0.6.5 oracle (tests/data/nt065_reference.npz) for theory tests."""
import json
import pathlib

import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "nt065_reference.npz"
PREDICTION_CASES = ("mlp_relu_ntk", "mlp_erf_standard", "cnn2d_same_globalavgpool")


def load():
    return np.load(PATH)


def case(data, name):
    """{key: array} of one case, keys without the "NAME/" prefix; spec parsed from JSON."""
    prefix = name + "/"
    out = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    out["spec"] = json.loads(str(out["spec"]))
    return out


def relative_error(ours, ref):
    """max |ours - ref| / max |ref|, the oracle's agreement measure."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def dense_hyperparameters(spec):
    """(depth, W_stds, b_stds, activation) of a Dense/activation MLP spec."""
    dense = [kw for layer, kw in spec if layer == "Dense"]
    acts = {layer.lower() for layer, _ in spec if layer != "Dense"}
    assert len(acts) == 1, spec
    return len(dense) - 1, [d.get("W_std", 1.0) for d in dense], [d.get("b_std", 0.0) for d in dense], acts.pop()


def network_from_spec_or_skip():
    """`tests/kernels/spec.py: network_from_spec`, or skip while kernels.stax is not there yet."""
    pytest.importorskip("kernels.stax")
    spec_module = pytest.importorskip("tests.kernels.spec")
    if not hasattr(spec_module, "network_from_spec"):
        pytest.skip("tests/kernels/spec.py has no network_from_spec yet")
    return spec_module.network_from_spec
