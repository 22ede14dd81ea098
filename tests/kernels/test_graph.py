"""`DotGeneral` and the graph layer `Aggregate` (kernels/stax/graph.py): against neural-tangents 0.6.5,
against finite networks, the ``pattern`` keyword's plumbing (networks, `kernels.batch`) and errors.

Reference values: tests/data/nt_graph_reference.npz (tests/data/nt_graph_reference.README.md),
compared as the oracle is: max |ours - ref| / max |ref| < 1e-6 in float64.
"""
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, monte_carlo_kernel_fn, stax
from tests.kernels.spec import network_from_spec

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_graph_reference.npz"


def edges_to_dense(vertices):
    """The reference files' ``to_dense: "edges"``: edges ``(N, E, 2)`` -> counts ``(N, V, V)``, an edge
    with a negative end dropped (written here from that description)."""
    def to_dense(edges):
        n = edges.shape[0]
        valid = jnp.all(edges >= 0, axis=-1)
        one_hot = lambda i: jax.nn.one_hot(i, vertices) * valid[..., None]  # (N, E, V), -1 -> zeros
        return jnp.einsum("nes,ner->nsr", one_hot(edges[..., 0]), one_hot(edges[..., 1]))
    return to_dense


def network(spec):
    """A reference spec as a widekit network: DotGeneral's constants as arrays, Aggregate's ``to_dense``."""
    layers = []
    for name, kwargs in json.loads(spec) if isinstance(spec, str) else spec:
        if name == "DotGeneral":
            kw = {k: (np.asarray(v, np.float64) if k in ("lhs", "rhs") else v) for k, v in kwargs.items()}
            if "dimension_numbers" in kw:
                kw["dimension_numbers"] = tuple(tuple(tuple(a) for a in pair) for pair in kw["dimension_numbers"])
            layers.append(stax.DotGeneral(**kw))
        elif name == "Aggregate":
            kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items() if k != "vertices"}
            if kw.get("to_dense") == "edges":
                kw["to_dense"] = edges_to_dense(kwargs["vertices"])
            layers.append(stax.Aggregate(**kw))
        else:
            layers.append(network_from_spec([[name, kwargs]]))
    return stax.serial(*layers)


def relative_error(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


# One DotGeneral and one Aggregate case in the default suite (each compiles two kernels); the rest are slow.
DEFAULT_CASES = {"grid_dotgeneral_rhs_batch_dims_spatial_output", "graph_gcn_dense_gap"}


def _cases():
    with np.load(DATA) as data:
        names = json.loads(str(data["_cases"]))
    return [pytest.param(c, marks=() if c in DEFAULT_CASES else pytest.mark.slow) for c in names]


@pytest.mark.parametrize("case", _cases())
def test_matches_neural_tangents(case):
    with np.load(DATA) as data:
        d = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(case + "/")}
    _, _, kernel_fn = network(str(d["spec"]))
    kw12 = kw11 = {}
    if "pattern1" in d:
        kw12, kw11 = dict(pattern=(d["pattern1"], d["pattern2"])), dict(pattern=(d["pattern1"], d["pattern1"]))
    k12 = kernel_fn(d["x1"], d["x2"], ("nngp", "ntk"), **kw12)
    k11 = kernel_fn(d["x1"], None, ("nngp", "ntk"), **kw11)
    for key, ours in (("nngp", k12.nngp), ("ntk", k12.ntk), ("nngp_11", k11.nngp), ("ntk_11", k11.ntk)):
        assert ours.shape == d[key].shape, (key, ours.shape, d[key].shape)
        assert relative_error(ours, d[key]) < 1e-6, (key, relative_error(ours, d[key]))


# ----------------------------------------------------------------------------- finite networks

# Readouts of READOUT channels: the NNGP is averaged over them (one channel's was 20% off at 48 samples).
WIDTH, READOUT, SAMPLES = 256, 32, 48


