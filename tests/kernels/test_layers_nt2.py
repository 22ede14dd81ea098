"""The layers of kernels/stax/extra.py (Gabor, ExpNormalized, Dropout, Index/Slice, ImageResize, the
enums) and Dense's and Conv's ``s``: against neural-tangents 0.6.5, against finite networks, and their errors.

Reference values: tests/data/nt_layers2_reference.npz (tests/data/nt_layers2_reference.README.md),
compared as the oracle is: max |ours - ref| / max |ref| < 1e-6 in float64. The Monte Carlo rows of
Gabor, Index, ImageResize, Dropout(mode="test") and Dense's and Conv's ``s`` are in tests/kernels/test_layers.py;
here the layers whose finite network that table can not express (Dropout in training, whose
apply_fn takes a key; ExpNormalized, which has none).
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import empirical_kernel_fn, stax
from tests.kernels import test_layers
from tests.kernels.spec import network_from_spec

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_layers2_reference.npz"
KEYS = ("nngp", "ntk", "nngp_11", "ntk_11", "nngp_xx", "ntk_xx")


def decode_index(items):
    """A JSON ``idx``: a list of ints, ``"..."`` and ``[start, stop, step]`` (a slice)."""
    return tuple(Ellipsis if i == "..." else slice(*i) if isinstance(i, list) else i for i in items)


def decoded(spec):
    spec = json.loads(spec) if isinstance(spec, (str, bytes)) else spec
    return [[name, dict(kw, idx=decode_index(kw["idx"]))] if name == "Index" else [name, kw] for name, kw in spec]


def relative_error(ours, ref):
    scale = np.abs(ref).max()
    return float(np.abs(np.asarray(ours) - ref).max() / scale)


def our_kernels(data, case, spec=None):
    """``{key: array}`` for `KEYS`, from widekit, for ``case``'s inputs (and ``spec``, by default its own)."""
    _, _, kernel_fn = network_from_spec(decoded(str(data[f"{case}/spec"]) if spec is None else spec))
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    out = {}
    for suffix, other in (("", x2), ("_11", None), ("_xx", x1)):
        k = kernel_fn(x1, other, ("nngp", "ntk"))
        out["nngp" + suffix], out["ntk" + suffix] = k.nngp, k.ntk
    return out


# One case per layer in the default suite (each compiles three kernel functions: ~3-10 s of CPU);
# the rest with the slow checks.
DEFAULT_CASES = {"mlp_gabor", "mlp_expnormalized", "mlp_dropout_train", "cnn2d_dropout_train_flatten",
                 "cnn2d_index_spatial_output", "resize_inputs_nearest_first", "mlp_dense_standard_s",
                 "cnn2d_conv_standard_s"}


def _cases():
    return [pytest.param(c, marks=() if c in DEFAULT_CASES else pytest.mark.slow)
            for c in json.loads(str(np.load(DATA)["_cases"]))]


@pytest.mark.parametrize("case", _cases())
def test_matches_neural_tangents(case):
    data = np.load(DATA)
    ours = our_kernels(data, case)
    for key in KEYS:
        ref = data[f"{case}/{key}"]
        assert np.shape(ours[key]) == ref.shape, key
        assert relative_error(ours[key], ref) < 1e-6, (key, relative_error(ours[key], ref))


# A wrong rule fails the same comparison: each entry changes one layer's argument (or drops its
# effect) and must land far from the reference.
WRONG = {
    "mlp_gabor": ("Gabor", "Sin", {}),
    "mlp_expnormalized": ("ExpNormalized", "ExpNormalized", {"gamma": 1.2, "shift": -0.8}),
    "mlp_dropout_train": ("Dropout", "Dropout", {"rate": 0.7, "mode": "test"}),
    "cnn2d_dropout_train_gap": ("Dropout", "Dropout", {"rate": 0.65}),
    "cnn2d_index_crop_gap": ("Index", "Index", {"idx": decode_index([[None, None, None], [0, 4, None],
                                                                     [None, None, 2]])}),
    "cnn2d_resize_linear_down_flatten": ("ImageResize", "ImageResize", {"shape": (-1, 4, 3, -1),
                                                                        "method": "nearest"}),
    "mlp_dense_standard_s": ("Dense", "Dense", {"out_dim": 256, "W_std": 1.2, "b_std": 0.1,
                                                "parameterization": "standard", "s": (2, 2)}),
    # the first Conv without its s=(1, 2): the next one's s_in=2 then divides half the channels
    "cnn2d_conv_standard_s": ("Conv", "Conv", {"out_chan": 64, "filter_shape": (3, 3), "padding": "SAME",
                                               "W_std": 1.3, "b_std": 0.2, "parameterization": "standard"}),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c.startswith("mlp") else pytest.mark.slow)
                                  for c in sorted(WRONG)])
