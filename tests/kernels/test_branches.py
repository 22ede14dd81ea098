"""Networks whose output is several branches (``FanOut``/``parallel`` without a merge): one kernel
per branch, a list as neural-tangents 0.6.5 returns it, through every evaluation path.

Independent truths: the network of one branch alone, built explicitly (one output, the path
checked elsewhere against neural-tangents); neural-tangents' own values and result structure
(tests/data/nt_branches_reference.npz); Monte Carlo averages of finite networks.
"""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, empirical_kernel_fn, monte_carlo_kernel_fn, stax
from kernels.kernel import Kernel
from kernels.spec import network_from_spec

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "data", "nt_branches_reference.npz")
FIELDS = ("nngp", "ntk", "cov1", "cov2")


def dense_in():
    return stax.Dense(3, W_std=1.5, b_std=0.1)


def conv_in():
    return stax.Conv(4, (2,), padding="SAME", W_std=1.3, b_std=0.1)


# name -> (branched network, [each branch alone], input shape); built once, so that every test
# reuses the compiled kernel functions (they are compiled per network object).
CASES = {
    "mlp": (lambda: stax.serial(dense_in(), stax.FanOut(2),
                                stax.parallel(stax.Relu(), stax.serial(stax.Erf(), stax.Dense(2, W_std=1.2)))),
            lambda: [stax.serial(dense_in(), stax.Relu()),
                     stax.serial(dense_in(), stax.Erf(), stax.Dense(2, W_std=1.2))],
            (5, 4)),
    # branch 0 keeps position pairs, branch 1 is pooled to a flat kernel
    "cnn": (lambda: stax.serial(conv_in(), stax.FanOut(2),
                                stax.parallel(stax.Relu(), stax.serial(stax.Erf(), stax.GlobalAvgPool()))),
            lambda: [stax.serial(conv_in(), stax.Relu()), stax.serial(conv_in(), stax.Erf(), stax.GlobalAvgPool())],
            (5, 4, 2)),
}
CASES = {name: (functools.lru_cache(branched), functools.lru_cache(alone), shape)
         for name, (branched, alone, shape) in CASES.items()}


def inputs(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def leaves(result):
    """The arrays of a result (a Kernel, a named tuple or an array), in field order."""
    if hasattr(result, "nngp") and not isinstance(result, tuple):
        return [getattr(result, f) for f in FIELDS if getattr(result, f) is not None]
    return list(result) if isinstance(result, tuple) else [result]


def assert_same(result, expected, rtol=1e-12):
    got, want = leaves(result), leaves(expected)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-14)


# The default suite runs blocks (5 examples in blocks of 2: padded tiles, mirrored ones with x2=None)
# on the MLP; the rest is slow (about 1 s of compilation each).
@pytest.mark.parametrize("case, with_x2, block_size", [
    pytest.param(case, with_x2, block_size, marks=() if (case, with_x2, block_size) == ("mlp", False, 2)
                 else pytest.mark.slow)
    for case in sorted(CASES) for with_x2 in (True, False) for block_size in (0, 2)])
def test_each_branch_is_the_network_of_that_branch_alone(case, with_x2, block_size):
    branched, alone, shape = CASES[case]
    x1, x2 = inputs(shape, 0), (inputs((3,) + shape[1:], 1) if with_x2 else None)
    result = branched()[2](x1, x2, None, block_size=block_size)
    assert isinstance(result, list) and len(result) == 2
    for k, single in zip(result, alone()):
        expected = single[2](x1, x2, None, block_size=0)
        assert k.nngp.shape == expected.nngp.shape and k.x1_is_x2 == (x2 is None)
        assert_same(k, expected)


def test_a_wrong_branch_is_told_apart():
    # The check above fails for the other branch's network: the branches' kernels differ.
    branched, alone, shape = CASES["mlp"]
    x1 = inputs(shape, 0)
    result = branched()[2](x1, None, None, block_size=2)
    assert_same(result[1], alone()[1][2](x1, None, None, block_size=0))
    with pytest.raises(AssertionError):
        assert_same(result[0], alone()[1][2](x1, None, None, block_size=0))


