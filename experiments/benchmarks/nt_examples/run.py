"""neural-tangents 0.6.5's example programs, run unchanged on both libraries, numbers compared.

    python experiments/benchmarks/nt_examples/run.py [NAME ...] [--sdist DIR] [--timeout 900]

What the README's "ports by changing an import" claim rests on (issue 14, acceptance item 1). The
programs are not part of this repository: they are read from neural-tangents' source distribution,
which ``reference_env.sh`` unpacks next to the reference environment (``.venv-nt/src/``). For each
program, two copies go to a temporary directory, each beside this folder's offline stand-in
``datasets.py`` (the real one downloads data): one as published, run by the reference environment's
python; one with ``neural_tangents`` replaced by ``widekit`` on its import lines only, run by this
python. `harness.py` runs a program and sets ``jax_threefry_partitionable=False`` on the widekit side
(JAX 0.5 changed the default random stream; with it off the same key draws neural-tangents' weights).

Besides the programs, the code in neural-tangents' README (its Python blocks after the first, which is
``jax.example_libraries`` only, run as one program: ``readme``) and the ``>>>`` examples of its docstrings
(one program each, ``doc_<file>_<line>``, after the imports the examples take for granted) run the same way;
a docstring example that neural-tangents itself cannot run (a fragment) is reported as such.

Every number the two runs print is compared (timings dropped): a printed scalar by
``|a - b| / max(|a|, |b|)``; an array by ``max |a - b| / max |a|``. The examples run in float32, so
agreement means about 1e-4. ``imdb_dummy`` is ``imdb.main(use_dummy_data=True)``, the example's own
synthetic data with per-entry masks (what neural-tangents' ``imdb_test.py`` runs).
"""
import argparse
import doctest
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PROGRAMS = ("infinite_fcn", "weight_space", "function_space", "imdb", "imdb_dummy", "elementwise",
            "elementwise_numerical", "empirical_ntk")
DRIVERS = {"imdb_dummy": "from examples import imdb\nimdb.main(use_dummy_data=True)\n"}
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")
IMPORT_LINE = re.compile(r"^\s*(import|from)\s")


DOCTEST_IMPORTS = ("import jax\nimport jax.numpy as jnp\nimport numpy as np\nfrom jax import random\n"
                   "import neural_tangents as nt\nfrom neural_tangents import stax\n")


