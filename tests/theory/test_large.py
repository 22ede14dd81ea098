"""theory.large against dense float64 solves computed here (theory.predict, NumPy), and deliberately wrong solvers."""
import os

import numpy as np
import pytest

from tests.theory.closed_form_mlp import mlp_kernel_fn
from theory import large, predict

N, D, N_TEST = 240, 12, 30


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    x, x_test = rng.standard_normal((N, D)), rng.standard_normal((N_TEST, D))
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1] * x[:, 2])], 1) + 0.1 * rng.standard_normal((N, 2))
    kernel_fn = mlp_kernel_fn(depth=2, W_std=1.5, b_std=0.1)
    k = {g: np.asarray(kernel_fn(x, None, g)) for g in ("nngp", "ntk")}
    k_td = {g: np.asarray(kernel_fn(x_test, x, g)) for g in ("nngp", "ntk")}
    return dict(x=x, x_test=x_test, y=y, kernel_fn=kernel_fn, k=k, k_td=k_td)


def direct(p, diag_reg, get="nngp", x_test=True):
    return np.asarray(predict.gp_inference(p["k"][get], p["y"], diag_reg=diag_reg)(
        get, p["k_td"][get] if x_test else p["k"][get]))


# 80 block rows: three row blocks, each of 80 x 80 tiles, so the mirrored upper-triangle product is exercised.
SMALL_BLOCKS = 3 * 8 * N * 80


@pytest.fixture(scope="module")
def cg_result(problem):
    return large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"],
                                   diag_reg=1e-3, tol=1e-12, n_centers=40, memory_bytes=SMALL_BLOCKS, progress=False)


def test_cg_equals_the_direct_solve(problem, cg_result):
    assert rel(cg_result.predictions, direct(problem, 1e-3)) < 1e-8
    assert cg_result.residual < 1e-12 and cg_result.iterations > 0
    assert cg_result.predictions.shape == (N_TEST, 2)


def test_cg_residual_is_the_true_residual(problem):
    # With no ridge and x_test = x_train, predictions are K alpha = K~ alpha, so the residual is checkable here.
    out = large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], None, get="ntk", tol=1e-10,
                                  n_centers=60, progress=False)
    independent = rel(out.predictions, problem["y"])
    assert out.residual < 1e-10
    assert abs(out.residual - independent) < 1e-12
    assert rel(out.predictions, direct(problem, 0.0, "ntk", x_test=False)) < 1e-8


def _upper_triangle_only(self, v):
    """A plausible tiling bug: each tile above the diagonal used for its block but not its mirror."""
    out = np.zeros_like(v)
    for r0 in self.blocks():
        r1 = min(r0 + self.rows, self.n)
        out[r0:r1] = self.cross(self.x[r0:r1], self.x[r0:]) @ v[r0:]
    return out


def test_a_wrong_kernel_product_is_caught(problem, monkeypatch):
    monkeypatch.setattr(large.KernelRows, "matmat", _upper_triangle_only)
    with pytest.warns(large.ConvergenceWarning):  # a non-symmetric operator: CG stalls, and says so
        out = large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], None, tol=1e-10,
                                      n_centers=40, memory_bytes=SMALL_BLOCKS, max_iterations=60, progress=False)
    assert rel(out.predictions, direct(problem, 0.0, x_test=False)) > 1e-3
    assert rel(out.predictions, problem["y"]) > 1e-3  # the residual computed from a dense K here is large


def test_a_wrong_preconditioner_never_passes_for_converged(problem, monkeypatch):
    # A preconditioner that is not symmetric positive definite: the true residual is recomputed, so the run
    # either reports failure or, if it claims convergence, is right.
    monkeypatch.setattr(large, "nystrom_preconditioner", lambda factor, shift: lambda v: v + 0.9 * np.roll(v, 1, 0))
    with pytest.warns(large.ConvergenceWarning):
        out = large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"],
                                      diag_reg=1e-3, tol=1e-12, max_iterations=40, progress=False)
    assert out.residual > 1e-12
    assert rel(out.predictions, direct(problem, 1e-3)) > 1e-12


def test_lanczos_gives_gradient_flow_at_finite_times(problem):
    times = np.array([1.0, 300.0, 3e4, np.inf])
    out = large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"], get="ntk",
                                  diag_reg=1e-3, t=times, learning_rate=0.5, tol=1e-11, progress=False)
    flow = predict.gradient_descent_mse(problem["k"]["ntk"], problem["y"], learning_rate=0.5, diag_reg=1e-3,
                                        solver="eigh")
    expected = np.asarray(flow(times, None, np.zeros((N_TEST, 2)), problem["k_td"]["ntk"]))
    assert out.predictions.shape == (4, N_TEST, 2)
    assert rel(out.predictions, expected) < 1e-8
    # A wrong time convention (learning_rate not applied) is far off at the finite times.
    wrong = np.asarray(flow(times / 0.5, None, np.zeros((N_TEST, 2)), problem["k_td"]["ntk"]))
    assert rel(out.predictions[:3], wrong[:3]) > 1e-3


