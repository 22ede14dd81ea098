"""Masked inputs (``mask_constant``) through `DotGeneral` and the graph layer `Aggregate`
(kernels/stax/graph.py): neural-tangents 0.6.5's kernels and outputs, graphs with padded nodes
against the same networks on the graphs without them, and deliberately wrong mask rules
rejected by the same checks.

Reference values: tests/data/nt_masking3_reference.npz (tests/data/nt_masking3_reference.README.md),
compared as the oracle is: max |ours - ref| / max |ref| < 1e-6 in float64.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, stax
from kernels.stax import graph, masking
from tests.kernels.test_graph import network
from tests.kernels.test_masking import PAD, relative_error

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "nt_masking3_reference.npz")


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA)


def _patterns(reference, name):
    """``(kernel_fn keywords for x1 and x2, for x1 alone, apply_fn keywords)`` of a case."""
    if f"{name}/pattern1" not in reference:
        return {}, {}, {}
    p1, p2 = reference[f"{name}/pattern1"], reference[f"{name}/pattern2"]
    return dict(pattern=(p1, p2)), dict(pattern=(p1, p1)), dict(pattern=p1)


def _kernels(reference, name, pair_only=False, get=("nngp", "ntk")):
    """Our ``{key: array}`` for the reference's ``get`` (and ``*_11`` unless ``pair_only``)."""
    _, _, kernel_fn = network(str(reference[f"{name}/spec"]))
    kw12, kw11, _ = _patterns(reference, name)
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    out = dict(zip(get, kernel_fn(x1, x2, get, mask_constant=PAD, **kw12)))
    if not pair_only:
        out.update(zip((g + "_11" for g in get), kernel_fn(x1, None, get, mask_constant=PAD, **kw11)))
    return out


# The default suite checks one Aggregate case (dense adjacency from an edge list, padded nodes' arcs
# included) and one DotGeneral case (zero weights deciding which outputs are masked), x1 against x2
# (each compiles two kernels, ~2.5 s); the wrong-rule tests below read two more cases; the rest are slow.
DEFAULT_CASES = ("graph_to_dense_edges_gap", "seq_dotgeneral_rhs_zero_weights_dense")
CASES = [name if name in DEFAULT_CASES else pytest.param(name, marks=pytest.mark.slow)
         for name in json.loads(str(np.load(DATA)["_cases"]))]


@pytest.mark.parametrize("name", CASES)
def test_kernels_match_neural_tangents(reference, name):
    for key, ours in _kernels(reference, name, pair_only=name in DEFAULT_CASES).items():
        assert ours.shape == reference[f"{name}/{key}"].shape, key
        assert relative_error(ours, reference[f"{name}/{key}"]) < 1e-6, key


def jitted(apply_fn):
    """``apply_fn`` compiled whole (SPARSE aggregation run op by op took ~5 s here, compiled ~1 s)."""
    return jax.jit(apply_fn, static_argnames=("mask_constant",))


def _params(reference, name, spec):
    """neural-tangents' parameters in `network`'s layout: a layer other than DotGeneral and Aggregate is
    a serial of one there."""
    params = []
    for i, (layer, _) in enumerate(spec):
        arrays = tuple(reference[f"{name}/param/{i}/{j}"] for j in range(2) if f"{name}/param/{i}/{j}" in reference)
        params.append(arrays if layer in ("DotGeneral", "Aggregate") else (arrays,))
    return tuple(params)


APPLY_CASES = ("graph_gcn_dense_gap", "graph_gcn_sparse_gap", "seq_dotgeneral_rhs_zero_weights_dense",
               "grid_dotgeneral_lhs_vector_gap", "grid_aggregate_dense_axis2_gap")


@pytest.mark.parametrize("name", [name if name in APPLY_CASES[1:3] else pytest.param(name, marks=pytest.mark.slow)
                                  for name in APPLY_CASES])
def test_apply_fn_matches_neural_tangents_on_its_parameters(reference, name):
    spec = json.loads(str(reference[f"{name}/spec"]))
    apply_fn = jitted(network(spec).apply_fn)
    out = apply_fn(_params(reference, name, spec), reference[f"{name}/x1"], mask_constant=PAD,
                   **_patterns(reference, name)[2])
    assert relative_error(out, reference[f"{name}/apply"]) < 1e-10


# ----------------------------------------------------------------- deliberately wrong mask rules

