"""Block-by-block evaluation of a network's kernel: bounded memory, symmetry, cache reuse.

An entry ``K(x, x')`` needs, besides the pair's own covariances, each input's covariance
with itself at the input of every layer (its *self covariance*: what an activation's dual
map normalizes by, what pooling and attention mix). Evaluating all ``N1 x N2`` pairs at once
holds every pair's position covariances together (for Myrtle-5 on 24 images of 32x32, one
44 GB buffer) and computes each self covariance next to the pairs. Here the matrix is
computed in two passes instead, over the tiles of one `kernels.tiling.TilePlan`:

1. **Self pass.** Each distinct example against itself, a chunk of examples at a time
   (``jax.vmap`` over examples inside ``lax.map`` over chunks). For one example with
   ``x2 = None`` the self covariance *is* the pair covariance ``nngp``, so before every
   leaf layer the self covariance is replaced by it; the layer's own computation of the
   self covariance then has no consumer and XLA removes it: one pair's worth of work per
   example. The self covariance arriving at every leaf layer is recorded; the example's
   diagonal entries ``K(x, x)`` come out too.
2. **Pair pass.** ``lax.map`` over tiles of ``b x b`` pairs; every leaf layer reads its
   inputs' self covariances from the record instead of computing them (dead code again, so
   removed). With ``x2 = None`` only tiles on or above the diagonal are computed, the
   others are their mirror image; with ``b = 1`` the diagonal itself comes from the self pass.

Work, in units of one pair's covariances: ``N (N + 1) / 2`` for ``x2 = None`` with ``b = 1``
(``N^2 / 2 + N b / 2`` in general), against ``N^2 + N`` for the one-shot evaluation; memory:
one tile of pairs plus the record (``N`` self covariances per layer whose rule reads them;
the others are removed with their readers).

How the record finds its reader (explicit data, no hidden state). The recorded self
covariances travel *in the kernel*: `Kernel.selves` holds a `Selves`, whose ``path`` names
the value the kernel stands for by the leaf layers applied to the network's input on the way
to it (a leaf is named by its own wrapped rule, which `through_leaf` appends to its
outputs' path: an identity, so equal layers built twice are still told apart). A self covariance depends only on that value, so the record is a table
``path -> self covariance``: written in the self pass, read in the pair pass, whatever order
the rules run in. Combinators need to know nothing about it: ``serial``/``parallel`` route
kernels, ``FanOut``'s copies share a path and a value, and a fan-in's output keeps its first
branch's path (``first.replace``) though its value is new. That, and any other rule that
changes a value without being a leaf, is caught in the self pass: a path reached by two
different values is dropped from the table, and its readers compute their self covariances
(correct, a little slower). A rule that builds a fresh `Kernel` drops ``selves``, with the
same consequence. The one assumption left is what a rule is anyway: the same function of its
input kernel whether ``x2`` is given or not.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import tiling
from kernels.kernel import Kernel, branch_items, input_kernel, map_branches, to_neural_tangents_layout

__all__ = ["evaluate", "plan", "through_leaf", "Selves"]

# Elements of one block's nngp (float count) the automatic plan aims at, and the size of a
# whole kernel below which the one-shot evaluation is used. CPU: a block's arrays stay in
# the 1 MB L2 cache (2-core EPYC, issue 4's workloads: blocks of 2^18 ran the MLP 1.6x and
# attention 1.6x faster than blocks of 2^20, the Flatten CNN 1.2x slower); accelerators:
# large enough to fill the device (H100, Myrtle-5: blocks of 4, 8, 16 pairs within 5%).
_TARGET = {"cpu": 2 ** 18}
_TARGET_ACCELERATOR = 2 ** 24
_ONE_SHOT_FACTOR = 2

class _Recording:
    """The self pass' table, filled while the network's rule is traced once for one example."""

    def __init__(self):
        self.entries = {}  # path -> (nngp it was read from, self covariance)
        self.ambiguous = set()

    def note(self, path: tuple, nngp) -> jax.Array:
        cov = nngp[0]  # one example, x2 = None: its self covariance is its pair covariance
        if path in self.entries and self.entries[path][0] is not nngp:
            self.ambiguous.add(path)  # two different values under one path: read by nobody
        self.entries.setdefault(path, (nngp, cov))
        return cov

    def table(self) -> dict:
        return {p: c for p, (_, c) in self.entries.items() if p not in self.ambiguous}


@jax.tree_util.register_pytree_node_class
class Selves:
    """What a kernel carries during a block-by-block evaluation (`Kernel.selves`).

    Attributes:
      path: the leaf layers (their wrapped rules) applied to the network's input on the way
        to this kernel (static).
      table: pair pass: ``path -> (cov1 rows, cov2 rows)`` recorded in the self pass, for
        this tile's examples; ``None`` in the self pass.
      recording: self pass: where self covariances are recorded; ``None`` in the pair pass.
    """

    def __init__(self, path: tuple = (), table: Optional[dict] = None, recording: Optional[_Recording] = None):
        self.path, self.table, self.recording = path, table, recording

    def tree_flatten(self):
        return (self.table,), (self.path, self.recording)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0], aux[1])

    def before_leaf(self, k: Kernel) -> Kernel:
        """The leaf's input with its self covariances recorded (self pass) or read (pair pass)."""
        if self.recording is not None:
            return k.replace(cov1=self.recording.note(self.path, k.nngp))
        if self.table is not None and self.path in self.table:
            cov1, cov2 = self.table[self.path]
            return k.replace(cov1=cov1, cov2=cov2)
        return k

    def after(self, key: Callable) -> "Selves":
        return Selves(self.path + (key,), self.table, self.recording)