@pytest.mark.slow
@pytest.mark.parametrize("get", ["nngp", ("nngp", "ntk"), ("ntk",)])
def test_get_forms_are_per_branch(get):
    branched, alone, shape = CASES["mlp"]
    x1, x2 = inputs(shape, 0), inputs((3,) + shape[1:], 1)
    result = branched()[2](x1, x2, get, block_size=2)
    assert isinstance(result, list) and len(result) == 2
    for r, single in zip(result, alone()):
        expected = single[2](x1, x2, get, block_size=0)
        assert type(r) is type(expected) and getattr(r, "_fields", None) == getattr(expected, "_fields", None)
        assert_same(r, expected)


@pytest.mark.slow
def test_diagonal_spatial_per_branch():
    branched, alone, shape = CASES["cnn"]
    x1 = inputs(shape, 0)
    result = branched()[2](x1, None, "nngp", diagonal_spatial=True)
    assert [r.shape for r in result] == [(5, 5, 4), (5, 5)]
    np.testing.assert_allclose(result[0], alone()[0][2](x1, None, "nngp", diagonal_spatial=True), rtol=1e-12)
    np.testing.assert_allclose(result[1], alone()[1][2](x1, None, "nngp"), rtol=1e-12)


@pytest.mark.slow
def test_nested_branches_give_nested_lists():
    net = stax.serial(dense_in(), stax.FanOut(2), stax.parallel(stax.FanOut(2), stax.Erf()))
    x1 = inputs((4, 4), 0)
    result = net[2](x1, None, "ntk", block_size=2)
    assert isinstance(result, list) and isinstance(result[0], list) and len(result[0]) == 2
    dense = dense_in()[2](x1, None, "ntk")
    np.testing.assert_allclose(result[0][0], dense, rtol=1e-12)
    np.testing.assert_allclose(result[0][1], dense, rtol=1e-12)
    np.testing.assert_allclose(result[1], stax.serial(dense_in(), stax.Erf())[2](x1, None, "ntk"), rtol=1e-12)


@pytest.mark.slow  # the default suite runs batch(..., path=...) against neural-tangents' nt.batch below
@pytest.mark.parametrize("stored", [False, True], ids=["memory", "path"])
def test_batch_gives_each_branch(stored, tmp_path):
    # Spatial branches: tiles of position pairs (branch 0) and flat ones (branch 1), mirrored for x2=None.
    branched, alone, shape = CASES["cnn"]
    kernel_fn = branched()[2]
    x1 = inputs(shape, 0)
    path = str(tmp_path / "store") if stored else None
    get = ("nngp", "cov1")
    tiled = batch(kernel_fn, 2, path=path, progress=False)(x1, None, get)
    assert isinstance(tiled, list) and len(tiled) == 2
    # The unbatched branched kernel (each branch equal to its network alone, tested above)
    expected = kernel_fn(x1, None, get, block_size=0)
    for r, e in zip(tiled, expected):
        assert_same(r, e)
    if stored:
        assert {"branch0.nngp.npy", "branch1.nngp.npy", "branch0.cov1.npy", "branch1.cov1.npy"} <= set(os.listdir(path))
        again = batch(kernel_fn, 2, path=path, progress=False)(x1, None, get)  # resumed: every tile verified, reused
        assert_same(again[0], expected[0])


# ------------------------------------------------------------------ neural-tangents 0.6.5

@pytest.fixture(scope="module")
def reference():
    data = np.load(REFERENCE)
    return data, json.loads(str(data["_cases"]))


@functools.lru_cache(maxsize=None)
def reference_network(spec: str):
    """The network of a reference case, built once per spec (its kernel functions compile once)."""
    return network_from_spec(spec)


def by_path(result):
    """``{"b0": ..., "b1.0": ...}`` of a (nested) list of per-branch results, as the reference names them."""
    out = {}

    def walk(r, path):
        if isinstance(r, list):
            for i, s in enumerate(r):
                walk(s, path + (i,))
        else:
            out["b" + ".".join(map(str, path))] = r
    walk(result, ())
    return out


