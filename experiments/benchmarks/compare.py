"""widekit vs neural-tangents 0.6.5, side by side (issue 4 item 3, issue 3 W5).

    python experiments/benchmarks/compare.py [--workloads W1,W2,W3,W3b,W4,W5,W6] [--repeats 3]
        [--timeout 900] [--mem-gb 20] [--json out.json]

For each workload, in order, runs ``worker.py`` once per side, each in a fresh
subprocess, the two sides interleaved (ours, then neural-tangents, then the next
workload): ours with this ``python`` (current JAX), neural-tangents with
``.venv-nt/bin/python`` (jax 0.4.30; ``--nt-python`` to point elsewhere).  W3b is
ours only (neural-tangents needs more than 19 GB there).  W5 runs a third
process, ``--side ref`` (ours in float64), as the reference both sides'
float32 predictions are measured against.

Each subprocess gets a wall-clock timeout (``--timeout``) and a memory guard: the
worker caps its address space (``RLIMIT_AS``, ``--mem-gb``) and this script polls
the child's resident set every 0.2 s and kills it above ``--mem-gb``, so a run
that blows up is reported (``TIMEOUT`` / ``OOM>20GB`` / ``FAILED``) instead of
taking the machine down.

Columns: best-of-N seconds per side, ``t nt/ours`` (> 1: ours faster), peak RSS per
side and their ratio (whole process; neural-tangents' process also holds
TensorFlow, imported by ``import neural_tangents``, ~0.5 GB), the same ratio for
the increment over the RSS right after imports (``dRSS``), and the max relative
difference ``max|ours - nt| / max|nt|`` over the NNGP and NTK (W5: over the
predicted means; plus each side's error against the float64 reference).  ``first s``
and ``first nt/ours``: the warm-up call, compilation included (W1-W4, W6; W6, a 21-layer
CNN, is there to measure compilation).
``--ours-tile W3b=4`` runs ours on the named workloads through
``kernels.batch(kernel_fn, 4, device_count=0)`` (rows marked ``b4``).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "worker.py")
ALL = ("W1", "W2", "W3", "W3b", "W4", "W5", "W6")
OURS_ONLY = {"W3b"}


def tree_rss_bytes(pid):
    """Resident set of a process and its children (from /proc)."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except Exception:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_worker(python, side, workload, repeats, save, timeout, mem_gb, tile=0):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    cmd = [python, WORKER, "--side", side, "--workload", workload, "--repeats", str(repeats),
           "--save", save, "--mem-gb", str(mem_gb)]
    if tile:
        cmd += ["--tile", str(tile)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    status = {"killed": None, "max_rss": 0}

    def watch():
        while proc.poll() is None:
            rss = tree_rss_bytes(proc.pid)
            status["max_rss"] = max(status["max_rss"], rss)
            if mem_gb and rss > mem_gb * 2**30:
                status["killed"] = f"OOM>{mem_gb:g}GB"
                proc.kill()
                return
            if time.time() - t0 > timeout:
                status["killed"] = f"TIMEOUT>{timeout}s"
                proc.kill()
                return
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    stdout, stderr = proc.communicate()
    w.join()
    wall = time.time() - t0
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = wall
            return res
    err = status["killed"] or f"FAILED(rc={proc.returncode})"
    tail = (stderr or "").strip().splitlines()[-5:]
    if "MemoryError" in (stderr or "") or "RESOURCE_EXHAUSTED" in (stderr or "") or "bad_alloc" in (stderr or ""):
        err = f"OOM>{mem_gb:g}GB(rlimit)"
    return {"side": side, "workload": workload, "error": err, "wall_s": wall,
            "max_rss_seen_bytes": status["max_rss"], "stderr_tail": tail}


def max_rel_diff(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    out = 0.0
    for k in b.files:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / np.max(np.abs(y))))
    return out


