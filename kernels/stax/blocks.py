"""Block-by-block evaluation of a network's kernel: bounded memory, symmetry, cache reuse.

An entry ``K(x, x')`` needs, besides the pair's own covariances, each input's covariance
with itself at the input of every layer (its *self covariance*: what an activation's dual
map normalizes by, what pooling and attention mix). Evaluating all ``N1 x N2`` pairs at once
holds every pair's position covariances together (for Myrtle-5 on 24 images of 32x32, one
44 GB buffer) and computes each self covariance next to the pairs. Here the matrix is
computed in two passes instead:

1. **Self pass.** Each distinct example against itself, a chunk of examples at a time
   (``jax.vmap`` over examples inside ``lax.map`` over chunks). For one example with
   ``x2 = None`` the self covariance *is* the pair covariance ``nngp``, so before every
   layer the self covariance is replaced by it; the layer's own computation of the self
   covariance then has no consumer and XLA removes it: one pair's worth of work per
   example. The self covariance at the input of every leaf layer is recorded, in layer
   order, on a *tape*; the example's diagonal entries ``K(x, x)`` come out too.
2. **Pair pass.** ``lax.map`` over blocks of ``b1 x b2`` pairs; every leaf layer reads its
   inputs' self covariances from the tape instead of computing them (dead code again, so
   removed). With ``x2 = None`` only blocks on or above the diagonal are computed; the
   others are their mirror image, ``K(x', x)[s', s] = K(x, x')[s, s']``; with ``b = 1``
   the diagonal itself comes from the self pass.

Work, in units of one pair's covariances: ``N (N + 1) / 2`` for ``x2 = None`` with ``b = 1``
(``N^2 / 2 + N b / 2`` in general), against ``N^2 + N`` for the one-shot evaluation; memory:
one block of pairs plus the tape (``N`` self covariances per layer whose rule reads them;
the others are removed with their readers).

The tape is replayed by position: the pair pass traces the same rules in the same order
as the self pass. Every leaf layer's rule goes through `at_leaf` (`kernels.stax.layer.leaf`
wraps it); combinators only route kernels between leaves.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.kernel import Kernel, input_kernel, single_kernel

__all__ = ["evaluate", "plan", "at_leaf"]

# Elements of one block's nngp (float count) the automatic plan aims at, and the size of a
# whole kernel below which the one-shot evaluation is used. CPU: a block's arrays stay in
# the 1 MB L2 cache (2-core EPYC, issue 4's workloads: blocks of 2^18 ran the MLP 1.6x and
# attention 1.6x faster than blocks of 2^20, the Flatten CNN 1.2x slower); accelerators:
# large enough to fill the device (H100, Myrtle-5: blocks of 4, 8, 16 pairs within 5%).
_TARGET = {"cpu": 2 ** 18}
_TARGET_ACCELERATOR = 2 ** 24
_ONE_SHOT_FACTOR = 2


class _Tape(threading.local):
    mode: Optional[str] = None  # None, "record" or "replay"
    entries: list = None
    cursor: int = 0


_TAPE = _Tape()


def at_leaf(k: Kernel) -> Kernel:
    """Called with a leaf layer's input before its rule runs: records or replays self covariances.

    A leaf's input is one `Kernel` (fan-in layers, which take several, are not leaves).
    """
    mode = _TAPE.mode
    if mode is None:
        return k
    if mode == "record":
        k = k.replace(cov1=k.nngp[0])  # one example, x2 = None: its self covariance is its pair covariance
        _TAPE.entries.append(k.cov1)
        return k
    cov1, cov2 = _TAPE.entries[_TAPE.cursor]
    _TAPE.cursor += 1
    return k.replace(cov1=cov1, cov2=cov2)


@contextlib.contextmanager
def _taping(mode: str, entries: list):
    if _TAPE.mode is not None:
        raise RuntimeError("kernels.stax.blocks: nested block evaluation")
    _TAPE.mode, _TAPE.entries, _TAPE.cursor = mode, entries, 0
    try:
        yield entries
    finally:
        _TAPE.mode, _TAPE.entries, _TAPE.cursor = None, None, 0


def pair_elements(x: jax.Array, full: bool) -> int:
    """Floats per pair of examples in a kernel of inputs shaped like ``x`` (input resolution)."""
    positions = math.prod(x.shape[1:-1])
    return positions * positions if full else positions


def plan(n1: int, n2: int, per_pair: int, block_size: Optional[int], backend: str) -> int:
    """Rows (= columns) per block, or 0 for the one-shot evaluation.

    ``block_size``: ``None`` chooses (one block holds about 2^18 floats per array on a CPU,
    2^24 on an accelerator; kernels under twice that are evaluated in one shot); ``0``
    forces the one-shot evaluation; a positive int is used as given (capped at the batch).
    """
    if block_size is not None:
        if int(block_size) != block_size or block_size < 0:
            raise ValueError(f"kernel_fn: block_size must be None or a non-negative int, got {block_size!r}")
        return min(int(block_size), max(n1, n2))
    target = _TARGET.get(backend, _TARGET_ACCELERATOR)
    if n1 * n2 * per_pair <= _ONE_SHOT_FACTOR * target or n1 * n2 == 1:
        return 0
    b = max(1, math.isqrt(max(target // per_pair, 1)))
    n = max(n1, n2)
    if b >= n:
        return 0
    return -(-n // -(-n // b))  # the same number of blocks, as even as possible


def _pad_rows(x, rows: int):
    """``x`` with its last row repeated up to ``rows`` rows (real inputs: no NaN risk)."""
    extra = rows - x.shape[0]
    if extra <= 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])


def _self_pass(rule: Callable, xs, full: bool, chunk: int, name: str):
    """Diagonal kernels, self-covariance tape and output template of every example in ``xs``."""
    template = {}

    def one(x):  # x: (1, *S, C)
        with _taping("record", []) as entries:
            out = single_kernel(rule(input_kernel(x, None, full)), name)
        template["out"] = out
        return out.nngp[0, 0], out.ntk[0, 0], [c[0] for c in entries]

    n = xs.shape[0]
    chunk = max(1, min(chunk, n))
    count = -(-n // chunk)
    padded = _pad_rows(xs, count * chunk)[:, None]
    if count == 1:
        result = jax.vmap(one)(padded)
    else:
        result = lax.map(jax.vmap(one), padded.reshape((count, chunk) + padded.shape[1:]))
        result = jax.tree_util.tree_map(lambda a: a.reshape((count * chunk,) + a.shape[2:]), result)
    result = jax.tree_util.tree_map(lambda a: a[:n], result)
    nngp, ntk, tape = result
    return nngp, ntk, tape, template["out"]


def _mirror(blocks, full: bool, d: int):
    """``K(x', x)`` from ``K(x, x')`` for blocks ``(B, b, b, *S, *S')``: swap examples and positions."""
    axes = [0, 2, 1]
    if full and d:
        axes += list(range(3 + d, 3 + 2 * d)) + list(range(3, 3 + d))
    else:
        axes += list(range(3, blocks.ndim))
    return jnp.transpose(blocks, axes)


def evaluate(rule: Callable, x1, x2, full: bool, b: int, name: str = "kernel_fn") -> Kernel:
    """The network's `Kernel` (library layout) on ``x1``, ``x2``, ``b x b`` pairs at a time.

    The self pass takes as many examples per step as one block has pairs; ``name`` is how
    errors name the network.
    """
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if symmetric else x2.shape[0]
    b1, b2 = min(b, n1), min(b, n2)
    if symmetric:
        b1 = b2 = min(b1, b2)
    nb1, nb2 = -(-n1 // b1), -(-n2 // b2)
    x1p = _pad_rows(x1, nb1 * b1)
    x2p = x1p if symmetric else _pad_rows(x2, nb2 * b2)
    xs = x1p if symmetric else jnp.concatenate([x1p, x2p])
    self_nngp, self_ntk, tape, out = _self_pass(rule, xs, full, b1 * b2, name)
    d = out.spatial_ndim

    rows = np.arange(nb1)[:, None].repeat(nb2, 1)
    cols = np.arange(nb2)[None, :].repeat(nb1, 0)
    if symmetric:
        keep = (cols > rows) if b1 == 1 else (cols >= rows)
    else:
        keep = np.ones((nb1, nb2), bool)
    block_rows, block_cols = rows[keep], cols[keep]
    offset2 = 0 if symmetric else nb1 * b1

    def block(index):
        i, j = index
        r0, c0 = i * b1, offset2 + j * b2
        xa = lax.dynamic_slice_in_dim(x1p, i * b1, b1)
        xb = lax.dynamic_slice_in_dim(x2p, j * b2, b2)
        entries = [(lax.dynamic_slice_in_dim(c, r0, b1), lax.dynamic_slice_in_dim(c, c0, b2)) for c in tape]
        with _taping("replay", entries):
            k = rule(input_kernel(xa, xb, full))
        return k.nngp, k.ntk

    if len(block_rows):
        nngp_blocks, ntk_blocks = lax.map(block, (jnp.asarray(block_rows), jnp.asarray(block_cols)))
    else:
        shape = (0, b1, b2) + self_nngp.shape[1:]
        nngp_blocks = ntk_blocks = jnp.zeros(shape, self_nngp.dtype)

    def assemble(blocks, diagonal):
        if symmetric and b1 > 1:  # a block on the diagonal holds K(x, x') and K(x', x): keep one
            on_diagonal = np.flatnonzero(block_rows == block_cols)
            upper = np.triu(np.ones((b1, b1), bool)).reshape((1, b1, b1) + (1,) * (blocks.ndim - 3))
            square = blocks[on_diagonal]
            blocks = blocks.at[on_diagonal].set(jnp.where(upper, square, _mirror(square, full, d)))
        pieces = [blocks]
        grid = np.full((nb1, nb2), -1, np.int64)
        grid[keep] = np.arange(len(block_rows))
        if symmetric:
            pieces.append(_mirror(blocks, full, d))
            lower = np.tril(np.ones((nb1, nb2), bool), -1)
            grid[lower] = grid.T[lower] + len(block_rows)
            if b1 == 1:
                pieces.append(diagonal[:, None, None])
                grid[np.arange(nb1), np.arange(nb1)] = 2 * len(block_rows) + np.arange(nb1)
        every = jnp.concatenate(pieces) if len(pieces) > 1 else blocks
        tiled = every[jnp.asarray(grid)]  # (nb1, nb2, b1, b2, ...)
        tiled = jnp.swapaxes(tiled, 1, 2).reshape((nb1 * b1, nb2 * b2) + tiled.shape[4:])
        return tiled[:n1, :n2]

    return out.replace(
        nngp=assemble(nngp_blocks, self_nngp),
        ntk=assemble(ntk_blocks, self_ntk),
        cov1=self_nngp[:n1],
        cov2=None if symmetric else self_nngp[offset2:offset2 + n2],
    )
