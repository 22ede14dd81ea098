"""neural-tangents 0.6.5's example programs, run unchanged on both libraries, numbers compared.

    python experiments/benchmarks/nt_examples/run.py [NAME ...] [--sdist DIR] [--timeout 900]
    python experiments/benchmarks/nt_examples/run.py --write-tests   # the copies and numbers the tests use

What the README's "ports by changing an import" claim rests on (issue 14, acceptance item 1). The
programs are read from neural-tangents' source distribution, which ``reference_env.sh`` unpacks next
to the reference environment (``.venv-nt/src/``). For each program, two copies go to a temporary
directory, each beside the offline stand-in ``tests/nt_examples/examples/datasets.py`` (the real one
downloads data): one as published, run by the reference environment's python; one with
``neural_tangents`` replaced by ``widekit`` on its import lines only, run by this python.
``tests/nt_examples/harness.py`` runs a program and sets ``jax_threefry_partitionable=False`` on the
widekit side (JAX 0.5 changed the default random stream; with it off the same key draws
neural-tangents' weights).

Besides the programs, the code in neural-tangents' README (its Python blocks after the first, which is
``jax.example_libraries`` only, run as one program: ``readme``) and the ``>>>`` examples of its docstrings
(one program each, ``doc_<file>_<line>``, after the imports the examples take for granted) run the same way;
a docstring example that neural-tangents itself cannot run (a fragment) is reported as such.

Every number the two runs print is compared (timings dropped): a printed scalar by
``|a - b| / max(|a|, |b|)``; an array by ``max |a - b| / max |a|``. The examples run in float32, so
agreement means about 1e-4. ``imdb_dummy`` is ``imdb.main(use_dummy_data=True)``, the example's own
synthetic data with per-entry masks (what neural-tangents' ``imdb_test.py`` runs).

``--write-tests`` writes the widekit copies of ``TESTED`` (and ``util.py``, which they import) to
``tests/nt_examples/examples/`` and runs neural-tangents' side of each, saving what it printed and
the SHA-256 of the source it ran to ``tests/data/nt_examples_reference.npz``:
``tests/nt_examples/test_nt_examples.py`` runs the copies and compares, without neural-tangents.
"""
import argparse
import datetime
import doctest
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
TESTS = os.path.join(REPO, "tests", "nt_examples")
REFERENCE = os.path.join(REPO, "tests", "data", "nt_examples_reference.npz")
sys.path.insert(0, TESTS)
import harness  # noqa: E402

PROGRAMS = ("infinite_fcn", "weight_space", "function_space", "imdb", "imdb_dummy", "elementwise",
            "elementwise_numerical", "empirical_ntk")
# What the tests run: the programs, the README's code and the docstring examples neural-tangents can run
# itself (or, doc_empirical_15, would run but for its own failure on jax 0.4.30). Left out: the fragments,
# and doc_monte_carlo_149 (1,200 samples of a 128-256-512-channel CNN on 32 x 32 images: hours on 2 cores).
TESTED = PROGRAMS + ("readme", "doc_stax_15", "doc_stax_combinators_73", "doc_stax_linear_133",
                     "doc_stax_linear_267", "doc_stax_linear_2709", "doc_empirical_15")
MODULES = ("util",)  # imported by the programs, copied with them
# Where neural-tangents' published code fails on its own jax (0.4.30), its numbers come from this change
# to it, which computes the same kernel by another of its implementations (recorded as "variant").
NT_VARIANTS = {"doc_empirical_15": ("NtkImplementation.STRUCTURED_DERIVATIVES",
                                    "NtkImplementation.JACOBIAN_CONTRACTION")}
DRIVERS = {"imdb_dummy": "from examples import imdb\nimdb.main(use_dummy_data=True)\n"}  # ours, not copied
DOCTEST_IMPORTS = ("import jax\nimport jax.numpy as jnp\nimport numpy as np\nfrom jax import random\n"
                   "import neural_tangents as nt\nfrom neural_tangents import stax\n")
