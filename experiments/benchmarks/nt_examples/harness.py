"""Runs one program as ``__main__``: ``harness.py SIDE TREE SCRIPT`` (used by run.py).

SIDE ``nt``: as published, in the reference environment. SIDE ``wk``: widekit's side, with
``jax_threefry_partitionable=False`` set first (JAX 0.5 changed the default random stream; with it
off the same key gives neural-tangents' weights). TREE goes first on ``sys.path`` (it holds the
``examples`` package with the offline stand-in ``datasets.py``). After the program, every numeric
array left in its globals is printed as ``@@ name (shape): values`` for run.py to compare.
"""
import runpy
import sys

import jax
import numpy as np

side, tree, script = sys.argv[1:4]
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


def dump(name, value):
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.issubdtype(np.asarray(value).dtype, np.number):
        flat = np.asarray(value, dtype=np.float64).ravel()
        print(f"@@ {name} {tuple(np.shape(value))}: " + " ".join(f"{v:.17g}" for v in flat))
    elif isinstance(value, (tuple, list)) and not name.startswith("_"):
        for i, item in enumerate(value):
            dump(f"{name}[{i}]", item)


for key in sorted(scope):
    if not key.startswith("_"):
        dump(key, scope[key])
