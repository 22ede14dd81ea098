"""What a layer is: a triple ``(init_fn, apply_fn, kernel_fn)``.

``kernel_fn`` is a `KernelFn`: callable as neural-tangents' ``kernel_fn(x1, x2=None, get=None)``
and carrying, as plain data, the layer's kernel rule (``Kernel -> Kernel``) and
which position covariances the rule needs from its input given what its output
must keep (`KernelFn.needs_full`). The network-wide decision — keep every pair
of positions, or only equal positions — is made once per call by walking the
network backwards from its output (`network_needs_full`).
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import FLOAT_DTYPES, all_none, argument_error, check_examples, parse_get, reject_unexpected
from kernels.kernel import (Kernel, batch_diagonal, branch_at, branch_items, branch_label,
                            from_neural_tangents_layout, input_kernel, map_branches, reverse_spatial,
                            to_neural_tangents_layout)
from kernels.stax import blocks, masking

GET_NAMES = ("nngp", "ntk", "cov1", "cov2")
# The other fields of neural-tangents' Kernel that its `get` accepts (`Kernel`'s properties of those names).
FIELD_NAMES = ("x1_is_x2", "is_gaussian", "is_reversed", "is_input", "diagonal_batch", "diagonal_spatial", "shape1",
               "shape2", "batch_axis", "channel_axis", "mask1", "mask2")

# Requirement: whether the output must keep position pairs; a tuple for several outputs.
Requirement = Union[bool, tuple]


# Whether the kernel_fn call being traced returns an NTK. Built-in rules compute it regardless (it
# costs little); a custom layer's rule (`kernels.stax.custom`) is handed ``Kernel.ntk = None`` when
# it is not, as neural-tangents does, so that an NNGP-only rule (an RBF kernel) can refuse an NTK.
NTK_REQUESTED = contextvars.ContextVar("NTK_REQUESTED", default=True)


def own_rank_promotion(fn: Callable) -> Callable:
    """``fn`` run under JAX's default rank promotion, whatever the caller's setting.

    neural-tangents' tests, and careful users, set ``jax_numpy_rank_promotion='raise'`` for their
    own code; the layers here broadcast a bias ``(C,)`` onto ``(N, ..., C)`` and kernels onto
    their batch axes by design, so the public entry points (`guarded_apply`, `KernelFn.__call__`)
    trace under ``'allow'`` and a user's strict setting never breaks them. A function that ``fn``
    returns (`theory.predict`'s ``predict_fn``) runs under ``'allow'`` too.
    """
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            out = fn(*args, **kwargs)
        return own_rank_promotion(out) if inspect.isfunction(out) else out
    return wrapped


def keep_requirement(out: Requirement) -> Requirement:
    """Pointwise layers (activations, Dense, Conv) need what their output needs."""
    return out


def needs_pairs(out: Requirement) -> Requirement:
    """Layers that mix positions (pooling, attention) always need position pairs."""
    return True


def needs_diagonal(out: Requirement) -> Requirement:
    """Readouts that only see equal positions (Flatten)."""
    return False


def any_requirement(req: Requirement) -> bool:
    return any(any_requirement(r) for r in req) if isinstance(req, tuple) else bool(req)


class _Diagnosis:
    """While set, every layer's rule checks its output for non-finite values."""
    active = False


@dataclasses.dataclass(frozen=True, eq=False)
class KernelFn:
    """Infinite-width kernel function of a layer or network.

    Attributes:
      name: how errors name this layer, e.g. ``"Conv(out_chan=64, ...)"``.
      rule: ``Kernel -> Kernel`` (tuples of kernels for branching layers).
      needs_full: output requirement -> input requirement (see module docstring).
      requires: what a leaf layer's rule needs of its input (`Requires`); ``None`` for
        networks and combinators, whose parts declare their own.
      keywords: the keywords beyond `APPLY_KEYWORDS` that ``apply_fn`` and ``kernel_fn`` take
        because some layer of the network needs them (``("pattern",)`` with an `Aggregate`);
        a network without such a layer refuses them by name.
      whole_batch: some layer mixes the examples of a batch (`FanInConcat` along the batch axis), so
        the kernel is evaluated in one piece, never block by block.
      input_axes: ``(batch_axis, channel_axis)`` that the first layer declaring a layout
        (`kernels.stax.layout`) gives its inputs, which ``kernel_fn`` reads its inputs in (as
        neural-tangents does); ``None`` where no layer declares one (batch first, channels last).
    """

    name: str
    rule: Callable[[Any], Any]
    needs_full: Callable[[Requirement], Requirement] = keep_requirement
    requires: "Requires" = None
    keywords: tuple = ()
    whole_batch: bool = False
    input_axes: Optional[tuple] = None

    @property
    def __name__(self) -> str:
        """The layer's name without its arguments (``Conv``), as neural-tangents names its functions."""
        return self.name.split("(", 1)[0]

    @own_rank_promotion
    def __call__(self, x1, x2=None, get=None, *, block_size=None, diagonal_batch=None, diagonal_spatial=False,
                 mask_constant=None, pattern=None, neural_tangents_axis_order=False, batch_axis=None,
                 channel_axis=None, **kwargs):
        """Kernels of the network's outputs on ``x1`` and ``x2``.

        Args:
          x1: ``(N1, *S, C)`` inputs, batch first, channels last; or the `Kernel` that another
            network's ``kernel_fn(..., get=None)`` returned, to apply this network to that
            network's outputs (neural-tangents' ``kernel_fn(Kernel)``; ``x2`` is then ``None``).
          x2: ``(N2, *S, C)`` or ``None`` (then ``x2 = x1``).
          get: ``None`` for the `Kernel`; a name (``"nngp"``, ``"ntk"``, ``"cov1"``,
            ``"cov2"``) for one array; a tuple of names for a named tuple of arrays. The other
            fields of neural-tangents' `Kernel` are names too (`FIELD_NAMES`: ``"shape1"``,
            ``"is_gaussian"``, ``"x1_is_x2"``, ...), as there.
          block_size: pairs of examples are evaluated ``block_size x block_size`` at a
            time (`kernels.stax.blocks`: each example's self covariances computed once,
            only blocks on or above the diagonal when ``x2 is None``, memory bounded by a
            block). ``None`` (default) chooses by size and backend; ``0`` evaluates every
            pair at once.

          diagonal_batch: ``True`` (default for inputs): ``cov1``/``cov2`` hold each example's covariance
            with itself, ``(N1, ...)``; ``False``: the covariance of every pair of examples of ``x1``
            (of ``x2``), ``(N1, N1, ...)`` in the layout of ``nngp`` (neural-tangents' meaning): the
            network's ``nngp`` of ``(x1, x1)`` and of ``(x2, x2)``, evaluated as such
            (`_with_batch_covariances`); ``nngp`` and ``ntk`` do not change. ``None``: ``True``, or
            for a `Kernel` ``x1`` that kernel's own ``diagonal_batch``, as in neural-tangents.
          diagonal_spatial: ``True`` returns only equal positions, ``(N1, N2, *S)`` (as
            neural-tangents does); position pairs are still computed where a layer
            (pooling, attention) needs them, then the diagonal is taken.
          mask_constant: ``None``, or a number (NaN allowed): input entries equal to it are masked
            (`kernels.stax.masking`: a position whose channels all are is excluded from pooling,
            attention and normalization, and the kernels there are zero), as neural-tangents does.
            A layer that does not support masks refuses them by name. Masked kernels are evaluated
            in one piece (``block_size`` ``None`` or ``0``); `kernels.batch` tiles them.
          pattern: the graphs of a network with an `Aggregate` layer, ``(pattern1, pattern2)``
            with the graphs of ``x1``'s and ``x2``'s examples, batch first (``pattern2`` may be
            ``None`` when ``x2`` is); ``None`` or ``(None, None)``: no aggregation. Refused by
            networks without an `Aggregate`. Such a kernel is evaluated in one piece (pass
            ``block_size`` ``None`` or ``0``); `kernels.batch` tiles it, slicing the patterns.

          neural_tangents_axis_order: ``True`` returns position pairs in the order neural-tangents
            0.6.5 returns them: after an odd number of weight-sharing convolutions (``Conv``,
            ``ConvTranspose``) on position pairs, merges following the majority of their branches
            (`Kernel.odd_convolutions`), its spatial axes are reversed, ``(N1, N2, W, W', H, H')``;
            code that indexes neural-tangents' arrays then ports unchanged. ``False`` (default):
            always the inputs' order, ``(N1, N2, H, H', W, W')``.
          batch_axis, channel_axis: where ``x1`` and ``x2`` keep their examples and channels; ``None``
            (default): where the network's first layer with a layout argument (``batch_axis``,
            ``channel_axis``, ``Conv``'s ``dimension_numbers``) wants them, else batch first and
            channels last, as neural-tangents reads them. The kernel's arrays are batch first and keep
            the positions in the inputs' order either way.

        Returns:
          Arrays ``(N1, N2)`` for a flat output; spatial outputs keep position pairs
          in neural-tangents' order ``(N1, N2, S_1, S'_1, ...)``. A network that ends in
          several branches (``FanOut`` or ``parallel`` without a merge) gives a list with
          one such result per branch (nested lists for nested branches), as neural-tangents does.
          ``cov2`` is ``None`` when ``x2`` is (the second batch is the first), as there.
        """
        if diagonal_batch is not None and not isinstance(diagonal_batch, (bool, np.bool_)):
            raise argument_error(f"{self.name}: kernel_fn", "diagonal_batch", "None, True or False", diagonal_batch,
                                 TypeError)
        if diagonal_batch is None and isinstance(x1, Kernel):
            diagonal_batch = x1.diagonal_batch
        if not diagonal_batch and diagonal_batch is not None or isinstance(x1, Kernel) and not x1.diagonal_batch:
            # Every other keyword of this call (locals() holds only the arguments here), for its three evaluations.
            keywords = {n: v for n, v in locals().items() if n not in ("self", "x1", "x2", "get", "diagonal_batch",
                                                                         "kwargs", "__class__")}
            return self._with_batch_covariances(x1, x2, get, bool(diagonal_batch), {**keywords, **kwargs})
        where = f"{self.name}: kernel_fn"
        reject_unexpected(where, kwargs, ("x1", "x2", "get", "block_size", "diagonal_batch", "diagonal_spatial",
                                          "mask_constant") + self.keywords)
        if not isinstance(diagonal_spatial, (bool, np.bool_)):
            raise argument_error(where, "diagonal_spatial", "True or False", diagonal_spatial, TypeError)
        if not isinstance(neural_tangents_axis_order, (bool, np.bool_)):
            raise argument_error(where, "neural_tangents_axis_order", "True or False", neural_tangents_axis_order,
                                 TypeError)
        masking.check_mask_constant(where, mask_constant)
        request = parse_get(get, GET_NAMES + FIELD_NAMES, where, default=GET_NAMES)
        arrays = tuple(n for n in request.names if n in GET_NAMES) or ("nngp",)  # fields read the arrays' shapes
        if isinstance(x1, Kernel):
            if mask_constant is not None:
                raise argument_error(where, "mask_constant", "None when x1 is a Kernel (its masks, if any, "
                                     "travel in the Kernel)", mask_constant)
            for argument, value in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
                if value is not None:
                    raise argument_error(where, argument, "None when x1 is a Kernel (it records its layout)", value)
            return self._on_kernel(where, x1, x2, request, arrays, block_size, diagonal_spatial, pattern,
                                   neural_tangents_axis_order)
        if _several(x1) or _several(x2):
            return self._on_inputs(where, x1, x2, request, arrays, diagonal_spatial, neural_tangents_axis_order,
                                   block_size=block_size, mask_constant=mask_constant, pattern=pattern,
                                   batch_axis=batch_axis, channel_axis=channel_axis)
        x1, x2, axes = _canonical_inputs(where, self.input_axes, x1, x2, batch_axis, channel_axis)
        x1, x2, masks = _check_inputs(x1, x2, mask_constant)
        patterns = check_pattern_keyword(where, self.keywords, pattern, x1, x2, block_size)
        if masks is not None and block_size not in (None, 0):
            raise NotImplementedError(f"{where}: argument `block_size` must be None or 0 with a `mask_constant` "
                                      f"(masked kernels are evaluated in one piece); received "
                                      f"block_size={block_size!r}. Tile them with kernels.batch")
        dtype = x1.dtype
        full = x1.ndim > 2 and any_requirement(self.needs_full(not diagonal_spatial))
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        if self.whole_batch and block_size not in (None, 0):
            raise NotImplementedError(f"{where}: argument `block_size` must be None or 0: the network concatenates "
                                      f"along the batch axis, so it is evaluated in one piece; received "
                                      f"block_size={block_size!r}")
        b = 0 if patterns is not None or masks is not None or self.whole_batch else \
            blocks.plan(x1.shape[0], n2, blocks.pair_elements(x1, full), block_size, jax.default_backend())
        out = self._evaluate(x1.astype(_compute_dtype(dtype)), None if x2 is None else x2.astype(_compute_dtype(dtype)),
                             full, arrays, b, patterns, masks, axes)
        _check_finite_output(self, x1, x2, full, arrays, out, axes)

        def result(path, k):
            k = _narrow(self.name + branch_label(path), k, arrays, dtype)
            k = _finish(k, diagonal_spatial, neural_tangents_axis_order)
            return request.pack({n: getattr(k, n) for n in request.names}, whole=k)
        return map_branches(result, out)

    def _forward(self, x1, x2, full: bool, names: tuple, b: int, patterns=None, masks=None, axes=None):
        """The `Kernel` of the network's output, or a list of them for a network ending in branches.

        ``masks``: ``(mask1, mask2)`` position masks of ``x1``, ``x2`` (already zeroed there), or ``None``.
        ``axes``: `Kernel.axes` of the inputs (``x1``, ``x2`` are already transposed batch first, channels last).
        """
        rule = _with_input_axes(self.rule, axes)
        token = NTK_REQUESTED.set("ntk" in names)  # names is static: each compiled program has one value
        try:
            if b:  # already in neural-tangents' layout, the one kernels.tiling mirrors in
                out = blocks.evaluate(rule, x1, x2, full, b)
            else:
                k = input_kernel(x1, x2, full)
                if patterns is not None:
                    k = k.replace(pattern1=patterns[0], pattern2=patterns[1])
                if masks is not None:
                    k = k.replace(mask1=masks[0], mask2=masks[1])
                out = rule(k)
        finally:
            NTK_REQUESTED.reset(token)

        return map_branches(lambda path, k: _public(k, names, x2 is None, interleave=not b), out)

    def _on_kernel(self, where, k, x2, request, arrays, block_size, diagonal_spatial, pattern,
                   neural_tangents_axis_order):
        """``kernel_fn(Kernel)``: the network applied to the outputs of another network, whose public
        `Kernel` (``get=None``) is ``k``, as neural-tangents does."""
        for argument, value, allowed in (("x2", x2, (None,)), ("block_size", block_size, (None, 0))):
            if value not in allowed:
                raise argument_error(where, argument, f"{' or '.join(map(repr, allowed))} when x1 is a Kernel "
                                     "(its pairs of examples are already chosen)", value)
        # A Kernel of equal positions only gives equal positions (neural-tangents' diagonal_spatial stays on), and
        # one in neural-tangents' axis order gives that order.
        diagonal_spatial = diagonal_spatial or (k.spatial_ndim > 0 and not k.full)
        neural_tangents_axis_order = neural_tangents_axis_order or k.is_reversed
        k = self._internal_kernel(where, k, self.needs_full(not diagonal_spatial))
        n1, n2 = k.nngp.shape[:2]  # the graphs of the Kernel's examples, checked as for inputs of these batches
        patterns = check_pattern_keyword(where, self.keywords, pattern, np.empty((n1, 0)),
                                         None if k.x1_is_x2 else np.empty((n2, 0)), block_size)
        if patterns is not None:
            k = k.replace(pattern1=patterns[0], pattern2=patterns[1])
        return self._output(where, self._jitted_rule(k), request, arrays, k.x1_is_x2, diagonal_spatial,
                            neural_tangents_axis_order)

    @staticmethod
    def _internal_kernel(where, k: Kernel, needs) -> Kernel:
        """A public `Kernel` (another network's output, ``get=None``) as this network's rules take it."""
        missing = [f for f in ("nngp", "ntk", "cov1") if getattr(k, f) is None]
        if missing:
            raise argument_error(where, "x1", "a Kernel with nngp, ntk and cov1 (kernel_fn(..., get=None) "
                                 "returns one)", f"a Kernel without {', '.join(missing)}")
        d = k.spatial_ndim
        if k.is_reversed:  # kernel_fn(..., neural_tangents_axis_order=True): back to the inputs' order
            k = k.map_arrays(reverse_spatial).replace(is_reversed=False)
        if k.full and d:  # neural-tangents' interleaved position pairs -> (S, S')
            k = k.map_arrays(from_neural_tangents_layout)
        if d and not k.full and any_requirement(needs):
            raise ValueError(f"{where}: this network mixes positions (pooling, attention, a readout that is not "
                             "Flatten) and needs the covariances of every pair of positions, but the given "
                             "Kernel keeps only equal positions; compute it without diagonal_spatial=True")
        k = k.replace(cov2=None if k.x1_is_x2 else k.cov2, selves=None)
        # The public kernel drops the channel means (internal); outputs of a layer with weights have mean zero.
        return k.with_zero_means() if k.is_gaussian else k

    def _output(self, where, out, request, arrays, x1_is_x2, diagonal_spatial, neural_tangents_axis_order):
        """The rule's output kernel(s) (one per branch) as `kernel_fn` returns them."""
        out = map_branches(lambda path, o: _public(o, arrays, x1_is_x2, interleave=True), out)
        map_branches(lambda path, o: _refuse_non_finite(where + branch_label(path), o), out)

        def result(path, o):
            o = _finish(o, diagonal_spatial, neural_tangents_axis_order)
            return request.pack({n: getattr(o, n) for n in request.names}, whole=o)
        return map_branches(result, out)

    def _on_inputs(self, where, x1, x2, request, arrays, diagonal_spatial, neural_tangents_axis_order, **others):
        """A network with several inputs (it starts with `parallel`): ``x1`` a list or tuple with one
        entry per input, each an array, a `Kernel` (another network's output) or, for a nested
        `parallel`, again such a list; ``x2`` ``None`` (or a structure of ``None``) or arrays in
        ``x1``'s structure, as neural-tangents takes them. The network's rule runs on the inputs'
        kernels, in one piece."""
        mask_constant = others.pop("mask_constant")  # masks each array input (a Kernel carries its own)
        for argument, value in others.items():
            if value is not None and not (argument == "block_size" and value == 0):
                raise argument_error(where, argument, "None with several inputs (a list of arrays)", value)
        if all_none(x2):
            x2 = None  # neural-tangents' "same inputs": None, or a structure of None
        same = []

        def kernels(a, b, needs, label):
            if isinstance(a, (list, tuple)) and len(a):
                if b is not None and not (isinstance(b, (list, tuple)) and len(b) == len(a)):
                    raise argument_error(where, "x2", f"a list or tuple of {len(a)} entries, one per input like "
                                         f"x1{label}",
                                         f"{type(b).__name__} {b if not _is_input(b) else ''}".strip(), TypeError)
                parts = needs if isinstance(needs, tuple) and len(needs) == len(a) else (needs,) * len(a)
                return tuple(kernels(e, None if b is None else b[i], parts[i], f"{label}[{i}]")
                             for i, e in enumerate(a))
            if isinstance(a, Kernel):
                if b is not None:
                    raise argument_error(where, "x2", f"None at x1{label}, a Kernel (its pairs are chosen)", b)
                same.append(a.x1_is_x2)
                return self._internal_kernel(where, a, needs)
            if not isinstance(a, (jax.Array, np.ndarray)):
                raise argument_error(where, "x1", "a list or tuple of arrays or Kernels, one per input",
                                     f"{type(a).__name__} at x1{label}", TypeError)
            a, b, masks = _check_inputs(a, b, mask_constant)
            same.append(b is None)
            k = input_kernel(a, b, a.ndim > 2 and any_requirement(needs))
            return k if masks is None else k.replace(mask1=masks[0], mask2=masks[1])
        if not isinstance(x1, (list, tuple)):
            raise argument_error(where, "x1", "a list or tuple of inputs, like x2", type(x1).__name__, TypeError)
        inputs = kernels(x1, x2, self.needs_full(not diagonal_spatial), "")
        return self._output(where, self._jitted_rule(inputs), request, arrays, all(same), diagonal_spatial,
                            neural_tangents_axis_order)

    def _with_batch_covariances(self, x1, x2, get, diagonal_batch: bool, keywords: dict):
        """``kernel_fn(x1, x2, get, diagonal_batch=False, **keywords)``: the kernels for
        ``diagonal_batch=True`` with ``cov1`` (``cov2``) replaced by the network's ``nngp`` of
        ``(x1, x1)`` (of ``(x2, x2)``): the covariance of the outputs on every pair of examples of one
        batch, which is what neural-tangents' full-batch ``cov1`` holds. With ``x2=None``, ``cov1`` is
        the ``nngp`` itself and ``cov2`` is ``cov1``, as for ``diagonal_batch=True``.

        For a `Kernel` ``x1`` with ``diagonal_batch=False`` the same three evaluations run on kernels:
        its batch diagonal (for ``nngp``, ``ntk``) and its ``cov1`` (``cov2``) as the ``nngp`` of a
        batch with itself. ``diagonal_batch=True`` then returns the batch diagonal of the result.
        """
        where = f"{self.name}: kernel_fn"
        request = parse_get(get, GET_NAMES + FIELD_NAMES, where, default=GET_NAMES)
        pattern = keywords.pop("pattern", None)
        p1, p2 = (None, None) if pattern is None else pattern

        def own(p):  # the graphs of one batch paired with themselves
            return None if p is None else (p, None)
        if isinstance(x1, Kernel):
            if x1.diagonal_batch:
                raise argument_error(where, "diagonal_batch", "True or None for a Kernel computed with "
                                     "diagonal_batch=True (it holds only each example's own covariance; recompute "
                                     "it with diagonal_batch=False)", diagonal_batch)
            main = self(batch_diagonal_kernel(x1), x2, None, pattern=pattern, **keywords)
            if diagonal_batch:
                return map_branches(lambda path, k: request.pack({n: getattr(k, n) for n in request.names},
                                                                 whole=k), main)
            self_pairs = [(batch_pairs_kernel(x1, x1.cov1, x1.mask1), p1)] + ([] if x1.x1_is_x2 else [
                (batch_pairs_kernel(x1, x1.cov2, x1.mask2_or_mask1), p2)])
            covs = [self(k, None, "nngp", pattern=own(p), **keywords) for k, p in self_pairs]
        else:
            main = self(x1, x2, None, pattern=pattern, **keywords)
            covs = [None if x2 is None else self(x1, None, "nngp", pattern=own(p1), **keywords)]
            if x2 is not None:
                covs.append(self(x2, None, "nngp", pattern=own(p2), **keywords))

        def result(path, k):
            own = [branch_at(c, path) for c in covs]
            cov1 = k.nngp if own[0] is None else own[0]
            k = k.replace(cov1=cov1, cov2=own[1] if len(own) > 1 else None, diagonal_batch=False)
            return request.pack({n: getattr(k, n) for n in request.names}, whole=k)
        return map_branches(result, main)

    @functools.cached_property
    def _jitted_rule(self):
        return jax.jit(self.rule)

    @functools.cached_property
    def _evaluate(self):
        return jax.jit(self._forward, static_argnames=("full", "names", "b", "axes"))


def _public(k: Kernel, names: tuple, x1_is_x2: bool, interleave: bool) -> Kernel:
    """A network's output kernel as `kernel_fn` returns it: the asked-for arrays, position pairs in
    neural-tangents' order (unless already there: ``interleave=False``), internal fields cleared."""
    nt = functools.partial(to_neural_tangents_layout, full=k.full, d=k.spatial_ndim) if interleave \
        else (lambda a, batch_ndim: a)
    return k.replace(
        nngp=nt(k.nngp, 2) if "nngp" in names else None,
        ntk=nt(k.ntk, 2) if "ntk" in names else None,
        cov1=nt(k.cov1, 1) if "cov1" in names else None,
        cov2=nt(k.cov2_or_cov1, 1) if "cov2" in names and not x1_is_x2 else None,  # neural-tangents' None
        mean1=None, mean2=None,  # internal: what LayerNorm reads, not a result
        pattern1=None, pattern2=None,  # inputs, not results
        # The outputs are zero at masked positions already; the masks say which, for a network that continues
        # from this Kernel (kernel_fn(Kernel)), as neural-tangents' Kernel carries them.
        mask2=None if x1_is_x2 else k.mask2,
        x1_is_x2=x1_is_x2,
        # Nothing to reverse without positions: neural-tangents' Flatten and global pooling clear it,
        # so a network's flag does not depend on whether its first half ran on pairs or a diagonal.
        odd_convolutions=k.odd_convolutions and k.spatial_ndim > 0,
    )


def batch_diagonal_kernel(k: Kernel) -> Kernel:
    """A public `Kernel` with ``diagonal_batch=False`` as it would be with ``True``."""
    return k.replace(cov1=batch_diagonal(k.cov1), cov2=None if k.cov2 is None else batch_diagonal(k.cov2),
                     diagonal_batch=True)


def batch_pairs_kernel(k: Kernel, cov: jax.Array, mask: Optional[jax.Array] = None) -> Kernel:
    """The public `Kernel` of one batch with itself whose ``nngp`` is ``cov`` ``(N, N, ...)``, the full-batch
    ``cov1`` or ``cov2`` of ``k``, and whose masks are that batch's ``mask``; its ``ntk`` is zero (only
    ``nngp`` is read from what a network makes of it)."""
    own = batch_diagonal(cov)
    return k.replace(nngp=cov, ntk=jnp.zeros_like(cov), cov1=own, cov2=own, x1_is_x2=True, diagonal_batch=True,
                     mask1=mask, mask2=None)


def _finish(k: Kernel, diagonal_spatial: bool, neural_tangents_axis_order: bool) -> Kernel:
    """A public kernel reduced to equal positions (``diagonal_spatial``), or with its position pairs in
    neural-tangents' possibly reversed order (``neural_tangents_axis_order``)."""
    if diagonal_spatial and k.full:
        return _spatial_diagonal(k)
    if neural_tangents_axis_order and k.full and k.odd_convolutions:
        return k.map_arrays(reverse_spatial).replace(is_reversed=True)
    return k


def _spatial_diagonal(k: Kernel) -> Kernel:
    """``k`` (public, interleaved position pairs) reduced to equal positions: ``(B..., *S)``."""
    def diagonal(a, batch_ndim):
        lead, spatial = a.shape[:batch_ndim], a.shape[batch_ndim::2]
        square = from_neural_tangents_layout(a, batch_ndim).reshape(lead + (math.prod(spatial),) * 2)
        return jnp.diagonal(square, axis1=-2, axis2=-1).reshape(lead + spatial)

    return k.map_arrays(diagonal).replace(full=False)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _compute_dtype(dtype):
    """Half-precision inputs are computed in float32: products of small variances went
    subnormal in float16 (an 8-layer ReLU NTK 46% off); results are cast back."""
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else dtype


def _narrow(name: str, out: Kernel, names: tuple, dtype) -> Kernel:
    """``out`` cast back to the inputs' half-precision ``dtype``; an error if it overflows there."""
    if _compute_dtype(dtype) == dtype:
        return out
    cast = {n: getattr(out, n).astype(dtype) for n in names if getattr(out, n) is not None}  # cov2 for x2=None
    for n, a in cast.items():
        if _is_concrete(a) and not np.isfinite(np.asarray(a, np.float32)).all():
            raise FloatingPointError(f"{name}: the kernel's {n} exceeds the range of {jnp.dtype(dtype).name} "
                                     f"(largest |value| {float(jnp.max(jnp.abs(getattr(out, n)))):.3g}); "
                                     "pass float32 inputs")
    return out.replace(**cast)


def _is_input(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, Kernel))


