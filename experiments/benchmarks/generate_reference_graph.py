"""Reference kernels from neural-tangents 0.6.5 for ``DotGeneral`` and the graph layer ``Aggregate``.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_graph.py

It writes ``tests/data/nt_graph_reference.npz`` (format: ``tests/data/nt_graph_reference.README.md``):
the format of ``nt_reference.npz`` (``_cases``, ``NAME/spec``, ``NAME/x1``, ``NAME/x2``, ``NAME/nngp``,
``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``) plus, for networks with an ``Aggregate``, the graphs
``NAME/pattern1``, ``NAME/pattern2`` of ``x1``'s and ``x2``'s examples, passed as
``kernel_fn(x1, x2, pattern=(pattern1, pattern2))`` and ``kernel_fn(x1, None, pattern=(pattern1, pattern1))``.
Everything is float64 from a fixed seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys
import warnings
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

act, dense = reference.act, reference.dense
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_graph_reference.npz")


def edges_to_dense(vertices):
    """The ``to_dense`` named ``"edges"`` in a spec: edges ``(N, E, 2)`` -> counts ``(N, V, V)``
    (an edge with a negative end is padding)."""
    def to_dense(edges):
        n = edges.shape[0]
        valid = jnp.all(edges >= 0, axis=-1).astype(jnp.float64)
        rows = jnp.broadcast_to(jnp.arange(n)[:, None], edges.shape[:2])
        return jnp.zeros((n, vertices, vertices)).at[rows, edges[..., 0], edges[..., 1]].add(valid)
    return to_dense


def network_from_spec(spec):
    """As ``reference.network_from_spec``; ``DotGeneral``'s ``lhs``/``rhs`` lists are arrays and
    ``Aggregate``'s ``to_dense: "edges"`` is `edges_to_dense` (with ``vertices``)."""
    layers = []
    for name, kwargs in spec:
        if name == "DotGeneral":
            kw = {k: (np.asarray(v, np.float64) if k in ("lhs", "rhs") else reference._as_tuples(v))
                  for k, v in kwargs.items()}
            layers.append(stax.DotGeneral(**kw))
        elif name == "Aggregate":
            kw = {k: reference._as_tuples(v) for k, v in kwargs.items() if k != "vertices"}
            if kw.get("to_dense") == "edges":
                kw["to_dense"] = edges_to_dense(kwargs["vertices"])
            layers.append(stax.Aggregate(**kw))
        else:
            layers.append(reference.network_from_spec([[name, kwargs]]))
    return stax.serial(*layers)


def _rng(name):
    return np.random.default_rng([reference.SEED, zlib.crc32(name.encode())])


def dense_pattern(name, n, grid, density=0.5):
    """Weighted adjacency ``(n, *grid, *grid)``: uniform weights on a random half of the arcs."""
    rng = _rng(name)
    shape = (n,) + tuple(grid) * 2
    return rng.uniform(0.2, 1.0, shape) * (rng.uniform(size=shape) < density)