def test_a_wrong_rule_fails_the_comparison(case):
    data = np.load(DATA)
    layer, replacement, kwargs = WRONG[case]
    spec = decoded(str(data[f"{case}/spec"]))
    # the first such layer; for Dense the second one, whose s=(2, 3) the replacement changes
    at = [i for i, (name, _) in enumerate(spec) if name == layer][1 if layer == "Dense" else 0]
    spec[at] = [replacement, kwargs]
    ours = our_kernels(data, case, spec)
    worst = max(relative_error(ours[key], data[f"{case}/{key}"]) for key in KEYS)
    assert worst > 1e-3, worst


# ----------------------------------------------------------------------------- Monte Carlo

WIDTH, SAMPLES = 256, 64


def _mc_mean_and_error(values):
    values = np.asarray(values, np.float64)
    return values.mean(0), values.std(0, ddof=1) / math.sqrt(len(values))


def _agrees(exact, mean, error, allowance=1e-3):
    """Within 4.5 standard errors plus ``allowance`` of the scale (test_layers' bound)."""
    exact = np.asarray(exact)
    return bool(np.all(np.abs(mean - exact) <= 4.5 * error + allowance * np.abs(exact).max()))


def _dropout_network(mode="train"):
    return stax.serial(stax.Dense(WIDTH, 1.3, 0.2), stax.Relu(), stax.Dropout(0.6, mode),
                       stax.Dense(WIDTH, 1.1, 0.1))


@pytest.fixture(scope="module")
def dropout_samples():
    """Empirical NNGP (readout channels' mean) and NTK (first channel) of finite dropout networks.

    One mask per forward pass (one key per sample) for ``x1`` against itself; independent passes
    (two keys) for ``x1`` against ``x2``.
    """
    init_fn, apply_fn, _ = _dropout_network()
    x1, x2 = test_layers.inputs((3, 4), seed=3), test_layers.inputs((2, 4), seed=4)
    with jax.enable_x64(False):
        x1, x2 = x1.astype(jnp.float32), x2.astype(jnp.float32)

        @jax.jit
        def draw(key):
            k_init, k1, k2 = jax.random.split(key, 3)
            _, params = init_fn(k_init, x1.shape)
            f11 = apply_fn(params, x1, rng=k1)
            f2 = apply_fn(params, x2, rng=k2)
            ntk_11 = empirical_kernel_fn(lambda p, z: apply_fn(p, z, rng=k1)[..., :1])(x1, None, "ntk", params)
            # Two passes: the NTK's two Jacobians through two masks.
            j1 = jax.jacobian(lambda p: apply_fn(p, x1, rng=k1)[:, 0])(params)
            j2 = jax.jacobian(lambda p: apply_fn(p, x2, rng=k2)[:, 0])(params)
            ntk_12 = sum(jnp.tensordot(a, b, (tuple(range(1, a.ndim)), tuple(range(1, b.ndim))))
                         for a, b in zip(jax.tree_util.tree_leaves(j1), jax.tree_util.tree_leaves(j2)))
            return f11 @ f11.T / WIDTH, f11 @ f2.T / WIDTH, ntk_11, ntk_12

        samples = jax.lax.map(draw, jax.random.split(jax.random.PRNGKey(11), SAMPLES))
    return np.asarray(x1, np.float64), np.asarray(x2, np.float64), [np.asarray(s, np.float64) for s in samples]


