"""`DotGeneral` and `Aggregate` (kernels/stax/graph.py) in layouts other than batch first, channels last.

Truth, each independent of the code under test:
* neural-tangents 0.6.5's kernels, `Kernel` layout fields and ``apply_fn`` outputs
  (tests/data/nt_graph_layouts_reference.npz, written by
  experiments/benchmarks/generate_reference_graph_layouts.py), compared as the oracle is:
  max |ours - ref| / max |ref| < 1e-6 in float64;
* the same network written batch first and channels last (twins written out by hand below), on
  transposed inputs, with the pattern's axes (or SPARSE coordinates) permuted where the
  transposition reorders the aggregated axes: equal to 1e-12;
* and wrong readings fail: the pattern's axes taken in ``aggregate_axis``'s given order instead of
  the sorted one, ``dimension_numbers`` counted batch first and channels last, a pattern not
  permuted with its twin's inputs.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

from kernels import stax
from tests.kernels.test_graph import network, relative_error

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_graph_layouts_reference.npz"


@pytest.fixture(scope="module")
def data():
    with np.load(DATA) as d:
        return {k: d[k] for k in d.files}


def _names(key):
    with np.load(DATA) as d:
        return json.loads(str(d[key]))


def _case(data, case):
    return {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(case + "/")}


def _kernels(spec, x1, x2, pattern1=None, pattern2=None):
    """``kernel_fn(x1, x2)`` and ``kernel_fn(x1, None)`` of ``spec``: ``{key: array}`` and the first `Kernel`."""
    _, _, kernel_fn = network(spec)
    kw12 = kw11 = {}
    if pattern1 is not None:
        kw12, kw11 = dict(pattern=(pattern1, pattern2)), dict(pattern=(pattern1, pattern1))
    k12, k11 = kernel_fn(x1, x2, **kw12), kernel_fn(x1, None, **kw11)
    return {"nngp": k12.nngp, "ntk": k12.ntk, "nngp_11": k11.nngp, "ntk_11": k11.ntk}, k12


def _worst(ours, d):
    """The largest relative gap to the reference over the four kernels (shapes must match)."""
    for key, array in ours.items():
        assert np.shape(array) == d[key].shape, (key, np.shape(array), d[key].shape)
    return max(relative_error(array, d[key]) for key, array in ours.items())


# One DotGeneral and one Aggregate network in the default suite (about 1.5 s of CPU each); the rest slow.
DEFAULT_CASES = {"dg_nchw_rhs_free_axis_gap", "agg_nhcw_dense_unsorted_axes_flatten"}


def _params(key, default):
    return [pytest.param(c, marks=() if c in default else pytest.mark.slow) for c in _names(key)]


@pytest.mark.parametrize("case", _params("_cases", DEFAULT_CASES))
def test_kernels_match_neural_tangents(data, case):
    d = _case(data, case)
    ours, k = _kernels(str(d["spec"]), d["x1"], d["x2"], d.get("pattern1"), d.get("pattern2"))
    assert _worst(ours, d) < 1e-6, _worst(ours, d)
    # Where these networks' outputs keep their batch and channel axes, as neural-tangents reports them.
    assert (k.batch_axis, k.channel_axis) == (int(d["batch_axis"]), int(d["channel_axis"]))
    assert tuple(k.shape1) == tuple(d["shape1"])


def _respelled(spec, layer, **changes):
    """``spec`` (JSON) with the first ``layer``'s keyword arguments changed."""
    items = json.loads(spec)
    i = next(i for i, (name, _) in enumerate(items) if name == layer)
    items[i][1].update(changes)
    return items


def test_wrong_readings_of_the_layout_fail_the_reference(data):
    """The pattern's aggregated axes taken in ``aggregate_axis``'s given order (3, 1), not sorted (neural-tangents
    sorts them), and ``dimension_numbers`` counted batch first, channels last (axis 2 is W there, H in NCHW)."""
    d = _case(data, "agg_nhcw_dense_unsorted_axes_flatten")
    swapped = lambda p: np.transpose(p, (0, 2, 1, 4, 3))  # (N, H, W, H, W) read as (N, W, H, W, H)
    ours, _ = _kernels(str(d["spec"]), d["x1"], d["x2"], swapped(d["pattern1"]), swapped(d["pattern2"]))
    assert _worst(ours, d) > 1e-2
    d = _case(data, "dg_nchw_rhs_free_axis_gap")
    wrong = _respelled(str(d["spec"]), "DotGeneral", dimension_numbers=[[[2], [0]], [[], []]])
    assert _worst(_kernels(wrong, d["x1"], d["x2"])[0], d) > 1e-2


# ----------------------------------------------------------------------------- finite layers

