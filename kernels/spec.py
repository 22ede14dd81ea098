"""A network written as JSON: `network_from_spec`.

A spec is a list of ``[LayerName, kwargs]`` items applied in series, with the names and
keyword arguments of `kernels.stax` (those of neural-tangents' ``stax``), e.g.::

    [["Dense", {"out_dim": 512, "W_std": 1.5, "b_std": 0.05}], ["Relu", {}],
     ["Dense", {"out_dim": 1, "W_std": 1.5, "b_std": 0.05}]]

JSON lists stand for tuples (``"filter_shape": [3, 3]``), except ``Polynomial``'s ``coef``,
and ``null`` for ``None`` (``"b_std": null``: no bias). Four items are not plain layers:

=====================================================  =============================================
``["serial", [items]]``                                `stax.serial` of the items
``["parallel", [[items], [items], ...]]``              `stax.parallel` of one serial per branch
``["repeat", {"layer": [items], "n": 3}]``             ``stax.repeat(stax.serial(*items), n=3)``
``["ElementwiseNumerical", {"fn": "tanh", "deg": 25}]``  ``fn`` (and ``df``, if given) name a function
                                                       of ``jax.numpy``
=====================================================  =============================================

This is the format of the neural-tangents reference files (tests/data/nt_reference.README.md)
and of ``widekit kernel --network SPEC.json``. Every error names the item by its position
(``[2]``, ``[1][0][3]`` inside a branch) and the layer.
"""
import inspect
import json
import os

import jax.numpy as jnp

from kernels import stax

__all__ = ["network_from_spec", "LAYER_NAMES"]

_COMBINATORS = ("serial", "parallel", "repeat")
# Factories of `kernels.stax` a spec may name: its public functions (classes such as Layer, or
# the enums some layers take as arguments, are not layers).
LAYER_NAMES = tuple(sorted(name for name in stax.__all__
                           if inspect.isfunction(getattr(stax, name)) and name not in _COMBINATORS))
_LISTS_KEPT = {("Polynomial", "coef")}  # arguments that take a list, not a tuple
_JNP_FUNCTIONS = {"ElementwiseNumerical": ("fn", "df")}


def network_from_spec(spec):
    """The `kernels.stax` network a JSON spec describes (module docstring).

    Args:
      spec: a JSON string, a list of ``[LayerName, kwargs]`` items (as ``json.loads`` gives
        it), or the path of a ``.json`` file holding one (str or os.PathLike ending in
        ``.json``).

    Returns:
      ``(init_fn, apply_fn, kernel_fn)`` of ``stax.serial`` of the items.

    Raises:
      ValueError / TypeError: the spec is not JSON, not a list of items, names an unknown
        layer, or a layer refuses its arguments; the message names the item and the layer.
    """
    return _serial(_load(spec), "")


def _load(spec):
    where = "network_from_spec"
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.strip().endswith(".json")
                                         and not spec.lstrip().startswith("[")):
        path = os.fspath(spec)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as error:
            raise ValueError(f"{where}: cannot read the spec file {path!r}: {error.strerror or error}") from None
        return _parse(text, f"the spec file {path!r}")
    if isinstance(spec, (str, bytes)):
        return _parse(spec, "the spec string")
    if isinstance(spec, (list, tuple)):
        return spec
    raise TypeError(f"{where}: argument `spec` must be a JSON string, a list of [LayerName, kwargs] items or "
                    f"the path of a .json file; received {type(spec).__name__}")


def _parse(text, what):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"network_from_spec: {what} is not valid JSON ({error})") from None


def _serial(items, where):
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"network_from_spec: {where or 'the spec'} must be a list of [LayerName, kwargs] items; "
                        f"received {type(items).__name__} {_short(items)}")
    return stax.serial(*[_layer(item, f"{where}[{k}]") for k, item in enumerate(items)])


def _layer(item, where):
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
        raise TypeError(f"network_from_spec: item {where} must be a pair [LayerName, kwargs]; received {_short(item)}")
    name, arg = item
    if name == "serial":
        return _serial(arg, f"{where} (serial)")
    if name == "parallel":
        if not isinstance(arg, (list, tuple)):
            raise TypeError(f"network_from_spec: item {where} (parallel) takes a list of branches, each a list of "
                            f"items; received {_short(arg)}")
        return stax.parallel(*[_serial(branch, f"{where}[{b}]") for b, branch in enumerate(arg)])
    if name == "repeat":
        if not (isinstance(arg, dict) and set(arg) == {"layer", "n"}):
            raise TypeError(f"network_from_spec: item {where} (repeat) takes {{\"layer\": [items], \"n\": count}}; "
                            f"received {_short(arg)}")
        return _build(stax.repeat, "repeat", where, _serial(arg["layer"], f"{where} (repeat)"), arg["n"])
    if name not in LAYER_NAMES:
        raise ValueError(f"network_from_spec: item {where} names an unknown layer {name!r}; known layers: "
                         f"{', '.join(LAYER_NAMES + _COMBINATORS)}")
    if not isinstance(arg, dict):
        raise TypeError(f"network_from_spec: item {where} ({name}) takes a dict of keyword arguments; "
                        f"received {_short(arg)}")
    kwargs = {k: tuple(v) if isinstance(v, list) and (name, k) not in _LISTS_KEPT else v for k, v in arg.items()}
    for key in _JNP_FUNCTIONS.get(name, ()):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = _jnp_function(kwargs[key], f"item {where} ({name}) argument `{key}`")
    return _build(getattr(stax, name), name, where, **kwargs)


def _build(factory, name, where, *args, **kwargs):
    """``factory(*args, **kwargs)``; a refusal is re-raised naming the item (same exception type)."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise (TypeError if isinstance(error, TypeError) else ValueError)(f"network_from_spec: item {where} ({name}) with {_short(kwargs or args[1:])}: "
                          f"{error}") from None


def _jnp_function(value, where):
    function = getattr(jnp, value, None) if isinstance(value, str) and not value.startswith("_") else None
    if not callable(function) or inspect.isclass(function):
        raise ValueError(f"network_from_spec: {where} must name a function of jax.numpy (such as \"tanh\"); "
                         f"received {_short(value)}")
    return function


def _short(value):
    shown = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return shown if len(shown) <= 200 else shown[:200] + "..."