def test_dropout_kernel_matches_finite_networks(dropout_samples):
    x1, x2, (nngp_11, nngp_12, ntk_11, ntk_12) = dropout_samples
    kernel_fn = _dropout_network().kernel_fn
    same, other = kernel_fn(x1, None, ("nngp", "ntk")), kernel_fn(x1, x2, ("nngp", "ntk"))
    for exact, values in ((same.nngp, nngp_11), (same.ntk, ntk_11), (other.nngp, nngp_12), (other.ntk, ntk_12)):
        assert _agrees(exact, *_mc_mean_and_error(values))


def test_dropout_without_its_factor_fails_the_monte_carlo(dropout_samples):
    """The test-mode kernel (no 1/rate on an example's own entries) is rejected by the same check."""
    x1, _, (nngp_11, _, ntk_11, _) = dropout_samples
    wrong = _dropout_network("test").kernel_fn(x1, None, ("nngp", "ntk"))
    assert not _agrees(wrong.nngp, *_mc_mean_and_error(nngp_11))
    assert not _agrees(wrong.ntk, *_mc_mean_and_error(ntk_11))


def test_dropout_apply_fn_keeps_rate_and_scales_by_it():
    x = jnp.ones((200, 500))
    _, apply_fn, _ = stax.Dropout(0.3)
    out = np.asarray(apply_fn((), x, rng=jax.random.PRNGKey(0)))
    kept = out != 0
    assert abs(kept.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / out.size)
    np.testing.assert_allclose(out[kept], 1 / 0.3, rtol=1e-6)
    again = np.asarray(apply_fn((), x, rng=jax.random.PRNGKey(1)))
    assert (again != out).any()  # a new mask per key
    np.testing.assert_array_equal(stax.Dropout(0.3, mode="test").apply_fn((), x), x)
    with pytest.raises(ValueError, match="`rng`"):
        apply_fn((), x)


@pytest.mark.slow  # five compilations of block-by-block evaluation: ~10 s of CPU
def test_dropout_same_batch_is_found_however_the_kernel_is_evaluated():
    """x2 equal to x1 is the same batch (as neural-tangents); evaluation in blocks, whose diagonal
    blocks are computed as pairs, agrees with one shot; x2 = -x1 (equal variances) is another batch."""
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dropout(0.5), stax.Dense(8), stax.Erf(),
                                  stax.Dropout(0.8), stax.Dense(1))
    x = test_layers.inputs((5, 3), seed=5)
    one_shot = kernel_fn(x, None, ("nngp", "ntk"), block_size=0)
    for k in (kernel_fn(x, x, ("nngp", "ntk"), block_size=0), kernel_fn(x, None, ("nngp", "ntk"), block_size=2),
              kernel_fn(x, x, ("nngp", "ntk"), block_size=2)):
        np.testing.assert_allclose(k.nngp, one_shot.nngp, rtol=1e-10)
        np.testing.assert_allclose(k.ntk, one_shot.ntk, rtol=1e-10)
    minus = kernel_fn(x, -x, "nngp", block_size=0)
    assert not np.allclose(np.diag(minus), np.diag(one_shot.nngp))
    np.testing.assert_allclose(np.diag(minus), np.diag(kernel_fn(x, -x, "nngp", block_size=2)), rtol=1e-10)


@pytest.mark.parametrize("gamma,shift", [(1.0, -1.0), (0.6, -0.5)])
def test_exp_normalized_is_the_kernel_of_an_exponential_at_unit_variance(gamma, shift):
    """On inputs of unit variance after a Dense without bias (``|x|^2 = d``) ExpNormalized is the
    kernel of ``a exp(b u)`` with ``a = exp(gamma (shift - 1) / 2)``, ``b = sqrt(gamma)``:
    ``E[a^2 exp(b (u + v))] = exp(gamma (rho + shift))``. Finite networks with that activation
    agree with it; a shift 0.3 lower (all entries 26% smaller at gamma 1) does not."""
    x = test_layers.inputs((3, 6), seed=8)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(x.shape[1])
    a, b = math.exp(gamma * (shift - 1) / 2), math.sqrt(gamma)
    init_fn, apply_fn, _ = stax.serial(stax.Dense(WIDTH), stax.Exp(a, b), stax.Dense(WIDTH))
    with jax.enable_x64(False):
        x32 = x.astype(jnp.float32)

        @jax.jit
        def draw(key):
            _, params = init_fn(key, x32.shape)
            f = apply_fn(params, x32)
            return f @ f.T / WIDTH, empirical_kernel_fn(lambda p, z: apply_fn(p, z)[..., :1])(x32, None, "ntk", params)

        nngp, ntk = jax.lax.map(draw, jax.random.split(jax.random.PRNGKey(2), SAMPLES))

    def closed(g, h=shift):
        return stax.serial(stax.Dense(WIDTH), stax.ExpNormalized(g, h), stax.Dense(WIDTH)).kernel_fn(
            x, None, ("nngp", "ntk"))
    right, wrong = closed(gamma), closed(gamma, shift - 0.3)
    for field, values in (("nngp", nngp), ("ntk", ntk)):
        stats = _mc_mean_and_error(values)
        assert _agrees(getattr(right, field), *stats), field
        assert not _agrees(getattr(wrong, field), *stats), field


