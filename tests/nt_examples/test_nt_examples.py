"""neural-tangents 0.6.5's example programs, ported by changing their import lines only, print its numbers.

The copies in ``examples/`` (Apache-2.0, see NOTICE) and neural-tangents' numbers
(``tests/data/nt_examples_reference.npz``, printed by the published programs in the reference
environment on the same stand-in data) are written by ``experiments/benchmarks/nt_examples/run.py
--write-tests``. Each program runs here in a subprocess, in float32 as published, through
``harness.py``; every number it prints (and every array it leaves in its globals) must agree with
neural-tangents' to 1e-4 relative, as issue 14 asks of float32 programs; the two longest are marked
slow (``SLOW``). This file holds the example
programs; ``test_nt_snippets.py`` the README's code and the docstring examples (two files, so that
pytest-xdist runs them on both cores).
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FAST_COMPILE
from tests.nt_examples import harness

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(os.path.dirname(HERE), "data", "nt_examples_reference.npz")
TOLERANCE = 1e-4  # float32 programs (issue 14)

with np.load(REFERENCE) as _data:
    META = json.loads(str(_data["_meta"]))
    PRINTED = {name: [(label, _data[f"{name}/{i}"]) for i, label in enumerate(entry.get("labels", []))]
               for name, entry in META["programs"].items()}
PROGRAMS = ("infinite_fcn", "weight_space", "function_space", "imdb", "imdb_dummy", "elementwise",
            "elementwise_numerical", "empirical_ntk")
SLOW = ("function_space", "doc_empirical_15")  # 19 s and 16 s; the others take 2-10 s each


def run_copy(name: str) -> str:
    """What ``examples/NAME.py`` prints when run by widekit (float32, as published)."""
    repo = os.path.dirname(os.path.dirname(HERE))  # this checkout's widekit, installed or not
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH")))))
    env.pop("JAX_ENABLE_X64", None)
    if env.get("XLA_FLAGS") == FAST_COMPILE:  # the test session's: it slows these longer programs (18 s -> 27 s)
        del env["XLA_FLAGS"]
    p = subprocess.run([sys.executable, os.path.join(HERE, "harness.py"), "wk", HERE,
                        os.path.join(HERE, "examples", name + ".py")],
                       capture_output=True, text=True, cwd=HERE, env=env, timeout=600)
    assert p.returncode == 0, f"{name} failed under widekit:\n{p.stderr[-3000:]}"
    return p.stdout


def check_against_reference(name: str) -> list:
    """Runs the copy and compares what it prints with neural-tangents' numbers; returns what it printed."""
    ours = harness.numbers(run_copy(name))
    worst = [d for d in harness.differences(PRINTED[name], ours) if d[0] > TOLERANCE]
    assert not worst, f"{name}: differs from neural-tangents 0.6.5 (relative, label, nt, widekit): {worst}"
    return ours


@pytest.mark.parametrize("name", sorted(n for n, e in META["programs"].items() if e["source_sha256"]))
def test_copy_differs_from_the_published_source_in_import_lines_only(name):
    with open(os.path.join(HERE, "examples", name + ".py")) as f:
        copy = f.read()
    assert "neural_tangents" not in "".join(line for line in copy.splitlines() if harness.IMPORT_LINE.match(line))
    digest = hashlib.sha256(harness.on_import_lines(copy, "widekit", "neural_tangents").encode()).hexdigest()
    assert digest == META["programs"][name]["source_sha256"], \
        f"examples/{name}.py is not neural-tangents' {name} with its import lines changed"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [])
                                  for n in PROGRAMS if not META["programs"][n]["error"]])
def test_program_prints_neural_tangents_numbers(name):
    assert PRINTED[name] or name.startswith("elementwise"), "a reference that prints nothing checks nothing"
    check_against_reference(name)


def test_empirical_ntk_implementations_agree():
    """neural-tangents' own run of this program fails on jax 0.4.30 (``ad.source_info_util``), so there
    are no numbers of its to compare with. The program checks itself: the four implementations'
    kernels (Jacobian contraction, NTK-vector products, structured derivatives, auto) must agree
    pairwise to 1e-4; its 16 printed maxima are checked here too, so that a run printing nothing fails."""
    assert META["programs"]["empirical_ntk"]["error"]
    printed = harness.numbers(run_copy("empirical_ntk"))
    assert len(printed) == 16 and all(abs(v[0]) < 1e-4 for _, v in printed), printed


def test_comparison_sees_a_difference_at_the_tolerance():
    """The check above is only as good as ``differences``: a 2e-4 change in one printed number, in one
    array entry, or a missing line must show."""
    reference = [("loss = 0.25", [0.25]), ("nngp (2,)", [1.0, 2.0])]
    assert max(d[0] for d in harness.differences(reference, reference)) == 0
    assert harness.differences(reference, [("loss", [0.25 * (1 + 2e-4)]), ("nngp", [1.0, 2.0])])[0][0] > TOLERANCE
    assert harness.differences(reference, [("loss", [0.25]), ("nngp", [1.0, 2.0 + 4e-4])])[1][0] > TOLERANCE
    with pytest.raises(ValueError):
        harness.differences(reference, reference[:1])
    assert harness.numbers("Network Loss = 0.5\nelapsed 3.2 seconds\n@@ k (2,): 1 2\n") == \
        [("Network Loss = 0.5", [0.5]), ("k (2,)", [1.0, 2.0])]
