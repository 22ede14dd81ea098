"""Tiled, resumable, multi-device evaluation of big kernel matrices: `batch`.

``batch(kernel_fn, batch_size)`` returns a function with ``kernel_fn``'s signature
``(x1, x2=None, get=None)`` that evaluates the ``N1 x N2`` kernel matrix tile by tile
(tiles of ``batch_size x batch_size`` examples), the interface of neural-tangents'
``nt.batch`` (Novak et al. 2020, "Neural Tangents: Fast and Easy Infinite Neural Networks
in Python", ICLR; ``neural_tangents/_src/batching.py``), written anew here:

* when ``x2 is None`` only tiles ``(i, j)`` with ``j >= i`` are computed; the lower
  triangle is their mirror image, ``K(x', x)[s', s] = K(x, x')[s, s']``: the two batch
  axes are swapped and, for spatial outputs that keep position pairs (neural-tangents'
  interleaved layout ``(N1, N2, S_1, S'_1, S_2, S'_2, ...)``), so is every ``S``/``S'`` pair;
* the per-tile kernel is ``jax.jit``-compiled once (every tile is padded to the full tile
  shape by repeating its last example, so the last, short tile causes no recompilation;
  the padding is sliced off);
* tiles go round-robin to the local devices (``jax.local_devices()``), each tile's inputs
  placed with ``jax.device_put``; at most ``2 x devices`` tiles are in flight, so device
  memory is bounded by the tile size, not by ``N``;
* finished tiles are copied to a host NumPy array, or, with ``path``, written into one
  ``.npy`` file per requested array (``path/nngp.npy``, ``path/ntk.npy``, ...), returned as
  read-only ``np.memmap``. After each tile's bytes are written and ``fsync``-ed, the tile is
  recorded in a progress file (``path/progress.<process_index>.npy``, a boolean tile grid,
  replaced atomically with ``os.replace``), so an interrupted run called again with the same
  arguments skips finished tiles. ``path/batch.json`` records the inputs' shapes, dtype and a
  SHA-256 fingerprint, the tile size and the requested arrays; a rerun whose arguments differ
  is refused with a ``ValueError`` naming what differs;
* a ``tqdm`` progress bar counts tiles (``progress=False`` turns it off).

Multi-host (``jax.distributed``)
--------------------------------
Call ``jax.distributed.initialize()`` on every host, then the same ``batch(...)(x1, x2)``
with the same inputs and a ``path`` on a file system all hosts share. Tiles are enumerated
in one fixed order (row-major, upper triangle when ``x2 is None``); host ``p`` computes the
tiles whose index ``t`` satisfies ``t % jax.process_count() == jax.process_index()`` on its
own local devices and writes them into the shared ``.npy`` files (each tile, and its mirror,
is a disjoint set of bytes, written with ``os.pwrite``, not through shared pages, so hosts
never overwrite each other's data), recording them in its own ``progress.<p>.npy``. At the
end the hosts meet at ``jax.experimental.multihost_utils.sync_global_devices``, after which
every host's returned memmap holds the whole matrix. A resumed run (with any number of hosts)
skips every tile recorded in any progress file. ``process_index``/``process_count`` can be
given explicitly (e.g. for a scheduler's job array without ``jax.distributed``, or to test
the split on one machine); then there is no barrier, and the matrix is complete once every
share has returned. Without ``path`` each process gets a host array holding only its own
tiles (NaN elsewhere). On every host::

    import jax
    from kernels import batch, stax
    jax.distributed.initialize()  # coordinator address, process count and id from the scheduler
    _, _, kernel_fn = stax.serial(...)
    k = batch(kernel_fn, 256, path="/shared/run1")(x_train, None, ("nngp", "ntk"))
    # k.nngp, k.ntk: read-only memmaps of /shared/run1/nngp.npy, ntk.npy, complete on every host

Costs: each tile costs a few Python-level steps (device transfer, host copy, finiteness
check; about 0.3 ms on a CPU) and, with ``path``, an ``fsync`` of its bytes and of the
progress file (tens of ms on an ordinary disk); choose tiles that take much longer than that.
The compiled tile functions are shared by every ``batch(...)`` of the same ``kernel_fn``.

Caveats: the rerun check fingerprints the inputs, not the network: it compares the network's
``name`` (a `kernels.stax` ``KernelFn`` describes its layers and their parameters) when both
runs' ``kernel_fn`` have one; a plain function wrapping a network is not identified. Output
finiteness is checked tile by tile (a ``FloatingPointError`` names the tile; call the
unbatched ``kernel_fn`` on that tile's inputs to have the layer named).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
import tempfile
import weakref
from typing import Callable, Optional

import jax
import numpy as np

from kernels.files import atomic_write

__all__ = ["batch"]

_FORMAT = 1
_TILE_FNS = weakref.WeakKeyDictionary()  # kernel_fn -> {get: (diagonal tile fn, off-diagonal tile fn)}
_ROWS, _COLS, _PAIRS = "rows", "cols", "pairs"


def batch(kernel_fn: Callable, batch_size: int, device_count: int = -1, store_on_device: bool = False,
          path: Optional[str] = None, progress: bool = True, *, process_index: Optional[int] = None,
          process_count: Optional[int] = None) -> Callable:
    """Tiled version of ``kernel_fn``: same signature ``(x1, x2=None, get=None)``, same result.

    Args:
      kernel_fn: a neural-tangents-style kernel function ``kernel_fn(x1, x2, get)``, e.g. the
        third element of a `kernels.stax` network. It must be traceable by ``jax.jit`` with
        ``get`` fixed.
      batch_size: tile side in examples (each tile is ``batch_size x batch_size`` kernel
        entries, i.e. examples ``x1[i*b:(i+1)*b]`` against ``x2[j*b:(j+1)*b]``). ``N1`` and
        ``N2`` need not be multiples of it. ``0`` means one tile of the whole matrix.
      device_count: how many of ``jax.local_devices()`` to spread tiles over; ``-1`` all of
        them, ``0`` the default device only.
      store_on_device: return ``jax.Array`` s on the first device instead of NumPy arrays
        (assembled on the host first; not with ``path``).
      path: a directory; if given, every requested array is written to ``path/<name>.npy``
        and returned as a read-only ``np.memmap``; the run is resumable (module docstring).
      progress: show a ``tqdm`` progress bar over tiles.
      process_index, process_count: this process's share of the tiles (default:
        ``jax.process_index()``, ``jax.process_count()``); see the module docstring.

    Returns:
      ``batched_kernel_fn(x1, x2=None, get=None)`` returning what ``kernel_fn`` returns:
      a `Kernel` for ``get=None`` (``nngp``, ``ntk``, ``cov1``, ``cov2`` filled), a named tuple
      for a tuple of names, an array for one name; ``(N1, N2, ...)`` for kernels,
      ``(N1, ...)``/``(N2, ...)`` for ``cov1``/``cov2``.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise ValueError(f"batch: batch_size must be a non-negative int, got {batch_size!r}")
    if store_on_device and path is not None:
        raise ValueError("batch: store_on_device=True and path are exclusive (a memmap lives on the host)")
    explicit = process_index is not None or process_count is not None
    if explicit:
        process_index = 0 if process_index is None else int(process_index)
        process_count = 1 if process_count is None else int(process_count)
    else:
        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"batch: need 0 <= process_index < process_count, got {process_index}, {process_count}")

    local = jax.local_devices()
    if device_count == -1:
        devices = list(local)
    elif device_count == 0:
        devices = [local[0]]
    elif 0 < device_count <= len(local):
        devices = list(local[:device_count])
    else:
        raise ValueError(f"batch: device_count={device_count!r}, but there are {len(local)} local devices")

    try:  # shared by every batch() of the same kernel_fn: one compilation per tile shape and get
        compiled = _TILE_FNS.setdefault(kernel_fn, {})
        kernel_ref = weakref.ref(kernel_fn)  # the cache must not keep kernel_fn alive
    except TypeError:  # not weak-referenceable
        compiled, kernel_ref = {}, lambda: kernel_fn

    def tile_fns(get):
        if get not in compiled:
            compiled[get] = (jax.jit(lambda a: kernel_ref()(a, None, get)),
                             jax.jit(lambda a, b: kernel_ref()(a, b, get)))
        return compiled[get]

    def batched_kernel_fn(x1, x2=None, get=None):
        get = _normalize_get(get)
        x1 = _host_array(x1, "x1")
        x2 = None if x2 is None else _host_array(x2, "x2")
        symmetric = x2 is None
        n1 = x1.shape[0]
        n2 = n1 if symmetric else x2.shape[0]
        b1 = n1 if batch_size == 0 else min(batch_size, n1)
        b2 = n2 if batch_size == 0 else min(batch_size, n2)
        if symmetric:
            b1 = b2 = min(b1, b2)
        f_diag, f_off = tile_fns(get)

        tile1 = jax.ShapeDtypeStruct((b1,) + x1.shape[1:], x1.dtype)
        tile2 = jax.ShapeDtypeStruct((b2,) + (x1 if symmetric else x2).shape[1:],
                                     (x1 if symmetric else x2).dtype)
        template = jax.eval_shape(f_diag, tile1) if symmetric else jax.eval_shape(f_off, tile1, tile2)
        leaves = _as_dict(template, get)
        spatial_ndim = x1.ndim - 2
        layout = {}
        for name, leaf in leaves.items():
            kind = _COLS if name == "cov2" else _ROWS if name == "cov1" else _PAIRS
            lead = (n1, n2) if kind == _PAIRS else (n1,) if kind == _ROWS else (n2,)
            tail = leaf.shape[len(lead):]
            expect = (b1, b2) if kind == _PAIRS else (b1,) if kind == _ROWS else (b2,)
            if tuple(leaf.shape[:len(lead)]) != expect:
                raise ValueError(f"batch: kernel_fn's {name!r} has shape {leaf.shape} for a {b1} x {b2} tile; "
                                 f"expected leading axes {expect}")
            layout[name] = (kind, lead + tuple(tail), np.dtype(leaf.dtype),
                            _mirror_axes(len(tail), spatial_ndim, getattr(template, "full", None)))

        n_rows, n_cols = -(-n1 // b1), -(-n2 // b2)
        all_tiles = [(i, j) for i in range(n_rows) for j in range(i if symmetric else 0, n_cols)]
        mine = [t for k, t in enumerate(all_tiles) if k % process_count == process_index]

        if path is None:
            sink = _HostSink(layout, fill_nan=process_count > 1)
        else:
            manifest = dict(format=_FORMAT, x1_shape=list(x1.shape), x2_shape=None if symmetric else list(x2.shape),
                            dtype=str(x1.dtype), x2_dtype=None if symmetric else str(x2.dtype),
                            tile=[b1, b2], get=_get_json(get),
                            outputs={n: [list(s), str(d)] for n, (_, s, d, _) in layout.items()},
                            inputs_sha256=_fingerprint(x1, x2),
                            kernel_fn=getattr(kernel_fn, "name", None))
            sink = _FileSink(path, layout, manifest, (n_rows, n_cols), process_index)
        todo = [t for t in mine if not sink.is_done(t)]

        def block(x, k, b):
            part = x[k * b:(k + 1) * b]
            if part.shape[0] < b:  # pad with copies of the last example: real inputs, no NaN risk
                part = np.concatenate([part, np.repeat(part[-1:], b - part.shape[0], axis=0)])
            return part

        def finish(i, j, out):
            r0, c0 = i * b1, j * b2
            rn, cn = min(b1, n1 - r0), min(b2, n2 - c0)
            arrays = {n: np.asarray(v) for n, v in _as_dict(out, get).items()}
            for name, value in arrays.items():
                kind, _, dtype, mirror = layout[name]
                value = value[:rn, :cn] if kind == _PAIRS else value[:rn] if kind == _ROWS else value[:cn]
                if not np.isfinite(value).all():
                    raise FloatingPointError(
                        f"batch: {name!r} of tile ({i}, {j}) (x1[{r0}:{r0 + rn}] x "
                        f"{'x1' if symmetric else 'x2'}[{c0}:{c0 + cn}]) contains NaN or infinite values; "
                        "call kernel_fn on these inputs to have the layer named")
                value = np.ascontiguousarray(value, dtype=dtype)
                if kind == _PAIRS:
                    sink.write_pairs(name, r0, c0, value)
                    if symmetric and i != j:
                        sink.write_pairs(name, c0, r0, np.ascontiguousarray(np.transpose(value, mirror)))
                elif kind == _ROWS and (j == i if symmetric else j == 0):
                    sink.write_rows(name, r0, value)
                elif kind == _COLS and (j == i if symmetric else i == 0):
                    sink.write_rows(name, c0, value)
            sink.mark_done((i, j))

        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="tile", desc="kernel tiles")
        window = 2 * len(devices)
        pending = collections.deque()
        cached_rows = {}
        try:
            for k, (i, j) in enumerate(todo):
                device = devices[k % len(devices)]
                if cached_rows.get(device, (None,))[0] != i:
                    cached_rows[device] = (i, jax.device_put(block(x1, i, b1), device))
                a = cached_rows[device][1]
                if symmetric and i == j:
                    out = f_diag(a)
                else:
                    out = f_off(a, jax.device_put(block(x1 if symmetric else x2, j, b2), device))
                pending.append((i, j, out))
                if len(pending) >= window:
                    finish(*pending.popleft())
                    if bar is not None:
                        bar.update(1)
            while pending:
                finish(*pending.popleft())
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            sink.close()

        if not explicit and process_count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("kernels.batch: all tiles written")
        results = sink.results()
        if store_on_device:
            results = {n: jax.device_put(v, devices[0]) for n, v in results.items()}
        return _rebuild(template, get, results)

    batched_kernel_fn.__doc__ = (f"Tiled ({batch_size} x {batch_size} examples) kernel_fn(x1, x2=None, get=None); "
                                 "see kernels.batch.")
    batched_kernel_fn.kernel_fn = kernel_fn
    return batched_kernel_fn