# The Monte Carlo rows of tests/kernels/test_layers.py for these layers reject a wrong rule: each
# entry is the row's body with one layer replaced (same output shape).
WRONG_MC = {
    "Gabor": lambda: [test_layers.dense(), stax.Sin()],
    "Index": lambda: [test_layers.conv(), stax.Relu(), stax.Index(stax.Slice[:, :-1, ::-2])],
    "ImageResize_linear": lambda: [test_layers.conv(), stax.Relu(), stax.ImageResize((-1, 5, 3, -1), "nearest")],
    "ImageResize_cubic": lambda: [test_layers.conv(), stax.Relu(), stax.ImageResize((-1, 3, 6, -1), "linear")],
    "Dense_standard_s": lambda: [stax.Dense(test_layers.WIDTH // 2, 1.1, 0.2, parameterization="standard",
                                            s=(1, 2)), stax.Relu(),
                                 stax.Dense(test_layers.WIDTH, 1.2, 0.1, parameterization="standard")],
}


@pytest.mark.slow  # the table's samples again, unless test_layers ran in this process
@pytest.mark.parametrize("case", sorted(WRONG_MC))
def test_a_wrong_rule_fails_the_table_monte_carlo(case):
    assert case in test_layers.CASES
    _, samples = test_layers.closed_and_samples(case)
    width = test_layers.WIDTH if len(test_layers.CASES[case][1]) == 2 else test_layers.SPATIAL_WIDTH
    _, _, kernel_fn = stax.serial(*WRONG_MC[case](), stax.Dense(width, W_std=0.9, b_std=0.1))
    x = np.random.default_rng(0).standard_normal(test_layers.CASES[case][1]).astype(np.float32)  # the table's
    x = jnp.asarray(x.astype(np.float64))
    wrong = kernel_fn(x, None, ("nngp", "ntk"))
    assert not all(_agrees(getattr(wrong, f), *_mc_mean_and_error(samples[f])) for f in ("nngp", "ntk"))


# ----------------------------------------------------------------------------- enums

