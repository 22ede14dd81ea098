"""Reference kernels from neural-tangents 0.6.5 for the layers of ``kernels/stax/extra.py``.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_layers2.py

It writes ``tests/data/nt_layers2_reference.npz`` (format: ``tests/data/nt_layers2_reference.README.md``):
the format of ``nt_reference.npz`` (``_cases``, ``NAME/spec``, ``NAME/x1``, ``NAME/x2``,
``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``) plus ``NAME/nngp_xx``,
``NAME/ntk_xx`` (``kernel_fn(x1, x1)``: Dropout treats an ``x2`` equal to ``x1`` as the same
batch). Networks use Gabor, ExpNormalized, Dropout, Index, ImageResize and Dense's ``s``.
Everything is float64 from a fixed seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

act, conv, dense = reference.act, reference.conv, reference.dense
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_layers2_reference.npz")


def decode_index(items):
    """A JSON ``idx``: a list of ints, ``"..."`` and ``[start, stop, step]`` (a slice)."""
    return tuple(Ellipsis if i == "..." else slice(*i) if isinstance(i, list) else i for i in items)


def network_from_spec(spec):
    """As ``reference.network_from_spec``, with ``Index``'s ``idx`` decoded."""
    layers = []
    for name, kwargs in spec:
        if name == "Index":
            layers.append(stax.Index(decode_index(kwargs["idx"])))
        else:
            layers.append(reference.network_from_spec([[name, kwargs]]))
    return stax.serial(*layers)


def index(*items):
    return ["Index", {"idx": list(items)}]


def resize(shape, method, **extra):
    return ["ImageResize", dict(shape=list(shape), method=method, **extra)]


