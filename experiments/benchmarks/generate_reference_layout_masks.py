"""Reference kernels and finite networks from neural-tangents 0.6.5 for masked inputs (``mask_constant``)
in layouts other than batch first, channels last, and for ``GlobalSelfAttention``'s positional embeddings
(``pos_emb_type="SUM"``/``"CONCAT"``) in such layouts, masked and not.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_layout_masks.py

It writes ``tests/data/nt_layout_masks_reference.npz``, per case (``_cases``):

* ``NAME/spec`` (JSON, the spec language of ``generate_reference.py``; attention's ``pos_emb_decay_fn``
  is a name of ``generate_reference_attention.DECAY_FNS``, stored as ``_decay_fns``), ``NAME/x1``,
  ``NAME/x2`` (inputs in the layout the network's first layer declares, their masked entries set to
  ``NAME/mask_constant``; ``NaN`` there: no mask), ``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2,
  mask_constant=...)``, spatial axes in the order of the network's outputs), ``NAME/nngp_11``,
  ``NAME/ntk_11`` (``x2=None``);
* for the cases in ``APPLY_CASES`` also ``NAME/params`` (the number of parameter arrays of
  ``init_fn(PRNGKey(0), x1.shape)``), ``NAME/param_I`` (each, in ``jax.tree_util.tree_leaves`` order),
  ``NAME/apply`` (``unmask_fn(apply_fn)(params, x1, mask_constant=...)``).

Masks are given per position (every channel of a masked position, along the layout's channel axis),
except in the ``entries`` cases, where single entries are masked with probability 0.4 (a position is
masked where all its channels happen to be). Everything is float64 from a fixed seed.
"""
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import generate_reference_attention as reference_attention  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402

act, conv = reference.act, reference.conv
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_layout_masks_reference.npz")
RELU = act("Relu")
NCHW = ["NCHW", "OIHW", "NCHW"]
PAD = 10.
NO_MASK = float("nan")  # stored as the mask_constant of the unmasked cases


def network_from_spec(spec):
    """One ``nt.stax.serial`` of the spec's layers (its key splits are neural-tangents'), attention's
    ``pos_emb_decay_fn`` decoded from its name."""
    layers = []
    for name, kwargs in spec:
        if name == "GlobalSelfAttention" and isinstance(kwargs.get("pos_emb_decay_fn"), str):
            kwargs = dict(kwargs, pos_emb_decay_fn=reference_attention.decay_fn(kwargs["pos_emb_decay_fn"]))
            layers.append(nt.stax.GlobalSelfAttention(**kwargs))
        else:
            layers.append(reference._layer(name, kwargs))
    return nt.stax.serial(*layers)


def readout(**layout):
    return ["Dense", dict(out_dim=1, W_std=1.1, b_std=0.05, **layout)]


def dense(out_dim, W_std=1.2, b_std=0.1, **layout):
    return ["Dense", dict(out_dim=out_dim, W_std=W_std, b_std=b_std, **layout)]


def attention(n_chan=32, mechanism="SOFTMAX", linear_scaling=True, **extra):
    return ["GlobalSelfAttention", dict(n_chan_out=n_chan, n_chan_key=n_chan, n_chan_val=n_chan, n_heads=2,
                                        linear_scaling=linear_scaling, attention_mechanism=mechanism,
                                        W_key_std=1.1, W_query_std=0.9, W_value_std=1.05, W_out_std=1.2,
                                        b_std=0.1, **extra)]


