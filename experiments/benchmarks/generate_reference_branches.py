"""Reference values of neural-tangents 0.6.5 for networks that end in several branches.

A network ending in ``FanOut`` or ``parallel`` without a merge has one kernel per branch;
neural-tangents returns them as a list (nested lists for nested branches). Run with the
reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_branches.py

It writes ``tests/data/nt_branches_reference.npz`` (format in
``tests/data/nt_branches_reference.README.md``), everything in float64.
"""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "nt_branches_reference.npz")

CASES = {
    "mlp": dict(spec=[["Dense", {"out_dim": 3, "W_std": 1.5, "b_std": 0.1}], ["FanOut", {"num": 2}],
                      ["parallel", [[["Relu", {}]],
                                    [["Erf", {}], ["Dense", {"out_dim": 2, "W_std": 1.2, "b_std": 0.2}]]]]],
                shape1=(4, 5), shape2=(2, 5)),
    "cnn": dict(spec=[["Conv", {"out_chan": 4, "filter_shape": [2], "padding": "SAME", "W_std": 1.3, "b_std": 0.1}],
                      ["FanOut", {"num": 2}],
                      ["parallel", [[["Relu", {}]],
                                    [["Erf", {}], ["GlobalAvgPool", {}], ["Dense", {"out_dim": 1}]]]]],
                shape1=(4, 5, 2), shape2=(2, 5, 2)),
    "nested": dict(spec=[["Dense", {"out_dim": 3, "b_std": 0.2}], ["FanOut", {"num": 2}],
                         ["parallel", [[["FanOut", {"num": 2}], ["parallel", [[["Relu", {}]], [["Gelu", {}]]]]],
                                       [["Dense", {"out_dim": 2, "W_std": 0.8}]]]]],
                   shape1=(4, 5), shape2=(2, 5)),
    "fanout_last": dict(spec=[["Dense", {"out_dim": 3, "b_std": 0.3}], ["Relu", {}], ["FanOut", {"num": 3}]],
                        shape1=(4, 5), shape2=(2, 5)),
}
GETS = {"None": None, "nngp": "nngp", "nngp,ntk": ("nngp", "ntk"), "ntk,": ("ntk",)}


def build(spec):
    """neural-tangents' network of a spec: ``[name, kwargs]`` items in series, ``["parallel", [branches]]``."""
    layers = []
    for name, arg in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[build(branch) for branch in arg]))
        else:
            layers.append(getattr(stax, name)(**{k: tuple(v) if isinstance(v, list) else v for k, v in arg.items()}))
    return stax.serial(*layers)


def describe(result):
    """The structure of a result: lists of ``"Kernel"``, ``"tuple(nngp,ntk)"`` or ``"array"``."""
    if isinstance(result, list):
        return [describe(r) for r in result]
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return f"tuple({','.join(result._fields)})"
    if hasattr(result, "nngp"):
        return "Kernel"
    if isinstance(result, tuple):
        return "plain tuple"
    return "array"


def branches(result, path=()):
    """``[(path, kernel)]`` of a (nested) list of per-branch results."""
    if isinstance(result, list):
        return [item for i, r in enumerate(result) for item in branches(r, path + (i,))]
    return [(path, result)]


def key(path):
    return "b" + ".".join(map(str, path))


def main():
    arrays, listing = {}, {}
    for i, (name, case) in enumerate(CASES.items()):
        rng = np.random.RandomState(2000 + i)
        x1, x2 = rng.randn(*case["shape1"]), rng.randn(*case["shape2"])
        init_fn, apply_fn, kernel_fn = build(case["spec"])
        arrays[f"{name}/x1"], arrays[f"{name}/x2"] = x1, x2
        both = kernel_fn(x1, x2, None)
        same = kernel_fn(x1, None, None)
        tiled = nt.batch(kernel_fn, 2)(x1, x2, ("nngp", "ntk"))
        for (path, k), (_, k11), (_, kb) in zip(branches(both), branches(same), branches(tiled)):
            for field in ("nngp", "ntk", "cov1", "cov2"):
                arrays[f"{name}/{key(path)}/{field}"] = np.asarray(getattr(k, field))
            arrays[f"{name}/{key(path)}/nngp_11"] = np.asarray(k11.nngp)
            arrays[f"{name}/{key(path)}/ntk_11"] = np.asarray(k11.ntk)
            arrays[f"{name}/{key(path)}/batch_nngp"] = np.asarray(kb.nngp)
            arrays[f"{name}/{key(path)}/batch_ntk"] = np.asarray(kb.ntk)
        structure = {"kernel_fn": {g: describe(kernel_fn(x1, x2, get)) for g, get in GETS.items()},
                     "kernel_fn_x2_none": {g: describe(kernel_fn(x1, None, get)) for g, get in GETS.items()},
                     "batch": {g: describe(nt.batch(kernel_fn, 2)(x1, x2, get)) for g, get in GETS.items()}}
        if name == "mlp":  # finite networks: the structure only (the values are random)
            _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
            mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 2)
            empirical = nt.empirical_kernel_fn(apply_fn)
            structure["monte_carlo"] = {g: describe(mc(x1, x2, get)) for g, get in GETS.items() if g != "ntk,"}
            structure["empirical"] = {g: describe(empirical(x1, x2, get, params)) for g, get in GETS.items()
                                      if g != "ntk,"}
        listing[name] = {"spec": case["spec"], "branches": [key(p) for p, _ in branches(both)],
                         "structure": structure}
        print(name, [key(p) for p, _ in branches(both)], [np.shape(k.nngp) for _, k in branches(both)])
    np.savez_compressed(OUT, _cases=json.dumps(listing), **arrays)


if __name__ == "__main__":
    main()
