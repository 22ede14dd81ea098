"""One check per concept, shared by every public entry point of `kernels`, `theory` and `experiments`.

* `parse_get`: the ``get`` argument of every kernel function and predictor.
* `reject_unexpected`: keyword arguments a function does not implement are refused by name,
  never accepted and ignored.
* `argument_error`: the one wording of "expected versus received" for a bad argument.
* `check_examples`: an array of examples (batch first) that a public function receives.

Errors say where (the function or layer), which argument, what was expected and what was
received, in the manner of equinox's messages.
"""
from __future__ import annotations

import collections
import functools
import warnings
from typing import Iterable, NamedTuple, Optional

import jax
import numpy as np

__all__ = ["Get", "parse_get", "reject_unexpected", "argument_error", "check_examples", "FLOAT_DTYPES"]

# The input dtypes kernels are computed in. float8 and the integer types are refused: a kernel
# computed in float8 was measured wrong by up to 188%.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class Get(NamedTuple):
    """A parsed ``get``.

    Attributes:
      names: the requested names, in order, lower case, without repeats.
      form: ``"all"`` (``get=None``: the whole result), ``"one"`` (a single name: one array)
        or ``"tuple"`` (a tuple of names: a named tuple of arrays).
    """

    names: tuple
    form: str

    def pack(self, values: dict, whole=None):
        """The result ``get`` asks for, from ``values`` (name -> array).

        ``whole`` is returned for ``form == "all"`` when given (e.g. a `Kernel`); otherwise a
        named tuple of every requested name.
        """
        if self.form == "one":
            return values[self.names[0]]
        if self.form == "all" and whole is not None:
            return whole
        return named_tuple(self.names)(*(values[n] for n in self.names))

    @property
    def json(self):
        """A JSON-able form that tells two ``get`` apart (for fingerprints and manifests)."""
        return {"names": list(self.names), "form": self.form}


@functools.lru_cache(maxsize=None)
def named_tuple(names: tuple):
    """The named tuple type returned for ``get=names`` (one type per tuple of names)."""
    return collections.namedtuple("Kernel", names)


def parse_get(get, allowed: Iterable[str], where: str, default: Optional[Iterable[str]] = None) -> Get:
    """Parses ``get``: ``None``, one name, or a non-empty tuple/list of distinct names.

    Names are case-insensitive (``"NTK"`` is ``"ntk"``), as in neural-tangents.

    Args:
      get: what the user passed.
      allowed: the names this function can return.
      where: how errors name the function, e.g. ``"kernel_fn"``.
      default: the names ``get=None`` stands for (default: all of ``allowed``).

    Raises:
      TypeError: ``get`` is not ``None``, a string or a sequence of strings.
      ValueError: an empty sequence, an unknown name, or a name given twice.
    """
    allowed = tuple(allowed)
    if get is None:
        return Get(tuple(allowed if default is None else default), "all")
    if isinstance(get, str):
        names, form = (get,), "one"
    elif isinstance(get, (tuple, list)):
        names, form = tuple(get), "tuple"
    else:
        raise argument_error(where, "get", f"None, a name or a tuple of names from {allowed}", get, TypeError)
    if not names:
        raise argument_error(where, "get", f"at least one name from {allowed}", get)
    lowered = []
    for n in names:
        if not isinstance(n, str):
            raise argument_error(where, "get", f"names (strings) from {allowed}", get, TypeError)
        if n.lower() not in allowed:
            raise argument_error(where, "get", f"names from {allowed}", f"{get!r}, which has the unknown name {n!r}")
        lowered.append(n.lower())
    repeated = sorted({n for n in lowered if lowered.count(n) > 1})
    if repeated:
        raise argument_error(where, "get", "distinct names", f"{get!r}, which repeats {repeated}")
    return Get(tuple(lowered), form)


def argument_error(where: str, argument: str, expected: str, received, kind=ValueError) -> Exception:
    """``where: argument `argument` must be <expected>; received <received>`` as an exception to raise."""
    shown = received if isinstance(received, str) else repr(received)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return kind(f"{where}: argument `{argument}` must be {expected}; received {shown}")


