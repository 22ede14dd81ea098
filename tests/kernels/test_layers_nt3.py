"""ConvTranspose and ConvLocal (kernels/stax/conv_more.py): against neural-tangents 0.6.5, against finite
networks, and their errors.

Reference values: tests/data/nt_layers3_reference.npz (tests/data/nt_layers3_reference.README.md), compared
as the oracle is: max |ours - ref| / max |ref| < 1e-6 in float64. The reference stores spatial axes in the
inputs' order (neural-tangents reverses them after an odd number of convolutions; widekit does not), and a
network ending in ConvLocal at equal positions only (compared with ``diagonal_spatial=True``).
"""
import functools
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from tests.kernels import test_layers
from tests.kernels.spec import network_from_spec
from tests.kernels.test_layers_nt2 import _agrees, _mc_mean_and_error, relative_error

DATA = pathlib.Path(__file__).parent.parent / "data" / "nt_layers3_reference.npz"
KEYS = ("nngp", "ntk", "nngp_11", "ntk_11")


@pytest.fixture(scope="module")
def data():
    return np.load(DATA)


def our_kernels(data, case, spec=None):
    """``{key: array}`` for `KEYS`, from widekit, for ``case``'s inputs (and ``spec``, by default its own)."""
    _, _, kernel_fn = network_from_spec(str(data[f"{case}/spec"]) if spec is None else spec)
    diagonal = case in json.loads(str(data["_diagonal_cases"]))
    x1, x2 = data[f"{case}/x1"], data[f"{case}/x2"]
    out = {}
    for suffix, other in (("", x2), ("_11", None)):
        k = kernel_fn(x1, other, ("nngp", "ntk"), diagonal_spatial=diagonal)
        out["nngp" + suffix], out["ntk" + suffix] = k.nngp, k.ntk
    return out


# One case per layer in the default suite (each compiles two kernel functions, 1-5 s of CPU); the rest slow.
DEFAULT_CASES = {"ct1d_circular_wide_filter_gap", "cl2d_spatial_output"}


def _cases():
    return [pytest.param(c, marks=() if c in DEFAULT_CASES else pytest.mark.slow)
            for c in json.loads(str(np.load(DATA)["_cases"]))]


@pytest.mark.parametrize("case", _cases())
def test_matches_neural_tangents(data, case):
    ours = our_kernels(data, case)
    for key in KEYS:
        ref = data[f"{case}/{key}"]
        assert np.shape(ours[key]) == ref.shape, key
        assert relative_error(ours[key], ref) < 1e-6, (key, relative_error(ours[key], ref))


def _wrong_fan_in(item):
    """A ConvTranspose whose weights are scaled by the inputs an output actually sees through a strided
    transposed convolution (``prod ceil(k / s)``), not neural-tangents' ``prod k``."""
    kw = dict(item[1])
    seen = math.prod(-(-k // s) for k, s in zip(kw["filter_shape"], kw.get("strides") or [1] * 9))
    kw["W_std"] = kw["W_std"] * math.sqrt(math.prod(kw["filter_shape"]) / seen)
    return ["ConvTranspose", kw]


# A wrong rule fails the same comparison: each entry changes the first such layer of the case.
WRONG = {
    "cl2d_same_gap": ("ConvLocal", lambda item: ["Conv", item[1]]),  # shared weights: positions correlate
    "cl2d_then_avgpool_flatten": ("ConvLocal", lambda item: ["Conv", item[1]]),
    "ct2d_valid_strided_gap": ("ConvTranspose", _wrong_fan_in),
    "ct2d_circular_strided_gap": ("ConvTranspose", lambda item: [item[0], dict(item[1], padding="SAME")]),
    "ct1d_circular_wide_filter_gap": ("ConvTranspose", lambda item: [item[0], dict(item[1], padding="SAME")]),
    "cl2d_dimension_numbers_gap": ("ConvLocal", lambda item: [item[0], {k: v for k, v in item[1].items()
                                                                         if k != "dimension_numbers"}]),
}


@pytest.mark.slow  # the default suite rejects wrong rules by the Monte Carlo check below
@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_wrong_rule_fails_the_comparison(data, case):
    layer, change = WRONG[case]
    spec = json.loads(str(data[f"{case}/spec"]))
    at = [i for i, (name, _) in enumerate(spec) if name == layer][0]
    spec[at] = change(spec[at])
    ours = our_kernels(data, case, spec)
    worst = max(relative_error(ours[key], data[f"{case}/{key}"]) for key in KEYS)
    assert worst > 1e-3, worst


DEFAULT_FINITE = {"finite_cl2d_dimension_numbers"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in DEFAULT_FINITE else pytest.mark.slow)
                                  for c in json.loads(str(np.load(DATA)["_finite_cases"]))])
