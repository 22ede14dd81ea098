"""neural-tangents' tools for writing one's own layer, as adapters onto widekit's layers.

A neural-tangents user writes a layer as a function returning ``(init_fn, apply_fn, kernel_fn)``
with ``kernel_fn: Kernel -> Kernel``, decorates it with `layer`, and declares what the rule needs of
its input with `requires` (`Bool`, `Diagonal`). Here:

* `layer` turns such a function into a widekit leaf layer (`kernels.stax.layer.leaf`): its
  ``kernel_fn`` takes inputs or is composed by `serial`/`parallel`, checks its keywords, names the
  layer in errors, and joins the block-by-block evaluation and `kernels.batch`.
* The rule receives a `Kernel` with neural-tangents' public layout: ``nngp``/``ntk`` of shape
  ``(N1, N2)`` for flat outputs, ``(N1, N2, S_1, S'_1, S_2, S'_2, ...)`` with position pairs (or
  ``(N1, N2, *S)`` when only equal positions are kept, ``Kernel.diagonal_spatial``), and ``cov1``/
  ``cov2`` each example's covariance with itself; it returns one by ``k.replace(nngp=..., ...)``.
  widekit converts the layout on the way in and out. When ``get`` leaves the NTK out, the rule is
  handed ``ntk=None``, as in neural-tangents (an NNGP-only rule, such as an RBF kernel, relies on
  it); a rule that cannot take ``None`` (it raises `TypeError` or `AttributeError`, as ``None * x``
  does) is run again with the NTK. The rule's output channel means are unknown,
  so a `LayerNorm` after a custom layer refuses by name.
* `requires` reads ``diagonal_spatial`` (``False``, ``True`` or a `Diagonal`) to decide which
  position covariances the rule needs: ``False`` or ``Diagonal(input=Bool.NO)`` (the default of an
  undecorated rule, as in neural-tangents) keeps every pair of positions; ``Diagonal()`` lets the
  rule run on equal positions only when nothing after it needs pairs (a pointwise layer);
  ``Diagonal(input=Bool.MAYBE, output=Bool.YES)`` or ``True`` marks a readout that only sees equal
  positions (as `Flatten`). ``diagonal_batch`` may only be ``True`` (widekit keeps each example's
  own covariance), ``batch_axis`` only 0 and ``channel_axis`` only -1 (widekit's layout); any other
  requirement is refused by name rather than ignored.
* Masked inputs (``mask_constant``, `kernels.stax.masking`) are honoured by the built-in layers that
  declare how; a custom layer declares nothing, so it refuses a masked input by name (its rule would
  otherwise see masked positions as data). `supports_masking` is therefore accepted and changes
  nothing, `unmask_fn` is the identity (``apply_fn`` already returns plain arrays, zero at masked
  positions, as neural-tangents' ``unmask_fn(apply_fn)`` does), and constructing a `MaskedArray` is
  refused: widekit's ``apply_fn`` takes plain arrays and ``mask_constant``.
"""
from __future__ import annotations

import dataclasses
import enum
import functools

import jax.numpy as jnp

from kernels.checks import argument_error
from kernels.kernel import from_neural_tangents_layout, to_neural_tangents_layout
from kernels.stax import layer as layer_module

_REQUIRES = "_widekit_requires"


class Bool(enum.IntEnum):
    """Three-valued logic of neural-tangents' `Diagonal`: ``NO < MAYBE < YES``; ``&`` is the minimum."""

    NO = 0
    MAYBE = 1
    YES = 2

    def __and__(self, other):
        return Bool(min(int(self), int(other)))

    __rand__ = __and__


@dataclasses.dataclass(frozen=True)
class Diagonal:
    """Whether a rule's input (``input``) and the network's outputs from it on (``output``) may hold
    equal positions only (neural-tangents' meaning; see the module docstring for how widekit uses it)."""

    input: Bool = Bool.YES
    output: Bool = Bool.NO

    def __and__(self, other: "Diagonal") -> "Diagonal":
        """Two layers side by side: what both allow."""
        return Diagonal(self.input & other.input, self.output & other.output)

    __rand__ = __and__

    def __rshift__(self, other: "Diagonal") -> "Diagonal":
        """``other`` applied after ``self``: what the composition ``other(self(.))`` allows.

        If ``self`` already makes every later output diagonal-only, nothing after it matters. Else
        the composition's input may be diagonal-only as far as ``self`` allows, provided ``other``
        can take what ``self`` hands on: not at all when ``self`` passes off-diagonal entries
        on (``output`` NO) to a layer that needs them (``input`` below YES).
        """
        if self.output == Bool.YES:
            return self
        if self.output != Bool.NO and other.input != Bool.NO:
            first = self.input
        elif self.output == Bool.NO and other.input != Bool.YES:
            first = Bool.NO
        else:
            first = self.input & other.input
        return Diagonal(first, other.output)

    def __lshift__(self, other: "Diagonal") -> "Diagonal":
        """``self`` applied after ``other``: ``other >> self``."""
        return other >> self

    def __bool__(self) -> bool:
        """Whether a kernel may keep equal positions only (neural-tangents' ``diagonal_spatial``)."""
        return self.input == Bool.YES and self.output != Bool.NO


