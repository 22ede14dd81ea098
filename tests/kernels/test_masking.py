"""Masked inputs (``mask_constant``, `kernels.stax.masking`): neural-tangents 0.6.5's kernels and
outputs, the kernels and outputs of the same networks on the unmasked entries alone (truncated
sequences), a rule that ignores the mask rejected by the same checks, and refusals by name.

Convolutions, local pooling and attention with positional embeddings (issue 14, item 3): the same
reference, what SAME padding means on a padded sequence (the truncated sequence's network), the
finite network against one that zeroes masked positions by hand, and Monte Carlo."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, stax
from kernels.stax import masking
from tests.kernels.spec import network_from_spec as _network_from_json
from tests.kernels.test_attention_pos_emb import DECAY_FNS

jax.config.update("jax_enable_x64", True)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "nt_masking_reference.npz")
PAD = 10.


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA)


def network_from_spec(spec):
    """The reference spec's network; a ``pos_emb_decay_fn`` is a name of `DECAY_FNS` there."""
    spec = json.loads(spec) if isinstance(spec, str) else spec
    for _, kwargs in spec:
        if isinstance(kwargs, dict) and isinstance(kwargs.get("pos_emb_decay_fn"), str):
            kwargs["pos_emb_decay_fn"] = DECAY_FNS[kwargs["pos_emb_decay_fn"]][1]
    return _network_from_json(spec)


def test_reference_file_names_our_decay_functions(reference):
    stored = json.loads(str(reference["_decay_fns"]))
    assert stored == {name: text for name, (text, _) in DECAY_FNS.items()}


def relative_error(ours, ref):
    ref = np.asarray(ref)
    return float(np.max(np.abs(np.asarray(ours) - ref)) / max(np.max(np.abs(ref)), 1e-300))


# The default suite checks the imdb-like network here (plain pooling below, against its own apply_fn
# and truncated sequences); the rest are `slow`.
# Of the convolutions, pooling and embeddings: the imdb.py-like network (Conv SAME, attention with SUM
# embeddings, pooling) and a transposed convolution; the wrong-rule tests below check a strided SAME
# AvgPool and CONCAT embeddings against the reference too, and masked pixels are checked by hand.
DEFAULT_CASES = ("seq_imdb_like", "seq_imdb_conv_sum_exp", "seq_convtranspose_same_stride2_spatial_output")
CASES = [name if name in DEFAULT_CASES else pytest.param(name, marks=pytest.mark.slow)
         for name in json.loads(str(np.load(DATA)["_cases"]))]


@pytest.mark.parametrize("name", CASES)
def test_kernels_match_neural_tangents(reference, name):
    net = network_from_spec(str(reference[f"{name}/spec"]))
    c = float(reference[f"{name}/mask_constant"])
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    k12 = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=c)
    k11 = net.kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=c)
    for key, ours in (("nngp", k12.nngp), ("ntk", k12.ntk), ("nngp_11", k11.nngp), ("ntk_11", k11.ntk)):
        assert relative_error(ours, reference[f"{name}/{key}"]) < 1e-6, key


@pytest.mark.parametrize("name", ["seq_dense_relu_gap", pytest.param("seq_attention_softmax", marks=pytest.mark.slow),
                                  pytest.param("seq_layernorm_positions", marks=pytest.mark.slow)])
def test_a_rule_that_ignores_the_mask_fails_the_reference(reference, name):
    """The masked entries zeroed and then treated as data (no mask): far from neural-tangents."""
    net = network_from_spec(str(reference[f"{name}/spec"]))
    x1, x2 = (np.where(reference[f"{name}/{x}"] == PAD, 0., reference[f"{name}/{x}"]) for x in ("x1", "x2"))
    assert relative_error(net.kernel_fn(x1, x2, "nngp"), reference[f"{name}/nngp"]) > 1e-2


def _params_from_reference(reference, name, n_layers):
    params = []
    for i in range(n_layers):
        if f"{name}/param/{i}/len" in reference:  # every array of the tuple, None where absent
            keys = [f"{name}/param/{i}/{j}" for j in range(int(reference[f"{name}/param/{i}/len"]))]
            params.append(tuple(reference[key] if key in reference else None for key in keys))
            continue
        arrays = [reference[f"{name}/param/{i}/{j}"] for j in range(2) if f"{name}/param/{i}/{j}" in reference]
        params.append(tuple(arrays))
    return tuple(params)


