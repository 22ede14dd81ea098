"""The one tile plan of a kernel matrix: tiles, padding, upper triangle, mirroring.

Both evaluations of big kernel matrices split the ``N1 x N2`` pairs of ``x1`` and ``x2``
into tiles the same way, with this module: `kernels.stax.blocks` (tiles inside one
``kernel_fn`` call, under ``jax.jit``) and `kernels.batch` (tiles dispatched from the host,
written to memory or to files). One layout throughout, neural-tangents' public one:
``(N1, N2, S_1, S'_1, ..., S_d, S'_d)`` for kernels that keep position pairs,
``(N1, N2, S_1, ..., S_d)`` for those that keep equal positions, ``(N1, N2)`` for flat ones.

* Tile ``(i, j)`` holds rows ``i*b1 ... i*b1 + b1 - 1`` of ``x1`` against rows
  ``j*b2 ... j*b2 + b2 - 1`` of ``x2`` (`TilePlan.extent`). The last tile of a row or a
  column is short; its inputs are padded to the full side by repeating the last example
  (`pad_rows`: real inputs, so no NaN risk), so every tile has one shape (one compilation),
  and the padding is cut off the result.
* With ``x2 = None`` (``symmetric``) only tiles with ``j >= i`` are computed, or ``j > i``
  when the diagonal comes from elsewhere (``skip_diagonal``: a one-example tile on the
  diagonal is that example's self kernel); tile ``(j, i)`` is the mirror of ``(i, j)``:
  ``K(x', x)[s', s] = K(x, x')[s, s']`` (`mirror_axes`). A tile on the diagonal holds both
  ``K(x, x')`` and ``K(x', x)``; `symmetrize` keeps its upper triangle and mirrors it, so the
  whole matrix is symmetric to the bit.
* Tiles are enumerated in one fixed order, row-major (`TilePlan.tiles`); a process's share
  of a multi-process run is every ``process_count``-th tile of it (`TilePlan.share`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["TilePlan", "make_plan", "pad_rows", "mirror_axes", "symmetrize"]


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How ``N1 x N2`` pairs are split into ``b1 x b2`` tiles.

    Attributes:
      n1, n2: examples in ``x1`` and ``x2`` (``n2 == n1`` when ``symmetric``).
      b1, b2: a tile's side along ``x1`` and ``x2`` (equal when ``symmetric``).
      symmetric: ``x2 is None``: only tiles on or above the diagonal are computed.
      skip_diagonal: with ``symmetric``, tiles on the diagonal are not computed either
        (their entries come from elsewhere; only sensible for ``b1 == 1``).
    """

    n1: int
    n2: int
    b1: int
    b2: int
    symmetric: bool
    skip_diagonal: bool = False

    @property
    def rows(self) -> int:
        """Tiles along ``x1``."""
        return -(-self.n1 // self.b1)

    @property
    def cols(self) -> int:
        """Tiles along ``x2``."""
        return -(-self.n2 // self.b2)

    @property
    def grid(self) -> tuple:
        return self.rows, self.cols

    def tiles(self) -> np.ndarray:
        """``(T, 2)`` int array of the computed tiles ``(i, j)``, row-major."""
        i, j = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        if not self.symmetric:
            keep = np.ones(i.shape, bool)
        else:
            keep = j > i if self.skip_diagonal else j >= i
        return np.stack([i[keep], j[keep]], axis=1)

    def share(self, process_index: int, process_count: int) -> np.ndarray:
        """The tiles (rows of `tiles`) process ``process_index`` of ``process_count`` computes."""
        return self.tiles()[process_index::process_count]

    def extent(self, i: int, j: int) -> tuple:
        """``(r0, rn, c0, cn)``: tile ``(i, j)`` covers rows ``r0:r0+rn`` and columns ``c0:c0+cn``."""
        r0, c0 = i * self.b1, j * self.b2
        return r0, min(self.b1, self.n1 - r0), c0, min(self.b2, self.n2 - c0)

    def assembly_grid(self) -> np.ndarray:
        """``(rows, cols)`` int grid: where each tile of the whole matrix comes from.

        Indices refer to the concatenation ``[computed tiles (T, in `tiles` order), their
        mirrors (T), then one diagonal tile per row (rows; only with skip_diagonal)]``.
        """
        tiles = self.tiles()
        t = len(tiles)
        grid = np.full(self.grid, -1, np.int64)
        grid[tiles[:, 0], tiles[:, 1]] = np.arange(t)
        if self.symmetric:
            grid[tiles[:, 1], tiles[:, 0]] = np.where(tiles[:, 0] == tiles[:, 1], grid[tiles[:, 0], tiles[:, 1]],
                                                      t + np.arange(t))
            if self.skip_diagonal:
                grid[np.arange(self.rows), np.arange(self.rows)] = 2 * t + np.arange(self.rows)
        assert (grid >= 0).all()
        return grid


def make_plan(n1: int, n2: int, side: int, symmetric: bool, skip_diagonal: bool = False) -> TilePlan:
    """The plan for tiles of ``side x side`` examples (``0``: one tile of the whole matrix).

    Sides are capped at the batch sizes; with ``symmetric`` both sides are equal.
    """
    b1 = n1 if side == 0 else min(side, n1)
    b2 = n2 if side == 0 else min(side, n2)
    if symmetric:
        b1 = b2 = min(b1, b2)
    return TilePlan(n1, n2, b1, b2, symmetric, skip_diagonal and symmetric)


def pad_rows(x, rows: int):
    """``x`` (NumPy or JAX) with its last row repeated up to ``rows`` rows."""
    extra = rows - x.shape[0]
    if extra <= 0:
        return x
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])
    import jax.numpy as jnp
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])


def mirror_axes(tail_ndim: int, full: bool, lead: int = 0) -> tuple:
    """Axis order turning tile ``K(x, x')`` into ``K(x', x)`` (public layout).

    Swaps the two example axes and, when ``full`` (the trailing axes are position pairs
    ``S_1, S'_1, S_2, S'_2, ...``), every ``S``/``S'`` pair.

    Args:
      tail_ndim: axes after the two example axes.
      full: whether those axes are position pairs.
      lead: axes before the example axes (e.g. 1 for a stack of tiles), left in place.
    """
    if full and tail_ndim % 2:
        raise ValueError(f"kernels.tiling: a kernel keeping position pairs has an even number of "
                         f"trailing axes; received {tail_ndim}")
    axes = [lead + 1, lead]
    if full:
        for k in range(tail_ndim // 2):
            axes += [lead + 3 + 2 * k, lead + 2 + 2 * k]
    else:
        axes += [lead + 2 + k for k in range(tail_ndim)]
    return tuple(range(lead)) + tuple(axes)


def symmetrize(square, full: bool, lead: int = 0):
    """A diagonal tile ``K(x, x)`` (NumPy or JAX) made symmetric: its upper triangle, mirrored below.

    ``lead`` axes before the example axes are kept (a stack of tiles).
    """
    b = square.shape[lead]
    tail = square.ndim - lead - 2
    upper = np.triu(np.ones((b, b), bool)).reshape((1,) * lead + (b, b) + (1,) * tail)
    if isinstance(square, np.ndarray):
        return np.where(upper, square, np.transpose(square, mirror_axes(tail, full, lead)))
    import jax.numpy as jnp
    return jnp.where(upper, square, jnp.transpose(square, mirror_axes(tail, full, lead)))
