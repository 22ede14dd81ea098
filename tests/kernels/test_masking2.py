"""Masked inputs (``mask_constant``, `kernels.stax.masking`) through `Dropout`, `Index` (`Slice`) and
`ImageResize`: neural-tangents 0.6.5's kernels and finite outputs (``tests/data/nt_masking2_reference.npz``),
the same networks on the unmasked entries alone, deliberately wrong mask rules rejected by the same
checks, and the one indexing that masks per position can not mean refused by name."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.stax import extra, masking
from tests.kernels.spec import network_from_spec
from tests.kernels.test_layers_nt2 import decoded, relative_error

jax.config.update("jax_enable_x64", True)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "nt_masking2_reference.npz")
PAD = 10.


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA)


def _network(reference, name):
    return network_from_spec(decoded(str(reference[f"{name}/spec"])))


def _kernels(reference, name, suffixes=("", "_11", "_xx")):
    """``{key: array}`` of widekit's kernels for the reference's keys of ``name`` (``x2``, ``None``, ``x1``)."""
    net = _network(reference, name)
    x1, x2 = reference[f"{name}/x1"], reference[f"{name}/x2"]
    out = {}
    for suffix, other in (("", x2), ("_11", None), ("_xx", x1)):
        if suffix in suffixes and f"{name}/nngp{suffix}" in reference:
            k = net.kernel_fn(x1, other, ("nngp", "ntk"), mask_constant=PAD)
            out["nngp" + suffix], out["ntk" + suffix] = k.nngp, k.ntk
    return out


# The default suite checks the network with all three layers and one with ExpNormalized (three kernel_fn calls,
# ~1 s of CPU each, per network); the rest are `slow`.
DEFAULT_CASES = ("seq_dropout_index_resize_gap", "seq_expnormalized_conv_gap")
KERNEL_CASES = [name if name in DEFAULT_CASES else pytest.param(name, marks=pytest.mark.slow)
                for name in json.loads(str(np.load(DATA)["_cases"]))]


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernels_match_neural_tangents(reference, name):
    for key, ours in _kernels(reference, name, ("", "_11")).items():
        assert relative_error(ours, reference[f"{name}/{key}"]) < 1e-6, key


@pytest.mark.slow
def test_dropout_kernels_of_one_batch_given_twice_match_neural_tangents(reference):
    """``kernel_fn(x1, x1)``: train-mode Dropout finds the same batch (neural-tangents' ``x1_is_x2``)."""
    names = [name for name in json.loads(str(reference["_cases"])) if f"{name}/nngp_xx" in reference]
    assert len(names) == 4
    for name in names:
        for key, ours in _kernels(reference, name, ("_xx",)).items():
            assert relative_error(ours, reference[f"{name}/{key}"]) < 1e-6, (name, key)


def _params(reference, name, n_layers):
    """neural-tangents' parameters: layer ``i``'s tuple, ``None`` where an array is absent (no bias)."""
    return [tuple(reference[f"{name}/param/{i}/{j}"] if f"{name}/param/{i}/{j}" in reference else None
                  for j in range(int(reference[f"{name}/param/{i}/len"]))) for i in range(n_layers)]


APPLY_DEFAULT = ("seq_dropout_index_resize_gap", "seq_index_batch_apply", "seq_resize_lanczos3_down_apply")
APPLY_CASES = [name if name in APPLY_DEFAULT else pytest.param(name, marks=pytest.mark.slow)
               for name in sorted({key.split("/")[0] for key in np.load(DATA).files if key.endswith("/apply")})]


@pytest.mark.parametrize("name", APPLY_CASES)
def test_apply_fn_matches_neural_tangents_on_its_parameters(reference, name):
    """Train-mode Dropout draws the same keep pattern from the same key as neural-tangents (jax 0.4.30's
    random bits: ``threefry_partitionable`` off)."""
    spec = json.loads(str(reference[f"{name}/spec"]))
    net = _network(reference, name)
    with jax.threefry_partitionable(False):
        out = jax.jit(lambda p, z: net.apply_fn(p, z, mask_constant=PAD, rng=jax.random.PRNGKey(5)))(
            _params(reference, name, len(spec)), reference[f"{name}/x1"])
    assert out.shape == reference[f"{name}/apply"].shape
    assert relative_error(out, reference[f"{name}/apply"]) < 1e-10


# ----------------------------------------------------------------- wrong mask rules fail the reference

class _UnmaskingDropout:
    """`kernels.stax.masking` as `extra` sees it, except that pointwise layers (Dropout) unmask their outputs."""

    POINTWISE = masking.Masking(mask_fn=lambda mask: jnp.zeros_like(mask))

    def __getattr__(self, attribute):
        return getattr(masking, attribute)


# Deliberately wrong mask rules, each in one layer of the default case (Dropout, Slice[:, 1:6], a linear
# resize to 9 positions): Index given the mask of positions 0-4 instead of 1-5; ImageResize masking an
# output that reads any masked input (the boolean mask resized and rounded up, which neural-tangents'
# docstring warns against) instead of one that reads only masked inputs; Dropout unmasking its outputs.
WRONG_RULES = {
    "index_shifts_the_mask": ("_index_mask", lambda name, items: lambda mask: mask[:, :5]),
    "resize_grows_the_mask": ("_reads_no_unmasked",
                              lambda resize, mask, shape: resize(mask.astype(jnp.float32), shape) != 0),
    "dropout_unmasks": ("masking", _UnmaskingDropout()),
}


@pytest.mark.parametrize("wrong", WRONG_RULES)
def test_a_wrong_mask_rule_fails_the_reference(reference, monkeypatch, wrong):
    name = "seq_dropout_index_resize_gap"  # the right rules pass: test_kernels_match_neural_tangents
    monkeypatch.setattr(extra, *WRONG_RULES[wrong])
    assert relative_error(_kernels(reference, name, ("",))["nngp"], reference[f"{name}/nngp"]) > 1e-2


@pytest.mark.slow
def test_ignoring_the_mask_fails_the_reference(reference):
    """The masked entries zeroed and then treated as data (no mask), for every kernel case."""
    for name in json.loads(str(reference["_cases"])):
        net = _network(reference, name)
        x1, x2 = (np.where(reference[f"{name}/{x}"] == PAD, 0., reference[f"{name}/{x}"]) for x in ("x1", "x2"))
        assert relative_error(net.kernel_fn(x1, x2, "nngp"), reference[f"{name}/nngp"]) > 1e-2, name


# ----------------------------------------------------------------- the unmasked entries alone

LENGTHS = (6, 4, 2, 6)


def _padded(key, lengths=LENGTHS, length=7, channels=3):
    x = np.array(jax.random.normal(jax.random.PRNGKey(key), (len(lengths), length, channels)))
    for n, ell in enumerate(lengths):
        x[n, ell:] = PAD
    return x


def _net(length):
    """Dropout (test mode), Index keeping positions 1.. and a nearest resize to twice the length: each
    keeps a padded sequence's data positions first, so the network of a padded sequence is that of the
    truncated one (of ``length`` positions)."""
    return stax.serial(stax.Dense(32, 1.2, 0.1), stax.Relu(), stax.Dropout(0.6, "test"), stax.Index(stax.Slice[:, 1:]),
                       stax.ImageResize((-1, 2 * (length - 1), -1), "nearest"), stax.Dense(32), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))


