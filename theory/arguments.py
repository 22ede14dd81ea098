"""Checks of the arguments of `theory`'s public functions, in the one wording of `kernels.checks`.

Every check names the function (``where``) and the argument, and says what was expected and
what was received. They run on concrete values at the public boundary (see `theory.linalg`).

Traced values (inside a user's `jax.jit` or `jax.grad`) get the checks that need no values
(type, dtype, shape); the value checks (finite, in range) are skipped for them, and only where
a caller says `traceable=True` does a scalar or a set of times pass through as a tracer.

Times: `t` (and `steps`) are real, non-negative, not NaN; ``inf`` is allowed where a function
says so (the limit of training to convergence). A negative time is refused rather than
integrated backwards: gradient flow run backwards amplifies every eigendirection by
``exp(s * lambda)`` and has no regularized meaning (neural-tangents accepts it silently).
"""
import numbers

import jax
import numpy as np

from kernels.checks import argument_error, check_examples, parse_get, reject_unexpected

__all__ = ["real_array", "scalar", "integer", "flag", "real_values", "times", "one_name", "examples", "parse_get",
           "reject_unexpected", "argument_error"]


def _is_real_dtype(dtype):
    return dtype.name == "bfloat16" or (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating))


def real_array(where, name, value, *, nonempty=True, finite=True):
    """Checks an array of real numbers: no complex, string, object or boolean dtype.

    Args:
      where: the function, for errors.
      name: the argument's name.
      value: an array-like (a JAX array is checked without being converted unless `finite`).
      nonempty: refuse a zero-size array.
      finite: refuse NaN and infinite entries, naming the first.

    Returns:
      `value` as an array (NumPy unless it was already an array with a dtype).
    """
    array = value if hasattr(value, "dtype") and hasattr(value, "shape") else None
    if array is None:
        try:
            array = np.asarray(value)
        except Exception as error:  # ragged lists and the like
            raise argument_error(where, name, "an array of real numbers", f"{type(value).__name__} ({error})",
                                 TypeError) from None
    dtype = np.dtype(array.dtype)
    if dtype == np.bool_ or not _is_real_dtype(dtype):
        raise argument_error(where, name, "an array of real numbers",
                             f"dtype {dtype} (shape {tuple(array.shape)})", TypeError)
    if nonempty and 0 in tuple(array.shape):
        raise argument_error(where, name, "non-empty along every axis", f"shape {tuple(array.shape)}")
    if finite and not _traced(array):
        host = np.asarray(array, np.float64)
        bad = ~np.isfinite(host)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise argument_error(where, name, "finite (no NaN or infinite values)",
                                 f"a non-finite value at index {first} (shape {host.shape})")
    return array


def _traced(value):
    return isinstance(value, jax.core.Tracer)


def _traced_real(where, name, value, expected, ndim=None):
    """A traced value of a real (non-boolean) dtype and, if `ndim` is given, that many axes."""
    dtype = np.dtype(value.dtype)
    if dtype == np.bool_ or not _is_real_dtype(dtype) or (ndim is not None and value.ndim != ndim):
        raise argument_error(where, name, expected, f"a traced value of dtype {dtype} and shape {value.shape}",
                             TypeError)
    return value


def _real_scalar(where, name, value, expected):
    """``value`` as a Python float if it is one real number (not a bool, a string or complex)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise argument_error(where, name, expected, value, TypeError)
    array = np.asarray(value) if not isinstance(value, numbers.Number) else None
    if array is not None and (array.ndim != 0 or not _is_real_dtype(array.dtype) or array.dtype == np.bool_):
        raise argument_error(where, name, expected, value, TypeError)
    if isinstance(value, numbers.Number) and not isinstance(value, numbers.Real):
        raise argument_error(where, name, expected, value, TypeError)
    return float(value)


def scalar(where, name, value, *, low=None, low_open=False, high=None, high_open=True, allow_inf=False,
           traceable=False):
    """One real number within bounds.

    Args:
      where, name: for errors.
      value: what the user passed.
      low, high: bounds (None: unbounded on that side).
      low_open, high_open: whether the bound itself is excluded.
      allow_inf: accept +-inf (NaN is always refused).
      traceable: a traced scalar is returned as it is (its bounds unchecked).

    Returns:
      The value as a Python float (or the tracer).
    """
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    bounds = " and ".join(b for b in (lo, hi) if b)
    expected = f"a {'' if allow_inf else 'finite '}real number" + (f" {bounds}" if bounds else "")
    if traceable and _traced(value):
        return _traced_real(where, name, value, expected, ndim=0)
    number = _real_scalar(where, name, value, expected)
    bad = np.isnan(number) or (np.isinf(number) and not allow_inf)
    bad = bad or (low is not None and (number <= low if low_open else number < low))
    bad = bad or (high is not None and (number >= high if high_open else number > high))
    if bad:
        raise argument_error(where, name, expected, value)
    return number


def integer(where, name, value, *, low=None):
    """One integer (Python or NumPy; a float with an integer value is refused), at least `low`."""
    expected = "an integer" + ("" if low is None else f" >= {low}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise argument_error(where, name, expected, value, TypeError)
    if low is not None and value < low:
        raise argument_error(where, name, expected, value)
    return int(value)


def flag(where, name, value):
    """A boolean (Python or NumPy): a string such as ``"False"`` would otherwise count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise argument_error(where, name, "True or False", value, TypeError)
    return bool(value)


