"""Reference values of neural-tangents 0.6.5 for ``kernel_fn(..., diagonal_batch=False)`` (also applied to a
`Kernel`) and for every layout of ``FanInConcat(axis)``, for widekit's tests.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_keywords2.py

It writes ``tests/data/nt_keywords2_reference.npz``: for each case ``NAME`` (listed in the JSON ``_cases``
with its network as a spec in the format of ``tests/data/nt_reference.README.md``, the keywords passed to
``kernel_fn`` and, for ``kernel_fn(Kernel)`` cases, the spec ``then`` of the second network), the inputs
``NAME/x1``, ``NAME/x2`` (absent for ``x2=None``) and the arrays ``NAME/nngp``, ``NAME/ntk``,
``NAME/cov1``, ``NAME/cov2`` (absent where neural-tangents gives ``None``: ``x2=None``) of
``kernel_fn(x1, x2, None, **keywords)``, or of ``then_kernel_fn(kernel_fn(x1, x2, None, **keywords))``.
Everything in float64.
"""
import json
import os
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "nt_keywords2_reference.npz")


def conv(c, f, padding="SAME", **kwargs):
    return ["Conv", dict(out_chan=c, filter_shape=list(f), padding=padding, **kwargs)]


def dense(n, **kwargs):
    return ["Dense", dict(out_dim=n, **kwargs)]


def fan_in_concat(branches, axis):
    return [["FanOut", {"num": len(branches)}], ["parallel", branches], ["FanInConcat", {"axis": axis}]]


RELU, ERF, FLATTEN, GAP = ["Relu", {}], ["Erf", {}], ["Flatten", {}], ["GlobalAvgPool", {}]
NCHW = {"dimension_numbers": ["NCHW", "OIHW", "NCHW"]}
CONV = [conv(6, (3, 3), W_std=1.5, b_std=0.1), RELU, conv(6, (2, 2), "VALID", W_std=1.2, b_std=0.05), ERF]
IMG1, IMG2 = (3, 5, 4, 2), (2, 5, 4, 2)