def _cases():
    """``name -> (spec, x1 shape, batch_axis, channel_axis, masking)``; ``x2`` has one example fewer.

    ``masking``: ``"lengths"`` (the first spatial axis padded after a length drawn per example; one
    example all padding, one none), ``"pixels"`` (positions masked with probability 0.3; one example all),
    ``"entries"`` (single entries, probability 0.4) or ``None`` (no mask)."""
    c = {}
    gap1 = ["GlobalAvgPool", dict(channel_axis=1)]
    # Channels-first CNN on padded images: Conv NCHW, strided VALID Conv, AvgPool, global pooling.
    c["conv_nchw_pool_gap"] = ([conv(32, (2, 3), "SAME", 1.3, 0.1, dimension_numbers=NCHW), RELU,
                                conv(32, (3, 2), "VALID", 1.2, None, strides=(1, 2), dimension_numbers=NCHW), RELU,
                                ["AvgPool", dict(window_shape=[2, 2], padding="SAME", channel_axis=1)], gap1,
                                readout()], (4, 2, 6, 5), 0, 1, "pixels")
    c["conv_nchw_gap_entries"] = ([conv(32, (2, 2), "SAME", 1.3, 0.1, dimension_numbers=NCHW), RELU, gap1, readout()],
                                  (4, 2, 4, 3), 0, 1, "entries")
    # out_spec orders the spatial axes otherwise (NCWH): the masks follow; pooling after it reads them (H = W, so
    # that masks left in the inputs' order would fit, wrongly).
    c["conv_out_spec_masks_pooled"] = ([conv(32, (2, 3), "SAME", 1.3, 0.1, dimension_numbers=["NHWC", "HWIO", "NCWH"]),
                                        RELU, conv(32, (2, 2), "SAME", 1.1, 0.1,
                                                   dimension_numbers=["NCWH", "OIWH", "NCWH"]), RELU, gap1,
                                        readout()], (4, 4, 4, 2), 0, -1, "pixels")
    c["conv_out_spec_spatial_output"] = ([conv(32, (2, 3), "SAME", 1.3, 0.1,
                                               dimension_numbers=["NHWC", "HWIO", "NCWH"]), RELU, conv(32, (2, 2), "SAME", 1.1, 0.1,
                                                     dimension_numbers=["NCWH", "OIWH", "NCWH"])],
                                         (3, 5, 3, 2), 0, -1, "pixels")
    # (neural-tangents 0.6.5 fails on masks through a Conv whose lhs_spec and out_spec differ in more than the
    # spatial order, e.g. CNHW -> NCWH then NCWH -> NWHC: its mask keeps the input's axis order, "Different
    # channel-wise masks are not supported"; widekit's tests check such networks against channels-last twins.)
    c["conv_batch_axis_1_flatten"] = ([conv(32, (3, 2), "SAME", 1.3, 0.1, dimension_numbers=["CNHW", "OIHW", "CNHW"]),
                                       RELU, ["Flatten", dict(batch_axis=1)], readout()], (2, 4, 5, 4), 1, 0, "pixels")
    c["conv_transpose_nchw_gap"] = ([["ConvTranspose", dict(out_chan=32, filter_shape=[3, 2], padding="SAME",
                                                            strides=[2, 1], W_std=1.3, b_std=0.1,
                                                            dimension_numbers=NCHW)], RELU, gap1, readout()],
                                    (4, 2, 3, 4), 0, 1, "pixels")
    c["layernorm_channel_axis_1"] = ([conv(32, (2, 2), "SAME", 1.3, 0.1, dimension_numbers=NCHW),
                                      ["LayerNorm", dict(axis=[1, 3], channel_axis=1)], RELU, gap1, readout()],
                                     (4, 2, 4, 3), 0, 1, "pixels")
    # Padded sequences with the channels first (N, C, L).
    c["dense_channel_axis_1_gap"] = ([dense(32, channel_axis=1), RELU, dense(32, 0.9, None, channel_axis=1), RELU,
                                      gap1, readout()], (5, 3, 7), 0, 1, "lengths")
    c["dense_channel_axis_1_spatial_output"] = ([dense(32, channel_axis=1), act("Erf"),
                                                 dense(8, 1.1, None, channel_axis=1)], (4, 3, 5), 0, 1, "lengths")
    # Channels first into Flatten, which reads the last axis as its channels: the masked entries of an activation
    # that is not zero at zero (Gaussian) must be zeroed before flattening.
    c["dense_channel_axis_1_gaussian_flatten"] = ([dense(32, channel_axis=1), act("Gaussian"), ["Flatten", {}],
                                                   readout()], (4, 3, 5), 0, 1, "lengths")
    c["attention_channel_axis_1"] = ([dense(32, channel_axis=1), attention(channel_axis=1), RELU, gap1, readout()],
                                     (5, 3, 6), 0, 1, "lengths")
    # Channels first, batch last (C, L, N); the pooled outputs (C, N).
    c["attention_channels_first_batch_last"] = ([dense(32, batch_axis=2, channel_axis=0),
                                                 attention(batch_axis=2, channel_axis=0), RELU,
                                                 ["GlobalAvgPool", dict(batch_axis=2, channel_axis=0)],
                                                 readout(batch_axis=1, channel_axis=0)], (3, 6, 5), 2, 0, "lengths")
    # Positional embeddings in a layout, with and without masks.
    sum_emb = dict(pos_emb_type="SUM", val_pos_emb=True, pos_emb_decay_fn="exp", pos_emb_p_norm=1, W_pos_emb_std=1.3)
    concat_emb = dict(pos_emb_type="CONCAT", val_pos_emb=False, pos_emb_decay_fn="inverse", n_chan_pos_emb=16,
                      W_pos_emb_std=1.6)
    for masking in ("lengths", None):
        suffix = "_masked" if masking else ""
        c["attention_sum_channel_axis_1" + suffix] = ([dense(32, channel_axis=1), attention(channel_axis=1, **sum_emb),
                                                       RELU, gap1, readout()], (5, 3, 6), 0, 1, masking)
        c["attention_concat_images_batch_last" + suffix] = (
            [dense(32, batch_axis=3, channel_axis=0), attention(batch_axis=3, channel_axis=0, **concat_emb), RELU,
             ["GlobalAvgPool", dict(batch_axis=3, channel_axis=0)], readout(batch_axis=1, channel_axis=0)],
            (3, 3, 2, 4), 3, 0, masking)
        c["attention_sum_identity_sqrt_channel_axis_1" + suffix] = (
            [dense(32, channel_axis=1), attention(mechanism="IDENTITY", linear_scaling=False, channel_axis=1,
                                                  pos_emb_type="SUM", val_pos_emb=False, W_pos_emb_std=0.8),
             RELU, gap1, readout()], (4, 3, 5), 0, 1, masking)
    c["attention_concat_onehot_channel_axis_1"] = ([dense(32, channel_axis=1),
                                                    attention(channel_axis=1, pos_emb_type="CONCAT", val_pos_emb=True,
                                                              W_pos_emb_std=1.2), RELU, gap1, readout()],
                                                   (4, 3, 5), 0, 1, "lengths")
    return c


