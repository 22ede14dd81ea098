"""One benchmark workload on one side, in its own process (run by compare.py).

    python experiments/benchmarks/worker.py --side ours --workload W1 [--repeats 3] [--save out.npz]
    .venv-nt/bin/python experiments/benchmarks/worker.py --side nt --workload W1 ...

``--side ours`` imports ``kernels.stax`` (and ``theory.predict`` for W5) and must run
in the main environment; ``--side nt`` imports ``neural_tangents`` and must run in the
reference environment (.venv-nt, jax 0.4.30); ``--side ref`` (W5 only) is ours in
float64 (it sets ``jax_enable_x64`` itself), the reference the W5 predictions are
compared against.  Both sides build the same network with the same layer names and
arguments, from the same float32 inputs (``numpy.random.default_rng(0)``).

Timed region (W1-W4): ``jax.jit(kernel_fn, static_argnames="get")`` called as
``kernel_fn(x, None, get=("nngp", "ntk"))``, one warm-up call (compilation) excluded,
best of ``--repeats`` calls, each ended by ``block_until_ready``; the warm-up's time is
reported too (``warmup_s``: compilation included, what W6 is for).  W5 (issue 3):
building ``gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4)``
with the jitted ``kernel_fn`` and getting the NTK mean on ``x_test`` at
t in {1, 10, 100, 1000} (one call with an array of times) and t = None; the whole
region run once untimed first (warm-up), then best of ``--repeats``.

Prints one JSON line (prefixed ``RESULT ``) with the best and all times, the peak
RSS of this process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, bytes) and the
peak RSS right after imports (the libraries' own footprint: neural-tangents
imports TensorFlow).  ``--save`` writes the result arrays to an ``.npz`` that the
parent compares with the other side's.
"""
import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WORKLOADS = ("W1", "W2", "W3", "W3b", "W4", "W5", "W6")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def set_memory_limit(gb):
    """Address-space cap as a second guard (the parent also watches RSS)."""
    if gb and gb > 0:
        limit = int(gb * 2**30)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError) as e:  # pragma: no cover
            print(f"could not set RLIMIT_AS: {e}", file=sys.stderr)


def inputs(shape, seed=0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def network(stax, name):
    if name == "W1" or name == "W5":
        return stax.serial(*[stax.Dense(512, W_std=1.5, b_std=0.1), stax.Relu()] * 3, stax.Dense(1))
    if name == "W2":
        return stax.serial(
            *[stax.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu()] * 4,
            stax.Flatten(),
            stax.Dense(10),
        )
    if name in ("W3", "W3b"):
        conv = stax.Conv(64, (3, 3), padding="SAME", W_std=2**0.5)
        return stax.serial(
            conv, stax.Relu(), conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
            conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
            stax.GlobalAvgPool(), stax.Dense(10),
        )
    if name == "W4":
        return stax.serial(
            stax.Dense(64),
            stax.GlobalSelfAttention(64, 64, 64, 4, linear_scaling=True),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        )
    if name == "W6":  # neural-tangents README's "Performance" network: deep, so compilation dominates
        layers = []
        for _ in range(21):
            layers += [stax.Conv(1, (3, 3), (1, 1), "SAME"), stax.Relu()]
        return stax.serial(*layers, stax.GlobalAvgPool())
    raise ValueError(name)


SHAPES = {
    "W1": (2000, 784),
    "W2": (256, 28, 28, 1),
    "W3": (8, 32, 32, 3),
    "W3b": (24, 32, 32, 3),
    "W4": (64, 32, 16),
    "W6": (4, 8, 8, 3),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=("ours", "nt", "ref"), required=True)
    p.add_argument("--workload", choices=WORKLOADS, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--save", default=None, help=".npz path for the result arrays")
    p.add_argument("--mem-gb", type=float, default=0.0, help="RLIMIT_AS cap in GiB (0: none)")
    p.add_argument("--tile", type=int, default=0,
                   help="ours only: evaluate through kernels.batch(kernel_fn, TILE, device_count=0) "
                        "(which jits each tile itself) instead of one jax.jit of the whole kernel")
    args = p.parse_args()
    set_memory_limit(args.mem_gb)

    if args.side == "ref":
        os.environ["JAX_ENABLE_X64"] = "1"
    import numpy as np
    import jax

    if args.side == "ref":
        jax.config.update("jax_enable_x64", True)
    if args.side == "nt":
        import neural_tangents as nt
        from neural_tangents import stax

        predict = nt.predict
    else:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        sys.path.insert(0, repo)
        from kernels import stax

        predict = None
        if args.workload == "W5":
            from theory import predict
    rss_imports = peak_rss_bytes()

    _, _, kernel_fn = network(stax, args.workload)
    if args.tile:
        if args.side == "nt":
            raise SystemExit("--tile is for --side ours")
        from kernels import batch

        kernel_fn = batch(kernel_fn, args.tile, device_count=0, progress=False)
    else:
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    times = []

    if args.workload == "W5":
        rng = np.random.default_rng(0)
        x_train = rng.standard_normal((2000, 64)).astype(np.float32)
        x_test = rng.standard_normal((500, 64)).astype(np.float32)
        y_train = np.sin(x_train[:, :1])
        if args.side == "ref":
            x_train, x_test, y_train = (a.astype(np.float64) for a in (x_train, x_test, y_train))
        ts = np.array([1.0, 10.0, 100.0, 1000.0], dtype=x_train.dtype)

        def region():
            predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4)
            m_t = predict_fn(t=ts, x_test=x_test, get="ntk")
            m_inf = predict_fn(t=None, x_test=x_test, get="ntk")
            m_t, m_inf = jax.block_until_ready((m_t, m_inf))
            return {"mean_t": np.asarray(m_t), "mean_inf": np.asarray(m_inf)}

        out = region()  # warm-up: compiles the kernel functions
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = region()
            times.append(time.perf_counter() - t0)
    else:
        x = inputs(SHAPES[args.workload])
        get = ("nngp", "ntk")
        t0 = time.perf_counter()
        res = jax.block_until_ready(kernel_fn(x, None, get=get))  # warm-up (compilation)
        warmup = time.perf_counter() - t0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = jax.block_until_ready(kernel_fn(x, None, get=get))
            times.append(time.perf_counter() - t0)
        out = {"nngp": np.asarray(res[0]), "ntk": np.asarray(res[1])}

    if args.save:
        np.savez(args.save, **out)
    result = {
        "side": args.side,
        "workload": args.workload,
        "best_s": min(times),
        "times_s": times,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_imports_bytes": rss_imports,
        "jax": jax.__version__,
        "tile": args.tile,
        "shapes": {k: list(v.shape) for k, v in out.items()},
        "dtype": str(next(iter(out.values())).dtype),
    }
    if args.workload != "W5":
        result["warmup_s"] = warmup
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
