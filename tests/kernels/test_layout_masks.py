"""Masked inputs (``mask_constant``) in layouts other than batch first, channels last, and
`GlobalSelfAttention`'s positional embeddings in such layouts (kernels/stax/layout.py, kernels/stax/attention.py).

Truth, each independent of the code under test:
* neural-tangents 0.6.5's kernels, parameters and masked outputs (``unmask_fn(apply_fn)``) for the same key
  (tests/data/nt_layout_masks_reference.npz, experiments/benchmarks/generate_reference_layout_masks.py),
  compared as max |ours - ref| / max |ref| < 1e-6 in float64 (outputs to 1e-10, parameters to 1e-12);
* the same network written channels last, on transposed inputs (a layout only moves axes): equal to 1e-12;
* and deliberately wrong variants (masks not permuted with the positions, masks ignored in a layout,
  embeddings drawn in the canonical shape) fail the first comparison.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.stax import attention, layout
from tests.kernels.spec import network_from_spec as _network_from_json
from tests.kernels.test_attention_pos_emb import DECAY_FNS
from tests.kernels.test_layers_nt2 import relative_error

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_layout_masks_reference.npz"
NCHW = ("NCHW", "OIHW", "NCHW")
PAD = 10.


@pytest.fixture(scope="module")
def data():
    return np.load(DATA)


def network_from_spec(spec):
    """The reference spec's network; a ``pos_emb_decay_fn`` is a name of `DECAY_FNS` there."""
    spec = json.loads(spec) if isinstance(spec, (str, bytes)) else spec
    for _, kwargs in spec:
        if isinstance(kwargs.get("pos_emb_decay_fn"), str):
            kwargs["pos_emb_decay_fn"] = DECAY_FNS[kwargs["pos_emb_decay_fn"]][1]
    return _network_from_json(spec)


def _mask_constant(data, case):
    c = float(data[f"{case}/mask_constant"])
    return None if np.isnan(c) else c


def our_kernels(data, case, x2_none=False):
    _, _, kernel_fn = network_from_spec(str(data[f"{case}/spec"]))
    k = kernel_fn(data[f"{case}/x1"], None if x2_none else data[f"{case}/x2"], ("nngp", "ntk"),
                  mask_constant=_mask_constant(data, case))
    suffix = "_11" if x2_none else ""
    return {"nngp" + suffix: k.nngp, "ntk" + suffix: k.ntk}


def _errors(data, case, ours):
    out = {}
    for key, array in ours.items():
        assert np.shape(array) == data[f"{case}/{key}"].shape, key
        out[key] = relative_error(array, data[f"{case}/{key}"])
    return out


# The default suite (about 0.5-1.5 s of CPU each): masked attention with positional embeddings, channels first;
# the rest slow (1-5 s each), the channels-first/channels-last twins below standing in for the convolutions.
DEFAULT_KERNEL_CASES = {"attention_sum_channel_axis_1_masked", "attention_sum_identity_sqrt_channel_axis_1_masked"}
DEFAULT_APPLY_CASES = {"attention_sum_channel_axis_1_masked", "attention_concat_images_batch_last",
                       "dense_channel_axis_1_gaussian_flatten"}


def _cases(default, apply=False):
    data = np.load(DATA)
    names = json.loads(str(data["_cases"]))
    return [pytest.param(c, marks=() if c in default else pytest.mark.slow)
            for c in names if not apply or f"{c}/params" in data]


def test_reference_file_names_our_decay_functions(data):
    stored = json.loads(str(data["_decay_fns"]))
    assert {name: text for name, (text, _) in DECAY_FNS.items() if name in stored} == stored


@pytest.mark.parametrize("case", _cases(DEFAULT_KERNEL_CASES))
def test_kernels_match_neural_tangents(data, case):
    errors = _errors(data, case, our_kernels(data, case))
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.slow  # a second compilation per case; the masks' handling is the same as with x2
@pytest.mark.parametrize("case", json.loads(str(np.load(DATA)["_cases"])))
def test_kernels_without_x2_match_neural_tangents(data, case):
    errors = _errors(data, case, our_kernels(data, case, x2_none=True))
    assert max(errors.values()) < 1e-6, errors


