"""Myrtle-5 (W3's network) NNGP+NTK kernel on one device: correctness, then speed (issue 4 item 4).

    python experiments/benchmarks/gpu_myrtle.py                 # on a GPU: N in {64, 256, 1024}
    python experiments/benchmarks/gpu_myrtle.py --small          # CPU smoke run: N in {4, 8}
    python experiments/benchmarks/gpu_myrtle.py --tile 16 --n 64,256 --repeats 2

1. Correctness: the kernel of 2 images of 32x32x3 computed on the default device in
   float32 against the same network's kernel computed in float64 on the CPU; prints the
   max relative difference ``max|f32 - f64| / max|f64|`` per NNGP / NTK (fails above
   ``--tol``, default 1e-4).
2. Speed: for each N, ``kernels.batch(kernel_fn, tile, device_count=0)`` (one device,
   upper triangle only since ``x2 is None``, device memory bounded by the tile) computes
   ``kernel_fn(x, None, ("nngp", "ntk"))`` of N float32 images (seed 0); compilation is
   excluded by a warm-up at N = 2 * tile (a diagonal and an off-diagonal tile); best of
   ``--repeats``; prints microseconds per kernel entry (N^2 entries) and the device's peak
   memory (``jax.Device.memory_stats()["peak_bytes_in_use"]``; ``n/a`` on the CPU, where
   the process' peak RSS is printed instead). If a tile does not fit (XLA
   ``RESOURCE_EXHAUSTED``), the tile is halved and the run retried.

Acceptance (issue 4): on one H100, N = 1024, at most 20 us per entry. ``--json`` writes
the results.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import jax  # noqa: E402

from kernels import batch, stax  # noqa: E402


def myrtle5():
    conv = stax.Conv(64, (3, 3), padding="SAME", W_std=2**0.5)
    return stax.serial(
        conv, stax.Relu(), conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
        conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
        stax.GlobalAvgPool(), stax.Dense(10),
    )


def images(n, seed=0, side=32):
    return np.random.default_rng(seed).standard_normal((n, side, side, 3)).astype(np.float32)


def peak_device_bytes(device):
    stats = device.memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def check(kernel_fn, tol):
    x = images(2, seed=1)
    f32 = jax.jit(kernel_fn, static_argnames="get")(x, None, get=("nngp", "ntk"))
    f32 = [np.asarray(a) for a in f32]
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True):
        x64 = jax.device_put(x.astype(np.float64), cpu)
        f64 = jax.jit(kernel_fn, static_argnames="get")(x64, None, get=("nngp", "ntk"))
        f64 = [np.asarray(a) for a in f64]
    out = {}
    for name, a, b in zip(("nngp", "ntk"), f32, f64):
        assert b.dtype == np.float64, b.dtype
        out[name] = float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
    print(f"correctness (2 images, {jax.devices()[0].platform} float32 vs cpu float64): "
          + ", ".join(f"{k} max rel diff {v:.2e}" for k, v in out.items())
          + f" (dtype {f32[0].dtype})", flush=True)
    if max(out.values()) > tol:
        raise SystemExit(f"correctness check failed: {out} > {tol}")
    return out


def time_n(kernel_fn, n, tile, repeats, device):
    kfn = batch(kernel_fn, min(tile, n), device_count=0, progress=False)
    warm = images(min(2 * tile, max(n, 2)), seed=2)
    t0 = time.perf_counter()
    jax.block_until_ready(kfn(warm, None, get=("nngp", "ntk")))
    compile_s = time.perf_counter() - t0
    x = images(n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = kfn(x, None, get=("nngp", "ntk"))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    assert out[0].shape == (n, n) and out[1].shape == (n, n), (out[0].shape, out[1].shape)
    assert np.all(np.isfinite(out[0])) and np.all(np.isfinite(out[1]))
    best = min(times)
    return {"n": n, "tile": min(tile, n), "best_s": best, "times_s": times, "warmup_s": compile_s,
            "us_per_entry": best / n**2 * 1e6, "peak_device_bytes": peak_device_bytes(device),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU smoke run: N in {4, 8}, tile 2")
    p.add_argument("--n", default=None, help="comma-separated N (default 64,256,1024; --small 4,8)")
    p.add_argument("--tile", type=int, default=None, help="tile side in images (default 32; --small 2)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ns = [int(s) for s in (args.n or ("4,8" if args.small else "64,256,1024")).split(",")]
    tile = args.tile or (2 if args.small else 32)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, tile {tile}", flush=True)
    if device.platform == "cpu" and not args.small:
        print("warning: no accelerator; the issue's target (<= 20 us per entry) is for one H100", flush=True)

    _, _, kernel_fn = myrtle5()
    results = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
               "correctness": check(kernel_fn, args.tol), "runs": []}
    print(f"| {'N':>5} | {'tile':>4} | {'best s':>9} | {'us/entry':>9} | {'device peak GB':>14} | {'peak RSS GB':>11} |")
    print("|-------|------|-----------|-----------|----------------|-------------|")
    for n in ns:
        t = tile
        while True:
            try:
                r = time_n(kernel_fn, n, t, args.repeats, device)
                break
            except Exception as e:  # noqa: BLE001 -- halve the tile on device OOM only
                msg = str(e)
                if t > 1 and ("RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()):
                    print(f"  N={n}: tile {t} does not fit ({msg.splitlines()[0][:120]}); trying {t // 2}",
                          flush=True)
                    t //= 2
                    continue
                raise
        results["runs"].append(r)
        dev = f"{r['peak_device_bytes'] / 2**30:.2f}" if r["peak_device_bytes"] else "n/a"
        print(f"| {n:>5} | {r['tile']:>4} | {r['best_s']:>9.4g} | {r['us_per_entry']:>9.1f} | {dev:>14} | "
              f"{r['peak_rss_bytes'] / 2**30:>11.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
