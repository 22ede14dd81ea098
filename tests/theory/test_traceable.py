"""`theory.predict` under `jax.jit` and `jax.grad` (issue 14, item 7).

neural-tangents 0.6.5 jits its predictors and differentiates them with respect
to the kernel matrices, the labels, the time and `diag_reg`; ours do the same.
Truth used here, none of it produced by the traced code under test:

* neural-tangents 0.6.5's values (`tests/data/nt_predict_reference.npz`);
* direct iteration of discrete gradient descent (which neural-tangents lacks);
* the host float64 path on concrete inputs (checked against neural-tangents
  in `test_predict_reference.py`), through central finite differences;
* closed forms of two derivatives: d λ_max / dK = v v^T, and the gradient-flow
  equation d f_t / dt = -(lr / y.size) K_reg (f_t - y).

Next to each agreement check, a deliberately wrong computation is shown to fail it.
"""
import pathlib
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import linalg, predict
from tests.theory.closed_form_mlp import mlp_kernel_fn
from tests.theory.oracle import relative_error
from tests.theory.test_predict_reference import _table_kernel_fn

PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "nt_predict_reference.npz"
pytestmark = pytest.mark.skipif(not PATH.exists(), reason="nt_predict_reference.npz not generated yet")
NAME = "mlp_relu"
Pair = namedtuple("Pair", ("nngp", "ntk"))
REFERENCE_TOL = 1e-6  # neural-tangents' float64 values, as in test_predict_reference.py
ODE_TOL = 1e-5  # neural-tangents integrated with rtol = atol = 1.4e-8
FLOAT64_TOL = 1e-10  # traced float64 vs host float64: the same formulas, other LAPACK calls
FLOAT32_TOL = 2e-5  # traced float32 vs host float64 (kernels' condition numbers <= 63; measured <= 4e-6)
GRAD_TOL = 1e-6  # analytic vs central finite differences with h = 1e-5 (truncation ~1e-10)


def _cross_entropy(fx, y):
    return -jnp.mean(jax.nn.log_softmax(fx, axis=-1) * y)


class Case(namedtuple("Case", "fn args reference tol differentiable grad_args")):
    """fn(*args) -> outputs (a pytree); `reference`: the true leaves or None; `differentiable`:
    indices of args to take gradients in; `grad_args`: args with finite times for those."""


def _direct_gradient_descent(k, y, steps, f0, g0, k_td, learning_rate, diag_reg):
    """f <- f - h K_reg (f - y), f(x) <- f(x) - h K_xX (f - y), h = lr / y.size, iterated (float64)."""
    h = learning_rate / y.size
    k_reg = k + diag_reg * np.trace(k) / k.shape[0] * np.eye(k.shape[0])
    f, g = np.broadcast_to(f0, y.shape).astype(np.float64), np.broadcast_to(g0, (k_td.shape[0], y.shape[1]))
    train, test = [], []
    for step in range(max(steps) + 1):
        if step in steps:
            train.append(f.copy())
            test.append(g.copy())
        f, g = f - h * k_reg @ (f - y), g - h * k_td @ (f - y)
    return np.stack(train), np.stack(test)