def test_dot_general_masking_outputs_that_read_any_masked_input_fails_the_reference(reference, monkeypatch):
    """The wrong rule: an output masked when it reads any masked input (neural-tangents: when it
    reads no unmasked one with a nonzero weight). Far from the reference."""
    name = "seq_dotgeneral_rhs_zero_weights_dense"

    def any_masked(reach):
        return lambda mask: reach(mask[..., None].astype(jnp.float32))[..., 0] > 0.5
    monkeypatch.setattr(graph, "unreached", any_masked)
    assert relative_error(_kernels(reference, name, True, ("nngp",))["nngp"], reference[f"{name}/nngp"]) > 1e-2


def test_aggregate_unmasking_its_outputs_fails_the_reference(reference, monkeypatch):
    """The wrong rule: padded nodes become real nodes after aggregation (their outputs not masked, so
    the pooling averages over them too). Far from the reference."""
    name = "graph_to_dense_edges_gap"
    monkeypatch.setattr(graph, "AGGREGATE_MASKING", masking.Masking(jnp.zeros_like))
    assert relative_error(_kernels(reference, name, True, ("nngp",))["nngp"], reference[f"{name}/nngp"]) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seq_dotgeneral_rhs_zero_weights_dense",
                                  "seq_dotgeneral_first_layer_partial_entries"])
def test_dot_general_masks_depend_on_the_constant_being_exactly_zero(reference, name):
    """The constant's zeros replaced by 1e-300 (the same map to float64 accuracy, but outputs that read
    only masked inputs through them become unmasked): far from the reference, as the rule says."""
    spec = json.loads(str(reference[f"{name}/spec"]))
    for layer, kwargs in spec:
        if layer == "DotGeneral":
            kwargs["rhs"] = np.where(np.asarray(kwargs["rhs"]) == 0, 1e-300, kwargs["rhs"]).tolist()
    nngp = network(spec).kernel_fn(reference[f"{name}/x1"], reference[f"{name}/x2"], "nngp", mask_constant=PAD)
    assert relative_error(nngp, reference[f"{name}/nngp"]) > 1e-2


@pytest.mark.slow
def test_the_mask_ignored_fails_the_reference(reference):
    """Masked entries zeroed and then taken as data (no mask) through both layers: far from the reference."""
    for name in ("graph_gcn_dense_gap", "grid_dotgeneral_lhs_vector_gap"):
        _, _, kernel_fn = network(str(reference[f"{name}/spec"]))
        x1, x2 = (np.where(reference[f"{name}/{x}"] == PAD, 0., reference[f"{name}/{x}"]) for x in ("x1", "x2"))
        assert relative_error(kernel_fn(x1, x2, "nngp", **_patterns(reference, name)[0]),
                              reference[f"{name}/nngp"]) > 1e-2, name


# ----------------------------------------------------------------- padded graphs: the graphs without padding

LENGTHS = (4, 6, 2, 4)
VERTICES = 6