@pytest.mark.parametrize("name", ["seq_dense_relu_gap", "seq_imdb_conv_sum_onehot",
                                  pytest.param("seq_imdb_conv_sum_exp", marks=pytest.mark.slow),
                                  pytest.param("seq_flatten", marks=pytest.mark.slow),
                                  pytest.param("img_conv_avgpool_flatten", marks=pytest.mark.slow)])
def test_apply_fn_matches_neural_tangents_on_its_parameters(reference, name):
    spec = json.loads(str(reference[f"{name}/spec"]))
    net = network_from_spec(spec)
    params = _params_from_reference(reference, name, len(spec))
    out = net.apply_fn(params, reference[f"{name}/x1"], mask_constant=float(reference[f"{name}/mask_constant"]))
    assert relative_error(out, reference[f"{name}/apply"]) < 1e-10


# ----------------------------------------------------------------- the unmasked entries alone

LENGTHS = (4, 6, 2, 4)


def _padded(key, lengths=LENGTHS, length=6, channels=3):
    x = np.array(jax.random.normal(jax.random.PRNGKey(key), (len(lengths), length, channels)))
    for n, ell in enumerate(lengths):
        x[n, ell:] = PAD
    return x


IMDB = stax.serial(stax.Dense(64, 1.2, 0.1), stax.Relu(), stax.GlobalSelfAttention(64, 64, 64, 2, b_std=0.1),
                   stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))
POOLED = stax.serial(stax.Dense(64, 1.3, 0.2), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))


@pytest.mark.slow  # default: the kernel version below and the SAME-convolution finite check
@pytest.mark.parametrize("net", [IMDB, POOLED], ids=["attention", "pooling"])
def test_finite_network_on_padded_inputs_equals_it_on_truncated_ones(net):
    x = _padded(1)
    _, params = net.init_fn(jax.random.PRNGKey(2), x.shape)
    padded = net.apply_fn(params, x, mask_constant=PAD)
    truncated = np.concatenate([net.apply_fn(params, x[n:n + 1, :ell]) for n, ell in enumerate(LENGTHS)])
    np.testing.assert_allclose(padded, truncated, rtol=1e-10, atol=1e-12)
    ignored = net.apply_fn(params, np.where(x == PAD, 0., x))  # the mask ignored
    assert np.max(np.abs(ignored - truncated)) > 1e-2


@pytest.mark.parametrize("net", [pytest.param(IMDB, marks=pytest.mark.slow), POOLED], ids=["attention", "pooling"])
def test_kernel_of_padded_inputs_equals_that_of_truncated_ones(net):
    """Equal lengths pair up exactly (examples 0 and 3 both have 4 entries); every example with itself."""
    x = _padded(3)
    k = net.kernel_fn(x, None, ("nngp", "ntk"), mask_constant=PAD)
    same = net.kernel_fn(x[[0]][:, :4], x[[3]][:, :4], ("nngp", "ntk"))
    for field in ("nngp", "ntk"):
        assert abs(getattr(k, field)[0, 3] - getattr(same, field)[0, 0]) < 1e-12
        for n, ell in enumerate(LENGTHS):
            alone = getattr(net.kernel_fn(x[n:n + 1, :ell], None, field), "item")()
            assert abs(getattr(k, field)[n, n] - alone) < 1e-12 * max(1., abs(alone))
    ignored = net.kernel_fn(np.where(x == PAD, 0., x), None, "nngp")  # the mask ignored
    assert abs(ignored[2, 2] - net.kernel_fn(x[2:3, :2], None, "nngp")[0, 0]) > 1e-2


def test_kernel_across_lengths_matches_wide_finite_networks_on_truncated_sequences():
    """Examples of different lengths: the NNGP of Dense-Relu-GlobalAvgPool against the channel-averaged
    products of a wide finite network's features, each example run truncated (no mask)."""
    x = _padded(5)
    width, seeds = 2048, 4
    net = stax.serial(stax.Dense(width, 1.3, 0.2), stax.Relu(), stax.GlobalAvgPool())
    exact = net.kernel_fn(x, None, "nngp", mask_constant=PAD)
    estimates = []
    for seed in range(seeds):
        _, params = net.init_fn(jax.random.PRNGKey(seed), x.shape)
        f = np.concatenate([net.apply_fn(params, x[n:n + 1, :ell]) for n, ell in enumerate(LENGTHS)])
        estimates.append(f @ f.T / width)
    mc = np.mean(estimates, 0)
    error = np.max(np.abs(mc - exact)) / np.max(np.abs(exact))
    assert error < 0.03
    ignored = net.kernel_fn(np.where(x == PAD, 0., x), None, "nngp")
    assert np.max(np.abs(mc - ignored)) / np.max(np.abs(exact)) > 0.1