# ----------------------------------------------------------------------------- Nyström


def dense_nystrom(p, m, diag_reg, ridge_factor=1.0):
    """The subset-of-regressors solution by a dense solve (ridge_factor != 1: a wrong normalization)."""
    k, y = p["k"]["nngp"], p["y"]
    centres = large.nystrom_centres(N, m, 0)
    k_nm = k[:, centres]
    shift = diag_reg * np.trace(k) / N * ridge_factor
    beta = np.linalg.solve(k_nm.T @ k_nm + shift * k[np.ix_(centres, centres)], k_nm.T @ y)
    return p["k_td"]["nngp"][:, centres] @ beta


@pytest.fixture(scope="module")
def nystrom(problem):
    return {m: large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"],
                                       diag_reg=1e-2, method="nystrom", n_centers=m, tol=1e-12, progress=False)
            for m in (15, 60, N)}


def test_nystrom_with_all_centres_is_the_exact_solve(problem, nystrom):
    assert rel(nystrom[N].predictions, direct(problem, 1e-2)) < 1e-8
    assert nystrom[N].residual < 1e-12


def test_nystrom_matches_the_dense_restricted_solve_and_improves_with_m(problem, nystrom):
    exact = direct(problem, 1e-2)
    errors = [rel(nystrom[m].predictions, exact) for m in (15, 60, N)]
    assert errors[0] > errors[1] > errors[2]
    for m in (15, 60):
        assert rel(nystrom[m].predictions, dense_nystrom(problem, m, 1e-2)) < 1e-8
        # FALKON's own normalization (ridge times N / M) in our convention is a different estimator.
        assert rel(nystrom[m].predictions, dense_nystrom(problem, m, 1e-2, N / m)) > 1e-3


# ----------------------------------------------------------------------------- resuming