def _reference_params(data, case, init_fn):
    """neural-tangents' parameters in widekit's tree, after checking that the same key draws them."""
    x1 = data[f"{case}/x1"]
    with jax.threefry_partitionable(False):
        _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    leaves, tree = jax.tree_util.tree_flatten(params)
    refs = [data[f"{case}/param_{i}"] for i in range(int(data[f"{case}/params"]))]
    assert len(leaves) == len(refs)
    for ours, ref in zip(leaves, refs):  # widekit keeps biases without neural-tangents' unit axes
        assert np.shape(ours) == ref.shape or (np.size(ours) == ref.size and np.ndim(ours) < ref.ndim), \
            (np.shape(ours), ref.shape)
        np.testing.assert_allclose(np.ravel(ours), ref.ravel(), rtol=1e-12)
    return jax.tree_util.tree_unflatten(tree, [jnp.reshape(r, np.shape(o)) for o, r in zip(leaves, refs)])


@pytest.mark.parametrize("case", _cases(DEFAULT_APPLY_CASES, apply=True))
def test_apply_fn_matches_neural_tangents(data, case):
    """The same key draws neural-tangents' parameters (embeddings in the inputs' layout), and apply_fn on masked
    inputs gives its outputs, zero at masked positions, in the declared layout."""
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{case}/spec"]))
    params = _reference_params(data, case, init_fn)
    c = _mask_constant(data, case)
    out = jax.jit(lambda p, x: apply_fn(p, x, mask_constant=c))(params, data[f"{case}/x1"])
    assert out.shape == data[f"{case}/apply"].shape
    assert relative_error(out, data[f"{case}/apply"]) < 1e-10


# ----------------------------------------------------------------------------- wrong variants

def test_masks_ignored_in_a_layout_fail_the_reference(data, monkeypatch):
    """Layers in a layout that drop their outputs' masks (kernel_fn), or ignore the masks they are given
    (apply_fn), are far from neural-tangents: the attention after them weighs padded keys, pooling averages them."""
    case = "attention_sum_channel_axis_1_masked"
    relayout = layout.relayout_kernel
    monkeypatch.setattr(layout, "relayout_kernel", lambda k, perm: relayout(k, perm).replace(mask1=None, mask2=None))
    errors = _errors(data, case, our_kernels(data, case))
    assert min(errors.values()) > 1e-2, errors
    monkeypatch.undo()
    monkeypatch.setattr(layout, "canonical_mask", lambda where, x, perm: jnp.zeros(
        layout.canonical_shape(x.value.shape, perm)[:-1], bool))
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{case}/spec"]))
    out = jax.jit(lambda p, x: apply_fn(p, x, mask_constant=PAD))(_reference_params(data, case, init_fn),
                                                                  data[f"{case}/x1"])
    assert relative_error(out, data[f"{case}/apply"]) > 1e-2


@pytest.mark.slow  # about 4 s each: two convolutions and pooling (the default suite has the test above)
def test_masks_not_permuted_with_the_positions_fail_the_reference(data, monkeypatch):
    """A convolution whose out_spec puts W before H (square images) must reorder its outputs' masks as it
    reorders their positions; left in the inputs' order, the pooling after it excludes the wrong positions."""
    case = "conv_out_spec_masks_pooled"
    permute = layout.permute_positions
    monkeypatch.setattr(layout, "permute_positions",
                        lambda k, order: permute(k, order).replace(mask1=k.mask1, mask2=k.mask2))
    errors = _errors(data, case, our_kernels(data, case))
    assert min(errors.values()) > 1e-2, errors
    monkeypatch.undo()

    def unpermuted(mask, perm):  # the canonical mask's axes read in the layout's order, not moved there
        return mask[..., None].reshape(layout.layout_shape(mask.shape + (1,), perm))
    monkeypatch.setattr(layout, "layout_mask", unpermuted)
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{case}/spec"]))
    out = jax.jit(lambda p, x: apply_fn(p, x, mask_constant=PAD))(_reference_params(data, case, init_fn),
                                                                  data[f"{case}/x1"])
    assert relative_error(out, data[f"{case}/apply"]) > 1e-2