def _several(x) -> bool:
    """Several inputs (a list or tuple of arrays or Kernels, possibly nested), not one array written
    as nested numbers."""
    return isinstance(x, (list, tuple)) and any(_is_input(e) for e in jax.tree.leaves(x, is_leaf=_is_input))


def _refuse_non_finite(where: str, k: Kernel) -> None:
    for name in ("nngp", "ntk"):
        a = getattr(k, name)
        if a is not None and _is_concrete(a) and not np.isfinite(np.asarray(a)).all():
            raise FloatingPointError(f"{where}: the {name} has non-finite values")


def _check_inputs(x1, x2, mask_constant=None):
    """``(x1, x2, masks)``: ``x1``, ``x2`` as JAX arrays of one dtype, checked: a float dtype of
    `FLOAT_DTYPES`, batch first with a channel axis, no empty axis, the same shape but the batch
    axis, and (on concrete values; a user's ``jit`` skips this) no NaN or infinite values once the
    entries equal to ``mask_constant`` are zeroed (`kernels.stax.masking.input_mask`); ``masks``
    the position masks ``(mask1, mask2)`` (``mask2`` ``None`` when ``x2`` is), or ``None``."""
    arrays, masks = [], []
    for label, x in (("x1", x1), ("x2", x2)):
        if x is None:
            arrays.append(None)
            continue
        if not isinstance(x, jax.Array):
            x = np.asarray(x)  # its dtype is checked before JAX sees it (object, string arrays)
        if x.dtype.name not in FLOAT_DTYPES:
            raise argument_error("kernel_fn", label, f"an array of dtype {'/'.join(FLOAT_DTYPES)}",
                                 f"dtype {x.dtype} (shape {x.shape})", TypeError)
        if x.ndim < 2:
            raise argument_error("kernel_fn", label, "batch-first with a channel axis, (N, features) or "
                                 "(N, *spatial, C)", f"shape {x.shape}")
        if 0 in x.shape:
            raise argument_error("kernel_fn", label, "non-empty along every axis (examples, positions "
                                 "and channels)", f"shape {x.shape}")
        if mask_constant is not None:
            x, mask = masking.input_mask(jnp.asarray(x), mask_constant)
            masks.append(mask)
        # NumPy, not jnp: a concrete array captured inside a user's jit would trace.
        if _is_concrete(x):
            values = check_examples("kernel_fn", label, np.asarray(x))
            # Channel sums of squares must fit the dtype they are computed in.
            computed_in = _compute_dtype(jax.dtypes.canonicalize_dtype(x.dtype))  # float32 without x64
            limit = math.sqrt(float(jnp.finfo(computed_in).max) / x.shape[-1])
            largest = float(np.max(np.abs(values.astype(np.float64))))
            if largest > limit:
                raise argument_error("kernel_fn", label, f"at most {limit:.3g} in absolute value, so that "
                                     f"channel sums of squares fit in {jnp.dtype(computed_in).name}",
                                     f"values up to {largest:.3g} (dtype {x.dtype}, shape {x.shape})")
        arrays.append(jnp.asarray(x))
    x1, x2 = arrays
    masks = None if mask_constant is None else (masks[0], masks[1] if len(masks) > 1 else None)
    if x2 is not None:
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"kernel_fn: x1 and x2 must agree in every axis but the batch axis; "
                             f"got x1 {x1.shape} and x2 {x2.shape}")
        if x1.dtype != x2.dtype:  # the wider of the two, as NumPy would
            common = jnp.promote_types(x1.dtype, x2.dtype)
            x1, x2 = x1.astype(common), x2.astype(common)
    return x1, x2, masks