def test_kernel_of_a_masked_kernel_keeps_its_masks():
    """kernel_fn(Kernel) continues from a Kernel of padded inputs as the whole network runs on them, which equals
    the kernels of the truncated sequences (above): the Kernel carries its masks, tiled by batch like cov1/cov2.
    A continuation that lost them would average the padding into GlobalAvgPool."""
    x = _padded(3)
    first = stax.serial(stax.Dense(64, 1.3, 0.2), stax.Relu())
    second = stax.serial(stax.Dense(64, 1.1, 0.1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))
    whole = stax.serial(first, second)
    for x2 in (None, x[1:]):
        k = first.kernel_fn(x, x2, mask_constant=PAD)
        want = whole.kernel_fn(x, x2, ("nngp", "ntk"), mask_constant=PAD)
        got = second.kernel_fn(k, get=("nngp", "ntk"))
        np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
        np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
    tiled = batch(first.kernel_fn, 2, progress=False)(x, None, mask_constant=PAD)
    np.testing.assert_array_equal(tiled.mask1, np.arange(6)[None] >= np.array(LENGTHS)[:, None])
    again = batch(second.kernel_fn, 2, progress=False)(tiled, None, "nngp")
    np.testing.assert_allclose(again, whole.kernel_fn(x, None, "nngp", mask_constant=PAD), rtol=1e-12)
    lost = second.kernel_fn(k.replace(mask1=None, mask2=None), get="nngp")
    assert np.max(np.abs(lost - want.nngp)) > 1e-2 * np.max(np.abs(want.nngp))


@pytest.mark.slow
def test_nan_marks_masked_entries_and_kernels_batch_tiles_masked_inputs(reference):
    name = "seq_imdb_like"
    net = network_from_spec(str(reference[f"{name}/spec"]))
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    nan1, nan2 = (np.where(x == PAD, np.nan, x) for x in (x1, x2))
    assert relative_error(net.kernel_fn(nan1, nan2, "ntk", mask_constant=np.nan), reference[f"{name}/ntk"]) < 1e-6
    tiled = batch(net.kernel_fn, batch_size=2, progress=False)
    assert relative_error(tiled(x1, x2, "nngp", mask_constant=PAD), reference[f"{name}/nngp"]) < 1e-6
    assert relative_error(tiled(x1, None, "ntk", mask_constant=PAD), reference[f"{name}/ntk_11"]) < 1e-6
    name = "img_conv_same_valid_gap"  # convolutions on masked pixels, tiled
    net = network_from_spec(str(reference[f"{name}/spec"]))
    tiled = batch(net.kernel_fn, batch_size=2, progress=False)
    assert relative_error(tiled(reference[f"{name}/x1"], reference[f"{name}/x2"], "ntk", mask_constant=PAD),
                          reference[f"{name}/ntk"]) < 1e-6


# ----------------------------------------------------------------- convolutions, local pooling, embeddings

def test_output_masks_of_window_layers_follow_the_window_centres():
    """Against neural-tangents 0.6.5's masks printed for inputs of 7 positions (ex. 0 masked at 5, 6;
    ex. 1 at 2), and the transposed convolution's 'any masked input reaches it'."""
    mask = np.zeros((2, 7), bool)
    mask[0, 5:], mask[1, 2] = True, True
    cases = [((4,), (2,), "SAME", [[0, 0, 0, 1], [0, 1, 0, 0]]), ((3,), (2,), "VALID", [[0, 0, 1], [0, 0, 0]]),
             ((3,), (1,), "CIRCULAR", mask), ((2,), (1,), "VALID", [[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]])]
    for window, strides, padding, expected in cases:
        np.testing.assert_array_equal(masking.window_centres(window, strides, padding)(mask), np.asarray(expected, bool))
    reach = masking.transposed_reach((2,), (3,), "VALID")(mask)
    expected = np.zeros((2, 21), bool)
    expected[0, [15, 16, 18, 19]], expected[1, [6, 7]] = True, True
    np.testing.assert_array_equal(reach, expected)