def test_finite_network_is_neural_tangents_one(data, case):
    """The same key draws neural-tangents' parameters (with JAX's pre-0.5 random stream, as the issue's
    harness sets it), and apply_fn on them gives neural-tangents' outputs."""
    init_fn, apply_fn, _ = network_from_spec(str(data[f"{case}/spec"]))
    x1 = data[f"{case}/x1"]
    with jax.threefry_partitionable(False):
        out_shape, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    leaves, tree = jax.tree_util.tree_flatten(params)
    refs = [data[f"{case}/param_{i}"] for i in range(int(data[f"{case}/params"]))]
    assert len(leaves) == len(refs)
    for ours, ref in zip(leaves, refs):  # widekit keeps biases without neural-tangents' unit axes
        assert np.size(ours) == ref.size
        np.testing.assert_allclose(np.ravel(ours), ref.ravel(), rtol=1e-12)
    theirs = jax.tree_util.tree_unflatten(tree, [jnp.reshape(r, np.shape(o)) for o, r in zip(leaves, refs)])
    out = apply_fn(theirs, x1)
    assert tuple(out_shape) == out.shape == data[f"{case}/apply"].shape
    assert relative_error(out, data[f"{case}/apply"]) < 1e-12


# ----------------------------------------------------------------------------- Monte Carlo

SW, SAMPLES = test_layers.SPATIAL_WIDTH, 64
IMG = (3, 4, 3, 2)


def _combined_net(wrong_fan_in=False, local_as_conv=False):
    """Both layers, one hidden nonlinearity on fixed inputs (so the finite networks' mean kernel is exact
    at any width), pooled: a transposed convolution (CIRCULAR, strided), then a locally connected layer
    (standard parameterization)."""
    first = dict(out_chan=SW, filter_shape=(3, 2), strides=(2, 1), padding="CIRCULAR", W_std=1.3, b_std=0.2)
    if wrong_fan_in:
        first = _wrong_fan_in(["ConvTranspose", first])[1]
    second = stax.Conv if local_as_conv else stax.ConvLocal
    return stax.serial(stax.ConvTranspose(**first), stax.Relu(),
                       second(SW, (2, 2), (1, 2), "SAME", 1.1, 0.1, parameterization="standard"),
                       stax.GlobalAvgPool(), stax.Dense(SW, 0.9, 0.1))


def _transpose_pairs_net(wrong_fan_in=False):
    """Position pairs of a transposed convolution's outputs (VALID, strided, standard parameterization)."""
    second = dict(out_chan=SW, filter_shape=(2, 3), strides=(1, 2), padding="VALID", W_std=1.1, b_std=0.1,
                  parameterization="standard")
    if wrong_fan_in:
        second = _wrong_fan_in(["ConvTranspose", second])[1]
    return stax.serial(stax.Conv(SW, (2, 2), padding="SAME", W_std=1.2, b_std=0.3), stax.Relu(),
                       stax.ConvTranspose(**second))


def _local_pairs_net(as_conv=False):
    """Position pairs of a locally connected layer's outputs: zero between different positions."""
    layer = stax.Conv if as_conv else stax.ConvLocal
    return stax.serial(layer(SW, (2, 2), (2, 1), "SAME", 1.3, 0.2), stax.Relu(), layer(SW, (2, 1), None, "VALID"))


NETWORKS = {"combined": _combined_net, "ConvTranspose_pairs": _transpose_pairs_net,
            "ConvLocal_pairs": _local_pairs_net}