DIAGONAL_BATCH = {
    "db_mlp": ([dense(7, W_std=1.4, b_std=0.1), RELU, dense(5), ERF, dense(2)], (4, 3), (3, 3), {}),
    "db_mlp_x2none": ([dense(7, W_std=1.4, b_std=0.1), RELU, dense(5), ERF, dense(2)], (4, 3), None, {}),
    "db_conv_pool": (CONV + [GAP, dense(2)], IMG1, IMG2, {}),
    "db_conv_flatten_x2none": (CONV + [FLATTEN, dense(2)], IMG1, None, {}),
    "db_conv_pairs": (CONV, IMG1, IMG2, {}),
    "db_conv_pairs_x2none": (CONV, IMG1, None, {}),
    "db_conv_diagonal_spatial": (CONV, IMG1, IMG2, {"diagonal_spatial": True}),
    "db_conv_diagonal_spatial_x2none": (CONV, IMG1, None, {"diagonal_spatial": True}),
    "db_attention": ([conv(6, (1,), W_std=1.3), ["GlobalSelfAttention", dict(n_chan_out=6, n_chan_key=6,
                                                                              n_chan_val=6, n_heads=2)],
                      RELU, GAP, dense(1)], (3, 4, 2), (2, 4, 2), {}),
}
# kernel_fn(Kernel): the second network applied to the first's diagonal_batch=False kernel.
ON_KERNEL = {
    "db_on_kernel": ([conv(6, (3, 3), W_std=1.5, b_std=0.1), RELU],
                     [conv(6, (2, 2), "VALID", W_std=1.2), RELU, GAP, dense(2)], IMG1, IMG2, {}),
    "db_on_kernel_x2none": ([dense(7, W_std=1.4, b_std=0.1), RELU], [dense(5), ERF, dense(1)], (4, 3), None, {}),
}
CONCAT = {
    "concat_mlp_channel_neg": ([dense(6, W_std=1.3, b_std=0.1), RELU] + fan_in_concat(
        [[dense(5, W_std=1.2), RELU], [dense(7, W_std=0.9, b_std=0.2), ERF]], -1) + [dense(3, W_std=1.1)],
        (3, 4), (2, 4), {}),
    "concat_mlp_channel_pos": ([dense(6, W_std=1.3, b_std=0.1), RELU] + fan_in_concat(
        [[dense(5, W_std=1.2), RELU], [dense(7, W_std=0.9, b_std=0.2)]], 1) + [dense(4), RELU, dense(3)],
        (3, 4), None, {}),
    "concat_mlp_three_channel": (fan_in_concat([[dense(4), RELU], [dense(6, W_std=1.4), ERF], [dense(2, b_std=0.3)]],
                                               -1) + [dense(3)], (3, 4), (2, 4), {}),
    "concat_mlp_batch_axis": ([dense(6, W_std=1.3), RELU] + fan_in_concat(
        [[dense(5, W_std=1.2)], [dense(5, W_std=0.9, b_std=0.2)]], 0) + [RELU, dense(3)], (3, 4), (2, 4), {}),
    "concat_mlp_batch_axis_x2none": ([dense(6, W_std=1.3), RELU] + fan_in_concat(
        [[dense(5, W_std=1.2)], [dense(5, W_std=0.9, b_std=0.2)]], 0) + [RELU, dense(3)], (3, 4), None, {}),
    "concat_conv_channel_neg": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2), RELU], [conv(7, (3, 3), W_std=0.9, b_std=0.1), ERF]], -1)
        + [conv(5, (2, 2)), RELU, FLATTEN, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_channel_neg_diagonal_spatial": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2), RELU], [conv(7, (3, 3), W_std=0.9, b_std=0.1), ERF]], -1)
        + [conv(5, (2, 2)), RELU, FLATTEN, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {"diagonal_spatial": True}),
    "concat_conv_channel_pos": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2), RELU], [conv(7, (3, 3), W_std=0.9, b_std=0.1), ERF]], 3)
        + [conv(5, (2, 2)), RELU, GAP, dense(2)], (2, 5, 4, 2), None, {}),
    "concat_conv_spatial_h": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2)], [conv(4, (3, 3), W_std=0.9, b_std=0.1)]], 1)
        + [RELU, conv(5, (2, 2)), RELU, GAP, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_spatial_w_neg": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2)], [conv(4, (3, 3), W_std=0.9, b_std=0.1)]], -2)
        + [RELU, conv(5, (2, 2)), RELU, FLATTEN, dense(2)], (2, 5, 4, 2), None, {}),
    "concat_conv_spatial_w_neg_diagonal_spatial": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2)], [conv(4, (3, 3), W_std=0.9, b_std=0.1)]], -2)
        + [RELU, conv(5, (2, 2)), RELU, FLATTEN, dense(2)], (2, 5, 4, 2), None, {"diagonal_spatial": True}),
    "concat_conv_spatial_h_neg3": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2)], [conv(4, (3, 3), W_std=0.9, b_std=0.1)]], -3) + [RELU, GAP, dense(2)],
        (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_spatial_sizes_differ": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2)], [conv(4, (3, 2), "VALID", W_std=0.9, b_std=0.1)]], 1)
        + [RELU, conv(5, (2, 2)), RELU, GAP, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_three_sizes_w_flatten": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2)], [conv(4, (2, 3), "VALID", W_std=0.9, b_std=0.1)],
         [conv(4, (2, 1), "VALID")]], 2) + [RELU, conv(3, (2, 2)), RELU, FLATTEN, dense(2)],
        (2, 5, 5, 2), (3, 5, 5, 2), {}),
    "concat_conv_three_sizes_w_diagonal_spatial": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2)], [conv(4, (2, 3), "VALID", W_std=0.9, b_std=0.1)],
         [conv(4, (2, 1), "VALID")]], 2) + [RELU, conv(3, (2, 2)), RELU, FLATTEN, dense(2)],
        (2, 5, 5, 2), (3, 5, 5, 2), {"diagonal_spatial": True}),
    "concat_conv_spatial_strided": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), strides=[2, 1])], [conv(4, (3, 3), W_std=0.9)]], 1) + [RELU, GAP, dense(2)],
        (2, 6, 4, 2), (3, 6, 4, 2), {}),
    "concat_conv1d_spatial": ([conv(6, (3,), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2,), "VALID", W_std=1.2)], [conv(4, (3,), W_std=0.9, b_std=0.1)]], 1) + [RELU, GAP, dense(2)],
        (2, 7, 2), (3, 7, 2), {}),
    "concat_conv1d_channel_pos": ([conv(6, (3,), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2,), W_std=1.2), RELU], [conv(3, (3,), W_std=0.9, b_std=0.1)]], 2)
        + [conv(3, (2,)), RELU, FLATTEN, dense(2)], (2, 7, 2), (3, 7, 2), {}),
    "concat_conv_batch_axis": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2)], [conv(4, (3, 3), W_std=0.9, b_std=0.1)]], 0)
        + [RELU, conv(5, (2, 2)), RELU, GAP, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_branch_without_weights": ([conv(6, (3, 3), W_std=1.3)] + fan_in_concat(
        [[conv(6, (2, 2))], [["Identity", {}]]], -3) + [RELU, FLATTEN, dense(2)], (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_conv_spatial_pairs_out": ([conv(6, (3, 3), W_std=1.3), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2)], [conv(4, (3, 2), "VALID", W_std=0.9, b_std=0.1)]], 1) + [RELU],
        (2, 5, 4, 2), (3, 5, 4, 2), {}),
    "concat_nchw_channel_axis1": ([conv(6, (3, 3), W_std=1.3, **NCHW), RELU] + fan_in_concat(
        [[conv(4, (2, 2), W_std=1.2, **NCHW), RELU], [conv(7, (3, 3), W_std=0.9, b_std=0.1, **NCHW)]], 1)
        + [conv(5, (2, 2), **NCHW), RELU, FLATTEN, dense(2)], (2, 2, 5, 4), (3, 2, 5, 4), {}),
    "concat_nchw_spatial_axis2": ([conv(6, (3, 3), W_std=1.3, **NCHW), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2, **NCHW)], [conv(4, (3, 2), "VALID", W_std=0.9, b_std=0.1, **NCHW)]],
        2) + [RELU, conv(5, (2, 2), **NCHW), RELU, FLATTEN, dense(2)], (2, 2, 5, 4), (3, 2, 5, 4), {}),
    "concat_nchw_spatial_neg1": ([conv(6, (3, 3), W_std=1.3, **NCHW), RELU] + fan_in_concat(
        [[conv(4, (2, 2), "VALID", W_std=1.2, **NCHW)], [conv(4, (2, 3), "VALID", W_std=0.9, b_std=0.1, **NCHW)]],
        -1) + [RELU, conv(5, (2, 2), **NCHW), RELU, FLATTEN, dense(2)], (2, 2, 5, 4), (3, 2, 5, 4), {}),
}


