"""Masked inputs (``mask_constant``, `kernels.stax.masking`): neural-tangents 0.6.5's kernels and
outputs, the kernels and outputs of the same networks on the unmasked entries alone (truncated
sequences), a rule that ignores the mask rejected by the same checks, and refusals by name."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, stax
from tests.kernels.spec import network_from_spec

jax.config.update("jax_enable_x64", True)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "nt_masking_reference.npz")
PAD = 10.


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA)


def relative_error(ours, ref):
    ref = np.asarray(ref)
    return float(np.max(np.abs(np.asarray(ours) - ref)) / max(np.max(np.abs(ref)), 1e-300))


# The default suite checks the imdb-like network here (plain pooling below, against its own apply_fn
# and truncated sequences); the rest are `slow`.
DEFAULT_CASES = ("seq_imdb_like",)
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
        arrays = [reference[f"{name}/param/{i}/{j}"] for j in range(2) if f"{name}/param/{i}/{j}" in reference]
        params.append(tuple(arrays))
    return tuple(params)


@pytest.mark.parametrize("name", ["seq_dense_relu_gap", pytest.param("seq_flatten", marks=pytest.mark.slow)])
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


@pytest.mark.parametrize("net", [pytest.param(IMDB, marks=pytest.mark.slow), POOLED], ids=["attention", "pooling"])
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


# ----------------------------------------------------------------- refusals

@pytest.mark.parametrize("layer, pattern", [
    (stax.Conv(4, (2,)), r"Conv\("),
    (stax.AvgPool((2,)), r"AvgPool\("),
    (stax.serial(stax.FanOut(2), stax.FanInSum()), r"FanOut\("),
    (stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM"), r"GlobalSelfAttention\("),
    (stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False, n_samples=8), r"GlobalSelfAttention\("),
])
def test_layers_without_mask_support_refuse_by_name(layer, pattern):
    net = stax.serial(stax.Dense(4), layer)
    x = _padded(7)
    with pytest.raises(NotImplementedError, match=pattern + ".*mask_constant"):
        net.kernel_fn(x, None, "nngp", mask_constant=PAD)


def test_apply_fn_of_a_layer_without_mask_support_refuses_by_name():
    x = _padded(7)
    for layer, pattern in ((stax.Conv(4, (2,)), r"Conv\("), (stax.serial(stax.Identity(), stax.AvgPool((2,))),
                                                              r"AvgPool\(")):
        with pytest.raises(NotImplementedError, match=pattern + ".*mask_constant"):
            layer.apply_fn(((), ()), x, mask_constant=PAD)  # refused before the parameters are read


def test_bad_mask_arguments_are_refused_by_name():
    x = _padded(7)
    with pytest.raises(TypeError, match="mask_constant"):
        POOLED.kernel_fn(x, None, "nngp", mask_constant="pad")
    with pytest.raises(NotImplementedError, match="block_size.*mask_constant"):
        POOLED.kernel_fn(x, None, "nngp", mask_constant=PAD, block_size=2)
    k = POOLED.kernel_fn(x, None, None, mask_constant=PAD)
    with pytest.raises(ValueError, match="mask_constant"):
        POOLED.kernel_fn(k, mask_constant=PAD)
    _, params = POOLED.init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(TypeError, match="mask_constant"):
        POOLED.apply_fn(params, x, mask_constant=jnp.ones(3))