# lax.dot_general puts a spatial batch dimension first, before the batch axis: neural-tangents returns that
# order (batch axis 1, channels 3), widekit keeps the declared layout (batch 0, channels 2).
DISPLACED = {"f_dg_nhcw_rhs_batch_dims"}
DEFAULT_FINITE = {"f_dg_nhcw_rhs_batch_dims", "f_agg_nhcw_dense_two_axes", "f_agg_chwn_sparse_two_axes"}


def _declared(spec, rank):
    """The single layer's declared batch and channel axes, as axes of outputs of ``rank``."""
    (_, kwargs), = json.loads(spec)
    return kwargs.get("batch_axis", 0) % rank, kwargs.get("channel_axis", -1) % rank


def _apply(spec, x, pattern=None):
    """``apply_fn`` of ``spec``'s network (no parameters: serial's empty ones) on ``x``, and its ``init_fn``."""
    init_fn, apply_fn, _ = network(spec)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    return apply_fn(params, x, **({} if pattern is None else dict(pattern=pattern))), init_fn


@pytest.mark.parametrize("case", _params("_finite_cases", DEFAULT_FINITE))
def test_outputs_match_neural_tangents(data, case):
    d = _case(data, case)
    out, init_fn = _apply(str(d["spec"]), d["x1"], d.get("pattern1"))
    ref = d["apply"]
    declared = _declared(str(d["spec"]), ref.ndim)
    theirs = (int(d["batch_axis"]), int(d["channel_axis"]))
    assert (theirs != declared) == (case in DISPLACED)
    ref = np.moveaxis(ref, theirs, declared)  # the same positions, in lax.dot_general's order
    assert tuple(init_fn(jax.random.PRNGKey(0), d["x1"].shape)[0]) == ref.shape
    assert out.shape == ref.shape
    assert relative_error(out, ref) < 1e-6, relative_error(out, ref)


# ----------------------------------------------------------------------------- twins batch first, channels last

def D(out_dim, W_std, b_std=None):
    return ["Dense", dict(out_dim=out_dim, W_std=W_std, b_std=b_std)]


RELU, ERF = ["Relu", {}], ["Erf", {}]
GAP, FLATTEN = ["GlobalAvgPool", {}], ["Flatten", {}]
SWAP_HW = (0, 2, 1, 4, 3)  # a dense (N, H, W, H, W) pattern as (N, W, H, W, H)


def _constant(spec):
    """The first DotGeneral's ``lhs`` or ``rhs``."""
    kw = next(kw for name, kw in json.loads(spec) if name == "DotGeneral")
    return kw.get("lhs", kw.get("rhs"))


def _dot(c, contract, batch=((), ()), side="rhs"):
    return ["DotGeneral", {side: c, "dimension_numbers": [list(map(list, contract)), list(map(list, batch))]}]


# case -> (twin spec from the case's constant, the inputs' transposition to the twin's layout, the pattern's).
KERNEL_TWINS = {
    "dg_ncl_rhs_contract_all": (lambda c: [D(32, 1.3, 0.1), RELU, _dot(c, ((1,), (0,))), D(32, 1.2, 0.1), ERF,
                                           D(1, 1.1, 0.05)], (0, 2, 1), None),
    "dg_nchw_rhs_free_axis_gap": (lambda c: [D(32, 1.3, 0.1), RELU, D(32, 1.2, 0.1), _dot(c, ((2,), (0,))), RELU, GAP,
                                             D(1, 1.1, 0.05)], (0, 2, 3, 1), None),
    "dg_lnc_lhs_mix_spatial_output": (lambda c: [D(32, 1.3, 0.1), ERF, _dot(c, ((1,), (1,)), side="lhs")],
                                      (1, 0, 2), None),
    "dg_chwn_rhs_contract_two": (lambda c: [D(32, 1.3, 0.1), RELU, _dot(c, ((1, 2), (0, 1))), D(1, 1.1, 0.05)],
                                 (3, 1, 2, 0), None),
    "agg_ncv_dense_gap": (lambda c: [D(32, 1.3, 0.2), RELU, ["Aggregate", {"aggregate_axis": 1}], D(32, 1.2, 0.1),
                                     RELU, ["DotGeneral", {"rhs": c}], ["Aggregate", {}], GAP, D(1, 1.1, 0.05)],
                          (0, 2, 1), None),
    "agg_vnc_sparse_gap": (lambda c: [D(32, 1.3, 0.2), RELU, ["Aggregate", {"implementation": "SPARSE"}],
                                      D(32, 1.2, 0.1), ERF, ["Aggregate", {"implementation": "SPARSE"}], GAP,
                                      D(1, 1.1, 0.05)], (1, 0, 2), None),
    # (N, H, C, W) -> (N, W, H, C): the aggregated axes change order, so must the pattern's.
    "agg_nhcw_dense_unsorted_axes_flatten": (lambda c: [D(32, 1.3, 0.2), RELU, D(32, 1.2, 0.1),
                                                        ["Aggregate", {"aggregate_axis": [1, 2]}], RELU, FLATTEN,
                                                        D(1, 1.1, 0.05)], (0, 3, 1, 2), SWAP_HW),
    "agg_chwn_sparse_axis_spatial_output": (lambda c: [D(32, 1.3, 0.2), RELU, ["Aggregate", {
        "aggregate_axis": 2, "implementation": "SPARSE"}]], (3, 1, 2, 0), None),
}
DEFAULT_TWINS = {"agg_nhcw_dense_unsorted_axes_flatten"}  # the finite layers' twins, all default, cover DotGeneral


