"""Many processes, one kernel: `experiments.kernel_job` and ``widekit kernel``.

Truth: the unbatched ``kernel_fn`` (values), a single process's tile store (bytes), a dense
NumPy solve (regression), and the tile order of the module docstring of `kernels.batch`
(which process computes which tile), written out here by hand.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import kernel_job
from experiments.__main__ import main
from kernels import stax
from kernels.spec import network_from_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = [["Dense", {"out_dim": 512, "W_std": 1.5, "b_std": 0.1}], ["Erf", {}],
        ["Dense", {"out_dim": 1, "W_std": 1.5, "b_std": 0.1}]]
N, B = 40, 8
TILES = [(i, j) for i in range(N // B) for j in range(i, N // B)]  # row-major upper triangle: 15 tiles
DIAG_REG = 1e-3
RANK = 10  # a preconditioner of rank < N, so that CG iterates


def _data():
    rng = np.random.default_rng(20240611)
    x = rng.normal(size=(N, 5))
    return x, np.sin(2 * x[:, 0]) + x[:, 1] ** 2, rng.normal(size=(7, 5))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Spec and data files, and the single-process kernel store (the reference bytes)."""
    folder = tmp_path_factory.mktemp("kernel_job")
    spec_file, data_file = folder / "net.json", folder / "data.npz"
    spec_file.write_text(json.dumps(SPEC))
    x, y, x_test = _data()
    np.savez(data_file, x=x, y=y, x_test=x_test)
    # One network object for every in-process run: its compiled tile functions are reused.
    layer = network_from_spec(SPEC)
    job = kernel_job.compute_kernel(layer, x, out=folder / "single", batch_size=B, progress=False)
    return dict(spec=spec_file, data=data_file, x=x, y=y, x_test=x_test, single=job.folder, layer=layer)


