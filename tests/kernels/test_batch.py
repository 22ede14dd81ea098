"""kernels.batch: tiled evaluation equals the unbatched kernel_fn; memmap output, resume, symmetry, process split.

Compilation dominates the cost here, so the networks are built once and every test
uses the same input shapes and tile sizes: `batch` shares its compiled tile functions
between all ``batch(...)`` of the same ``kernel_fn``.
"""
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from kernels import Kernel, batch, stax

NAMES = ("nngp", "ntk", "cov1", "cov2")
BOTH = ("nngp", "ntk")
TILE = 4
X1, X2 = (11, 5), (6, 5)  # 11 = 4 + 4 + 3 and 6 = 4 + 2: short last tiles


@functools.lru_cache(maxsize=None)
def net(name):
    if name == "mlp":
        return stax.serial(stax.Dense(16, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1))[2]
    if name == "pooled_cnn":
        return stax.serial(stax.Conv(4, (2, 2), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu(),
                           stax.GlobalAvgPool(), stax.Dense(1))[2]
    if name == "flatten_cnn":  # keeps equal positions only
        return stax.serial(stax.Conv(4, (2, 2), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu(),
                           stax.Flatten(), stax.Dense(1))[2]
    if name == "attention":
        return stax.serial(stax.Dense(4), stax.GlobalSelfAttention(4, 4, 4, 2, linear_scaling=True), stax.Relu(),
                           stax.GlobalAvgPool(), stax.Dense(1))[2]
    if name == "spatial_cnn":  # output keeps position pairs: (N1, N2, S, S')
        return stax.serial(stax.Conv(3, (2,), padding="SAME", W_std=1.3, b_std=0.1), stax.Relu(),
                           stax.Conv(3, (2,), padding="SAME"))[2]
    raise KeyError(name)


SHAPES = {"mlp": (X1, X2, TILE), "pooled_cnn": ((5, 3, 3, 2), (3, 3, 3, 2), 2), "spatial_cnn": ((5, 3, 2), None, 2),
          "flatten_cnn": ((5, 3, 3, 2), (3, 3, 3, 2), 2), "attention": ((5, 3, 2), (3, 3, 2), 2)}


def inputs(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


@functools.lru_cache(maxsize=None)
def reference(name, given):
    """The unbatched Kernel (get=None: every array), one compilation per network and x2 mode."""
    s1, s2, _ = SHAPES[name]
    return net(name)(inputs(s1, 0), inputs(s2, 1) if given else None)


def close(a, b):
    return np.allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def check(expected: Kernel, got, get):
    if get is None:
        assert isinstance(got, Kernel) and got.full == expected.full
        for n in NAMES:
            e, g = getattr(expected, n), getattr(got, n)
            assert (e is None) == (g is None), n
            if e is not None:
                assert g.shape == e.shape and close(g, e), n
    elif isinstance(get, str):
        e = getattr(expected, get)
        assert got.shape == e.shape and close(got, e)
    else:
        assert type(got)._fields == tuple(get)
        for n, g in zip(get, got):
            e = getattr(expected, n)
            assert (e is None) == (g is None), n  # cov2 of one batch with itself is None, as in neural-tangents
            assert e is None or (g.shape == e.shape and close(g, e)), n


CASES = ([("mlp", get, given) for get in (None, "ntk", BOTH) for given in (False, True)]
         + [("pooled_cnn", None, False), ("pooled_cnn", BOTH, True), ("spatial_cnn", "nngp", False)]
         + [(name, BOTH, given) for name in ("flatten_cnn", "attention") for given in (False, True)])


@pytest.mark.parametrize("name,get,given", CASES)
def test_equals_unbatched(name, get, given):
    s1, s2, tile = SHAPES[name]
    x1, x2 = inputs(s1, 0), (inputs(s2, 1) if given else None)
    check(reference(name, given), batch(net(name), tile, progress=False)(x1, x2, get), get)


class Counter:
    """Counts executions of the wrapped kernel_fn (not traces) and can fail on one of them."""
    calls = 0
    fail_at = None


def _hook(_):
    Counter.calls += 1
    if Counter.fail_at is not None and Counter.calls == Counter.fail_at:
        raise RuntimeError("simulated interruption")


def counted(x1, x2=None, get=None):
    jax.debug.callback(_hook, x1[0, 0])
    return net("mlp")(x1, x2, get)


def run(x1, x2=None, fail_at=None, **kwargs):
    Counter.calls, Counter.fail_at = 0, fail_at
    try:
        return batch(counted, TILE, progress=False, **kwargs)(x1, x2, BOTH), Counter.calls
    finally:
        Counter.fail_at = None


def test_upper_triangle_only():
    x = inputs(X1, 0)
    k, calls = run(x)
    assert calls == 6  # 3 x 3 tiles: 3 on and 3 above the diagonal
    check(reference("mlp", False), k, BOTH)
    _, calls = run(x, x)
    assert calls == 9


def test_memmap_equals_in_memory(tmp_path):
    x = inputs(X1, 0)
    in_memory = batch(net("mlp"), TILE, progress=False)(x, None, BOTH)
    on_disk = batch(net("mlp"), TILE, path=str(tmp_path), progress=False)(x, None, BOTH)
    assert isinstance(on_disk.nngp, np.memmap)
    assert np.array_equal(on_disk.nngp, in_memory.nngp) and np.array_equal(on_disk.ntk, in_memory.ntk)
    assert np.array_equal(np.load(tmp_path / "ntk.npy"), in_memory.ntk)

    s1, _, tile = SHAPES["pooled_cnn"]
    cnn = batch(net("pooled_cnn"), tile, path=str(tmp_path / "cnn"), progress=False)(inputs(s1, 0))
    assert sorted(os.listdir(tmp_path / "cnn")) == ["batch.json", "cov1.npy", "nngp.npy", "ntk.npy",
                                                    "progress.0.jsonl"]  # cov2 is None for x2=None
    assert cnn.cov2 is None
    check(reference("pooled_cnn", False), cnn, None)


def test_resume_skips_finished_tiles(tmp_path):
    x = inputs(X1, 0)
    with pytest.raises(Exception, match="simulated interruption"):
        run(x, fail_at=4, path=str(tmp_path))
    # Tiles before the failing one are recorded once written (how many depends on how far
    # asynchronous dispatch ran ahead when the error surfaced: at most 2 tiles are in flight).
    done = len((tmp_path / "progress.0.jsonl").read_text().splitlines())
    assert 2 <= done <= 3
    got, calls = run(x, path=str(tmp_path))
    assert calls == 6 - done  # the finished tiles are not recomputed
    check(reference("mlp", False), got, BOTH)
    again, calls = run(x, path=str(tmp_path))
    assert calls == 0 and np.array_equal(again.ntk, got.ntk)
    fresh, _ = run(x, path=str(tmp_path / "fresh"))  # an uninterrupted run: the same bytes
    assert np.array_equal(fresh.nngp, got.nngp) and np.array_equal(fresh.ntk, got.ntk)


def test_resume_refuses_different_arguments(tmp_path):
    x = inputs(X1, 0)
    batch(net("mlp"), TILE, path=str(tmp_path), progress=False)(x, None, "ntk")
    with pytest.raises(ValueError, match="tile"):
        batch(net("mlp"), 3, path=str(tmp_path), progress=False)(x, None, "ntk")
    with pytest.raises(ValueError, match="inputs_sha256"):
        batch(net("mlp"), TILE, path=str(tmp_path), progress=False)(x + 1, None, "ntk")
    with pytest.raises(ValueError, match="x2_shape"):
        batch(net("mlp"), TILE, path=str(tmp_path), progress=False)(x, inputs(X2, 1), "ntk")
    with pytest.raises(ValueError, match="get"):
        batch(net("mlp"), TILE, path=str(tmp_path), progress=False)(x, None, "nngp")
    assert json.loads((tmp_path / "batch.json").read_text())["tile"] == [TILE, TILE]


@pytest.mark.parametrize("given", [False, True])
def test_two_processes_complete_the_matrix(tmp_path, given):
    """Simulated multi-host split: each share computes its tiles; their union is the whole kernel."""
    x1, x2 = inputs(X1, 0), (inputs(X2, 1) if given else None)
    total = 3 * 2 if given else 6
    parts, counts = zip(*(run(x1, x2, process_index=p, process_count=2) for p in range(2)))
    assert sorted(counts) == [total // 2, total - total // 2]
    filled = [~np.isnan(p.ntk) for p in parts]
    assert not (filled[0] & filled[1]).any() and (filled[0] | filled[1]).all()
    assert close(np.where(filled[0], parts[0].ntk, parts[1].ntk), reference("mlp", given).ntk)

    # With a shared path: after both shares the files hold the whole kernel.
    for p in range(2):
        out, _ = run(x1, x2, path=str(tmp_path), process_index=p, process_count=2)
    check(reference("mlp", given), out, BOTH)
    assert sorted(os.listdir(tmp_path)) == ["batch.json", "nngp.npy", "ntk.npy", "progress.0.jsonl", "progress.1.jsonl"]
    _, calls = run(x1, x2, path=str(tmp_path))  # a single process resuming finds nothing left
    assert calls == 0


def test_one_compilation_and_store_on_device():
    traces = []

    def traced(x1, x2=None, get=None):
        traces.append(x1.shape)
        return net("mlp")(x1, x2, get)

    batched = batch(traced, TILE, progress=False, store_on_device=True)
    k = batched(inputs(X1, 0), inputs(X2, 1), "ntk")  # 3 x 2 tiles, the short ones padded
    batched(inputs(X1, 2), None, "ntk")
    batch(traced, TILE, progress=False)(inputs(X1, 3), None, "ntk")  # a new batch() reuses the compiled tiles
    assert traces == [(TILE, 5)] * 2  # one trace per tile function (off-diagonal, diagonal), ever
    assert isinstance(k, jax.Array) and k.shape == (11, 6)
    check(reference("mlp", True), k, "ntk")


def test_progress_bar_and_errors(capsys):
    batch(net("mlp"), TILE, progress=True)(inputs(X1, 0), None, "ntk")
    assert "6/6" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NaN"):
        batch(net("mlp"), TILE, progress=False)(np.full(X1, np.nan))
    with pytest.raises(ValueError, match="batch_size"):
        batch(net("mlp"), -1)
    with pytest.raises(ValueError, match="argument `fingerprint` must be None without path"):  # not ignored
        batch(net("mlp"), TILE, fingerprint="my-model v3")


def test_four_simulated_devices_equal_one():
    """Tiles spread round-robin over 4 CPU devices (a subprocess: the flag must precede JAX's start)."""
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from kernels import batch, stax
        assert len(jax.local_devices()) == 4
        rng = np.random.default_rng(0)
        mlp = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))[2]
        cnn = stax.serial(stax.Conv(3, (2, 2), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))[2]
        for kernel_fn, x in ((mlp, rng.normal(size=(11, 5))), (cnn, rng.normal(size=(7, 3, 3, 2)))):
            for x2 in (None, x[:5] + 1):
                got = batch(kernel_fn, 2, progress=False)(x, x2, "ntk")
                one = batch(kernel_fn, 2, device_count=1, progress=False)(x, x2, "ntk")
                assert np.allclose(got, kernel_fn(x, x2, "ntk"), rtol=1e-10, atol=1e-12)
                assert np.allclose(got, one, rtol=1e-10, atol=1e-12)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_batching_a_kernel_fn_that_takes_params_and_keywords(tmp_path):
    """neural-tangents' ``batch(empirical_kernel_fn(f))(x1, x2, get, params)``; tiles of other params
    are never reused from a store (an empirical kernel is linear-model exact: x1 W . x2 W / out_dim)."""
    from kernels.empirical import empirical_kernel_fn
    init_fn, apply_fn, _ = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(2))
    x1, x2 = inputs((7, 4), 0), inputs((5, 4), 1)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    kernel_fn = empirical_kernel_fn(apply_fn)
    direct = kernel_fn(x1, x2, ("nngp", "ntk"), params)
    batched = batch(kernel_fn, 3, progress=False)
    for got in (batched(x1, x2, ("nngp", "ntk"), params), batched(x1, x2, ("nngp", "ntk"), params=params)):
        np.testing.assert_allclose(np.asarray(got.ntk), np.asarray(direct.ntk), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got.nngp), np.asarray(direct.nngp), rtol=1e-12)
    assert isinstance(batched(x1, x2, "ntk", params), jax.Array)  # neural-tangents' default: on the device
    stored = batch(kernel_fn, 3, path=str(tmp_path), progress=False)
    np.testing.assert_allclose(stored(x1, None, "ntk", params), kernel_fn(x1, None, "ntk", params), rtol=1e-12)
    _, other = init_fn(jax.random.PRNGKey(1), x1.shape)
    with pytest.raises(ValueError, match="different arguments"):
        stored(x1, None, "ntk", other)


