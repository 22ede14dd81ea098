"""Reference values of neural-tangents 0.6.5's ``kernel_fn`` keywords and of convolutions over more
than three spatial axes, for widekit's tests.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_keywords.py

It writes ``tests/data/nt_keywords_reference.npz``: for each case ``NAME`` (listed, with its
network as a spec in the format of ``tests/data/nt_reference.README.md``, in the JSON
``_cases``), the inputs ``NAME/x1``, ``NAME/x2`` and ``kernel_fn(x1, x2, ("nngp", "ntk", "cov1"),
**keywords)``'s arrays ``NAME/nngp``, ``NAME/ntk``, ``NAME/cov1``. Everything in float64.
"""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "nt_keywords_reference.npz")

CONV = [["Conv", {"out_chan": 8, "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.5, "b_std": 0.1}],
        ["Relu", {}],
        ["Conv", {"out_chan": 8, "filter_shape": [2, 2], "padding": "VALID", "W_std": 1.2, "b_std": 0.05}],
        ["Erf", {}],
        ["Conv", {"out_chan": 8, "filter_shape": [3, 3], "padding": "CIRCULAR"}]]
CONV1D = [["Conv", {"out_chan": 8, "filter_shape": [3], "padding": "SAME", "W_std": 1.3}],
          ["Gelu", {}],
          ["Conv", {"out_chan": 8, "filter_shape": [2], "strides": [2], "padding": "VALID"}]]
CONV4D = [["Conv", {"out_chan": 4, "filter_shape": [2, 2, 1, 2], "padding": "SAME", "W_std": 1.3, "b_std": 0.1}],
          ["Relu", {}],
          ["Conv", {"out_chan": 4, "filter_shape": [2, 1, 2, 2], "strides": [1, 1, 1, 2], "padding": "VALID"}],
          ["Relu", {}]]
CASES = {
    "conv4d_flatten": dict(spec=CONV4D + [["Flatten", {}], ["Dense", {"out_dim": 1}]], shape1=(2, 3, 3, 2, 3, 2),
                           shape2=(3, 3, 3, 2, 3, 2), keywords={}),
    "conv4d_global_avg_pool": dict(spec=CONV4D + [["GlobalAvgPool", {}], ["Dense", {"out_dim": 1}]],
                                   shape1=(2, 3, 3, 2, 3, 2), shape2=None, keywords={}),
    "conv2d_diagonal_spatial": dict(spec=CONV, shape1=(3, 5, 4, 2), shape2=(2, 5, 4, 2),
                                    keywords={"diagonal_spatial": True}),
    "conv2d_diagonal_spatial_x2none": dict(spec=CONV, shape1=(3, 5, 4, 2), shape2=None,
                                           keywords={"diagonal_spatial": True}),
    "conv1d_diagonal_spatial": dict(spec=CONV1D, shape1=(4, 9, 3), shape2=(3, 9, 3),
                                    keywords={"diagonal_spatial": True}),
}


def build(spec):
    layers = []
    for name, kwargs in spec:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def main():
    arrays, listing = {}, {}
    for i, (name, case) in enumerate(CASES.items()):
        rng = np.random.RandomState(1000 + i)
        x1 = rng.randn(*case["shape1"])
        x2 = None if case["shape2"] is None else rng.randn(*case["shape2"])
        k = build(case["spec"])[2](x1, x2, ("nngp", "ntk", "cov1"), **case["keywords"])
        arrays[f"{name}/x1"] = x1
        if x2 is not None:
            arrays[f"{name}/x2"] = x2
        for field in ("nngp", "ntk", "cov1"):
            arrays[f"{name}/{field}"] = np.asarray(getattr(k, field))
        listing[name] = {"spec": case["spec"], "keywords": case["keywords"]}
        print(name, k.nngp.shape, k.cov1.shape)
    np.savez_compressed(OUT, _cases=json.dumps(listing), **arrays)


if __name__ == "__main__":
    main()