def has_structure(result, expected) -> bool:
    """Whether ``result`` is what the reference's structure ``expected`` describes: a list of them
    (not a tuple), ``"Kernel"``, ``"tuple(nngp,ntk)"`` (a named tuple of those fields) or ``"array"``."""
    if isinstance(expected, list):
        return type(result) is list and len(result) == len(expected) and all(map(has_structure, result, expected))
    if expected == "Kernel":
        return isinstance(result, Kernel)
    if expected.startswith("tuple("):
        return isinstance(result, tuple) and getattr(result, "_fields", None) == tuple(expected[6:-1].split(","))
    return expected == "array" and isinstance(result, (jax.Array, np.ndarray))


def relative_gap(ours, ref) -> float:
    ref = np.asarray(ref)
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def compare_to_reference(data, name, ours: dict, field: str, stored: str = None):
    for branch, k in ours.items():
        gap = relative_gap(getattr(k, field), data[f"{name}/{branch}/{stored or field}"])
        assert gap < 1e-6, f"{name} {branch} {stored or field}: relative gap {gap:.2e}"


@pytest.mark.parametrize("name", ["mlp"] + [pytest.param(n, marks=pytest.mark.slow)
                                            for n in ("cnn", "nested", "fanout_last")])
def test_matches_neural_tangents(name, reference, tmp_path):
    data, cases = reference
    case = cases[name]
    _, _, kernel_fn = reference_network(json.dumps(case["spec"]))
    x1, x2 = data[f"{name}/x1"], data[f"{name}/x2"]
    both, same = by_path(kernel_fn(x1, x2)), by_path(kernel_fn(x1, None))
    # batch through a tile store: one file per branch and array
    tiled = batch(kernel_fn, 2, path=str(tmp_path), progress=False)(x1, x2, ("nngp", "ntk"))
    assert isinstance(tiled, list)
    tiled = by_path(tiled)
    assert sorted(both) == sorted(case["branches"]) == sorted(tiled)
    assert {f"branch{b[1:]}.{f}.npy" for b in case["branches"] for f in ("nngp", "ntk")} <= set(os.listdir(tmp_path))
    for field in FIELDS:
        compare_to_reference(data, name, both, field)
    compare_to_reference(data, name, same, "nngp", "nngp_11")
    compare_to_reference(data, name, same, "ntk", "ntk_11")
    compare_to_reference(data, name, tiled, "nngp", "batch_nngp")
    compare_to_reference(data, name, tiled, "ntk", "batch_ntk")


def test_reference_comparison_rejects_a_wrong_kernel(reference):
    data, cases = reference
    _, _, kernel_fn = reference_network(json.dumps(cases["mlp"]["spec"]))
    x1, x2 = data["mlp/x1"], data["mlp/x2"]
    ours = by_path(kernel_fn(x1, x2))
    wrong = {b: k.replace(nngp=k.nngp * (1 + 1e-5)) for b, k in ours.items()}  # 1e-5 off: rejected
    with pytest.raises(AssertionError, match="relative gap"):
        compare_to_reference(data, "mlp", wrong, "nngp")
    swapped = {"b0": ours["b1"], "b1": ours["b0"]}  # branches in the wrong order: rejected
    with pytest.raises(AssertionError, match="relative gap"):
        compare_to_reference(data, "mlp", swapped, "ntk")


GETS = {"None": None, "nngp": "nngp", "nngp,ntk": ("nngp", "ntk"), "ntk,": ("ntk",)}


def test_structure_check_rejects_a_tuple_or_wrong_items():
    arrays = [np.zeros((2, 2)), np.zeros((2, 2))]
    assert has_structure(arrays, ["array", "array"])
    assert not has_structure(tuple(arrays), ["array", "array"])  # a tuple, not neural-tangents' list
    assert not has_structure(arrays, ["array", "array", "array"])
    assert not has_structure(arrays, ["Kernel", "Kernel"])


