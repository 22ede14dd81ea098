"""Fingerprints of what made a result: networks, the functions inside them, arrays.

`fingerprint(obj)` is a SHA-256 of a canonical description of ``obj``, equal for equal
networks built twice or in two processes (no ``id()``, no memory address, no hash seed),
different when anything that changes the kernel differs. A `kernels.stax` network's
``kernel_fn`` is a `KernelFn` whose ``rule`` is a closure over its layers, and a layer's rule
a closure over its parameters and, for ``Elementwise``/``ElementwiseNumerical``, the user's
functions; the description follows all of it:

* numbers, strings, bytes, ``None``, slices: type and ``repr`` (exact for floats); enum
  members: their class and name;
* tuples, lists, dicts, sets: their items, recursively (dicts and sets in a canonical order);
* arrays (NumPy, JAX) and NumPy scalars: dtype, shape and bytes;
* Python functions (``lambda``, nested ``def``, closures): their code (bytecode, constants
  including nested code, names, argument counts), default values, closure cell contents and
  the module globals their code reads, recursively; ``functools.partial``: function and
  arguments; bound methods: function and instance; dataclass instances (`KernelFn`,
  layer requirements): type and fields; ``functools.lru_cache`` wrappers: the wrapped function;
* ``jax.jit`` wrappers: their ``__wrapped__`` function; ``jax.custom_jvp``/``custom_vjp``: their
  ``fun``, ``jvp``/``fwd``/``bwd`` and ``nondiff_argnums``; a user's classes (outside the
  library roots): bases, attributes and methods, except that the data attributes of a class
  whose attributes the reading code assigns (a call counter) are run state and left out; a
  user's modules: the attributes the reading function's code names (``co_names``), and a
  user's module found outside any function is refused;
* library functions and classes (from the standard library or an installed package, e.g.
  ``jnp.sin``, ``jax.nn.relu``, ``np.tanh``, ``math.exp``), library modules and our own
  package's classes and modules (their instances and functions are described): by module and name.
  Our own package's functions are followed into their code, so a changed rule gives a new
  fingerprint; a library's are not, so they are named by where they live, not by what they do.

Bytecode differs between Python versions, so fingerprints are only comparable within one
(`kernels.tile_store` records the version and says so).

Fallback: anything else (an object with hidden state, a JAX tracer, a C extension object
that cannot be named) raises `FingerprintError` naming the object and where it was found;
`kernels.batch` then asks for an explicit ``fingerprint="..."`` string that the caller vouches
for (e.g. a model name and version), recorded in place of the computed one.
"""
from __future__ import annotations

import dataclasses
import dis
import enum
import functools
import hashlib
import importlib
import os
import sys
import sysconfig
import types

import numpy as np

__all__ = ["fingerprint", "array_digest", "FingerprintError"]


class FingerprintError(TypeError):
    """An object in a network that cannot be fingerprinted; the message says which and where."""


_OWN_PACKAGE = __name__.split(".")[0]
_ATOMS = (type(None), type(Ellipsis), bool, int, float, complex, str, bytes)
_LIBRARY_ROOTS = tuple(sorted({os.path.realpath(p) for k in ("stdlib", "platstdlib", "purelib", "platlib")
                               if (p := sysconfig.get_paths().get(k))}, key=len, reverse=True))


def fingerprint(obj) -> str:
    """SHA-256 hex digest of ``obj``'s canonical description (module docstring).

    Raises:
      FingerprintError: ``obj`` holds something that cannot be described.
    """
    h = hashlib.sha256()
    _Describer(h).add(obj, "the object")
    return h.hexdigest()


