"""Many processes, one kernel: `compute_kernel`, `regress` and ``widekit kernel``.

A network written as a JSON spec (`kernels.spec`) and inputs in an ``.npz`` file give a kernel
matrix computed tile by tile by `kernels.batch` into a verified, resumable tile store, by one
process or many, and optionally kernel regression on it by `theory.large.kernel_regression`
(preconditioned conjugate gradients streaming that store), without the ``N x N`` matrix in
memory.

Layout of ``OUT/``:

* ``kernel-<get>/`` (``x2`` absent: ``K(x1, x1)``, only tiles on and above the diagonal are
  computed) or ``cross-<get>/`` (``K(x1, x2)``), ``<get>`` the requested names joined by ``+``
  (``kernel-nngp+ntk``): the `kernels.batch` tile store, ``nngp.npy``, ``ntk.npy`` (load with
  ``np.load(..., mmap_mode="r")``), ``batch.json`` and ``progress.<p>.jsonl``;
* with regression on kernel ``G``: ``cg-G.npz`` (the CG iterate, resumable) and
  ``regression-G.npz`` (``predictions``, ``residual``, ``iterations``). The regression streams
  the train kernel from ``kernel-G/``: requested alone (``get="nngp"``) that is the store the
  kernel job fills, so the kernel is computed once; requested with another name it is a
  second store, computed by the regression.

How the work is split (`kernels.batch`, "Multi-host"): tiles are numbered in one fixed order
and process ``p`` of ``P`` computes tiles ``t`` with ``t % P == p``, writing them into the
shared files. ``P`` and ``p`` come from ``jax.distributed`` (after
``jax.distributed.initialize()``; the processes meet at a barrier at the end, and every one
returns the whole matrix), or are given explicitly (a scheduler's job array without
``jax.distributed``; no barrier: the matrix is complete once every share has run). A rerun
with any number of processes verifies the recorded tiles and computes only those missing or
damaged, so a killed process's tiles are redone by the next run. The result does not depend
on how the work was split: every tile is computed by the same compiled function on the same
padded inputs, so the files are bit for bit those of a single process (tested).
"""
import json
import os
import sys
from typing import NamedTuple

import jax
import numpy as np

from kernels import batch
from kernels.checks import argument_error, check_examples, parse_get
from kernels.files import atomic_write
from kernels.spec import network_from_spec

__all__ = ["compute_kernel", "regress", "kernel_folder", "load_data", "KernelJob", "NAMES"]

NAMES = ("nngp", "ntk")
DEFAULT_BATCH_SIZE = 256


class KernelJob(NamedTuple):
    """What `compute_kernel` returns.

    Attributes:
      folder: the tile store (``OUT/kernel-<get>`` or ``OUT/cross-<get>``).
      arrays: name -> read-only ``np.memmap`` ``(N1, N2, ...)`` of ``folder/<name>.npy``; with an
        explicit share of ``process_count > 1`` only that share's tiles (and those finished
        before) are filled.
    """

    folder: str
    arrays: dict


def kernel_folder(out, get, cross=False):
    """``out/kernel-<names joined by +>`` (``cross-...`` for ``K(x1, x2)``): where the tiles go."""
    names = parse_get(get, NAMES, "kernel_folder").names
    return os.path.join(os.fspath(out), f"{'cross' if cross else 'kernel'}-{'+'.join(names)}")