@pytest.mark.slow
def test_result_structure_matches_neural_tangents(reference):
    # Lists (not tuples) of per-branch results, each a Kernel, a named tuple or an array as
    # `get` asks, from kernel_fn, batch, the Monte Carlo and the empirical kernels.
    data, cases = reference
    for name in ("mlp", "nested"):
        case = cases[name]
        init_fn, apply_fn, kernel_fn = reference_network(json.dumps(case["spec"]))
        x1, x2 = data[f"{name}/x1"], data[f"{name}/x2"]
        structure = case["structure"]
        for g, get in GETS.items():
            assert has_structure(kernel_fn(x1, x2, get), structure["kernel_fn"][g]), (name, g)
            assert has_structure(kernel_fn(x1, None, get), structure["kernel_fn_x2_none"][g]), (name, g)
            assert has_structure(batch(kernel_fn, 2, progress=False)(x1, x2, get), structure["batch"][g]), (name, g)
        if name == "mlp":
            _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
            mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 2)
            empirical = empirical_kernel_fn(apply_fn)
            for g, get in GETS.items():
                if g in structure["monte_carlo"]:
                    assert has_structure(mc(x1, x2, get), structure["monte_carlo"][g]), g
                    assert has_structure(empirical(x1, x2, get, params), structure["empirical"][g]), g


# ------------------------------------------------------------------ finite networks

@pytest.mark.slow
def test_empirical_kernel_of_each_branch_is_that_of_the_branch_alone():
    # The same weights in a network of that branch only: the other branch's weights do not
    # move this branch's output, so its NTK is the one-output network's.
    init_fn, apply_fn, _ = stax.serial(dense_in(), stax.FanOut(2),
                                       stax.parallel(stax.serial(stax.Relu(), stax.Dense(2)), stax.Dense(3)))
    x1, x2 = inputs((4, 4), 0), inputs((3, 4), 1)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)  # (dense, (), (branch 0, branch 1))
    result = empirical_kernel_fn(apply_fn)(x1, x2, ("nngp", "ntk"), params)
    alone = [(stax.serial(dense_in(), stax.serial(stax.Relu(), stax.Dense(2)))[1], (params[0], params[2][0])),
             (stax.serial(dense_in(), stax.Dense(3))[1], (params[0], params[2][1]))]
    assert isinstance(result, list) and len(result) == 2
    for r, (apply_alone, p) in zip(result, alone):
        assert_same(r, empirical_kernel_fn(apply_alone)(x1, x2, ("nngp", "ntk"), p))


WIDTH, SAMPLES, GROUPS = 128, 120, 12


@pytest.fixture(scope="module")
def monte_carlo():
    """Closed form and group means of Monte Carlo kernels of a branched network.

    Running averages at every ``SAMPLES / GROUPS`` draws give ``GROUPS`` independent group
    means (batch means), whose spread is the standard error of the overall mean.
    """
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(WIDTH, W_std=1.5, b_std=0.1), stax.FanOut(2),
        stax.parallel(stax.serial(stax.Relu(), stax.Dense(4)), stax.serial(stax.Erf(), stax.Dense(4, W_std=1.3))))
    x = inputs((3, 2), 0)
    closed = kernel_fn(x, None, ("nngp", "ntk"))
    step = SAMPLES // GROUPS
    running = list(monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(3), range(step, SAMPLES + 1, step),
                                         store_on_device=False)(x, None, ("nngp", "ntk")))
    groups = []  # per branch: {field: (GROUPS, 3, 3) group means}
    for b in range(2):
        totals = {f: np.stack([(i + 1) * step * getattr(r[b], f) for i, r in enumerate(running)]) for f in ("nngp", "ntk")}
        groups.append({f: np.diff(t, axis=0, prepend=0 * t[:1]) / step for f, t in totals.items()})
    return closed, groups


def agrees(closed_branch, groups_branch):
    for field in ("nngp", "ntk"):
        exact = np.asarray(getattr(closed_branch, field))
        g = groups_branch[field]
        mean, standard_error = g.mean(0), g.std(0, ddof=1) / math.sqrt(len(g))
        # 4.5 standard errors plus the O(1/width) finite-width bias
        if not np.all(np.abs(mean - exact) <= 4.5 * standard_error + 2. / WIDTH * np.abs(exact).max()):
            return False
    return True


@pytest.mark.slow
def test_monte_carlo_of_each_branch_agrees_with_its_closed_form(monte_carlo):
    closed, groups = monte_carlo
    assert isinstance(closed, list) and len(closed) == 2
    assert agrees(closed[0], groups[0]) and agrees(closed[1], groups[1])