# ----------------------------------------------------------------------------- a Kernel as the argument

@pytest.mark.parametrize("given", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_batching_a_function_applied_to_a_kernel_equals_the_unbatched_call(given, tmp_path):
    # neural-tangents' nt.batch(kernel_fn)(kernel): tiles of the Kernel's arrays (nngp/ntk rows x columns,
    # cov1 rows, cov2 columns), short last tiles (11 = 4 + 4 + 3, 6 = 4 + 2), upper triangle for x2=None.
    first = stax.serial(stax.Dense(6, W_std=1.4, b_std=0.1), stax.Relu())[2]
    then = stax.serial(stax.Dense(5, W_std=1.2), stax.Erf(), stax.Dense(1))[2]
    k = first(inputs(X1, 0), inputs(X2, 1) if given else None)
    expected = then(k)
    check(expected, batch(then, TILE, progress=False)(k), None)
    check(expected, batch(then, TILE, progress=False)(k, None, ("ntk", "cov2")), ("ntk", "cov2"))
    stored = batch(then, TILE, progress=False, path=str(tmp_path))(k, None, "nngp")
    assert close(stored, expected.nngp)
    assert close(batch(then, TILE, progress=False, path=str(tmp_path))(k, None, "nngp"), expected.nngp)  # reused
    # A tiling that took the columns' examples from the rows (the diagonal tiles' rule everywhere) is caught.
    batching = sys.modules["kernels.batch"]
    right = batching._on_kernel_tile

    def wrong(kernel_fn):
        tile = right(kernel_fn)
        return lambda rows, cols, get, kernel, *a, **kw: tile(rows, None, get, kernel, *a, **kw)
    batching._on_kernel_tile = wrong
    try:
        bad = np.asarray(batch(then, TILE, progress=False)(k, None, "nngp"))
    except ValueError:  # tiles that cannot even be assembled count as caught
        bad = None
    finally:
        batching._on_kernel_tile = right
    assert bad is None or not close(bad, expected.nngp)


def test_batching_a_kernel_refuses_x2_and_pattern():
    first = stax.serial(stax.Dense(6), stax.Relu())[2]
    k = first(inputs(X1, 0))
    then = stax.serial(stax.Dense(1))[2]
    with pytest.raises(ValueError, match="x2"):
        batch(then, TILE, progress=False)(k, inputs(X2, 1))
    with pytest.raises(ValueError, match="pattern"):
        batch(then, TILE, progress=False)(k, None, None, pattern=(None, None))


# ----------------------------------------------------------------------------- functions that take no get

@functools.lru_cache(maxsize=None)
def finite_net():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(6, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(3))
    return apply_fn, init_fn(jax.random.PRNGKey(0), X1)[1]


@pytest.mark.parametrize("trace_axes,given", [((), False), ((-1,), True),
                                              pytest.param((), True, marks=pytest.mark.slow),
                                              pytest.param((-1,), False, marks=pytest.mark.slow)])
def test_batching_empirical_ntk_fn_passes_params_positionally(trace_axes, given):
    """neural-tangents' examples/function_space.py: ``nt.batch(nt.empirical_ntk_fn(apply_fn, vmap_axes=0), ...)``
    called as ``ntk(x_train, None, params)``; with ``trace_axes=()`` the output axes come in pairs (N1, N2, 3, 3)."""
    from kernels.empirical import empirical_ntk_fn
    apply_fn, params = finite_net()
    ntk_fn = empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=0)
    x1, x2 = inputs(X1, 0), (inputs(X2, 1) if given else None)
    got = batch(ntk_fn, TILE, device_count=0, progress=False)(x1, x2, params)
    expected = ntk_fn(x1, x2, params)
    assert got.shape == expected.shape == (X1[0], (X2 if given else X1)[0]) + (3, 3) * (trace_axes == ())
    assert close(got, expected)
    # params as a keyword of a partial, get absent: the same
    keyword = batch(functools.partial(ntk_fn, params=params), TILE, progress=False)(x1, x2)
    assert close(keyword, expected)
    # a wrong pass-through (other parameters instead of the given ones) is caught by the comparison
    other = jax.tree_util.tree_map(lambda p: 1.1 * p, params)
    assert not close(batch(lambda a, b, _params: ntk_fn(a, b, other), TILE, progress=False)(x1, x2, params),
                     expected)