def test_cg_resumes_from_its_checkpoint(problem, cg_result, tmp_path, monkeypatch):
    file = str(tmp_path / "iterate.npz")
    args = (problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"])
    kwargs = dict(diag_reg=1e-3, tol=1e-12, n_centers=40, memory_bytes=SMALL_BLOCKS, progress=False,
                  checkpoint=file, checkpoint_every=3)
    real = large.KernelRows.matmat
    calls = []

    def interrupted(self, v):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(self, v)

    monkeypatch.setattr(large.KernelRows, "matmat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        large.kernel_regression(*args, **kwargs)
    with np.load(file) as saved:
        assert int(saved["iterations"]) == 6
    calls.clear()
    monkeypatch.setattr(large.KernelRows, "matmat", lambda self, v: (calls.append(1), real(self, v))[1])
    resumed = large.kernel_regression(*args, **kwargs)
    assert rel(resumed.predictions, direct(problem, 1e-3)) < 1e-8
    assert rel(resumed.predictions, cg_result.predictions) < 1e-9
    assert resumed.iterations >= 6 and len(calls) < cg_result.iterations + 1
    with pytest.raises(ValueError, match="iterate.npz.*another problem"):
        large.kernel_regression(problem["kernel_fn"], problem["x"], 2 * problem["y"], problem["x_test"], **kwargs)


def test_cg_streams_a_verified_tile_store(problem, tmp_path):
    kwargs = dict(diag_reg=1e-3, tol=1e-12, n_centers=40, progress=False, path=str(tmp_path))
    args = (problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"])
    out = large.kernel_regression(*args, **kwargs)
    assert rel(out.predictions, direct(problem, 1e-3)) < 1e-8
    assert os.path.exists(tmp_path / "kernel-nngp" / "batch.json") and os.path.exists(tmp_path / "cg-nngp.npz")
    again = large.kernel_regression(*args, **kwargs)  # resumes from the converged iterate: no new iterations
    assert again.iterations == out.iterations and rel(again.predictions, out.predictions) < 1e-12


# ----------------------------------------------------------------------------- random features


def _finite_mlp(width, depth=2, W_std=1.5, b_std=0.1):
    """A finite MLP in the "ntk" parameterization (what mlp_kernel_fn's NNGP is the limit of), written here.

    In NumPy, seeded by the key's bits: JAX's random and matmul ops would compile per shape (seconds each).
    """

    def init_fn(key, input_shape):
        rng = np.random.default_rng(np.asarray(key).tolist())
        sizes = [input_shape[-1]] + [width] * (depth + 1)
        params = [(rng.standard_normal((sizes[i], sizes[i + 1])), rng.standard_normal(sizes[i + 1]))
                  for i in range(depth + 1)]
        return (input_shape[0], width), params

    def apply_fn(params, x):
        h = np.asarray(x)
        for i, (w, b) in enumerate(params):
            if i:
                h = np.maximum(h, 0.0)
            h = W_std * h @ w / np.sqrt(w.shape[0]) + b_std * b
        return h

    return init_fn, apply_fn


def test_random_features_is_regression_with_the_feature_kernel(problem):
    network = _finite_mlp(300)
    times = np.array([10.0, np.inf])
    out = large.kernel_regression(None, problem["x"], problem["y"], problem["x_test"], diag_reg=1e-2, t=times,
                                  method="random_features", network=network, n_samples=2, progress=False)
    import jax
    phis = []
    for key in jax.random.split(jax.random.PRNGKey(0), 2):
        params = network[0](key, problem["x"].shape)[1]
        phis.append([np.asarray(network[1](params, z)) for z in (problem["x"], problem["x_test"])])
    phi, phi_test = (np.concatenate([p[i] for p in phis], axis=1) / np.sqrt(600) for i in (0, 1))
    k, k_td = phi @ phi.T, phi_test @ phi.T
    flow = predict.gradient_descent_mse(k, problem["y"], diag_reg=1e-2)
    expected = np.asarray(flow(times, None, np.zeros((N_TEST, 2)), k_td))
    assert rel(out.predictions, expected) < 1e-8 and out.residual < 1e-10
    wrong = np.asarray(predict.gradient_descent_mse(k / 300, problem["y"], diag_reg=1e-2)(
        times, None, np.zeros((N_TEST, 2)), k_td / 300))  # features over width instead of sqrt(width)
    assert rel(out.predictions, wrong) > 1e-3


@pytest.mark.slow
def test_random_features_error_falls_like_inverse_sqrt_width(problem):
    # The error of one draw is dominated by a few random modes (seed 0 alone fits a slope of -0.32), so the
    # mean squared error over four seeds is fitted: slope -1 in width for a W^{-1/2} rms error.
    k = problem["k"]["nngp"]
    widths = np.array([16, 64, 256, 1024])
    squared = [np.mean([rel((lambda phi: phi @ phi.T)(large.random_features(_finite_mlp(w), problem["x"], 8, seed)),
                            k) ** 2 for seed in range(4)]) for w in widths]
    slope = np.polyfit(np.log(widths), np.log(squared), 1)[0] / 2
    assert -0.7 < slope < -0.35, (slope, squared)  # -1 would be a 1/W error, 0 no convergence


# ----------------------------------------------------------------------------- sketched features: solver, preconditioner


def relu_features(m, get="nngp"):
    """kernels.features' sketched features of the fixture's MLP (depth 2, W_std 1.5, b_std 0.1)."""
    import jax

    from kernels import features
    return features.relu_mlp_feature_map(2, m, jax.random.PRNGKey(0), W_std=1.5, b_std=0.1, get=get)


@pytest.fixture(scope="module")
def preconditioned(problem):
    kwargs = dict(diag_reg=1e-3, tol=1e-10, progress=False)
    args = (problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"])
    return dict(none=large.kernel_regression(*args, n_centers=0, **kwargs),
                rf=large.kernel_regression(*args, preconditioner="random_features", features=relu_features(1024),
                                           **kwargs))


def test_cg_with_random_features_preconditioner_is_the_direct_solve_in_fewer_iterations(problem, preconditioned):
    # Measured: 36 iterations against 157 without a preconditioner (1025 features for N = 240). With too few
    # features the Woodbury preconditioner is worse than none (64 features: 701 iterations; 256: 172), since
    # the features' error is then far above the ridge.
    exact = direct(problem, 1e-3)
    none, rf = preconditioned["none"], preconditioned["rf"]
    assert rel(rf.predictions, exact) < 1e-6 and rel(none.predictions, exact) < 1e-6
    assert rf.iterations < none.iterations / 2, (rf.iterations, none.iterations)
    # The preconditioner's own approximation is far from that solution: the agreement is CG's, not the features'.
    alone = large.kernel_regression(None, problem["x"], problem["y"], problem["x_test"], diag_reg=1e-3,
                                    method="random_features", features=relu_features(1024), progress=False)
    assert rel(alone.predictions, exact) > 1e-2


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_sketched_features_regression_is_regression_with_their_kernel(problem, get):
    feature_map = relu_features(128, get)
    phi, phi_test = (np.asarray(feature_map(z)) for z in (problem["x"], problem["x_test"]))
    times = np.array([30.0, np.inf])
    out = large.kernel_regression(None, problem["x"], problem["y"], problem["x_test"], get=get, diag_reg=1e-2,
                                  t=times, method="random_features", features=feature_map, progress=False,
                                  memory_bytes=3 * 8 * 257 * 50)  # blocks of 50 rows (NNGP: 129 columns)
    flow = predict.gradient_descent_mse(phi @ phi.T, problem["y"], diag_reg=1e-2)
    expected = np.asarray(flow(times, None, np.zeros((N_TEST, 2)), phi_test @ phi.T))
    assert rel(out.predictions, expected) < 1e-8 and out.residual < 1e-10
    exact = np.asarray(predict.gradient_descent_mse(problem["k"][get], problem["y"], diag_reg=1e-2)(
        times, None, np.zeros((N_TEST, 2)), problem["k_td"][get]))
    assert rel(out.predictions, exact) > 1e-3  # 129 features are not the exact kernel
    # Without a ridge at infinite time: the minimum-norm fit in feature space (fewer features than N: least squares).
    ls = large.kernel_regression(None, problem["x"], problem["y"], None, get=get, method="random_features",
                                 features=feature_map, progress=False)
    fitted = phi @ np.linalg.lstsq(phi, problem["y"], rcond=None)[0]
    assert rel(ls.predictions, fitted) < 1e-6


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="lu"), "method"),
    (dict(get="ntkgp"), "get"),
    (dict(diag_reg=-1.0), "diag_reg"),
    (dict(tol=0.0), "tol"),
    (dict(tol=2.0), "tol"),
    (dict(t=-1.0), "t"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(method="nystrom"), "n_centers"),
    (dict(method="nystrom", n_centers=N + 1), "n_centers"),
    (dict(method="nystrom", n_centers=10, t=1.0), "t"),
    (dict(n_centers=-1), "n_centers"),
    (dict(max_iterations=0), "max_iterations"),
    (dict(memory_bytes=10), "memory_bytes"),
    (dict(checkpoint_every=0, checkpoint="c.npz"), "checkpoint_every"),
    (dict(checkpoint="c.npz", path="p"), "checkpoint"),
    (dict(method="nystrom", n_centers=10, checkpoint="c.npz"), "checkpoint"),
    (dict(network=(len, len)), "network"),
    (dict(progress="yes"), "progress"),
    (dict(diag_reg_absolute_scale=1), "diag_reg_absolute_scale"),
    (dict(preconditioner="jacobi"), "preconditioner"),
    (dict(preconditioner="random_features"), "features"),
    (dict(preconditioner="random_features", features=relu_features(8, "ntk")), "features"),
    (dict(preconditioner="random_features", features=relu_features(8)), "diag_reg"),
    (dict(preconditioner="random_features", features=relu_features(8), diag_reg=1e-3, n_centers=5), "n_centers"),
    (dict(preconditioner="random_features", features=relu_features(8), diag_reg=1e-3, t=1.0), "preconditioner"),
    (dict(preconditioner="random_features", features=len, diag_reg=1e-3), "features"),
    (dict(features=relu_features(8)), "features"),
    (dict(method="nystrom", n_centers=10, preconditioner="nystrom"), "preconditioner"),
    (dict(method="nystrom", n_centers=10, features=relu_features(8)), "features"),
])
def test_bad_arguments_are_named(problem, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=f"kernel_regression: argument `{name}`"):
        large.kernel_regression(problem["kernel_fn"], problem["x"], problem["y"], problem["x_test"],
                                **{"progress": False, **kwargs})


