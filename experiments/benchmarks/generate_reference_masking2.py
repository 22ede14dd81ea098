"""neural-tangents 0.6.5 reference values of masked inputs (``mask_constant``) through `Dropout`,
`Index` (`Slice`), `ImageResize` and `ExpNormalized`.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_masking2.py

It writes ``tests/data/nt_masking2_reference.npz`` (format: ``tests/data/nt_masking2_reference.README.md``),
in the records of ``nt_masking_reference.npz``: per case ``NAME/spec`` (``Index``'s ``idx`` in the
JSON of ``nt_layers2_reference.README.md``), ``NAME/x1``, ``NAME/x2`` (masked entries hold
``NAME/mask_constant``), ``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``; for
train-mode Dropout also ``NAME/nngp_xx``, ``NAME/ntk_xx`` (``x2 = x1``: the same batch); for the
cases with a finite network compared, the parameters ``NAME/param/I/J`` of ``init_fn(PRNGKey(3),
x1.shape)`` (layer ``I``'s tuple has ``NAME/param/I/len`` entries; an absent ``J`` is ``None``)
and ``NAME/apply`` (``unmask_fn(apply_fn)(params, x1, mask_constant=c, rng=PRNGKey(5))``). The
apply-only cases (``_apply_only``: what neural-tangents' ``kernel_fn`` refuses: cubic and lanczos
resizing, indexing or resizing the batch axis, resizing the inputs themselves) have ``NAME/x1``,
the parameters and ``NAME/apply`` only.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import generate_reference_layers2 as layers2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

act, dense, conv = reference.act, reference.dense, reference.conv
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
index, resize = layers2.index, layers2.resize
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_masking2_reference.npz")
SEQ, IMG = (5, 7, 3), (4, 5, 6, 2)
PAD = 10.

# Cases whose finite network is compared too.
APPLY_CASES = ("seq_dropout_index_resize_gap", "seq_dropout_train_gap", "seq_dropout_test_flatten",
               "seq_index_crop_gap", "img_index_row_conv1d_gap", "seq_resize_linear_up_gap",
               "img_resize_nearest_up_conv_gap")


def _cases():
    """``name -> (spec, x1 shape, masking)``: ``"lengths"`` pads each sequence after a length drawn per
    example (the first example keeps all, the last none), ``"pixels"`` masks whole positions with
    probability 0.3 and every position of the last example."""
    relu = [dense(64, 1.3, 0.2), act("Relu")]  # widths: the kernels do not depend on them; parameters stay small
    after = [dense(64, 1.2, 0.1), act("Relu")]
    conv_relu = [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1), act("Relu")]
    c = {}

    def add(name, spec, shape=SEQ, masking="lengths"):
        c[name] = (spec, shape, masking)

    # The three layers in one network (the default suite's case).
    add("seq_dropout_index_resize_gap", relu + [["Dropout", {"rate": 0.7}], index([None, None, None], [1, 6, None]),
                                                resize((-1, 9, -1), "linear")] + after + [GAP, READOUT])
    # Dropout (keep rate), train and test mode.
    add("seq_dropout_train_gap", relu + [["Dropout", {"rate": 0.7}]] + after + [GAP, READOUT])
    add("seq_dropout_test_flatten", relu + [["Dropout", {"rate": 0.5, "mode": "test"}], FLATTEN, READOUT])
    add("seq_dropout_train_spatial_output", relu + [["Dropout", {"rate": 0.6}], dense(64, 0.9, 0.1)])
    add("img_dropout_train_conv_gap", conv_relu + [["Dropout", {"rate": 0.6}], conv(64, (2, 2), "SAME", W_std=1.2),
                                                   act("Relu"), GAP, READOUT], IMG, "pixels")
    # Index along spatial axes: crops, strides, reversal, an axis removed, every axis removed, the inputs.
    add("seq_index_crop_gap", relu + [index([None, None, None], [1, 6, None])] + after + [GAP, READOUT])
    add("seq_index_reverse_stride_flatten", relu + [index([None, None, None], [None, None, -2]), FLATTEN, READOUT])
    add("seq_index_one_position", relu + [index([None, None, None], 3), dense(64, 1.1, 0.1), act("Erf"), READOUT])
    add("seq_index_inputs_first", [index([None, None, None], [2, None, None])] + relu + [GAP, READOUT])
    add("img_index_row_conv1d_gap", conv_relu + [index([None, None, None], 2), conv(64, (3,), "SAME", W_std=1.2),
                                                 act("Relu"), GAP, READOUT], IMG, "pixels")
    add("img_index_crop_spatial_output", conv_relu + [index("...", [4, 0, -2], [1, 5, None], [None, None, None])],
        IMG, "pixels")
    # ImageResize (linear and nearest: the methods neural-tangents' kernel_fn takes); Dense, not Conv,
    # before it (after an odd number of Convs neural-tangents 0.6.5 resizes the wrong axes).
    add("seq_resize_linear_up_gap", relu + [resize((-1, 11, -1), "linear")] + after + [GAP, READOUT])
    add("seq_resize_nearest_down_flatten", relu + [resize((-1, 4, -1), "nearest"), FLATTEN, READOUT])
    add("seq_resize_linear_down_no_antialias_spatial_output", relu + [resize((-1, 4, -1), "linear", antialias=False)])
    add("img_resize_linear_down_gap", relu + [resize((-1, 3, 4, -1), "linear"), GAP, READOUT], IMG, "pixels")
    add("img_resize_nearest_up_conv_gap", relu + [resize((-1, 7, 9, -1), "nearest"),
                                                  conv(64, (2, 2), "SAME", W_std=1.2), act("Relu"), GAP, READOUT],
        IMG, "pixels")
    # ExpNormalized, a kernel map (no finite network): zero at masked positions (remasked, as neural-tangents).
    add("seq_expnormalized_conv_gap", [conv(64, (2,), "SAME", W_std=1.3, b_std=0.1),
                                       act("ExpNormalized", gamma=0.7, shift=-0.5), GAP, READOUT])
    add("img_expnormalized_clip_spatial_output", [dense(64, 1.2, 0.1), act("ExpNormalized", do_clip=True),
                                                  conv(64, (2, 2), "SAME", W_std=1.1), act("Relu")], IMG, "pixels")
    return c


def _apply_only_cases():
    """``name -> (spec, x1 shape, masking)`` of finite networks only."""
    relu = [dense(16, 1.3, 0.2), act("Relu")]
    return {
        "seq_resize_cubic_apply": (relu + [resize((-1, 11, -1), "cubic"), dense(4)], SEQ, "lengths"),
        "seq_resize_lanczos3_down_apply": (relu + [resize((-1, 4, -1), "lanczos3"), dense(4)], SEQ, "lengths"),
        "img_resize_lanczos5_apply": (relu + [resize((-1, 8, 3, -1), "lanczos5")], IMG, "pixels"),
        "seq_index_batch_apply": (relu + [index([1, None, None], [None, 5, None]), dense(4)], SEQ, "lengths"),
        "seq_index_channels_apply": ([index("...", [1, 3, None])] + relu + [dense(4)], SEQ, "lengths"),
        # the batch and channel axes resized too (the mask along the batch axis, as neural-tangents')
        "seq_resize_batch_channels_apply": (relu + [resize((3, 9, 5), "linear")], SEQ, "lengths"),
        # neural-tangents' kernel_fn refuses resizing the inputs themselves (their mask is per entry)
        "seq_resize_inputs_first_apply": ([resize((-1, 10, -1), "linear")] + relu + [dense(4)], SEQ, "lengths"),
    }


def network_from_spec(spec):
    """``stax.serial`` of the spec's layers, one parameter tuple per item (``Index``'s ``idx`` decoded)."""
    return stax.serial(*[stax.Index(layers2.decode_index(kw["idx"])) if name == "Index" else reference._layer(name, kw)
                         for name, kw in spec])


def masked_inputs(name, shape, masking):
    """Standard normal inputs of ``shape`` with whole positions set to `PAD` (see `_cases`)."""
    x = reference._inputs(name, shape)
    rng = np.random.default_rng([reference.SEED, len(name), shape[0]])
    if masking == "lengths":
        lengths = rng.integers(1, shape[1] + 1, shape[0])
        lengths[0], lengths[-1] = shape[1], 0
        mask = np.arange(shape[1])[None, :] >= lengths[:, None]
    else:
        mask = rng.random(shape[:-1]) < 0.3
        mask[-1] = True
    return np.where(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), PAD, x)


def _finite(name, spec, init_fn, apply_fn, x1):
    """``NAME/param/I/J`` and ``NAME/apply`` of the finite network."""
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    record = {}
    for i, layer_params in enumerate(params):
        layer_params = layer_params if isinstance(layer_params, (tuple, list)) else ()
        record[f"param/{i}/len"] = np.array(len(layer_params))
        for j, p in enumerate(layer_params):
            if p is not None:  # a bias of b_std=None: absent
                record[f"param/{i}/{j}"] = np.asarray(p)
    out = stax.unmask_fn(apply_fn)(params, x1, mask_constant=PAD, rng=jax.random.PRNGKey(5))
    record["apply"] = np.asarray(out)
    return record


def case(name, spec, shape, masking, kernels=True):
    x1 = masked_inputs(name + "/x1", shape, masking)
    x2 = masked_inputs(name + "/x2", (shape[0] - 1,) + shape[1:], masking)
    init_fn, apply_fn, kernel_fn = network_from_spec(spec)
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "mask_constant": np.array(PAD)}
    if kernels:
        record["x2"] = x2
        calls = {"": (x1, x2), "_11": (x1, None)}
        if any(item[0] == "Dropout" and item[1].get("mode", "train") == "train" for item in spec):
            calls["_xx"] = (x1, x1)
        for suffix, (a, b) in calls.items():
            k = kernel_fn(a, b, mask_constant=PAD)
            nngp = reference._unreversed(k, "nngp")
            record["nngp" + suffix] = nngp
            record["ntk" + suffix] = reference._full(reference._unreversed(k, "ntk"), nngp)
    if not kernels or name in APPLY_CASES:
        record.update(_finite(name, spec, init_fn, apply_fn, x1))
    for key, value in record.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    print(f"  {name}: " + ", ".join(f"{k} {record[k].shape}" for k in ("nngp", "apply") if k in record))
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    data, names, apply_only = {}, [], []
    for name, args in _cases().items():
        data.update(case(name, *args))
        names.append(name)
    for name, args in _apply_only_cases().items():
        data.update(case(name, *args, kernels=False))
        apply_only.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_apply_only"] = np.array(json.dumps(apply_only))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT}: {len(names)} kernel cases, {len(apply_only)} apply-only cases")


if __name__ == "__main__":
    main()