def test_finite_network_on_padded_inputs_equals_it_on_truncated_ones():
    x = _padded(1)
    net = _net(x.shape[1])
    _, params = net.init_fn(jax.random.PRNGKey(2), x.shape)
    padded = jax.jit(lambda p, z: net.apply_fn(p, z, mask_constant=PAD))(params, x)  # jit: one compilation each
    truncated = np.concatenate([jax.jit(_net(ell).apply_fn)(params, x[n:n + 1, :ell])
                                for n, ell in enumerate(LENGTHS)])
    np.testing.assert_allclose(padded, truncated, rtol=1e-10, atol=1e-12)
    ignored = jax.jit(net.apply_fn)(params, np.where(x == PAD, 0., x))  # the mask ignored
    assert np.max(np.abs(ignored - truncated)) > 1e-2


@pytest.mark.slow  # the default suite checks these kernels against neural-tangents and the finite network above
def test_kernel_of_padded_inputs_equals_that_of_truncated_ones():
    """Examples 0 and 3 (both 6 entries) against each other, example 2 (2 entries) with itself."""
    x = _padded(3)
    k = _net(x.shape[1]).kernel_fn(x, None, ("nngp", "ntk"), mask_constant=PAD)
    pair = _net(6).kernel_fn(x[[0]][:, :6], x[[3]][:, :6], ("nngp", "ntk"))
    short = _net(2).kernel_fn(x[2:3, :2], None, ("nngp", "ntk"))
    for field in ("nngp", "ntk"):
        assert abs(getattr(k, field)[0, 3] - getattr(pair, field)[0, 0]) < 1e-12 * abs(getattr(pair, field)[0, 0])
        assert abs(getattr(k, field)[2, 2] - getattr(short, field)[0, 0]) < 1e-12 * abs(getattr(short, field)[0, 0])
    ignored = _net(x.shape[1]).kernel_fn(np.where(x == PAD, 0., x), None, "nngp")
    assert abs(ignored[2, 2] - short.nngp[0, 0]) > 1e-2 * abs(short.nngp[0, 0])