def graphs(n=4, v=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, v, c))
    dense = rng.uniform(0.2, 1.0, (n, v, v)) * (rng.uniform(size=(n, v, v)) < 0.5)
    edges = rng.integers(0, v, (n, 10, 2))
    edges[:, 8:, 1] = -1  # padding
    return x, dense, edges


def gcn(implementation="DENSE"):
    agg = stax.Aggregate(implementation=implementation)
    return stax.serial(stax.Dense(WIDTH, 1.3, 0.2), stax.Relu(), agg, stax.Dense(WIDTH, 1.2, 0.1), stax.Relu(), agg,
                       stax.GlobalAvgPool(), stax.Dense(READOUT, 1.1, 0.05))


def monte_carlo(layer, x, **apply_kwargs):
    init_fn, apply_fn, _ = layer
    with jax.enable_x64(False):
        mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), SAMPLES)
        return mc(jnp.asarray(x, jnp.float32), None, ("nngp", "ntk"), **apply_kwargs)


def agrees(closed, sampled, tolerance=0.08):
    """Largest gap relative to the kernel's scale; finite-width and sampling error at these sizes: a few %."""
    return max(relative_error(sampled[i], np.asarray(closed[i])) for i in range(2)) < tolerance


@pytest.fixture(scope="module")
def gcn_dense_samples():
    x, dense, _ = graphs()
    return x, dense, monte_carlo(gcn(), x, pattern=dense)


def test_gcn_dense_matches_finite_networks_and_a_wrong_kernel_does_not(gcn_dense_samples):
    x, dense, sampled = gcn_dense_samples
    kernel_fn = gcn()[2]
    right = kernel_fn(x, None, ("nngp", "ntk"), pattern=(dense, None))
    assert agrees(right, sampled), [relative_error(sampled[i], np.asarray(right[i])) for i in range(2)]
    # Deliberately wrong: the pattern ignored (no aggregation), and applied on one side only.
    ignored = kernel_fn(x, None, ("nngp", "ntk"))
    one_side = kernel_fn(x, x, ("nngp", "ntk"), pattern=(dense, np.broadcast_to(np.eye(6), dense.shape)))
    assert not agrees(ignored, sampled)
    assert not agrees(one_side, sampled)


@pytest.mark.slow
def test_gcn_sparse_matches_finite_networks():
    x, _, edges = graphs(seed=1)
    right = gcn("SPARSE")[2](x, None, ("nngp", "ntk"), pattern=(edges, edges))
    assert agrees(right, monte_carlo(gcn("SPARSE"), x, pattern=edges))


@pytest.mark.slow
def test_sparse_equals_dense_of_the_same_edges_in_apply_and_kernel():
    """SPARSE's edges (repeats count, negative heads dropped) against the dense adjacency built by hand."""
    x, _, edges = graphs(seed=2)
    n, v = x.shape[:2]
    adjacency = np.zeros((n, v, v))
    for i in range(n):
        for s, r in edges[i]:
            if r >= 0:
                adjacency[i, s, r] += 1
    sparse, dense = stax.Aggregate(implementation="SPARSE"), stax.Aggregate(implementation="DENSE")
    np.testing.assert_allclose(sparse[1]((), x, pattern=edges), np.einsum("nvc,nvw->nwc", x, adjacency), rtol=1e-12)
    net = lambda agg: stax.serial(stax.Dense(8), agg, stax.Relu(), stax.Flatten())[2]
    np.testing.assert_allclose(net(sparse)(x[:3], x[1:], "ntk", pattern=(edges[:3], edges[1:])),
                               net(dense)(x[:3], x[1:], "ntk", pattern=(adjacency[:3], adjacency[1:])), rtol=1e-12)