@pytest.mark.slow
def test_monte_carlo_check_rejects_the_other_branch(monte_carlo):
    closed, groups = monte_carlo
    assert not agrees(closed[1], groups[0]) and not agrees(closed[0], groups[1])


# ------------------------------------------------------------------ errors and dtypes

@pytest.mark.parametrize("block_size", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_non_finite_branch_names_the_layer(block_size):
    # The diagnosis re-runs the rules op by op (about 80 small compilations for a Relu branch):
    # cheap layers besides the offending one keep this test short.
    _, _, kernel_fn = stax.serial(stax.Dense(4, W_std=2.), stax.FanOut(2),
                                  stax.parallel(stax.Dense(3), stax.serial(stax.Dense(4), stax.Gaussian(1., 0.5))))
    x = np.asarray(inputs((3, 5), 0))
    with pytest.raises(FloatingPointError, match=r"Gaussian\(a=1.0, b=0.5\): produced NaN or infinite values"):
        kernel_fn(x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True)), block_size=block_size)


def half_precision_network(w_std):
    return stax.serial(stax.Dense(4), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Dense(1, W_std=w_std)))


@pytest.mark.slow
def test_half_precision_per_branch():
    x = inputs((3, 5), 0).astype(jnp.float16)
    result = half_precision_network(10.)[2](x, None, ("nngp", "ntk"))
    wide = half_precision_network(10.)[2](x.astype(jnp.float32), None, ("nngp", "ntk"))
    for r, w in zip(result, wide):  # computed in float32, each branch narrowed back
        assert r.nngp.dtype == r.ntk.dtype == jnp.float16
        np.testing.assert_allclose(np.asarray(r.nngp, np.float32), w.nngp, rtol=2e-3)


def test_half_precision_overflow_names_the_branch():
    with pytest.raises(FloatingPointError, match=r"\(branch 1\): the kernel's nngp exceeds the range of float16"):
        half_precision_network(1e3)[2](inputs((3, 5), 0).astype(jnp.float16))


# ----------------------------------------------------------------- repeat's keywords, serial's parameters (issue 14)

def test_repeat_takes_its_layers_keywords_at_every_depth_including_zero():
    """neural-tangents' combinators_test::test_repeat_agg calls ``repeat(layer, n)`` for n = 0..3 with
    the same ``pattern``: the identity of n = 0 accepts the keywords of ``layer`` (an `Aggregate`
    here). Its kernel is the inputs' (that of `Identity`); a network without an `Aggregate` refuses
    ``pattern`` by name at every depth."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2))
    pattern = (rng.random((3, 4, 4)) < 0.5).astype(float)
    layer = stax.serial(stax.Dense(8, 1.3, 0.1), stax.Aggregate(), stax.Relu())
    for n in range(4):
        net = stax.repeat(layer, n)
        k = net.kernel_fn(x, None, "nngp", pattern=(pattern, None))
        assert k.shape == (3, 3, 4, 4)
        _, params = net.init_fn(jax.random.PRNGKey(n), x.shape)
        out = net.apply_fn(params, x, pattern=pattern)
        assert out.shape == (3, 4, 8 if n else 2)
        if n == 0:  # the identity: the inputs' kernel, the inputs themselves
            np.testing.assert_allclose(k, stax.Identity().kernel_fn(x, None, "nngp"), rtol=1e-12)
            np.testing.assert_array_equal(out, x)
    for n in (0, 2):
        with pytest.raises(TypeError, match="pattern"):
            stax.repeat(stax.Dense(2), n).kernel_fn(x, None, "nngp", pattern=(pattern, None))


def test_serial_parameters_are_a_list_as_in_neural_tangents():
    """neural-tangents 0.6.5's ``serial`` takes ``init_fn`` from ``jax.example_libraries.stax.serial``,
    whose parameters are a list (one entry per layer); the masking reference files store parameters
    layer by layer, not their container, so the type is checked directly."""
    net = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1))
    _, params = net.init_fn(jax.random.PRNGKey(0), (2, 4))
    assert type(params) is list and len(params) == 3
    assert net.apply_fn(params, np.ones((2, 4))).shape == (2, 1)