def padded_graphs(seed):
    """Graphs of ``LENGTHS`` nodes padded to `VERTICES` (node features ``PAD``), a dense weighted
    adjacency and an edge list over all `VERTICES` nodes (arcs to and from padded nodes included, a
    few padding arcs with head -1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(LENGTHS), VERTICES, 3))
    for n, ell in enumerate(LENGTHS):
        x[n, ell:] = PAD
    shape = (len(LENGTHS), VERTICES, VERTICES)
    dense = rng.uniform(0.2, 1.0, shape) * (rng.uniform(size=shape) < 0.6)
    edges = rng.integers(0, VERTICES, (len(LENGTHS), 14, 2))
    edges[:, 12:, 1] = -1
    return x, dense, edges


def without_padding(pattern, examples, ell, implementation):
    """The graphs ``examples`` (a list) of ``pattern`` restricted to their first ``ell`` nodes."""
    if implementation == "DENSE":
        return pattern[examples, :ell, :ell]
    edges = pattern[examples].copy()
    edges[np.any(edges >= ell, axis=-1), 1] = -1  # an arc touching a padded node: padding
    edges[edges[..., 1] < 0, 0] = 0
    return edges


def gcn(implementation):
    agg = stax.Aggregate(implementation=implementation)
    return stax.serial(stax.Dense(16, 1.3, 0.2), stax.Relu(), agg, stax.Dense(16, 1.2, 0.3), stax.Erf(), agg,
                       stax.GlobalAvgPool(), stax.Dense(2, 1.1, 0.05))


@pytest.mark.parametrize("implementation", [pytest.param("DENSE", marks=pytest.mark.slow), "SPARSE"])
def test_finite_gcn_on_padded_graphs_equals_it_on_the_graphs_without_padding(implementation):
    """A padded node sends nothing and stays masked (its outputs leave the average pooling), so the
    padded batch's outputs are each graph's own, run alone on its unpadded nodes."""
    x, dense, edges = padded_graphs(1)
    pattern = dense if implementation == "DENSE" else edges
    net = gcn(implementation)
    _, params = net.init_fn(jax.random.PRNGKey(2), x.shape)
    apply_fn = jitted(net.apply_fn)
    padded = apply_fn(params, x, mask_constant=PAD, pattern=pattern)
    alone = np.zeros_like(padded)
    for ell in set(LENGTHS):  # graphs of one size together
        same = [n for n, length in enumerate(LENGTHS) if length == ell]
        alone[same] = apply_fn(params, x[same, :ell], pattern=without_padding(pattern, same, ell, implementation))
    np.testing.assert_allclose(padded, alone, rtol=1e-10, atol=1e-12)
    ignored = apply_fn(params, np.where(x == PAD, 0., x), pattern=pattern)  # the mask ignored
    assert np.max(np.abs(ignored - alone)) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["DENSE", "SPARSE"])
def test_kernel_of_padded_graphs_equals_that_of_the_graphs_without_padding(implementation):
    """Graphs 0 and 3 (both 4 nodes) against each other, every graph with itself."""
    x, dense, edges = padded_graphs(3)
    pattern = dense if implementation == "DENSE" else edges
    kernel_fn = gcn(implementation).kernel_fn
    k = kernel_fn(x, None, ("nngp", "ntk"), mask_constant=PAD, pattern=(pattern, pattern))
    alone = [without_padding(pattern, [n], ell, implementation) for n, ell in enumerate(LENGTHS)]
    pair = kernel_fn(x[[0]][:, :4], x[[3]][:, :4], ("nngp", "ntk"), pattern=(alone[0], alone[3]))
    for field in ("nngp", "ntk"):
        assert abs(getattr(k, field)[0, 3] - getattr(pair, field)[0, 0]) < 1e-12 * abs(getattr(pair, field)[0, 0])
        for n, ell in enumerate(LENGTHS):
            own = getattr(kernel_fn(x[n:n + 1, :ell], None, field, pattern=(alone[n], alone[n])), "item")()
            assert abs(getattr(k, field)[n, n] - own) < 1e-12 * abs(own)
    ignored = kernel_fn(np.where(x == PAD, 0., x), None, "nngp", pattern=(pattern, pattern))
    assert abs(ignored[2, 2] - k.nngp[2, 2]) > 1e-2 * abs(k.nngp[2, 2])


def test_finite_dot_general_on_padded_sequences_equals_it_on_truncated_ones():
    """A weighted sum over positions (rhs contracting them) of a padded sequence is that of the
    truncated sequence with the constant's first weights; an example whose unmasked positions all
    have weight zero is masked (neural-tangents' rule), its outputs zero after the Dense with a bias."""
    x, _, _ = padded_graphs(5)
    weights = np.array([0.7, -1.2, 0.4, 1.5, -0.3, 0.9])
    layers = lambda w: (stax.Dense(16, 1.3, 0.2), stax.Relu(),
                        stax.DotGeneral(rhs=w, dimension_numbers=(((1,), (0,)), ((), ()))), stax.Dense(2, 1.1, 0.5))
    net = stax.serial(*layers(weights))
    _, params = net.init_fn(jax.random.PRNGKey(6), x.shape)
    padded = jitted(net.apply_fn)(params, x, mask_constant=PAD)
    alone = np.concatenate([jitted(stax.serial(*layers(weights[:ell])).apply_fn)(params, x[n:n + 1, :ell])
                            for n, ell in enumerate(LENGTHS)])
    np.testing.assert_allclose(padded, alone, rtol=1e-10, atol=1e-12)
    zero_first = np.where(np.arange(VERTICES) < 2, 0., weights)  # example 2 (2 nodes) reads nothing unmasked
    out = np.asarray(jitted(stax.serial(*layers(zero_first)).apply_fn)(params, x, mask_constant=PAD))
    assert np.all(out[2] == 0) and np.all(np.abs(out[[0, 1, 3]]) > 0)


@pytest.mark.slow
def test_kernels_batch_tiles_masked_graphs(reference):
    """`kernels.batch` slices inputs, masks and patterns alike."""
    name = "graph_gcn_sparse_gap"
    _, _, kernel_fn = network(str(reference[f"{name}/spec"]))
    kw12, kw11, _ = _patterns(reference, name)
    tiled = batch(kernel_fn, batch_size=2, progress=False)
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    assert relative_error(tiled(x1, x2, "nngp", mask_constant=PAD, **kw12), reference[f"{name}/nngp"]) < 1e-6
    assert relative_error(tiled(x1, None, "ntk", mask_constant=PAD, **kw11), reference[f"{name}/ntk_11"]) < 1e-6
