"""Reference kernels and outputs from neural-tangents 0.6.5 for masked inputs (``mask_constant``)
through ``DotGeneral`` and the graph layer ``Aggregate``: graphs with padded nodes.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_masking3.py

It writes ``tests/data/nt_masking3_reference.npz`` (format: ``tests/data/nt_masking3_reference.README.md``),
the records of ``nt_masking_reference.npz`` (``_cases``, ``NAME/spec``, ``NAME/x1``, ``NAME/x2``,
``NAME/mask_constant``, ``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``, and for some
cases ``NAME/param/I/J`` and ``NAME/apply``) plus the graphs ``NAME/pattern1``, ``NAME/pattern2``
of the networks with an ``Aggregate``, passed as ``pattern=(pattern1, pattern2)`` to ``kernel_fn``
(``(pattern1, pattern1)`` for ``x2=None``) and ``pattern=pattern1`` to ``apply_fn``. Specs use the
language of ``nt_graph_reference.README.md`` (``DotGeneral``'s constants as lists, ``Aggregate``'s
``to_dense: "edges"``). Everything is float64 from ``generate_reference.py``'s seed.
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
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_masking3_reference.npz")
PAD = 10.

# Unpadded nodes per example of a sequence of 7 (x1 has 5 graphs, x2 has 4): one graph with no
# padding and one with every node padded in each batch, and lengths at which a constant's zero
# weights decide whether a DotGeneral output is masked.
LENGTHS = {5: (7, 2, 5, 1, 0), 4: (3, 7, 2, 0)}

# Cases whose apply_fn is compared too (their layers' parameters have widekit's layout).
APPLY_CASES = ("graph_gcn_dense_gap", "graph_gcn_sparse_gap", "grid_aggregate_dense_axis2_gap",
               "seq_dotgeneral_rhs_zero_weights_dense", "grid_dotgeneral_lhs_vector_gap")


def _rng(name):
    return np.random.default_rng([reference.SEED, zlib.crc32(name.encode())])


# --------------------------------------------------------------------------- specs -> networks

def one_hot_to_dense(vertices):
    """``to_dense: "edges"``: edges ``(N, E, 2)`` -> counts ``(N, V, V)``, edges with a negative end dropped."""
    def to_dense(edges):
        keep = jnp.all(edges >= 0, axis=-1)[..., None]
        one_hot = lambda i: jax.nn.one_hot(i, vertices) * keep
        return jnp.einsum("nes,ner->nsr", one_hot(edges[..., 0]), one_hot(edges[..., 1]))
    return to_dense


def _graph_layer(name, spec_kwargs):
    kwargs = {k: reference._as_tuples(v) for k, v in spec_kwargs.items() if k != "vertices"}
    if name == "DotGeneral":
        for side in ("lhs", "rhs"):
            if side in kwargs:
                kwargs[side] = np.asarray(kwargs[side], np.float64)
        return stax.DotGeneral(**kwargs)
    if kwargs.get("to_dense") == "edges":
        kwargs["to_dense"] = one_hot_to_dense(spec_kwargs["vertices"])
    return stax.Aggregate(**kwargs)


def build(spec):
    return stax.serial(*[_graph_layer(name, kwargs) if name in ("DotGeneral", "Aggregate")
                         else reference.network_from_spec([[name, kwargs]]) for name, kwargs in spec])


# --------------------------------------------------------------------------- inputs and graphs

def masked_inputs(name, shape, masking):
    """Inputs with masked entries set to ``PAD``: ``"lengths"`` pads positions (along axis 1) past
    `LENGTHS`; ``"partial"`` does that and masks single entries before it with probability 0.3 (partly
    masked positions); ``"pixels"`` masks whole positions with probability 0.3, none of the first
    example's and all of the last's."""
    x = reference._inputs(name, shape)
    rng = _rng(name + "/mask")
    if masking in ("lengths", "partial"):
        lengths = np.minimum(LENGTHS[shape[0]], shape[1])
        positions = np.arange(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
        mask = np.broadcast_to(positions >= lengths.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
        if masking == "partial":
            mask = mask | (rng.random(shape) < 0.3)
    else:
        pixels = rng.random(shape[:-1]) < 0.3
        pixels[0], pixels[-1] = False, True
        mask = np.broadcast_to(pixels[..., None], shape)
    return np.where(mask, PAD, x)


def dense_pattern(name, n, grid, density=0.5):
    """Weighted adjacency ``(n, *grid, *grid)``, uniform weights on a random part of all arcs (padded
    nodes' arcs included)."""
    rng = _rng(name)
    shape = (n,) + tuple(grid) * 2
    return rng.uniform(0.2, 1.0, shape) * (rng.uniform(size=shape) < density)


def sparse_pattern(name, n, grid, edges, squeeze=False):
    """Arcs ``(n, edges, K, 2)`` (``(n, edges, 2)`` with ``squeeze``) between any vertices, repeats
    allowed; the last quarter of each example's arcs have head -1 (padding) and two arcs tail -1
    (neural-tangents reads the last vertex there)."""
    rng = _rng(name)
    coords = np.stack([rng.integers(0, g, (n, edges, 2)) for g in grid], axis=2)  # (n, E, K, 2)
    coords[:, edges - edges // 4:, :, 1] = -1
    coords[:, :2, :, 0] = -1
    return coords[:, :, 0, :] if squeeze else coords


# --------------------------------------------------------------------------- cases

def _cases():
    """``name -> (spec, x1 shape, x2 shape, masking, pattern)``; ``pattern``: ``(n, name) -> graph``."""
    seq, grid = (5, 7, 3), (5, 4, 3, 2)
    h = [dense(64, 1.3, 0.2), act("Relu")]
    g = h + [dense(64, 1.1, 0.1)]
    c = {}

    def add(name, spec, shape, masking="lengths", pattern=None):
        c[name] = (spec, shape, (shape[0] - 1,) + shape[1:], masking, pattern)

    # Aggregate: GCN-like networks on graphs of 7 nodes with padded nodes, every implementation.
    gcn = lambda agg: h + [agg, dense(64, 1.2, 0.1), act("Relu"), agg]
    add("graph_gcn_dense_gap", gcn(["Aggregate", {}]) + [GAP, READOUT], seq,
        pattern=lambda n, k: dense_pattern(k, n, (7,)))
    add("graph_gcn_dense_flatten", gcn(["Aggregate", {}]) + [FLATTEN, READOUT], seq,
        pattern=lambda n, k: dense_pattern(k, n, (7,)))
    add("graph_gcn_sparse_gap", gcn(["Aggregate", {"implementation": "SPARSE"}]) + [GAP, READOUT], seq,
        pattern=lambda n, k: sparse_pattern(k, n, (7,), 12, squeeze=True))
    add("graph_sparse_k_axis_spatial_output", h + [["Aggregate", {"aggregate_axis": 1, "implementation": "SPARSE"}]],
        seq, pattern=lambda n, k: sparse_pattern(k, n, (7,), 10))
    add("graph_to_dense_edges_gap", g + [["Aggregate", {"to_dense": "edges", "vertices": 7}], act("Erf"), GAP,
                                         READOUT], seq, pattern=lambda n, k: sparse_pattern(k, n, (7,), 12, True))
    # Aggregate over some axes of a grid with masked pixels.
    add("grid_aggregate_dense_both_axes_gap", g + [["Aggregate", {}], act("Relu"), GAP, READOUT], grid, "pixels",
        lambda n, k: dense_pattern(k, n, (4, 3), 0.4))
    add("grid_aggregate_dense_axis2_gap", h + [["Aggregate", {"aggregate_axis": 2}], dense(64, 1.1, 0.2), act("Relu"),
                                               GAP, READOUT], grid, "pixels", lambda n, k: dense_pattern(k, n, (3,)))
    add("grid_aggregate_sparse_axes_neg_spatial_output",
        g + [["Aggregate", {"aggregate_axis": [-3, -2], "implementation": "SPARSE"}]], grid, "pixels",
        lambda n, k: sparse_pattern(k, n, (4, 3), 9))
    row_graphs = ["Aggregate", {"aggregate_axis": 1, "implementation": "SPARSE"}]
    add("grid_rows_aggregate_sparse_axis1_flatten", h + [row_graphs, dense(64, 1.0, 0.3), act("Relu"), FLATTEN, READOUT],
        grid, "lengths", lambda n, k: sparse_pattern(k, n, (4,), 8, True))

    # DotGeneral: outputs masked where they read no unmasked input with a nonzero weight; a Dense with
    # a bias after it tells masked outputs (zero) from unmasked ones.
    rng = _rng("constants")
    weights = rng.normal(size=7)
    weights[:2] = 0.  # examples of lengths 1 and 2 read nothing unmasked
    contract1 = [[[1], [0]], [[], []]]
    add("seq_dotgeneral_rhs_zero_weights_dense", h + [["DotGeneral", {"rhs": weights.tolist(),
                                                                      "dimension_numbers": contract1}],
                                                      dense(64, 1.2, 0.4), act("Relu"), READOUT], seq)
    add("seq_dotgeneral_first_layer_partial_entries", [["DotGeneral", {"rhs": weights.tolist(),
                                                                       "dimension_numbers": contract1}],
                                                       dense(64, 1.2, 0.4), act("Erf"), READOUT], seq, "partial")
    rows = rng.normal(size=4)
    rows[1] = 0.
    add("grid_dotgeneral_lhs_vector_gap", h + [["DotGeneral", {"lhs": rows.tolist(),
                                                               "dimension_numbers": [[[0], [1]], [[], []]]}],
                                               dense(64, 1.1, 0.3), act("Relu"), GAP, READOUT], grid, "pixels")
    plane = rng.normal(size=(4, 3)) * (rng.random((4, 3)) < 0.6)
    add("grid_dotgeneral_lhs_contract_two_dense", h + [["DotGeneral", {"lhs": plane.tolist(),
                                                                       "dimension_numbers": [[[0, 1], [1, 2]],
                                                                                             [[], []]]}],
                                                       dense(64, 1.1, 0.3), act("Erf"), READOUT], grid, "pixels")
    mix = rng.normal(size=(5, 7)) * (rng.random((5, 7)) < 0.5)
    mix[2] = 0.  # an output that reads nothing
    # lhs with free axes: neural-tangents' outputs then have their batch axis elsewhere (widekit puts
    # it first), so the case ends at the DotGeneral.
    add("seq_dotgeneral_lhs_mix_spatial_output", g + [["DotGeneral", {"lhs": mix.tolist(),
                                                                      "dimension_numbers": [[[1], [1]], [[], []]]}]],
        seq)
    add("seq_dotgeneral_zero_scalar_dense_gap", h + [["DotGeneral", {"rhs": 0.}], dense(64, 1.0, 0.5), act("Relu"),
                                                     GAP, READOUT], seq)
    add("seq_dotgeneral_scalar_flatten", h + [["DotGeneral", {"rhs": -1.7}], dense(64, 1.0, 0.5), act("Relu"),
                                              FLATTEN, READOUT], seq)
    add("graph_dotgeneral_then_aggregate_gap", g + [["DotGeneral", {"rhs": 0.7}], ["Aggregate", {}], act("Relu"), GAP,
                                                    READOUT], seq, pattern=lambda n, k: dense_pattern(k, n, (7,)))
    return c


def case(name, spec, x1_shape, x2_shape, masking, pattern):
    x1, x2 = masked_inputs(name + "/x1", x1_shape, masking), masked_inputs(name + "/x2", x2_shape, masking)
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2, "mask_constant": np.array(PAD)}
    kw12 = kw11 = kw_apply = {}
    if pattern is not None:
        p1, p2 = pattern(x1_shape[0], name + "/pattern1"), pattern(x2_shape[0], name + "/pattern2")
        record.update(pattern1=p1, pattern2=p2)
        kw12, kw11, kw_apply = dict(pattern=(p1, p2)), dict(pattern=(p1, p1)), dict(pattern=p1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SPARSE's warning about negative indices (documented in the README)
        init_fn, apply_fn, kernel_fn = build(spec)
        k12 = kernel_fn(x1, x2, mask_constant=PAD, **kw12)
        k11 = kernel_fn(x1, None, mask_constant=PAD, **kw11)
        if name in APPLY_CASES:
            _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
            for i, layer_params in enumerate(params):
                if len(layer_params) == 1 and isinstance(layer_params[0], (tuple, list)):
                    layer_params = layer_params[0]  # a layer that reference.network_from_spec wrapped in serial
                for j, p in enumerate(layer_params):
                    record[f"param/{i}/{j}"] = np.asarray(p)
            record["apply"] = np.asarray(stax.unmask_fn(apply_fn)(params, x1, mask_constant=PAD, **kw_apply))
    nngp, nngp_11 = reference._unreversed(k12, "nngp"), reference._unreversed(k11, "nngp")
    record.update(nngp=nngp, ntk=reference._full(reference._unreversed(k12, "ntk"), nngp), nngp_11=nngp_11,
                  ntk_11=reference._full(reference._unreversed(k11, "ntk"), nngp_11))
    for key in ("nngp", "ntk", "nngp_11", "ntk_11") + (("apply",) if "apply" in record else ()):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    print(f"  {name}: nngp {nngp.shape}")
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, args in _cases().items():
        data.update(case(name, *args))
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} cases)")


if __name__ == "__main__":
    main()
