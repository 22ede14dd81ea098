"""Tiled, resumable, multi-device evaluation of big kernel matrices: `batch`.

``batch(kernel_fn, batch_size)`` returns a function with ``kernel_fn``'s signature
``(x1, x2=None, get=None)`` that evaluates the ``N1 x N2`` kernel matrix tile by tile
(tiles of ``batch_size x batch_size`` examples), the interface of neural-tangents'
``nt.batch`` (Novak et al. 2020, "Neural Tangents: Fast and Easy Infinite Neural Networks
in Python", ICLR; ``neural_tangents/_src/batching.py``), written anew here:

* the tiles are those of `kernels.tiling` (the plan ``kernel_fn``'s own blocks use): when
  ``x2 is None`` only tiles ``(i, j)`` with ``j >= i`` are computed and the lower triangle is
  their mirror image; every tile is padded to the full tile shape, so the per-tile kernel is
  ``jax.jit``-compiled once;
* tiles go round-robin to the local devices (``jax.local_devices()``), each tile's inputs
  placed with ``jax.device_put``; at most ``2 x devices`` tiles are in flight, so device
  memory is bounded by the tile size, not by ``N``;
* finished tiles are copied to a host NumPy array, or, with ``path``, written into one
  ``.npy`` file per requested array (``path/nngp.npy``, ``path/ntk.npy``, ...; for a network
  ending in branches one per branch and array, ``path/branch0.nngp.npy``, ...), returned as
  read-only ``np.memmap``. After each tile's bytes are written and ``fsync``-ed, the tile is
  recorded with its checksums in a progress file (``path/progress.<process_index>.jsonl``,
  one line appended per tile), so an interrupted run called again with the same
  arguments skips finished tiles once it has verified them (`kernels.tile_store`);
* a ``tqdm`` progress bar counts tiles (``progress=False`` turns it off).

Multi-host (``jax.distributed``)
--------------------------------
Call ``jax.distributed.initialize()`` on every host, then the same ``batch(...)(x1, x2)``
with the same inputs and a ``path`` on a file system all hosts share. Tiles are enumerated
in one fixed order (row-major, upper triangle when ``x2 is None``); host ``p`` computes the
tiles whose index ``t`` satisfies ``t % jax.process_count() == jax.process_index()`` on its
own local devices and writes them into the shared ``.npy`` files (each tile, and its mirror,
is a disjoint set of bytes, written with ``os.pwrite``, not through shared pages, so hosts
never overwrite each other's data), recording them in its own ``progress.<p>.jsonl``. At the
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

Rerun checks: with ``path`` the store records and verifies a fingerprint of the network
(`kernels.fingerprint`: every layer, parameter and function inside it, by code and closure
values), of the inputs and of the arguments, and a checksum of every tile; see
`kernels.tile_store` for what is refused, what is repaired and what is said. A ``kernel_fn``
holding something that cannot be fingerprinted is refused unless ``fingerprint=`` names it.
Output finiteness is checked tile by tile (a ``FloatingPointError`` names the tile; call the
unbatched ``kernel_fn`` on that tile's inputs to have the layer named).
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import os
import weakref
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kernels import tiling
from kernels.checks import Get, all_none, argument_error, check_examples, parse_get
from kernels.checks import device_count as check_device_count
from kernels.fingerprint import FingerprintError, array_digest, fingerprint as network_fingerprint
from kernels.kernel import Kernel, branch_at
from kernels.tile_store import COLS, PAIRS, ROWS, Output, TileStore, python_version, tile_regions

__all__ = ["batch"]

GET_NAMES = ("nngp", "ntk", "cov1", "cov2")
MASK_NAMES = ("mask1", "mask2")  # a Kernel's masks of positions (masked inputs), rows and columns like cov1, cov2
_TILE_FNS = weakref.WeakKeyDictionary()  # kernel_fn -> {get: (diagonal tile fn, off-diagonal tile fn)}


def batch(kernel_fn: Callable, batch_size: int = 0, device_count: int = -1, store_on_device: Optional[bool] = None,
          path: Optional[str] = None, progress: bool = True, *, process_index: Optional[int] = None,
          process_count: Optional[int] = None, fingerprint: Optional[str] = None) -> Callable:
    """Tiled version of ``kernel_fn``: same signature ``(x1, x2=None, get=None)``, same result.

    Args:
      kernel_fn: a neural-tangents-style kernel function ``kernel_fn(x1, x2, get)``, e.g. the
        third element of a `kernels.stax` network. It must be traceable by ``jax.jit`` with
        ``get`` fixed.
      batch_size: tile side in examples (each tile is ``batch_size x batch_size`` kernel
        entries, i.e. examples ``x1[i*b:(i+1)*b]`` against ``x2[j*b:(j+1)*b]``). ``N1`` and
        ``N2`` need not be multiples of it. ``0`` means one tile of the whole matrix.
      device_count: how many of ``jax.local_devices()`` to spread tiles over; ``-1`` all of
        them, ``0`` the default device only; more than there are uses them all, with a warning.
      store_on_device: return ``jax.Array`` s on the first device (assembled on the host
        first) instead of NumPy arrays; not with ``path``. ``None`` (default): on the device
        without ``path`` (neural-tangents' default), host memmaps with it.
      path: a directory; if given, every requested array is written to ``path/<name>.npy``
        and returned as a read-only ``np.memmap``; the run is resumable and verified on
        reuse (module docstring, `kernels.tile_store`).
      progress: show a ``tqdm`` progress bar over tiles.
      process_index, process_count: this process's share of the tiles (default:
        ``jax.process_index()``, ``jax.process_count()``); see the module docstring.
      fingerprint: with ``path``, a string naming the network (e.g. ``"my-model v3"``) that
        the store records instead of the fingerprint computed from ``kernel_fn``; needed
        when ``kernel_fn`` holds something `kernels.fingerprint` cannot describe. You vouch
        that equal strings mean equal networks.

    Returns:
      ``batched_kernel_fn(x1, x2=None, get=None, *args, **kwargs)`` returning what ``kernel_fn``
      returns, when ``kernel_fn`` takes ``get`` (its third positional parameter is named ``get``, as
      for `kernels.stax` networks and the empirical and Monte Carlo ``kernel_fn``; ``get`` may also
      be a keyword). Any other callable, e.g. ``empirical_ntk_fn(apply_fn)``'s ``ntk_fn(x1, x2,
      params)`` or a ``kernel_fn(x1, x2, key)``, is called as neural-tangents' ``batch`` calls it,
      ``kernel_fn(x1_tile, x2_tile, *args, **kwargs)`` with every argument after ``x1, x2`` passed on
      unchanged; its result (a `Kernel`, an array or a pytree of arrays leading with the tile's
      ``(b1, b2)`` examples) is assembled leaf by leaf, and with ``x2=None`` every tile of ``x1``
      against itself is computed (its trailing axes, e.g. the output-axis pairs of ``trace_axes=()``,
      are not mirrored). Inside a ``jax`` trace (``x1`` or ``x2`` a tracer, e.g. under ``jax.jit``)
      ``kernel_fn`` is called once on the whole inputs: tiles cannot be copied to the host there
      (and ``path`` is refused). Further arguments go to every tile's ``kernel_fn`` call unchanged: e.g. the
      ``params`` of an empirical kernel, ``kernel_fn(x1, x2, get, params)``, or keywords such as
      ``diagonal_spatial``; arrays among them are traced, anything else is fixed (and, with
      ``path``, part of the store's fingerprint, so tiles of other parameters are never reused).
      The result is
      a `Kernel` for ``get=None`` (``nngp``, ``ntk``, ``cov1``, ``cov2`` filled; ``cov2`` is ``None``
      when ``x2`` is, as in neural-tangents), a named tuple
      for a tuple of names, an array for one name; ``(N1, N2, ...)`` for kernels,
      ``(N1, ...)``/``(N2, ...)`` for ``cov1``/``cov2``. For a network ending in branches, a
      list of such results, one per branch, as ``kernel_fn`` returns it.

      ``x1`` may be a `Kernel` (what another network's ``kernel_fn(..., get=None)`` returned; ``x2``
      then ``None``), as neural-tangents' ``batch`` allows: each tile applies ``kernel_fn`` to the
      tile's part of it (its ``nngp``, ``ntk`` rows x columns, ``cov1`` rows, ``cov2`` columns), and
      when the Kernel is of one batch with itself (``x1_is_x2``) only tiles on or above the diagonal.

      ``diagonal_batch=False`` (a keyword of `kernels.stax` kernel functions) is honoured: the tiles
      compute the kernels with ``diagonal_batch=True``, and ``cov1`` (``cov2``) is the tiled ``nngp``
      of ``(x1, None)`` (of ``(x2, None)``), ``(N1, N1, ...)``; with ``path`` its tiles are stored
      under ``path/cov1/`` (``path/cov2/``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise argument_error("batch", "batch_size", "a non-negative int", batch_size)
    if store_on_device and path is not None:
        raise ValueError("batch: store_on_device=True and path are exclusive (a memmap lives on the host)")
    if store_on_device is None:
        store_on_device = path is None
    if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint):
        raise argument_error("batch", "fingerprint", "None or a non-empty string", fingerprint, TypeError)
    if fingerprint is not None and path is None:
        raise argument_error("batch", "fingerprint", "None without path (it names the network to a tile store)",
                             fingerprint)
    explicit = process_index is not None or process_count is not None
    if explicit:
        process_index = 0 if process_index is None else int(process_index)
        process_count = 1 if process_count is None else int(process_count)
    else:
        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"batch: need 0 <= process_index < process_count, got {process_index}, {process_count}")
    if getattr(kernel_fn, "whole_batch", False):
        raise ValueError("batch: kernel_fn concatenates along the batch axis (FanInConcat(axis=0)), so the examples "
                         "of its kernel are not those of x1 and x2 and it cannot be tiled; call kernel_fn itself")
    devices = _devices(device_count)
    tile_fns = _tile_functions(kernel_fn)
    same_settings = dict(batch_size=batch_size, device_count=device_count, store_on_device=store_on_device,
                         progress=progress, process_index=process_index if explicit else None,
                         process_count=process_count if explicit else None, fingerprint=fingerprint)

    takes_get = _takes_get(kernel_fn)

    def batched_kernel_fn(x1, x2=None, *args, **kwargs):
        if _traced(x1, x2):
            if path is not None:
                raise argument_error("batch", "x1", "concrete arrays when path is given (a traced value cannot be "
                                     "written to a tile store)", "a jax tracer", TypeError)
            return kernel_fn(x1, x2, *args, **kwargs)  # inside a trace: one piece, no host copies
        if not takes_get:
            return _pass_through(kernel_fn, batch_size, path, fingerprint, same_settings, devices, x1, x2, args, kwargs)
        get, args = (args[0], args[1:]) if args else (kwargs.pop("get", None), args)
        request = parse_get(get, GET_NAMES, "batch")
        if kwargs.get("diagonal_batch") is not None and not kwargs["diagonal_batch"]:  # False or np.False_
            def batched_in(name):
                return batch(kernel_fn, path=None if path is None else os.path.join(path, name), **same_settings)
            return _with_batch_covariances(batched_kernel_fn, batched_in, request, x1, x2, get, args, kwargs)
        given = x1 if isinstance(x1, Kernel) else None
        inputs = (x1, x2) if given is None and isinstance(x1, (list, tuple)) else None  # several inputs
        if given is not None:
            if kwargs.get("pattern") is not None:
                raise argument_error("batch", "pattern", "None when x1 is a Kernel (graphs are tiled with array "
                                     "inputs; call kernel_fn(kernel, pattern=...) itself)", "graphs")
            x1, x2, args = _kernel_as_examples(given, x2, args, kwargs)
        elif inputs is not None:
            x1, x2, args, spatial_ndim = _inputs_as_examples(x1, x2, args, kwargs)
        else:
            x1, x2, tiled_fn = _batch_first(kernel_fn, x1, x2, kwargs)
            x1 = check_examples("batch", "x1", x1)
            x2 = None if x2 is None else check_examples("batch", "x2", x2)
        symmetric = x2 is None
        plan = tiling.make_plan(x1.shape[0], x1.shape[0] if symmetric else x2.shape[0], int(batch_size), symmetric)
        patterns = _pattern_rows(kwargs.pop("pattern", None), x1, x2)
        if given is not None:  # the tile's part of the Kernel, by the tile's example indices
            f_diag, f_off = _tile_functions_with(_on_kernel_tile(kernel_fn), get, args, kwargs)
        elif inputs is not None:  # the tile's examples of every input, by their indices
            f_diag, f_off = _tile_functions_with(_on_inputs_tile(kernel_fn), get, args, kwargs)
        elif patterns is None:
            f_diag, f_off = tile_fns(get) if not (args or kwargs) and tiled_fn is kernel_fn else \
                _tile_functions_with(tiled_fn, get, args, kwargs)
        else:  # the graphs are per-example data, sliced with the tile's examples
            f_diag, f_off = _pattern_tile_functions(tiled_fn, get, args, kwargs, patterns)
            kwargs = dict(kwargs, pattern=patterns)  # for the store's fingerprint
        if patterns is not None:  # the tile functions take the tile's example indices
            f_diag, f_off = _indexed_tiles(f_diag, f_off, plan, symmetric)
        template = _template(f_diag, f_off, x1, x2, plan)
        outputs = _outputs(template, request, plan, given.spatial_ndim if given is not None else
                           spatial_ndim if inputs is not None else x1.ndim - 2)
        share = plan.share(process_index, process_count)
        if path is None:
            sink = _HostSink(outputs, fill_nan=process_count > 1)
        else:
            manifest = _manifest(kernel_fn, fingerprint, x1, x2, request, plan, outputs)
            if given is not None:  # x1, x2 are the examples' indices; the Kernel is the input
                args = args[1:]
                manifest["kernel_sha256"] = array_digest(*jax.tree_util.tree_leaves(given))
                manifest["kernel_structure"] = str(jax.tree_util.tree_structure(given))
            if inputs is not None:  # x1, x2 are the examples' indices; the inputs come first among args
                args = args[1:]
                manifest["inputs_sha256"] = array_digest(*jax.tree_util.tree_leaves(inputs))
                manifest["inputs_structure"] = str(jax.tree_util.tree_structure(inputs))
            if args or kwargs:
                manifest["arguments_sha256"] = _arguments_fingerprint(args, kwargs)
            sink = TileStore(path, plan, outputs, manifest, process_index, share)
        try:
            _run_tiles(plan, outputs, share, sink, devices, f_diag, f_off, x1, x2, request, progress)
        finally:
            sink.close()
        if not explicit and process_count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("kernels.batch: all tiles written")
        results = sink.results()
        if store_on_device:
            results = {n: jax.device_put(v, devices[0]) for n, v in results.items()}
        return _rebuild(template, request, results)

    batched_kernel_fn.__doc__ = (f"Tiled ({batch_size} x {batch_size} examples) kernel_fn(x1, x2=None, "
                                 f"{'get=None, ' if takes_get else ''}*args, **kwargs); see kernels.batch.")
    batched_kernel_fn.kernel_fn = kernel_fn
    return batched_kernel_fn