def compute_kernel(spec, x1, x2=None, get=NAMES, out=None, batch_size=DEFAULT_BATCH_SIZE, process_index=None,
                   process_count=None, progress=True):
    """The kernel of the network ``spec`` on ``x1`` (and ``x2``), tile by tile into ``out``.

    Args:
      spec: the network: a JSON spec (`kernels.spec.network_from_spec`: string, list or
        ``.json`` path) or a `kernels.stax` layer ``(init_fn, apply_fn, kernel_fn)``.
      x1: ``(N1, ...)`` inputs; x2: ``(N2, ...)`` or None (``K(x1, x1)``, upper triangle only).
        float64 inputs need ``jax_enable_x64`` (the kernel is computed in the input dtype).
      get: "nngp", "ntk" or a tuple of them.
      out: the output folder (module docstring); required.
      batch_size: tile side in examples (``0``: one tile); each tile must take much longer
        than the few tens of ms its ``fsync`` costs.
      process_index, process_count: this process's share of the tiles; default that of
        ``jax.distributed`` (``jax.process_index()``, ``jax.process_count()``).
      progress: a progress bar over tiles.

    Returns:
      `KernelJob` (folder, arrays).
    """
    where = "compute_kernel"
    kernel_fn = _kernel_fn(where, spec)
    get = _one_or_tuple(where, get)
    x1 = _inputs(where, "x1", x1)
    x2 = None if x2 is None else _inputs(where, "x2", x2)
    if out is None or not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise argument_error(where, "out", "a folder path", out, TypeError)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise argument_error(where, "batch_size", "a non-negative int (0: one tile)", batch_size, TypeError)
    folder = kernel_folder(out, get, cross=x2 is not None)
    batched = batch(kernel_fn, int(batch_size), path=folder, progress=progress, process_index=process_index,
                    process_count=process_count)
    result = batched(x1, x2, get)
    arrays = {get: result} if isinstance(get, str) else dict(result._asdict())
    return KernelJob(folder, arrays)


def regress(spec, x_train, y_train, x_test=None, get="nngp", out=None, batch_size=DEFAULT_BATCH_SIZE,
            diag_reg=0.0, tol=1e-8, max_iterations=1000, n_centers=None, progress=True):
    """Kernel regression (GP posterior mean at ``t = inf``) by `theory.large.kernel_regression`,
    method ``"cg"``, with its train-kernel store in ``out/kernel-<get>/``.

    Its tiles are ``batch_size`` on a side, as `compute_kernel`'s, so after
    ``compute_kernel(spec, x_train, get=get, out=out, batch_size=batch_size)`` the kernel is
    streamed, not recomputed. Under ``jax.distributed`` the missing tiles are split as in
    `compute_kernel`; every process then runs the same CG (deterministic, so all agree) and
    process 0 writes ``out/regression-<get>.npz``.

    Args:
      spec, batch_size, out: as `compute_kernel`.
      x_train: ``(N, ...)``; y_train: ``(N,)`` or ``(N, C)``; x_test: ``(M, ...)`` or None
        (predictions at the training inputs).
      get: "nngp" or "ntk".
      diag_reg, tol, max_iterations: as `theory.large.kernel_regression`.
      n_centers: rank of the Nyström preconditioner (default ``min(N, 500)``; an ``N x rank``
        float64 factor is held in memory; 0: no preconditioner).
      progress: progress bars.

    Returns:
      `theory.large.Regression` (predictions, residual, iterations).
    """
    from theory.large import DEFAULT_PRECONDITIONER_RANK, kernel_regression  # here: a kernel-only job
    # need not import theory and SciPy

    where = "regress"
    kernel_fn = _kernel_fn(where, spec)
    if not (isinstance(get, str) and get in NAMES):
        raise argument_error(where, "get", f"one of {NAMES}", get)
    x_train = _inputs(where, "x_train", x_train)
    if out is None or not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise argument_error(where, "out", "a folder path", out, TypeError)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise argument_error(where, "batch_size", "a non-negative int (0: one tile)", batch_size, TypeError)
    n = x_train.shape[0]
    side = n if batch_size == 0 else min(int(batch_size), n)
    if n_centers is None:  # kernel_regression's default would follow the memory_bytes set below
        n_centers = min(n, DEFAULT_PRECONDITIONER_RANK)
    # kernel_regression's store has tiles of `rows = memory_bytes // (24 N)` examples: ask for `side`.
    result = kernel_regression(kernel_fn, x_train, y_train, x_test, get=get, diag_reg=diag_reg, method="cg",
                               n_centers=n_centers, tol=tol, path=os.fspath(out), max_iterations=max_iterations,
                               memory_bytes=3 * 8 * n * side, progress=progress)
    if jax.process_index() == 0:
        atomic_write(os.path.join(os.fspath(out), f"regression-{get}.npz"),
                     lambda f: np.savez(f, predictions=result.predictions, residual=result.residual,
                                        iterations=result.iterations))
    return result


