"""neural-tangents 0.6.5's kernels with their spatial axes as it returns them (reversed after an odd
number of weight-sharing convolutions), for ``kernel_fn(..., neural_tangents_axis_order=True)``.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_axis_order.py

It writes ``tests/data/nt_axis_order_reference.npz``: ``_cases`` (JSON list of names) and, per case,
``NAME/spec`` (the network as a JSON spec, `kernels.spec`'s format), ``NAME/x1``, ``NAME/x2``,
``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2)``, neural-tangents' raw arrays) and ``NAME/reversed``
(its ``Kernel.is_reversed``). Inputs are non-square images (3 x 4, or 2 x 3 x 4) so that a reversal shows.
"""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO_ROOT, "tests", "data", "nt_axis_order_reference.npz")

CONV = ["Conv", {"out_chan": 4, "filter_shape": [2, 3], "padding": "SAME", "W_std": 1.3, "b_std": 0.2}]
CONV_VALID = ["Conv", {"out_chan": 4, "filter_shape": [2, 2], "padding": "VALID", "W_std": 1.1, "b_std": 0.1}]
RELU = ["Relu", {}]
CASES = {
    "one_conv": [CONV],
    "two_convs": [CONV, RELU, CONV_VALID],
    "three_convs": [CONV, RELU, CONV, RELU, CONV_VALID],
    "conv_avgpool": [CONV, RELU, ["AvgPool", {"window_shape": [2, 2], "strides": [1, 2], "padding": "SAME"}]],
    "conv_transpose": [CONV, RELU, ["ConvTranspose", {"out_chan": 3, "filter_shape": [2, 3], "strides": [2, 1],
                                                      "padding": "SAME"}], RELU, CONV],
    "conv_local": [CONV, RELU, ["ConvLocal", {"out_chan": 3, "filter_shape": [2, 2], "padding": "SAME"}]],
    "branches_both_odd": [["FanOut", {"num": 2}], ["parallel", [[CONV], [CONV, RELU]]],
                          ["FanInConcat", {"axis": -1}]],
    "branches_split": [["FanOut", {"num": 2}], ["parallel", [[CONV], [CONV, RELU, CONV]]], ["FanInSum", {}]],
    "three_d": [["Conv", {"out_chan": 3, "filter_shape": [2, 2, 2], "padding": "SAME"}], RELU,
                ["Conv", {"out_chan": 3, "filter_shape": [1, 2, 2], "padding": "CIRCULAR"}], RELU,
                ["Conv", {"out_chan": 3, "filter_shape": [2, 1, 2], "padding": "SAME"}]],
}


def build(spec):
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*(build(branch) for branch in kwargs)))
        elif name == "FanOut":
            layers.append(stax.FanOut(kwargs["num"]))
        else:
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
            layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def main():
    rng = np.random.default_rng(0)
    out = {"_cases": json.dumps(list(CASES))}
    for name, spec in CASES.items():
        shape = (2, 3, 4, 2) if name != "three_d" else (2, 2, 3, 4, 2)
        x1, x2 = rng.standard_normal(shape), rng.standard_normal((3,) + shape[1:])
        k = build(spec)[2](x1, x2)
        out.update({f"{name}/spec": json.dumps(spec), f"{name}/x1": x1, f"{name}/x2": x2,
                    f"{name}/nngp": np.asarray(k.nngp), f"{name}/ntk": np.asarray(k.ntk),
                    f"{name}/reversed": np.asarray(k.is_reversed)})
        print(name, "is_reversed", k.is_reversed, np.shape(k.nngp))
    np.savez(OUT, **out)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
