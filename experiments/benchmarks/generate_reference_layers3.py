"""Reference kernels and finite networks from neural-tangents 0.6.5 for ``ConvTranspose`` and ``ConvLocal``.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_layers3.py

It writes ``tests/data/nt_layers3_reference.npz`` (format: ``tests/data/nt_layers3_reference.README.md``):

* kernel cases in the format of ``nt_reference.npz`` (``_cases``, ``NAME/spec``, ``NAME/x1``,
  ``NAME/x2``, ``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``), spatial axes in the
  inputs' order; ``_diagonal_cases`` lists those whose output neural-tangents gives at equal
  positions only (a network ending in ``ConvLocal``);
* finite-network cases (``_finite_cases``): ``NAME/spec``, ``NAME/x1``, ``NAME/params`` (the
  number of parameter arrays), ``NAME/param_I`` (each array of ``init_fn(PRNGKey(0), x1.shape)``,
  in ``jax.tree_util.tree_leaves`` order) and ``NAME/apply`` (``apply_fn(params, x1)``).

Everything is float64 from a fixed seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402

act, conv = reference.act, reference.conv
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_layers3_reference.npz")


def transpose(out_chan, filter_shape, padding, strides=None, W_std=1.0, b_std=None, **extra):
    return ["ConvTranspose", dict(conv(out_chan, filter_shape, padding, W_std, b_std, strides)[1], **extra)]


def local(out_chan, filter_shape, padding, strides=None, W_std=1.0, b_std=None, **extra):
    return ["ConvLocal", dict(conv(out_chan, filter_shape, padding, W_std, b_std, strides)[1], **extra)]


def _kernel_cases():
    """``name -> (spec, x1_shape)``; ``x2`` has one example fewer."""
    img, seq, vol = (4, 6, 5, 3), (4, 7, 3), (3, 4, 3, 3, 2)
    relu = act("Relu")
    conv_relu = [conv(64, (2, 3), "SAME", W_std=1.3, b_std=0.1), relu]
    c = {}
    # ConvTranspose: every padding, strides, 1-, 2- and 3-D, both parameterizations.
    c["ct2d_valid_strided_gap"] = ([transpose(64, (3, 2), "VALID", (2, 1), 1.4, 0.1), relu,
                                    transpose(64, (2, 3), "VALID", (1, 2), 1.2), relu, GAP, READOUT], img)
    c["ct2d_same_strided_flatten"] = ([transpose(64, (3, 3), "SAME", (2, 2), 1.3, 0.2), relu, FLATTEN, READOUT], img)
    c["ct2d_circular_strided_gap"] = ([transpose(64, (3, 2), "CIRCULAR", (2, 1), 1.4, 0.1), relu,
                                       transpose(64, (2, 2), "CIRCULAR", (1, 2), 1.1), relu, GAP, READOUT], img)
    c["ct1d_circular_wide_filter_gap"] = ([transpose(64, (7,), "CIRCULAR", (2,), 1.2, 0.1), act("Erf"), GAP,
                                           READOUT], seq)
    c["ct1d_standard_s_gap"] = ([transpose(64, (3,), "SAME", (2,), 1.3, 0.2, parameterization="standard",
                                           s=[1, 2]), relu,
                                 transpose(64, (2,), "VALID", None, 1.1, 0.1, parameterization="standard",
                                           s=[2, 1]), relu, GAP, READOUT], seq)
    c["ct2d_standard_flatten"] = ([transpose(64, (2, 3), "VALID", (2, 2), 1.2, 0.3, parameterization="standard"),
                                   relu, FLATTEN, READOUT], img)
    c["ct3d_same_gap"] = ([transpose(32, (2, 1, 2), "SAME", (1, 2, 1), 1.3, 0.1), relu, GAP, READOUT], vol)
    c["ct2d_dimension_numbers_gap"] = ([transpose(64, (3, 2), "SAME", (2, 1), 1.3, 0.1,
                                                  dimension_numbers=["NHWC", "IWHO", "NWHC"]), relu,
                                        conv(64, (3, 2), "VALID", W_std=1.2), relu, GAP, READOUT], img)
    c["ct2d_after_conv_spatial_output"] = (conv_relu + [transpose(64, (3, 2), "SAME", (2, 1), 1.2, 0.1)],
                                           (3, 4, 3, 3))
    c["ct2d_after_conv_gap"] = (conv_relu + [transpose(64, (3, 1), "VALID", (2, 1), 1.2), relu, GAP, READOUT], img)
    # ConvLocal. neural-tangents 0.6.5 applies ConvLocal's filter to the wrong spatial axes when it
    # keeps position pairs after an odd number of Conv/ConvTranspose layers (it ignores
    # Kernel.is_reversed there): such cases here have square filters and equal strides.
    c["cl2d_valid_strided_flatten"] = ([local(64, (3, 2), "VALID", (2, 1), 1.4, 0.1), relu, FLATTEN, READOUT], img)
    c["cl2d_same_gap"] = ([local(64, (3, 2), "SAME", (1, 2), 1.3, 0.2), relu, GAP, READOUT], img)
    c["cl2d_circular_after_two_convs_gap"] = (conv_relu + [conv(64, (3, 3), "SAME", W_std=1.2), relu,
                                                           local(64, (2, 3), "CIRCULAR", (2, 1), 1.2, 0.1), relu,
                                                           GAP, READOUT], img)
    c["cl2d_after_transpose_square_gap"] = ([transpose(64, (2, 2), "SAME", (2, 2), 1.3), relu,
                                             local(64, (3, 3), "SAME", (2, 2), 1.2, 0.1), relu, GAP, READOUT], img)
    c["cl2d_then_avgpool_flatten"] = ([local(64, (2, 2), "SAME", None, 1.3, 0.1), relu,
                                       ["AvgPool", {"window_shape": [2, 2], "padding": "SAME"}], FLATTEN,
                                       READOUT], img)
    c["cl1d_standard_gap"] = ([local(64, (3,), "SAME", (2,), 1.3, 0.2, parameterization="standard"), relu,
                               local(64, (2,), "VALID", None, 1.1, 0.1, parameterization="standard"), relu, GAP,
                               READOUT], seq)
    c["cl1d_standard_s_in_flatten"] = ([local(64, (3,), "SAME", (2,), 1.3, 0.2, parameterization="standard"),
                                        relu, local(64, (2,), "VALID", None, 1.1, 0.1,
                                                    parameterization="standard", s=[2, 1]), relu, FLATTEN,
                                        READOUT], seq)
    c["cl3d_valid_gap"] = ([local(32, (2, 1, 2), "VALID", (1, 1, 2), 1.3, 0.1), relu, GAP, READOUT], vol)
    c["cl2d_dimension_numbers_gap"] = ([local(64, (3, 2), "SAME", (2, 1), 1.3, 0.1,
                                              dimension_numbers=["NHWC", "WHIO", "NWHC"]), relu,
                                        conv(64, (3, 2), "VALID", W_std=1.2), relu, GAP, READOUT], img)
    c["cl2d_spatial_output"] = ([local(64, (3, 2), "SAME", (2, 1), 1.3, 0.1)], img)
    return c


def _finite_cases():
    """``name -> (spec, x1_shape)``: one layer each, for init_fn and apply_fn."""
    img, seq, vol = (2, 5, 4, 3), (2, 6, 3), (2, 3, 2, 3, 2)
    return {
        "finite_ct2d_valid": ([transpose(5, (3, 2), "VALID", (2, 1), 1.3, 0.2)], img),
        "finite_ct2d_same": ([transpose(5, (2, 3), "SAME", (1, 3), 1.1)], img),
        "finite_ct2d_circular": ([transpose(5, (3, 2), "CIRCULAR", (2, 1), 1.3, 0.2)], img),
        "finite_ct1d_circular_wide_filter": ([transpose(5, (7,), "CIRCULAR", (2,), 1.2, 0.1)], seq),
        "finite_ct2d_standard_s": ([transpose(5, (3, 2), "SAME", (2, 1), 1.3, 0.2, parameterization="standard",
                                              s=[2, 3])], img),
        "finite_ct2d_dimension_numbers": ([transpose(5, (3, 2), "SAME", (2, 1), 1.3, 0.2,
                                                     dimension_numbers=["NHWC", "IWHO", "NWHC"])], img),
        "finite_ct3d": ([transpose(4, (2, 1, 2), "VALID", (1, 2, 1), 1.3, 0.2)], vol),
        "finite_cl2d_same": ([local(5, (3, 2), "SAME", (2, 1), 1.3, 0.2)], img),
        "finite_cl2d_valid": ([local(5, (2, 3), "VALID", None, 1.1)], img),
        "finite_cl2d_circular": ([local(5, (3, 2), "CIRCULAR", (1, 2), 1.3, 0.2)], img),
        "finite_cl1d_standard": ([local(5, (3,), "SAME", (2,), 1.3, 0.2, parameterization="standard")], seq),
        "finite_cl2d_dimension_numbers": ([local(5, (3, 2), "SAME", (2, 1), 1.3, 0.2,
                                                 dimension_numbers=["NHWC", "WHIO", "NWHC"])], img),
        "finite_cl3d": ([local(4, (2, 1, 2), "VALID", (1, 1, 2), 1.3, 0.2)], vol),
    }


def finite_case(name, spec, x1_shape, build=None):
    """``{"NAME/key": array}`` of one finite case; ``build``: spec -> network (default ``reference``'s)."""
    x1 = reference._inputs(name + "/x1", x1_shape)
    init_fn, apply_fn, _ = (build or reference.network_from_spec)(spec)
    out_shape, params = init_fn(jax.random.PRNGKey(0), x1_shape)
    out = np.asarray(apply_fn(params, x1), np.float64)
    if tuple(out.shape) != tuple(out_shape):
        raise ValueError(f"{name}: init_fn says {out_shape}, apply_fn gives {out.shape}")
    leaves = [np.asarray(p, np.float64) for p in jax.tree_util.tree_leaves(params)]
    print(f"  {name}: output {out.shape}, parameters {[p.shape for p in leaves]}")
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "params": np.array(len(leaves)), "apply": out}
    record.update({f"param_{i}": p for i, p in enumerate(leaves)})
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names, diagonal = {}, [], []
    for name, (spec, x1_shape) in _kernel_cases().items():
        record = reference.kernel_case(name, spec, x1_shape, (x1_shape[0] - 1,) + x1_shape[1:])
        if spec[-1][0] == "ConvLocal":  # its position pairs are zero: neural-tangents gives equal positions
            diagonal.append(name)
        data.update(record)  # a refusal is an error here: every case must run
        names.append(name)
    finite = []
    for name, (spec, x1_shape) in _finite_cases().items():
        data.update(finite_case(name, spec, x1_shape))
        finite.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_diagonal_cases"] = np.array(json.dumps(diagonal))
    data["_finite_cases"] = np.array(json.dumps(finite))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} kernel and {len(finite)} finite cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
