"""Layouts other than batch first, channels last (kernels/stax/layout.py): ``Conv``'s, ``ConvTranspose``'s and
``ConvLocal``'s ``dimension_numbers``, ``batch_axis``/``channel_axis`` of Dense, pooling, LayerNorm and
attention, ``Flatten(batch_axis, batch_axis_out)``.

Truth, each independent of the code under test:
* neural-tangents 0.6.5's kernels, `Kernel` layout fields, parameters and outputs for the same key
  (tests/data/nt_layouts_reference.npz, tests/data/nt_layouts_reference.README.md), compared as the oracle is:
  max |ours - ref| / max |ref| < 1e-6 in float64 (parameters and outputs to 1e-12);
* the same network written channels last, on transposed inputs (a layout only moves axes);
* and the wrong reading (the channel axis taken for a spatial one) fails the first comparison.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from tests.kernels.spec import network_from_spec
from tests.kernels.test_layers_nt2 import decoded, relative_error

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_layouts_reference.npz"
NCHW = ("NCHW", "OIHW", "NCHW")


@pytest.fixture(scope="module")
def data():
    return np.load(DATA)


def _batch_axis(data, case) -> int:
    """The inputs' batch axis: the one where x2 has one example fewer than x1."""
    return int(np.flatnonzero(np.array(data[f"{case}/x1"].shape) != np.array(data[f"{case}/x2"].shape))[0])


def our_kernels(data, case, spec=None, x2_none=False):
    """``({key: array}, Kernel)`` from widekit: ``nngp``, ``ntk`` and the `Kernel` of ``kernel_fn(x1, x2)``, or
    (``x2_none``) ``nngp_11``, ``ntk_11`` and that of ``kernel_fn(x1, None)``."""
    _, _, kernel_fn = network_from_spec(decoded(str(data[f"{case}/spec"]) if spec is None else spec))
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    k = kernel_fn(x1, None if x2_none else x2)
    suffix = "_11" if x2_none else ""
    return {"nngp" + suffix: k.nngp, "ntk" + suffix: k.ntk}, k


# The default suite (about 1.5-4 s of CPU each): convolutions with the batch axis second, channels first and
# spatial axes permuted; channels before a batch axis last. The rest slow; the channels-first CNN with LayerNorm
# against its channels-last twin below and the finite networks stand in for them.
DEFAULT_CASES = {"conv_permuted_flatten", "gap_channels_before_batch"}
# Finite networks: init_fn and a jitted apply_fn, cheap but for these (2-5 s of CPU each).
SLOW_FINITE = {"finite_attention_channel_axis_1", "finite_conv_local_nchw", "finite_conv_transpose_nchw",
               "finite_conv_circular_nchw"}


def _cases(key):
    default = DEFAULT_CASES if key == "_cases" else set(json.loads(str(np.load(DATA)[key]))) - SLOW_FINITE
    return [pytest.param(c, marks=() if c in default else pytest.mark.slow)
            for c in json.loads(str(np.load(DATA)[key]))]


def _agrees(data, case, ours):
    for key, array in ours.items():
        ref = data[f"{case}/{key}"]
        assert np.shape(array) == ref.shape, key
        assert relative_error(array, ref) < 1e-6, (key, relative_error(array, ref))


@pytest.mark.parametrize("case", _cases("_cases"))
def test_kernels_match_neural_tangents(data, case):
    ours, k = our_kernels(data, case)
    _agrees(data, case, ours)
    # The Kernel's layout fields, as neural-tangents reports them.
    assert (k.batch_axis, k.channel_axis) == (int(data[f"{case}/batch_axis"]), int(data[f"{case}/channel_axis"]))
    assert tuple(k.shape1) == tuple(data[f"{case}/shape1"])


@pytest.mark.slow  # a second compilation per case; the layout handling is the same as with x2
@pytest.mark.parametrize("case", json.loads(str(np.load(DATA)["_cases"])))
def test_kernels_without_x2_match_neural_tangents(data, case):
    _agrees(data, case, our_kernels(data, case, x2_none=True)[0])


@pytest.mark.parametrize("case", _cases("_finite_cases"))
def test_finite_network_is_neural_tangents_one(data, case):
    """The same key draws neural-tangents' parameters (weights in its shapes: OIHW, ...), and apply_fn gives
    its outputs in the declared layout."""
    init_fn, apply_fn, _ = network_from_spec(decoded(str(data[f"{case}/spec"])))
    x1 = data[f"{case}/x1"]
    with jax.threefry_partitionable(False):
        out_shape, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    assert tuple(out_shape) == tuple(data[f"{case}/out_shape"])
    leaves, tree = jax.tree_util.tree_flatten(params)
    refs = [data[f"{case}/param_{i}"] for i in range(int(data[f"{case}/params"]))]
    assert len(leaves) == len(refs)
    for ours, ref in zip(leaves, refs):  # widekit keeps biases without neural-tangents' unit axes
        assert np.shape(ours) in (ref.shape, tuple(s for s in ref.shape if s != 1)), (np.shape(ours), ref.shape)
        np.testing.assert_allclose(np.ravel(ours), ref.ravel(), rtol=1e-12)
    theirs = jax.tree_util.tree_unflatten(tree, [jnp.reshape(r, np.shape(o)) for o, r in zip(leaves, refs)])
    out = jax.jit(apply_fn)(theirs, x1)
    assert out.shape == data[f"{case}/apply"].shape
    assert relative_error(out, data[f"{case}/apply"]) < 1e-12


