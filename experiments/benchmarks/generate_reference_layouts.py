"""Reference kernels and finite networks from neural-tangents 0.6.5 for layouts other than batch first,
channels last: ``Conv``/``ConvTranspose``/``ConvLocal`` ``dimension_numbers``, ``batch_axis`` and
``channel_axis`` of ``Dense``, pooling, ``LayerNorm`` and ``GlobalSelfAttention``, and ``Flatten``'s
``batch_axis`` and ``batch_axis_out``.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_layouts.py

It writes ``tests/data/nt_layouts_reference.npz`` (format: ``tests/data/nt_layouts_reference.README.md``):

* kernel cases in the format of ``nt_reference.npz`` (``_cases``, ``NAME/spec``, ``NAME/x1``,
  ``NAME/x2``, ``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``), inputs in the layout the
  network's first layer declares, spatial axes in the inputs' order; plus ``NAME/batch_axis``,
  ``NAME/channel_axis`` and ``NAME/shape1`` of the output `Kernel` of ``kernel_fn(x1, x2)``;
* ``Index``'s ``idx`` is JSON: a list of ints, ``"..."`` and ``[start, stop, step]`` (a slice);
* finite-network cases (``_finite_cases``): ``NAME/spec``, ``NAME/x1``, ``NAME/params`` (the
  number of parameter arrays), ``NAME/param_I`` (each array of ``init_fn(PRNGKey(0), x1.shape)``,
  in ``jax.tree_util.tree_leaves`` order), ``NAME/out_shape`` and ``NAME/apply`` (``apply_fn(params, x1)``).

Everything is float64 from a fixed seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import generate_reference_layers3 as layers3  # noqa: E402
from generate_reference_layers2 import decode_index  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402

act, conv, dense = reference.act, reference.conv, reference.dense
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_layouts_reference.npz")
RELU = act("Relu")
NCHW = ["NCHW", "OIHW", "NCHW"]


def network_from_spec(spec):
    """As ``reference.network_from_spec``, with ``Index``'s ``idx`` decoded."""
    layers = []
    for name, kwargs in spec:
        if name == "Index":
            layers.append(nt.stax.Index(**dict(kwargs, idx=decode_index(kwargs["idx"]))))
        else:
            layers.append(reference._layer(name, kwargs))  # one serial in all: its key splits are neural-tangents'
    return nt.stax.serial(*layers)


def readout(**layout):
    return ["Dense", dict(out_dim=1, W_std=1.1, b_std=0.05, **layout)]