def _cases(ref):
    lr, diag_reg = (float(v) for v in ref["_settings"][0])
    r = {key.split("/", 1)[1]: ref[key] for key in ref.files if key.startswith(f"{NAME}/")}
    times, finite_times = ref["_times"], np.array([0.5, 2.0])
    pair = {w: Pair(r[f"k_{w}_nngp"], r[f"k_{w}_ntk"]) for w in ("train_train", "test_train", "test_test")}
    k_dd, k_td, y, f0, g0 = r["k_train_train_ntk"], r["k_test_train_ntk"], r["y_train"], r["fx_train_0"], r["fx_test_0"]
    x, x_test = r["x_train"], r["x_test"]

    def gd_mse(k, y, t, reg, f0, g0, k_td):
        return predict.gradient_descent_mse(k, y, learning_rate=lr, diag_reg=reg)(t, f0, g0, k_td)

    def discrete(k, y, steps, f0, g0, k_td):
        return predict.gradient_descent_mse_discrete(k, y, lr, diag_reg=diag_reg)(steps, f0, g0, k_td)

    def ensemble(y, t, reg):
        fn = predict.gradient_descent_mse_ensemble(_table_kernel_fn(ref, NAME), x, y, learning_rate=lr, diag_reg=reg)
        return fn(t, x_test, None, compute_cov=True)

    def ensemble_of_inputs(x, y, t):
        fn = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), x, y, learning_rate=lr, diag_reg=diag_reg)
        return fn(t, x_test, "ntk", compute_cov=True)

    def gp(k_dd, y, reg, k_td, k_tt):
        return predict.gp_inference(k_dd, y, diag_reg=reg)(("nngp", "ntk", "ntkgp"), k_td, k_tt)

    def max_lr(k, momentum):
        return predict.max_learning_rate(k, 16, momentum=momentum)

    def gd_ce(k, y, t, f0, g0, k_td):
        fn = predict.gradient_descent(_cross_entropy, k, y, learning_rate=float(ref["_ce_learning_rate"]),
                                      momentum=float(ref["_ce_momentum"]))
        return fn(t, f0, g0, k_td)

    steps = [0, 3, 40]
    gp_ref = tuple(r[f"gp/s0/{g}/{v}"] for g in ("nngp", "ntk", "ntkgp") for v in ("mean", "cov"))
    ens_ref = tuple(r[f"ensemble/s0/{g}/{v}_test"] for g in ("nngp", "ntk") for v in ("mean", "cov"))
    gd_args = (k_dd, y, times, diag_reg, f0, g0, k_td)
    ce_args = (k_dd, r["gd_ce/y_train"], ref["_ce_times"], f0, g0, k_td)
    return {
        "gradient_descent_mse": Case(gd_mse, gd_args, (r["gd_mse/s0/ntk/fx_train"], r["gd_mse/s0/ntk/fx_test"]),
                                     REFERENCE_TOL, (0, 1, 2, 3), gd_args[:2] + (finite_times,) + gd_args[3:]),
        "gradient_descent_mse_discrete": Case(
            discrete, (k_dd, y, np.array(steps), f0, g0, k_td),
            _direct_gradient_descent(k_dd, y, steps, f0, g0, k_td, lr, diag_reg), REFERENCE_TOL, (0, 1, 5), None),
        "gradient_descent_mse_ensemble": Case(ensemble, (y, times, diag_reg), ens_ref, REFERENCE_TOL, (0, 1, 2),
                                              (y, finite_times, diag_reg)),
        "gradient_descent_mse_ensemble(x_train)": Case(ensemble_of_inputs, (x, y, finite_times), None, None,
                                                       (0, 1, 2), None),
        "gp_inference": Case(gp, (pair["train_train"], y, diag_reg, pair["test_train"], pair["test_test"]),
                             gp_ref, REFERENCE_TOL, (0, 1, 2), None),
        "max_learning_rate": Case(max_lr, (k_dd, 0.9), (r["max_lr_momentum"],), REFERENCE_TOL, (0, 1), None),
        "gradient_descent": Case(gd_ce, ce_args, (r["gd_ce/momentum/fx_train"], r["gd_ce/momentum/fx_test"]),
                                 ODE_TOL, (2,), None),
    }


@pytest.fixture(scope="module")
def cases():
    return _cases(np.load(PATH))


def _slow(*names):
    return [pytest.param(n, marks=pytest.mark.slow) for n in names]


# Each case compiles its own programs (0.5-3 s of CPU each); the default suite keeps the core ones.
REFERENCE_CASES = ["gradient_descent_mse", "gradient_descent_mse_discrete", "gradient_descent_mse_ensemble",
                   "gp_inference", "max_learning_rate"]
JIT_CASES = REFERENCE_CASES + _slow("gradient_descent_mse_ensemble(x_train)", "gradient_descent")
FLOAT32_CASES = ["gradient_descent_mse"] + _slow(
    "gradient_descent_mse_discrete", "gradient_descent_mse_ensemble", "gp_inference", "max_learning_rate")
GRAD_CASES = ["gradient_descent_mse", "gp_inference", "max_learning_rate"] + _slow(
    "gradient_descent_mse_discrete", "gradient_descent_mse_ensemble", "gradient_descent_mse_ensemble(x_train)",
    "gradient_descent")


def _leaves(tree):
    return [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]


def _worst(ours, truth):
    return max(relative_error(a, b) for a, b in zip(_leaves(ours), _leaves(truth)))


@pytest.mark.parametrize("name", JIT_CASES)
def test_jit_matches_reference_and_host_in_float64(cases, name):
    case = cases[name]
    with jax.enable_x64(True):
        jitted = jax.jit(case.fn)(*case.args)
        host = case.fn(*case.args)
    assert all(v.dtype == jnp.float64 for v in jax.tree_util.tree_leaves(jitted))
    assert _worst(jitted, host) < FLOAT64_TOL
    if case.reference is not None:
        assert _worst(jitted, case.reference) < case.tol