def through_leaf(key: Callable, rule: Callable, k: Kernel):
    """Runs a leaf layer's ``rule`` on ``k``: records or reads self covariances, extends the path.

    ``key`` names the leaf in paths (its wrapped rule, `kernels.stax.layer.checked`).

    A leaf's input is one `Kernel` (fan-in layers, which take several, are not leaves); its
    output is a `Kernel` or, for ``FanOut``, a tuple of them.
    """
    selves = getattr(k, "selves", None)
    if selves is None:
        return rule(k)
    out = rule(selves.before_leaf(k))
    after = selves.after(key)
    if isinstance(out, Kernel):
        return out.replace(selves=after)
    return type(out)(o.replace(selves=after) if isinstance(o, Kernel) else o for o in out)


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


def _self_pass(rule: Callable, xs, full: bool, chunk: int):
    """Diagonal kernels, recorded self covariances and output template of every example in ``xs``.

    The kernels and means are lists with one entry per branch of the network's output (one
    for a network with one output); the template has the output's structure (`map_branches`).
    """
    template = {}

    def one(x):  # x: (1, *S, C)
        recording = _Recording()
        out = rule(input_kernel(x, None, full).replace(selves=Selves((), None, recording)))
        template["out"] = map_branches(lambda path, k: k.replace(selves=None), out)
        branches = [k for _, k in branch_items(out)]
        # per-example means, where the kernel carries them
        means = [None if getattr(k, "mean1", None) is None else k.mean1[0] for k in branches]
        table = recording.table()
        template["paths"] = list(table)  # paths hold functions: static, not pytree keys
        return [k.nngp[0, 0] for k in branches], [k.ntk[0, 0] for k in branches], means, \
            [c[0] for c in table.values()]

    n = xs.shape[0]
    chunk = max(1, min(chunk, n))
    count = -(-n // chunk)
    padded = tiling.pad_rows(xs, count * chunk)[:, None]
    if count == 1:
        result = jax.vmap(one)(padded)
    else:
        result = lax.map(jax.vmap(one), padded.reshape((count, chunk) + padded.shape[1:]))
        result = jax.tree_util.tree_map(lambda a: a.reshape((count * chunk,) + a.shape[2:]), result)
    nngp, ntk, means, recorded = jax.tree_util.tree_map(lambda a: a[:n], result)
    return nngp, ntk, means, dict(zip(template["paths"], recorded)), template["out"]


def evaluate(rule: Callable, x1, x2, full: bool, b: int):
    """The network's `Kernel` on ``x1``, ``x2``, ``b x b`` pairs at a time, in neural-tangents' layout.

    Every array is returned in the public layout (`kernels.kernel.to_neural_tangents_layout`),
    the one `kernels.tiling` mirrors in. The self pass takes as many examples per step as
    one tile has pairs. A network ending in branches gives a list of kernels, one per branch
    (`kernels.kernel.map_branches`), each evaluated over the same tiles.
    """
    symmetric = x2 is None
    n1 = x1.shape[0]
    tiles = tiling.make_plan(n1, n1 if symmetric else x2.shape[0], b, symmetric, skip_diagonal=b == 1)
    b1, b2 = tiles.b1, tiles.b2
    x1p = tiling.pad_rows(x1, tiles.rows * b1)
    x2p = x1p if symmetric else tiling.pad_rows(x2, tiles.cols * b2)
    xs = x1p if symmetric else jnp.concatenate([x1p, x2p])
    self_nngps, self_ntks, means, recorded, out = _self_pass(rule, xs, full, b1 * b2)
    offset2 = 0 if symmetric else tiles.rows * b1
    computed = tiles.tiles()

    def block(index):
        i, j = index
        r0, c0 = i * b1, offset2 + j * b2
        table = {p: (lax.dynamic_slice_in_dim(c, r0, b1), lax.dynamic_slice_in_dim(c, c0, b2))
                 for p, c in recorded.items()}
        xa = lax.dynamic_slice_in_dim(x1p, i * b1, b1)
        xb = lax.dynamic_slice_in_dim(x2p, j * b2, b2)
        out = rule(input_kernel(xa, xb, full).replace(selves=Selves((), table)))
        branches = [k for _, k in branch_items(out)]
        return [k.nngp for k in branches], [k.ntk for k in branches]

    if len(computed):
        nngp_tiles, ntk_tiles = lax.map(block, (jnp.asarray(computed[:, 0]), jnp.asarray(computed[:, 1])))
    else:
        nngp_tiles = ntk_tiles = [jnp.zeros((0, b1, b2) + s.shape[1:], s.dtype) for s in self_nngps]

    def assemble(stack, diagonal, public, full):
        stack = public(stack, 3)  # (T, b1, b2, ...)
        tail = stack.ndim - 3
        pieces = [stack]
        if symmetric:
            on_diagonal = np.flatnonzero(computed[:, 0] == computed[:, 1])
            if len(on_diagonal):  # a tile on the diagonal holds K(x, x') and K(x', x): keep one
                stack = stack.at[on_diagonal].set(tiling.symmetrize(stack[on_diagonal], full, lead=1))
            pieces = [stack, jnp.transpose(stack, tiling.mirror_axes(tail, full, lead=1))]
            if tiles.skip_diagonal:
                pieces.append(public(diagonal, 1)[:, None, None])
        every = jnp.concatenate(pieces) if len(pieces) > 1 else stack
        grid = every[jnp.asarray(tiles.assembly_grid())]  # (rows, cols, b1, b2, ...)
        grid = jnp.swapaxes(grid, 1, 2).reshape((tiles.rows * b1, tiles.cols * b2) + grid.shape[4:])
        return grid[:n1, :tiles.n2]

    finished = {}
    for i, (path, k) in enumerate(branch_items(out)):
        public = functools.partial(to_neural_tangents_layout, full=k.full, d=k.spatial_ndim)
        self_nngp = self_nngps[i]
        if means[i] is not None:
            k = k.replace(mean1=means[i][:n1], mean2=None if symmetric else means[i][offset2:offset2 + tiles.n2])
        finished[path] = k.replace(
            nngp=assemble(nngp_tiles[i], self_nngp, public, k.full),
            ntk=assemble(ntk_tiles[i], self_ntks[i], public, k.full),
            cov1=public(self_nngp[:n1], 1),
            cov2=None if symmetric else public(self_nngp[offset2:offset2 + tiles.n2], 1),
        )
    return map_branches(lambda path, k: finished[path], out)