def dot_networks():
    rng = np.random.default_rng(3)
    lhs = rng.standard_normal((3, 6))
    rhs = rng.standard_normal((3, 2))
    mix = stax.serial(stax.Dense(WIDTH, 1.2, 0.1), stax.DotGeneral(lhs=lhs, dimension_numbers=(((1,), (1,)), ((), ()))),
                      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(READOUT))
    free = stax.serial(stax.Conv(WIDTH, (2, 2), padding="SAME"), stax.DotGeneral(rhs=rhs, dimension_numbers=(((2,), (0,)), ((), ()))),
                       stax.Erf(), stax.Flatten(), stax.Dense(READOUT))
    return {"lhs_mix": (mix, (4, 6, 3), lhs), "rhs_free_axis": (free, (3, 4, 3, 2), rhs)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lhs_mix", "rhs_free_axis"])
def test_dot_general_matches_finite_networks_and_a_wrong_constant_does_not(case):
    layer, shape, constant = dot_networks()[case]
    x = np.random.default_rng(4).standard_normal(shape)
    sampled = monte_carlo(layer, x)
    right = layer[2](x, None, ("nngp", "ntk"))
    # The sampled NNGP of rhs_free_axis is off by 3-8% of its scale depending on the key (5 keys measured; its
    # NTK by 0.2%); the wrong constants below are 35% and 130% off.
    tolerance = 0.12
    assert agrees(right, sampled, tolerance)
    # Deliberately wrong: the same network with the constant's sign flipped in one entry.
    flipped = constant.copy()
    flipped.flat[0] *= -1
    if case == "lhs_mix":
        wrong = stax.serial(stax.Dense(WIDTH, 1.2, 0.1), stax.DotGeneral(lhs=flipped * 1.5, dimension_numbers=(((1,), (1,)), ((), ()))),
                            stax.Relu(), stax.GlobalAvgPool(), stax.Dense(READOUT))
    else:
        wrong = stax.serial(stax.Conv(WIDTH, (2, 2), padding="SAME"), stax.DotGeneral(rhs=flipped * 1.5, dimension_numbers=(((2,), (0,)), ((), ()))),
                            stax.Erf(), stax.Flatten(), stax.Dense(READOUT))
    assert not agrees(wrong[2](x, None, ("nngp", "ntk")), sampled, tolerance)


def test_dot_general_output_layout():
    """Batch first and channels last after the constant's free axes (lax puts them elsewhere)."""
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 5))
    c = np.random.default_rng(6).standard_normal((3, 7))
    _, apply_fn, _ = stax.DotGeneral(rhs=c, dimension_numbers=(((2,), (0,)), ((), ())))
    np.testing.assert_allclose(apply_fn((), x), np.einsum("nhwc,wk->nhkc", x, c), rtol=1e-12)
    _, apply_fn, _ = stax.DotGeneral(lhs=c.T, dimension_numbers=(((1,), (2,)), ((), ())))
    np.testing.assert_allclose(apply_fn((), x), np.einsum("kw,nhwc->nkhc", c.T, x), rtol=1e-12)


# ----------------------------------------------------------------------------- the pattern keyword

def test_networks_without_aggregate_refuse_pattern_by_name():
    x, dense, _ = graphs()
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.Relu(), stax.GlobalAvgPool())
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(TypeError, match="apply_fn: unexpected keyword argument pattern"):
        apply_fn(params, x, pattern=dense)
    with pytest.raises(TypeError, match="kernel_fn: unexpected keyword argument pattern"):
        kernel_fn(x, None, "nngp", pattern=(dense, dense))


def test_pattern_reaches_aggregate_inside_combinators():
    """serial, parallel and FanOut pass ``pattern`` to the parts that aggregate, and only to those."""
    x, dense, _ = graphs()
    branch = stax.serial(stax.Dense(8), stax.Aggregate())
    init_fn, apply_fn, kernel_fn = stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Dense(8)), stax.FanInSum(),
                                               stax.Relu(), stax.GlobalAvgPool())
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    out = apply_fn(params, x, pattern=dense)
    assert out.shape == (4, 8)
    assert not np.allclose(out, apply_fn(params, x))  # pattern=None: no aggregation
    k = kernel_fn(x, None, "nngp", pattern=(dense, None))
    assert not np.allclose(k, kernel_fn(x, None, "nngp"))