@pytest.mark.parametrize("name", REFERENCE_CASES + _slow("gradient_descent"))
def test_strict_rank_promotion_of_the_caller_changes_nothing(cases, name):
    """neural-tangents' tests run the solvers under ``jax_numpy_rank_promotion='raise'``; the solvers'
    own broadcasting (eigenvalues against targets) is by design, so the setting is the caller's alone:
    host and jitted values are neural-tangents', and the caller's own code is still strict."""
    case = cases[name]
    with jax.enable_x64(True), jax.numpy_rank_promotion("raise"):
        host, jitted = case.fn(*case.args), jax.jit(case.fn)(*case.args)
        with pytest.raises(ValueError, match="rank_promotion"):
            jnp.ones((3, 4)) + jnp.ones(4)
    for ours in (host, jitted):
        assert _worst(ours, case.reference) < case.tol


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_a_wrong_kernel_fails_the_reference_check(cases, name):
    """The criterion above sees a kernel off by 0.1% (time off by 0.1% for the ensemble)."""
    case = cases[name]
    wrong = list(case.args)
    i = 1 if name == "gradient_descent_mse_ensemble" else 0
    wrong[i] = jax.tree_util.tree_map(lambda a: a * 1.001, wrong[i])
    with jax.enable_x64(True):
        assert _worst(jax.jit(case.fn)(*wrong), case.reference) > case.tol


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_jit_without_x64_is_float32_and_close_to_host(cases, name):
    """Inside a jit without x64 the solves run in float32: results float32, within float32 accuracy."""
    case = cases[name]
    with jax.enable_x64(True):
        host = case.fn(*case.args)
    with jax.enable_x64(False):
        jitted = jax.jit(case.fn)(*case.args)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(jitted))
    assert _worst(jitted, host) < FLOAT32_TOL


def _objective(fn, weights):
    """A scalar of all outputs: sum_i <w_i, out_i>."""
    return lambda *args: sum(jnp.sum(w * o) for w, o in zip(weights, jax.tree_util.tree_leaves(fn(*args))))


def _direction(rng, value):
    """A random direction like `value`: symmetric for a square kernel, a scalar for a scalar."""
    def one(a):
        a = np.asarray(a, np.float64)
        d = rng.standard_normal(a.shape)
        return 0.5 * (d + d.T) if a.ndim == 2 and a.shape[0] == a.shape[1] else d

    return jax.tree_util.tree_map(one, value)


def _finite_difference(objective, args, i, direction, h=1e-5):
    def at(sign):
        moved = list(args)
        moved[i] = jax.tree_util.tree_map(lambda a, d: np.asarray(a, np.float64) + sign * h * d, args[i], direction)
        return float(objective(*moved))

    return (at(1) - at(-1)) / (2 * h)


def _gradient_check(case, argnums, seed=0):
    """[(directional derivative by jax.grad, by central finite differences of the host path)] per argument."""
    args = case.grad_args or case.args
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        weights = [rng.standard_normal(np.shape(v)) for v in _leaves(case.fn(*args))]
        objective = _objective(case.fn, weights)
        grads = jax.jit(jax.grad(objective, argnums=tuple(argnums)))(*args)
        pairs = []
        for i, grad in zip(argnums, grads):
            direction = _direction(rng, args[i])
            analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in
                           zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)))
            pairs.append((analytic, _finite_difference(objective, args, i, direction)))
        return pairs


@pytest.mark.parametrize("name", GRAD_CASES)
def test_grad_matches_finite_differences(cases, name):
    case = cases[name]
    for i, (analytic, numeric) in zip(case.differentiable, _gradient_check(case, case.differentiable)):
        assert abs(analytic - numeric) < GRAD_TOL * max(1.0, abs(numeric)), (i, analytic, numeric)


def test_a_gradient_that_misses_the_eigenvectors_fails_the_check(cases, monkeypatch):
    """Treating the eigenvectors of K as constants (a classic wrong derivative) is caught."""
    original = jnp.linalg.eigh

    def frozen_eigenvectors(k, **kwargs):
        evals, evecs = original(k, **kwargs)
        return evals, jax.lax.stop_gradient(evecs)

    monkeypatch.setattr(jnp.linalg, "eigh", frozen_eigenvectors)
    [(analytic, numeric)] = _gradient_check(cases["gradient_descent_mse"], (0,))
    assert abs(analytic - numeric) > 100 * GRAD_TOL * max(1.0, abs(numeric))