def reject_unexpected(where: str, kwargs: dict, accepted: Iterable[str] = ()) -> None:
    """Refuses keyword arguments that ``where`` does not implement, naming them.

    ``accepted`` lists what it does take, for the message.
    """
    if kwargs:
        accepted = tuple(accepted)
        known = f"; it takes {', '.join(accepted)}" if accepted else ""
        raise TypeError(f"{where}: unexpected keyword argument(s) {', '.join(sorted(map(str, kwargs)))}{known}")


def check_examples(where: str, label: str, x, min_ndim: int = 2, floating: bool = True,
                   finite: bool = True) -> np.ndarray:
    """A host array of examples, batch first, checked: numeric dtype, at least one example, no empty axis.

    Args:
      where: the function, for errors.
      label: the argument's name, e.g. ``"x_train"``.
      x: what the user passed (any array-like; JAX arrays are copied to the host).
      min_ndim: least number of axes (2: ``(N, features)``).
      floating: require one of `FLOAT_DTYPES` (else any real number type, bool excluded).
      finite: refuse NaN and infinite values, naming the first.

    Returns:
      The array as NumPy.
    """
    try:
        array = np.asarray(x)
    except Exception as error:  # ragged lists and the like
        raise argument_error(where, label, "an array", f"{type(x).__name__} ({error})", TypeError) from None
    dtype = array.dtype
    if floating and dtype.name not in FLOAT_DTYPES:
        raise argument_error(where, label, f"an array of dtype {'/'.join(FLOAT_DTYPES)}",
                             f"dtype {dtype} (shape {array.shape})", TypeError)
    if not floating and not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                             or dtype.name == "bfloat16"):
        raise argument_error(where, label, "a real-valued array", f"dtype {dtype} (shape {array.shape})", TypeError)
    if array.ndim < min_ndim:
        raise argument_error(where, label, f"an array of at least {min_ndim} axes, batch first",
                             f"shape {array.shape}")
    if 0 in array.shape:
        raise argument_error(where, label, "non-empty along every axis", f"shape {array.shape}")
    if finite:
        bad = ~np.isfinite(array.astype(np.float64) if dtype.name == "bfloat16" else array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise argument_error(where, label, "finite (no NaN or infinite values)",
                                 f"a non-finite value at index {first} (shape {array.shape})")
    return array


def all_none(x) -> bool:
    """``x`` is ``None`` or a pytree of ``None`` only (neural-tangents' "same inputs" for ``x2``)."""
    return x is None or not jax.tree.leaves(x)


def device_count(where: str, value) -> int:
    """``device_count`` (-1: all local devices, 0: the default one, k: the first k) as a number of local
    devices to use. More than there are (a script written for a larger machine) uses them all and
    warns, naming the argument: the results do not depend on the number of devices."""
    local = jax.local_device_count()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < -1:
        raise argument_error(where, "device_count", f"-1 (all), 0 (the default device) or a positive int "
                             f"(there are {local} local devices)", value)
    if value > local:
        warnings.warn(f"{where}: device_count={value} but there are {local} local devices; using {local}",
                      stacklevel=3)
        return local
    return int(value)


def positive_int(where: str, argument: str, value) -> int:
    """``value`` as an int >= 1 (a width, a channel count, a window size), else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise argument_error(where, argument, "a positive int", value)
    return int(value)


def finite_real(where: str, argument: str, value, optional: bool = False):
    """``value`` as a finite float (``None`` kept where ``optional``), else an error naming it.

    A JAX tracer (a hyperparameter being differentiated, as `theory.fit_hyperparameters`
    does) is returned unchecked: its value is not known while tracing.
    """
    if value is None and optional:
        return None
    if isinstance(value, jax.core.Tracer):
        return value
    if getattr(value, "shape", None) == () and hasattr(value, "dtype"):  # a 0-d NumPy or JAX array
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise argument_error(where, argument, "a finite real number" + (" or None" if optional else ""), value)
    return float(value)


def default_layout(where: str, **axes) -> None:
    """Refuses, naming it, a layout argument other than neural-tangents' default.

    ``axes``: name -> (value, default), e.g. ``batch_axis=(1, 0)``. Only batch-first,
    channels-last inputs are supported; another layout is refused rather than ignored.
    """
    for argument, (value, default) in axes.items():
        if value != default:
            raise argument_error(where, argument, f"{default} (inputs batch first, channels last)", value)