def real_values(where, name, value, *, low=None, low_open=False, allow_inf=False, integer_valued=False,
                nonempty=True, traceable=False):
    """Real numbers (a scalar or an array, bools, strings and complex refused), not NaN, within bounds.

    Args:
      where, name: for errors.
      value: what the user passed.
      low: lower bound (None: none); `low_open` excludes it.
      allow_inf: accept +-inf (within the bound).
      integer_valued: every finite value must be an integer.
      nonempty: refuse a zero-size array.
      traceable: a traced array is returned as it is (dtype and size checked, values not).

    Returns:
      float64 NumPy array of `value`'s shape (or the tracer).
    """
    kind = "integers" if integer_valued else "real numbers"
    bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
    expected = f"{kind}{bound}{' (inf allowed)' if allow_inf else ', finite'}, a scalar or an array"
    if traceable and _traced(value):
        if nonempty and value.size == 0:
            raise argument_error(where, name, expected, f"an empty array of shape {value.shape}")
        return _traced_real(where, name, value, expected)
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise argument_error(where, name, expected, repr(value), TypeError)
    try:
        array = np.asarray(value)
    except Exception:
        raise argument_error(where, name, expected, type(value).__name__, TypeError) from None
    if array.dtype == np.bool_ or not _is_real_dtype(array.dtype):
        raise argument_error(where, name, expected, f"{value!r} (dtype {array.dtype})", TypeError)
    if nonempty and array.size == 0:
        raise argument_error(where, name, expected, f"an empty array of shape {array.shape}")
    array = array.astype(np.float64)
    bad = np.isnan(array) | (np.isinf(array) & (not allow_inf))
    if low is not None:
        bad = bad | ((array <= low) if low_open else (array < low))
    if integer_valued:
        finite = np.isfinite(array)
        bad = bad | (finite & (array != np.round(np.where(finite, array, 0.0))))
    if bad.any():
        first = array[bad].reshape(-1)[0]
        received = repr(value) if array.ndim == 0 else f"{first!r} among {array.size} values"
        raise argument_error(where, name, expected, received)
    return array


def times(where, name, value, *, integer_valued=False, allow_inf=True, traceable=False):
    """Training times (or step counts): real, non-negative, not NaN; a scalar or a non-empty array.

    Returns:
      float64 NumPy array of `value`'s shape (or, if `traceable`, a tracer as it is).
    """
    return real_values(where, name, value, low=0, allow_inf=allow_inf, integer_valued=integer_valued,
                       traceable=traceable)


def one_name(where, name, value, allowed):
    """One name from `allowed`, case-insensitive, parsed by `kernels.checks.parse_get`; returned in lower case."""
    parsed = parse_get(value, allowed, where)
    if parsed.form != "one":
        raise argument_error(where, name, f"one name from {tuple(allowed)}", value)
    return parsed.names[0]


def examples(where, name, x):
    """A batch-first array of real inputs, `(N, ...)` with N >= 1, finite (`kernels.checks.check_examples`).

    Integer inputs are accepted (the kernel function decides whether it takes them). Returns
    the checked host copy (for a tracer: a stand-in of its shape and dtype, its values unchecked);
    callers pass the original on to kernel functions.
    """
    if _traced(x):
        x = np.broadcast_to(np.zeros((), x.dtype), x.shape)  # no memory: dtype and shape checks only
        return check_examples(where, name, x, min_ndim=2, floating=False, finite=False)
    return check_examples(where, name, x, min_ndim=2, floating=False, finite=True)