def scaled_dot(x1, x2, key):
    """A Monte-Carlo-like kernel_fn(x1, x2, key): x1 x2^T times one standard normal draw of ``key``, and the
    same for the norms as a second output (a pytree)."""
    z = jax.random.normal(key, ())
    x2 = x1 if x2 is None else x2
    return {"dot": z * x1 @ x2.T, "pair": (z * x1.sum(1)[:, None] + x2.sum(1)[None, :])[..., None]}


def test_a_function_of_x1_x2_key_gets_the_key():
    key = jax.random.PRNGKey(7)
    x1, x2 = inputs(X1, 0), inputs(X2, 1)
    z = float(jax.random.normal(key, ()))  # the draw, independently of batch
    truth = {"dot": z * x1 @ x2.T, "pair": (z * x1.sum(1)[:, None] + x2.sum(1)[None, :])[..., None]}
    got = batch(scaled_dot, TILE, progress=False)(x1, x2, key)
    assert set(got) == {"dot", "pair"} and all(close(got[n], truth[n]) for n in truth)
    sym = batch(scaled_dot, TILE, progress=False)(x1, None, key)["dot"]
    assert close(sym, z * x1 @ x1.T)
    # a wrong pass-through (the key dropped for a fixed one) fails the same check
    dropped = batch(lambda a, b, _key: scaled_dot(a, b, jax.random.PRNGKey(0)), TILE, progress=False)(x1, x2, key)
    assert not close(dropped["dot"], truth["dot"])


def test_get_as_keyword_and_traced_inputs():
    x1, x2 = inputs(X1, 0), inputs(X2, 1)
    expected = reference("mlp", True)
    assert close(batch(net("mlp"), TILE, progress=False)(x1, x2, get="ntk"), expected.ntk)
    traced = jax.jit(lambda a, b: batch(net("mlp"), TILE, progress=False)(a, b, "nngp"))(x1, x2)
    assert close(traced, expected.nngp)
    traced = jax.jit(lambda a, b: batch(scaled_dot, TILE, progress=False)(a, b, jax.random.PRNGKey(7)))(x1, x2)
    assert close(traced["dot"], scaled_dot(x1, x2, jax.random.PRNGKey(7))["dot"])
    # A function of a Kernel without a `get` parameter (neural-tangents' tests bind it by partial): every
    # tile is the function of that tile's part of the Kernel.
    k = reference("mlp", True)
    readout = functools.partial(stax.serial(stax.Relu(), stax.Dense(1))[2], get="nngp")
    assert close(batch(readout, TILE, progress=False)(k), readout(k))