def test_kernel_of_a_kernel_takes_the_graphs_of_its_examples():
    """kernel_fn(Kernel, pattern=...): a graph network applied to another network's Kernel is the whole network
    (as in neural-tangents); graphs of another batch size are refused, and so is batch() of it (not tiled)."""
    x, dense, _ = graphs(n=5)
    first = stax.serial(stax.Dense(8, 1.3, 0.2), stax.Relu())
    second = stax.serial(stax.Aggregate(), stax.Dense(8), stax.Relu(), stax.Aggregate(), stax.GlobalAvgPool())
    whole = stax.serial(first, second)[2]
    for x2, pattern in ((None, (dense, None)), (x[1:], (dense, dense[1:]))):
        k = first[2](x, x2)
        got = second[2](k, get=("nngp", "ntk"), pattern=pattern)
        want = whole(x, x2, ("nngp", "ntk"), pattern=pattern)
        np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
        np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
    assert not np.allclose(second[2](k, get="nngp", pattern=(dense, dense[::-1][:4])), want.nngp)  # graphs matter
    with pytest.raises(ValueError, match="`pattern`.*leading axis 4"):
        second[2](k, get="nngp", pattern=(dense, dense))
    with pytest.raises(ValueError, match="batch: argument `pattern`"):
        batch(second[2], 2, progress=False)(k, None, "nngp", pattern=(dense, dense[1:]))


def test_batch_slices_the_pattern_per_tile():
    x, dense, edges = graphs(n=5)
    del edges  # SPARSE tiles slice the same way (tests/kernels/test_graph.py parity cases run it unbatched)
    for implementation, pattern in (("DENSE", dense),):
        kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(8),
                                stax.Aggregate(implementation=implementation), stax.Relu(), stax.Flatten())[2]
        whole = kernel_fn(x, None, ("nngp", "ntk"), pattern=(pattern, pattern))
        tiled = batch(kernel_fn, 2, progress=False)(x, None, ("nngp", "ntk"), pattern=(pattern, pattern))
        np.testing.assert_allclose(tiled.nngp, whole.nngp, rtol=1e-12)
        np.testing.assert_allclose(tiled.ntk, whole.ntk, rtol=1e-12)
        cross = batch(kernel_fn, 2, progress=False)(x[:3], x[1:], "nngp", pattern=(pattern[:3], pattern[1:]))
        np.testing.assert_allclose(cross, whole.nngp[:3, 1:], rtol=1e-12)


# ----------------------------------------------------------------------------- errors

def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match=r"DotGeneral.*`lhs` and `rhs`"):
        stax.DotGeneral(lhs=1., rhs=2.)
    with pytest.raises(TypeError, match=r"DotGeneral.*`dimension_numbers`"):
        stax.DotGeneral(rhs=np.ones(3), dimension_numbers=((1, 0), ((), ())))
    with pytest.raises(TypeError, match=r"DotGeneral.*`batch_axis`"):  # other layouts: test_graph_layouts.py
        stax.DotGeneral(rhs=2., batch_axis=1.5)
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"DotGeneral.*`dimension_numbers`.*channel axis"):
        stax.DotGeneral(rhs=np.ones(4), dimension_numbers=(((2,), (0,)), ((), ())))[0](None, x.shape)
    with pytest.raises(NotImplementedError, match=r"DotGeneral.*`dimension_numbers`.*batch axis"):
        stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((0,), (0,)), ((), ())))[2](x, None, "nngp")
    with pytest.raises(ValueError, match=r"Aggregate.*`implementation`"):
        stax.Aggregate(implementation="CSR")
    with pytest.raises(ValueError, match=r"Aggregate.*`to_dense`"):
        stax.Aggregate(implementation="SPARSE", to_dense=lambda p: p)
    with pytest.raises(TypeError, match=r"Aggregate.*`aggregate_axis`"):
        stax.Aggregate(aggregate_axis=1.5)
    with pytest.raises(ValueError, match=r"Aggregate.*`aggregate_axis`"):
        stax.Aggregate(aggregate_axis=2)[1]((), x, pattern=np.ones((2, 4, 4)))
    assert stax.Aggregate(implementation=stax.AggregateImplementation.SPARSE) is not None