def test_a_mask_rule_other_than_the_window_centre_fails_the_reference(reference, monkeypatch):
    """AvgPool's outputs masked when any input in their window is (not the centre): far from neural-tangents."""
    name = "seq_avgpool_same_stride2_gap"

    def any_in_window(window_shape, strides, padding, out_order=None):
        (w,), (st,) = window_shape, strides

        def mask_fn(mask):
            low = (max((-(-mask.shape[1] // st) - 1) * st + w - mask.shape[1], 0)) // 2
            padded = jnp.pad(mask, ((0, 0), (low, w)))
            return jnp.stack([padded[:, st * o:st * o + w].any(1) for o in range(-(-mask.shape[1] // st))], 1)
        return mask_fn

    args = (reference[f"{name}/x1"], reference[f"{name}/x2"], "nngp")
    right = network_from_spec(str(reference[f"{name}/spec"])).kernel_fn(*args, mask_constant=PAD)
    assert relative_error(right, reference[f"{name}/nngp"]) < 1e-6
    monkeypatch.setattr(masking, "window_centres", any_in_window)
    wrong = network_from_spec(str(reference[f"{name}/spec"])).kernel_fn(*args, mask_constant=PAD)
    assert relative_error(wrong, reference[f"{name}/nngp"]) > 1e-2


def test_attention_with_embeddings_needs_their_masked_covariance(reference, monkeypatch):
    """Positional embeddings left unmasked (R nonzero at masked positions) fail the reference where they
    count: with linear_scaling=False and values that see them, ``<K_Z, K_Y>`` sums over every position
    pair. (Elsewhere masked keys get no weight, or K_Y is zero there, so R's masked entries drop out.)"""
    name = "seq_concat_identity_sqrt_val1_onehot"
    from kernels.stax import attention

    class Unmasked:  # masking, except that the embeddings' covariance keeps its masked entries
        def __getattr__(self, attribute):
            return getattr(masking, attribute)

        @staticmethod
        def pair_mask(k):
            return jnp.zeros_like(masking.pair_mask(k))

        @staticmethod
        def self_mask(m, k):
            return jnp.zeros_like(masking.self_mask(m, k))
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    right = network_from_spec(str(reference[f"{name}/spec"])).kernel_fn(x1, x2, "nngp", mask_constant=PAD)
    assert relative_error(right, reference[f"{name}/nngp"]) < 1e-6
    monkeypatch.setattr(attention, "masking", Unmasked())
    wrong = network_from_spec(str(reference[f"{name}/spec"])).kernel_fn(x1, x2, "nngp", mask_constant=PAD)
    assert relative_error(wrong, reference[f"{name}/nngp"]) > 1e-2


def _imdb_conv(decay=None, attention=True):
    """neural-tangents' examples/imdb.py network, small: Conv embedding, attention with positional
    embeddings, pooling. One-hot embeddings without ``decay`` (their parameters slice to shorter inputs).
    ``attention=False``: a second SAME convolution in its place (the default suite's cheaper variant)."""
    extra = {} if decay is None else dict(pos_emb_decay_fn=decay, pos_emb_p_norm=1)
    middle = stax.GlobalSelfAttention(32, 32, 32, 2, b_std=0.1, pos_emb_type="SUM", W_pos_emb_std=1.3, **extra) \
        if attention else stax.Conv(32, (2,), padding="SAME", W_std=1.1)
    return stax.serial(stax.Conv(32, (3,), padding="SAME", W_std=1.2, b_std=0.1), stax.Relu(), middle,
                       stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))


@pytest.mark.parametrize("attention", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["attention", "conv"])
def test_same_convolution_of_a_padded_sequence_is_that_of_the_truncated_sequence(attention):
    """What SAME padding means with masks: a stride-one SAME convolution sees zeros past the end of a
    padded sequence, as it sees its own zero padding past the end of the truncated one; with attention
    (one-hot embeddings, sliced to the length) and average pooling the finite outputs are equal."""
    x = _padded(11)
    net = _imdb_conv(attention=attention)
    _, params = net.init_fn(jax.random.PRNGKey(4), x.shape)
    padded = net.apply_fn(params, x, mask_constant=PAD)

    def truncated(n, ell):
        if not attention:
            return net.apply_fn(params, x[n:n + 1, :ell])
        sliced = list(params)
        layer = list(sliced[2])
        layer[5] = layer[5][:, :ell]  # the embedding (1, L, C) of the first ell positions
        sliced[2] = tuple(layer)
        return net.apply_fn(tuple(sliced), x[n:n + 1, :ell])
    alone = np.concatenate([truncated(n, ell) for n, ell in enumerate(LENGTHS)])
    np.testing.assert_allclose(padded, alone, rtol=1e-10, atol=1e-12)
    ignored = net.apply_fn(params, np.where(x == PAD, 0., x))
    assert np.max(np.abs(ignored - alone)) > 1e-2


@pytest.mark.slow  # the default suite checks the finite network (above) and the kernel's reference values
@pytest.mark.parametrize("attention", [True, False], ids=["attention", "conv"])
def test_kernel_of_a_padded_sequence_through_same_convolution_is_that_of_the_truncated_one(attention):
    """The kernels of the imdb-like network (positional embeddings decaying with distance: the truncated
    sequence's covariance is the leading block of the padded one's): examples 0 and 3 (both 4 entries)
    against each other, example 2 (2 entries) with itself."""
    net = _imdb_conv(DECAY_FNS["exp"][1] if attention else None, attention)
    x = _padded(13)
    k = net.kernel_fn(x, None, ("nngp", "ntk"), mask_constant=PAD)
    pair = net.kernel_fn(x[[0]][:, :4], x[[3]][:, :4], ("nngp", "ntk"))
    short = net.kernel_fn(x[2:3, :2], None, ("nngp", "ntk"))
    for field in ("nngp", "ntk"):
        assert abs(getattr(k, field)[0, 3] - getattr(pair, field)[0, 0]) < 1e-12 * abs(getattr(pair, field)[0, 0])
        assert abs(getattr(k, field)[2, 2] - getattr(short, field)[0, 0]) < 1e-12 * abs(getattr(short, field)[0, 0])
    ignored = net.kernel_fn(np.where(x == PAD, 0., x), None, "nngp")
    assert abs(ignored[2, 2] - short.nngp[0, 0]) > 1e-2 * abs(short.nngp[0, 0])


def _zero_positions(a, mask):
    return np.where(mask[..., None], 0., a)


def test_finite_network_on_masked_pixels_equals_one_zeroing_them_by_hand():
    """Conv (strided VALID), ConvTranspose and AvgPool with masked pixels: apply_fn with mask_constant
    against the layers run one by one on plain arrays, masked positions zeroed between them, the
    output masks written out (window centres; 'any masked input reaches it' for the transposed one)."""
    conv = stax.Conv(6, (3, 2), strides=(2, 1), padding="VALID", b_std=0.3)
    transposed = stax.ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID", b_std=0.2)
    avg = stax.AvgPool((2, 3), padding="SAME")
    net = stax.serial(conv, stax.Erf(), transposed, avg)
    x = np.array(jax.random.normal(jax.random.PRNGKey(5), (3, 7, 5, 2)))
    mask = np.array(jax.random.bernoulli(jax.random.PRNGKey(6), 0.3, x.shape[:-1]))
    x = np.where(mask[..., None], PAD, x)
    _, params = net.init_fn(jax.random.PRNGKey(7), x.shape)
    ours = jax.jit(lambda p, z: net.apply_fn(p, z, mask_constant=PAD))(params, x)  # one compilation

    h = conv.apply_fn(params[0], _zero_positions(np.where(x == PAD, 0., x), mask))
    m = mask[:, 1:7:2, :4]  # VALID (3, 2), strides (2, 1): window centres at rows 2o + 1, columns o
    h = _zero_positions(np.array(jax.scipy.special.erf(h)), m)
    h = transposed.apply_fn(params[2], h)
    reach = np.zeros((3, 6, 8), bool)  # stride 2, filter 2: input (i, j) reaches outputs (2i + a, 2j + b)
    for a in range(2):
        for b in range(2):
            reach[:, a::2, b::2] |= m
    h = _zero_positions(h, reach)
    h = avg.apply_fn((), h)  # SAME, stride one: the mask is unchanged
    np.testing.assert_allclose(ours, _zero_positions(h, reach), rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(h - ours)) > 1e-3  # the last mask matters


@pytest.mark.slow
def test_masked_image_kernel_matches_monte_carlo_of_finite_networks():
    """The NNGP of a masked-pixel CNN (Conv SAME, Relu, strided AvgPool, Conv, Flatten) against finite
    networks' feature products averaged over their Flatten features (width 256, 64 draws: about 1%
    error measured on three seeds), and the mask-ignoring kernel against them. (The NTK's Jacobians at this width are too big for a test; the
    reference checks it.)"""
    from kernels import monte_carlo_kernel_fn
    net = stax.serial(stax.Conv(256, (3, 3), padding="SAME", W_std=1.3, b_std=0.2), stax.Relu(),
                      stax.AvgPool((2, 2), (2, 2), "SAME"), stax.Conv(256, (2, 2), padding="SAME"), stax.Flatten())
    x = np.array(jax.random.normal(jax.random.PRNGKey(8), (4, 4, 5, 2)))
    mask = np.array(jax.random.bernoulli(jax.random.PRNGKey(9), 0.35, x.shape[:-1]))
    x = np.where(mask[..., None], PAD, x)
    exact = net.kernel_fn(x, None, "nngp", mask_constant=PAD)
    mc = monte_carlo_kernel_fn(net.init_fn, lambda p, z, **kw: net.apply_fn(p, z, mask_constant=PAD, **kw),
                               jax.random.PRNGKey(10), 64)(x, None, "nngp")
    ignored = net.kernel_fn(np.where(x == PAD, 0., x), None, "nngp")
    scale = np.max(np.abs(exact))
    assert np.max(np.abs(mc - exact)) / scale < 0.03
    assert np.max(np.abs(mc - ignored)) / scale > 0.1


# ----------------------------------------------------------------- refusals

@stax.layer
def UserScale():
    """A user's custom layer (neural-tangents' `stax.layer`): it declares no mask rule, so it refuses masks."""
    return (lambda rng, shape: (shape, ()), lambda params, x, **kwargs: 2. * x,
            lambda k, **kwargs: k.replace(nngp=4. * k.nngp, ntk=4. * k.ntk))


@pytest.mark.parametrize("layer, pattern", [
    (stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), UserScale()), stax.FanInSum()), r"UserScale"),
    (stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False, n_samples=8), r"GlobalSelfAttention\("),
])
def test_layers_without_mask_support_refuse_by_name(layer, pattern):
    net = stax.serial(stax.Dense(4), layer)
    x = _padded(7)
    with pytest.raises(NotImplementedError, match=pattern + ".*mask_constant"):
        net.kernel_fn(x, None, "nngp", mask_constant=PAD)


def test_apply_fn_of_a_layer_without_mask_support_refuses_by_name():
    x = _padded(7)
    unmasked = UserScale()
    for layer, pattern in ((unmasked, r"UserScale"),
                           (stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), unmasked)), r"UserScale")):
        with pytest.raises(NotImplementedError, match=pattern + ".*mask_constant"):
            layer.apply_fn([(), ((), ())], x, mask_constant=PAD)  # refused before the parameters are read