# ----------------------------------------------------------------------------- helpers

def _normalize_get(get):
    if get is None or isinstance(get, str):
        return get
    get = tuple(get)
    if not all(isinstance(g, str) for g in get):
        raise TypeError(f"batch: get must be None, a name or a tuple of names; got {get!r}")
    return get


def _get_json(get):
    return get if get is None or isinstance(get, str) else list(get)


def _host_array(x, label):
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"batch: {label} must be batch-first with a channel axis, (N, features) or "
                         f"(N, *spatial, C); got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"batch: {label} has no examples (shape {x.shape})")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"batch: {label} contains NaN or infinite values "
                         f"(first at index {tuple(int(i) for i in bad)}, shape {x.shape})")
    return x


def _fingerprint(x1, x2):
    h = hashlib.sha256()
    for x in (x1, x2):
        if x is not None:
            h.update(repr((x.shape, str(x.dtype))).encode())
            h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def _as_dict(out, get) -> dict:
    """The arrays of one kernel_fn result, by name (absent fields left out)."""
    if get is None:
        return {n: getattr(out, n) for n in ("nngp", "ntk", "cov1", "cov2") if getattr(out, n, None) is not None}
    if isinstance(get, str):
        return {get: out}
    return dict(zip(get, out))


def _rebuild(template, get, arrays: dict):
    if get is None:
        fields = {n: arrays.get(n) for n in ("nngp", "ntk", "cov1", "cov2") if hasattr(template, n)}
        if hasattr(template, "replace"):
            return template.replace(**fields)
        return dataclasses.replace(template, **fields)
    if isinstance(get, str):
        return arrays[get]
    return type(template)(*(arrays[n] for n in get))


