"""KernelRegressor follows scikit-learn's conventions: fit/predict/score, params, clone, GridSearchCV."""
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

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
    with pytest.raises(ValueError, match="X must be"):
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
    model.fit(x, y)
    ref = theory.KernelRegressor(relu_network, depth=1, W_std=1.2).fit(x, y)
    np.testing.assert_allclose(model.score(x_test, y_test), ref.score(x_test, y_test), rtol=1e-12)
