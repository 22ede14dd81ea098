"""What a layer is: a triple ``(init_fn, apply_fn, kernel_fn)``.

``kernel_fn`` is a `KernelFn`: callable as neural-tangents' ``kernel_fn(x1, x2=None, get=None)``
and carrying, as plain data, the layer's kernel rule (``Kernel -> Kernel``) and
which position covariances the rule needs from its input given what its output
must keep (`KernelFn.needs_full`). The network-wide decision — keep every pair
of positions, or only equal positions — is made once per call by walking the
network backwards from its output (`network_needs_full`).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from kernels.kernel import Kernel, input_kernel, single_kernel, to_neural_tangents_layout
from kernels.stax import blocks

GET_NAMES = ("nngp", "ntk", "cov1", "cov2")

# Requirement: whether the output must keep position pairs; a tuple for several outputs.
Requirement = Union[bool, tuple]


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
    """

    name: str
    rule: Callable[[Any], Any]
    needs_full: Callable[[Requirement], Requirement] = keep_requirement

    def __call__(self, x1, x2=None, get=None, *, block_size=None, **kwargs):
        """Kernels of the network's outputs on ``x1`` and ``x2``.

        Args:
          x1: ``(N1, *S, C)`` inputs, batch first, channels last.
          x2: ``(N2, *S, C)`` or ``None`` (then ``x2 = x1``).
          get: ``None`` for the `Kernel`; a name (``"nngp"``, ``"ntk"``, ``"cov1"``,
            ``"cov2"``) for one array; a tuple of names for a named tuple of arrays.
          block_size: pairs of examples are evaluated ``block_size x block_size`` at a
            time (`kernels.stax.blocks`: each example's self covariances computed once,
            only blocks on or above the diagonal when ``x2 is None``, memory bounded by a
            block). ``None`` (default) chooses by size and backend; ``0`` evaluates every
            pair at once.

        Returns:
          Arrays ``(N1, N2)`` for a flat output; spatial outputs keep position pairs
          in neural-tangents' order ``(N1, N2, S_1, S'_1, ...)``.
        """
        if kwargs:
            raise TypeError(f"{self.name}: kernel_fn got unexpected keyword arguments {sorted(kwargs)}")
        names = _normalize_get(get)
        x1, x2 = _check_inputs(x1, x2)
        full = x1.ndim > 2 and any_requirement(self.needs_full(True))
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        b = blocks.plan(x1.shape[0], n2, blocks.pair_elements(x1, full), block_size, jax.default_backend())
        out = self._evaluate(x1, x2, full, names, b)
        _check_finite_output(self, x1, x2, full, names, out)
        if get is None:
            return out
        if isinstance(get, str):
            return getattr(out, get)
        return _named_tuple(names)(*(getattr(out, n) for n in names))

    def _forward(self, x1, x2, full: bool, names: tuple, b: int) -> Kernel:
        if b:  # already in neural-tangents' layout, the one kernels.tiling mirrors in
            k = blocks.evaluate(self.rule, x1, x2, full, b, name=self.name)
            nt = lambda a, batch_ndim: a
        else:
            k = single_kernel(self.rule(input_kernel(x1, x2, full)), self.name)
            nt = functools.partial(to_neural_tangents_layout, full=k.full, d=k.spatial_ndim)
        return k.replace(
            nngp=nt(k.nngp, 2) if "nngp" in names else None,
            ntk=nt(k.ntk, 2) if "ntk" in names else None,
            cov1=nt(k.cov1, 1) if "cov1" in names else None,
            cov2=(nt(k.cov2_or_cov1, 1) if "cov2" in names else None),
        )

    @functools.cached_property
    def _evaluate(self):
        return jax.jit(self._forward, static_argnames=("full", "names", "b"))


