"""Reading tests/data/nt_keywords2_reference.npz (its README): cases by name prefix, one case's arrays, comparison."""
import json
import os

import numpy as np

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "data", "nt_keywords2_reference.npz")


def cases(prefix: str) -> dict:
    """``name -> {"spec", "keywords"[, "then"]}`` of the cases whose name starts with ``prefix``."""
    with np.load(REFERENCE) as data:
        return {n: c for n, c in json.loads(str(data["_cases"])).items() if n.startswith(prefix)}


def arrays(name: str) -> dict:
    """``x1``, ``x2`` (if given), ``nngp``, ``ntk``, ``cov1``, ``cov2`` (if given) of case ``name``."""
    with np.load(REFERENCE) as data:
        return {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}


def close(ours, ref, tol=1e-6) -> bool:
    """Same shape, and max |ours - ref| at most ``tol`` max |ref|."""
    ours = np.asarray(ours)
    return ours.shape == ref.shape and np.abs(ours - ref).max() <= tol * np.abs(ref).max()