def test_reading_the_channel_axis_as_spatial_fails_the_comparison(data):
    """``gap_channels_before_batch`` (inputs ``(C, L, N)``) computed with axis 1 as the channels (and the channel
    axis as the spatial one) is far from neural-tangents' kernel."""
    case = "gap_channels_before_batch"
    spec = json.loads(str(data[f"{case}/spec"]))
    wrong = [[name, dict(kw, channel_axis=1) if kw.get("channel_axis") == 0 and kw.get("batch_axis") == 2 else kw]
             for name, kw in spec]
    assert wrong != spec
    ours, _ = our_kernels(data, case, wrong)
    assert min(relative_error(ours[key], data[f"{case}/{key}"]) for key in ours) > 1e-2


# ----------------------------------------------------------------------------- against channels last

def _pair(first):
    """A channels-first (or, ``first=False``, channels-last) CNN: a strided circular Conv, LayerNorm over
    channels and one spatial axis, Relu, GlobalAvgPool, Dense."""
    if first:
        return stax.serial(stax.Conv(16, (3, 2), (2, 1), "CIRCULAR", 1.2, 0.1, dimension_numbers=NCHW),
                           stax.LayerNorm(axis=(1, 3), channel_axis=1), stax.Relu(),
                           stax.GlobalAvgPool(channel_axis=1), stax.Dense(1, 1.1, 0.05))
    return stax.serial(stax.Conv(16, (3, 2), (2, 1), "CIRCULAR", 1.2, 0.1), stax.LayerNorm(axis=(-1, 2)), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.05))


def _images():
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, 2, 4, 3)), rng.standard_normal((2, 2, 4, 3))  # NCHW


