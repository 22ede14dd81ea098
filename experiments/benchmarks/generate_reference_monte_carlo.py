"""neural-tangents 0.6.5 reference values of ``monte_carlo_kernel_fn``: which networks a key draws.

A Monte Carlo kernel is an average over a few random networks, so two libraries agree on its numbers
only if the same key draws the same networks (weights and Dropout masks). These cases pin
neural-tangents' draws: a few samples, where another draw would differ by far more than rounding.
Written to ``tests/data/nt_monte_carlo_reference.npz``: per case ``NAME/x1``, ``NAME/x2``, and
``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2)``), ``NAME/nngp_11``, ``NAME/ntk_11`` (``x2=None``),
for ``monte_carlo_kernel_fn(init_fn, apply_fn, PRNGKey(KEY), N_SAMPLES)``; ``_cases`` lists the names
and ``NAME/spec`` the network (the spec language of ``generate_reference.py``). For ``mlp_relu`` also
``NAME/nngp_at_n``, ``NAME/ntk_at_n``: the estimates after n samples that ``n_samples=[1, 3, 4]`` (a list:
the returned function is a generator, as in neural-tangents' docstring example) yields.

Run with the neural-tangents environment (``reference_env.sh``; a few seconds):
``.venv-nt/bin/python experiments/benchmarks/generate_reference_monte_carlo.py``.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402

OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_monte_carlo_reference.npz")
KEY, N_SAMPLES = 3, 4
GENERATOR_SAMPLES = (1, 3, 4)  # n_samples given as a list: a generator of the estimates at these counts


def _cases():
    """``name -> (spec, x1 shape, x2 shape)``: widths small enough that samples differ visibly."""
    dense = reference.dense
    return {
        "mlp_relu": ([dense(8, W_std=1.3, b_std=0.2), reference.act("Relu"), dense(2)], (4, 3), (3, 3)),
        # Dropout in training mode: each sample's masks come from its own rng.
        "mlp_dropout": ([dense(8, W_std=1.3, b_std=0.2), reference.act("Erf"),
                         ["Dropout", {"rate": 0.6, "mode": "train"}], dense(2)], (4, 3), (3, 3)),
        "cnn_pool": ([reference.conv(6, (2, 2), "SAME", W_std=1.2, b_std=0.1), reference.act("Relu"),
                      reference.GAP, dense(1)], (3, 4, 4, 2), (2, 4, 4, 2)),
    }


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, (spec, shape1, shape2) in _cases().items():
        x1, x2 = reference._inputs(name + "/x1", shape1), reference._inputs(name + "/x2", shape2)
        init_fn, apply_fn, _ = reference.network_from_spec(spec)
        kernel_fn = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(KEY), N_SAMPLES)
        k12, k11 = kernel_fn(x1, x2, ("nngp", "ntk")), kernel_fn(x1, None, ("nngp", "ntk"))
        record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2, "nngp": k12.nngp, "ntk": k12.ntk,
                  "nngp_11": k11.nngp, "ntk_11": k11.ntk}
        data.update({f"{name}/{k}": np.asarray(v) for k, v in record.items()})
        if name == "mlp_relu":
            estimates = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(KEY),
                                                 list(GENERATOR_SAMPLES))(x1, x2, ("nngp", "ntk"))
            for n, k in zip(GENERATOR_SAMPLES, estimates):
                data[f"{name}/nngp_at_{n}"], data[f"{name}/ntk_at_{n}"] = np.asarray(k.nngp), np.asarray(k.ntk)
        names.append(name)
        print(f"  {name}: nngp {np.shape(k12.nngp)}, ntk[0, 0] {float(np.ravel(k12.ntk)[0]):.6f}")
    data["_cases"] = np.array(json.dumps(names))
    data["_key"], data["_n_samples"] = np.array(KEY), np.array(N_SAMPLES)
    data["_generator_samples"] = np.array(GENERATOR_SAMPLES)
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB, {len(names)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