def test_bad_mask_arguments_are_refused_by_name():
    x = _padded(7)
    with pytest.raises(TypeError, match="mask_constant"):
        POOLED.kernel_fn(x, None, "nngp", mask_constant="pad")
    for net in (POOLED, stax.serial(stax.Conv(4, (2,)), stax.AvgPool((2,)), stax.GlobalAvgPool())):
        with pytest.raises(NotImplementedError, match="block_size.*mask_constant"):
            net.kernel_fn(x, None, "nngp", mask_constant=PAD, block_size=2)
    k = POOLED.kernel_fn(x, None, None, mask_constant=PAD)
    with pytest.raises(ValueError, match="mask_constant"):
        POOLED.kernel_fn(k, mask_constant=PAD)
    _, params = POOLED.init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(TypeError, match="mask_constant"):
        POOLED.apply_fn(params, x, mask_constant=jnp.ones(3))


# ----------------------------------------------------------------- branching networks (issue 14)

BRANCH_DATA = os.path.join(os.path.dirname(__file__), "..", "data", "nt_masking_branches_reference.npz")


@pytest.fixture(scope="module")
def branches():
    return np.load(BRANCH_DATA)


# Residual MLP and CNN (FanOut, parallel, FanInSum), FanInProd, FanInConcat along channels and positions;
# the default suite checks the concatenation along positions (a FanOut, two branches, the mask merged
# side by side), the rest are `slow`.
@pytest.mark.parametrize("name", [name if name == "seq_concat_positions" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in json.loads(str(np.load(BRANCH_DATA)["_cases"]))])
def test_branching_kernels_match_neural_tangents(branches, name):
    """FanOut copies the mask to each branch; FanInSum/FanInProd/channel FanInConcat mask a position
    masked in every branch; FanInConcat along a position axis places the branches' masks side by side."""
    test_kernels_match_neural_tangents(branches, name)