# Cases whose init_fn and masked apply_fn are stored too. (Not LayerNorm's: with masks, neural-tangents
# 0.6.5's finite LayerNorm counts only unmasked entries but sums the squares of masked ones too, which widekit
# does not copy: kernels/stax/linear.py's LayerNorm; their kernels agree.)
APPLY_CASES = ("conv_nchw_pool_gap", "conv_out_spec_masks_pooled", "conv_out_spec_spatial_output",
               "conv_batch_axis_1_flatten", "conv_transpose_nchw_gap",
               "dense_channel_axis_1_gap", "dense_channel_axis_1_gaussian_flatten", "attention_channel_axis_1", "attention_channels_first_batch_last",
               "attention_sum_channel_axis_1_masked", "attention_sum_channel_axis_1",
               "attention_concat_images_batch_last_masked", "attention_concat_images_batch_last",
               "attention_concat_onehot_channel_axis_1")


def masked_inputs(name, shape, batch_axis, channel_axis, masking):
    """Inputs of ``shape`` (in the case's layout), masked entries set to `PAD`."""
    x = reference._inputs(name, shape)
    if masking is None:
        return x
    ndim = len(shape)
    b, c = batch_axis % ndim, channel_axis % ndim
    spatial = [a for a in range(ndim) if a not in (b, c)]
    rng = np.random.default_rng([reference.SEED, len(name), shape[b]])
    canonical = (shape[b],) + tuple(shape[a] for a in spatial)  # positions (N, *S)
    if masking == "entries":
        mask = rng.random(shape) < 0.4
        return np.where(mask, PAD, x)
    if masking == "lengths":
        n, length = canonical[0], canonical[1]
        lengths = rng.integers(1, length + 1, n)
        lengths[-1], lengths[0] = 0, length  # one example all padding, one none
        positions = np.arange(length).reshape((1, length) + (1,) * (len(canonical) - 2))
        mask = np.broadcast_to(positions >= lengths.reshape((-1,) + (1,) * (len(canonical) - 1)), canonical)
    else:  # pixels
        mask = rng.random(canonical) < 0.3
        mask[-1] = True
    mask = np.moveaxis(mask[..., None], (0, len(canonical)), (b, c))  # into the layout, channel axis of size 1
    return np.where(np.broadcast_to(mask, shape), PAD, x)


def case(name, spec, x1_shape, batch_axis, channel_axis, masking):
    x2_shape = list(x1_shape)
    x2_shape[batch_axis] -= 1
    x1 = masked_inputs(name + "/x1", x1_shape, batch_axis, channel_axis, masking)
    x2 = masked_inputs(name + "/x2", tuple(x2_shape), batch_axis, channel_axis, masking)
    constant = None if masking is None else PAD
    init_fn, apply_fn, kernel_fn = network_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linear-scaling attention and batch_axis != 0 warn
        k12 = kernel_fn(x1, x2, mask_constant=constant)
        k11 = kernel_fn(x1, None, mask_constant=constant)
        nngp, nngp_11 = reference._unreversed(k12, "nngp"), reference._unreversed(k11, "nngp")
        record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2,
                  "mask_constant": np.array(NO_MASK if constant is None else constant),
                  "nngp": nngp, "ntk": reference._full(reference._unreversed(k12, "ntk"), nngp),
                  "nngp_11": nngp_11, "ntk_11": reference._full(reference._unreversed(k11, "ntk"), nngp_11)}
        if name in APPLY_CASES:
            _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
            leaves = [np.asarray(p, np.float64) for p in jax.tree_util.tree_leaves(params)]
            record["params"] = np.array(len(leaves))
            record.update({f"param_{i}": p for i, p in enumerate(leaves)})
            record["apply"] = np.asarray(nt.stax.unmask_fn(apply_fn)(params, x1, mask_constant=constant), np.float64)
    for key in ("nngp", "ntk", "nngp_11", "ntk_11") + (("apply",) if name in APPLY_CASES else ()):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    masked = "unmasked" if masking is None else f"{int(np.sum(x1 == PAD))} masked entries of x1"
    print(f"  {name}: nngp {nngp.shape}, {masked}" + (f", apply {record['apply'].shape}" if "apply" in record else ""))
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, args in _cases().items():
        data.update(case(name, *args))  # a refusal is an error here: every case must run
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_decay_fns"] = np.array(json.dumps(reference_attention.DECAY_FNS))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
