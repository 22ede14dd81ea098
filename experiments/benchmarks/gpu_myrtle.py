"""Myrtle-5 (W3's network) NNGP+NTK kernel on one device: correctness, then speed (issue 4 item 4).

    python experiments/benchmarks/gpu_myrtle.py --json gpu.json        # on a GPU
    python experiments/benchmarks/gpu_myrtle.py --small                 # CPU smoke run

1. Correctness, small: the kernel of 5 images of 32x32x3 computed on the default device
   in float32, once in one shot (``block_size=0``) and once block by block
   (``block_size=2``, `kernels.stax.blocks`), against the one-shot float64 kernel on the
   CPU: ``max|f32 - f64| / max|f64|`` per NNGP / NTK (fails above ``--tol``, 1e-4).
2. Block-size sweep at N = ``--sweep-n`` (256): ``jax.jit(kernel_fn)`` with
   ``block_size`` in ``--blocks``; the first call (compilation) is reported apart, then
   best of ``--repeats``.
3. For each N in ``--n`` (64, 256, 1024), in a fresh process each (so that the device's
   peak memory, ``memory_stats()["peak_bytes_in_use"]``, is that run's): the jitted kernel
   with the sweep's best block size (``--mode blocked``), and, for the largest N, through
   ``kernels.batch(kernel_fn, --tile)`` (``--mode tiled``: device memory bounded by the
   tile, whatever N). Microseconds per kernel entry count all N^2 entries (only
   N (N + 1) / 2 are computed, the rest mirrored). After the largest N, a sub-block of the
   N x N result (3 x 3 entries spread over the matrix, both triangles, and 3 diagonal
   entries) is checked against the float64 CPU kernel of those images.

Acceptance (issue 4): on one H100, N = 1024, at most 20 us per entry.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import jax  # noqa: E402

from kernels import batch, stax  # noqa: E402

GET = ("nngp", "ntk")


def myrtle5():
    conv = stax.Conv(64, (3, 3), padding="SAME", W_std=2**0.5)
    return stax.serial(
        conv, stax.Relu(), conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
        conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
        stax.GlobalAvgPool(), stax.Dense(10),
    )


def images(n, seed=0, side=32):
    return np.random.default_rng(seed).standard_normal((n, side, side, 3)).astype(np.float32)


def peak_device_bytes():
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def cpu_float64(kernel_fn, x1, x2=None):
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True):
        a = jax.device_put(np.asarray(x1, np.float64), cpu)
        b = None if x2 is None else jax.device_put(np.asarray(x2, np.float64), cpu)
        with jax.default_device(cpu):
            out = kernel_fn(a, b, GET, block_size=0)
        return [np.asarray(v) for v in out]


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def check_small(kernel_fn, tol):
    x = images(5, seed=1)
    ref = cpu_float64(kernel_fn, x)
    out = {}
    for b in (0, 2):
        got = kernel_fn(x, None, GET, block_size=b)
        for name, g, r in zip(GET, got, ref):
            assert g.dtype == np.float32, g.dtype
            out[f"{name}_block{b}"] = rel(g, r)
    print("correctness (5 images, device float32 vs cpu float64): "
          + ", ".join(f"{k} {v:.2e}" for k, v in out.items()), flush=True)
    if not max(out.values()) <= tol:
        raise SystemExit(f"correctness check failed: {out} (tolerance {tol})")
    return out


def check_sub_block(kernel_fn, x, result, tol):
    n = x.shape[0]
    rows, cols = [0, n // 2 + 1, n - 2], [min(3, n - 1), n // 3, n - 1]
    ref = cpu_float64(kernel_fn, x[rows], x[cols])
    ref_diag = cpu_float64(kernel_fn, x[rows])
    out = {}
    for name, got, r, rd in zip(GET, result, ref, ref_diag):
        got = np.asarray(got)
        out[name] = rel(got[np.ix_(rows, cols)], r)
        out[name + "_lower"] = rel(got[np.ix_(cols, rows)], r.T)
        out[name + "_diag"] = rel(got[rows, rows], np.diagonal(rd))
    print(f"sub-block check (N={n}; rows {rows}, cols {cols}; device float32 vs cpu float64): "
          + ", ".join(f"{k} {v:.2e}" for k, v in out.items()), flush=True)
    if not max(out.values()) <= tol:
        raise SystemExit(f"sub-block check failed: {out} (tolerance {tol})")
    return out


def timed(fn, x, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return out, first, times


def run_one(n, mode, block, tile, repeats, tol):
    _, _, kernel_fn = myrtle5()
    x = images(n)
    if mode == "blocked":
        fn = jax.jit(lambda a: kernel_fn(a, None, GET, block_size=block))
    else:
        tiled = batch(kernel_fn, min(tile, n), device_count=0, progress=False)
        fn = lambda a: tiled(a, None, GET)  # noqa: E731
    out, first, times = timed(fn, x, repeats)
    for a in out:
        assert a.shape == (n, n) and np.all(np.isfinite(np.asarray(a))), a.shape
    best = min(times)
    r = {"n": n, "mode": mode, "block": block, "tile": tile if mode == "tiled" else None, "best_s": best,
         "times_s": times, "first_call_s": first, "us_per_entry": best / n ** 2 * 1e6,
         "peak_device_bytes": peak_device_bytes(),
         "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if tol is not None:
        r["sub_block"] = check_sub_block(kernel_fn, x, out, tol)
    return r


def subprocess_run(args, n, mode, block, check):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{n},{mode},{block}", "--tile", str(args.tile),
           "--repeats", str(args.repeats), "--tol", str(args.tol)] + (["--check"] if check else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
        print("   ", line, flush=True)
    return {"n": n, "mode": mode, "block": block, "error": (p.stderr or "")[-2000:]}


def row(r):
    if "error" in r:
        return f"| {r['n']:>5} | {r['mode']:>7} | {r['block']:>5} | failed: {r['error'].splitlines()[-1][:80]} |"
    dev = f"{r['peak_device_bytes'] / 2**30:.2f}" if r.get("peak_device_bytes") else "n/a"
    return (f"| {r['n']:>5} | {r['mode']:>7} | {r['block']:>5} | {r['first_call_s']:>8.2f} | {r['best_s']:>8.4g} | "
            f"{r['us_per_entry']:>8.2f} | {dev:>9} | {r['peak_rss_bytes'] / 2**30:>7.2f} |")


HEADER = ("|     N |    mode | block | first s |   best s | us/entry | dev peak GB | RSS GB |\n"
          "|-------|---------|-------|---------|----------|----------|-------------|--------|")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU smoke run: sweep at N=4, N in {4, 8}")
    p.add_argument("--n", default=None, help="comma-separated N (default 64,256,1024)")
    p.add_argument("--sweep-n", type=int, default=None)
    p.add_argument("--blocks", default=None, help="block sizes to sweep (default 4,8,16)")
    p.add_argument("--tile", type=int, default=256, help="kernels.batch tile for the tiled run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        n, mode, block = args.worker.split(",")
        r = run_one(int(n), mode, int(block), args.tile, args.repeats, args.tol if args.check else None)
        print("RESULT " + json.dumps(r), flush=True)
        return

    ns = [int(s) for s in (args.n or ("4,8" if args.small else "64,256,1024")).split(",")]
    sweep_n = args.sweep_n or (4 if args.small else 256)
    block_sizes = [int(s) for s in (args.blocks or ("1,2" if args.small else "4,8,16")).split(",")]
    if args.small:
        args.tile = min(args.tile, 4)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    _, _, kernel_fn = myrtle5()
    results = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "correctness": check_small(kernel_fn, args.tol), "sweep": [], "runs": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    save()
    print(f"sweep at N={sweep_n} (one process; device peak is cumulative)\n{HEADER}", flush=True)
    for b in block_sizes:
        try:
            r = run_one(sweep_n, "blocked", b, args.tile, args.repeats, None)
        except Exception as e:  # noqa: BLE001 -- an out-of-memory block size is a result
            r = {"n": sweep_n, "mode": "blocked", "block": b, "error": repr(e)[-2000:]}
        results["sweep"].append(r)
        print(row(r), flush=True)
        save()
    ok = [r for r in results["sweep"] if "error" not in r]
    best_block = min(ok, key=lambda r: r["best_s"])["block"] if ok else 1
    print(f"best block size: {best_block}\nruns (fresh process each)\n{HEADER}", flush=True)
    plan = [(n, "blocked", best_block, n == max(ns)) for n in ns] + [(max(ns), "tiled", 0, True)]
    for n, mode, block, check in plan:
        r = subprocess_run(args, n, mode, block, check)
        results["runs"].append(r)
        print(row(r), flush=True)
        save()


if __name__ == "__main__":
    main()