def _kernel_cases():
    """``name -> (spec, x1_shape, batch_axis)``; ``x2`` has one example fewer along the batch axis."""
    c = {}
    # Channels first throughout, as a PyTorch user writes it: Conv NCHW/OIHW, pooling, Dense on axis 1.
    c["conv_nchw_pool_gap"] = ([conv(32, (2, 3), "SAME", 1.3, 0.1, dimension_numbers=NCHW), RELU,
                                conv(32, (3, 2), "VALID", 1.2, None, strides=(1, 2), dimension_numbers=NCHW), RELU,
                                ["AvgPool", dict(window_shape=[2, 2], padding="SAME", channel_axis=1)],
                                ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 2, 6, 5), 0)
    # Batch and channels anywhere, spatial axes permuted between lhs_spec and out_spec, filters in
    # another letter order; the outputs flattened.
    c["conv_permuted_flatten"] = ([conv(32, (3, 2), "SAME", 1.3, 0.1, dimension_numbers=["CNHW", "WIOH", "NCWH"]),
                                   RELU, conv(32, (2, 2), "VALID", 1.2, 0.2, dimension_numbers=["NCWH", "OIWH", "NWHC"]),
                                   RELU, ["Flatten", {}], readout()], (2, 4, 6, 5), 1)
    # Position pairs as outputs: the kernel's spatial axes in out_spec's order ("NCWH": W before H).
    c["conv_out_spec_spatial_output"] = ([conv(32, (2, 3), "SAME", 1.3, 0.1, dimension_numbers=["NHWC", "HWIO", "NCWH"]),
                                          RELU, conv(32, (2, 2), "SAME", 1.1, 0.1,
                                                     dimension_numbers=["NCWH", "OIWH", "NCWH"])], (4, 5, 3, 2), 0)
    c["dense_channel_axis_1_spatial_output"] = ([["Dense", dict(out_dim=32, W_std=1.3, b_std=0.1, channel_axis=1)],
                                                 act("Erf"), ["Dense", dict(out_dim=8, W_std=1.1, channel_axis=1)]],
                                                (4, 3, 5), 0)
    c["batch_axis_1_sumpool"] = ([["Dense", dict(out_dim=32, W_std=1.2, b_std=0.1, batch_axis=1)], RELU,
                                  ["SumPool", dict(window_shape=[2], strides=[2], batch_axis=1)],
                                  ["Dense", dict(out_dim=32, W_std=0.9, batch_axis=1)], RELU,
                                  ["GlobalSumPool", dict(batch_axis=1, channel_axis=2)], readout()], (6, 4, 3), 1)
    c["gap_channels_before_batch"] = ([["Dense", dict(out_dim=32, W_std=1.2, b_std=0.1, batch_axis=2,
                                                      channel_axis=0)], RELU,
                                       ["GlobalAvgPool", dict(batch_axis=2, channel_axis=0)],
                                       readout(batch_axis=1, channel_axis=0)], (3, 5, 4), 2)
    c["layernorm_channel_axis_1"] = ([conv(32, (2, 2), "SAME", 1.3, 0.1, dimension_numbers=NCHW),
                                      ["LayerNorm", dict(axis=[1, 3], channel_axis=1)], RELU,
                                      ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 2, 4, 3), 0)
    c["attention_channel_axis_1"] = ([["Dense", dict(out_dim=32, W_std=1.2, channel_axis=1)],
                                      ["GlobalSelfAttention", dict(n_chan_out=32, n_chan_key=32, n_chan_val=32,
                                                                   n_heads=2, linear_scaling=True, W_key_std=1.1,
                                                                   W_out_std=1.2, b_std=0.1, channel_axis=1)],
                                      RELU, ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 3, 5), 0)
    c["flatten_batch_axis_out_1"] = ([conv(32, (2,), "SAME", 1.3, 0.1), RELU,
                                      ["Flatten", dict(batch_axis_out=1)],
                                      readout(batch_axis=1, channel_axis=0)], (4, 5, 3), 0)
    # (neural-tangents refuses Flatten(batch_axis=1) as a network's first layer: its input kernel of
    # flattened inputs records batch_axis 0; widekit accepts it, tests/kernels/test_layouts.py checks it.)
    c["flatten_batch_axis_1"] = ([["Dense", dict(out_dim=32, W_std=1.2, b_std=0.1, batch_axis=1)], RELU,
                                  ["Flatten", dict(batch_axis=1)], readout()], (5, 4, 3), 1)
    c["conv_transpose_nchw_gap"] = ([["ConvTranspose", dict(out_chan=32, filter_shape=[3, 2], padding="SAME",
                                                            strides=[2, 1], W_std=1.3, b_std=0.1,
                                                            dimension_numbers=NCHW)], RELU,
                                     ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 2, 3, 4), 0)
    c["conv_local_nchw_flatten"] = ([["ConvLocal", dict(out_chan=32, filter_shape=[2, 2], padding="SAME",
                                                        W_std=1.3, b_std=0.1, dimension_numbers=NCHW)], RELU,
                                     ["Flatten", {}], readout()], (4, 2, 3, 4), 0)
    # (Dense, not Conv, before ImageResize and Index: after an odd number of convolutions neural-tangents 0.6.5
    # resizes the wrong axes, tests/data/nt_layers2_reference.README.md.)
    c["image_resize_channel_axis_1"] = ([["Dense", dict(out_dim=32, W_std=1.3, b_std=0.1, channel_axis=1)],
                                         ["ImageResize", dict(shape=[-1, -1, 7, 5], method="linear", channel_axis=1)],
                                         RELU, ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 2, 4, 3), 0)
    # Index: an Ellipsis, a slice of H and an int removing W, channels first.
    c["index_channel_axis_1"] = ([["Dense", dict(out_dim=32, W_std=1.3, b_std=0.1, channel_axis=1)], RELU,
                                  ["Index", dict(idx=["...", [1, None, None], 1], channel_axis=1)],
                                  conv(32, (2,), "VALID", 1.2, 0.1, dimension_numbers=["NCH", "OIH", "NCH"]), RELU,
                                  ["GlobalAvgPool", dict(channel_axis=1)], readout()], (4, 2, 5, 3), 0)
    return c