def _with_input_axes(rule: Callable, axes: Optional[tuple]) -> Callable:
    """``rule`` applied to input kernels that record the inputs' layout ``axes`` (`Kernel.axes`)."""
    return rule if axes is None else (lambda k: rule(k.replace(axes=axes)))


def _canonical_inputs(where: str, declared: Optional[tuple], x1, x2, batch_axis, channel_axis):
    """``(x1, x2, axes)``: the inputs transposed batch first and channels last from the layout the user
    (``batch_axis``, ``channel_axis``) or else the network (``declared``) gives, and that layout as
    `Kernel.axes` (``None``: already canonical). Positions keep their order."""
    from kernels.stax import layout  # layout builds on this module's KernelFn
    b, c = (0, -1) if declared is None else declared
    b = b if batch_axis is None else layout.check_axis_argument(where, "batch_axis", batch_axis)
    c = c if channel_axis is None else layout.check_axis_argument(where, "channel_axis", channel_axis)
    if (b, c) == (0, -1):
        return x1, x2, None
    x1 = x1 if isinstance(x1, (jax.Array, np.ndarray)) else np.asarray(x1)
    perm = layout.axes_perm(where, x1.ndim, b, c)
    if x2 is not None:
        x2 = x2 if isinstance(x2, (jax.Array, np.ndarray)) else np.asarray(x2)
        if x2.ndim != x1.ndim:
            raise ValueError(f"{where}: x1 and x2 must have the same rank; got x1 {x1.shape} and x2 {x2.shape}")
    return x1.transpose(perm), None if x2 is None else x2.transpose(perm), layout.kernel_axes(perm)