def _twin_kernels(d, case, permute_pattern=True):
    make, order, pattern_order = KERNEL_TWINS[case]
    spec = make(_constant(str(d["spec"])) if "DotGeneral" in str(d["spec"]) else None)
    patterns = [d.get("pattern1"), d.get("pattern2")]
    if pattern_order is not None and permute_pattern:
        patterns = [np.transpose(p, pattern_order) for p in patterns]
    return _kernels(spec, np.transpose(d["x1"], order), np.transpose(d["x2"], order), *patterns)[0]


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in DEFAULT_TWINS else pytest.mark.slow)
                                  for c in KERNEL_TWINS])
def test_kernel_is_its_twins_on_transposed_inputs(data, case):
    d = _case(data, case)
    ours, _ = _kernels(str(d["spec"]), d["x1"], d["x2"], d.get("pattern1"), d.get("pattern2"))
    twin = _twin_kernels(d, case)
    for key in ours:
        np.testing.assert_allclose(ours[key], twin[key], rtol=1e-12, atol=1e-14 * np.abs(twin[key]).max())


@pytest.mark.slow  # the default suite has test_a_twin_with_its_coordinates_not_permuted_differs
def test_a_twin_with_its_pattern_not_permuted_differs(data):
    d = _case(data, "agg_nhcw_dense_unsorted_axes_flatten")
    ours, _ = _kernels(str(d["spec"]), d["x1"], d["x2"], d["pattern1"], d["pattern2"])
    twin = _twin_kernels(d, "agg_nhcw_dense_unsorted_axes_flatten", permute_pattern=False)
    assert min(relative_error(ours[key], np.asarray(twin[key])) for key in ours) > 1e-2


# case -> (the twin layer, the inputs' transposition, the pattern's (or the SPARSE coordinates' order),
# the twin outputs' transposition back to the case's layout).
FINITE_TWINS = {
    "f_dg_nchw_rhs_free_axis": (lambda c: _dot(c, ((2,), (0,))), (0, 2, 3, 1), None, (0, 3, 1, 2)),
    "f_dg_lnc_lhs": (lambda c: _dot(c, ((1,), (1,)), side="lhs"), (1, 0, 2), None, (1, 0, 2)),
    # twin outputs (N, W, H, C); the case's layout keeps channels at 2: (N, W, C, H).
    "f_dg_nhcw_rhs_batch_dims": (lambda c: _dot(c, ((), ()), ((2,), (0,))), (0, 1, 3, 2), None, (0, 1, 3, 2)),
    "f_agg_ncv_dense": (lambda c: ["Aggregate", {"aggregate_axis": 1}], (0, 2, 1), None, (0, 2, 1)),
    "f_agg_nhcw_dense_two_axes": (lambda c: ["Aggregate", {"aggregate_axis": [1, 2]}], (0, 3, 1, 2), SWAP_HW,
                                  (0, 2, 3, 1)),
    "f_agg_vnc_sparse": (lambda c: ["Aggregate", {"implementation": "SPARSE"}], (1, 0, 2), None, (1, 0, 2)),
    # (C, H, W, N) -> (N, W, H, C): the coordinates (H, W) become (W, H).
    "f_agg_chwn_sparse_two_axes": (lambda c: ["Aggregate", {"implementation": "SPARSE"}], (3, 2, 1, 0), "coords",
                                   (3, 2, 1, 0)),
}


def _twin_outputs(d, case, permute_pattern=True):
    make, order, pattern_order, back = FINITE_TWINS[case]
    c = _constant(str(d["spec"])) if "DotGeneral" in str(d["spec"]) else None
    p = d.get("pattern1")
    if p is not None and permute_pattern and pattern_order == "coords":
        p = p[:, :, ::-1, :]
    elif p is not None and permute_pattern and pattern_order is not None:
        p = np.transpose(p, pattern_order)
    return np.transpose(_apply([make(c)], np.transpose(d["x1"], order), p)[0], back)