def _finite_cases():
    """``name -> (spec, x1_shape)``: one layer each, for init_fn and apply_fn."""
    return {
        "finite_conv_nchw": ([conv(5, (3, 2), "SAME", 1.3, 0.2, strides=(2, 1), dimension_numbers=NCHW)], (2, 3, 5, 4)),
        "finite_conv_permuted": ([conv(5, (3, 2), "VALID", 1.3, 0.2, dimension_numbers=["CNHW", "WIOH", "NCWH"])],
                                 (3, 2, 5, 4)),
        "finite_conv_circular_nchw": ([conv(5, (3, 2), "CIRCULAR", 1.1, 0.1, dimension_numbers=NCHW)], (2, 3, 5, 4)),
        "finite_dense_channel_axis_1": ([["Dense", dict(out_dim=5, W_std=1.3, b_std=0.2, channel_axis=1)]],
                                        (2, 3, 4)),
        "finite_dense_batch_axis_1_standard": ([["Dense", dict(out_dim=5, W_std=1.3, b_std=0.2, batch_axis=1,
                                                               channel_axis=0, parameterization="standard")]],
                                               (3, 2, 4)),
        "finite_avgpool_channel_axis_1": ([["AvgPool", dict(window_shape=[2, 2], strides=[1, 2], padding="SAME",
                                                            channel_axis=1)]], (2, 3, 5, 4)),
        "finite_gap_channels_first_batch_last": ([["GlobalAvgPool", dict(batch_axis=-1, channel_axis=0)]], (3, 5, 2)),
        "finite_flatten_batch_axis_1_out_1": ([["Flatten", dict(batch_axis=1, batch_axis_out=1)]], (3, 2, 4)),
        "finite_layernorm_channel_axis_1": ([["LayerNorm", dict(axis=[1, 2], channel_axis=1)]], (2, 3, 4, 5)),
        "finite_attention_channel_axis_1": ([["GlobalSelfAttention", dict(n_chan_out=5, n_chan_key=4, n_chan_val=3,
                                                                          n_heads=2, linear_scaling=False,
                                                                          W_key_std=1.1, b_std=0.2,
                                                                          channel_axis=1)]], (2, 3, 4)),
        "finite_conv_transpose_nchw": ([["ConvTranspose", dict(out_chan=5, filter_shape=[3, 2], padding="SAME",
                                                               strides=[2, 1], W_std=1.3, b_std=0.2,
                                                               dimension_numbers=NCHW)]], (2, 3, 4, 3)),
        "finite_image_resize_channel_axis_1": ([["ImageResize", dict(shape=[-1, -1, 7, 2], method="linear",
                                                                     channel_axis=1)]], (2, 3, 4, 3)),
        "finite_index_batch_axis_1": ([["Index", dict(idx=[1, "...", [None, None, 2]], batch_axis=1)]], (3, 2, 4, 5)),
        "finite_conv_local_nchw": ([["ConvLocal", dict(out_chan=5, filter_shape=[2, 2], padding="SAME",
                                                       W_std=1.3, b_std=0.2, dimension_numbers=NCHW)]], (2, 3, 4, 3)),
    }


def kernel_case(name, spec, x1_shape, batch_axis):
    """``reference.kernel_case`` with ``x2`` one example fewer along ``batch_axis``, plus the output
    `Kernel`'s ``batch_axis``, ``channel_axis`` and ``shape1``."""
    x2_shape = list(x1_shape)
    x2_shape[batch_axis] -= 1
    record = reference.kernel_case(name, spec, x1_shape, tuple(x2_shape), build=network_from_spec)
    x1, x2 = record[f"{name}/x1"], record[f"{name}/x2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neural-tangents warns about batch_axis != 0 (batching, not kernels)
        k = network_from_spec(spec)[2](x1, x2)
    record[f"{name}/batch_axis"] = np.array(k.batch_axis)
    record[f"{name}/channel_axis"] = np.array(k.channel_axis)
    record[f"{name}/shape1"] = np.array(k.shape1)
    print(f"  {name}: Kernel batch_axis {k.batch_axis}, channel_axis {k.channel_axis}, shape1 {k.shape1}")
    return record


def finite_case(name, spec, x1_shape):
    """``generate_reference_layers3.finite_case`` with ``Index`` decoded, plus ``NAME/out_shape``."""
    record = layers3.finite_case(name, spec, x1_shape, build=network_from_spec)
    init_fn = network_from_spec(spec)[0]
    record[f"{name}/out_shape"] = np.array(init_fn(jax.random.PRNGKey(0), x1_shape)[0])
    return record


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names, finite = {}, [], []
    for name, (spec, x1_shape, batch_axis) in _kernel_cases().items():
        data.update(kernel_case(name, spec, x1_shape, batch_axis))  # a refusal is an error: every case must run
        names.append(name)
    for name, (spec, x1_shape) in _finite_cases().items():
        data.update(finite_case(name, spec, x1_shape))
        finite.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_finite_cases"] = np.array(json.dumps(finite))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} kernel and {len(finite)} finite cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