# ----------------------------------------------------------------------------- functions without get

def _takes_get(kernel_fn) -> bool:
    """Whether ``kernel_fn`` follows the ``kernel_fn(x1, x2, get, ...)`` convention (a `kernels.stax` ``KernelFn``,
    the empirical and Monte Carlo ``kernel_fn``): its third positional parameter is named ``get``. Any other
    callable (e.g. ``empirical_ntk_fn``'s ``ntk_fn(x1, x2, params)``, a ``kernel_fn(x1, x2, key)``) gets the
    arguments after ``x1, x2`` unchanged. A callable without a readable signature is taken to take ``get``."""
    try:
        parameters = list(inspect.signature(kernel_fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 and positional[2].name == "get"


def _traced(*values) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def _pass_through(kernel_fn, batch_size, path, fingerprint, settings: dict, devices, x1, x2, args: tuple,
                  kwargs: dict):
    """``kernel_fn(x1, x2, *args, **kwargs)`` tiled, for a ``kernel_fn`` that takes no ``get``.

    Its result may be a `Kernel` or any pytree of arrays whose leaves lead with the tile's ``(b1, b2)``
    examples. With ``x2=None`` every tile of ``x1`` against ``x1`` is computed (as neural-tangents' ``batch``
    does): the trailing axes of an arbitrary function's output (e.g. output-axis pairs with
    ``trace_axes=()``) cannot be mirrored safely.
    """
    def call(a, b, _get, *rest, **kw):
        return kernel_fn(a, b, *rest, **kw)
    if isinstance(x1, Kernel):  # a function of a Kernel (e.g. a kernel_fn with get bound by partial)
        x1, x2, args = _kernel_as_examples(x1, x2, args, kwargs)
        call = _on_kernel_tile(call)
    elif isinstance(x1, (list, tuple)):  # several inputs, arrays or Kernels
        x1, x2, args, _ = _inputs_as_examples(x1, x2, args, kwargs)
        call = _on_inputs_tile(call)
    else:
        x1 = check_examples("batch", "x1", x1)
        x2 = None if x2 is None else check_examples("batch", "x2", x2)
    x2 = x1 if x2 is None else x2  # every tile is computed
    plan = tiling.make_plan(x1.shape[0], x2.shape[0], int(batch_size), False)
    whole = _tile_functions_with(call, None, args, kwargs)
    template = _template(*whole, x1, x2, plan)
    if all(isinstance(branch, Kernel) for _, branch in _branches(template)):
        request, f_off, treedef = parse_get(None, GET_NAMES, "batch"), whole[1], None
    else:
        flat, treedef = jax.tree_util.tree_flatten(template)
        request = Get(tuple(f"leaf{i}" for i in range(len(flat))), "tuple")
        _, f_off = _tile_functions_with(lambda *a, **kw: tuple(jax.tree_util.tree_leaves(call(*a, **kw))),
                                        None, args, kwargs)
        template = tuple(flat)
    outputs = _outputs(template, request, plan, 0, mirrored=False)
    process_index, process_count = settings["process_index"], settings["process_count"]
    explicit = process_index is not None
    if not explicit:
        process_index, process_count = jax.process_index(), jax.process_count()
    share = plan.share(process_index, process_count)
    if path is None:
        sink = _HostSink(outputs, fill_nan=process_count > 1)
    else:
        manifest = _manifest(kernel_fn, fingerprint, x1, x2, request, plan, outputs)
        if args or kwargs:
            manifest["arguments_sha256"] = _arguments_fingerprint(args, kwargs)
        sink = TileStore(path, plan, outputs, manifest, process_index, share)
    try:
        _run_tiles(plan, outputs, share, sink, devices, None, f_off, x1, x2, request, settings["progress"])
    finally:
        sink.close()
    if not explicit and process_count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("kernels.batch: all tiles written")
    results = sink.results()
    if settings["store_on_device"]:
        results = {n: jax.device_put(v, devices[0]) for n, v in results.items()}
    if treedef is None:
        return _rebuild(template, request, results)
    return jax.tree_util.tree_unflatten(treedef, [results[n] for n in request.names])


# ----------------------------------------------------------------------------- steps

def _devices(count) -> list:
    local = jax.local_devices()
    count = check_device_count("batch", count)
    return list(local) if count == -1 else [local[0]] if count == 0 else list(local[:count])


def _tile_functions(kernel_fn) -> Callable:
    """``get -> (f_diag(a), f_off(a, b))``, jit-compiled once per ``kernel_fn`` and ``get``.

    Shared by every ``batch(...)`` of the same ``kernel_fn``; the cache does not keep
    ``kernel_fn`` alive.
    """
    try:
        compiled = _TILE_FNS.setdefault(kernel_fn, {})
        kernel_ref = weakref.ref(kernel_fn)
    except TypeError:  # not weak-referenceable
        compiled, kernel_ref = {}, lambda: kernel_fn

    def tile_fns(get):
        key = get if get is None or isinstance(get, str) else tuple(get)
        if key not in compiled:
            compiled[key] = (jax.jit(lambda a: kernel_ref()(a, None, key)),
                             jax.jit(lambda a, b: kernel_ref()(a, b, key)))
        return compiled[key]
    return tile_fns


def _tile_functions_with(kernel_fn, get, args: tuple, kwargs: dict):
    """``(f_diag(a), f_off(a, b))`` calling ``kernel_fn(a, b, get, *args, **kwargs)``, compiled for this call.

    The arrays among ``args``/``kwargs`` are arguments of the compiled functions (parameters
    are not baked in as constants); every other leaf (a flag, a string) is fixed. Extra arguments
    per tile (``f_off(a, b, *extra)``) go to ``kernel_fn`` after ``get``.
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    traced = [isinstance(leaf, (jax.Array, np.ndarray, np.generic)) for leaf in leaves]
    dynamic = [leaf for leaf, t in zip(leaves, traced) if t]

    def call(a, b, values, *extra):
        values = iter(values)
        args, kwargs = jax.tree_util.tree_unflatten(treedef, [next(values) if t else leaf
                                                              for leaf, t in zip(leaves, traced)])
        return kernel_fn(a, b, get, *extra, *args, **kwargs)

    diag = jax.jit(lambda a, values, *extra: call(a, None, values, *extra))
    off = jax.jit(call)
    return (lambda a, *extra: diag(a, dynamic, *extra)), (lambda a, b, *extra: off(a, b, dynamic, *extra))


def _pattern_rows(pattern, x1, x2):
    """``pattern=(pattern1, pattern2)`` of a graph network (`kernels.stax.graph.Aggregate`) as host
    arrays with the examples' leading axes, ``pattern2`` ``None`` when ``x2`` is; ``None`` without one."""
    if pattern is None or (isinstance(pattern, (tuple, list)) and all(p is None for p in pattern)):
        return None
    if not (isinstance(pattern, (tuple, list)) and len(pattern) == 2):
        raise argument_error("batch", "pattern", "a pair (pattern1, pattern2) of the graphs of x1's and x2's examples",
                             type(pattern).__name__, TypeError)
    out = []
    for label, p, x in (("pattern1", pattern[0], x1), ("pattern2", pattern[1], x2)):
        if p is None or x is None:
            out.append(None)
            continue
        if not isinstance(p, (jax.Array, np.ndarray)) or p.ndim == 0 or p.shape[0] != x.shape[0]:
            raise argument_error("batch", "pattern", f"arrays batch first, to be sliced with the tiles: {label} "
                                 f"with leading axis {x.shape[0]}", f"{label} {getattr(p, 'shape', type(p).__name__)}")
        out.append(np.asarray(p))
    if out[0] is None:
        raise argument_error("batch", "pattern", "pattern1 given", "pattern1=None")
    if x2 is not None and out[1] is None:
        raise argument_error("batch", "pattern", "both graphs given when x2 is given", "pattern2=None")
    return out[0], out[1]


def _pattern_tile_functions(kernel_fn, get, args: tuple, kwargs: dict, patterns: tuple):
    """``(f_diag(a, rows), f_off(a, b, rows, cols))``: `_tile_functions_with`'s, with the tile's rows of
    the graphs passed as ``pattern=(pattern1 rows, pattern2 rows)``; ``rows``/``cols`` are the tile's
    example indices (padded rows repeat the last example, as `kernels.tiling.pad_rows` does)."""
    p1, p2 = (jax.numpy.asarray(p) if p is not None else None for p in patterns)
    second = p1 if p2 is None else p2
    diag_call, off_call = _tile_functions_with(
        lambda a, b, get_, pattern_rows, *rest, **kw: kernel_fn(a, b, get_, *rest, pattern=pattern_rows, **kw),
        get, args, kwargs)
    return ((lambda a, rows: diag_call(a, (p1[rows], None))),
            (lambda a, b, rows, cols: off_call(a, b, (p1[rows], second[cols]))))


def _arguments_fingerprint(args: tuple, kwargs: dict) -> str:
    try:
        return network_fingerprint((args, kwargs))
    except FingerprintError as error:
        raise TypeError(f"batch: the tile store needs a fingerprint of the arguments passed after get, and "
                        f"{error}") from None


def _indexed_tiles(f_diag, f_off, plan, symmetric: bool):
    """Tile functions of ``(a, i)``/``(a, b, i, j)`` as those of ``(a)``/``(a, b)`` with attributes saying so."""
    def rows(i, b, n):
        return np.minimum(np.arange(i * b, (i + 1) * b), n - 1)  # padded rows repeat the last example
    n2 = plan.n1 if symmetric else plan.n2

    def diag(a, i=0):
        return f_diag(a, rows(i, plan.b1, plan.n1))

    def off(a, b, i=0, j=0):
        return f_off(a, b, rows(i, plan.b1, plan.n1), rows(j, plan.b2, n2))
    diag.indexed = off.indexed = True
    return diag, off


def _template(f_diag, f_off, x1, x2, plan):
    """The shapes and dtypes ``kernel_fn`` returns for one tile (no computation)."""
    tile1 = jax.ShapeDtypeStruct((plan.b1,) + x1.shape[1:], x1.dtype)
    if x2 is None:
        return jax.eval_shape(f_diag, tile1)
    return jax.eval_shape(f_off, tile1, jax.ShapeDtypeStruct((plan.b2,) + x2.shape[1:], x2.dtype))


def _outputs(template, request, plan, spatial_ndim: int, mirrored: bool = True) -> dict:
    """name -> `Output` for every array the tiles fill (``mirrored=False``: every tile is computed, so how
    the trailing axes would mirror is not asked)."""
    outputs = {}
    for path, branch in _branches(template):
        for name, leaf in _one_as_dict(branch, request).items():
            key = _key(path, name)
            kind = COLS if name in ("cov2", "mask2") else ROWS if name in ("cov1", "mask1") else PAIRS
            lead = (plan.n1, plan.n2) if kind == PAIRS else (plan.n1,) if kind == ROWS else (plan.n2,)
            expect = (plan.b1, plan.b2) if kind == PAIRS else (plan.b1,) if kind == ROWS else (plan.b2,)
            if tuple(leaf.shape[:len(lead)]) != expect:
                raise ValueError(f"batch: kernel_fn's {key!r} has shape {leaf.shape} for a {plan.b1} x {plan.b2} "
                                 f"tile; expected leading axes {expect}")
            tail = tuple(leaf.shape[len(lead):])
            full = _keeps_pairs(len(tail), spatial_ndim, getattr(branch, "full", None)) \
                if kind == PAIRS and mirrored else False
            outputs[key] = Output(kind, lead + tail, np.dtype(leaf.dtype), full)
    return outputs


def _keeps_pairs(tail_ndim: int, spatial_ndim: int, full: Optional[bool]) -> bool:
    """Whether a kernel's trailing axes are position pairs (how `kernels.tiling` mirrors it).

    Read from the `Kernel`'s ``full`` flag when known, else from their number: ``2 d``
    trailing axes for ``d`` input spatial axes are pairs, ``d`` are positions only, none is
    a flat output.
    """
    if tail_ndim and full is None:
        if spatial_ndim > 0 and tail_ndim == 2 * spatial_ndim:
            full = True
        elif tail_ndim == spatial_ndim:
            full = False
        else:
            raise ValueError(f"batch: cannot tell how to mirror a kernel with {tail_ndim} trailing axes "
                             f"for inputs with {spatial_ndim} spatial axes; pass x2 to compute every tile")
    return bool(full) and tail_ndim > 0


def _manifest(kernel_fn, given: Optional[str], x1, x2, request, plan, outputs) -> dict:
    """What made a tile store's tiles (`kernels.tile_store`)."""
    if given is not None:
        network, source = array_digest(np.frombuffer(("given:" + given).encode(), np.uint8)), "given"
    else:
        try:
            network, source = network_fingerprint(kernel_fn), "code"
        except FingerprintError as error:
            raise TypeError(f"batch: the tile store needs a fingerprint of kernel_fn, and {error}; pass "
                            "fingerprint='...' to batch, a string naming this network and its version that "
                            "you vouch for") from None
    return dict(network_sha256=network, network_source=source,
                network_name=given if given is not None else getattr(kernel_fn, "name", None) or repr(kernel_fn),
                python=python_version(),
                x1_shape=list(x1.shape), x2_shape=None if x2 is None else list(x2.shape),
                dtype=str(x1.dtype), x2_dtype=None if x2 is None else str(x2.dtype),
                inputs_sha256=array_digest(x1, x2), tile=[plan.b1, plan.b2], get=request.json,
                outputs={n: [list(o.shape), str(o.dtype)] for n, o in outputs.items()})


def _run_tiles(plan, outputs, share, sink, devices, f_diag, f_off, x1, x2, request, progress: bool):
    """Computes this process's unfinished tiles, ``2 x devices`` in flight, into ``sink``."""
    symmetric = x2 is None
    x1p = tiling.pad_rows(x1, plan.rows * plan.b1)
    x2p = x1p if symmetric else tiling.pad_rows(x2, plan.cols * plan.b2)
    todo = [(int(i), int(j)) for i, j in share if not sink.is_done((int(i), int(j)))]

    def finish(i, j, out):
        arrays = {n: np.asarray(v) for n, v in _as_dict(out, request).items()}
        for region in tile_regions(plan, outputs, i, j):
            value = arrays[region.name]
            output = outputs[region.name]
            if output.kind == PAIRS:
                # The tile's own block; its mirror is the transposed block of rows c0.., columns r0...
                value = value[:region.cn, :region.rn] if region.mirrored else value[:region.rn, :region.cn]
            else:
                value = value[:region.rn]
            if not np.isfinite(value).all():
                r0, rn, c0, cn = plan.extent(i, j)
                raise FloatingPointError(
                    f"batch: {region.name!r} of tile ({i}, {j}) (x1[{r0}:{r0 + rn}] x "
                    f"{'x1' if symmetric else 'x2'}[{c0}:{c0 + cn}]) contains NaN or infinite values; "
                    "call kernel_fn on these inputs to have the layer named")
            if region.mirrored:
                value = np.transpose(value, tiling.mirror_axes(value.ndim - 2, output.full))
            elif output.kind == PAIRS and symmetric and i == j:
                value = tiling.symmetrize(value, output.full)
            sink.put(region, np.ascontiguousarray(value, dtype=output.dtype))
        sink.mark_done((i, j))

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(share), initial=len(share) - len(todo), unit="tile", desc="kernel tiles")
    pending = collections.deque()
    cached_rows = {}
    try:
        for k, (i, j) in enumerate(todo):
            device = devices[k % len(devices)]
            if cached_rows.get(device, (None,))[0] != i:
                cached_rows[device] = (i, jax.device_put(x1p[i * plan.b1:(i + 1) * plan.b1], device))
            a = cached_rows[device][1]
            where = (i, j) if getattr(f_off, "indexed", False) else ()  # tiles of graphs slice the patterns
            if symmetric and i == j:
                out = f_diag(a, *where[:1])
            else:
                out = f_off(a, jax.device_put(x2p[j * plan.b2:(j + 1) * plan.b2], device), *where)
            pending.append((i, j, out))
            if len(pending) >= 2 * len(devices):
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


# ----------------------------------------------------------------------------- Kernel inputs, full-batch covariances

def _kernel_as_examples(k: Kernel, x2, args: tuple, kwargs: dict):
    """``(x1, x2, args)`` standing for a `Kernel` input: ``x1``/``x2`` the indices ``(N, 1)`` of its
    examples (``x2`` ``None`` when it is of one batch with itself), which the tiles slice as they
    slice examples; the Kernel goes first among the arguments of the tile functions."""
    if x2 is not None:
        raise argument_error("batch", "x2", "None when x1 is a Kernel (its pairs of examples are already chosen)",
                             type(x2).__name__)
    if "pattern" in kwargs:
        raise argument_error("batch", "pattern", "absent when x1 is a Kernel (its graphs were applied already)",
                             "a pattern")
    if not k.diagonal_batch:
        raise argument_error("batch", "x1", "a Kernel with diagonal_batch=True (neural-tangents does not batch "
                             "full-batch covariances either)", "a Kernel with diagonal_batch=False")
    if k.nngp is None or k.cov1 is None:
        raise argument_error("batch", "x1", "a Kernel with nngp and cov1 (kernel_fn(..., get=None) returns one)",
                             "a Kernel without them")
    n1, n2 = k.nngp.shape[:2]
    rows = np.arange(n1, dtype=np.int32)[:, None]
    cols = None if k.x1_is_x2 else np.arange(n2, dtype=np.int32)[:, None]
    return rows, cols, (k,) + tuple(args)


def _inputs_as_examples(x1, x2, args: tuple, kwargs: dict):
    """``(x1, x2, args, spatial_ndim)`` standing for several inputs (a list or tuple, possibly nested,
    of arrays or of `Kernel`s, for a network that starts with ``parallel``): ``x1``/``x2`` the indices
    ``(N, 1)`` of their examples, as `_kernel_as_examples`; the inputs ``(x1, x2)`` go first among the
    arguments of the tile functions; ``spatial_ndim`` the inputs' spatial axes (one number for all)."""
    if "pattern" in kwargs:
        raise argument_error("batch", "pattern", "absent with several inputs", "a pattern")
    leaves = jax.tree_util.tree_leaves(x1, is_leaf=_is_kernel)
    if not leaves:
        raise argument_error("batch", "x1", "a list or tuple of inputs with at least one array", "no arrays")
    if all_none(x2):
        x2 = None
    kernels = [e for e in leaves if isinstance(e, Kernel)]
    if kernels and (len(kernels) != len(leaves) or x2 is not None):
        raise argument_error("batch", "x1", "a list of arrays (x2 None or arrays alike) or a list of Kernels "
                             "(x2 None)", "a mixture")
    if kernels:
        for k in kernels:
            _kernel_as_examples(k, None, (), kwargs)  # the same checks as for one Kernel
        n1, n2 = kernels[0].nngp.shape[:2]
        same = all(k.x1_is_x2 for k in kernels)
        spatial = {k.spatial_ndim for k in kernels}
    else:
        checked = [check_examples("batch", "x1", a) for a in leaves]
        n1 = checked[0].shape[0]
        n2 = n1 if x2 is None else jax.tree_util.tree_leaves(x2)[0].shape[0]
        same = x2 is None
        spatial = {a.ndim - 2 for a in checked}
    rows = np.arange(n1, dtype=np.int32)[:, None]
    cols = None if same else np.arange(n2, dtype=np.int32)[:, None]
    return rows, cols, ((x1, x2),) + tuple(args), (spatial.pop() if len(spatial) == 1 else -1)


def _on_inputs_tile(kernel_fn):
    """``f(rows, cols, get, (x1, x2), ...)``: ``kernel_fn`` applied to examples ``rows`` x ``cols``
    (index arrays ``(b, 1)``; ``cols`` ``None``: ``rows`` with themselves) of several inputs."""
    on_kernel = _on_kernel_tile(lambda k, _x2, _get: k)

    def on_tile(rows, cols, get, inputs, *args, **kwargs):
        x1, x2 = inputs
        if any(map(_is_kernel, jax.tree_util.tree_leaves(x1, is_leaf=_is_kernel))):
            part = jax.tree_util.tree_map(lambda k: on_kernel(rows, cols, None, k), x1, is_leaf=_is_kernel)
            return kernel_fn(part, None, get, *args, **kwargs)
        a = jax.tree_util.tree_map(lambda e: e[rows[:, 0]], x1)
        b = None if cols is None else jax.tree_util.tree_map(lambda e: e[cols[:, 0]], x1 if x2 is None else x2)
        return kernel_fn(a, b, get, *args, **kwargs)
    return on_tile


def _is_kernel(x) -> bool:
    return isinstance(x, Kernel)


def _batch_first(kernel_fn, x1, x2, kwargs: dict):
    """``(x1, x2, tiled_fn)``: the inputs with their examples on the leading axis, which the tiles slice, and
    the ``kernel_fn`` of such tiles. A network that reads its examples along another axis (its first layer's
    ``batch_axis``, or ``kernel_fn``'s keyword) gets each tile moved back to it (neural-tangents' ``batch``
    slices axis 0 whatever the layout)."""
    b = kwargs.get("batch_axis")
    b = (getattr(kernel_fn, "input_axes", None) or (0,))[0] if b is None else b
    ndim = np.ndim(x1)
    if not isinstance(b, (int, np.integer)) or not -ndim <= b < ndim or b % ndim == 0:
        return x1, x2, kernel_fn  # batch first already, or kernel_fn names the bad axis
    b = int(b) % ndim
    back = lambda x: None if x is None else jnp.moveaxis(x, 0, b)
    first = lambda x: None if x is None else np.moveaxis(np.asarray(x), b, 0)
    return first(x1), first(x2), lambda a, c, *rest, **kw: kernel_fn(back(a), back(c), *rest, **kw)


def _on_kernel_tile(kernel_fn):
    """``f(rows, cols, get, kernel, ...)``: ``kernel_fn`` applied to the part of ``kernel`` that examples
    ``rows`` x ``cols`` (index arrays ``(b, 1)``; ``cols`` ``None``: ``rows`` with themselves) make."""
    def on_tile(rows, cols, get, k, *args, **kwargs):
        r = rows[:, 0]
        same = cols is None
        c = r if same else cols[:, 0]
        pairs = lambda a: None if a is None else a[r][:, c]
        cov1 = k.cov1[r]
        cov2 = cov1 if same else k.cov2_or_cov1[c]
        mask1 = None if k.mask1 is None else k.mask1[r]
        mask2 = None if same or k.mask1 is None else k.mask2_or_mask1[c]
        tile = k.replace(nngp=pairs(k.nngp), ntk=pairs(k.ntk), cov1=cov1, cov2=cov2, mask1=mask1, mask2=mask2,
                         x1_is_x2=same)
        return kernel_fn(tile, None, get, *args, **kwargs)
    return on_tile


def _with_batch_covariances(batched, batched_in, request, x1, x2, get, args: tuple, kwargs: dict):
    """``batched(x1, x2, get, *args, diagonal_batch=False, **kwargs)``: tiles computed with
    ``diagonal_batch=True``, and ``cov1`` (``cov2``) the tiled ``nngp`` of ``(x1, None)`` (``(x2, None)``):
    the covariances of every pair of examples of one batch. ``batched_in(name)`` is the same tiling
    storing under ``path/name``."""
    if isinstance(x1, Kernel):
        raise argument_error("batch", "diagonal_batch", "True or absent when x1 is a Kernel (neural-tangents "
                             "does not batch full-batch covariances either)", False)
    kwargs = _tiles_diagonal_batch(batched.kernel_fn, kwargs)
    pattern = kwargs.pop("pattern", None)
    p1, p2 = (None, None) if pattern is None else pattern
    with_pattern = lambda p: {} if p is None else {"pattern": (p, None)}
    others = tuple(n for n in request.names if n not in ("cov1", "cov2"))
    main, covs = None, {}
    if request.form == "all" or others:
        main = batched(x1, x2, None if request.form == "all" else others, *args, **kwargs,
                       **({} if pattern is None else {"pattern": pattern}))
    if request.form == "all" and x2 is None:  # cov1 is the nngp itself
        covs["cov1"] = _map_results(lambda path, k: k.nngp, main)
    elif "cov1" in request.names or "cov2" in request.names or request.form == "all":
        covs["cov1"] = batched_in("cov1")(x1, None, "nngp", *args, **kwargs, **with_pattern(p1))
        if x2 is not None:  # else cov2 is None, as neural-tangents returns it
            covs["cov2"] = batched_in("cov2")(x2, None, "nngp", *args, **kwargs, **with_pattern(p2))

    def assemble(path, k):
        own = {n: branch_at(covs[n], path) if n in covs else None for n in ("cov1", "cov2")}
        if request.form == "all":
            return k.replace(cov1=own["cov1"], cov2=own["cov2"], diagonal_batch=False)
        values = dict(zip(others, k)) if k is not None else {}
        values.update(own)
        return request.pack(values)
    if main is None:  # only covariances asked for: their structure
        return _map_results(lambda path, _: assemble(path, None), covs["cov1"])
    return _map_results(assemble, main)


def _tiles_diagonal_batch(kernel_fn, kwargs: dict) -> dict:
    """``kwargs`` for tiles computed with ``diagonal_batch=True``: without the keyword when ``kernel_fn`` names it
    (its default then; the tile functions compiled for ``kernel_fn`` alone are reused), else passing it on, so
    that a ``kernel_fn`` that does not take it refuses it by name."""
    kwargs = {k: v for k, v in kwargs.items() if k != "diagonal_batch"}
    try:
        parameter = inspect.signature(kernel_fn).parameters.get("diagonal_batch")
    except (TypeError, ValueError):
        parameter = None
    if parameter is not None and parameter.default in (None, True):
        return kwargs
    return dict(kwargs, diagonal_batch=True)


def _map_results(fn, out, path: tuple = ()):
    """``fn(path, result)`` for each branch of a kernel_fn result (nested lists for branches)."""
    if isinstance(out, list):
        return [_map_results(fn, o, path + (i,)) for i, o in enumerate(out)]
    return fn(path, out)


# ----------------------------------------------------------------------------- helpers

def _branches(out, path: tuple = ()) -> list:
    """``[(path, result), ...]``: a kernel_fn result ending in branches is a (nested) list of
    results, one per branch, as neural-tangents returns it; any other result is one branch, ``()``."""
    if isinstance(out, list):
        return [item for i, o in enumerate(out) for item in _branches(o, path + (i,))]
    return [(path, out)]


def _key(path: tuple, name: str) -> str:
    """How an array is known (and its file named): ``"nngp"``, or ``"branch1.0.nngp"`` in a branch."""
    return f"branch{'.'.join(map(str, path))}.{name}" if path else name


def _as_dict(out, request) -> dict:
    """The arrays of one kernel_fn result by `_key` (absent fields left out)."""
    return {_key(path, name): a for path, branch in _branches(out) for name, a in _one_as_dict(branch, request).items()}


def _one_as_dict(out, request) -> dict:
    """The arrays of one branch's result, by name (absent fields left out)."""
    if request.form == "all":  # a Kernel of masked inputs carries its masks, tiled as cov1 and cov2 are
        values = {n: getattr(out, n, None) for n in GET_NAMES + MASK_NAMES}
    elif request.form == "one":
        values = {request.names[0]: out}
    else:
        values = dict(zip(request.names, out))
    return {n: a for n, a in values.items() if a is not None}  # cov2 is None for x2=None


def _rebuild(template, request, arrays: dict, path: tuple = ()):
    """The result ``kernel_fn`` returns, shaped as ``template``, holding ``arrays`` (by `_key`)."""
    if isinstance(template, list):
        return [_rebuild(t, request, arrays, path + (i,)) for i, t in enumerate(template)]
    arrays = {n: arrays[_key(path, n)] for n in GET_NAMES + MASK_NAMES if _key(path, n) in arrays}
    if request.form == "all":
        fields = {n: arrays.get(n) for n in GET_NAMES + MASK_NAMES if hasattr(template, n)}
        if hasattr(template, "replace"):
            return template.replace(**fields)
        return dataclasses.replace(template, **fields)
    if request.form == "one":
        return arrays.get(request.names[0])
    return type(template)(*(arrays.get(n) for n in request.names))


class _HostSink:
    """Finished tiles into NumPy arrays in host memory."""

    def __init__(self, outputs: dict, fill_nan: bool):
        self.outputs = outputs
        self.arrays = {n: (np.full(o.shape, np.nan, o.dtype) if fill_nan else np.empty(o.shape, o.dtype))
                       for n, o in outputs.items()}

    def is_done(self, tile):
        return False

    def put(self, region, block):
        if self.outputs[region.name].kind == PAIRS:
            self.arrays[region.name][region.r0:region.r0 + region.rn, region.c0:region.c0 + region.cn] = block
        else:
            self.arrays[region.name][region.r0:region.r0 + region.rn] = block

    def mark_done(self, tile):
        pass

    def close(self):
        pass

    def results(self):
        return self.arrays
