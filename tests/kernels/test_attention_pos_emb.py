"""`GlobalSelfAttention`'s positional embeddings (``pos_emb_type="SUM"``/``"CONCAT"``).

Three independent truths: neural-tangents 0.6.5's kernels (tests/data/nt_attention_reference.npz,
made by experiments/benchmarks/generate_reference_attention.py), Monte Carlo estimates from
wide finite networks, and the position distances written out by loops. Next to each agreement,
a deliberately wrong variant fails the same check.
"""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.stax.attention import position_distances

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "nt_attention_reference.npz"
KEYS = ("nngp", "ntk", "nngp_11", "ntk_11")

# The decay functions a reference spec names, with the source text the file stores for each
# (``_decay_fns``), so that a change on either side shows.
DECAY_FNS = {
    "exp": ("lambda d: jnp.exp(-d)", lambda d: jnp.exp(-d)),
    "exp_slow": ("lambda d: jnp.exp(-0.3 * d)", lambda d: jnp.exp(-0.3 * d)),
    "inverse": ("lambda d: 1 / (1 + d)", lambda d: 1 / (1 + d)),
}


@pytest.fixture(scope="module")
def data():
    return np.load(DATA)


def _cases():
    return json.loads(str(np.load(DATA)["_cases"]))


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def network(spec, **changes):
    """The spec's network (``[LayerName, kwargs]`` items in series); ``changes`` alter the attention layer."""
    layers = []
    for name, kwargs in spec:
        kwargs = {k: _tuples(v) for k, v in kwargs.items()}
        if name == "GlobalSelfAttention":
            kwargs.update(changes)
            if isinstance(kwargs.get("pos_emb_decay_fn"), str):
                kwargs["pos_emb_decay_fn"] = DECAY_FNS[kwargs["pos_emb_decay_fn"]][1]
        layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def relative_error(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def our_kernels(data, case, with_none=True, **changes):
    kernel_fn = network(json.loads(str(data[f"{case}/spec"])), **changes).kernel_fn
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    out = dict(zip(("nngp", "ntk"), kernel_fn(x1, x2, ("nngp", "ntk"))))
    if with_none:
        out.update(zip(("nngp_11", "ntk_11"), kernel_fn(x1, None, ("nngp", "ntk"))))
    return out


# ----------------------------------------------------------------------------- neural-tangents

# The default suite runs three (about 0.3-1 s of CPU each: two compilations), the rest are slow. 2-D
# position order with a decay is in the slow cases and, cheaply, in test_position_distances_written_out.
DEFAULT_CASES = ("seq_sum_softmax_linear_val1_exp", "seq_concat_identity_sqrt_val0_onehot",
                 "seq_sum_identity_sqrt_val0_exp")


def test_reference_file_names_our_decay_functions(data):
    stored = json.loads(str(data["_decay_fns"]))
    assert stored == {name: text for name, (text, _) in DECAY_FNS.items()}
    cases = _cases()
    assert len(cases) == 30 and set(DEFAULT_CASES) <= set(cases)


@pytest.mark.parametrize("case", [c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow)
                                  for c in _cases()])
def test_matches_neural_tangents(data, case):
    ours = our_kernels(data, case)
    for key in KEYS:
        assert relative_error(ours[key], data[f"{case}/{key}"]) < 1e-6, key


@pytest.mark.parametrize("case, change", [
    ("seq_sum_softmax_linear_val1_exp", dict(pos_emb_type="CONCAT")),  # the other embedding's weights
    pytest.param("seq_sum_softmax_linear_val1_exp", dict(val_pos_emb=False), marks=pytest.mark.slow),
    ("seq_sum_identity_sqrt_val0_exp", dict(val_pos_emb=True)),        # the cross term through values
    pytest.param("seq_sum_softmax_linear_val1_exp", dict(W_pos_emb_std=1.3 * 1.05), marks=pytest.mark.slow),
    pytest.param("img_concat_softmax_val0_exp", dict(pos_emb_p_norm=2), marks=pytest.mark.slow),
    pytest.param("seq_concat_softmax_nchan96_gap", dict(n_chan_pos_emb=None), marks=pytest.mark.slow),
])
def test_a_wrong_embedding_fails_the_comparison(data, case, change):
    ours = our_kernels(data, case, with_none=False, **change)
    assert max(relative_error(ours[key], data[f"{case}/{key}"]) for key in ("nngp", "ntk")) > 1e-3