def _pairs_first(a, d):
    """``(N, *S, N', *S')`` -> neural-tangents' ``(N, N', S_1, S'_1, ...)``."""
    order = (0, d + 1) + tuple(i for k in range(d) for i in (1 + k, d + 2 + k))
    return jnp.transpose(a, order)


@functools.lru_cache(maxsize=None)
def monte_carlo(name):
    """Inputs, and the mean and standard error of empirical NNGPs (the outputs' channel mean) and NTKs
    (first channel) of SAMPLES finite networks ``NETWORKS[name]``."""
    init_fn, apply_fn, _ = NETWORKS[name]()
    with jax.enable_x64(False):
        x = test_layers.inputs(IMG, seed=21, dtype=np.float32)

        @jax.jit
        def draw(keys):
            def one(key):  # a plain Jacobian: empirical_kernel_fn's two traces compiled 1.5 times slower
                _, params = init_fn(key, x.shape)
                f = apply_fn(params, x)
                jacobian = jax.jacrev(lambda p: apply_fn(p, x)[..., 0])(params)  # the first channel's NTK
                ntk = sum(jnp.tensordot(a, a, (tuple(range(f.ndim - 1, a.ndim)),) * 2)
                          for a in jax.tree_util.tree_leaves(jacobian))
                nngp = jnp.tensordot(f, f, ((f.ndim - 1,), (f.ndim - 1,))) / f.shape[-1]
                return _pairs_first(nngp, f.ndim - 2), _pairs_first(ntk, f.ndim - 2)
            return jax.lax.map(one, keys)

        nngp, ntk = draw(jax.random.split(jax.random.PRNGKey(5), SAMPLES))
    return np.asarray(x, np.float64), {"nngp": _mc_mean_and_error(nngp), "ntk": _mc_mean_and_error(ntk)}


def _kernels(network, x):
    return network.kernel_fn(x, None, ("nngp", "ntk"))


# Compiling the finite networks' kernels costs most of the time (about 8 s of CPU for the combined network):
# the default suite runs the combined one; the position pairs with the slow checks.
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "combined" else pytest.mark.slow)
                                  for n in NETWORKS])
def test_closed_form_matches_finite_networks(name):
    x, stats = monte_carlo(name)
    closed = _kernels(NETWORKS[name](), x)
    for field in ("nngp", "ntk"):
        assert _agrees(getattr(closed, field), *stats[field]), field


@pytest.mark.parametrize("name,wrong", [
    ("combined", lambda: _combined_net(wrong_fan_in=True)),
    ("combined", lambda: _combined_net(local_as_conv=True)),
    pytest.param("ConvTranspose_pairs", lambda: _transpose_pairs_net(wrong_fan_in=True), marks=pytest.mark.slow),
    pytest.param("ConvLocal_pairs", lambda: _local_pairs_net(as_conv=True), marks=pytest.mark.slow),
], ids=["transpose_fan_in", "local_as_conv", "transpose_pairs_fan_in", "local_pairs_as_conv"])
def test_a_wrong_rule_fails_the_monte_carlo(name, wrong):
    x, stats = monte_carlo(name)
    k = _kernels(wrong(), x)
    assert not all(_agrees(getattr(k, field), *stats[field]) for field in ("nngp", "ntk"))


@pytest.mark.slow  # three compilations: ~5 s of CPU
def test_local_kernel_is_zero_between_positions_and_blocks_agree():
    """ConvLocal's position pairs are zero off the diagonal, its diagonal is Conv's; block-by-block
    evaluation (self covariances recorded per layer) equals the one-shot one."""
    x = test_layers.inputs((3, 5, 4, 2), seed=22)
    local = stax.serial(stax.ConvTranspose(4, (2, 2), (2, 1), "SAME"), stax.Relu(),
                        stax.ConvLocal(4, (3, 2), (2, 1), "SAME", 1.2, 0.3))
    shared = stax.serial(stax.ConvTranspose(4, (2, 2), (2, 1), "SAME"), stax.Relu(),
                         stax.Conv(4, (3, 2), (2, 1), "SAME", 1.2, 0.3))
    k = local.kernel_fn(x, None, ("nngp", "ntk"), block_size=0)
    ref = shared.kernel_fn(x, None, ("nngp", "ntk"), diagonal_spatial=True, block_size=0)
    h, w = k.nngp.shape[2], k.nngp.shape[4]
    for field in ("nngp", "ntk"):
        a = np.asarray(getattr(k, field))  # (N, N, H, H', W, W')
        eye = np.einsum("ij,kl->ijkl", np.eye(h), np.eye(w))[None, None]
        np.testing.assert_array_equal(a * (1 - eye), 0)
        np.testing.assert_allclose(np.einsum("abiijj->abij", a), getattr(ref, field), rtol=1e-12)
    blocked = local.kernel_fn(x, None, ("nngp", "ntk"), block_size=1)
    for field in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(blocked, field), getattr(k, field), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- bad arguments