def requires(**static_reqs):
    """Declares what a custom rule needs of its input kernel (see the module docstring).

    Returns a decorator for the rule; the requirements are checked when `layer` builds the layer.
    """
    def decorate(kernel_fn):
        setattr(kernel_fn, _REQUIRES, dict(static_reqs))
        return kernel_fn
    return decorate


def _needs_full(name: str, reqs: dict):
    """The requirement map (`kernels.stax.layer`) that ``reqs`` declare, refusing what widekit cannot honour."""
    for key, value in reqs.items():
        if key == "diagonal_batch" and value not in (True, None):
            raise argument_error(f"{name}: requires", "diagonal_batch", "True (each example's own covariance, "
                                 "the only batch layout widekit keeps)", value)
        if key == "batch_axis" and value not in (0, None):
            raise argument_error(f"{name}: requires", "batch_axis", "0 (widekit's batch-first layout)", value)
        if key == "channel_axis" and value not in (-1, None):
            raise argument_error(f"{name}: requires", "channel_axis", "-1 (widekit's channels-last layout)", value)
        if key not in ("diagonal_batch", "diagonal_spatial", "batch_axis", "channel_axis"):
            raise argument_error(f"{name}: requires", key, "one of diagonal_batch, diagonal_spatial, "
                                 "batch_axis, channel_axis", reqs[key], TypeError)
    spatial = reqs.get("diagonal_spatial", False)
    if spatial is None or spatial is False:
        return layer_module.needs_pairs
    if spatial is True:
        return layer_module.needs_diagonal
    if not isinstance(spatial, Diagonal):
        raise argument_error(f"{name}: requires", "diagonal_spatial", "True, False or a stax.Diagonal", spatial,
                             TypeError)
    if spatial.input == Bool.NO:
        return layer_module.needs_pairs
    return layer_module.needs_diagonal if spatial.output == Bool.YES else layer_module.keep_requirement


def layer(layer_fn):
    """Makes a neural-tangents-style layer function (returning ``init_fn, apply_fn, kernel_fn`` with
    ``kernel_fn: Kernel -> Kernel``) a widekit layer; see the module docstring."""
    @functools.wraps(layer_fn)
    def build(*args, **kwargs):
        init_fn, apply_fn, rule = layer_fn(*args, **kwargs)
        name = layer_module.describe(layer_fn.__name__)
        needs_full = _needs_full(name, getattr(rule, _REQUIRES, {}))

        def adapted(k):
            d = k.spatial_ndim
            paired = k.full and d > 0
            view = k.map_arrays(lambda a, b: to_neural_tangents_layout(a, b, True, d)) if paired else k
            wanted = layer_module.NTK_REQUESTED.get()
            out = None
            if not wanted:  # neural-tangents' convention, which an NNGP-only rule (an RBF kernel) relies on
                try:
                    out = rule(view.replace(ntk=None))
                except (TypeError, AttributeError):  # a rule that always reads the NTK (None * x): rerun below
                    pass
            if out is None:
                out = rule(view)
            if not hasattr(out, "nngp") or not hasattr(out, "replace"):
                raise TypeError(f"{name}: its kernel_fn must return a Kernel (k.replace(nngp=..., ntk=...)); "
                                f"it returned {type(out).__name__}")
            if out.ntk is None:  # not asked for: the layers after it compute one that nobody reads
                out = out.replace(ntk=jnp.zeros_like(out.nngp))
            if paired:
                out = out.map_arrays(from_neural_tangents_layout)
            return out.replace(mean1=None, mean2=None)  # a custom rule's channel means are unknown

        return layer_module.leaf(name, init_fn, apply_fn, adapted, needs_full)
    return build


def supports_masking(remask_kernel: bool):
    """neural-tangents' masking decorator, accepted and changing nothing: a custom layer refuses masked
    inputs by name (see the module docstring)."""
    if not isinstance(remask_kernel, bool):
        raise argument_error("supports_masking", "remask_kernel", "True or False", remask_kernel, TypeError)
    return lambda layer_fn: layer_fn


def unmask_fn(fn):
    """neural-tangents strips masks from the outputs of ``fn``; widekit's ``apply_fn`` already returns
    plain arrays, zero at masked positions."""
    return fn


class MaskedArray:
    """neural-tangents' masked array; refused: widekit's ``apply_fn`` takes plain arrays and ``mask_constant``."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("MaskedArray: widekit's apply_fn and kernel_fn take plain arrays with "
                                  "mask_constant=c (entries equal to c are masked) instead")