def test_bad_patterns_are_refused_by_name():
    x, dense, edges = graphs()
    agg = stax.serial(stax.Dense(4), stax.Aggregate())
    sparse = stax.serial(stax.Dense(4), stax.Aggregate(implementation="SPARSE"))
    with pytest.raises(ValueError, match=r"Aggregate.*`pattern`.*\(4, 6, 6\)"):
        agg[2](x, None, "nngp", pattern=(dense[:, :5, :5], None))
    with pytest.raises(ValueError, match=r"kernel_fn.*`pattern`.*leading axis 4"):
        agg[2](x, None, "nngp", pattern=(dense[:3], None))
    with pytest.raises(ValueError, match=r"kernel_fn.*`pattern`.*both given"):
        agg[2](x, x, "nngp", pattern=(dense, None))
    with pytest.raises(TypeError, match=r"kernel_fn.*`pattern`.*pair"):
        agg[2](x, None, "nngp", pattern=dense)
    with pytest.raises(ValueError, match=r"kernel_fn.*`pattern`.*different from pattern1"):
        agg[2](x, None, "nngp", pattern=(dense, dense + 1))
    with pytest.raises(NotImplementedError, match=r"`block_size`.*pattern"):
        agg[2](x, None, "nngp", pattern=(dense, None), block_size=2)
    with pytest.raises(TypeError, match=r"Aggregate.*`pattern`.*integer"):
        sparse[2](x, None, "nngp", pattern=(edges.astype(float), None))
    with pytest.raises(ValueError, match=r"Aggregate.*`pattern`.*\(N, n_edges, 1, 2\)"):
        sparse[2](x, None, "nngp", pattern=(edges[..., :1], None))
    init_fn, apply_fn, _ = agg
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(ValueError, match=r"Aggregate.*`pattern`"):
        apply_fn(params, x, pattern=dense[:, :, :5])


def _graph_network_and_data():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu(), stax.Aggregate(), stax.GlobalAvgPool(),
                                       stax.Dense(1))
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    x1, x2 = jax.random.normal(keys[0], (3, 3, 2)), jax.random.normal(keys[1], (2, 3, 2))
    p1, p2 = jax.random.normal(keys[2], (3, 3, 3)), jax.random.normal(keys[3], (2, 3, 3))
    return init_fn, apply_fn, keys[4], x1, x2, p1, p2


def test_chunked_empirical_kernels_slice_graphs_with_their_examples():
    """``batch_size`` chunks the examples, and each example's graph (``pattern``, batch first) goes with
    it, as neural-tangents' ``batch`` slices array keywords: the chunked kernels equal the whole ones,
    which depend on the graphs (a permuted graph gives another kernel)."""
    from kernels.empirical import empirical_kernel_fn
    init_fn, apply_fn, key, x1, x2, p1, p2 = _graph_network_and_data()
    _, params = init_fn(key, x1.shape)

    @functools.partial(jax.jit, static_argnums=0)
    def kernels(batch_size, p1, p2):
        return empirical_kernel_fn(apply_fn, batch_size=batch_size)(x1, x2, ("nngp", "ntk"), params,
                                                                    pattern=(p1, p2))
    whole = kernels(None, p1, p2)
    for a, b in zip(kernels(2, p1, p2), whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernels(None, p1[::-1], p2).ntk, whole.ntk, rtol=1e-3)


@pytest.mark.slow
def test_chunked_monte_carlo_kernels_slice_graphs_with_their_examples():
    """neural-tangents' predict test: a Monte Carlo kernel with ``batch_size`` and graphs."""
    init_fn, apply_fn, key, x1, x2, p1, p2 = _graph_network_and_data()
    mc = [monte_carlo_kernel_fn(init_fn, apply_fn, key, 2, batch_size=b)(x1, x2, "ntk", pattern=(p1, p2))
          for b in (0, 2)]
    np.testing.assert_allclose(mc[1], mc[0], rtol=1e-5, atol=1e-6)
