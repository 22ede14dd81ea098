"""Reference kernels and predictions from neural-tangents 0.6.5, for widekit's tests.

Run with the reference environment's python (see ``reference_env.sh``)::

    bash experiments/benchmarks/reference_env.sh
    .venv-nt/bin/python experiments/benchmarks/generate_reference.py

It writes two files (format: ``tests/data/nt_reference.README.md``):

- ``tests/data/nt_reference.npz``: closed-form NNGP/NTK of networks the
  vendored oracle (``tests/data/nt065_reference.npz``) does not cover, in the
  oracle's format: ``_cases``, ``NAME/spec``, ``NAME/x1``, ``NAME/x2``,
  ``NAME/nngp``, ``NAME/ntk``, ``NAME/nngp_11``, ``NAME/ntk_11``.
- ``tests/data/nt_predict_reference.npz``: ``nt.predict`` outputs for two
  kernels (MSE ensemble, MSE from kernel matrices, GP inference, the largest
  stable learning rate, cross-entropy gradient descent).

Everything is float64, inputs come from a fixed seed, and a case that
neural-tangents rejects or answers with non-finite values is skipped with its
reason printed.  This script imports neural-tangents, so it never runs in the
main environment; widekit's tests only read its output.
"""
import argparse
import json
import os
import sys
import warnings
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import predict, stax  # noqa: E402

SEED = 20240605
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# JSON lists stand for tuples, except these keyword arguments, which stay lists.
_LIST_KWARGS = {("Polynomial", "coef")}


# --------------------------------------------------------------------------- #
# Network specs -> neural-tangents layers.
# --------------------------------------------------------------------------- #

def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _layer(name, kwargs):
    """One ``[name, kwargs]`` spec item as a neural-tangents layer."""
    if name == "parallel":
        return stax.parallel(*[network_from_spec(branch) for branch in kwargs])
    if name == "serial":
        return network_from_spec(kwargs)
    if name == "repeat":
        return stax.repeat(network_from_spec(kwargs["layer"]), kwargs["n"])
    if name == "ElementwiseNumerical":
        # A function cannot be JSON: "fn" names a function of jax.numpy.
        return stax.ElementwiseNumerical(fn=getattr(jnp, kwargs["fn"]), deg=kwargs["deg"])
    kwargs = {k: (v if (name, k) in _LIST_KWARGS else _as_tuples(v)) for k, v in kwargs.items()}
    return getattr(stax, name)(**kwargs)