def load_data(path, x_key="x", x2_key=None, y_key=None, test_key=None):
    """Arrays of an ``.npz`` file by key: ``(x, x2, y, x_test)``, None where no key is given.

    Refuses a missing key naming the file and the keys it holds.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            keys = list(data.keys())
            found = []
            for option, key in (("--x-key", x_key), ("--x2-key", x2_key), ("--y-key", y_key),
                                ("--test-key", test_key)):
                if key is not None and key not in keys:
                    raise ValueError(f"{option} {key}: {os.fspath(path)} holds no array {key!r}; it holds "
                                     f"{', '.join(keys) or 'nothing'}")
                found.append(None if key is None else np.asarray(data[key]))
    except OSError as error:
        raise ValueError(f"--data {os.fspath(path)}: cannot be read ({error.strerror or error})") from None
    return tuple(found)


# ----------------------------------------------------------------------------- checks

def _kernel_fn(where, spec):
    if isinstance(spec, tuple) and len(spec) == 3 and all(callable(f) for f in spec):
        return spec[2]
    if isinstance(spec, (str, bytes, list, os.PathLike)):
        return network_from_spec(spec)[2]
    raise argument_error(where, "spec", "a JSON spec (string, list or .json path) or a stax layer "
                         "(init_fn, apply_fn, kernel_fn)", type(spec).__name__, TypeError)


def _one_or_tuple(where, get):
    """``get`` as one name (a string) or a tuple of names: one name is always stored as a string,
    so that `regress` finds the store `compute_kernel` filled."""
    names = parse_get(get, NAMES, where).names
    return names[0] if len(names) == 1 else tuple(names)


def _inputs(where, label, x):
    x = check_examples(where, label, x)
    if x.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise argument_error(where, label, "float32, or float64 with jax_enable_x64 on (else JAX would "
                             "compute in float32)", "float64 inputs with jax_enable_x64 off", TypeError)
    return x


# ----------------------------------------------------------------------------- command line

def add_arguments(parser):
    """The options of ``widekit kernel`` (module docstring of `experiments.__main__`)."""
    parser.add_argument("--network", required=True, metavar="SPEC.json", help="the network as a JSON spec")
    parser.add_argument("--data", required=True, metavar="DATA.npz", help="inputs (and targets) by key")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder, shared by all processes")
    parser.add_argument("--get", default="nngp,ntk", help="kernels to compute: nngp, ntk or nngp,ntk")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B",
                        help=f"tile side in examples (default {DEFAULT_BATCH_SIZE}; 0: one tile)")
    parser.add_argument("--x-key", default="x", metavar="KEY", help="inputs x1 in DATA.npz (default x)")
    parser.add_argument("--x2-key", metavar="KEY", help="inputs x2: compute K(x1, x2) instead of K(x1, x1)")
    parser.add_argument("--regression", choices=NAMES, metavar="KERNEL",
                        help="then kernel regression with this kernel (nngp or ntk) by CG")
    parser.add_argument("--y-key", metavar="KEY", help="with --regression: the targets (default y)")
    parser.add_argument("--test-key", metavar="KEY",
                        help="with --regression: test inputs (default: the training inputs)")
    parser.add_argument("--diag-reg", type=float, metavar="R",
                        help="with --regression: ridge R trace(K)/N (default 0)")
    parser.add_argument("--tol", type=float, metavar="T", help="with --regression: CG relative residual (default 1e-8)")
    parser.add_argument("--rank", type=int, metavar="R",
                        help="with --regression: Nystrom preconditioner rank (default min(N, 500))")
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
    parser.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: process count")
    parser.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process's id")
    parser.add_argument("--process-index", type=int, metavar="I",
                        help="without --distributed: compute share I of --process-count (a job array)")
    parser.add_argument("--process-count", type=int, metavar="N", help="without --distributed: number of shares")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args):
    """``widekit kernel``: returns the exit status (2 for refused options, naming them)."""
    problem = _check_options(args)
    if problem:
        print(f"widekit kernel: {problem}", file=sys.stderr)
        return 2
    if args.distributed:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    jax.config.update("jax_enable_x64", True)  # the kernel is computed in the data's dtype, float64 included
    try:
        layer = network_from_spec(args.network)
        x, x2, y, x_test = load_data(args.data, args.x_key, args.x2_key,
                                     (args.y_key or "y") if args.regression else None, args.test_key)
    except (ValueError, TypeError) as error:
        print(f"widekit kernel: {error}", file=sys.stderr)
        return 2
    get = tuple(name.strip() for name in args.get.split(","))
    try:
        _run(args, layer, x, x2, y, x_test, get)
    except (ValueError, TypeError) as error:  # e.g. a folder holding another run's tiles: named, no traceback
        print(f"widekit kernel: {error}", file=sys.stderr)
        return 1
    return 0


def _run(args, layer, x, x2, y, x_test, get):
    """The kernel, then the regression if asked; process 0 says where they are."""
    job = compute_kernel(layer, x, x2, get, args.out, args.batch_size, args.process_index, args.process_count,
                         progress=not args.no_progress)
    explicit_share = args.process_count is not None and args.process_count > 1
    if jax.process_index() == 0:
        for name, array in job.arrays.items():
            print(f"{name} {array.shape} {array.dtype}: {os.path.join(job.folder, name + '.npy')}"
                  + (f" (share {args.process_index} of {args.process_count})" if explicit_share else ""))
    if explicit_share:
        print(f"widekit kernel: share {args.process_index} of {args.process_count} done; the kernel is complete "
              "once every share has run (the same command without --process-index verifies it and computes "
              "any missing tile)", file=sys.stderr)
    if args.regression:
        result = regress(layer, x, y, x_test, args.regression, args.out, args.batch_size,
                         0.0 if args.diag_reg is None else args.diag_reg, 1e-8 if args.tol is None else args.tol,
                         n_centers=args.rank, progress=not args.no_progress)
        if jax.process_index() == 0:
            print(f"regression ({args.regression}, CG): {result.predictions.shape} predictions, residual "
                  f"{result.residual:.2e} after {result.iterations} iterations: "
                  f"{os.path.join(args.out, f'regression-{args.regression}.npz')}")


def _check_options(args):
    """What is wrong with the options, before anything is computed; None if nothing."""
    try:
        parse_get(tuple(name.strip() for name in args.get.split(",")), NAMES, "--get")
    except (ValueError, TypeError):
        return f"--get {args.get}: expected names from {', '.join(NAMES)} separated by commas"
    if args.batch_size < 0:
        return f"--batch-size {args.batch_size}: expected a non-negative integer (0: one tile)"
    given = [f"--{o}" for o in ("coordinator", "num-processes", "process-id")
             if getattr(args, o.replace("-", "_")) is not None]
    if given and not args.distributed:
        return f"{', '.join(given)} configure jax.distributed: add --distributed (or leave them out)"
    share = (args.process_index, args.process_count)
    if any(v is not None for v in share):
        if args.distributed:
            return ("--process-index/--process-count split the work without jax.distributed; with --distributed "
                    "the split comes from jax.process_index() and jax.process_count()")
        if None in share or not 0 <= share[0] < share[1]:
            return f"--process-index I --process-count N need 0 <= I < N; received {share[0]}, {share[1]}"
        if args.regression and share[1] > 1:
            return ("--regression needs the whole kernel: run it once after every share has finished "
                    "(without --process-index/--process-count)")
    if args.regression and args.x2_key:
        return "--regression works on K(x, x): leave out --x2-key (test inputs go in --test-key)"
    unused = [f"--{o}" for o in ("y-key", "test-key", "diag-reg", "tol", "rank") if getattr(args, o.replace("-", "_")) is not None]
    if unused and not args.regression:
        return f"{', '.join(unused)} configure the regression: add --regression KERNEL (or leave them out)"
    return None