@pytest.mark.parametrize("case", list(FINITE_TWINS))
def test_outputs_are_the_twins_on_transposed_inputs(data, case):
    d = _case(data, case)
    out, _ = _apply(str(d["spec"]), d["x1"], d.get("pattern1"))
    np.testing.assert_allclose(out, _twin_outputs(d, case), rtol=1e-12, atol=1e-14)


def test_a_twin_with_its_coordinates_not_permuted_differs(data):
    """SPARSE coordinates wrap past the end, so the unpermuted pattern runs, and gives other outputs."""
    d = _case(data, "f_agg_chwn_sparse_two_axes")
    out, _ = _apply(str(d["spec"]), d["x1"], d["pattern1"])
    assert relative_error(out, np.asarray(_twin_outputs(d, "f_agg_chwn_sparse_two_axes", False))) > 1e-2


# ----------------------------------------------------------------------------- refusals

def test_layouts_that_cannot_mean_the_same_are_refused_by_name():
    x = np.ones((3, 4, 2))  # (C, L, N) or (N, C, L)
    v = np.ones(4)
    with pytest.raises(NotImplementedError, match=r"DotGeneral.*`dimension_numbers` names the batch axis 1"):
        stax.DotGeneral(rhs=v, dimension_numbers=(((1,), (0,)), ((), ())), batch_axis=1, channel_axis=0)[0](
            None, (3, 4, 2))
    with pytest.raises(ValueError, match=r"DotGeneral.*`dimension_numbers`.*channel axis \(1\)"):
        stax.DotGeneral(rhs=v, dimension_numbers=(((1,), (0,)), ((), ())), channel_axis=1)[2](x, None, "nngp")
    with pytest.raises(ValueError, match=r"DotGeneral.*`dimension_numbers`.*rank 3"):
        stax.DotGeneral(rhs=v, dimension_numbers=(((3,), (0,)), ((), ())), channel_axis=1)[1]((), x)
    # (C, L, N) contracted along L: outputs of rank 2 have no axis 2; batch_axis=-1 names the same axis and works.
    with pytest.raises(ValueError, match=r"DotGeneral.*`batch_axis` is 2.*rank 2"):
        stax.DotGeneral(rhs=v, dimension_numbers=(((1,), (0,)), ((), ())), batch_axis=2, channel_axis=0)[0](
            None, x.shape)
    ok = stax.DotGeneral(rhs=v, dimension_numbers=(((1,), (0,)), ((), ())), batch_axis=-1, channel_axis=0)
    np.testing.assert_allclose(ok[1]((), np.arange(24.).reshape(3, 4, 2)),
                               np.einsum("cln,l->cn", np.arange(24.).reshape(3, 4, 2), v))
    # (N, C, L) with channel_axis=-2: after contracting L, axis -2 of the outputs is the batch axis.
    with pytest.raises(ValueError, match=r"DotGeneral.*`batch_axis` 0 and `channel_axis` -2 are one axis"):
        stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((2,), (0,)), ((), ())), channel_axis=-2)[0](
            None, x.shape)
    with pytest.raises(ValueError, match=r"Aggregate.*`aggregate_axis`.*channel axis 1"):
        stax.Aggregate(aggregate_axis=(1, 2), channel_axis=1)[1]((), x, pattern=np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match=r"Aggregate.*`aggregate_axis`.*batch axis 2"):
        stax.Aggregate(aggregate_axis=-1, batch_axis=2, channel_axis=0)[1]((), x, pattern=np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match=r"Aggregate.*`channel_axis`"):
        stax.Aggregate(channel_axis="C")


@pytest.mark.parametrize("case", _params("_masked_cases", set()))
def test_masked_inputs_are_refused_by_name_or_match_neural_tangents(data, case):
    """Masks in another layout than the canonical one are `kernels.stax.layout`'s (`with_layout`): a layout that
    takes them must give neural-tangents' kernels through these layers, one that does not refuses them by name."""
    d = _case(data, case)
    _, _, kernel_fn = network(str(d["spec"]))
    kw12 = kw11 = dict(mask_constant=float(d["mask_constant"]))
    if "pattern1" in d:
        kw12, kw11 = dict(kw12, pattern=(d["pattern1"], d["pattern2"])), dict(kw11, pattern=(d["pattern1"],) * 2)
    try:
        k12, k11 = kernel_fn(d["x1"], d["x2"], **kw12), kernel_fn(d["x1"], None, **kw11)
    except NotImplementedError as error:
        assert "mask_constant" in str(error) and "layout" in str(error), error
        return
    ours = {"nngp": k12.nngp, "ntk": k12.ntk, "nngp_11": k11.nngp, "ntk_11": k11.ntk}
    assert _worst(ours, d) < 1e-6, _worst(ours, d)