def _progress(folder):
    """Tiles recorded by each process's progress file: {p: [tile, ...]}."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("progress."):
            lines = (folder / name if hasattr(folder, "joinpath") else os.path.join(folder, name))
            with open(lines) as f:
                found[int(name.split(".")[1])] = [tuple(json.loads(line)["tile"]) for line in f if line.strip()]
    return found


def _same_bytes(folder_a, folder_b, names=("nngp", "ntk")):
    return all(open(os.path.join(folder_a, f"{n}.npy"), "rb").read() == open(os.path.join(folder_b, f"{n}.npy"),
                                                                            "rb").read() for n in names)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _processes(problem, out, count, *extra):
    """``count`` `widekit kernel --distributed` processes on this machine's CPU; their outputs."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "experiments", "kernel", "--network", str(problem["spec"]), "--data",
               str(problem["data"]), "--out", str(out), "--batch-size", str(B), "--no-progress", *extra,
               "--distributed", "--coordinator", f"localhost:{port}", "--num-processes", str(count)]
    running = [subprocess.Popen(command + ["--process-id", str(p)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for p in range(count)]
    outputs = []
    try:
        for process in running:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
    for process, output in zip(running, outputs):
        assert process.returncode == 0, output
    return outputs


def test_the_single_process_store_holds_the_unbatched_kernel(problem):
    _, _, kernel_fn = stax.serial(*[getattr(stax, name)(**kwargs) for name, kwargs in SPEC])
    direct = kernel_fn(problem["x"], None, ("nngp", "ntk"))
    for name in ("nngp", "ntk"):
        stored = np.load(os.path.join(problem["single"], f"{name}.npy"))
        truth = np.asarray(getattr(direct, name))
        assert stored.dtype == np.float64 and stored.shape == (N, N)
        assert np.max(np.abs(stored - truth)) <= 1e-12 * np.max(np.abs(truth))
    assert _progress(problem["single"]) == {0: TILES}


def test_two_processes_write_the_single_process_kernel_bit_for_bit(problem, tmp_path):
    outputs = _processes(problem, tmp_path, 2, "--get", "nngp,ntk")
    folder = kernel_job.kernel_folder(tmp_path, ("nngp", "ntk"))
    assert _progress(folder) == {0: TILES[0::2], 1: TILES[1::2]}  # each process did its share, once
    assert _same_bytes(folder, problem["single"])
    assert "nngp (40, 40) float64" in outputs[0] and "nngp (40, 40)" not in outputs[1]  # process 0 reports


def test_a_killed_share_is_redone_and_nothing_else(problem, tmp_path):
    x = problem["x"]
    first = kernel_job.compute_kernel(problem["layer"], x, out=tmp_path, batch_size=B, process_index=0, process_count=2,
                                      progress=False)
    assert _progress(first.folder) == {0: TILES[0::2]}
    # The check below can fail: half the tiles (process 1's, which never ran) are still missing.
    assert not _same_bytes(first.folder, problem["single"])
    rerun = kernel_job.compute_kernel(problem["layer"], x, out=tmp_path, batch_size=B, progress=False)
    assert rerun.folder == first.folder
    assert _progress(rerun.folder) == {0: TILES[0::2] + TILES[1::2]}  # only the missing share was computed
    assert _same_bytes(rerun.folder, problem["single"])


def _dense_prediction(kernel_fn, x, y, x_test, absolute=False):
    """``K_*X (K + shift I)^{-1} y`` from one unbatched kernel of train and test inputs, solved densely."""
    both = np.asarray(kernel_fn(np.concatenate([x, x_test]), None, "nngp"))
    k, k_test = both[:len(x), :len(x)], both[len(x):, :len(x)]
    shift = DIAG_REG if absolute else DIAG_REG * np.trace(k) / len(k)
    return k_test @ np.linalg.solve(k + shift * np.eye(len(k)), y)


def test_regression_streams_the_job_kernel_and_matches_a_dense_solve(problem, tmp_path):
    x, y, x_test = problem["x"], problem["y"], problem["x_test"]
    job = kernel_job.compute_kernel(problem["layer"], x, get="nngp", out=tmp_path, batch_size=B, progress=False)
    result = kernel_job.regress(problem["layer"], x, y, x_test, "nngp", tmp_path, B, diag_reg=DIAG_REG, tol=1e-12, n_centers=RANK,
                                progress=False)
    assert _progress(job.folder) == {0: TILES}  # the regression recomputed no tile
    assert os.listdir(tmp_path) and not any(n.startswith("kernel-") and n != "kernel-nngp"
                                             for n in os.listdir(tmp_path))
    truth = _dense_prediction(problem["layer"][2], x, y, x_test)
    scale = np.max(np.abs(truth))
    assert np.max(np.abs(result.predictions - truth)) < 1e-10 * scale  # measured 5e-14, 48 CG iterations
    saved = np.load(tmp_path / "regression-nngp.npz")
    assert np.array_equal(saved["predictions"], result.predictions) and saved["iterations"] == result.iterations
    # A deliberately wrong ridge (absolute instead of relative to trace(K)/N) fails the same check.
    wrong = _dense_prediction(problem["layer"][2], x, y, x_test, absolute=True)
    assert np.max(np.abs(wrong - truth)) > 1e-4 * scale


@pytest.mark.slow
def test_two_process_regression_agrees_with_one_process(problem, tmp_path):
    x, y, x_test = problem["x"], problem["y"], problem["x_test"]
    _processes(problem, tmp_path / "two", 2, "--get", "nngp", "--regression", "nngp", "--test-key", "x_test",
               "--diag-reg", str(DIAG_REG), "--tol", "1e-12", "--rank", str(RANK))
    assert _progress(tmp_path / "two" / "kernel-nngp") == {0: TILES[0::2], 1: TILES[1::2]}  # computed once
    one = kernel_job.regress(problem["layer"], x, y, x_test, "nngp", tmp_path / "one", B, diag_reg=DIAG_REG, tol=1e-12, n_centers=RANK,
                             progress=False)
    two = np.load(tmp_path / "two" / "regression-nngp.npz")
    assert np.max(np.abs(two["predictions"] - one.predictions)) <= 1e-12 * np.max(np.abs(one.predictions))
    truth = _dense_prediction(problem["layer"][2], x, y, x_test)
    assert np.max(np.abs(two["predictions"] - truth)) < 1e-8 * np.max(np.abs(truth))


@pytest.mark.slow
def test_a_job_array_without_jax_distributed(problem, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "experiments", "kernel", "--network", str(problem["spec"]), "--data",
               str(problem["data"]), "--out", str(tmp_path), "--batch-size", str(B), "--no-progress"]
    tasks = [subprocess.Popen(command + ["--process-index", str(p), "--process-count", "3"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in range(3)]
    for task in tasks:
        output = task.communicate(timeout=300)[0]
        assert task.returncode == 0, output
        assert "the kernel is complete once every share has run" in output
    folder = kernel_job.kernel_folder(tmp_path, ("nngp", "ntk"))
    assert _progress(folder) == {p: TILES[p::3] for p in range(3)}
    assert _same_bytes(folder, problem["single"])


@pytest.mark.parametrize("options, message", [
    (["--coordinator", "localhost:1"], "--coordinator configure jax.distributed: add --distributed"),
    (["--distributed", "--process-index", "0", "--process-count", "2"], "split the work without jax.distributed"),
    (["--process-index", "2", "--process-count", "2"], "need 0 <= I < N; received 2, 2"),
    (["--process-index", "1"], "need 0 <= I < N; received 1, None"),
    (["--process-index", "0", "--process-count", "2", "--regression", "nngp"], "--regression needs the whole"),
    (["--y-key", "y"], "--y-key configure the regression"),
    (["--rank", "5"], "--rank configure the regression"),
    (["--regression", "nngp", "--x2-key", "x_test"], "leave out --x2-key"),
    (["--get", "nngp,cov1"], "--get nngp,cov1: expected names from nngp, ntk"),
    (["--batch-size", "-1"], "--batch-size -1"),
    (["--x-key", "inputs"], "holds no array 'inputs'; it holds x, y, x_test"),
])
def test_refused_options_are_named_before_any_work(problem, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    status = main(["kernel", "--network", str(problem["spec"]), "--data", str(problem["data"]), "--out", str(out),
                   *options])
    assert status == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_of_another_run_is_refused_untouched(problem, capsys):
    folder = problem["single"]
    before = {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)}
    status = main(["kernel", "--network", str(problem["spec"]), "--data", str(problem["data"]),
                   "--out", os.path.dirname(folder), "--batch-size", "5", "--no-progress"])
    assert status == 1
    assert "batch.json' records a run with different arguments (tile: stored [8, 8], now [5, 5])" in \
        capsys.readouterr().err
    assert {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)} == before


def test_python_entry_point_refuses_bad_arguments(problem, tmp_path):
    with pytest.raises(ValueError, match="compute_kernel: argument `get`"):
        kernel_job.compute_kernel(SPEC, problem["x"], get="cov3", out=tmp_path)
    with pytest.raises(TypeError, match="compute_kernel: argument `out`"):
        kernel_job.compute_kernel(SPEC, problem["x"])
    with pytest.raises(TypeError, match="compute_kernel: argument `spec`"):
        kernel_job.compute_kernel(42, problem["x"], out=tmp_path)
    with pytest.raises(ValueError, match=r"network_from_spec: item \[1\] names an unknown layer 'Rectifier'"):
        kernel_job.compute_kernel([["Dense", {"out_dim": 4}], ["Rectifier", {}]], problem["x"], out=tmp_path)
    with pytest.raises(ValueError, match="regress: argument `get`"):
        kernel_job.regress(SPEC, problem["x"], problem["y"], get=("nngp",), out=tmp_path)
