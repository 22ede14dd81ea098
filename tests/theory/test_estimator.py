"""KernelRegressor follows scikit-learn's conventions: fit/predict/score, params, clone, GridSearchCV,
validation of the hyperparameters in fit, feature names, and scikit-learn's own estimator checks.

scikit-learn's checks (`parametrize_with_checks`, 53 of them in scikit-learn 1.9) run on the
estimator with the closed-form ReLU kernel of tests/theory/closed_form_mlp.py (about 2 s in
all) in the default suite, and on the default network (`kernels.stax`, which compiles once per
input shape: 105-125 s on a shared 2-core CPU) under the `slow` marker. None is expected to fail.
Skipped: `check_array_api_input`, which scikit-learn itself skips unless the environment
variable SCIPY_ARRAY_API=1 is set (the estimator computes with JAX/NumPy and does not claim
array-API support, so the check would not apply anyway).
"""
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from scipy import stats as scipy_stats  # noqa: E402

import theory  # noqa: E402
from theory import predict  # noqa: E402
from tests.theory import oracle  # noqa: E402
from tests.theory.closed_form_mlp import mlp_kernel_fn  # noqa: E402


def relu_network(depth=2, W_std=1.5, b_std=0.05):
    return None, None, mlp_kernel_fn(depth, W_std, b_std)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 2))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] + 0.05 * rng.standard_normal(90)
    return x[:60], y[:60], x[60:], y[60:]


def test_predict_is_the_ensemble_mean(data):
    x, y, x_test, y_test = data
    model = theory.KernelRegressor(relu_network, depth=1, W_std=1.2, diag_reg=1e-3, t=50.0).fit(x, y)
    ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(1, 1.2, 0.05), x, y[:, None], diag_reg=1e-3)
    ref = ensemble(50.0, x_test, "ntk")
    np.testing.assert_allclose(model.predict(x_test), np.asarray(ref)[:, 0], rtol=1e-10)
    assert model.predict(x_test).shape == (len(x_test),)
    two = theory.KernelRegressor(relu_network).fit(x, np.stack([y, -y], 1))
    assert two.predict(x_test).shape == (len(x_test), 2)
    score = model.score(x_test, y_test)
    residual = np.sum((model.predict(x_test) - y_test) ** 2)
    np.testing.assert_allclose(score, 1 - residual / np.sum((y_test - y_test.mean()) ** 2))
    assert score > 0.8