@pytest.mark.slow  # the parameters' shapes alone fail it; the default suite checks them against neural-tangents'
def test_embeddings_drawn_in_the_canonical_shape_fail_the_reference(data, monkeypatch):
    """Embeddings drawn (1, L, C) and read as such, instead of in the inputs' layout (1, C, L), are other numbers."""
    case = "attention_sum_channel_axis_1"
    monkeypatch.setattr(attention, "layout_shape", lambda shape, perm: tuple(shape))
    monkeypatch.setattr(attention, "to_canonical", lambda x, perm: x)
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{case}/spec"]))
    with jax.threefry_partitionable(False):
        _, params = init_fn(jax.random.PRNGKey(0), data[f"{case}/x1"].shape)
    out = apply_fn(params, data[f"{case}/x1"])
    assert relative_error(out, data[f"{case}/apply"]) > 1e-2


# ----------------------------------------------------------------------------- against channels last

def _assert_twins(first, last, x1, x2, to_last, params, twin_params):
    """Kernels (x1, x2 masked by `PAD`) and masked outputs of ``first`` on ``x1``, ``x2`` equal those of ``last``
    on the inputs transposed by ``to_last``, ``twin_params`` being ``params`` as ``last`` takes them (to 1e-12)."""
    k_first = first.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD)
    k_last = last.kernel_fn(x1.transpose(to_last), x2.transpose(to_last), ("nngp", "ntk"), mask_constant=PAD)
    for a, b in zip(k_first, k_last):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    out_first = jax.jit(lambda p, x: first.apply_fn(p, x, mask_constant=PAD))(params, x1)
    out_last = jax.jit(lambda p, x: last.apply_fn(p, x, mask_constant=PAD))(twin_params, x1.transpose(to_last))
    np.testing.assert_allclose(out_first, out_last, rtol=1e-12, atol=1e-14)


def _padded_sequences():
    """``(x1, x2)`` channels first ``(N, C, L)``: padded after per-example lengths (one example all padding),
    one entry of a kept position equal to the padding value (a position is masked only when all its channels are)."""
    rng = np.random.default_rng(11)
    x1, x2 = rng.standard_normal((4, 3, 6)), rng.standard_normal((3, 3, 6))
    for x, lengths in ((x1, (6, 2, 4, 0)), (x2, (3, 6, 1))):
        for n, ell in enumerate(lengths):
            x[n, :, ell:] = PAD
    x1[0, 1, 2] = PAD
    return x1, x2


def _attention_pair(first):
    """A padded-sequence network with summed positional embeddings, channels first or channels last."""
    emb = dict(pos_emb_type="SUM", val_pos_emb=True, pos_emb_decay_fn=lambda d: jnp.exp(-d), pos_emb_p_norm=1,
               W_pos_emb_std=1.3)
    axis = dict(channel_axis=1) if first else {}
    return stax.serial(stax.Dense(16, 1.2, 0.1, **axis), stax.GlobalSelfAttention(16, 16, 16, 2, **emb, **axis),
                       stax.Relu(), stax.GlobalAvgPool(**axis), stax.Dense(1, 1.1, 0.05))


def test_channels_first_masked_attention_is_the_channels_last_one_on_transposed_inputs():
    x1, x2 = _padded_sequences()
    first = _attention_pair(True)
    # Finite networks: the channels-first one's embeddings (1, C, L) are the channels-last one's (1, L, C).
    _, params = first.init_fn(jax.random.PRNGKey(2), x1.shape)
    q, k, v, o, b, e = params[1]
    twin = [params[0], (q, k, v, o, b, jnp.transpose(e, (0, 2, 1)))] + list(params[2:])
    _assert_twins(first, _attention_pair(False), x1, x2, (0, 2, 1), params, twin)