def sparse_pattern(name, n, grid, edges, squeeze=False):
    """Arcs ``(n, edges, K, 2)`` (``(n, edges, 2)`` with ``squeeze``), repeats allowed; the last
    quarter of each example's arcs are padding (heads -1)."""
    rng = _rng(name)
    k = len(grid)
    coords = np.stack([rng.integers(0, g, (n, edges, 2)) for g in grid], axis=2)  # (n, E, K, 2)
    coords[:, edges - edges // 4:, :, 1] = -1
    return coords[:, :, 0, :] if squeeze else coords


def _cases():
    graphs, grid = (4, 7, 3), (3, 4, 3, 2)
    c = {}

    def add(name, spec, x1_shape, pattern=None):
        """``pattern``: ``(n, name) -> pattern`` for the case's networks with an Aggregate."""
        c[name] = (spec, x1_shape, (x1_shape[0] - 1,) + x1_shape[1:], pattern)

    h = [dense(64, 1.3, 0.2), act("Relu")]
    g = h + [dense(64, 1.1, 0.1)]  # a Gaussian field: an activation may follow the linear layer
    rng = _rng("constants")
    # DotGeneral: constants on either side, contracting or batching spatial axes, free axes added.
    add("mlp_dotgeneral_rhs_scalar", h + [["DotGeneral", {"rhs": 2.5}], dense(64, 1.1), act("Erf"), READOUT], (6, 5))
    add("seq_dotgeneral_rhs_contract", h + [["DotGeneral", {"rhs": rng.normal(size=7).tolist(),
                                                            "dimension_numbers": [[[1], [0]], [[], []]]}],
                                            dense(64, 1.2, 0.1), act("Relu"), READOUT], graphs)
    # A constant's free axes before the inputs' (lhs) or batch axes displace the batch axis in
    # lax.dot_general's output: neural-tangents then needs batch_axis=1 in every later layer
    # (widekit moves the axis back), so these cases end at the DotGeneral.
    add("seq_dotgeneral_lhs_mix_spatial_output", g + [["DotGeneral", {"lhs": rng.normal(size=(3, 7)).tolist(),
                                                                      "dimension_numbers": [[[1], [1]], [[], []]]}]],
        graphs)
    add("grid_dotgeneral_rhs_free_axis_spatial_output",
        h + [["DotGeneral", {"rhs": rng.normal(size=(3, 2)).tolist(), "dimension_numbers": [[[2], [0]], [[], []]]}]],
        grid)
    add("grid_dotgeneral_rhs_batch_dims_spatial_output",
        g + [["DotGeneral", {"rhs": rng.normal(size=4).tolist(), "dimension_numbers": [[[], []], [[1], [0]]]}]], grid)
    add("grid_dotgeneral_lhs_contract_two_spatial_output",
        g + [["DotGeneral", {"lhs": rng.normal(size=(2, 4, 3)).tolist(),
                             "dimension_numbers": [[[1, 2], [1, 2]], [[], []]]}]], grid)
    add("grid_dotgeneral_rhs_contract_w_flatten",
        g + [["DotGeneral", {"rhs": rng.normal(size=(3,)).tolist(), "dimension_numbers": [[[2], [0]], [[], []]]}],
             act("Relu"), FLATTEN, READOUT], grid)

    # Aggregate: GCN-like networks over graphs of 7 vertices, dense and sparse patterns.
    gcn = h + [["Aggregate", {}], dense(64, 1.2, 0.1), act("Relu"), ["Aggregate", {}]]
    add("graph_gcn_dense_gap", gcn + [GAP, READOUT], graphs, lambda n, name: dense_pattern(name, n, (7,)))
    add("graph_gcn_dense_flatten", gcn + [FLATTEN, READOUT], graphs, lambda n, name: dense_pattern(name, n, (7,)))
    sparse = [["Aggregate", {"implementation": "SPARSE"}]]
    add("graph_gcn_sparse_gap", h + sparse + [dense(64, 1.2, 0.1), act("Erf")] + sparse + [GAP, READOUT], graphs,
        lambda n, name: sparse_pattern(name, n, (7,), 12, squeeze=True))
    add("graph_sparse_k_axis_spatial_output", h + [["Aggregate", {"aggregate_axis": 1, "implementation": "SPARSE"}]],
        graphs, lambda n, name: sparse_pattern(name, n, (7,), 10))
    add("graph_to_dense_edges_gap", g + [["Aggregate", {"to_dense": "edges", "vertices": 7}], act("Relu"), GAP,
                                         READOUT], graphs, lambda n, name: sparse_pattern(name, n, (7,), 12, True))
    add("grid_aggregate_dense_both_axes_gap", g + [["Aggregate", {}], act("Relu"), GAP, READOUT], grid,
        lambda n, name: dense_pattern(name, n, (4, 3), 0.4))
    add("grid_aggregate_dense_axis2_spatial_output", h + [["Aggregate", {"aggregate_axis": 2}]], grid,
        lambda n, name: dense_pattern(name, n, (3,)))
    add("grid_aggregate_sparse_axes_neg_flatten",
        g + [["Aggregate", {"aggregate_axis": [-3, -2], "implementation": "SPARSE"}], act("Relu"), FLATTEN, READOUT],
        grid, lambda n, name: sparse_pattern(name, n, (4, 3), 9))
    add("grid_aggregate_sparse_axis1_gap", h + [["Aggregate", {"aggregate_axis": 1, "implementation": "SPARSE"}],
                                                dense(64), act("Relu"), GAP, READOUT], grid,
        lambda n, name: sparse_pattern(name, n, (4,), 8, True))
    add("graph_dotgeneral_then_aggregate_gap", g + [["DotGeneral", {"rhs": 0.7}], ["Aggregate", {}], act("Relu"),
                                                    GAP, READOUT], graphs, lambda n, name: dense_pattern(name, n, (7,)))
    return c


def kernel_case(name, spec, x1_shape, x2_shape, pattern):
    x1, x2 = reference._inputs(name + "/x1", x1_shape), reference._inputs(name + "/x2", x2_shape)
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2}
    kw12 = kw11 = {}
    if pattern is not None:
        p1, p2 = pattern(x1_shape[0], name + "/pattern1"), pattern(x2_shape[0], name + "/pattern2")
        record.update(pattern1=p1, pattern2=p2)
        kw12, kw11 = dict(pattern=(p1, p2)), dict(pattern=(p1, p1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init_fn, _, kernel_fn = network_from_spec(spec)
        out_shape, _ = init_fn(jax.random.PRNGKey(0), x1_shape)
        k12, k11 = kernel_fn(x1, x2, **kw12), kernel_fn(x1, None, **kw11)
    for message in sorted({" ".join(str(w.message).split()) for w in caught}):
        print(f"  {name}: neural-tangents warns: {message}")
    nngp, nngp_11 = reference._unreversed(k12, "nngp"), reference._unreversed(k11, "nngp")
    record.update(nngp=nngp, ntk=reference._full(reference._unreversed(k12, "ntk"), nngp), nngp_11=nngp_11,
                  ntk_11=reference._full(reference._unreversed(k11, "ntk"), nngp_11))
    for key in ("nngp", "ntk", "nngp_11", "ntk_11"):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"non-finite values in {key}")
    print(f"  {name}: output {tuple(out_shape)} -> nngp {nngp.shape}")
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, (spec, x1_shape, x2_shape, pattern) in _cases().items():
        data.update(kernel_case(name, spec, x1_shape, x2_shape, pattern))  # every case must run
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