@pytest.mark.slow
def test_block_by_block_evaluation_is_the_whole(data):
    """The embeddings' covariance depends on positions only, so blocks of examples see the same one."""
    case = "img_conv_concat_softmax_inverse"
    kernel_fn = network(json.loads(str(data[f"{case}/spec"]))).kernel_fn
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    for x in (x2, None):
        whole, blocks = kernel_fn(x1, x, ("nngp", "ntk"), block_size=0), kernel_fn(x1, x, ("nngp", "ntk"), block_size=1)
        for a, b in zip(whole, blocks):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_position_distances_written_out():
    shape, p = (3, 4), 1.5
    positions = [(i, j) for i in range(3) for j in range(4)]  # row-major, as the kernel's flattened axes
    loops = np.array([[abs(a - c) ** p + abs(b - d) ** p for (c, d) in positions] for (a, b) in positions])
    np.testing.assert_allclose(position_distances(shape, p), loops, rtol=1e-15)
    # The same sizes in the other order (an implementation that swapped H and W) differ.
    swapped = position_distances((4, 3), p)
    assert np.abs(swapped - loops).max() > 1


# ----------------------------------------------------------------------------- Monte Carlo

WIDTH, SAMPLES = 128, 32

MC_CASES = {
    # name: (attention arguments, inputs' shape (N, *S, C)); W_pos_emb_std is what the wrong variant changes
    "sum": (dict(pos_emb_type="SUM", val_pos_emb=True, pos_emb_decay_fn=lambda d: jnp.exp(-d), pos_emb_p_norm=1,
                 W_pos_emb_std=1.3), (3, 5, WIDTH)),
    "concat": (dict(pos_emb_type="CONCAT", val_pos_emb=False, pos_emb_decay_fn=lambda d: 1 / (1 + d),
                    n_chan_pos_emb=WIDTH // 2, W_pos_emb_std=1.6), (3, 2, 3, WIDTH)),
}


def _mc_attention(**kwargs):
    return stax.GlobalSelfAttention(WIDTH, WIDTH, WIDTH // 4, 4, W_key_std=1.2, W_value_std=1.1, W_out_std=0.9,
                                    **kwargs)


def _pairs(kernel, spatial_ndim):
    """Public ``(N1, N2, S_1, S'_1, ...)`` as ``(N1, N2, P, P')``."""
    k = np.asarray(kernel)
    order = (0, 1) + tuple(2 + 2 * i for i in range(spatial_ndim)) + tuple(3 + 2 * i for i in range(spatial_ndim))
    p = int(np.prod(k.shape[2::2]))
    return k.transpose(order).reshape(k.shape[:2] + (p, p))


@pytest.fixture(scope="module")
def mc_samples():
    """Per case: inputs and ``SAMPLES`` empirical NNGPs ``f(x) f(x)^T / WIDTH`` (channels' mean), each from
    one random initialisation (embeddings included) of the finite layer.

    The inputs have ``WIDTH`` channels, as a wide layer's outputs would: the embeddings' overlap
    with them, ``X E^T / C``, vanishes only at infinite width. Keys are ``unsafe_rbg`` ones: the
    default threefry keys cost about 3 s of CPU to compile per initialisation, this about 1.
    """
    out = {}
    for name, (kwargs, shape) in MC_CASES.items():
        init_fn, apply_fn, _ = _mc_attention(**kwargs)
        x = np.random.default_rng(7).standard_normal(shape)

        def draw(key, init_fn=init_fn, apply_fn=apply_fn, x=x):
            _, params = init_fn(key, x.shape)
            f = apply_fn(params, x).reshape(x.shape[0], -1, WIDTH)
            return jnp.einsum("npc,mqc->nmpq", f, f) / WIDTH

        keys = jax.random.split(jax.random.key(3, impl="unsafe_rbg"), SAMPLES)
        out[name] = x, np.asarray(jax.jit(jax.vmap(draw))(keys))
    return out


def _agrees(exact, samples):
    """Every entry within 4.5 standard errors plus 2% of the largest (the O(1/width) bias of a
    width-128 layer, measured 4-10% at most with 32 samples, all within 3.5 standard errors)."""
    mean, error = samples.mean(0), samples.std(0, ddof=1) / math.sqrt(len(samples))
    return bool(np.all(np.abs(mean - exact) <= 4.5 * error + 0.02 * np.abs(exact).max()))


@pytest.mark.parametrize("name", MC_CASES)
def test_kernel_matches_finite_networks(mc_samples, name):
    kwargs, shape = MC_CASES[name]
    x, samples = mc_samples[name]
    exact = _pairs(_mc_attention(**kwargs).kernel_fn(x, None, "nngp"), len(shape) - 2)
    assert _agrees(exact, samples)


@pytest.mark.parametrize("name", MC_CASES)
def test_wrong_embedding_scale_fails_the_monte_carlo(mc_samples, name):
    kwargs, shape = MC_CASES[name]
    x, samples = mc_samples[name]
    wrong = dict(kwargs, W_pos_emb_std=kwargs["W_pos_emb_std"] / 2)
    assert not _agrees(_pairs(_mc_attention(**wrong).kernel_fn(x, None, "nngp"), len(shape) - 2), samples)


# ----------------------------------------------------------------------------- arguments

def test_enum_and_string_are_the_same_layer():
    key = jax.random.key(0, impl="unsafe_rbg")
    for member, key_channels in ((stax.PositionalEmbedding.SUM, 3), (stax.PositionalEmbedding.CONCAT, 6)):
        by_enum = stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type=member, val_pos_emb=True)
        by_name = stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type=member.value, val_pos_emb=True)
        assert by_enum.kernel_fn.name == by_name.kernel_fn.name
        enum_params = jax.eval_shape(lambda k: by_enum.init_fn(k, (2, 4, 3))[1], key)
        name_params = jax.eval_shape(lambda k: by_name.init_fn(k, (2, 4, 3))[1], key)
        assert enum_params == name_params
        _, keys, values, _, _, embedding = enum_params
        # neural-tangents' layout: one embedding for all examples, concatenated along channels
        assert embedding.shape == (1, 4, 3) and keys.shape == values.shape == (2, key_channels, 8)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(pos_emb_type="ROTARY"), "pos_emb_type"),
    (dict(pos_emb_type=1), "pos_emb_type"),
    (dict(W_pos_emb_std=2.), "W_pos_emb_std"),  # with pos_emb_type="NONE" nothing would use them
    (dict(val_pos_emb=True), "val_pos_emb"),
    (dict(n_chan_pos_emb=4), "n_chan_pos_emb"),
    (dict(pos_emb_decay_fn=jnp.exp), "pos_emb_decay_fn"),
    (dict(pos_emb_p_norm=1), "pos_emb_p_norm"),
    (dict(pos_emb_type="SUM", pos_emb_p_norm=1), "pos_emb_p_norm"),  # no decay_fn: no distances
    (dict(pos_emb_type="SUM", pos_emb_decay_fn=jnp.exp, pos_emb_p_norm=0), "pos_emb_p_norm"),
    (dict(pos_emb_type="SUM", pos_emb_decay_fn=jnp.exp, pos_emb_p_norm=float("nan")), "pos_emb_p_norm"),
    (dict(pos_emb_type="SUM", pos_emb_decay_fn="exp"), "pos_emb_decay_fn"),
    (dict(pos_emb_type="CONCAT", n_chan_pos_emb=0), "n_chan_pos_emb"),
    (dict(pos_emb_type="CONCAT", W_pos_emb_std=float("inf")), "W_pos_emb_std"),
    (dict(pos_emb_type="CONCAT", val_pos_emb="yes"), "val_pos_emb"),
])
def test_bad_arguments_are_refused_by_name(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"GlobalSelfAttention.*{argument}"):
        stax.GlobalSelfAttention(8, 8, 8, 2, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pos_emb_type="SUM", n_chan_pos_emb=5), "n_chan_pos_emb.*4 channels"),
    (dict(pos_emb_type="SUM", pos_emb_decay_fn=lambda d: 1 - d, pos_emb_p_norm=1), "not positive semi-definite"),
    (dict(pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: jnp.log(d)), "non-finite"),
    (dict(pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: d.sum()), "elementwise"),
    (dict(pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: jnp.exp(-d) + jnp.triu(d)), "not symmetric"),
])
def test_refusals_on_the_inputs_name_the_layer(kwargs, match):
    x = np.random.default_rng(2).standard_normal((2, 5, 4))
    init_fn, _, kernel_fn = stax.GlobalSelfAttention(8, 8, 8, 2, **kwargs)
    with pytest.raises(ValueError, match=f"GlobalSelfAttention.*{match}"):
        kernel_fn(x, None, "nngp")
    with pytest.raises(ValueError, match=f"GlobalSelfAttention.*{match}"):
        init_fn(jax.random.PRNGKey(0), x.shape)


def test_apply_fn_refuses_inputs_of_another_spatial_shape():
    init_fn, apply_fn, _ = stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="CONCAT")
    params = jax.eval_shape(lambda k: init_fn(k, (2, 5, 4))[1], jax.random.key(0, impl="unsafe_rbg"))
    with pytest.raises(ValueError, match=r"GlobalSelfAttention.*spatial shape \(6,\)"):
        jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((2, 6, 4), jnp.float64))