BAD = [
    (lambda layer: layer(4, 3), "filter_shape", TypeError),
    (lambda layer: layer(4, (2, 0)), "filter_shape/window_shape", ValueError),
    (lambda layer: layer(0, (2, 2)), "out_chan", ValueError),
    (lambda layer: layer(4, (2, 2), padding="REFLECT"), "padding", ValueError),
    (lambda layer: layer(4, (2, 2), strides=(1,)), "strides", ValueError),
    (lambda layer: layer(4, (2, 2), W_std=float("nan")), "W_std", ValueError),
    (lambda layer: layer(4, (2, 2), b_std="0.1"), "b_std", ValueError),
    (lambda layer: layer(4, (2, 2), parameterization="mup"), "parameterization", ValueError),
    (lambda layer: layer(4, (2, 2), s=(1, 2)), "s", ValueError),
    (lambda layer: layer(4, (2, 2), parameterization="standard", s=(1, 0)), "s", ValueError),
    (lambda layer: layer(4, (2, 2), dimension_numbers="NHWC"), "dimension_numbers", TypeError),
    (lambda layer: layer(4, (2, 2), dimension_numbers=("NHWC", "HWIO", "NHW")), "dimension_numbers", TypeError),
    (lambda layer: layer(4, (2, 2), dimension_numbers=("NHWC", "HXIO", "NHWC")), "dimension_numbers", ValueError),
    (lambda layer: layer(4, (2, 2), dimension_numbers=("NCHW", "OIHW", "NCWX")), "dimension_numbers", ValueError),
    (lambda layer: layer(4, (2, 2), dimension_numbers=("NHHC", "HWIO", "NCHW")), "dimension_numbers", ValueError),
]


@pytest.mark.parametrize("layer", ["ConvTranspose", "ConvLocal"])
@pytest.mark.parametrize("make,argument,kind", BAD, ids=[f"{i}-{a}" for i, (_, a, _) in enumerate(BAD)])
def test_bad_arguments_are_refused_by_name(layer, make, argument, kind):
    # the argument named after the layer's description ("ConvLocal(out_chan=4, ...): ..."), not in it
    with pytest.raises(kind, match=rf"^{layer}\(.*?\): .*{re.escape(argument)}"):
        make(getattr(stax, layer))


@pytest.mark.parametrize("layer", ["ConvTranspose", "ConvLocal"])
def test_refusals_of_inputs_name_the_layer(layer):
    make = getattr(stax, layer)
    x = test_layers.inputs((2, 3, 3, 2), seed=23)
    with pytest.raises(ValueError, match=f"{layer}\\(.*2 spatial axes"):
        make(4, (2, 2)).kernel_fn(x[:, 0], None, "nngp")  # 1-D inputs for a 2-D filter
    with pytest.raises(ValueError, match=f"{layer}\\(.*rank 4"):
        make(4, (2, 2)).init_fn(jax.random.PRNGKey(0), (2, 3, 2))


def test_local_valid_filter_larger_than_input_is_refused():
    x = test_layers.inputs((2, 3, 3, 2), seed=24)
    with pytest.raises(ValueError, match=r"ConvLocal\(.*larger than"):
        stax.ConvLocal(4, (4, 2)).kernel_fn(x, None, "nngp")
    with pytest.raises(ValueError, match=r"ConvLocal\(.*larger than"):
        stax.ConvLocal(4, (4, 2)).init_fn(jax.random.PRNGKey(0), x.shape)
