"""Reference kernels and outputs from neural-tangents 0.6.5 for ``DotGeneral`` and ``Aggregate`` in layouts
other than batch first, channels last (their ``batch_axis`` and ``channel_axis``).

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_graph_layouts.py

It writes ``tests/data/nt_graph_layouts_reference.npz``:

* kernel cases (``_cases``): ``NAME/spec`` (JSON ``[[LayerName, kwargs], ...]``: ``DotGeneral``'s ``lhs``/``rhs``
  as nested lists, everything else as in ``nt_reference.npz``), ``NAME/x1``, ``NAME/x2`` (inputs in the layout
  the network's first layer declares; ``x2`` has one example fewer along that batch axis), ``NAME/pattern1``,
  ``NAME/pattern2`` for networks with an ``Aggregate`` (passed as ``kernel_fn(x1, x2, pattern=(pattern1,
  pattern2))`` and ``kernel_fn(x1, None, pattern=(pattern1, pattern1))``), ``NAME/nngp``, ``NAME/ntk``,
  ``NAME/nngp_11``, ``NAME/ntk_11`` (spatial axis pairs in the inputs' order), and ``NAME/batch_axis``,
  ``NAME/channel_axis``, ``NAME/shape1`` of the output `Kernel` of ``kernel_fn(x1, x2)``;
* masked kernel cases (``_masked_cases``), the same records plus ``NAME/mask_constant``, passed to both calls
  (the inputs' padded positions hold it in every channel);
* finite cases (``_finite_cases``), one parameterless layer each: ``NAME/spec``, ``NAME/x1``,
  ``NAME/pattern1`` (Aggregate), ``NAME/apply`` (``apply_fn(params, x1, pattern=pattern1)``, no parameters) and
  ``NAME/batch_axis``, ``NAME/channel_axis`` of the output (as the layer's ``kernel_fn`` records them:
  where ``lax.dot_general`` puts them).

Everything is float64 from a fixed seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
from generate_reference_masking3 import _rng, dense_pattern, sparse_pattern  # noqa: E402  (seeded by name)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_graph_layouts_reference.npz")
RELU, ERF = reference.act("Relu"), reference.act("Erf")
PAD = 10.  # the masked cases' mask_constant


def layer(name, kwargs):
    """One spec item as a neural-tangents layer: the graph layers here, the rest by ``reference``."""
    kw = {k: (np.asarray(v, np.float64) if k in ("lhs", "rhs") else reference._as_tuples(v))
          for k, v in kwargs.items()}
    if name == "DotGeneral":
        return stax.DotGeneral(**kw)
    if name == "Aggregate":
        return stax.Aggregate(**kw)
    return reference._layer(name, kwargs)


def network_from_spec(spec):
    return stax.serial(*[layer(name, kwargs) for name, kwargs in spec])


def dense(out_dim, W_std, b_std=None, **layout):
    return ["Dense", dict(out_dim=out_dim, W_std=W_std, b_std=b_std, **layout)]


def constant(name, shape):
    return _rng("constant/" + name).normal(size=shape).round(6).tolist()


def _kernel_cases():
    """``name -> (spec, x1_shape, batch_axis, pattern[, masking])``; ``pattern(n, name)`` for networks with an
    Aggregate; ``masking``: ``mask_constant`` and the examples' lengths along the last axis, by batch size."""
    c = {}
    nc = dict(channel_axis=1)  # channels first: (N, C, ...)
    # DotGeneral, channels first (N, C, L): contracting the positions with a vector leaves (N, C).
    c["dg_ncl_rhs_contract_all"] = ([dense(32, 1.3, 0.1, **nc), RELU,
                                     ["DotGeneral", dict(rhs=constant("v", (5,)),
                                                         dimension_numbers=[[[2], [0]], [[], []]], **nc)],
                                     dense(32, 1.2, 0.1, **nc), ERF, dense(1, 1.1, 0.05, **nc)], (4, 3, 5), 0, None)
    # NCHW: a constant (W, K) on the right: lax's order (N, C, H, K) keeps batch and channels where declared.
    # H == W, so contracting axis 2 (W's index batch first, channels last) runs too (the tests' wrong variant).
    c["dg_nchw_rhs_free_axis_gap"] = ([dense(32, 1.3, 0.1, **nc), RELU, dense(32, 1.2, 0.1, **nc),
                                       ["DotGeneral", dict(rhs=constant("wk", (3, 2)),
                                                           dimension_numbers=[[[3], [0]], [[], []]], **nc)],
                                       RELU, ["GlobalAvgPool", nc], dense(1, 1.1, 0.05)], (3, 2, 3, 3), 0, None)
    # (L, N, C), batch second: a constant (K, L) on the left contracts L; lax's order (K, N, C).
    c["dg_lnc_lhs_mix_spatial_output"] = ([dense(32, 1.3, 0.1, batch_axis=1), ERF,
                                           ["DotGeneral", dict(lhs=constant("kl", (3, 5)),
                                                               dimension_numbers=[[[1], [0]], [[], []]],
                                                               batch_axis=1)]], (5, 4, 3), 1, None)
    # (C, H, W, N), channels first and batch last; contracting H and W with a (H, W) matrix leaves (C, N).
    cb = dict(batch_axis=-1, channel_axis=0)
    c["dg_chwn_rhs_contract_two"] = ([dense(32, 1.3, 0.1, **cb), RELU,
                                      ["DotGeneral", dict(rhs=constant("hw", (4, 3)),
                                                          dimension_numbers=[[[1, 2], [0, 1]], [[], []]], **cb)],
                                      dense(1, 1.1, 0.05, **cb)], (3, 4, 3, 4), 3, None)
    # Aggregate, GCN channels first (N, C, V) over 6 vertices, aggregate_axis given and None; a scalar DotGeneral.
    c["agg_ncv_dense_gap"] = ([dense(32, 1.3, 0.2, **nc), RELU, ["Aggregate", dict(aggregate_axis=2, **nc)],
                               dense(32, 1.2, 0.1, **nc), RELU, ["DotGeneral", dict(rhs=0.7, **nc)],
                               ["Aggregate", nc], ["GlobalAvgPool", nc], dense(1, 1.1, 0.05)], (4, 3, 6), 0,
                              lambda n, name: dense_pattern(name, n, (6,)))
    # Batch second (V, N, C), SPARSE edges (n, E, 2).
    b1 = dict(batch_axis=1)
    c["agg_vnc_sparse_gap"] = ([dense(32, 1.3, 0.2, **b1), RELU, ["Aggregate", dict(implementation="SPARSE", **b1)],
                                dense(32, 1.2, 0.1, **b1), ERF, ["Aggregate", dict(implementation="SPARSE", **b1)],
                                ["GlobalAvgPool", dict(batch_axis=1, channel_axis=2)], dense(1, 1.1, 0.05)],
                               (6, 4, 3), 1, lambda n, name: sparse_pattern(name, n, (6,), 10, squeeze=True))
    # (N, H, C, W): channels between the aggregated axes, given unsorted (3, 1): the pattern is (N, H, W, H, W).
    # H == W, so a pattern with H and W swapped has the right shape (the tests' wrong variant).
    c2 = dict(channel_axis=2)
    c["agg_nhcw_dense_unsorted_axes_flatten"] = ([dense(32, 1.3, 0.2, **c2), RELU, dense(32, 1.2, 0.1, **c2),
                                                  ["Aggregate", dict(aggregate_axis=[3, 1], **c2)], RELU,
                                                  ["Flatten", {}], dense(1, 1.1, 0.05)], (3, 3, 2, 3), 0,
                                                 lambda n, name: dense_pattern(name, n, (3, 3), 0.4))
    # (C, H, W, N): one axis (W, given negative) aggregated, SPARSE (n, E, 1, 2); the outputs keep the positions.
    c["agg_chwn_sparse_axis_spatial_output"] = ([dense(32, 1.3, 0.2, **cb), RELU,
                                                 ["Aggregate", dict(aggregate_axis=-2, implementation="SPARSE", **cb)]],
                                                (2, 3, 4, 3), 3, lambda n, name: sparse_pattern(name, n, (4,), 8))
    # Masked inputs (mask_constant=PAD), channels first: graphs whose last vertices are padding, and a DotGeneral
    # whose zero weights leave an output reading no unmasked input.
    pad = lambda lengths: dict(mask_constant=PAD, lengths=lengths)
    c["mask_agg_ncv_dense_gap"] = ([dense(32, 1.3, 0.2, **nc), RELU, ["Aggregate", nc], dense(32, 1.2, 0.1, **nc),
                                    RELU, ["Aggregate", nc], ["GlobalAvgPool", nc], dense(1, 1.1, 0.05)], (4, 3, 6), 0,
                                   lambda n, name: dense_pattern(name, n, (6,)), pad({4: (6, 2, 4, 1), 3: (3, 6, 5)}))
    weights = constant("mask_v", (5,))
    weights[3:] = [0., 0.]  # an example of length 3 or less reads nothing unmasked
    c["mask_dg_ncl_rhs_contract_dense"] = ([dense(32, 1.3, 0.2, **nc), RELU,
                                            ["DotGeneral", dict(rhs=weights, dimension_numbers=[[[2], [0]], [[], []]],
                                                                **nc)],
                                            dense(32, 1.2, 0.4, **nc), ERF, dense(1, 1.1, 0.05, **nc)], (4, 3, 5), 0,
                                           None, pad({4: (5, 2, 4, 3), 3: (1, 5, 4)}))
    return c