def test_time_derivative_is_the_gradient_flow_equation(cases):
    """d f_t(X) / dt = -(lr / y.size) K_reg (f_t(X) - y): the ODE that gradient_descent_mse solves."""
    k, y, _, diag_reg, f0, _, _ = cases["gradient_descent_mse"].args
    k_reg = k + diag_reg * np.trace(k) / k.shape[0] * np.eye(k.shape[0])
    with jax.enable_x64(True):
        fn = predict.gradient_descent_mse(k, y, diag_reg=diag_reg)
        velocity = jax.jit(jax.jacfwd(lambda s: fn(s, f0)))
        for t in (0.0, 0.5, 7.0):
            rate = velocity(t)
            np.testing.assert_allclose(rate, -k_reg @ (fn(t, f0) - y) / y.size, rtol=1e-9, atol=1e-12)
            wrong = -k @ (fn(t, f0) - y) / y.size  # without diag_reg: off by ~1e-3
            assert np.max(np.abs(rate - wrong)) > 1e-6 * np.max(np.abs(rate))


def test_max_learning_rate_derivative_is_the_top_eigenvector(cases):
    """d/dK [2 (1 + m) n / (λ_max + eps)] = -2 (1 + m) n v v^T / (λ_max + eps)^2."""
    k = cases["max_learning_rate"].args[0]
    evals, evecs = np.linalg.eigh(k)
    v = evecs[:, -1]
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda a: predict.max_learning_rate(a, 16, momentum=0.9)))(k)
    expected = -2 * 1.9 * 16 / (evals[-1] + 1e-12) ** 2 * np.outer(v, v)
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-12)
    assert np.max(np.abs(grad - expected / 1.9)) > 1e-3 * np.max(np.abs(expected))  # momentum left out


def test_jitted_predict_fn_reuses_the_float64_factorization(cases):
    """A concrete kernel is factorized once, on the host in float64, even when predict_fn is jitted;
    no tracer leaks into the cache (jitted twice, then called eagerly)."""
    k, y, times, diag_reg, f0, g0, k_td = cases["gradient_descent_mse"].args
    with jax.enable_x64(True):
        fn = predict.gradient_descent_mse(k, y, diag_reg=diag_reg)
        jitted = jax.jit(fn)
        first = jitted(times, f0, g0, k_td)
        second = jitted(times / 2, f0, g0, k_td)  # compiled once, values differ
        assert _worst(first, fn(times, f0, g0, k_td)) < FLOAT64_TOL
        assert _worst(second, fn(times / 2, f0, g0, k_td)) < FLOAT64_TOL
        ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(), cases["gradient_descent_mse_ensemble("
                                                         "x_train)"].args[0], y, diag_reg=diag_reg)
        traced = jax.jit(lambda t: ensemble(t, None, "ntk", compute_cov=True))
        np.testing.assert_allclose(traced(1.0).mean, ensemble(1.0, None, "ntk").reshape(y.shape), rtol=1e-10)
        np.testing.assert_allclose(traced(3.0).covariance, ensemble(3.0, None, "ntk", compute_cov=True).covariance,
                                   rtol=1e-9, atol=1e-12)


def test_traced_lanczos_is_refused(cases):
    k, y = cases["gradient_descent_mse"].args[:2]
    fn = predict.gradient_descent_mse(k, y, solver="lanczos")
    with pytest.raises(ValueError, match=r"gradient_descent_mse's predict_fn.*solver.*traced"):
        jax.jit(fn)(1.0)


def test_device_kernel_inside_jit(cases, monkeypatch):
    """A kernel on an accelerator (simulated) is factorized there eagerly, also when predict_fn is jitted."""
    monkeypatch.setattr(linalg, "on_accelerator", lambda a: hasattr(a, "devices") and not isinstance(a, np.ndarray)
                        and not linalg.is_traced(a))
    k, y, times, diag_reg, f0, g0, k_td = cases["gradient_descent_mse"].args
    with jax.enable_x64(True):
        on_device = predict.gradient_descent_mse(jnp.asarray(k), y, diag_reg=diag_reg)
        host = predict.gradient_descent_mse(k, y, diag_reg=diag_reg)(times, f0, g0, k_td)
        assert _worst(jax.jit(on_device)(times, f0, g0, k_td), host) < FLOAT64_TOL