def _check_finite_output(kernel_fn: KernelFn, x1, x2, full, names, out, axes=None):
    """An error naming the layer that made the first NaN or infinite value of ``out`` (every branch's)."""
    present = [(path, n, getattr(k, n)) for path, k in branch_items(out) for n in names if getattr(k, n) is not None]
    if not all(_is_concrete(a) for _, _, a in present):
        return  # inside a user's jit: documented as unchecked
    bad = [(path, n, np.asarray(a)) for path, n, a in present if not np.isfinite(np.asarray(a)).all()]
    if not bad:
        return
    # Re-run the rules, checking every layer, on the first offending pair only: the whole
    # batch, evaluated at once, could need far more memory than the blocked evaluation did.
    path, name, array = bad[0]
    index = tuple(int(t) for t in np.argwhere(~np.isfinite(array))[0])
    other = x1 if x2 is None else x2
    if name in ("nngp", "ntk"):
        i, j = index[:2]
        a, b = x1[i:i + 1], (None if x2 is None and i == j else other[j:j + 1])
    else:
        a, b = (x1 if name == "cov1" else other)[index[0]:index[0] + 1], None
    _Diagnosis.active = True
    try:
        _with_input_axes(kernel_fn.rule, axes)(input_kernel(a, b, full))
    finally:
        _Diagnosis.active = False
    raise FloatingPointError(f"{kernel_fn.name}: the kernel contains NaN or infinite values "
                             f"(first at {name}{list(index)}{branch_label(path)})")


