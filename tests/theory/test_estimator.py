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
    assert params == dict(network=relu_network, depth=2, W_std=2.0, b_std=0.05, diag_reg=1e-4, get="nngp", t=None)
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


@parametrize_with_checks([theory.KernelRegressor(ClosedFormReluNetwork())])
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
