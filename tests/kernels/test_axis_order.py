"""kernel_fn(..., neural_tangents_axis_order=True): neural-tangents 0.6.5's raw arrays, spatial axes
reversed after an odd number of weight-sharing convolutions (tests/data/nt_axis_order_reference.npz,
made by experiments/benchmarks/generate_reference_axis_order.py)."""
import json
import pathlib

import numpy as np
import pytest

from kernels.kernel import reverse_spatial
from kernels.spec import network_from_spec

DATA = np.load(pathlib.Path(__file__).parents[1] / "data" / "nt_axis_order_reference.npz")
CASES = json.loads(str(DATA["_cases"]))


def relative_error(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


# In the default suite: one, two-by-parity (three) and a transposed convolution, a 3-D network and a merge
# without a majority (about 2 s each); the rest with the slow checks.
DEFAULT = {"one_conv", "three_convs", "conv_transpose", "three_d", "branches_split"}


@pytest.mark.parametrize("name", [pytest.param(c, marks=() if c in DEFAULT else pytest.mark.slow) for c in CASES])
def test_matches_neural_tangents_raw_arrays(name):
    kernel_fn = network_from_spec(json.loads(str(DATA[f"{name}/spec"])))[2]
    x1, x2 = DATA[f"{name}/x1"], DATA[f"{name}/x2"]
    ref_nngp, ref_ntk = DATA[f"{name}/nngp"], DATA[f"{name}/ntk"]
    diagonal = ref_nngp.ndim == 4 and x1.ndim == 4  # neural-tangents kept equal positions only (ConvLocal last)
    ours = kernel_fn(x1, x2, ("nngp", "ntk"), neural_tangents_axis_order=True, diagonal_spatial=diagonal)
    assert relative_error(ours.nngp, ref_nngp) < 1e-6 and relative_error(ours.ntk, ref_ntk) < 1e-6
    default = kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=diagonal)
    if bool(DATA[f"{name}/reversed"]):
        # the default (the inputs' order) is neural-tangents' array with its position pairs reversed back,
        # and differs from the raw array: the keyword is what makes indexing code port
        assert relative_error(reverse_spatial(default.nngp, 2), ref_nngp) < 1e-6
        assert default.nngp.shape != ref_nngp.shape or relative_error(default.nngp, ref_nngp) > 1e-2
    else:
        assert relative_error(default.nngp, ref_nngp) < 1e-6


def test_a_parity_rule_that_ignores_merges_would_fail():
    """FanInSum of a one-convolution and a two-convolution branch: neural-tangents keeps the inputs'
    order (no majority of reversed branches); following the first branch's parity would reverse it."""
    kernel_fn = network_from_spec(json.loads(str(DATA["branches_split/spec"])))[2]
    x1 = DATA["branches_split/x1"]
    k = kernel_fn(x1, None, "nngp", neural_tangents_axis_order=True)
    assert k.shape == (2, 2, 3, 3, 4, 4)
    with pytest.raises(TypeError, match="neural_tangents_axis_order"):
        kernel_fn(x1, None, "nngp", neural_tangents_axis_order="yes")


def test_a_kernel_in_neural_tangents_order_continues_as_the_whole_network():
    """kernel_fn(Kernel) of a Kernel returned with neural_tangents_axis_order=True reads its reversed axes back:
    the continuation is the whole network's kernel, in neural-tangents' order again. Read as widekit's order,
    the asymmetric filters after it would see the image transposed."""
    from kernels import stax
    first = stax.Conv(2, (2, 1), padding="SAME")
    rest = stax.serial(stax.Relu(), stax.Conv(2, (3, 2), padding="SAME"), stax.Relu(), stax.Conv(2, (1, 2), padding="SAME"))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    k = first.kernel_fn(x, None, neural_tangents_axis_order=True)
    assert k.is_reversed
    got = rest.kernel_fn(k, get=("nngp", "ntk", "is_reversed"))
    want = stax.serial(first, rest).kernel_fn(x, None, ("nngp", "ntk", "is_reversed"), neural_tangents_axis_order=True)
    assert got.is_reversed == want.is_reversed
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
    # The reversed arrays taken as widekit's order: the filters slide along the wrong image axes.
    misread = np.asarray(rest.kernel_fn(k.replace(is_reversed=False), get="nngp"))
    ours = np.asarray(reverse_spatial(stax.serial(first, rest).kernel_fn(x, None, "nngp"), 2))  # misread's layout
    assert misread.shape == ours.shape and np.max(np.abs(misread - ours)) > 1e-3 * np.max(np.abs(ours))