def test_a_wrong_mask_rule_for_branches_fails_the_reference(branches, monkeypatch):
    """The mask ignored (masked entries zeroed, then treated as data), and a concatenation along
    positions whose second branch's positions are all taken as unmasked: both far from neural-tangents."""
    name = "seq_concat_positions"
    net = network_from_spec(str(branches[f"{name}/spec"]))
    x1, x2 = (branches[f"{name}/{x}"] for x in ("x1", "x2"))
    ignored = net.kernel_fn(np.where(x1 == PAD, 0., x1), np.where(x2 == PAD, 0., x2), "nngp")
    assert relative_error(ignored, branches[f"{name}/nngp"]) > 1e-2
    monkeypatch.setattr(masking, "concatenated_along", lambda axis: lambda masks: jnp.concatenate(
        [masks[0]] + [jnp.zeros_like(m) for m in masks[1:]], axis=axis))
    net = network_from_spec(str(branches[f"{name}/spec"]))
    wrong = net.kernel_fn(x1, x2, "nngp", mask_constant=PAD)
    assert relative_error(wrong, branches[f"{name}/nngp"]) > 1e-2


@pytest.mark.slow
def test_finite_branching_networks_on_padded_inputs_equal_them_on_truncated_ones():
    """A residual block and a concatenation along positions, then pooling: masked apply_fn equals
    the same network on each example's unmasked positions alone."""
    residual = stax.serial(stax.Dense(16, 1.2, 0.1), stax.FanOut(2),
                           stax.parallel(stax.Identity(), stax.serial(stax.Relu(), stax.Dense(16, 1.3, 0.2))),
                           stax.FanInSum(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    concat = stax.serial(stax.Dense(16, 1.2, 0.1), stax.FanOut(2),
                         stax.parallel(stax.Dense(16), stax.serial(stax.Erf(), stax.Dense(8))),
                         stax.FanInConcat(-1), stax.FanOut(3),
                         stax.parallel(stax.Dense(8), stax.Dense(8), stax.serial(stax.Relu(), stax.Dense(8))),
                         stax.FanInConcat(1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    x = _padded(3)
    for net in (residual, concat):
        _, params = net.init_fn(jax.random.PRNGKey(4), x.shape)
        padded = net.apply_fn(params, x, mask_constant=PAD)
        truncated = np.concatenate([net.apply_fn(params, x[n:n + 1, :ell]) for n, ell in enumerate(LENGTHS)])
        np.testing.assert_allclose(padded, truncated, rtol=1e-10, atol=1e-12)
        assert np.max(np.abs(net.apply_fn(params, np.where(x == PAD, 0., x)) - truncated)) > 1e-2


def test_masks_of_several_inputs():
    """A network of two inputs (``parallel``) masks each array input, as neural-tangents' nested-parallel
    test does. Truth: with the last position of every example masked, pooling excludes it, so the
    branch equals the kernel of the inputs without that position; the flat input has no masked entry
    and is unchanged. Without ``mask_constant`` the masked branch differs (the mask is not ignored)."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    seq1, seq2 = jax.random.normal(keys[0], (3, 4, 2)), jax.random.normal(keys[1], (2, 4, 2))
    flat1, flat2 = jax.random.normal(keys[2], (3, 5)), jax.random.normal(keys[3], (2, 5))
    masked1, masked2 = seq1.at[:, -1].set(-7.), seq2.at[:, -1].set(-7.)
    pooled = stax.serial(stax.Conv(4, (2,), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    dense = stax.serial(stax.Dense(4), stax.Erf(), stax.Dense(1))
    kernel_fn = stax.parallel(pooled, dense).kernel_fn
    got = kernel_fn([masked1, flat1], [masked2, flat2], ("nngp", "ntk"), mask_constant=-7.)
    want = [pooled.kernel_fn(seq1[:, :-1], seq2[:, :-1], ("nngp", "ntk")), dense.kernel_fn(flat1, flat2, ("nngp", "ntk"))]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    unmasked = kernel_fn([masked1, flat1], [masked2, flat2], "nngp")
    assert not np.allclose(unmasked[0], want[0].nngp, rtol=1e-2)
