"""kernels.batch(..., path=P) stores prove what they hold (kernels.tile_store).

Each damage the issue names gets a test: a deleted tile file with its progress kept, a
truncated file, bytes overwritten, another network of the same name, a deleted manifest, a
store of the format before fingerprints. A damaged store is repaired and the result is the
kernel's, with a warning naming the file; a store of something else is refused, naming the
file and what differs. The tiny MLP and tile size of test_batch are reused (one compilation).
"""
import hashlib
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import batch, stax
from tests.kernels.test_batch import BOTH, TILE, X1, close, inputs, net


def stored(path, x=None, kernel_fn=None, **kwargs):
    x = inputs(X1, 0) if x is None else x
    return batch(kernel_fn or net("mlp"), TILE, path=str(path), progress=False, **kwargs)(x, None, BOTH)


@pytest.fixture
def store(tmp_path):
    """A finished store and the true kernel."""
    truth = stored(tmp_path)
    return tmp_path, (np.array(truth.nngp), np.array(truth.ntk))


def same(got, truth):
    return np.array_equal(got.nngp, truth[0]) and np.array_equal(got.ntk, truth[1])


def test_deleted_tile_file_is_recomputed(store):
    path, truth = store
    os.remove(path / "nngp.npy")  # progress records kept
    with pytest.warns(UserWarning, match="nngp.npy"):
        got = stored(path)
    assert same(got, truth)


def test_truncated_tile_file_is_recomputed(store):
    path, truth = store
    size = os.path.getsize(path / "ntk.npy")
    os.truncate(path / "ntk.npy", size // 2)
    with pytest.warns(UserWarning, match=r"ntk.npy.*truncated"):
        got = stored(path)
    assert same(got, truth)


def test_overwritten_bytes_are_recomputed_and_named(store):
    path, truth = store
    with open(path / "nngp.npy", "r+b") as f:  # garbage over the end of row 5 and the start of row 6
        f.seek(os.path.getsize(path / "nngp.npy") - 6 * 11 * 8 + 40)
        f.write(np.random.default_rng(0).bytes(48))
    with pytest.warns(UserWarning, match=r"nngp.npy.*tiles \(1, 1\), \(1, 2\)"):
        got = stored(path)
    assert same(got, truth)
    with open(path / "ntk.npy", "r+b") as f:  # the header too
        f.write(b"garbage!")
    with pytest.warns(UserWarning, match="header of .*ntk.npy"):
        assert same(stored(path), truth)


def test_another_network_of_the_same_name_is_refused(tmp_path):
    def network(scale):
        return stax.serial(stax.Dense(4), stax.Elementwise(jnp.sin, lambda c, v1, v2: scale * c), stax.Dense(1))[2]
    first, second = network(1.0), network(2.0)
    assert first.name == second.name
    stored(tmp_path, kernel_fn=first)
    with pytest.raises(ValueError, match=r"batch.json.*network_sha256"):
        stored(tmp_path, kernel_fn=second)


def test_deleted_manifest_is_refused(store):
    path, _ = store
    os.remove(path / "batch.json")
    with pytest.raises(ValueError, match=r"no batch.json.*delete"):
        stored(path, inputs(X1, 5))  # other inputs must not reuse these tiles


def test_store_of_the_format_before_fingerprints_is_refused(tmp_path):
    """The manifest, progress grid and files the previous version wrote for this very run."""
    x = inputs(X1, 0)
    h = hashlib.sha256(repr((x.shape, str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x).data)
    manifest = dict(format=1, x1_shape=list(X1), x2_shape=None, dtype="float64", x2_dtype=None, tile=[TILE, TILE],
                    get=list(BOTH), outputs={n: [[11, 11], "float64"] for n in BOTH},
                    inputs_sha256=h.hexdigest(), kernel_fn=net("mlp").name)
    (tmp_path / "batch.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for n in BOTH:
        np.save(tmp_path / f"{n}.npy", np.zeros((11, 11)))
    np.save(tmp_path / "progress.0.npy", np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"batch.json.*format.*delete"):
        stored(tmp_path)


def test_unreadable_manifest_is_named(store):
    path, _ = store
    (path / "batch.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"batch.json"):
        stored(path)


def test_interrupted_progress_line_is_recomputed(store):
    path, truth = store
    with open(path / "progress.0.jsonl", "ab") as f:
        f.write(b'{"tile": [2, 2], "cr')  # a kill in the middle of a record
    with pytest.warns(UserWarning, match=r"progress.0.jsonl"):
        assert same(stored(path), truth)
    assert same(stored(path), truth)  # the next record started on its own line


def test_function_without_fingerprint_needs_a_name(tmp_path):
    class Opaque:  # hidden state a fingerprint cannot see
        def __call__(self, c, v1, v2):
            return c

    kernel_fn = stax.serial(stax.Dense(4), stax.Elementwise(jnp.sin, Opaque()), stax.Dense(1))[2]
    with pytest.raises(TypeError, match=r"Opaque.*fingerprint="):
        stored(tmp_path, kernel_fn=kernel_fn)
    got = stored(tmp_path, kernel_fn=kernel_fn, fingerprint="opaque sine v1")
    assert close(got.ntk, kernel_fn(inputs(X1, 0), None, "ntk"))
    with pytest.raises(ValueError, match="network_sha256"):
        stored(tmp_path, kernel_fn=kernel_fn, fingerprint="opaque sine v2")


def test_tiles_and_progress_copied_from_another_store_are_recomputed(tmp_path):
    """Array and progress files of another network's store, under this store's manifest."""
    other = stax.serial(stax.Dense(16, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1))[2]
    truth = stored(tmp_path / "a")
    truth = (np.array(truth.nngp), np.array(truth.ntk))
    stored(tmp_path / "b", kernel_fn=other)
    for name in ("nngp.npy", "ntk.npy", "progress.0.jsonl"):
        shutil.copyfile(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.warns(UserWarning, match=r"progress.0.jsonl.*not written for this store"):
        got = stored(tmp_path / "a")
    assert same(got, truth)