def snippets(sdist: str) -> dict:
    """``name -> source`` of the README's code (``readme``) and of each docstring's ``>>>`` examples."""
    with open(os.path.join(sdist, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    out = {"readme": "\n".join(blocks[1:8])}  # the last block is a fragment of the one before
    package = os.path.join(sdist, "neural_tangents")
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.endswith(".py") or "experimental" in path:  # TensorFlow: out of scope
                continue
            with open(path) as f:
                text = f.read()
            for m in re.finditer(r'"""(.*?)"""', text, re.S):
                examples = doctest.DocTestParser().get_examples(m.group(1))
                if examples:
                    line = text.count("\n", 0, m.start()) + 1
                    label = os.path.relpath(path, package)[:-3].replace(os.sep, "_").replace("_src_", "")
                    out[f"doc_{label}_{line}"] = DOCTEST_IMPORTS + "".join(e.source for e in examples)
    return out


def widekit_copy(source: str) -> str:
    """``source`` with ``neural_tangents`` replaced by ``widekit`` on import lines only."""
    return "".join(re.sub(r"\bneural_tangents\b", "widekit", line) if IMPORT_LINE.match(line) else line
                   for line in source.splitlines(keepends=True))


def prepare(tree: str, examples: str, side: str, extra: dict) -> None:
    """``tree/examples/``: the published programs and ``extra`` (name -> source; widekit's side: import lines
    changed), their ``util.py``, and the offline stand-in ``datasets.py``."""
    package = os.path.join(tree, "examples")
    os.makedirs(package)
    open(os.path.join(package, "__init__.py"), "w").close()
    for name in os.listdir(examples):
        if name.endswith(".py") and name not in ("datasets.py", "__init__.py"):
            with open(os.path.join(examples, name)) as f:
                source = f.read()
            with open(os.path.join(package, name), "w") as f:
                f.write(widekit_copy(source) if side == "wk" else source)
    shutil.copy(os.path.join(HERE, "datasets.py"), package)
    for name, source in DRIVERS.items():
        with open(os.path.join(package, name + ".py"), "w") as f:
            f.write(source)
    for name, source in extra.items():
        with open(os.path.join(package, name + ".py"), "w") as f:
            f.write(widekit_copy(source) if side == "wk" else source)


def run(python: str, side: str, tree: str, name: str, timeout: float):
    """(return code, stdout, stderr, seconds) of one program on one side."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO if side == "wk" else "")
    start = time.time()
    try:
        p = subprocess.run([python, os.path.join(HERE, "harness.py"), side, tree,
                            os.path.join(tree, "examples", name + ".py")],
                           capture_output=True, text=True, cwd=tree, env=env, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.time() - start
    except subprocess.TimeoutExpired:
        return "TIMEOUT", "", "", time.time() - start


def numbers(text: str) -> list:
    """(label, values) for every number printed, arrays dumped by harness.py as one item."""
    out = []
    for line in text.splitlines():
        if "seconds" in line or line.startswith("WARNING") or "Platform" in line:
            continue
        if line.startswith("@@"):
            label, values = line[3:].split(":", 1)
            out.append((label.strip(), np.array([float(v) for v in values.split()])))
        else:
            out.extend((line.strip()[:40], np.array([float(v)])) for v in NUMBER.findall(line))
    return out


def largest_difference(reference: str, ours: str) -> str:
    a, b = numbers(reference), numbers(ours)
    if len(a) != len(b) or any(x.shape != y.shape for (_, x), (_, y) in zip(a, b)):
        return f"different output: {len(a)} vs {len(b)} numbers"
    worst, where = 0.0, "identical"
    for (label, x), (_, y) in zip(a, b):
        both_nan = np.isnan(x) & np.isnan(y)
        x, y = np.where(both_nan, 0, x), np.where(both_nan, 0, y)
        diff = np.abs(x - y)
        if diff.max() > 0:
            d = diff.max() / max(np.abs(x).max(), np.abs(y).max())
            if d > worst:
                i = int(np.argmax(diff))
                worst, where = d, f"{label} ({float(x[i])!r} vs {float(y[i])!r})"
    return f"{worst:.2e} {where}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="programs or snippets (default: all)")
    p.add_argument("--sdist", default=os.path.join(REPO, ".venv-nt", "src", "neural-tangents-0.6.5"),
                   help="neural-tangents' unpacked source distribution (reference_env.sh puts it there)")
    p.add_argument("--nt-python", default=os.path.join(REPO, ".venv-nt", "bin", "python"))
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    examples = os.path.join(args.sdist, "examples")
    if not os.path.isdir(examples):
        sys.exit(f"no neural-tangents examples at {examples}: run experiments/benchmarks/reference_env.sh "
                 "(it unpacks the 0.6.5 source distribution there), or pass --sdist")
    extra = snippets(args.sdist)
    known = list(PROGRAMS) + list(extra)
    args.names = args.names or known
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        p.error(f"unknown programs {unknown}; known: {', '.join(known)}")
    print(f"{'program':30s} {'nt (s)':>9s} {'widekit (s)':>12s}  largest relative difference (where)")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {side: os.path.join(tmp, side) for side in ("nt", "wk")}
        for side, tree in trees.items():
            prepare(tree, examples, side, extra)
        for name in args.names:
            results = {side: run(args.nt_python if side == "nt" else sys.executable, side, trees[side], name,
                                 args.timeout) for side in ("nt", "wk")}
            (rn, out_n, err_n, tn), (rw, out_w, err_w, tw) = results["nt"], results["wk"]
            if rn == 0 and rw == 0:
                verdict = largest_difference(out_n, out_w)
            else:
                failed, err = ("neural-tangents", err_n) if rn != 0 else ("widekit", err_w)
                errors = [line for line in err.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
                last = errors[-1:] or [line for line in err.splitlines() if line.strip()][-1:] or \
                    [f"exit {rn if rn else rw}"]
                verdict = f"{failed} failed: {last[0][:140]}"
            print(f"{name:30s} {tn:9.1f} {tw:12.1f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
