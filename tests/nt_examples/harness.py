"""Runs one neural-tangents example program as ``__main__`` and prints what it computed.

    python harness.py SIDE TREE SCRIPT

SIDE ``nt``: as published, in the reference environment. SIDE ``wk``: widekit's side, with
``jax_threefry_partitionable=False`` set first (JAX 0.5 changed the default random stream; with it
off the same key gives neural-tangents' weights). TREE goes first on ``sys.path`` (it holds the
``examples`` package with the offline stand-in ``datasets.py``). After the program, every numeric
array left in its globals is printed as ``@@ name (shape): values`` (at most ``MAX_DUMPED`` evenly
spaced entries of it).

Used by ``test_nt_examples.py`` (widekit's side against the stored numbers of neural-tangents' side)
and by ``experiments/benchmarks/nt_examples/run.py`` (both sides live); ``numbers`` and ``differences``
read and compare what two runs printed, ``on_import_lines`` makes and checks the port.
"""
import re
import runpy
import sys

import numpy as np

MAX_DUMPED = 4096  # entries printed of one array
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")
IMPORT_LINE = re.compile(r"^\s*(import|from)\s")


def on_import_lines(source: str, old: str, new: str) -> str:
    """``source`` with the package name ``old`` replaced by ``new`` on its import lines only: the port
    (``neural_tangents`` -> ``widekit``) and, the other way, its check."""
    return "".join(re.sub(rf"\b{old}\b", new, line) if IMPORT_LINE.match(line) else line
                   for line in source.splitlines(keepends=True))


def numbers(text: str) -> list:
    """``(label, values)`` for every number a run printed; timings are dropped, a dumped array is one item."""
    out = []
    for line in text.splitlines():
        if "seconds" in line or line.startswith("WARNING") or "Platform" in line:
            continue
        if line.startswith("@@"):
            label, values = line[3:].split(":", 1)
            out.append((label.strip(), [float(v) for v in values.split()]))
        else:
            out.extend((line.strip()[:40], [float(v)]) for v in NUMBER.findall(line))
    return out


def differences(reference: list, ours: list) -> list:
    """``(relative difference, label, reference value, our value)`` for each printed item, as ``numbers``
    gives them: a scalar's ``|a - b| / max(|a|, |b|)``, an array's ``max |a - b| / max |a|`` (NaN equals
    NaN). Raises ``ValueError`` if the two runs printed different numbers of items or shapes."""
    if len(reference) != len(ours) or any(len(x) != len(y) for (_, x), (_, y) in zip(reference, ours)):
        raise ValueError(f"different output: {len(reference)} vs {len(ours)} printed items")
    out = []
    for (label, x), (_, y) in zip(reference, ours):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        x, y = np.where(both_nan, 0, x), np.where(both_nan, 0, y)
        diff = np.abs(x - y)
        i = int(np.argmax(diff))
        scale = max(np.abs(x).max(), np.abs(y).max())
        out.append((float(diff[i] / scale) if diff[i] > 0 else 0.0, label, float(x[i]), float(y[i])))
    return out


def _dump(name, value):
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.issubdtype(np.asarray(value).dtype, np.number):
        flat = np.asarray(value, dtype=np.float64).ravel()
        step = -(-flat.size // MAX_DUMPED)  # a large array (a wide layer's weights): every step-th entry
        label = f"{name} {tuple(np.shape(value))}" + (f", 1 in {step}" if step > 1 else "")
        print(f"@@ {label}: " + " ".join(f"{v:.17g}" for v in flat[::step]))
    elif isinstance(value, (tuple, list)) and not name.startswith("_"):
        for i, item in enumerate(value):
            _dump(f"{name}[{i}]", item)


def main():
    side, tree, script = sys.argv[1:4]
    import jax

    if side == "wk":
        jax.config.update("jax_threefry_partitionable", False)
    sys.path.insert(0, tree)
    sys.argv = [script]
    try:
        scope = runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # absl's app.run exits
        if e.code not in (None, 0):
            raise
        scope = {}
    for key in sorted(scope):
        if not key.startswith("_"):
            _dump(key, scope[key])


if __name__ == "__main__":
    main()