def checked(name: str, rule: Callable[[Kernel], Kernel]) -> Callable[[Kernel], Kernel]:
    """Wraps a leaf layer's rule so a diagnosis run names the layer that made a non-finite value."""
    def wrapped(k):
        out = blocks.through_leaf(wrapped, rule, k)  # the leaf names itself in the kernel's path
        if _Diagnosis.active:
            outs = [out] if isinstance(out, Kernel) else out  # FanOut returns one kernel per branch
            bad = [f for f in ("nngp", "ntk", "cov1", "cov2")
                   if any(getattr(o, f) is not None and not bool(jnp.isfinite(getattr(o, f)).all()) for o in outs)]
            if bad:
                raise FloatingPointError(
                    f"{name}: produced NaN or infinite values in {', '.join(bad)} "
                    f"(input kernel finite: {bool(jnp.isfinite(k.nngp).all())}); "
                    "check the activation's domain (e.g. Gaussian needs b < 1 / (2 var)) or the weights' scale; "
                    "float32 overflows where products of variances pass 3.4e38 (variances above 1.8e19): compute "
                    "in float64, or pass do_stabilize=True to Relu, LeakyRelu, ABRelu or Abs")
        return out
    return wrapped


class _Functions(NamedTuple):
    init_fn: Callable
    apply_fn: Callable
    kernel_fn: KernelFn