def masked(x, batch_axis, vertex_axis, lengths):
    """``x`` with the positions past each example's length along ``vertex_axis`` set to ``PAD`` (every channel)."""
    x = np.moveaxis(x.copy(), (batch_axis, vertex_axis), (0, 1))
    for i, length in enumerate(lengths):
        x[i, length:] = PAD
    return np.moveaxis(x, (0, 1), (batch_axis, vertex_axis))


def _finite_cases():
    """``name -> (spec, x1_shape, pattern)``: one parameterless layer each, for apply_fn."""
    return {
        "f_dg_nchw_rhs_free_axis": ([["DotGeneral", dict(rhs=constant("f_wk", (4, 2)),
                                                         dimension_numbers=[[[3], [0]], [[], []]], channel_axis=1)]],
                                    (2, 3, 5, 4), None),
        "f_dg_lnc_lhs": ([["DotGeneral", dict(lhs=constant("f_kl", (3, 5)), dimension_numbers=[[[1], [0]], [[], []]],
                                              batch_axis=1)]], (5, 2, 3), None),
        # A spatial batch dimension: lax puts it first, displacing the batch axis (widekit moves it back).
        "f_dg_nhcw_rhs_batch_dims": ([["DotGeneral", dict(rhs=constant("f_w", (4,)),
                                                          dimension_numbers=[[[], []], [[3], [0]]], channel_axis=2)]],
                                     (2, 3, 5, 4), None),
        "f_agg_ncv_dense": ([["Aggregate", dict(aggregate_axis=2, channel_axis=1)]], (3, 2, 5),
                            lambda n, name: dense_pattern(name, n, (5,))),
        "f_agg_nhcw_dense_two_axes": ([["Aggregate", dict(aggregate_axis=[3, 1], channel_axis=2)]], (2, 3, 2, 4),
                                      lambda n, name: dense_pattern(name, n, (3, 4), 0.4)),
        "f_agg_vnc_sparse": ([["Aggregate", dict(implementation="SPARSE", batch_axis=1)]], (5, 3, 2),
                             lambda n, name: sparse_pattern(name, n, (5,), 9, squeeze=True)),
        "f_agg_chwn_sparse_two_axes": ([["Aggregate", dict(implementation="SPARSE", batch_axis=-1, channel_axis=0)]],
                                       (2, 3, 4, 3), lambda n, name: sparse_pattern(name, n, (3, 4), 12)),
    }