def _normalize_get(get) -> tuple:
    if get is None:
        return GET_NAMES
    names = (get,) if isinstance(get, str) else tuple(get)
    for n in names:
        if n not in GET_NAMES:
            raise ValueError(f"get={get!r}: unknown name {n!r}; expected one of {GET_NAMES}")
    return names


@functools.lru_cache(maxsize=None)
def _named_tuple(names: tuple):
    return collections.namedtuple("Kernel", names)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(x1, x2):
    arrays = []
    for label, x in (("x1", x1), ("x2", x2)):
        if x is None:
            arrays.append(None)
            continue
        if not isinstance(x, jax.Array):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"kernel_fn: {label} must be a floating-point array, got dtype {x.dtype}")
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ValueError(f"kernel_fn: {label} has no examples (shape {x.shape})")
        if x.ndim < 2:
            raise ValueError(f"kernel_fn: {label} must be batch-first with a channel axis, "
                             f"(N, features) or (N, *spatial, C); got shape {x.shape}")
        # NumPy, not jnp: a concrete array captured inside a user's jit would trace.
        if _is_concrete(x) and not np.isfinite(np.asarray(x)).all():
            bad = np.argwhere(~np.isfinite(np.asarray(x)))[0]
            raise ValueError(f"kernel_fn: {label} contains NaN or infinite values "
                             f"(first at index {tuple(int(i) for i in bad)}, shape {x.shape})")
        arrays.append(x)
    x1, x2 = arrays
    if x2 is not None:
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"kernel_fn: x1 and x2 must agree in every axis but the batch axis; "
                             f"got x1 {x1.shape} and x2 {x2.shape}")
        if x1.dtype != x2.dtype:
            x2 = x2.astype(x1.dtype)
    return x1, x2


def _check_finite_output(kernel_fn: KernelFn, x1, x2, full, names, out: Kernel):
    present = [(n, getattr(out, n)) for n in names if getattr(out, n) is not None]
    if not all(_is_concrete(a) for _, a in present):
        return  # inside a user's jit: documented as unchecked
    bad = [(n, np.asarray(a)) for n, a in present if not np.isfinite(np.asarray(a)).all()]
    if not bad:
        return
    # Re-run the rules, checking every layer, on the first offending pair only: the whole
    # batch, evaluated at once, could need far more memory than the blocked evaluation did.
    name, array = bad[0]
    index = tuple(int(t) for t in np.argwhere(~np.isfinite(array))[0])
    other = x1 if x2 is None else x2
    if name in ("nngp", "ntk"):
        i, j = index[:2]
        a, b = x1[i:i + 1], (None if x2 is None and i == j else other[j:j + 1])
    else:
        a, b = (x1 if name == "cov1" else other)[index[0]:index[0] + 1], None
    _Diagnosis.active = True
    try:
        kernel_fn.rule(input_kernel(a, b, full))
    finally:
        _Diagnosis.active = False
    raise FloatingPointError(f"{kernel_fn.name}: the kernel contains NaN or infinite values "
                             f"(first at {name}{list(index)})")


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
                    "check the activation's domain (e.g. Gaussian needs b < 1 / (2 var)) or the weights' scale")
        return out
    return wrapped


class Layer(NamedTuple):
    """A layer or network: unpacks as ``init_fn, apply_fn, kernel_fn``."""

    init_fn: Callable
    apply_fn: Callable
    kernel_fn: KernelFn


def describe(layer_name: str, **kwargs) -> str:
    """``Conv(out_chan=64, padding='SAME')``: how errors name a layer."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{layer_name}({args})"


def leaf(name: str, init_fn, apply_fn, rule, needs_full=keep_requirement) -> Layer:
    """A layer with no sub-layers."""
    return Layer(init_fn, apply_fn, KernelFn(name, checked(name, rule), needs_full))


def spatial_description(k: Kernel) -> str:
    """How an error shows the input shape a kernel stands for."""
    return "(N, " + ", ".join(str(s) for s in k.spatial_shape + (k.channels,)) + ")"