def test_bad_inputs_are_named(problem):
    p = problem
    with pytest.raises(ValueError, match="argument `y_train`"):
        large.kernel_regression(p["kernel_fn"], p["x"], p["y"][:-1], p["x_test"], progress=False)
    with pytest.raises(ValueError, match="argument `x_test`"):
        large.kernel_regression(p["kernel_fn"], p["x"], p["y"], p["x_test"][:, :3], progress=False)
    with pytest.raises(TypeError, match="argument `kernel_fn`"):
        large.kernel_regression("relu", p["x"], p["y"], p["x_test"], progress=False)
    with pytest.raises(ValueError, match="argument `kernel_fn`"):
        large.kernel_regression(p["kernel_fn"], p["x"], p["y"], None, method="random_features",
                                network=_finite_mlp(8), progress=False)
    with pytest.raises(ValueError, match="argument `network`"):
        large.kernel_regression(None, p["x"], p["y"], None, method="random_features", progress=False)
    with pytest.raises(ValueError, match="argument `get`"):
        large.kernel_regression(None, p["x"], p["y"], None, get="ntk", method="random_features",
                                network=_finite_mlp(8), progress=False)
    with pytest.raises(ValueError, match="argument `network`"):
        large.kernel_regression(None, p["x"], p["y"], None, method="random_features", network=_finite_mlp(8),
                                features=relu_features(8), progress=False)
    with pytest.raises(ValueError, match="argument `features`"):
        large.kernel_regression(None, p["x"], p["y"], None, method="random_features",
                                features=relu_features(8, "ntk"), progress=False)