def kernel_case(name, spec, x1_shape, batch_axis, pattern, masking=None):
    x2_shape = list(x1_shape)
    x2_shape[batch_axis] -= 1
    x1, x2 = reference._inputs(name + "/x1", x1_shape), reference._inputs(name + "/x2", tuple(x2_shape))
    mask = {}
    if masking is not None:
        n1, n2 = x1.shape[batch_axis], x2.shape[batch_axis]
        x1, x2 = (masked(x, batch_axis, x.ndim - 1, masking["lengths"][n]) for x, n in ((x1, n1), (x2, n2)))
        mask = dict(mask_constant=masking["mask_constant"])
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2}
    record.update({k: np.array(v) for k, v in mask.items()})
    kw12 = kw11 = {}
    if pattern is not None:
        p1, p2 = pattern(x1_shape[batch_axis], name + "/pattern1"), pattern(x2_shape[batch_axis], name + "/pattern2")
        record.update(pattern1=p1, pattern2=p2)
        kw12, kw11 = dict(pattern=(p1, p2)), dict(pattern=(p1, p1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch_axis != 0 (for nt.batch) and SPARSE's negative indices
        init_fn, _, kernel_fn = network_from_spec(spec)
        out_shape, _ = init_fn(jax.random.PRNGKey(0), x1_shape)
        k12, k11 = kernel_fn(x1, x2, **kw12, **mask), kernel_fn(x1, None, **kw11, **mask)
    nngp, nngp_11 = reference._unreversed(k12, "nngp"), reference._unreversed(k11, "nngp")
    record.update(nngp=nngp, ntk=reference._full(reference._unreversed(k12, "ntk"), nngp), nngp_11=nngp_11,
                  ntk_11=reference._full(reference._unreversed(k11, "ntk"), nngp_11),
                  batch_axis=np.array(k12.batch_axis), channel_axis=np.array(k12.channel_axis),
                  shape1=np.array(k12.shape1))
    for key in ("nngp", "ntk", "nngp_11", "ntk_11"):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    print(f"  {name}: output {tuple(out_shape)} (batch {k12.batch_axis}, channels {k12.channel_axis}) "
          f"-> nngp {nngp.shape}")
    return {f"{name}/{k}": v for k, v in record.items()}


def finite_case(name, spec, x1_shape, pattern):
    x1 = reference._inputs(name + "/x1", x1_shape)
    record = {"spec": np.array(json.dumps(spec)), "x1": x1}
    kw = {}
    (_, kwargs), = spec
    batch_axis = kwargs.get("batch_axis", 0)
    if pattern is not None:
        record["pattern1"] = pattern(x1_shape[batch_axis], name + "/pattern1")
        kw = dict(pattern=record["pattern1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init_fn, apply_fn, kernel_fn = network_from_spec(spec)
        out_shape, params = init_fn(jax.random.PRNGKey(0), x1_shape)
        out = np.asarray(apply_fn(params, x1, **kw), np.float64)
        k = kernel_fn(x1, None, **({} if pattern is None else dict(pattern=(kw["pattern"], kw["pattern"]))))
    if tuple(out.shape) != tuple(out_shape):
        raise ValueError(f"{name}: init_fn says {out_shape}, apply_fn gives {out.shape}")
    record.update(apply=out, batch_axis=np.array(k.batch_axis), channel_axis=np.array(k.channel_axis))
    print(f"  {name}: output {out.shape} (batch {k.batch_axis}, channels {k.channel_axis})")
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names, finite = {}, [], []
    for name, args in _kernel_cases().items():
        data.update(kernel_case(name, *args))  # a refusal is an error: every case must run
        names.append(name)
    for name, args in _finite_cases().items():
        data.update(finite_case(name, *args))
        finite.append(name)
    data["_cases"] = np.array(json.dumps([n for n in names if not n.startswith("mask_")]))
    data["_masked_cases"] = np.array(json.dumps([n for n in names if n.startswith("mask_")]))
    data["_finite_cases"] = np.array(json.dumps(finite))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} kernel and {len(finite)} finite cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