def test_params_clone_and_errors(data):
    x, y, x_test, _ = data
    model = theory.KernelRegressor(relu_network, W_std=2.0, get="nngp")
    params = model.get_params()
    assert params == dict(network=relu_network, depth=2, W_std=2.0, b_std=0.05, diag_reg=1e-4, get="nngp", t=None,
                          process="gaussian", a=None, b=None)
    twin = clone(model).set_params(W_std=1.0)
    assert twin.W_std == 1.0 and model.W_std == 2.0
    with pytest.raises(sklearn.exceptions.NotFittedError):
        twin.predict(x_test)
    with pytest.raises(ValueError, match="get"):
        theory.KernelRegressor(relu_network, get="gp").fit(x, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        theory.KernelRegressor(relu_network).fit(x, y[:-1])


def test_grid_search_and_pipeline(data):
    x, y, x_test, y_test = data
    search = GridSearchCV(
        theory.KernelRegressor(relu_network, depth=1),
        {"W_std": [0.8, 1.6], "diag_reg": [1e-4, 1e-1], "get": ["nngp", "ntk"]},
        cv=3,
    )
    search.fit(x, y)
    assert set(search.best_params_) == {"W_std", "diag_reg", "get"}
    assert search.score(x_test, y_test) > 0.8
    pipeline = make_pipeline(StandardScaler(), theory.KernelRegressor(relu_network, depth=1)).fit(x, y)
    assert pipeline.score(x_test, y_test) > 0.8


def test_default_network_is_a_stax_relu_mlp(data):
    """The default network needs kernels.stax (skips until it exists)."""
    oracle.network_from_spec_or_skip()
    x, y, x_test, _ = data
    default = theory.KernelRegressor(depth=2, W_std=1.5, b_std=0.05).fit(x, y)
    local = theory.KernelRegressor(relu_network, depth=2, W_std=1.5, b_std=0.05).fit(x, y)
    np.testing.assert_allclose(default.predict(x_test), local.predict(x_test), rtol=1e-6, atol=1e-9)


def test_works_without_scikit_learn(data, monkeypatch):
    """With scikit-learn missing, a stand-in gives the same params and R^2 score."""
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    spec = importlib.util.spec_from_file_location("estimator_without_sklearn", theory.estimator.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._BASES[0].__name__ == "_MinimalEstimator"
    x, y, x_test, y_test = data
    model = module.KernelRegressor(relu_network, depth=1).set_params(W_std=1.2)
    assert model.get_params()["W_std"] == 1.2
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(width=3)
    with pytest.raises(ValueError, match="argument `depth`"):
        module.KernelRegressor(relu_network, depth=-1).fit(x, y)
    with pytest.raises(TypeError, match="argument `X`"):
        module.KernelRegressor(relu_network).fit(x.astype(str), y)
    pandas = pytest.importorskip("pandas")
    frame = module.KernelRegressor(relu_network, depth=1).fit(pandas.DataFrame(x, columns=["a", "b"]), y)
    assert list(frame.feature_names_in_) == ["a", "b"]
    with pytest.raises(ValueError, match="argument `X`"):
        frame.predict(pandas.DataFrame(x_test, columns=["b", "a"]))
    model.fit(x, y)
    ref = theory.KernelRegressor(relu_network, depth=1, W_std=1.2).fit(x, y)
    np.testing.assert_allclose(model.score(x_test, y_test), ref.score(x_test, y_test), rtol=1e-12)


class ClosedFormReluNetwork:
    """`relu_network` with a stable repr, so that the checks' test ids are the same in every process
    (a function's repr holds its address, which would differ between pytest-xdist workers)."""

    def __call__(self, depth=2, W_std=1.5, b_std=0.05):
        return relu_network(depth, W_std, b_std)

    def __repr__(self):
        return "ClosedFormReluNetwork()"


@parametrize_with_checks([theory.KernelRegressor(ClosedFormReluNetwork()),
                          theory.KernelRegressor(ClosedFormReluNetwork(), get="nngp", process="student_t", a=2.0,
                                                 b=1.0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow  # the stax kernel compiles per input shape: 105-125 s for all checks
@parametrize_with_checks([theory.KernelRegressor()])
def test_scikit_learn_estimator_checks_default_network(estimator, check):
    check(estimator)


@pytest.mark.parametrize("param, value, kind", [
    ("depth", -1, ValueError), ("depth", 1.5, TypeError), ("W_std", np.nan, ValueError), ("W_std", 0.0, ValueError),
    ("b_std", -1.0, ValueError), ("diag_reg", -1.0, ValueError), ("get", "gp", ValueError),
    ("get", ("nngp", "ntk"), ValueError), ("t", -1.0, ValueError), ("t", 1j, TypeError),
    ("network", "relu", TypeError),
])
def test_hyperparameters_are_validated_at_fit_naming_them(data, param, value, kind):
    x, y, _, _ = data
    model = theory.KernelRegressor(**{"network": relu_network, param: value})  # __init__ only stores them
    with pytest.raises(kind, match=f"KernelRegressor.fit: argument `{param}`"):
        model.fit(x, y)


def test_get_is_case_insensitive(data):
    x, y, x_test, _ = data
    upper = theory.KernelRegressor(relu_network, depth=1, get="NTK").fit(x, y).predict(x_test)
    lower = theory.KernelRegressor(relu_network, depth=1, get="ntk").fit(x, y).predict(x_test)
    np.testing.assert_array_equal(upper, lower)


def test_bad_data_is_refused(data):
    x, y, _, _ = data
    with pytest.raises(ValueError, match="0 sample"):
        theory.KernelRegressor(relu_network).fit(x[:0], y[:0])
    with pytest.raises(ValueError, match="strings"):
        theory.KernelRegressor(relu_network).fit(x.astype(str), y)  # was fitted on the parsed numbers
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        theory.KernelRegressor(relu_network).fit(bad, y)
    model = theory.KernelRegressor(relu_network).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :1])


def test_feature_names_are_recorded_and_checked(data):
    pandas = pytest.importorskip("pandas")
    x, y, x_test, _ = data
    frame = pandas.DataFrame(x, columns=["a", "b"])
    test = pandas.DataFrame(x_test, columns=["a", "b"])
    model = theory.KernelRegressor(relu_network, depth=1).fit(frame, y)
    assert model.n_features_in_ == 2 and list(model.feature_names_in_) == ["a", "b"]
    np.testing.assert_allclose(model.predict(test), theory.KernelRegressor(relu_network, depth=1).fit(x, y)
                               .predict(x_test), rtol=1e-12)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(test[["b", "a"]])  # reordered: silently different predictions before
    with pytest.raises(ValueError, match="feature names"):
        model.predict(test.rename(columns={"b": "c"}))


def test_the_train_kernel_is_computed_at_fit(data):
    x, y, x_test, _ = data
    calls = []

    def counting_network(depth=2, W_std=1.5, b_std=0.05):
        kernel_fn = mlp_kernel_fn(depth, W_std, b_std)

        def counted(x1, x2=None, get=None):
            calls.append(None if x2 is None else x2.shape)
            return kernel_fn(x1, x2, get)

        return None, None, counted

    model = theory.KernelRegressor(counting_network, depth=1).fit(x, y)
    assert calls == [None]  # the train kernel, at fit
    np.testing.assert_allclose(model.k_train_train_, mlp_kernel_fn(1, 1.5, 0.05)(x, None, "ntk"), rtol=1e-12)
    model.predict(x_test)
    assert calls == [None, x.shape]  # predict computes only the test-train kernel


def test_pickle_round_trip(data):
    import pickle

    x, y, x_test, _ = data
    model = theory.KernelRegressor(relu_network, depth=1, t=20.0).fit(x, y)
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(twin.predict(x_test), model.predict(x_test), rtol=1e-12)


# process="student_t" and the predictive spread. References computed here with numpy.linalg.solve and
# scipy.stats (Student's t, normal), not with theory.student_t's code; theory.student_t itself is checked
# against quadrature over the inverse-gamma variance in tests/theory/test_student_t.py.


def t_reference(x, y, x_test, a, b, diag_reg, depth=1, W_std=1.5, noise=False):
    """df, mean, scale of the t posterior of f (or of y = f + noise) by the formulas of Lee et al. 2021."""
    k = mlp_kernel_fn(depth, W_std, 0.05)(x, None, "nngp")
    shift = diag_reg * np.trace(k) / len(k)
    kd = k + shift * np.eye(len(k))
    k_td = mlp_kernel_fn(depth, W_std, 0.05)(x_test, x, "nngp")
    k_tt = mlp_kernel_fn(depth, W_std, 0.05)(x_test, None, "nngp")
    mean = k_td @ np.linalg.solve(kd, y)
    q = y @ np.linalg.solve(kd, y)
    df = 2 * a + len(y)
    gp_var = np.diag(k_tt) - np.einsum("ij,ji->i", k_td, np.linalg.solve(kd, k_td.T)) + (shift if noise else 0)
    return df, mean, (2 * b + q) / df * gp_var


@pytest.mark.parametrize("n_train", [4, 60])
def test_student_t_predictions_are_the_t_posterior(data, n_train):
    x, y, x_test, _ = data
    x, y = x[:n_train], y[:n_train]
    a, b, diag_reg = 1.5, 0.7, 1e-2
    model = theory.KernelRegressor(relu_network, depth=1, get="nngp", diag_reg=diag_reg, process="student_t",
                                   a=a, b=b).fit(x, y)
    df, mean, scale2 = t_reference(x, y, x_test, a, b, diag_reg)
    post = theory.student_t.posterior(model.k_train_train_, mlp_kernel_fn(1, 1.5, 0.05)(x_test, x, "nngp"),
                                      None, y, a, b, diag_reg=diag_reg)
    np.testing.assert_allclose(model.predict(x_test), np.asarray(post.mean), rtol=1e-12)
    predicted, std = model.predict(x_test, return_std=True)
    np.testing.assert_allclose(predicted, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(scale2 * df / (df - 2)), rtol=1e-8)  # scipy: stats.t(df).var()
    np.testing.assert_allclose(std ** 2, stats_t_variance(df, scale2), rtol=1e-8)
    for level, noise in ((0.9, False), (0.5, True)):
        lower, upper = model.predict_interval(x_test, level, include_noise=noise)
        _, _, scale2 = t_reference(x, y, x_test, a, b, diag_reg, noise=noise)
        ref_lower, ref_upper = scipy_stats.t.interval(level, df, loc=mean, scale=np.sqrt(scale2))
        np.testing.assert_allclose(lower, ref_lower, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(upper, ref_upper, rtol=1e-8, atol=1e-10)
        # Wrong theory: a Gaussian interval with the t's standard deviation (too narrow at few points).
        gaussian_half = scipy_stats.norm.ppf((1 + level) / 2) * np.sqrt(scale2 * df / (df - 2))
        if n_train == 4:
            assert np.all(np.abs((upper - lower) / 2 / gaussian_half - 1) > 0.01)
    # Two target columns share sigma^2: df = 2a + n k.
    two = theory.KernelRegressor(relu_network, depth=1, get="nngp", diag_reg=diag_reg, process="student_t",
                                 a=a, b=b).fit(x, np.stack([y, -y], 1))
    mean2, std2 = two.predict(x_test, return_std=True)
    assert mean2.shape == std2.shape == (len(x_test), 2)
    np.testing.assert_allclose(mean2[:, 1], -mean, rtol=1e-9, atol=1e-12)


def stats_t_variance(df, scale2):
    return scipy_stats.t(df, scale=np.sqrt(scale2)).var()


def test_student_t_interval_covers_draws_of_the_scale_mixture(data):
    """Monte Carlo over the model itself: sigma^2 from the prior, f = sqrt(sigma^2) g with g from the GP
    prior of 3 train and 1 test point, y = f_train; the 80% interval given y_train must hold f_test with
    probability 0.8 averaged over draws (coverage of a correct Bayesian posterior). The interval of each
    draw comes from the estimator; 120 draws: binomial se 0.037. a = b = 1/2 spreads sigma^2 widely, so
    the GP at sigma^2 = 1 covers about 0.58 (the prior predictive's coverage, by simulation)."""
    x, _, x_test, _ = data
    x, x0 = x[:3], x_test[:1]
    a, b, diag_reg = 0.5, 0.5, 1e-3
    points = np.concatenate([x, x0])
    k = mlp_kernel_fn(1, 1.5, 0.05)(points, None, "nngp")
    k_noisy = k + np.diag([diag_reg * np.trace(k[:3, :3]) / 3] * 3 + [0.0])
    chol = np.linalg.cholesky(k_noisy)
    rng = np.random.default_rng(5)
    hits, hits_gaussian = 0, 0
    model = theory.KernelRegressor(relu_network, depth=1, get="nngp", diag_reg=diag_reg, process="student_t", a=a, b=b)
    gaussian = theory.KernelRegressor(relu_network, depth=1, get="nngp", diag_reg=diag_reg)
    draws = 120
    for _ in range(draws):
        sigma2 = b / rng.gamma(a)
        f = np.sqrt(sigma2) * chol @ rng.standard_normal(4)
        lower, upper = model.fit(x, f[:3]).predict_interval(x0, 0.8)
        hits += lower[0] <= f[3] <= upper[0]
        lower, upper = gaussian.fit(x, f[:3]).predict_interval(x0, 0.8)
        hits_gaussian += lower[0] <= f[3] <= upper[0]
    assert abs(hits / draws - 0.8) < 3.5 * np.sqrt(0.16 / draws)
    # Wrong theory: the GP with the kernel's own scale (sigma^2 = 1) ignores the spread of sigma^2.
    assert abs(hits_gaussian / draws - 0.8) > 3.5 * np.sqrt(0.16 / draws)


def test_gaussian_std_is_the_ensemble_and_posterior_spread(data):
    x, y, x_test, _ = data
    nngp = theory.KernelRegressor(relu_network, depth=1, get="nngp", diag_reg=1e-2).fit(x, y)
    gp = predict.gp_inference(mlp_kernel_fn(1, 1.5, 0.05)(x, None, "nngp"), y[:, None], diag_reg=1e-2)(
        "nngp", mlp_kernel_fn(1, 1.5, 0.05)(x_test, x, "nngp"), mlp_kernel_fn(1, 1.5, 0.05)(x_test, None, "nngp"))
    mean, std = nngp.predict(x_test, return_std=True)
    np.testing.assert_allclose(mean, np.asarray(gp.mean)[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(np.diag(np.asarray(gp.covariance))), rtol=1e-7)
    lower, upper = nngp.predict_interval(x_test, 0.95)
    np.testing.assert_allclose(upper - mean, scipy_stats.norm.ppf(0.975) * std, rtol=1e-10)
    noise = 1e-2 * np.trace(nngp.k_train_train_) / len(x)
    lower, upper = nngp.predict_interval(x_test, 0.95, include_noise=True)
    np.testing.assert_allclose(upper - mean, scipy_stats.norm.ppf(0.975) * np.sqrt(std ** 2 + noise), rtol=1e-10)
    ntk = theory.KernelRegressor(relu_network, depth=1, diag_reg=1e-3, t=30.0).fit(x, y)
    ensemble = predict.gradient_descent_mse_ensemble(mlp_kernel_fn(1, 1.5, 0.05), x, y[:, None], diag_reg=1e-3)
    reference = ensemble(30.0, x_test, "ntk", compute_cov=True)
    mean, std = ntk.predict(x_test, return_std=True)
    np.testing.assert_allclose(mean, ntk.predict(x_test), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(np.diag(np.asarray(reference.covariance))), rtol=1e-7)
    with pytest.raises(ValueError, match="predict_interval: argument `include_noise`"):
        ntk.predict_interval(x_test, 0.9, include_noise=True)
    with pytest.raises(ValueError, match="argument `level`"):
        ntk.predict_interval(x_test, 1.0)
    with pytest.raises(TypeError, match="argument `return_std`"):
        ntk.predict(x_test, return_std="yes")


@pytest.mark.parametrize("params, name, kind", [
    (dict(process="t"), "process", ValueError), (dict(process=2), "process", TypeError),
    (dict(a=1.0), "a", ValueError), (dict(b=1.0), "b", ValueError),
    (dict(process="student_t", get="nngp", b=1.0), "a", ValueError),
    (dict(process="student_t", get="nngp", a=1.0), "b", ValueError),
    (dict(process="student_t", get="nngp", a=0.0, b=1.0), "a", ValueError),
    (dict(process="student_t", get="nngp", a=1.0, b=np.inf), "b", ValueError),
    (dict(process="student_t", a=1.0, b=1.0), "get", ValueError),
    (dict(process="student_t", get="nngp", t=5.0, a=1.0, b=1.0), "t", ValueError),
])
def test_process_parameters_are_validated_at_fit_naming_them(data, params, name, kind):
    x, y, _, _ = data
    with pytest.raises(kind, match=f"KernelRegressor.fit: argument `{name}`"):
        theory.KernelRegressor(relu_network, **params).fit(x, y)


def test_student_t_pickles_and_is_case_insensitive(data):
    import pickle

    x, y, x_test, _ = data
    model = theory.KernelRegressor(relu_network, depth=1, get="NNGP", process="Student_T", a=3.0, b=2.0).fit(x, y)
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(twin.predict(x_test, return_std=True), model.predict(x_test, return_std=True),
                               rtol=1e-12)