def test_channels_first_kernel_is_the_channels_last_one_on_transposed_inputs():
    x1, x2 = _images()
    to_last = (0, 2, 3, 1)
    first = _pair(True).kernel_fn(x1, x2, ("nngp", "ntk"))
    last = _pair(False).kernel_fn(x1.transpose(to_last), x2.transpose(to_last), ("nngp", "ntk"))
    np.testing.assert_allclose(first.nngp, last.nngp, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(first.ntk, last.ntk, rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # the default suite has test_reading_the_channel_axis_as_spatial_fails_the_comparison
def test_channels_first_kernel_is_not_that_of_the_arrays_read_channels_last():
    x1, x2 = _images()
    first = _pair(True).kernel_fn(x1, x2, "nngp")
    misread = _pair(False).kernel_fn(x1, x2, "nngp")
    assert relative_error(misread, np.asarray(first)) > 1e-2


@pytest.mark.slow  # the default suite compares finite channels-first layers with neural-tangents'
def test_channels_first_finite_network_is_the_channels_last_one_transposed():
    """OIHW weights transposed to HWIO give the channels-last network: outputs equal on transposed inputs."""
    x1, _ = _images()
    init_first, apply_first, _ = _pair(True)
    _, params = init_first(jax.random.PRNGKey(3), x1.shape)
    (W, b), rest = params[0], params[1:]
    hwio = ((jnp.transpose(W, (2, 3, 1, 0)), b),) + tuple(rest)  # the convolution's OIHW weights as HWIO
    out_first = jax.jit(apply_first)(params, x1)
    out_last = jax.jit(_pair(False).apply_fn)(hwio, x1.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out_first, out_last, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_flatten_batch_axis_1_as_first_layer_is_flatten_of_transposed_inputs():
    """neural-tangents refuses this network's kernel_fn (its flattened input kernel records batch axis 0);
    its kernel is that of the batch-first network on inputs with the batch moved first."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 2, 2))
    ours = stax.serial(stax.Flatten(batch_axis=1), stax.Dense(8, 1.2, 0.1), stax.Relu(), stax.Dense(1))
    base = stax.serial(stax.Flatten(), stax.Dense(8, 1.2, 0.1), stax.Relu(), stax.Dense(1))
    np.testing.assert_allclose(ours.kernel_fn(x1, x2, "ntk"),
                               base.kernel_fn(x1.transpose(1, 0, 2), x2.transpose(1, 0, 2), "ntk"), rtol=1e-12)
    _, params = ours.init_fn(jax.random.PRNGKey(0), x1.shape)
    np.testing.assert_allclose(jax.jit(ours.apply_fn)(params, x1),
                               jax.jit(base.apply_fn)(params, x1.transpose(1, 0, 2)), rtol=1e-12)


# ----------------------------------------------------------------------------- refusals

def test_a_layer_in_another_layout_than_the_one_before_it_is_refused():
    x1, _ = _images()
    net = stax.serial(stax.Conv(8, (2, 2), dimension_numbers=NCHW), stax.Relu(), stax.GlobalAvgPool())
    with pytest.raises(ValueError, match=r"GlobalAvgPool.*`channel_axis` is -1 .*keeps that axis at 1"):
        net.kernel_fn(x1)


@pytest.mark.parametrize("make, argument", [
    (lambda: stax.Dense(3, batch_axis=1, channel_axis=1), "channel_axis"),
    (lambda: stax.AvgPool((2,), channel_axis=5), "channel_axis"),
    (lambda: stax.GlobalAvgPool(batch_axis=-4), "batch_axis"),
    (lambda: stax.Flatten(batch_axis_out=2), "batch_axis_out"),
    (lambda: stax.Dense(3, channel_axis=1.5), "channel_axis"),
    (lambda: stax.Conv(3, (2, 2), dimension_numbers=("NCHW", "OIHW", "NCH")), "dimension_numbers"),
    (lambda: stax.Conv(3, (2, 2), dimension_numbers=("NCHW", "OIHW", "NCWX")), "dimension_numbers"),
    (lambda: stax.ConvTranspose(3, (2, 2), dimension_numbers=("NCHW", "OIHH", "NCHW")), "dimension_numbers"),
])
def test_a_layout_neural_tangents_rejects_is_refused_naming_the_argument(make, argument):
    x = np.ones((2, 3, 4))
    with pytest.raises((ValueError, TypeError), match=argument):
        layer = make()
        layer.init_fn(jax.random.PRNGKey(0), x.shape)
        layer.kernel_fn(x)


def test_masks_in_another_layout_are_taken():
    """Masked inputs in a layout (once refused here) are taken; tests/kernels/test_layout_masks.py checks them
    against neural-tangents and against channels-last twins. Here: the masks count."""
    x1, _ = _images()
    x1[0, :, 1:] = 0.  # image 0 keeps one row of the padding value 0
    net = stax.serial(stax.Dense(4, channel_axis=1), stax.Relu(), stax.GlobalAvgPool(channel_axis=1))
    masked, unmasked = net.kernel_fn(x1, None, "nngp", mask_constant=0.), net.kernel_fn(x1, None, "nngp")
    assert relative_error(masked, np.asarray(unmasked)) > 1e-2
    _, params = net.init_fn(jax.random.PRNGKey(0), x1.shape)
    assert relative_error(net.apply_fn(params, x1, mask_constant=0.), np.asarray(net.apply_fn(params, x1))) > 1e-2


def test_kernel_fn_layout_keywords():
    """``kernel_fn(..., batch_axis=, channel_axis=)`` read the inputs so; a Kernel input refuses them by name."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 2))  # (N, C, L)
    net = stax.serial(stax.Dense(6, channel_axis=1))
    np.testing.assert_allclose(net.kernel_fn(x, None, "nngp", channel_axis=1), net.kernel_fn(x, None, "nngp"))
    with pytest.raises(ValueError, match="channel_axis"):
        net.kernel_fn(x, None, "nngp", channel_axis=-1)
    with pytest.raises(ValueError, match="batch_axis"):
        net.kernel_fn(net.kernel_fn(x), batch_axis=0)


def test_batch_tiles_examples_along_the_networks_batch_axis():
    """`kernels.batch` of a network that keeps its examples on axis 1 or last tiles them there: the tiled
    kernel is the one-piece kernel (neural-tangents' batch slices axis 0, the channels here)."""
    from kernels import batch
    seq = stax.serial(stax.Dense(6, 1.3, 0.1, batch_axis=1, channel_axis=0), stax.Relu(),
                      stax.Dense(1, batch_axis=1, channel_axis=0))
    cnn = stax.serial(stax.Conv(4, (2, 2), padding="SAME", dimension_numbers=("HWCN", "HWIO", "HWCN")), stax.Relu(),
                      stax.GlobalAvgPool(batch_axis=3, channel_axis=2), stax.Dense(1, batch_axis=1, channel_axis=0))
    rng = np.random.default_rng(3)
    for net, x1, x2 in ((seq, rng.standard_normal((3, 5)), rng.standard_normal((3, 4))),
                        (cnn, rng.standard_normal((3, 4, 2, 5)), rng.standard_normal((3, 4, 2, 3)))):
        for other in (None, x2):
            whole = net[2](x1, other, ("nngp", "ntk"))
            tiled = batch(net[2], 2, progress=False)(x1, other, ("nngp", "ntk"))
            np.testing.assert_allclose(tiled.nngp, whole.nngp, rtol=1e-12)
            np.testing.assert_allclose(tiled.ntk, whole.ntk, rtol=1e-12)