def test_enums_have_neural_tangents_members_and_work_as_strings():
    assert [m.value for m in stax.Padding] == ["CIRCULAR", "SAME", "VALID"]
    assert [m.value for m in stax.PositionalEmbedding] == ["NONE", "SUM", "CONCAT"]
    assert [m.value for m in stax.AttentionMechanism] == ["SOFTMAX", "IDENTITY", "ABS", "RELU"]
    assert [m.value for m in stax.AggregateImplementation] == ["DENSE", "SPARSE"]
    x = test_layers.inputs((3, 5, 5, 2), seed=9)
    assert all(stax.Padding(p.value) is p and p == p.value for p in stax.Padding)
    for padding in (stax.Padding.CIRCULAR,):  # one compiled network: the members are the strings
        by_enum = stax.serial(stax.Conv(4, (3, 2), padding=padding), stax.AvgPool((2, 2), padding=padding))
        by_name = stax.serial(stax.Conv(4, (3, 2), padding=padding.value), stax.AvgPool((2, 2), padding=padding.value))
        np.testing.assert_array_equal(by_enum.kernel_fn(x, None, "ntk"), by_name.kernel_fn(x, None, "ntk"))
        _, params = by_enum.init_fn(jax.random.PRNGKey(0), x.shape)
        np.testing.assert_array_equal(by_enum.apply_fn(params, x), by_name.apply_fn(params, x))
    seq = test_layers.inputs((3, 4, 3), seed=10)
    by_enum = stax.GlobalSelfAttention(8, 8, 8, 2, attention_mechanism=stax.AttentionMechanism.RELU,
                                       pos_emb_type=stax.PositionalEmbedding.NONE)
    by_name = stax.GlobalSelfAttention(8, 8, 8, 2, attention_mechanism="RELU")
    np.testing.assert_array_equal(by_enum.kernel_fn(seq, None, "nngp"), by_name.kernel_fn(seq, None, "nngp"))
    g = jnp.array([[-1., 0.5, 2.]])
    np.testing.assert_allclose(stax.AttentionMechanism.SOFTMAX.fn()(g), jax.nn.softmax(g, axis=-1))
    np.testing.assert_allclose(stax.AttentionMechanism.ABS.fn()(g), jnp.abs(g))
    np.testing.assert_allclose(stax.AttentionMechanism.RELU.fn()(g), jnp.maximum(g, 0))
    np.testing.assert_allclose(stax.AttentionMechanism.IDENTITY.fn()(g), g)
    with pytest.raises(ValueError, match="pos_emb_type"):  # SUM and CONCAT: tests/kernels/test_attention_pos_emb.py
        stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="ROTARY")


# ----------------------------------------------------------------------------- Index

def test_index_kernel_and_outputs():
    x = test_layers.inputs((2, 5, 6, 3), seed=12)
    net = stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu())
    whole = np.asarray(net.kernel_fn(x, None, "nngp"))  # (N, N, H, H', W, W')
    for idx, pick in ((stax.Slice[:, 1:4, ::-2], lambda k: k[:, :, 1:4, 1:4, ::-2, ::-2]),
                      (stax.Slice[..., 2, :], lambda k: k[:, :, :, :, 2, 2])):
        indexed = stax.serial(net, stax.Index(idx))
        np.testing.assert_allclose(indexed.kernel_fn(x, None, "nngp"), pick(whole), rtol=1e-12)
        _, params = indexed.init_fn(jax.random.PRNGKey(0), x.shape)
        out_shape, _ = indexed.init_fn(jax.random.PRNGKey(0), x.shape)
        assert indexed.apply_fn(params, x).shape == tuple(out_shape) == np.zeros(x.shape[:-1] + (4,))[idx].shape
    assert stax.Slice[1:3, ..., 0] == (slice(1, 3), Ellipsis, 0)


def test_index_of_the_batch_axis_is_the_kernel_of_the_selected_examples():
    """neural-tangents' ``Kernel[idx]`` on the batch axis: the same slice of both batches. Truth: the network
    without the layer on the selected examples (checked once against neural-tangents on a Dense network:
    5e-16; after its Conv it keeps its reversed spatial order). Evaluated in one piece and not tiled
    (`KernelFn.whole_batch`): a block of examples would slice the block."""
    x1, x2 = test_layers.inputs((6, 5, 4, 2), seed=13), test_layers.inputs((7, 5, 4, 2), seed=14)
    net = stax.serial(stax.Conv(3, (2, 2), padding="SAME"), stax.Relu())
    for s in (slice(None, 3), slice(None, None, -2), slice(1, None, 2)):
        indexed = stax.serial(net, stax.Index(stax.Slice[s, :, ::2]), stax.Dense(2))
        plain = stax.serial(net, stax.Index(stax.Slice[:, :, ::2]), stax.Dense(2))
        for b in (x2, None):
            got = indexed.kernel_fn(x1, b, ("nngp", "ntk"))
            want = plain.kernel_fn(x1[s], None if b is None else b[s], ("nngp", "ntk"))
            np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
            np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
    assert indexed.kernel_fn.whole_batch
    with pytest.raises(NotImplementedError, match="slice only"):
        stax.serial(net, stax.Index(stax.Slice[1])).kernel_fn(x1, None, "nngp")


# ----------------------------------------------------------------------------- bad arguments