def _mirror_axes(tail_ndim: int, spatial_ndim: int, full: Optional[bool]) -> tuple:
    """Axis order that turns tile ``K(x1_i, x1_j)`` into ``K(x1_j, x1_i)``.

    Swaps the batch axes and, for outputs that keep position pairs in neural-tangents'
    interleaved order ``(S_1, S'_1, S_2, S'_2, ...)``, every ``S``/``S'`` pair. Whether
    the trailing axes are pairs is read from the `Kernel`'s ``full`` flag when known, else
    from their number: ``2 d`` trailing axes for ``d`` input spatial axes are pairs, ``d``
    are positions only (diagonal layout), none is a flat output.
    """
    if tail_ndim == 0:
        return (1, 0)
    if full is None:
        if spatial_ndim > 0 and tail_ndim == 2 * spatial_ndim:
            full = True
        elif tail_ndim == spatial_ndim:
            full = False
        else:
            raise ValueError(f"batch: cannot tell how to mirror a kernel with {tail_ndim} trailing axes "
                             f"for inputs with {spatial_ndim} spatial axes; pass x2 to compute every tile")
    if not full:
        return (1, 0) + tuple(range(2, 2 + tail_ndim))
    if tail_ndim % 2:
        raise ValueError(f"batch: a kernel keeping position pairs must have an even number of trailing axes, "
                         f"got {tail_ndim}")
    axes = [1, 0]
    for k in range(tail_ndim // 2):
        axes += [3 + 2 * k, 2 + 2 * k]
    return tuple(axes)


class _HostSink:
    """Finished tiles into NumPy arrays in host memory."""

    def __init__(self, layout, fill_nan):
        self.arrays = {n: (np.full(shape, np.nan, dtype) if fill_nan else np.empty(shape, dtype))
                       for n, (_, shape, dtype, _) in layout.items()}

    def is_done(self, tile):
        return False

    def write_pairs(self, name, r0, c0, value):
        self.arrays[name][r0:r0 + value.shape[0], c0:c0 + value.shape[1]] = value

    def write_rows(self, name, r0, value):
        self.arrays[name][r0:r0 + value.shape[0]] = value

    def mark_done(self, tile):
        pass

    def close(self):
        pass

    def results(self):
        return self.arrays


def _create_once(target: str, write: Callable[[str], None]) -> bool:
    """Creates ``target`` unless it exists, atomically and without clobbering a concurrent creator.

    Writes a temporary file and hard-links it to ``target`` (``os.link`` fails if ``target``
    exists). Returns whether this call created it.
    """
    if os.path.exists(target):
        return False
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(target))
    os.close(fd)
    try:
        write(tmp)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: a rename, racy only between simultaneous creators
            if os.path.exists(target):
                return False
            os.replace(tmp, target)
            return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _FileSink:
    """Finished tiles into ``path/<name>.npy`` with ``os.pwrite``; progress per process."""

    def __init__(self, path, layout, manifest, grid, process_index):
        os.makedirs(path, exist_ok=True)
        self.path, self.layout, self.grid = path, layout, grid
        manifest_file = os.path.join(path, "batch.json")
        text = json.dumps(manifest, indent=1, sort_keys=True)

        def write_manifest(tmp):
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        if not _create_once(manifest_file, write_manifest):
            with open(manifest_file) as f:
                old = json.load(f)
            differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k)
                            and not (k == "kernel_fn" and None in (old.get(k), manifest.get(k))))
            if differ:
                details = "; ".join(f"{k}: stored {old.get(k)!r}, now {manifest.get(k)!r}" for k in differ)
                raise ValueError(f"batch: {path!r} holds a run with different arguments ({details}); "
                                 "use another path, or delete this one to start over")
        self.files = {}
        for name, (_, shape, dtype, _) in layout.items():
            target = os.path.join(path, f"{name}.npy")

            def write_npy(tmp, shape=shape, dtype=dtype):
                np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()

            _create_once(target, write_npy)
            with open(target, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                stored_shape, fortran, stored_dtype = read_header(f)
                offset = f.tell()
            if tuple(stored_shape) != tuple(shape) or np.dtype(stored_dtype) != dtype or fortran:
                raise ValueError(f"batch: {target!r} holds a {stored_dtype} array of shape {stored_shape}, "
                                 f"expected {dtype} {shape}; use another path")
            self.files[name] = (os.open(target, os.O_RDWR), offset, shape, dtype)
        self.progress_file = os.path.join(path, f"progress.{process_index}.npy")
        self.done = np.zeros(grid, bool)
        self.mine = np.zeros(grid, bool)
        for f in glob.glob(os.path.join(path, "progress.*.npy")):
            g = np.load(f)
            if g.shape != grid:
                raise ValueError(f"batch: progress file {f!r} has tile grid {g.shape}, expected {grid}")
            self.done |= g
            if f == self.progress_file:
                self.mine |= g
        self.dirty = set()

    def is_done(self, tile):
        return bool(self.done[tile])

    def _pwrite(self, fd, data: memoryview, offset: int):
        while len(data):
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    def write_pairs(self, name, r0, c0, value):
        fd, offset, shape, dtype = self.files[name]
        row = int(np.prod(shape[2:], dtype=np.int64)) * dtype.itemsize
        n2 = shape[1]
        flat = value.reshape(value.shape[0], -1)
        for r in range(value.shape[0]):
            self._pwrite(fd, memoryview(flat[r]).cast("B"), offset + ((r0 + r) * n2 + c0) * row)
        self.dirty.add(name)

    def write_rows(self, name, r0, value):
        fd, offset, shape, dtype = self.files[name]
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._pwrite(fd, memoryview(value.reshape(-1)).cast("B"), offset + r0 * row)
        self.dirty.add(name)

    def mark_done(self, tile):
        for name in self.dirty:  # the tile's bytes reach the disk before the record that says so
            os.fsync(self.files[name][0])
        self.dirty.clear()
        self.done[tile] = self.mine[tile] = True
        atomic_write(self.progress_file, lambda f: np.save(f, self.mine))

    def close(self):
        for fd, *_ in self.files.values():
            os.close(fd)
        self.files = {}

    def results(self):
        return {name: np.load(os.path.join(self.path, f"{name}.npy"), mmap_mode="r") for name in self.layout}