def network_from_spec(spec):
    """``spec``: list of ``[LayerName, kwargs]`` (or its JSON) -> ``stax.serial(...)``."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    return stax.serial(*[_layer(name, kwargs) for name, kwargs in spec])


# --------------------------------------------------------------------------- #
# Spec-building shorthands (they only build JSON-able lists).
# --------------------------------------------------------------------------- #

def dense(out_dim, W_std=1.0, b_std=None, parameterization=None):
    kw = {"out_dim": out_dim, "W_std": W_std, "b_std": b_std}
    if parameterization is not None:
        kw["parameterization"] = parameterization
    return ["Dense", kw]


def conv(out_chan, filter_shape, padding, W_std=1.0, b_std=None, strides=None, **extra):
    kw = {"out_chan": out_chan, "filter_shape": list(filter_shape), "padding": padding,
          "W_std": W_std, "b_std": b_std}
    if strides is not None:
        kw["strides"] = list(strides)
    kw.update(extra)
    return ["Conv", kw]


def act(name, **kw):
    return [name, kw]


def attention(mechanism, n_heads, linear_scaling=True, b_std=None, **stds):
    kw = {"n_chan_out": 64, "n_chan_key": 64, "n_chan_val": 64, "n_heads": n_heads,
          "linear_scaling": linear_scaling, "attention_mechanism": mechanism}
    kw.update(stds)
    if b_std is not None:
        kw["b_std"] = b_std
    return ["GlobalSelfAttention", kw]


READOUT = dense(1, W_std=1.1, b_std=0.05)
FLATTEN = ["Flatten", {}]
GAP = ["GlobalAvgPool", {}]


def _cases():
    """All kernel cases: ``name -> (spec, x1_shape, x2_shape)``."""
    mlp, img, img3, seq, img_attn = (6, 5), (4, 6, 6, 3), (3, 4, 4, 4, 2), (4, 8, 3), (4, 3, 3, 3)

    def x2_of(shape):  # a second batch of another size, so (N1, N2) transposes show
        return (shape[0] - 1 if shape[0] <= 4 else shape[0] - 2,) + shape[1:]

    c = {}

    def add(name, spec, x1_shape):
        c[name] = (spec, x1_shape, x2_of(x1_shape))

    conv_relu = [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1), act("Relu")]

    # Pooling.
    add("cnn2d_sumpool_valid_strided", conv_relu + [
        ["SumPool", {"window_shape": [2, 2], "strides": [2, 2], "padding": "VALID"}],
        FLATTEN, READOUT], img)
    add("cnn2d_sumpool_same_strided", conv_relu + [
        ["SumPool", {"window_shape": [3, 3], "strides": [2, 2], "padding": "SAME"}],
        GAP, READOUT], img)
    add("cnn2d_sumpool_valid_default_strides", conv_relu + [
        ["SumPool", {"window_shape": [2, 2]}], FLATTEN, READOUT], img)
    add("cnn1d_sumpool_same", [conv(64, (3,), "SAME", W_std=1.3, b_std=0.2), act("Relu"),
                               ["SumPool", {"window_shape": [3], "strides": [2], "padding": "SAME"}],
                               FLATTEN, READOUT], seq)
    add("cnn2d_globalsumpool", conv_relu + [["GlobalSumPool", {}], READOUT], img)
    add("cnn2d_avgpool_same_strided_normalize_edges", conv_relu + [
        ["AvgPool", {"window_shape": [3, 3], "strides": [2, 2], "padding": "SAME",
                     "normalize_edges": True}], FLATTEN, READOUT], img)
    add("cnn2d_avgpool_same_strided", conv_relu + [
        ["AvgPool", {"window_shape": [3, 3], "strides": [2, 2], "padding": "SAME",
                     "normalize_edges": False}], FLATTEN, READOUT], img)
    add("cnn2d_avgpool_valid_stride1", conv_relu + [
        ["AvgPool", {"window_shape": [2, 2], "strides": [1, 1], "padding": "VALID"}],
        FLATTEN, READOUT], img)
    add("cnn2d_avgpool_valid_default_strides", conv_relu + [
        ["AvgPool", {"window_shape": [2, 2]}], FLATTEN, READOUT], img)

    # 3-D convolutions.
    for padding in ("VALID", "SAME", "CIRCULAR"):
        body = [conv(32, (2, 2, 2), padding, W_std=1.5, b_std=0.1), act("Relu"),
                conv(32, (2, 2, 2), padding, W_std=1.3, b_std=0.05), act("Erf")]
        add(f"cnn3d_{padding.lower()}_flatten", body + [FLATTEN, READOUT], img3)
        add(f"cnn3d_{padding.lower()}_globalavgpool", body + [GAP, READOUT], img3)

    # Strided 1-D convolutions.
    for padding in ("SAME", "VALID"):
        body = [conv(64, (3,), padding, W_std=1.6, b_std=0.1, strides=(2,)), act("Relu"),
                conv(64, (2,), padding, W_std=1.2, b_std=0.05), act("Relu")]
        add(f"cnn1d_strided_{padding.lower()}_flatten", body + [FLATTEN, READOUT], seq)
        add(f"cnn1d_strided_{padding.lower()}_globalavgpool", body + [GAP, READOUT], seq)

    # Strided 2-D convolutions with circular padding.
    body = [conv(64, (3, 3), "CIRCULAR", W_std=1.5, b_std=0.1, strides=(2, 2)), act("Relu"),
            conv(64, (3, 3), "CIRCULAR", W_std=1.3, b_std=0.05, strides=(2, 1)), act("Relu")]
    add("cnn2d_strided_circular_flatten", body + [FLATTEN, READOUT], img)
    add("cnn2d_strided_circular_globalavgpool", body + [GAP, READOUT], img)

    # Standard parameterization.
    for name, b_std in (("bias", 0.2), ("nobias", None)):
        add(f"cnn2d_standard_{name}_flatten", [
            conv(64, (3, 3), "SAME", W_std=1.5, b_std=b_std, parameterization="standard"),
            act("Relu"),
            conv(64, (2, 2), "VALID", W_std=1.2, b_std=b_std, parameterization="standard"),
            act("Relu"), FLATTEN,
            dense(1, W_std=1.1, b_std=b_std, parameterization="standard")], img)
    add("mlp_standard_nobias", [dense(512, 1.5, None, "standard"), act("Relu"),
                                dense(512, 1.3, None, "standard"), act("Relu"),
                                dense(1, 1.1, None, "standard")], mlp)
    add("mlp_standard_zerobias", [dense(512, 1.5, 0.0, "standard"), act("Relu"),
                                  dense(1, 1.1, 0.0, "standard")], mlp)

    # LayerNorm (neural-tangents normalises only Gaussian, i.e. pre-activation, inputs).
    add("mlp_layernorm_last_axis", [dense(512, 1.4, 0.2), ["LayerNorm", {"axis": -1}],
                                    act("Relu"), dense(512, 1.2, 0.1),
                                    ["LayerNorm", {"axis": -1}], act("Erf"), READOUT], mlp)
    cnn_ln = [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1)]
    add("cnn2d_layernorm_axes123_globalavgpool", cnn_ln + [
        ["LayerNorm", {"axis": [1, 2, 3]}], act("Relu"), conv(64, (2, 2), "SAME", W_std=1.2),
        act("Relu"), GAP, READOUT], img)
    add("cnn2d_layernorm_axes123_flatten", cnn_ln + [
        ["LayerNorm", {"axis": [1, 2, 3]}], act("Relu"), FLATTEN, READOUT], img)
    add("cnn2d_layernorm_channel_flatten", cnn_ln + [
        ["LayerNorm", {"axis": -1}], act("Relu"), FLATTEN, READOUT], img)
    add("mlp_layernorm_after_relu_rejected", [dense(512, 1.4, 0.2), act("Relu"),
                                              ["LayerNorm", {"axis": -1}], READOUT], mlp)

    # Activations with non-default arguments.
    def mlp2(activation):
        return [dense(512, 1.3, 0.2), activation, dense(512, 1.2, 0.1), activation, READOUT]

    add("mlp_erf_abc", mlp2(act("Erf", a=1.3, b=0.7, c=0.2)), mlp)
    add("mlp_sin_abc", mlp2(act("Sin", a=0.8, b=1.5, c=0.3)), mlp)
    add("mlp_cos_abc", mlp2(act("Cos", a=1.2, b=0.6, c=-0.4)), mlp)
    add("mlp_gaussian_ab", mlp2(act("Gaussian", a=0.7, b=-0.5)), mlp)
    add("mlp_exp_ab", [dense(512, 0.9, 0.1), act("Exp", a=0.5, b=0.4), READOUT], mlp)
    add("mlp_gelu_deep", [dense(512, 1.4, 0.1), act("Gelu"), dense(512, 1.5, 0.1), act("Gelu"),
                          dense(512, 1.3, 0.2), act("Gelu"), READOUT], mlp)
    add("mlp_gelu_approximate", mlp2(act("Gelu", approximate=True)), mlp)
    add("mlp_tanh_numerical", mlp2(["ElementwiseNumerical", {"fn": "tanh", "deg": 25}]), mlp)
    # deg=25 is ~1e-3 away from the exact kernel; deg=200 agrees with deg=300 to ~1e-9.
    add("mlp_tanh_numerical_deg200", mlp2(["ElementwiseNumerical", {"fn": "tanh", "deg": 200}]),
        mlp)

    # Combinators.
    add("cnn2d_fanin_concat_channel", [
        conv(32, (3, 3), "SAME", W_std=1.2), ["FanOut", {"num": 2}],
        ["parallel", [[conv(32, (3, 3), "SAME", W_std=1.5, b_std=0.1), act("Relu")],
                      [conv(48, (2, 2), "SAME", W_std=1.1, b_std=0.3), act("Erf")]]],
        ["FanInConcat", {"axis": -1}], conv(64, (3, 3), "SAME", W_std=1.3),
        act("Relu"), GAP, READOUT], img)
    add("cnn2d_fanin_concat_channel_flatten", [
        ["FanOut", {"num": 2}],
        ["parallel", [[conv(32, (3, 3), "SAME", W_std=1.5, b_std=0.1), act("Relu")],
                      [conv(16, (3, 3), "SAME", W_std=0.9), act("Erf")]]],
        ["FanInConcat", {"axis": -1}], FLATTEN, READOUT], img)
    add("cnn2d_fanin_concat_spatial", [
        ["FanOut", {"num": 2}],
        ["parallel", [[conv(32, (3, 3), "SAME", W_std=1.5, b_std=0.1), act("Relu"),
                       conv(32, (2, 2), "SAME", W_std=1.2)],
                      [conv(32, (3, 3), "SAME", W_std=0.9, b_std=0.2)]]],
        ["FanInConcat", {"axis": 1}], act("Relu"), GAP, READOUT], img)
    add("mlp_fanin_prod3", [
        ["FanOut", {"num": 3}],
        ["parallel", [[dense(256, 1.3, 0.1), act("Relu")],
                      [dense(256, 0.9, 0.3), act("Erf")],
                      [dense(256, 1.1, 0.2)]]],
        ["FanInProd", {}], READOUT], mlp)
    add("mlp_repeat_dense_relu3", [
        dense(512, 1.2, 0.1),
        ["repeat", {"layer": [dense(512, 1.4, 0.1), act("Relu")], "n": 3}], READOUT], mlp)
    add("identity_only", [["Identity", {}]], mlp)
    add("identity_only_image", [["Identity", {}]], (4, 3, 3, 2))
    add("flatten_only_image", [FLATTEN], img)
    add("flatten_image_dense", [FLATTEN, dense(512, 1.3, 0.2), act("Relu"), READOUT], img)
    add("cnn2d_spatial_output", [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1), act("Relu"),
                                 conv(64, (2, 2), "VALID", W_std=1.2, b_std=0.1)], (4, 4, 5, 3))
    add("cnn2d_spatial_output_one_conv", [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1),
                                          act("Relu")], (4, 4, 5, 3))
    add("cnn3d_spatial_output_one_conv", [conv(16, (2, 2, 2), "SAME", W_std=1.4, b_std=0.1),
                                          act("Erf")], (3, 2, 3, 4, 2))
    add("cnn1d_spatial_output", [conv(64, (3,), "SAME", W_std=1.4, b_std=0.1), act("Relu"),
                                 conv(64, (2,), "VALID", W_std=1.2, b_std=0.1)], (4, 5, 3))
    add("cnn2d_avgpool_spatial_output", [conv(64, (3, 3), "SAME", W_std=1.4, b_std=0.1),
                                         act("Relu"), ["AvgPool", {"window_shape": [2, 2]}]],
        (4, 4, 5, 3))

    # Attention.
    emb = dense(64, 1.2, 0.1)
    for heads in (1, 3):
        add(f"attn_softmax_linear_h{heads}", [
            emb, attention("SOFTMAX", heads, W_key_std=1.1, W_value_std=0.9,
                           W_query_std=1.2, W_out_std=1.3),
            act("Relu"), GAP, READOUT], (4, 5, 4))
    for mech in ("ABS", "RELU", "IDENTITY"):
        add(f"attn_{mech.lower()}_linear_bias", [
            emb, attention(mech, 2, b_std=0.3, W_key_std=0.9, W_value_std=1.2,
                           W_query_std=1.1, W_out_std=0.8),
            act("Relu"), GAP, READOUT], (4, 5, 4))
    add("attn_identity_quadratic_gap_dense", [
        emb, attention("IDENTITY", 2, linear_scaling=False, W_key_std=0.9,
                       W_value_std=1.1, W_query_std=1.2, W_out_std=1.0),
        GAP, READOUT], (4, 5, 4))
    add("attn_softmax_2d", [
        conv(64, (2, 2), "SAME", W_std=1.3, b_std=0.1),
        attention("SOFTMAX", 2, W_key_std=1.0, W_value_std=1.1, W_query_std=1.0, W_out_std=1.2),
        act("Relu"), GAP, READOUT], img_attn)
    add("attn_identity_2d_flatten", [
        conv(64, (2, 2), "SAME", W_std=1.3, b_std=0.1),
        attention("IDENTITY", 1, W_key_std=1.0, W_value_std=1.1, W_query_std=1.0,
                  W_out_std=1.2),
        act("Relu"), FLATTEN, READOUT], img_attn)
    return c


# --------------------------------------------------------------------------- #
# Kernel cases.
# --------------------------------------------------------------------------- #

def _inputs(name, shape):
    """Standard normal inputs from a seed fixed per case (adding cases moves nothing)."""
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    return rng.standard_normal(shape)


def _unreversed(kernel, field):
    """``kernel.nngp``/``.ntk`` with its spatial axis pairs in the inputs' order.

    neural-tangents 0.6.5 may hand back a spatial kernel with its spatial axis
    pairs in reverse order (``Kernel.is_reversed``, flipped by every ``Conv``):
    ``(N1, N2, W, W', H, H')`` instead of ``(N1, N2, H, H', W, W')``.  The
    reference stores the inputs' order.
    """
    k = np.asarray(getattr(kernel, field), np.float64)
    n_pairs = (k.ndim - 2) // 2
    if not kernel.is_reversed or n_pairs < 2:
        return k
    axes = [0, 1] + [a for i in reversed(range(n_pairs)) for a in (2 + 2 * i, 3 + 2 * i)]
    return np.transpose(k, axes)


def _full(k, like):
    # A network with no parameters (Identity, Flatten) has NTK 0.0, a scalar:
    # stored broadcast to the NNGP's shape.
    return np.broadcast_to(np.asarray(k, np.float64), like.shape).copy()


def kernel_case(name, spec, x1_shape, x2_shape, build=None):
    """``{"NAME/key": array}`` for one case, or raises with the reason to skip it.

    ``build``: spec -> network, for specs with items `network_from_spec` does not know.
    """
    x1, x2 = _inputs(name + "/x1", x1_shape), _inputs(name + "/x2", x2_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init_fn, _, kernel_fn = (build or network_from_spec)(spec)
        out_shape, _ = init_fn(jax.random.PRNGKey(0), x1_shape)
        k12, k11 = kernel_fn(x1, x2), kernel_fn(x1, None)
    for message in sorted({" ".join(str(w.message).split()) for w in caught}):
        print(f"  {name}: neural-tangents warns: {message}")
    nngp, nngp_11 = _unreversed(k12, "nngp"), _unreversed(k11, "nngp")
    arrays = {"nngp": nngp, "ntk": _full(_unreversed(k12, "ntk"), nngp),
              "nngp_11": nngp_11, "ntk_11": _full(_unreversed(k11, "ntk"), nngp_11)}
    if k12.is_reversed:
        print(f"  {name}: neural-tangents returned spatial axes reversed; stored in input order")
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f"non-finite values in {key}")
    print(f"  {name}: output {tuple(out_shape)} -> nngp {nngp.shape}")
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2}
    record.update(arrays)
    return {f"{name}/{k}": v for k, v in record.items()}


def kernel_reference(only=None):
    data, names, skipped = {}, [], {}
    for name, (spec, x1_shape, x2_shape) in _cases().items():
        if only and name not in only:
            continue
        try:
            data.update(kernel_case(name, spec, x1_shape, x2_shape))
            names.append(name)
        except Exception as e:  # neural-tangents' refusal: record why and move on
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            skipped[name] = reason
            print(f"  SKIP {name}: {reason}")
    data["_cases"] = np.array(json.dumps(names))
    return data, skipped


# --------------------------------------------------------------------------- #
# Prediction cases.
# --------------------------------------------------------------------------- #

PREDICT_TIMES = [0.0, 0.5, 2.0, 10.0, None]  # None: t = infinity
PREDICT_SETTINGS = [(1.0, 1e-3), (0.5, 0.0)]  # (learning_rate, diag_reg)
CE_TIMES = [0.5, 2.0, 10.0]
CE_LEARNING_RATE = 1.0
CE_MOMENTUM = 0.9


def cross_entropy(fx, y):
    """Mean over all entries of -y * log_softmax(fx): the loss given to gradient_descent."""
    return -jnp.mean(jax.nn.log_softmax(fx, axis=-1) * y)


def _predict_specs():
    return {
        "mlp_relu": [dense(512, 1.5, 0.1), act("Relu"), dense(512, 1.4, 0.2), act("Relu"),
                     READOUT],
        "mlp_erf": [dense(512, 1.3, 0.3), act("Erf"), dense(512, 1.2, 0.1), act("Erf"),
                    READOUT],
    }


def predict_case(name, spec):
    rng = np.random.default_rng([SEED, zlib.crc32(("predict/" + name).encode())])
    x_train, x_test = rng.standard_normal((8, 5)), rng.standard_normal((4, 5))
    y_train = rng.standard_normal((8, 2))
    fx_train_0, fx_test_0 = 0.3 * rng.standard_normal((8, 2)), 0.3 * rng.standard_normal((4, 2))
    labels = rng.integers(0, 2, size=8)
    labels[:2] = [0, 1]  # both classes present
    y_onehot = np.eye(2)[labels]

    _, _, kernel_fn = network_from_spec(spec)
    k_tr_tr = kernel_fn(x_train, None, ("nngp", "ntk"))
    k_te_tr = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    k_te_te = kernel_fn(x_test, None, ("nngp", "ntk"))
    out = {"spec": np.array(json.dumps(spec)), "x_train": x_train, "x_test": x_test,
           "y_train": y_train, "fx_train_0": fx_train_0, "fx_test_0": fx_test_0}
    for g in ("nngp", "ntk"):
        out[f"k_train_train_{g}"] = np.asarray(getattr(k_tr_tr, g))
        out[f"k_test_train_{g}"] = np.asarray(getattr(k_te_tr, g))
        out[f"k_test_test_{g}"] = np.asarray(getattr(k_te_te, g))

    for s, (lr, d) in enumerate(PREDICT_SETTINGS):
        # Infinite ensemble under MSE gradient flow, from the kernel function.
        ens = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
                                                    learning_rate=lr, diag_reg=d)
        for g in ("nngp", "ntk"):
            test = [ens(t=t, x_test=x_test, get=g, compute_cov=True) for t in PREDICT_TIMES]
            train = [ens(t=t, x_test=None, get=g, compute_cov=True) for t in PREDICT_TIMES]
            out[f"ensemble/s{s}/{g}/mean_test"] = np.stack([np.asarray(r.mean) for r in test])
            out[f"ensemble/s{s}/{g}/cov_test"] = np.stack([np.asarray(r.covariance) for r in test])
            out[f"ensemble/s{s}/{g}/mean_train"] = np.stack([np.asarray(r.mean) for r in train])
            out[f"ensemble/s{s}/{g}/cov_train"] = np.stack([np.asarray(r.covariance) for r in train])

        # MSE gradient descent from kernel matrices, non-zero initial outputs.
        for g in ("nngp", "ntk"):
            fn = predict.gradient_descent_mse(out[f"k_train_train_{g}"], y_train,
                                              learning_rate=lr, diag_reg=d)
            res = [fn(t, fx_train_0, fx_test_0, out[f"k_test_train_{g}"]) for t in PREDICT_TIMES]
            out[f"gd_mse/s{s}/{g}/fx_train"] = np.stack([np.asarray(r[0]) for r in res])
            out[f"gd_mse/s{s}/{g}/fx_test"] = np.stack([np.asarray(r[1]) for r in res])

        # GP inference (learning_rate plays no part; diag_reg = settings[s][1]).
        gp = predict.gp_inference(k_tr_tr, y_train, diag_reg=d)
        for g in ("nngp", "ntk", "ntkgp"):
            r = gp(get=g, k_test_train=k_te_tr, k_test_test=k_te_te)
            out[f"gp/s{s}/{g}/mean"] = np.asarray(r.mean)
            out[f"gp/s{s}/{g}/cov"] = np.asarray(r.covariance)

    ntk = out["k_train_train_ntk"]
    out["max_lr"] = np.asarray(predict.max_learning_rate(ntk))
    out["max_lr_ysize"] = np.asarray(predict.max_learning_rate(ntk, y_train_size=y_train.size))
    out["max_lr_momentum"] = np.asarray(
        predict.max_learning_rate(ntk, y_train_size=y_train.size, momentum=CE_MOMENTUM))

    out["gd_ce/y_train"] = y_onehot
    for tag, momentum in (("plain", None), ("momentum", CE_MOMENTUM)):
        fn = predict.gradient_descent(cross_entropy, ntk, y_onehot,
                                      learning_rate=CE_LEARNING_RATE, momentum=momentum)
        fx_tr, fx_te = fn(np.asarray(CE_TIMES), fx_train_0, fx_test_0, out["k_test_train_ntk"])
        out[f"gd_ce/{tag}/fx_train"] = np.asarray(fx_tr)
        out[f"gd_ce/{tag}/fx_test"] = np.asarray(fx_te)

    for key, value in out.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise FloatingPointError(f"non-finite values in {name}/{key}")
    return {f"{name}/{k}": v for k, v in out.items()}


def predict_reference():
    data, names = {}, []
    for name, spec in _predict_specs().items():
        data.update(predict_case(name, spec))
        names.append(name)
        print(f"  {name}: {sum(k.startswith(name + '/') for k in data)} arrays")
    data["_cases"] = np.array(json.dumps(names))
    data["_times"] = np.array([np.inf if t is None else t for t in PREDICT_TIMES])
    data["_settings"] = np.array(PREDICT_SETTINGS)
    data["_ce_times"] = np.array(CE_TIMES)
    data["_ce_learning_rate"] = np.array(CE_LEARNING_RATE)
    data["_ce_momentum"] = np.array(CE_MOMENTUM)
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "tests", "data"))
    parser.add_argument("--only", nargs="*", help="kernel cases to compute (a dry run: nothing is written)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")

    kernels, skipped = kernel_reference(args.only)
    if args.only:
        return 0
    predictions = predict_reference()
    os.makedirs(args.out_dir, exist_ok=True)
    for filename, data in (("nt_reference.npz", kernels),
                           ("nt_predict_reference.npz", predictions)):
        path = os.path.join(args.out_dir, filename)
        np.savez_compressed(path, **data)
        print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB, "
              f"{len(json.loads(str(data['_cases'])))} cases)")
    if skipped:
        print("skipped (neural-tangents rejected them or gave non-finite values):")
        for name, reason in skipped.items():
            print(f"  {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
