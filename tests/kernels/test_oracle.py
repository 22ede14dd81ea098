"""Closed forms against neural-tangents 0.6.5 (float64), every case of every reference file.

Agreement per array: max |ours - ref| / max |ref| < 1e-6 (the oracle README's measure).
"""
import json
import pathlib

import numpy as np
import pytest

from tests.kernels.spec import network_from_spec

DATA = pathlib.Path(__file__).parent.parent / "data"
FILES = [p for p in (DATA / "nt065_reference.npz", DATA / "nt_reference.npz") if p.exists()]


# The five costliest networks to compile (10-26 s each on CI's CPU; the default suite keeps to
# about 10 minutes), each with a cheaper case of the same layers left in the default suite:
# mlp_gelu_ntk, cnn3d_valid_globalavgpool, cnn2d_avgpool_same_strided_normalize_edges,
# cnn2d_strided_circular_globalavgpool and mlp_relu_ntk (whose recursion runs 10 layers deep in the slow one).
SLOW_CASES = {"mlp_relu_deep_critical", "mlp_gelu_deep", "cnn3d_circular_globalavgpool", "cnn2d_strided_avgpool",
              "cnn2d_circular_globalavgpool"}
# Each activation under the standard parameterization: the parameterization is a property of Dense,
# checked by default on mlp_relu_standard, cnn2d_standard_param and the mlp_standard_* networks; each
# activation's own rule by default through its "_ntk" network.
# Networks whose layers a cheaper default case already checks (10-28 s of compiling each, or duplicates):
# the quadrature (mlp_tanh_numerical; the dual itself is checked against independent quadrature in
# test_duals.py), FanInConcat on channels (its Flatten case), Myrtle-5 (its convolutions and pooling),
# 3-D convolutions (cnn3d_valid_*), default strides and stride one of pooling (their strided cases).
SLOW_CASES |= {"mlp_tanh_numerical", "cnn2d_fanin_concat_channel", "cnn2d_myrtle5", "cnn3d_same_globalavgpool",
               "cnn3d_same_flatten", "cnn3d_circular_flatten", "cnn2d_avgpool_valid_default_strides",
               "cnn2d_sumpool_valid_default_strides", "cnn2d_avgpool_valid_stride1", "cnn1d_strided_valid_globalavgpool"}
SLOW_CASES |= {f"mlp_{a}_standard" for a in ("erf", "gelu", "sin", "cos", "abrelu", "leakyrelu", "abs", "rbf",
                                               "gaussian", "monomial2", "monomial3", "polynomial", "sigmoid_like")}


def _cases():
    for path in FILES:
        data = np.load(path)
        for name in json.loads(str(data["_cases"])):
            # deg 200's quadrature takes 14 s on CI's CPU, deg 25's 10 s: with the slow checks.
            marks = pytest.mark.slow if name.endswith("_deg200") or name in SLOW_CASES else ()
            yield pytest.param(path, name, id=f"{path.stem}:{name}", marks=marks)


# Where neural-tangents is not the kernel of the network it describes, exact mathematics wins:
# its Gelu(approximate=True) kernel is the exact GELU's, while the finite network (and ours)
# uses the tanh approximation; the two differ by about 1e-4. Its deg-25 ElementwiseNumerical
# quadrature is 8e-4 from the converged kernel (tests/data/nt_reference.README.md).
TOLERANCE = {"mlp_gelu_approximate": 1e-3, "mlp_tanh_numerical": 1e-2}


def relative_error(ours, ref):
    scale = np.abs(ref).max()
    gap = np.abs(np.asarray(ours) - ref).max()
    return float(gap / scale) if scale > 0 else float(gap)


@pytest.mark.parametrize("path,case", list(_cases()))
def test_matches_neural_tangents(path, case):
    data = np.load(path)
    _, _, kernel_fn = network_from_spec(str(data[f"{case}/spec"]))
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    pair = kernel_fn(x1, x2, ("nngp", "ntk"))
    same = kernel_fn(x1, None, ("nngp", "ntk"))
    for ours, key in [(pair.nngp, "nngp"), (pair.ntk, "ntk"), (same.nngp, "nngp_11"), (same.ntk, "ntk_11")]:
        ref = data[f"{case}/{key}"]
        assert np.shape(ours) == ref.shape, key
        assert relative_error(ours, ref) < TOLERANCE.get(case, 1e-6), key