BAD = [
    (lambda: stax.Dropout(0.), "rate"), (lambda: stax.Dropout(1.5), "rate"), (lambda: stax.Dropout("a"), "rate"),
    (lambda: stax.Dropout(0.5, mode="eval"), "mode"),
    (lambda: stax.ExpNormalized(gamma=float("nan")), "gamma"), (lambda: stax.ExpNormalized(shift="x"), "shift"),
    (lambda: stax.ExpNormalized(do_clip=1), "do_clip"),
    (lambda: stax.Index([1, 2]), "idx"), (lambda: stax.Index(stax.Slice[::0]), "idx"),
    (lambda: stax.Index(stax.Slice[..., 1, ...]), "idx"), (lambda: stax.Index(1.5), "idx"),
    (lambda: stax.Index(stax.Slice[:], batch_axis=None), "batch_axis"),
    (lambda: stax.ImageResize((-1, 0, 3, -1), "linear"), "shape"), (lambda: stax.ImageResize(5, "linear"), "shape"),
    (lambda: stax.ImageResize((-1, 4, 4, -1), "bicubicc"), "method"),
    (lambda: stax.ImageResize((-1, 4, 4, -1), "linear", antialias="yes"), "antialias"),
    (lambda: stax.ImageResize((-1, 4, 4, -1), "linear", channel_axis=4), "channel_axis"),
    (lambda: stax.Dense(4, s=(1, 2)), "s"), (lambda: stax.Dense(4, parameterization="standard", s=(0, 1)), "s"),
    (lambda: stax.Dense(4, parameterization="standard", s=2), "s"),
]


@pytest.mark.parametrize("make,argument", BAD, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_are_refused_by_name(make, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        make()


def _image_net(*layers):
    return stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu(), *layers)


KERNEL_REFUSALS = [
    (lambda: _image_net(stax.Index(stax.Slice[1])), "batch axis with a slice only"),
    (lambda: _image_net(stax.Index(stax.Slice[..., :2])), "channel axis"),
    (lambda: _image_net(stax.Index(stax.Slice[:, 7])), "`idx`"),
    (lambda: _image_net(stax.Index(stax.Slice[:, 3:1])), "`idx`"),
    (lambda: _image_net(stax.Index(stax.Slice[:, :, :, :, :])), "`idx`"),
    (lambda: _image_net(stax.ImageResize((-1, 4, 4, 8), "linear")), "`shape`"),
    (lambda: _image_net(stax.ImageResize((2, 4, 4, -1), "linear")), "`shape`"),
    (lambda: _image_net(stax.ImageResize((-1, 4, -1), "linear")), "`shape`"),
    (lambda: stax.serial(stax.Dropout(0.5), stax.Dense(1)), "infinitely many channels"),
    (lambda: stax.serial(stax.Dense(4), stax.Dropout(0.5), stax.Relu()), "Gaussian"),
    (lambda: stax.serial(stax.Dense(4), stax.ExpNormalized(), stax.LayerNorm()), "channel mean"),
]


@pytest.mark.parametrize("make,match", KERNEL_REFUSALS, ids=[str(i) for i in range(len(KERNEL_REFUSALS))])
def test_kernel_fn_refusals_name_the_layer(make, match):
    _, _, kernel_fn = make()
    x = test_layers.inputs((2, 3, 3, 2) if "Conv" in kernel_fn.name else (2, 3), seed=13)
    with pytest.raises((ValueError, NotImplementedError), match=match) as error:
        kernel_fn(x, None, "nngp")
    assert any(layer in str(error.value) for layer in ("Index(", "ImageResize(", "Dropout(", "Relu(", "LayerNorm("))


def test_apply_fn_refusals():
    x = test_layers.inputs((2, 3, 3, 2), seed=14)
    with pytest.raises(ValueError, match="`idx`"):
        stax.Index(stax.Slice[:, 5]).apply_fn((), x)  # JAX would clamp 5 to 2 silently
    with pytest.raises(NotImplementedError, match="ExpNormalized"):
        stax.ExpNormalized().apply_fn((), x)
    with pytest.raises(ValueError, match="`shape`"):
        stax.ImageResize((-1, 4, -1), "linear").apply_fn((), x)
