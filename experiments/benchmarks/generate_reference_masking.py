"""Reference kernels and outputs from neural-tangents 0.6.5 for masked inputs (``mask_constant``).

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_masking.py

It writes ``tests/data/nt_masking_reference.npz`` (format: ``tests/data/nt_masking_reference.README.md``):
per case ``NAME/spec``, ``NAME/x1``, ``NAME/x2`` (inputs with their masked entries set to
``NAME/mask_constant``), ``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2, mask_constant=...)``),
``NAME/nngp_11``, ``NAME/ntk_11`` (``x2=None``); for the cases in ``APPLY_CASES`` also the
parameters ``NAME/param/i/j`` of neural-tangents' ``init_fn`` (layer ``i``, array ``j``) and
``NAME/apply`` (``unmask_fn(apply_fn)(params, x1, mask_constant=...)``). Everything is float64 from
``generate_reference.py``'s seed; it reuses that script's spec language and helpers, and
``generate_reference_attention.py``'s names for ``pos_emb_decay_fn`` (stored as ``_decay_fns``).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import generate_reference_attention as reference_attention  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

act, dense, attention, conv = reference.act, reference.dense, reference.attention, reference.conv
embedded = reference_attention.attention  # GlobalSelfAttention with positional embeddings
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_masking_reference.npz")

# Cases whose apply_fn is compared too (their layers' parameters have widekit's layout).
APPLY_CASES = ("seq_dense_relu_gap", "seq_flatten", "seq_layernorm_positions", "seq_imdb_conv_sum_onehot",
               "seq_imdb_conv_sum_exp", "img_conv_avgpool_flatten")


def pool(name, window, strides=None, padding="VALID", **extra):
    kw = {"window_shape": list(window), "padding": padding, **extra}
    if strides is not None:
        kw["strides"] = list(strides)
    return [name, kw]


def conv_more(name, out_chan, filter_shape, strides, padding, **extra):
    return [name, {"out_chan": out_chan, "filter_shape": list(filter_shape), "strides": list(strides),
                   "padding": padding, "W_std": 1.2, "b_std": 0.1, **extra}]


def _cases():
    """``name -> (spec, x1 shape, x2 shape, masking)``; ``masking``: ``("lengths", c)`` pads example
    ``n``'s sequence after a length drawn per example (one example fully masked), ``("entries", c)``
    masks single entries with probability 0.4."""
    seq = (5, 7, 3)
    relu = [dense(512, 1.3, 0.2), act("Relu")]
    c = {}

    def add(name, spec, shape, masking=("lengths", 10.)):
        c[name] = (spec, shape, (shape[0] - 1,) + shape[1:], masking)

    add("seq_dense_relu_gap", relu + [GAP, READOUT], seq)
    add("seq_dense_erf_gsp", [dense(512, 1.1, 0.3), act("Erf"), ["GlobalSumPool", {}], READOUT], seq)
    add("seq_flatten", relu + [FLATTEN, READOUT], seq)
    add("seq_spatial_output", relu + [dense(512, 0.9, 0.1)], seq)
    add("seq_nan_constant", relu + [GAP, READOUT], seq, ("lengths", float("nan")))
    add("seq_layernorm_positions", [dense(512, 1.2, 0.1), ["LayerNorm", {"axis": [1, 2]}], act("Relu"), GAP,
                                    READOUT], seq)
    add("seq_layernorm_channels", [dense(512, 1.2, 0.1), ["LayerNorm", {"axis": -1}], act("Erf"), GAP, READOUT],
        seq)
    for mechanism in ("SOFTMAX", "IDENTITY", "RELU", "ABS"):
        add(f"seq_attention_{mechanism.lower()}", relu + [attention(mechanism, 2, W_key_std=1.2, b_std=0.1),
                                                           act("Relu"), GAP, READOUT], seq)
    add("seq_attention_identity_standard", relu + [attention("IDENTITY", 2, linear_scaling=False), GAP, READOUT],
        seq)
    add("seq_imdb_like", [dense(512, 1.0, 0.1), act("Relu"), attention("SOFTMAX", 1), act("Relu"), GAP,
                          dense(1)], seq)
    add("img_dense_relu_gap", relu + [GAP, READOUT], (4, 3, 4, 2))
    add("flat_entries_masked", relu + [dense(512, 1.1, 0.1), act("Erf"), READOUT], (6, 5), ("entries", -3.))
    add("seq_entries_masked", relu + [GAP, READOUT], seq, ("entries", 10.))
    _local_cases(add, seq)
    return c


def _local_cases(add, seq):
    """Convolutions, local pooling and attention with positional embeddings (issue 14, item 3)."""
    img, pixels = (4, 5, 6, 2), ("pixels", 10.)
    relu = [dense(64, 1.3, 0.2), act("Relu")]
    # Conv: every padding, strides, even filters, a spatial output and a stack of two.
    add("seq_conv_same_relu_gap", [conv(64, (3,), "SAME", 1.2, 0.1), act("Relu"), GAP, READOUT], seq)
    add("seq_conv_valid_stride2_flatten", [conv(64, (3,), "VALID", 1.1, 0.2, strides=(2,)), act("Relu"), FLATTEN,
                                           READOUT], seq)
    add("seq_conv_same_even_stride2_gap", [conv(64, (4,), "SAME", 1.0, 0.1, strides=(2,)), act("Erf"), GAP,
                                           READOUT], seq)
    add("seq_conv_circular_gap", [conv(64, (3,), "CIRCULAR", 1.3, 0.1), act("Relu"), GAP, READOUT], seq)
    add("seq_conv_conv_spatial_output", [conv(64, (2,), "SAME", 1.2, 0.1), act("Relu"),
                                         conv(64, (3,), "VALID", 0.9, 0.2)], seq)
    # AvgPool / SumPool: padding, strides, normalize_edges.
    add("seq_avgpool_valid_spatial_output", relu + [pool("AvgPool", (3,))], seq)
    add("seq_avgpool_same_stride2_gap", relu + [pool("AvgPool", (3,), (2,), "SAME"), GAP, READOUT], seq)
    add("seq_avgpool_same_normalize_edges_flatten", relu + [pool("AvgPool", (4,), (3,), "SAME", normalize_edges=True),
                                                             FLATTEN, READOUT], seq)
    add("seq_sumpool_valid_gap", relu + [pool("SumPool", (2,)), GAP, READOUT], seq)
    add("seq_sumpool_same_stride2_spatial_output", relu + [pool("SumPool", (3,), (2,), "SAME")], seq)
    # Attention with positional embeddings, the imdb.py network (Conv or Dense embedding, attention, pooling).
    add("seq_imdb_conv_sum_onehot", [conv(48, (3,), "SAME", 1.0, 0.1), act("Relu"),
                                     embedded("SUM", b_std=0.1), act("Relu"), GAP, dense(1)], seq)
    add("seq_imdb_conv_sum_exp", [conv(48, (3,), "SAME", 1.0, 0.1), act("Relu"),
                                  embedded("SUM", decay="exp", p_norm=1), act("Relu"), GAP, dense(1)], seq)
    add("seq_dense_concat_val1_inverse_gap", [dense(48, 1.3, 0.1), act("Relu"),
                                              embedded("CONCAT", val_pos_emb=True, decay="inverse"), GAP, READOUT],
        seq)
    add("seq_concat_nchan96_exp_slow_spatial_output", [dense(48, 1.3, 0.1),
                                                       embedded("CONCAT", n_chan_pos_emb=96, decay="exp_slow",
                                                                p_norm=1.5)], seq)
    add("seq_sum_identity_sqrt_val0_exp_gap", [dense(48, 1.3, 0.1), embedded("SUM", "IDENTITY", False,
                                                                            decay="exp", p_norm=2), GAP, READOUT],
        seq)
    add("seq_concat_identity_sqrt_val1_onehot", [dense(48, 1.3, 0.1), embedded("CONCAT", "IDENTITY", False,
                                                                               val_pos_emb=True)], seq)
    add("seq_sum_relu_val1_inverse_gap", [dense(48, 1.3, 0.1), embedded("SUM", "RELU", val_pos_emb=True,
                                                                         decay="inverse", b_std=0.3), GAP, READOUT],
        seq)
    add("seq_concat_abs_gap", [dense(48, 1.3, 0.1), embedded("CONCAT", "ABS", decay="exp", p_norm=1), GAP,
                               READOUT], seq)
    # ConvTranspose and ConvLocal.
    add("seq_convtranspose_valid_stride2_gap", [dense(8), conv_more("ConvTranspose", 64, (3,), (2,), "VALID"),
                                                act("Relu"), GAP, READOUT], seq)
    add("seq_convtranspose_same_stride2_spatial_output", [dense(8), conv_more("ConvTranspose", 64, (3,), (2,),
                                                                              "SAME")], seq)
    add("seq_convtranspose_circular_gap", [dense(8), conv_more("ConvTranspose", 64, (2,), (3,), "CIRCULAR"),
                                           act("Relu"), GAP, READOUT], seq)
    add("seq_convlocal_same_flatten", [conv_more("ConvLocal", 64, (3,), (1,), "SAME"), act("Relu"), FLATTEN,
                                       READOUT], seq)
    add("seq_convlocal_valid_stride2_gap", [dense(8), conv_more("ConvLocal", 64, (3,), (2,), "VALID"),
                                            act("Relu"), GAP, READOUT], seq)
    # 2-D images with masked pixels (and, for one, masked rows).
    add("img_conv_same_valid_gap", [conv(64, (3, 3), "SAME", 1.2, 0.1), act("Relu"),
                                    conv(64, (2, 3), "VALID", 1.1, 0.1, strides=(1, 2)), act("Relu"), GAP, READOUT],
        img, pixels)
    add("img_conv_avgpool_flatten", [conv(64, (3, 3), "SAME", 1.2, 0.1), act("Relu"),
                                     pool("AvgPool", (2, 2), (2, 2), "SAME"), FLATTEN, READOUT], img, pixels)
    add("img_sumpool_spatial_output", relu + [pool("SumPool", (2, 2))], img, pixels)
    add("img_conv_attention_sum_val1_exp_gap", [conv(48, (2, 3), "SAME", 1.0, 0.1), act("Relu"),
                                                embedded("SUM", val_pos_emb=True, decay="exp", p_norm=1), GAP,
                                                READOUT], img, pixels)
    add("img_rows_conv_circular_concat_gap", [conv(48, (3, 2), "CIRCULAR", 1.0, 0.1), act("Relu"),
                                              embedded("CONCAT", decay="inverse"), GAP, READOUT], img)
    add("img_convtranspose_same_gap", [dense(8), conv_more("ConvTranspose", 64, (2, 2), (2, 2), "SAME"),
                                       act("Relu"), GAP, READOUT], img, pixels)


def masked_inputs(name, shape, masking):
    kind, constant = masking
    x = reference._inputs(name, shape)
    rng = np.random.default_rng([reference.SEED, len(name), shape[0]])
    if kind == "lengths":
        lengths = rng.integers(1, shape[1] + 1, shape[0])
        lengths[-1] = 0  # one example with every position masked
        if shape[0] > 1:
            lengths[0] = shape[1]  # and one with none
        positions = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
        mask = positions >= lengths.reshape((-1,) + (1,) * (len(shape) - 1))
        mask = np.broadcast_to(mask, shape)
    elif kind == "pixels":  # whole positions (every channel), one example with all of them
        mask = rng.random(shape[:-1]) < 0.3
        mask[-1] = True
        mask = np.broadcast_to(mask[..., None], shape)
    else:
        mask = rng.random(shape) < 0.4
    return np.where(mask, constant, x)


def case(name, spec, x1_shape, x2_shape, masking):
    x1, x2 = masked_inputs(name + "/x1", x1_shape, masking), masked_inputs(name + "/x2", x2_shape, masking)
    constant = masking[1]
    decays = any(isinstance(kwargs, dict) and kwargs.get("pos_emb_decay_fn") for _, kwargs in spec)
    # Specs without a decay function are built flat, so that init_fn's parameters come layer by layer.
    init_fn, apply_fn, kernel_fn = (reference_attention if decays else reference).network_from_spec(spec)
    k12 = kernel_fn(x1, x2, mask_constant=constant)
    k11 = kernel_fn(x1, None, mask_constant=constant)
    nngp, nngp_11 = reference._unreversed(k12, "nngp"), reference._unreversed(k11, "nngp")
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2, "mask_constant": np.array(constant),
              "nngp": nngp, "ntk": reference._full(reference._unreversed(k12, "ntk"), nngp),
              "nngp_11": nngp_11, "ntk_11": reference._full(reference._unreversed(k11, "ntk"), nngp_11)}
    if name in APPLY_CASES:
        _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
        for i, layer_params in enumerate(params):
            layer_params = layer_params if isinstance(layer_params, (tuple, list)) else ()
            if len(layer_params) == 1 and isinstance(layer_params[0], (tuple, list)):
                layer_params = layer_params[0]  # a layer that network_from_spec wrapped in a serial of one
            record[f"param/{i}/len"] = np.array(len(layer_params))  # absent arrays below are None
            for j, p in enumerate(layer_params):
                if p is not None:
                    record[f"param/{i}/{j}"] = np.asarray(p)
        record["apply"] = np.asarray(stax.unmask_fn(apply_fn)(params, x1, mask_constant=constant))
    for key in ("nngp", "ntk", "nngp_11", "ntk_11"):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    print(f"  {name}: nngp {record['nngp'].shape}")
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    data, names = {}, []
    for name, args in _cases().items():
        data.update(case(name, *args))
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_decay_fns"] = np.array(json.dumps(reference_attention.DECAY_FNS))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT}: {len(names)} cases")


if __name__ == "__main__":
    main()