def gb(x):
    return f"{x / 2**30:.2f}" if x else "-"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default=",".join(ALL))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--mem-gb", type=float, default=20)
    p.add_argument("--nt-python", default=os.path.join(REPO, ".venv-nt", "bin", "python"))
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--ours-tile", default="",
                   help="e.g. W3b=4: run ours on these workloads through kernels.batch(kernel_fn, TILE) "
                        "instead of one jax.jit of the whole kernel (labelled in the table)")
    args = p.parse_args()
    ours_tile = {k: int(v) for k, v in (kv.split("=") for kv in args.ours_tile.split(",") if kv)}
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in ALL:
            p.error(f"unknown workload {w!r}; known: {', '.join(ALL)}")

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; repeats {args.repeats}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads:
            sides = [("ours", args.ours_python)]
            if w not in OURS_ONLY:
                sides.append(("nt", args.nt_python))
            if w == "W5":
                sides.append(("ref", args.ours_python))
            res = {}
            for side, python in sides:
                save = os.path.join(tmp, f"{w}_{side}.npz")
                tile = ours_tile.get(w, 0) if side == "ours" else 0
                r = run_worker(python, side, w, args.repeats, save, args.timeout, args.mem_gb, tile)
                r["load_after"] = os.getloadavg()[0]
                res[side] = r
                msg = r.get("error") or f"{r['best_s']:.4g} s, peak RSS {gb(r['peak_rss_bytes'])} GB"
                print(f"  {w} {side}: {msg}", flush=True)
            row = {"workload": w, **{s: res[s] for s in res}}
            ok = {s: "error" not in res[s] for s in res}
            if ok.get("ours") and ok.get("nt"):
                row["max_rel_diff"] = max_rel_diff(os.path.join(tmp, f"{w}_ours.npz"), os.path.join(tmp, f"{w}_nt.npz"))
            if w == "W5" and ok.get("ref"):
                for s in ("ours", "nt"):
                    if ok.get(s):
                        row[f"{s}_err_vs_f64"] = max_rel_diff(os.path.join(tmp, f"{w}_{s}.npz"),
                                                              os.path.join(tmp, f"{w}_ref.npz"))
            rows.append(row)

    print()
    hdr = (f"| {'workload':8} | {'ours s':>9} | {'nt s':>9} | {'t nt/ours':>9} | {'ours first s':>12} | "
           f"{'nt first s':>10} | {'first nt/ours':>13} | {'ours RSS GB':>11} | "
           f"{'nt RSS GB':>9} | {'RSS nt/ours':>11} | {'dRSS nt/ours':>12} | {'max rel diff':>12} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for row in rows:
        o, n = row.get("ours", {}), row.get("nt")

        def t(r):
            if r is None:
                return "n/a"
            return r.get("error") or f"{r['best_s']:.4g}"

        def first(r):
            return f"{r['warmup_s']:.4g}" if r and "warmup_s" in r else "-"

        tr = rr = dr = fr = "-"
        if n is not None and "error" not in o and "error" not in n:
            tr = f"{n['best_s'] / o['best_s']:.2f}"
            fr = f"{n['warmup_s'] / o['warmup_s']:.2f}" if "warmup_s" in o else "-"
            rr = f"{n['peak_rss_bytes'] / o['peak_rss_bytes']:.2f}"
            do = o["peak_rss_bytes"] - o["rss_after_imports_bytes"]
            dn = n["peak_rss_bytes"] - n["rss_after_imports_bytes"]
            dr = f"{dn / do:.2f}" if do > 0 else "-"
        diff = f"{row['max_rel_diff']:.2e}" if "max_rel_diff" in row else "-"
        if row["workload"] == "W5":
            extra = [f"{s} vs f64 {row[s + '_err_vs_f64']:.1e}" for s in ("ours", "nt") if s + "_err_vs_f64" in row]
            if extra:
                diff += " (" + "; ".join(extra) + ")"
        name = row["workload"] + (f" b{o['tile']}" if o.get("tile") else "")
        print(f"| {name:8} | {t(o):>9} | {t(n):>9} | {tr:>9} | {first(o):>12} | {first(n):>10} | {fr:>13} | "
              f"{gb(o.get('peak_rss_bytes')):>11} | "
              f"{gb(n.get('peak_rss_bytes')) if n else 'n/a':>9} | {rr:>11} | {dr:>12} | {diff:>12} |")
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