def array_digest(*arrays) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes (``None`` entries count as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(repr((str(a.dtype), a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _is_library_module(name: str) -> bool:
    """Whether module ``name`` is built in or lives in the standard library or site-packages."""
    module = sys.modules.get(name)
    return module is not None and _is_library_file(getattr(module, "__file__", None))


@functools.lru_cache(maxsize=4096)
def _is_library_file(path) -> bool:
    if path is None:
        return True  # built-in modules
    path = os.path.realpath(path)
    return any(path.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


def _is_jit(obj) -> bool:
    """A ``jax.jit``/``pjit`` wrapper (its behaviour is its ``__wrapped__`` function's)."""
    return type(obj).__name__ in ("PjitFunction", "JitWrapped", "CompiledFunction") or (
        type(obj).__module__ or "").startswith(("jax.", "jaxlib."))


def _importable_name(obj):
    """``module:qualname`` if importing that gives back ``obj`` itself, else ``None``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return None
    try:
        found = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return f"{module}:{qualname}" if found is obj else None


class _Describer:
    def __init__(self, h):
        self.h = h
        self.active = {}  # id -> depth, for objects being described (cycles: recursive functions)
        self.names = []  # the names each function being described may read (a user module's attributes)
        self.stores = []  # the code of each function being described (the attributes it assigns)

    def put(self, *parts):
        for p in parts:
            data = p if isinstance(p, bytes) else str(p).encode()
            self.h.update(len(data).to_bytes(8, "little"))
            self.h.update(data)

    def add(self, obj, where: str):
        if isinstance(obj, _ATOMS):
            self.put("atom", type(obj).__name__, repr(obj))
            return
        key = id(obj)
        if key in self.active:  # a cycle: name it by how far up it points, not by address
            self.put("cycle", len(self.active) - self.active[key])
            return
        self.active[key] = len(self.active)
        try:
            self._add(obj, where)
        finally:
            del self.active[key]

    def _add(self, obj, where):
        if isinstance(obj, (tuple, list)):
            self.put(type(obj).__name__, len(obj))
            for i, item in enumerate(obj):
                self.add(item, f"{where}[{i}]")
            return
        if isinstance(obj, dict):
            items = sorted(((fingerprint_of_key(k), k, v) for k, v in obj.items()), key=lambda t: t[0])
            self.put("dict", len(items))
            for digest, k, v in items:
                self.put(digest)
                self.add(v, f"{where}[{k!r}]")
            return
        if isinstance(obj, (set, frozenset)):
            self.put(type(obj).__name__, *sorted(fingerprint_of_key(k) for k in obj))
            return
        if isinstance(obj, (slice, range)):
            self.put(type(obj).__name__)
            self.add((obj.start, obj.stop, obj.step), where)
            return
        if isinstance(obj, enum.Enum):
            self.put("enum", _importable_name(type(obj)) or type(obj).__qualname__, obj.name)
            return
        if isinstance(obj, types.ModuleType):
            self._add_module(obj, where)
            return
        if isinstance(obj, np.dtype):
            self.put("dtype", obj.str, str(obj))
            return
        if isinstance(obj, (np.ndarray, np.generic)) or _is_jax_array(obj):
            self._add_array(obj, where)
            return
        if isinstance(obj, types.CodeType):
            self._add_code(obj, where)
            return
        if isinstance(obj, functools.partial):
            self.put("partial")
            self.add(obj.func, f"{where}.func")
            self.add(obj.args, f"{where}.args")
            self.add(obj.keywords, f"{where}.keywords")
            return
        if isinstance(obj, types.MethodType):
            self.put("method")
            self.add(obj.__func__, f"{where}.__func__")
            self.add(obj.__self__, f"{where}.__self__")
            return
        if isinstance(obj, types.FunctionType):
            module = getattr(obj, "__module__", None)
            name = _importable_name(obj)
            if name is not None and isinstance(module, str) and _is_library_module(module):
                self.put("library", name)
            else:
                self._add_function(obj, where)
            return
        if isinstance(obj, (staticmethod, classmethod)):
            self.put(type(obj).__name__)
            self.add(obj.__func__, f"{where}.__func__")
            return
        if isinstance(obj, property):
            self.put("property")
            for part in ("fget", "fset", "fdel"):
                self.add(getattr(obj, part), f"{where}.{part}")
            return
        if isinstance(obj, functools.cached_property):
            self.put("cached_property")
            self.add(obj.func, f"{where}.func")
            return
        name = _importable_name(obj)
        module = getattr(obj, "__module__", None)
        if name is not None and isinstance(module, str) and _is_library_module(module):
            self.put("named", name)  # classes, builtins, ufuncs, jitted library functions
            return
        owner = getattr(obj, "__self__", None)
        if isinstance(obj, types.BuiltinFunctionType) and isinstance(owner, type) and _is_library_module(owner.__module__):
            self.put("builtin method", _importable_name(owner) or owner.__qualname__, obj.__name__)  # tuple.__new__
            return
        if type(obj).__name__ == "_tuplegetter" and _is_library_module(type(obj).__module__):
            self.put("tuplegetter")  # a NamedTuple field: its index and doc
            self.add(obj.__reduce__()[1], where)
            return
        custom = [a for a in ("fun", "jvp", "fwd", "bwd", "nondiff_argnums", "symbolic_zeros")
                  if type(obj).__name__ in ("custom_jvp", "custom_vjp") and hasattr(obj, a)]
        if custom:  # jax.custom_jvp / jax.custom_vjp: the function and its derivative rules
            self.put("custom", type(obj).__name__)
            for a in custom:
                self.put(a)
                self.add(getattr(obj, a), f"{where}.{a}")
            return
        if isinstance(obj, type) and name is not None and module.split(".")[0] == _OWN_PACKAGE:
            self.put("named", name)  # our own classes (KernelFn, ...): their instances' fields are described
            return
        if isinstance(obj, type):  # a user's class: by its own attributes and methods
            self._add_class(obj, where)
            return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.put("dataclass", _importable_name(type(obj)) or type(obj).__qualname__)
            for field in dataclasses.fields(obj):
                self.put(field.name)
                self.add(getattr(obj, field.name), f"{where}.{field.name}")
            return
        if hasattr(obj, "__wrapped__") and (hasattr(obj, "cache_info") or _is_jit(obj)):
            # functools.lru_cache / cache, jax.jit / pjit: the wrapped function
            self.put("wrapped", type(obj).__name__)
            self.add(obj.__wrapped__, f"{where}.__wrapped__")
            return
        raise FingerprintError(
            f"cannot fingerprint {where}: an object of type {type(obj).__module__}.{type(obj).__qualname__} "
            "(only numbers, strings, containers, arrays, functions, dataclasses, classes, modules and "
            "importable library objects are described)")

    def _add_class(self, cls, where):
        qual = f"{cls.__module__}.{cls.__qualname__}"
        if issubclass(cls, enum.Enum):
            self.put("enum class", cls.__qualname__)
            self.add([(m.name, m.value) for m in cls], f"the members of {qual}")
            return
        # a class whose attributes the code reading it assigns holds run state (a call counter), not
        # configuration: its methods count, its data attributes do not
        state = bool(self.stores and _stored_attributes(self.stores[-1]) & set(vars(cls)))
        self.put("state class" if state else "class", cls.__qualname__)
        self.add(cls.__bases__, f"the bases of {qual}")
        methods = (staticmethod, classmethod, property, functools.cached_property)
        names = sorted(n for n, v in vars(cls).items()
                       if callable(v) or isinstance(v, methods)
                       or not (state or (n.startswith("__") and n.endswith("__"))))
        self.put("attributes", *names)
        for n in names:
            self.add(vars(cls)[n], f"the attribute {n!r} of {qual}")

    def _add_module(self, module, where):
        """A library module by name; a user's by the attributes the code that reads it may use."""
        if _is_library_file(getattr(module, "__file__", None)) or module.__name__.split(".")[0] == _OWN_PACKAGE:
            self.put("module", module.__name__)
            return
        if not self.names:
            raise FingerprintError(f"cannot fingerprint {where}: the module {module.__name__!r} (not a library "
                                   "module) outside any function's code, so which of its attributes count is unknown")
        used = sorted(n for n in self.names[-1] if n in vars(module))
        self.put("user module", module.__name__, *used)
        for n in used:
            self.add(vars(module)[n], f"the attribute {n!r} of the module {module.__name__!r} read by {where}")

    def _add_array(self, obj, where):
        try:
            array = np.asarray(obj)
        except Exception as error:  # a tracer: the value is not known
            raise FingerprintError(f"cannot fingerprint {where}: an array without a concrete value "
                                   f"({type(obj).__name__}: {error})") from None
        self.put("array", array_digest(array))

    def _add_code(self, code, where):
        self.put("code", code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
                 code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)
        self.put("consts", len(code.co_consts))
        for c in code.co_consts:
            self.add(c, where if "a constant of" in where else f"a constant of {where}")

    def _add_function(self, fn, where):
        self.names.append(_global_names(fn.__code__))
        self.stores.append(fn.__code__)
        try:
            self._add_function_parts(fn, where)
        finally:
            self.names.pop()
            self.stores.pop()

    def _add_function_parts(self, fn, where):
        qual = f"{fn.__module__}.{fn.__qualname__}"
        self.put("function", fn.__qualname__)
        self._add_code(fn.__code__, qual)
        self.add(fn.__defaults__, f"the defaults of {qual}")
        self.add(fn.__kwdefaults__, f"the keyword defaults of {qual}")
        cells = fn.__closure__ or ()
        self.put("closure", *fn.__code__.co_freevars)
        for name, cell in zip(fn.__code__.co_freevars, cells):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later in the enclosing function)
                self.put("empty cell")
                continue
            self.add(value, f"the variable {name!r} of {qual}")
        used = sorted(n for n in _global_names(fn.__code__) if n in fn.__globals__)
        self.put("globals", *used)
        for name in used:
            self.add(fn.__globals__[name], f"the global {name!r} read by {qual}")


def _global_names(code) -> set:
    """Names a code object (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


@functools.lru_cache(maxsize=4096)
def _stored_attributes(code) -> frozenset:
    """Attribute names a code object (and the code nested in it) assigns or deletes."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_ATTR", "DELETE_ATTR")}
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _stored_attributes(c)
    return frozenset(names)


def _is_jax_array(obj) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(obj, jax.Array)


def fingerprint_of_key(k) -> str:
    """Fingerprint of a dict key or set item (its canonical order is by this digest)."""
    return fingerprint(k)