def _cases():
    mlp, img = (6, 5), (4, 6, 6, 3)
    conv_relu = [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1), act("Relu")]
    c = {}

    def add(name, spec, x1_shape):
        c[name] = (spec, x1_shape, (x1_shape[0] - 1,) + x1_shape[1:])

    # Activations.
    add("mlp_gabor", [dense(512, 1.3, 0.2), act("Gabor"), dense(512, 1.5, 0.1), act("Gabor"), READOUT], mlp)
    add("cnn2d_gabor_gap", [conv(64, (3, 3), "SAME", W_std=1.6, b_std=0.2), act("Gabor"), GAP, READOUT], img)
    add("mlp_expnormalized", [dense(512, 1.3, 0.2), act("Relu"), dense(512, 1.2, 0.1),
                              act("ExpNormalized", gamma=1.3, shift=-0.8), READOUT], mlp)
    add("mlp_expnormalized_default_clip", [dense(512, 1.1, 0.3), act("ExpNormalized", do_clip=True),
                                           dense(512, 0.9, 0.1), act("Relu"), READOUT], mlp)
    add("cnn2d_expnormalized_gap", conv_relu + [conv(64, (2, 2), "SAME", W_std=1.2),
                                                act("ExpNormalized", gamma=0.7, shift=-1.2), GAP, READOUT], img)

    # Dropout.
    add("mlp_dropout_train", [dense(512, 1.3, 0.2), act("Relu"), ["Dropout", {"rate": 0.7}],
                              dense(512, 1.2, 0.1), act("Erf"), READOUT], mlp)
    add("mlp_dropout_test", [dense(512, 1.3, 0.2), act("Relu"), ["Dropout", {"rate": 0.7, "mode": "test"}],
                             dense(512, 1.2, 0.1), act("Erf"), READOUT], mlp)
    add("cnn2d_dropout_train_gap", conv_relu + [["Dropout", {"rate": 0.6}], conv(64, (2, 2), "SAME", W_std=1.2),
                                                act("Relu"), GAP, READOUT], img)
    add("cnn2d_dropout_train_flatten", conv_relu + [["Dropout", {"rate": 0.5}], conv(64, (2, 2), "VALID"),
                                                    act("Relu"), FLATTEN, READOUT], img)

    # Index.
    add("cnn2d_index_crop_gap", conv_relu + [index([None, None, None], [1, 5, None], [None, None, 2]),
                                             conv(64, (2, 2), "SAME", W_std=1.2), act("Relu"), GAP, READOUT], img)
    add("cnn2d_index_reverse_flatten", conv_relu + [index("...", [None, None, -1], [None, None, None]),
                                                    conv(64, (2, 2), "VALID"), act("Relu"), FLATTEN, READOUT], img)
    add("cnn2d_index_row_conv1d", conv_relu + [index([None, None, None], 2),
                                               conv(64, (3,), "SAME", W_std=1.2), act("Relu"), GAP, READOUT], img)
    add("cnn2d_index_spatial_output", conv_relu + [index([None, None, None], [4, 0, -2])], (4, 5, 6, 3))

    # ImageResize. neural-tangents 0.6.5 resizes the wrong spatial axes after an odd number of
    # Convs (its ImageResize ignores Kernel.is_reversed: shape (-1, -1, 4, -1) after one Conv
    # resized H, not W), so two Convs come first here.
    two_convs = conv_relu + [conv(64, (2, 2), "SAME", W_std=1.2, b_std=0.1), act("Relu")]
    for method in ("linear", "nearest"):
        add(f"cnn2d_resize_{method}_up_gap", two_convs + [resize((-1, 9, 7, -1), method),
                                                          conv(64, (2, 2), "SAME"), act("Relu"), GAP, READOUT], img)
        add(f"cnn2d_resize_{method}_down_flatten", two_convs + [resize((-1, 4, 3, -1), method), FLATTEN, READOUT],
            img)
    add("cnn2d_resize_linear_down_no_antialias_gap", two_convs + [resize((-1, 4, 3, -1), "linear", antialias=False),
                                                                  GAP, READOUT], img)
    add("cnn2d_resize_linear_one_axis_spatial_output", two_convs + [resize((-1, -1, 4, -1), "bilinear")], img)
    add("resize_inputs_nearest_first", [resize((-1, 5, 8, -1), "nearest"), conv(64, (3, 3), "SAME", W_std=1.3),
                                        act("Relu"), GAP, READOUT], img)

    # Dense's width scalings s (standard parameterization).
    def dense_s(out_dim, W_std, b_std, s):
        return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std, "parameterization": "standard",
                          "s": list(s)}]
    add("mlp_dense_standard_s", [dense_s(256, 1.3, 0.2, (1, 2)), act("Relu"), dense_s(256, 1.2, 0.1, (2, 3)),
                                 act("Relu"), dense_s(1, 1.1, 0.05, (3, 1))], mlp)
    # Conv's width scalings s, the same way.
    add("cnn2d_conv_standard_s", [conv(64, (3, 3), "SAME", W_std=1.3, b_std=0.2, parameterization="standard",
                                       s=[1, 2]), act("Relu"),
                                  conv(64, (2, 2), "VALID", W_std=1.2, b_std=0.1, strides=(2, 1),
                                       parameterization="standard", s=[2, 3]), act("Relu"), GAP,
                                  dense_s(1, 1.1, 0.05, (3, 1))], img)
    return c


def kernel_case(name, spec, x1_shape, x2_shape):
    x1, x2 = reference._inputs(name + "/x1", x1_shape), reference._inputs(name + "/x2", x2_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init_fn, _, kernel_fn = network_from_spec(spec)
        out_shape, _ = init_fn(jax.random.PRNGKey(0), x1_shape)
        kernels = {"": kernel_fn(x1, x2), "_11": kernel_fn(x1, None), "_xx": kernel_fn(x1, x1)}
    for message in sorted({" ".join(str(w.message).split()) for w in caught}):
        print(f"  {name}: neural-tangents warns: {message}")
    arrays = {}
    for suffix, k in kernels.items():
        nngp = reference._unreversed(k, "nngp")
        arrays["nngp" + suffix] = nngp
        arrays["ntk" + suffix] = reference._full(reference._unreversed(k, "ntk"), nngp)
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f"non-finite values in {key}")
    print(f"  {name}: output {tuple(out_shape)} -> nngp {arrays['nngp'].shape}")
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2, **arrays}
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, (spec, x1_shape, x2_shape) in _cases().items():
        data.update(kernel_case(name, spec, x1_shape, x2_shape))  # a refusal is an error here: every case must run
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
