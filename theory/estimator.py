"""`KernelRegressor`: the infinite-width network as a scikit-learn estimator.

`fit` computes the network's NNGP / NTK on the training set; `predict` is the
mean of the infinite ensemble trained by gradient flow on MSE for time `t`
(`theory.predict.gradient_descent_mse_ensemble`; `t=None`: to convergence,
i.e. kernel ridge regression, Lee et al. 2019, §2.3.1). Hyperparameters are
constructor arguments, so `GridSearchCV`, `Pipeline` and `clone` work.

scikit-learn is optional: with it installed the class derives from its
`BaseEstimator` and `RegressorMixin`; without it, a minimal stand-in
provides `get_params`, `set_params` and `score` with the same meaning.
"""
import inspect

import numpy as np

from theory.dynamics import gradient_descent_mse_ensemble

try:
    from sklearn.base import BaseEstimator, RegressorMixin

    _BASES = (RegressorMixin, BaseEstimator)
except ImportError:  # scikit-learn is an optional extra

    class _MinimalEstimator:
        """get_params / set_params / score (R^2) as scikit-learn defines them."""

        def get_params(self, deep=True):
            names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
            return {name: getattr(self, name) for name in names}

        def set_params(self, **params):
            valid = self.get_params()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {sorted(valid)}.")
                setattr(self, name, value)
            return self

        def score(self, X, y, sample_weight=None):
            y = np.asarray(y, np.float64)
            pred = np.asarray(self.predict(X), np.float64).reshape(y.shape)
            w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
            w = w.reshape((-1,) + (1,) * (y.ndim - 1))
            residual = np.sum(w * (y - pred) ** 2, axis=0)
            total = np.sum(w * (y - np.average(y, axis=0, weights=w.ravel())) ** 2, axis=0)
            return float(np.mean(1 - residual / total))

    _BASES = (_MinimalEstimator,)


def relu_mlp(depth=2, W_std=1.5, b_std=0.05, width=512):
    """The default network: `depth` x [Dense(width), Relu] + Dense(1), as a `kernels.stax` triple."""
    from kernels import stax

    hidden = [stax.Dense(width, W_std=W_std, b_std=b_std), stax.Relu()] * depth
    return stax.serial(*hidden, stax.Dense(1, W_std=W_std, b_std=b_std))


class KernelRegressor(*_BASES):
    """Regression with the infinite-width limit of a network (scikit-learn estimator).

    Args:
      network: function of keyword hyperparameters `depth`, `W_std`, `b_std`
        returning a stax triple `(init_fn, apply_fn, kernel_fn)`; None: a ReLU
        MLP (`relu_mlp`, needs `kernels.stax`).
      depth, W_std, b_std: passed to `network`.
      diag_reg: ridge, relative to the mean diagonal of the train kernel.
      get: "ntk" (gradient-trained ensemble) or "nngp" (Bayesian posterior mean).
      t: training time in steps of learning rate 1 (None: to convergence).

    Attributes (after `fit`):
      kernel_fn_: the network's kernel function.
      predict_fn_: the fitted `gradient_descent_mse_ensemble` predictor.
      n_features_in_: number of features of 2-D `X`.
    """

    def __init__(self, network=None, depth=2, W_std=1.5, b_std=0.05, diag_reg=1e-4, get="ntk", t=None):
        self.network = network
        self.depth = depth
        self.W_std = W_std
        self.b_std = b_std
        self.diag_reg = diag_reg
        self.get = get
        self.t = t

    def fit(self, X, y):
        """Compute the train kernel of the network with these hyperparameters.

        Args:
          X: `(N, ...)` inputs (features, or images batch first).
          y: `(N,)` or `(N, C)` targets.
        """
        if self.get not in ("nngp", "ntk"):
            raise ValueError(f"get must be 'nngp' or 'ntk', got {self.get!r}.")
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if X.ndim < 2 or y.ndim not in (1, 2) or len(X) != len(y):
            raise ValueError(f"X must be (N, ...) and y (N,) or (N, C); got X {X.shape} and y {y.shape}.")
        network = relu_mlp if self.network is None else self.network
        self.kernel_fn_ = network(depth=self.depth, W_std=self.W_std, b_std=self.b_std)[2]
        self._y_is_1d = y.ndim == 1
        self.predict_fn_ = gradient_descent_mse_ensemble(
            self.kernel_fn_, X, y.reshape(len(y), -1), diag_reg=self.diag_reg
        )
        if X.ndim == 2:
            self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        """Mean prediction of the trained infinite ensemble at time `t`: `(M,)` or `(M, C)`."""
        if not hasattr(self, "predict_fn_"):
            raise _not_fitted_error(f"This {type(self).__name__} instance is not fitted yet; call fit first.")
        X = np.asarray(X, np.float64)
        mean = np.asarray(self.predict_fn_(t=self.t, x_test=X, get=self.get), np.float64)
        return mean[:, 0] if self._y_is_1d else mean


def _not_fitted_error(message):
    try:
        from sklearn.exceptions import NotFittedError

        return NotFittedError(message)
    except ImportError:
        return AttributeError(message)