def build(spec):
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[build(branch) for branch in kwargs]))
            continue
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def main():
    warnings.simplefilter("ignore")  # FanIn layers warn that branches are assumed independent
    arrays, listing = {}, {}
    cases = [(n, spec, None, s1, s2, kw) for n, (spec, s1, s2, kw) in {**DIAGONAL_BATCH, **CONCAT}.items()]
    cases += [(n, spec, then, s1, s2, kw) for n, (spec, then, s1, s2, kw) in ON_KERNEL.items()]
    for i, (name, spec, then, shape1, shape2, keywords) in enumerate(cases):
        rng = np.random.RandomState(2000 + i)
        x1 = rng.randn(*shape1)
        x2 = None if shape2 is None else rng.randn(*shape2)
        nt_keywords = {k: v for k, v in keywords.items()}
        if name.startswith("db_"):
            nt_keywords["diagonal_batch"] = False
        k = build(spec)[2](x1, x2, None, **nt_keywords)
        if then is not None:
            k = build(then)[2](k)
        arrays[f"{name}/x1"] = x1
        if x2 is not None:
            arrays[f"{name}/x2"] = x2
        for field in ("nngp", "ntk", "cov1", "cov2"):
            if getattr(k, field) is not None:
                arrays[f"{name}/{field}"] = np.asarray(getattr(k, field))
        listing[name] = {"spec": spec, "keywords": nt_keywords, **({"then": then} if then is not None else {})}
        print(name, k.nngp.shape, k.cov1.shape, None if k.cov2 is None else k.cov2.shape)
    np.savez_compressed(OUT, _cases=json.dumps(listing), **arrays)


if __name__ == "__main__":
    main()