@pytest.mark.slow
def test_train_dropout_kernel_of_padded_inputs_matches_finite_networks_on_truncated_ones():
    """Train-mode Dropout between two wide layers: the NNGP of padded sequences against finite networks'
    pooled feature products, each example run truncated (no mask), averaged over weights and keep draws."""
    x = _padded(5)
    width, draws = 1024, 16
    net = stax.serial(stax.Dense(width, 1.3, 0.2), stax.Relu(), stax.Dropout(0.6), stax.Dense(width, 1.1, 0.1),
                      stax.Relu(), stax.GlobalAvgPool())
    exact = net.kernel_fn(x, None, "nngp", mask_constant=PAD)
    estimates = []
    for seed in range(draws):
        _, params = net.init_fn(jax.random.PRNGKey(seed), x.shape)
        rng = jax.random.PRNGKey(100 + seed)  # one forward pass: every example sees its own keep pattern
        f = np.concatenate([net.apply_fn(params, x[n:n + 1, :ell], rng=jax.random.fold_in(rng, n))
                            for n, ell in enumerate(LENGTHS)])
        estimates.append(f @ f.T / width)
    mc = np.mean(estimates, 0)
    scale = np.max(np.abs(exact))
    assert np.max(np.abs(mc - exact)) / scale < 0.03
    ignored = net.kernel_fn(np.where(x == PAD, 0., x), None, "nngp")
    assert np.max(np.abs(mc - ignored)) / scale > 0.1


# ----------------------------------------------------------------- masks by hand, refusals

def test_output_masks_follow_neural_tangents_rules():
    """Index indexes the mask; ImageResize masks an output that reads no unmasked input (neural-tangents'
    example in its docstring: a 5 x 5 image with its centre masked, down to 2 x 2, masks nothing; a
    nearest resize repeats the mask; linear upsampling masks outputs between two masked inputs only)."""
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 2, 2] = True
    down = stax.ImageResize((-1, 2, 2, -1), "linear")
    assert not _masks_of(down, mask).any()
    row = np.array([[0, 0, 1, 1, 1, 0, 1]], bool)  # masked at 2, 3, 4 and 6
    up = _masks_of(stax.ImageResize((-1, 11, -1), "linear"), row)
    np.testing.assert_array_equal(up, [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1]])  # neural-tangents 0.6.5 printed
    nearest = _masks_of(stax.ImageResize((-1, 14, -1), "nearest"), row)
    np.testing.assert_array_equal(nearest, np.repeat(row, 2, axis=1))
    index = _masks_of(stax.Index(stax.Slice[1:, ::-2]), np.array([[0, 1, 1, 0], [1, 0, 0, 1]], bool))
    np.testing.assert_array_equal(index, [[1, 0]])


def _masks_of(layer, mask):
    """The output mask ``layer`` gives inputs ``(N, *S, 2)`` whose positions are masked where ``mask`` is."""
    x = np.where(mask[..., None], PAD, np.ones(mask.shape + (2,)))
    net = stax.serial(layer, stax.Dense(2, 1., 1.))
    out = jax.jit(lambda p, z: net.apply_fn(p, z, mask_constant=PAD))([(), (np.ones((2, 2)), np.ones(2))], x)
    return np.asarray(out[..., 0] == 0)


def test_an_int_on_the_channel_axis_is_refused_with_masks_by_name():
    x = _padded(7)
    net = stax.serial(stax.Dense(4), stax.Index(stax.Slice[..., 0]))
    _, params = net.init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(NotImplementedError, match=r"Index\(.*mask_constant.*channel axis.*0:1"):
        net.apply_fn(params, x, mask_constant=PAD)
    sliced = stax.serial(stax.Dense(4), stax.Index(stax.Slice[..., 1:3]))  # a slice keeps the positions' mask
    out = jax.jit(lambda p, z: sliced.apply_fn(p, z, mask_constant=PAD))(params, x)
    assert out.shape == x.shape[:2] + (2,) and not out[2, 2:].any() and out[2, :2].all()
