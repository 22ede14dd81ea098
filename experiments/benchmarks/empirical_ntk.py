"""Empirical NTK of a wide CNN by each `implementation` of `kernels.empirical_kernel_fn`.

    python experiments/benchmarks/empirical_ntk.py [--width 512] [--n 8] [--size 8] [--repeats 3]
        [--implementations 1,3,2] [--no-vmap] [--json out.json]

Network: ``Conv(width, 3x3, SAME)-Relu-Conv(width, 3x3, SAME)-Relu-GlobalAvgPool-Dense(10)``
(`kernels.stax`, ntk parameterization, float32) on ``n`` Gaussian images of ``size x size x 3``;
its NTK ``kernel_fn(x, None, "ntk", params)`` with ``trace_axes=(-1,)`` and ``vmap_axes=0``
(``--no-vmap``: ``None``, the batch as one block). Each implementation (1 Jacobian contraction,
2 NTK-vector products, 3 structured derivatives, 0 AUTO) is compiled once (the first call, timed
separately), then timed ``repeats`` times; the median is reported, with the largest difference
from implementation 1's kernel relative to its largest entry and the choice AUTO makes.
Each implementation runs in a fresh subprocess so that its peak resident memory is its own.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

NAMES = {0: "auto", 1: "jacobian_contraction", 2: "ntk_vector_products", 3: "structured_derivatives"}


def network(width):
    from kernels import stax
    return stax.serial(stax.Conv(width, (3, 3), padding="SAME"), stax.Relu(),
                       stax.Conv(width, (3, 3), padding="SAME"), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(10))


def measure(args, implementation):
    """One implementation in this process: compile, repeats, kernel saved for comparison."""
    import jax
    import numpy as np
    from kernels.empirical import empirical_kernel_fn

    init_fn, apply_fn, _ = network(args.width)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.n, args.size, args.size, 3), jax.numpy.float32)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    kernel_fn = empirical_kernel_fn(apply_fn, vmap_axes=None if args.no_vmap else 0,
                                    implementation=implementation)
    start = time.perf_counter()
    ntk = kernel_fn(x, None, "ntk", params).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        kernel_fn(x, None, "ntk", params).block_until_ready()
        times.append(time.perf_counter() - start)
    np.save(args.kernel_out, np.asarray(ntk))
    return {"implementation": implementation, "name": NAMES[implementation], "first_call_s": compile_s,
            "times_s": times, "median_s": float(np.median(times)),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "auto_choice": auto_choice(apply_fn, params, x, args) if implementation == 0 else None}


def auto_choice(apply_fn, params, x, args):
    """The implementation AUTO picks here, and its FLOP estimates (`structured_ntk.estimated_flops`)."""
    import jax
    from kernels import structured_ntk
    from kernels.empirical import _output_letters

    leaves, tree = jax.tree.flatten(params)
    block = x if args.no_vmap else x[:1]
    closed = structured_ntk.trace(lambda ls, z: apply_fn(jax.tree.unflatten(tree, ls), z), leaves, block)
    rules1, rules2 = structured_ntk.agreed_rules(closed, closed, len(leaves))
    n = 1 if args.no_vmap else args.n
    flops = structured_ntk.estimated_flops(closed, closed, rules1, rules2, _output_letters(2, (1,), ()),
                                           (n, n, n * n))
    return {"chosen": min(flops, key=lambda m: (flops[m], m)), "estimated_flops": flops}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--implementations", default="1,3,2,0")
    parser.add_argument("--no-vmap", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one implementation
    parser.add_argument("--kernel-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows, kernels = [], {}
    for implementation in (int(i) for i in args.implementations.split(",")):
        out = f"/tmp/empirical_ntk_{os.getpid()}_{implementation}.npy"
        command = [sys.executable, os.path.abspath(__file__), "--one", str(implementation), "--kernel-out", out,
                   "--width", str(args.width), "--n", str(args.n), "--size", str(args.size),
                   "--repeats", str(args.repeats)] + (["--no-vmap"] if args.no_vmap else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"implementation": implementation, "name": NAMES[implementation],
                         "error": done.stderr.strip().splitlines()[-1:]})
            print(rows[-1], flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        kernels[implementation] = np.load(out)
        os.remove(out)
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["implementation"] == 1 and "median_s" in r), None)
    for r in rows:
        if base is not None and "median_s" in r:
            r["jacobian_contraction_over_this"] = base["median_s"] / r["median_s"]
            reference = kernels[1]
            r["max_rel_diff_vs_1"] = float(np.abs(kernels[r["implementation"]] - reference).max()
                                           / np.abs(reference).max())
    result = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": {"cpu": _cpu(), "nproc": os.cpu_count(), "python": platform.python_version(),
                          "load_average": os.getloadavg()},
              "config": {k: v for k, v in vars(args).items() if k not in ("one", "kernel_out", "json")},
              "rows": rows}
    import jax
    result["machine"]["jax"] = jax.__version__
    for r in rows:
        if "median_s" in r:
            print(f"{r['name']:>24}: median {r['median_s']:.3f} s (first call {r['first_call_s']:.1f} s), "
                  f"1/this {r.get('jacobian_contraction_over_this', float('nan')):.2f}, "
                  f"rel diff {r.get('max_rel_diff_vs_1', float('nan')):.1e}, RSS {r['peak_rss_gb']:.2f} GB")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)


def _cpu():
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