def _cnn_pair(first):
    """A channels-first (or channels-last) CNN: Conv SAME, strided VALID Conv, AvgPool, GlobalAvgPool, Dense."""
    if first:
        return stax.serial(stax.Conv(16, (2, 3), padding="SAME", W_std=1.3, b_std=0.1, dimension_numbers=NCHW),
                           stax.Relu(), stax.Conv(16, (3, 2), (1, 2), "VALID", 1.2, dimension_numbers=NCHW),
                           stax.Relu(), stax.AvgPool((2, 2), padding="SAME", channel_axis=1),
                           stax.GlobalAvgPool(channel_axis=1), stax.Dense(1, 1.1, 0.05))
    return stax.serial(stax.Conv(16, (2, 3), padding="SAME", W_std=1.3, b_std=0.1), stax.Relu(),
                       stax.Conv(16, (3, 2), (1, 2), "VALID", 1.2), stax.Relu(), stax.AvgPool((2, 2), padding="SAME"),
                       stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))


@pytest.mark.slow  # about 5 s; the default suite has the attention twins above and the attention references
def test_channels_first_masked_cnn_is_the_channels_last_one_on_transposed_inputs():
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((3, 2, 6, 5)), rng.standard_normal((2, 2, 6, 5))  # NCHW
    x1[0, :, 3:, :] = PAD  # padded rows, columns, single pixels, one image all padding
    x1[1, :, :, 1:] = PAD
    x1[2, :, 1, 2] = PAD
    x2[1] = PAD
    first = _cnn_pair(True)
    _, params = first.init_fn(jax.random.PRNGKey(3), x1.shape)
    hwio = [(jnp.transpose(p[0], (2, 3, 1, 0)),) + tuple(p[1:]) if i in (0, 2) else p for i, p in enumerate(params)]
    _assert_twins(first, _cnn_pair(False), x1, x2, (0, 2, 3, 1), params, hwio)


_M = np.random.default_rng(9).standard_normal((5, 5))
# A layer between Dense and pooling, channels first and its channels-last twin (inputs (N, C, 5, 4) / (N, 5, 4, C)).
MIDDLE_LAYERS = {
    "Index": (lambda: stax.Index(idx=(slice(None), slice(None), slice(1, None), slice(None)), channel_axis=1),
              lambda: stax.Index(idx=(slice(None), slice(1, None)))),
    "ImageResize": (lambda: stax.ImageResize(shape=(-1, -1, 7, 3), method="linear", channel_axis=1),
                    lambda: stax.ImageResize(shape=(-1, 7, 3, -1), method="linear")),
    "DotGeneral": (lambda: stax.DotGeneral(lhs=_M, dimension_numbers=(((1,), (2,)), ((), ())), channel_axis=1),
                   lambda: stax.DotGeneral(lhs=_M, dimension_numbers=(((1,), (1,)), ((), ())))),
}


@pytest.mark.slow  # 1-2 s each; these layers' masks in the canonical layout are checked against neural-tangents
@pytest.mark.parametrize("layer", sorted(MIDDLE_LAYERS))
def test_masked_layers_channels_first_are_their_channels_last_twins(layer):
    """Index, ImageResize and DotGeneral with masks, channels first: the channels-last network on transposed inputs."""
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((3, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    x1[0, :, 3:, :] = PAD
    x1[1, :, :, 1:] = PAD
    x1[2, :, 1, 2] = PAD
    x2[1, :, :2] = PAD
    make_first, make_last = MIDDLE_LAYERS[layer]
    first = stax.serial(stax.Dense(8, 1.2, 0.1, channel_axis=1), make_first(), stax.Relu(),
                        stax.GlobalAvgPool(channel_axis=1), stax.Dense(1))
    last = stax.serial(stax.Dense(8, 1.2, 0.1), make_last(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    _, params = first.init_fn(jax.random.PRNGKey(0), x1.shape)
    _assert_twins(first, last, x1, x2, (0, 2, 3, 1), params, params)