HEADER = ("# From neural-tangents 0.6.5, {origin}.\n# Copyright 2019 Google LLC. Licensed under the Apache "
          "License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.\n")


def snippets(sdist: str) -> dict:
    """``name -> source`` of the README's code (``readme``) and of each docstring's ``>>>`` examples, each
    under a header naming where it comes from."""
    with open(os.path.join(sdist, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    # the first block is jax.example_libraries only; the last is a fragment of the one before
    out = {"readme": HEADER.format(origin="README.md, its Python code blocks 2 to 8") + "\n".join(blocks[1:8])}
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
                    relative = os.path.relpath(path, sdist)
                    label = os.path.relpath(path, package)[:-3].replace(os.sep, "_").replace("_src_", "")
                    origin = (f"the >>> examples of the docstring at line {line} of {relative}, after the "
                              "imports they take for granted")
                    out[f"doc_{label}_{line}"] = (HEADER.format(origin=origin) + DOCTEST_IMPORTS
                                                  + "".join(e.source for e in examples))
    return out


def widekit_copy(source: str) -> str:
    """``source`` with ``neural_tangents`` replaced by ``widekit`` on import lines only."""
    return harness.on_import_lines(source, "neural_tangents", "widekit")


def sources(sdist: str) -> dict:
    """``name -> source`` as published: the example programs and modules, then the README and docstrings."""
    examples = os.path.join(sdist, "examples")
    out = {}
    for name in sorted(os.listdir(examples)):
        if name.endswith(".py") and name not in ("datasets.py", "__init__.py"):
            with open(os.path.join(examples, name)) as f:
                out[name[:-3]] = f.read()
    out.update(snippets(sdist))
    return out


def prepare(tree: str, published: dict, side: str) -> None:
    """``tree/examples/``: the ``published`` sources (on widekit's side with import lines changed), our
    drivers, and the offline stand-in ``datasets.py``."""
    package = os.path.join(tree, "examples")
    os.makedirs(package)
    open(os.path.join(package, "__init__.py"), "w").close()
    shutil.copy(os.path.join(TESTS, "examples", "datasets.py"), package)
    for name, source in list(published.items()) + list(DRIVERS.items()):
        with open(os.path.join(package, name + ".py"), "w") as f:
            f.write(widekit_copy(source) if side == "wk" and name in published else source)


def run(python: str, side: str, tree: str, name: str, timeout: float):
    """(return code, stdout, stderr, seconds) of one program on one side."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO if side == "wk" else "")
    env.pop("JAX_ENABLE_X64", None)
    start = time.time()
    try:
        p = subprocess.run([python, os.path.join(TESTS, "harness.py"), side, tree,
                            os.path.join(tree, "examples", name + ".py")],
                           capture_output=True, text=True, cwd=tree, env=env, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.time() - start
    except subprocess.TimeoutExpired:
        return "TIMEOUT", "", "", time.time() - start


def failure(err: str, code) -> str:
    """The last exception line of a failed run's stderr (or its last line, or its exit code)."""
    errors = [line for line in err.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    last = errors[-1:] or [line for line in err.splitlines() if line.strip()][-1:] or [f"exit {code}"]
    return last[0][:140]


def largest_difference(reference: str, ours: str) -> str:
    try:
        found = harness.differences(harness.numbers(reference), harness.numbers(ours))
    except ValueError as e:
        return str(e)
    worst = max(found, default=(0.0, "", 0.0, 0.0))
    return "identical" if worst[0] == 0 else f"{worst[0]:.2e} {worst[1]} ({worst[2]!r} vs {worst[3]!r})"


def write_tests(published: dict, nt_python: str, timeout: float) -> None:
    """The widekit copies into tests/nt_examples/examples/, neural-tangents' numbers into REFERENCE
    (format: tests/data/nt_examples_reference.README.md)."""
    for name in TESTED + MODULES:
        with open(os.path.join(TESTS, "examples", name + ".py"), "w") as f:
            f.write(widekit_copy(published[name]) if name in published else DRIVERS[name])
    meta = {"made_by": "experiments/benchmarks/nt_examples/run.py --write-tests",
            "date": datetime.date.today().isoformat(), "machine": platform.platform(),
            "neural_tangents": "0.6.5", "jax": "0.4.30", "programs": {}}
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(tmp, published, "nt")
        for name in TESTED + MODULES:
            entry = {"source_sha256": (hashlib.sha256(published[name].encode()).hexdigest()
                                       if name in published else None)}
            if name in TESTED:
                code, out, err, seconds = run(nt_python, "nt", tmp, name, timeout)
                if code != 0 and name in NT_VARIANTS:
                    entry["variant"] = "published code failed ({}); ran it with {} replaced by {}".format(
                        failure(err, code), *NT_VARIANTS[name])
                    with open(os.path.join(tmp, "examples", name + ".py"), "w") as f:
                        f.write(published[name].replace(*NT_VARIANTS[name]))
                    code, out, err, seconds = run(nt_python, "nt", tmp, name, timeout)
                printed = harness.numbers(out) if code == 0 else []
                entry.update(error=None if code == 0 else failure(err, code), seconds=round(seconds, 1),
                             labels=[label for label, _ in printed])
                for i, (_, values) in enumerate(printed):
                    values = np.asarray(values)
                    exact = np.array_equal(values.astype(np.float32), values, equal_nan=True)
                    arrays[f"{name}/{i}"] = values.astype(np.float32) if exact else values
                print(f"{name:30s} {seconds:6.1f} s  {entry['error'] or len(printed)}", flush=True)
            meta["programs"][name] = entry
    np.savez_compressed(REFERENCE, _meta=json.dumps(meta), **arrays)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="programs or snippets (default: all)")
    p.add_argument("--sdist", default=os.path.join(REPO, ".venv-nt", "src", "neural-tangents-0.6.5"),
                   help="neural-tangents' unpacked source distribution (reference_env.sh puts it there)")
    p.add_argument("--nt-python", default=os.path.join(REPO, ".venv-nt", "bin", "python"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--write-tests", action="store_true",
                   help="write the tests' copies and neural-tangents' numbers (tests/data/nt_examples_reference.npz)")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(args.sdist, "examples")):
        sys.exit(f"no neural-tangents examples at {args.sdist}/examples: run experiments/benchmarks/"
                 "reference_env.sh (it unpacks the 0.6.5 source distribution there), or pass --sdist")
    published = sources(args.sdist)
    if args.write_tests:
        return write_tests(published, args.nt_python, args.timeout)
    known = list(PROGRAMS) + [name for name in published if name.startswith(("readme", "doc_"))]
    args.names = args.names or known
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        p.error(f"unknown programs {unknown}; known: {', '.join(known)}")
    print(f"{'program':30s} {'nt (s)':>9s} {'widekit (s)':>12s}  largest relative difference (where)")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {side: os.path.join(tmp, side) for side in ("nt", "wk")}
        for side, tree in trees.items():
            prepare(tree, published, side)
        for name in args.names:
            results = {side: run(args.nt_python if side == "nt" else sys.executable, side, trees[side], name,
                                 args.timeout) for side in ("nt", "wk")}
            (rn, out_n, err_n, tn), (rw, out_w, err_w, tw) = results["nt"], results["wk"]
            if rn == 0 and rw == 0:
                verdict = largest_difference(out_n, out_w)
            else:
                failed, err, code = ("neural-tangents", err_n, rn) if rn != 0 else ("widekit", err_w, rw)
                verdict = f"{failed} failed: {failure(err, code)}"
            print(f"{name:30s} {tn:9.1f} {tw:12.1f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