class Layer(_Functions):
    """A layer or network: unpacks as ``init_fn, apply_fn, kernel_fn``.

    The three functions are named after the layer (``Dense``, ``serial``), as neural-tangents
    names them: code that branches on ``init_fn.__name__`` ports.
    """

    __slots__ = ()

    def __new__(cls, init_fn: Callable, apply_fn: Callable, kernel_fn: KernelFn):
        for fn in (init_fn, apply_fn):
            try:
                fn.__name__ = kernel_fn.__name__
            except (AttributeError, TypeError):  # a callable object without a settable name
                pass
        return super().__new__(cls, init_fn, apply_fn, kernel_fn)


def describe(layer_name: str, **kwargs) -> str:
    """``Conv(out_chan=64, padding='SAME')``: how errors name a layer."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{layer_name}({args})"


@dataclasses.dataclass(frozen=True)
class Requires:
    """What a layer's kernel rule needs of its input, declared as data and checked by `leaf`.

    Attributes:
      gaussian: the input is one Gaussian field at infinite width (the outputs of Dense,
        Conv or attention, possibly pooled, summed or normalized), so that a dual map applies.
      spatial_ndim: the input has exactly this many spatial axes (``None``: any number).
      spatial: the input has at least one spatial axis.
      known_mean: the channel mean of the input has a closed form (`Kernel.mean1` is set).
    """

    gaussian: bool = False
    spatial_ndim: Optional[int] = None
    spatial: bool = False
    known_mean: bool = False


def check_requirements(name: str, requires: Requires, k: Kernel) -> None:
    """Refuses, naming the layer and the reason, an input kernel that ``requires`` excludes.

    Runs while the network is traced, before any arithmetic of the kernel.
    """
    if not isinstance(k, Kernel):
        raise ValueError(f"{name}: expects one input, got {len(k)} branches; merge them first "
                         "(FanInSum, FanInConcat, FanInProd)")
    if requires.gaussian and not k.is_gaussian:
        raise ValueError(f"{name}: its inputs must be Gaussian at infinite width (the outputs of Dense, "
                         "Conv or GlobalSelfAttention, possibly pooled, summed or normalized); it follows "
                         "the network's inputs, another activation, Flatten, FanInProd or FanInConcat")
    d = k.spatial_ndim
    if requires.spatial_ndim is not None and d != requires.spatial_ndim:
        want = requires.spatial_ndim
        raise ValueError(f"{name}: needs inputs with {want} spatial axes, (N, {want} spatial axes, C) of "
                         f"rank {want + 2}; got inputs of shape {spatial_description(k)}")
    if requires.spatial and d == 0:
        raise ValueError(f"{name}: needs inputs with spatial axes (N, *S, C); got {spatial_description(k)}")
    if requires.known_mean and k.mean1 is None:
        raise ValueError(f"{name}: the channel mean of its inputs is unknown (they follow an Elementwise "
                         "activation given only its nngp_fn, a custom layer, or, in kernel_fn(Kernel), the end of "
                         "another network that is not a Dense, Conv or attention), so it cannot be subtracted at "
                         "infinite width; use a built-in activation or ElementwiseNumerical before it, or compute "
                         "the whole network in one kernel_fn")


def leaf(name: str, init_fn, apply_fn, rule, needs_full=keep_requirement, requires: Requires = Requires(),
         keywords: tuple = (), masks: Optional[masking.Masking] = None) -> Layer:
    """A layer with no sub-layers; its rule runs only on inputs that meet ``requires``.

    ``keywords``: what its ``apply_fn`` and ``kernel_fn`` take beyond `APPLY_KEYWORDS` (`KernelFn.keywords`).
    ``masks``: how it treats masked inputs (`kernels.stax.masking.Masking`); ``None``: it refuses
    them, naming itself and ``mask_constant``.
    """
    def requiring(k):
        if masking.is_masked(k):
            if masks is None:
                raise masking.refuse(f"{name}: kernel_fn")
            check_requirements(name, requires, k)
            return masking.through(masks, rule, k)
        check_requirements(name, requires, k)
        return rule(k)
    return Layer(init_fn, guarded_apply(name, apply_fn, keywords, masks),
                 KernelFn(name, checked(name, requiring), needs_full, requires, tuple(keywords)))


# The keywords every apply_fn takes, as in neural-tangents: ``rng`` (randomness for stochastic
# layers such as Dropout; deterministic layers need none, so it does not change their output)
# and ``mask_constant`` (input entries equal to it are masked: `kernels.stax.masking`).
APPLY_KEYWORDS = ("rng", "mask_constant")


def check_apply_keywords(name: str, kwargs: dict, keywords: tuple = ()) -> None:
    """Refuses, by name, an ``apply_fn`` keyword the layer does not implement.

    neural-tangents accepts and silently ignores unknown keywords; here a graph (``pattern``)
    given to a network without an `Aggregate` would aggregate nothing.
    ``keywords``: what the layer or network takes beyond `APPLY_KEYWORDS` (`KernelFn.keywords`).
    """
    masking.check_mask_constant(f"{name}: apply_fn", kwargs.get("mask_constant"))
    accepted = APPLY_KEYWORDS + tuple(keywords)
    unexpected = {k: v for k, v in kwargs.items() if k not in accepted}
    if "pattern" in unexpected:
        raise TypeError(f"{name}: apply_fn: unexpected keyword argument pattern: it is the graph of an Aggregate "
                        "layer, and this network has none")
    reject_unexpected(f"{name}: apply_fn", unexpected, ("params", "inputs") + accepted)


def input_axes_of(layers) -> Optional[tuple]:
    """`KernelFn.input_axes` of a network of ``layers``: those of the first that declares any (neural-tangents)."""
    return next((layer.kernel_fn.input_axes for layer in layers if layer.kernel_fn.input_axes is not None), None)


def keywords_of(layers) -> tuple:
    """The `KernelFn.keywords` a network of ``layers`` takes: those of any of them."""
    return tuple(sorted({w for layer in layers for w in layer.kernel_fn.keywords}))


def keywords_for(layer, kwargs: dict) -> dict:
    """``kwargs`` without the keywords beyond `APPLY_KEYWORDS` that ``layer`` does not take: a network
    passes ``pattern`` only to its parts that have an `Aggregate`."""
    return {k: v for k, v in kwargs.items() if k in APPLY_KEYWORDS or k in layer.kernel_fn.keywords}


def check_pattern_keyword(where: str, keywords: tuple, pattern, x1, x2, block_size):
    """``kernel_fn``'s ``pattern`` as ``(pattern1, pattern2)`` (``pattern2`` ``None`` when ``x2`` is),
    or ``None`` for no aggregation; refused by name by a network without an `Aggregate`.

    The graphs' shapes are checked by the `Aggregate` layer, which knows its axes; here their
    number and batch sizes (leading axes ``N1``, ``N2``, where they are arrays).
    """
    if pattern is None or (isinstance(pattern, (tuple, list)) and len(pattern) == 2
                           and pattern[0] is None and pattern[1] is None):
        return None
    if "pattern" not in keywords:
        raise TypeError(f"{where}: unexpected keyword argument pattern: it is the graph of an Aggregate layer, "
                        "and this network has none")
    if not (isinstance(pattern, (tuple, list)) and len(pattern) == 2):
        raise argument_error(where, "pattern", "None or a pair (pattern1, pattern2) of the graphs of x1's and "
                             "x2's examples", f"{type(pattern).__name__}", TypeError)
    p1, p2 = pattern
    if p1 is None or (p2 is None and x2 is not None):
        raise argument_error(where, "pattern", "a pair of graphs, both given (pattern2 may be None only "
                             "when x2 is None)", f"pattern1={'None' if p1 is None else 'given'}, "
                             f"pattern2={'None' if p2 is None else 'given'}")
    for label, p, x in (("pattern1", p1, x1), ("pattern2", p2, x2)):
        if p is not None and x is not None and hasattr(p, "shape") and (p.ndim == 0 or p.shape[0] != x.shape[0]):
            raise argument_error(where, "pattern", f"graphs batch first: {label} with leading axis "
                                 f"{x.shape[0]} (the examples of x{label[-1]})", f"{label} of shape {p.shape}")
    if x2 is None and p2 is not None:
        same = p2 is p1 or (_is_concrete(p1) and _is_concrete(p2) and np.shape(p1) == np.shape(p2)
                            and np.array_equal(np.asarray(p1), np.asarray(p2)))
        if not same:
            raise argument_error(where, "pattern", "(pattern1, None) or (pattern1, pattern1) when x2 is None",
                                 "a pattern2 different from pattern1")
        p2 = None
    if block_size not in (None, 0):
        raise NotImplementedError(f"{where}: argument `block_size` must be None or 0 with a `pattern` (graph "
                                  f"kernels are evaluated in one piece); received block_size={block_size!r}. "
                                  "Tile them with kernels.batch, which slices the patterns")
    return p1, p2


# `guarded_apply`'s ``masks`` for combinators (serial, parallel): their parts take `Masked` inputs themselves.
PASS_MASKS = "parts"


def guarded_apply(name: str, apply_fn: Callable, keywords: tuple = (), masks=None,
                  input_axes: Optional[tuple] = None) -> Callable:
    """``apply_fn`` that checks its keywords (`check_apply_keywords`) before running, and handles
    ``mask_constant`` (`kernels.stax.masking`).

    ``masks``: a leaf's `Masking` (``None``: masked inputs refused by name), or `PASS_MASKS` for a
    combinator. ``input_axes``: a combinator's `KernelFn.input_axes` (its inputs' batch and channel
    axes, over which masks of positions are taken: `kernels.stax.layout.masked_inputs`).
    Called by the user with ``mask_constant``, the inputs are masked, the layer runs on `Masked`
    values, and its outputs come back as arrays zero at masked positions (neural-tangents'
    ``unmask_fn(apply_fn)``); called by a combinator with `Masked` inputs, it returns `Masked`.
    """
    @own_rank_promotion
    def apply(params, inputs, **kwargs):
        if "pattern" not in keywords and "pattern" in kwargs and kwargs["pattern"] is None:
            del kwargs["pattern"]  # no graph given to a network without an Aggregate: nothing is ignored
        check_apply_keywords(name, kwargs, keywords)
        mask_constant = kwargs.pop("mask_constant", None)
        outermost = mask_constant is not None and not masking.carries_masks(inputs)
        if outermost and input_axes not in (None, (0, -1)):
            from kernels.stax import layout  # layout builds on this module's Layer
            inputs = layout.masked_inputs(f"{name}: apply_fn", inputs, mask_constant, input_axes)
        elif outermost:
            inputs = masking.mask_inputs(inputs, mask_constant)
        if not masking.carries_masks(inputs):
            return apply_fn(params, inputs, **kwargs)
        if masks == PASS_MASKS:
            out = apply_fn(params, inputs, **kwargs)
        else:
            out = masking.apply_leaf(name, masks, apply_fn, params, inputs, kwargs)
        return masking.unmask(out) if outermost else out
    return apply


def spatial_description(k: Kernel) -> str:
    """How an error shows the input shape a kernel stands for."""
    return "(N, " + ", ".join(str(s) for s in k.spatial_shape + (k.channels,)) + ")"

