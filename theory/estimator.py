"""`KernelRegressor`: the infinite-width network as a scikit-learn estimator.

`fit` computes the network's NNGP / NTK on the training set; `predict` is the
mean of the infinite ensemble trained by gradient flow on MSE for time `t`
(`theory.predict.gradient_descent_mse_ensemble`, computed here from the train
kernel by `theory.predict.gradient_descent_mse`; `t=None`: to convergence,
i.e. kernel ridge regression, Lee et al. 2019, §2.3.1). Hyperparameters are
constructor arguments, so `GridSearchCV`, `Pipeline` and `clone` work.

`process="student_t"` puts an inverse-gamma prior InvGamma(a, b) on the variance
of the readout (a factor sigma^2 on the NNGP K), which makes the infinitely wide
network the Student-t process TP(2a, 0, (b / a) K) (Lee, Yun, Yang & Lee 2021,
"Scale mixtures of neural network Gaussian processes"); `predict` is then its
posterior mean (`theory.student_t.posterior`), equal to the NNGP posterior mean,
and the spread comes from the t posterior, whose scale is learned from the
targets. `predict(X, return_std=True)` (scikit-learn's `GaussianProcessRegressor`
signature) and `predict_interval(X, level)` give the predictive spread of both
processes: for the Gaussian one, that of the infinite ensemble of trained
networks (`theory.predict.gradient_descent_mse_ensemble`'s covariance; with
`get="nngp"` and `t=None`, the NNGP posterior).

scikit-learn's conventions are kept: `__init__` only stores the
hyperparameters and `fit` validates them (an error names the parameter); `fit`
validates `X` and `y` with scikit-learn's own `validate_data` and records
`n_features_in_` and, for a pandas DataFrame, `feature_names_in_`; `predict`
refuses inputs with another number of features or, for a frame, other or
reordered column names, as scikit-learn's estimators do. scikit-learn's
`check_estimator` runs in the tests (tests/theory/test_estimator.py).

scikit-learn is optional: with it installed the class derives from its
`BaseEstimator` and `RegressorMixin`; without it, a minimal stand-in
provides `get_params`, `set_params` and `score` with the same meaning, and the
inputs are checked by `theory.arguments` (feature names included).
"""
import inspect

import numpy as np
from scipy import stats

from theory import arguments, student_t
from theory.dynamics import gradient_descent_mse, gradient_descent_mse_ensemble

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import check_is_fitted, validate_data

    _BASES = (RegressorMixin, BaseEstimator)
except ImportError:  # scikit-learn is an optional extra
    check_is_fitted = validate_data = None

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
      depth: an integer >= 0, passed to `network`.
      W_std, b_std: finite, `W_std > 0` and `b_std >= 0`, passed to `network`.
      diag_reg: finite >= 0, the ridge, relative to the mean diagonal of the train kernel.
      get: "ntk" (gradient-trained ensemble) or "nngp" (Bayesian posterior mean), any case.
      t: training time >= 0 in steps of learning rate 1 (None or inf: to convergence).
      process: "gaussian" (the network's GP) or "student_t" (readout variance
        sigma^2 ~ InvGamma(a, b): the Student-t process TP(2a, 0, (b / a) K) of
        Lee, Yun, Yang & Lee 2021, K the network's NNGP); "student_t" needs
        `get="nngp"` and `t=None` (it is a Bayesian posterior, not a trained ensemble).
      a, b: the inverse-gamma prior's shape and scale, finite and > 0, required with
        `process="student_t"` and refused (must be None) with "gaussian".

    The hyperparameters are validated by `fit` (scikit-learn's convention),
    which raises a ValueError or TypeError naming the one that is wrong.

    Attributes (after `fit`):
      n_features_in_: `X.shape[1]`.
      feature_names_in_: the column names of a pandas DataFrame `X` (only then).
      input_shape_: the shape of one example, `X.shape[1:]`.
      X_train_, y_train_: the training inputs (float64) and targets `(N, C)`.
      k_train_train_: the train kernel (`get`), computed by `fit`.
      kernel_fn_: the network's kernel function.
      predict_fn_: the `gradient_descent_mse` predictor of the train kernel.
    """

    def __init__(self, network=None, depth=2, W_std=1.5, b_std=0.05, diag_reg=1e-4, get="ntk", t=None,
                 process="gaussian", a=None, b=None):
        self.network = network
        self.depth = depth
        self.W_std = W_std
        self.b_std = b_std
        self.diag_reg = diag_reg
        self.get = get
        self.t = t
        self.process = process
        self.a = a
        self.b = b

    def _checked_params(self):
        """The hyperparameters, validated (called by `fit`): {name: value}."""
        where = f"{type(self).__name__}.fit"
        if self.network is not None and not callable(self.network):
            raise arguments.argument_error(where, "network", "None or a function returning a stax triple",
                                           type(self.network).__name__, TypeError)
        params = dict(
            network=relu_mlp if self.network is None else self.network,
            depth=arguments.integer(where, "depth", self.depth, low=0),
            W_std=arguments.scalar(where, "W_std", self.W_std, low=0, low_open=True),
            b_std=arguments.scalar(where, "b_std", self.b_std, low=0),
            diag_reg=arguments.scalar(where, "diag_reg", self.diag_reg, low=0),
            get=arguments.one_name(where, "get", self.get, ("nngp", "ntk")),
            t=None if self.t is None else arguments.scalar(where, "t", self.t, low=0, allow_inf=True),
        )
        return params | _process_params(where, self.process, self.a, self.b, params["get"], params["t"])

    def fit(self, X, y):
        """Validate the hyperparameters and the data, and compute the train kernel of the network.

        Args:
          X: `(N, ...)` inputs (features, or images batch first): real,
            finite, N >= 1; a pandas DataFrame's column names are recorded.
          y: `(N,)` or `(N, C)` targets, real and finite.

        Returns:
          self.
        """
        params = self._checked_params()
        X, y = _validate(self, X, y, reset=True)
        self.input_shape_ = X.shape[1:]
        self._y_is_1d = y.ndim == 1
        self.y_train_ = y.reshape(len(y), -1)
        self.X_train_ = X
        self.kernel_fn_ = _kernel_fn(params, type(self).__name__)
        self.k_train_train_ = np.asarray(self.kernel_fn_(X, None, params["get"]))
        self.predict_fn_ = gradient_descent_mse(self.k_train_train_, self.y_train_, diag_reg=params["diag_reg"])
        return self

    def predict(self, X, return_std=False):
        """Mean prediction: of the trained infinite ensemble at time `t`, or of the Student-t posterior.

        Args:
          X: `(M, ...)` inputs like those of `fit` (same shape per example; a
            frame with the same columns in the same order).
          return_std: also return the predictive standard deviation of the noiseless
            outputs (as scikit-learn's `GaussianProcessRegressor`, whose `alpha` noise is
            likewise left out): for "gaussian", the square root of the diagonal of the
            infinite ensemble's covariance at time `t` (`gradient_descent_mse_ensemble`,
            Lee et al. 2019, eq. 16; the NNGP posterior's for `get="nngp"`, `t=None`); for
            "student_t", of the t posterior's covariance, scale df / (df - 2) (+inf when
            df <= 2).

        Returns:
          The mean, `(M,)` or `(M, C)` like the targets of `fit`; with `return_std`,
          `(mean, std)`, std of the mean's shape (the same for every output column).
        """
        where = f"{type(self).__name__}.predict"
        X, params = self._fitted_inputs(where, X)
        return_std = arguments.flag(where, "return_std", return_std)
        if params["process"] == "student_t":
            post = self._t_posterior(X, params, with_scale=return_std)
            mean = np.asarray(post.mean, np.float64)
            variance = np.diagonal(np.asarray(post.covariance, np.float64)) if return_std else None
        else:
            t = params["t"]
            if return_std:
                ensemble = gradient_descent_mse_ensemble(self.kernel_fn_, self.X_train_, self.y_train_,
                                                         diag_reg=params["diag_reg"])
                gaussian = ensemble(t, X, params["get"], compute_cov=True)
                mean = np.asarray(gaussian.mean, np.float64)
                variance = np.clip(np.diagonal(np.asarray(gaussian.covariance, np.float64)), 0, None)
            else:
                k_test_train = self.kernel_fn_(X, self.X_train_, params["get"])
                mean = np.asarray(self.predict_fn_(t, None, 0.0, k_test_train), np.float64)
        mean = mean[:, 0] if self._y_is_1d else mean
        if not return_std:
            return mean
        return mean, np.broadcast_to(np.sqrt(variance).reshape((-1,) + (1,) * (mean.ndim - 1)), mean.shape).copy()

    def predict_interval(self, X, level=0.95, include_noise=False):
        """Central predictive interval of probability `level`: `(lower, upper)`, each shaped like `predict`.

        "gaussian": mean -+ z std with z the standard normal's (1 + level) / 2 quantile
        (the ensemble is Gaussian at every `t`); "student_t": mean -+ t std' with t the
        quantile of Student's t with the posterior's df = 2a + n C degrees of freedom and
        std' the square root of the posterior scale's diagonal (Lee, Yun, Yang & Lee 2021;
        `theory.student_t`), a finite interval even where df <= 2.

        Args:
          X: `(M, ...)` inputs like those of `fit`.
          level: probability in (0, 1).
          include_noise: the interval of a new noisy target y = f + noise rather than of
            f: adds the noise variance that `diag_reg` stands for (diag_reg times the
            train kernel's mean diagonal), times the posterior variance factor for
            "student_t" (there the noise is sigma^2 diag_reg too). Needs `get="nngp"`
            and `t=None` for "gaussian" (the GP posterior, where `diag_reg` is a noise
            variance rather than a ridge).
        """
        where = f"{type(self).__name__}.predict_interval"
        X, params = self._fitted_inputs(where, X)
        level = arguments.scalar(where, "level", level, low=0, low_open=True, high=1)
        include_noise = arguments.flag(where, "include_noise", include_noise)
        noise = 0.0
        if include_noise:
            if params["process"] == "gaussian" and (params["get"] != "nngp" or params["t"] is not None):
                raise arguments.argument_error(where, "include_noise", "False unless get='nngp' and t=None (the "
                                               "GP posterior, where diag_reg is a noise variance)",
                                               include_noise)
            noise = params["diag_reg"] * np.trace(self.k_train_train_) / len(self.k_train_train_)
        if params["process"] == "student_t":
            post = self._t_posterior(X, params, with_scale=True, noise=noise)
            mean = np.asarray(post.mean, np.float64)
            half = stats.t.ppf((1 + level) / 2, post.df) * np.sqrt(np.diagonal(np.asarray(post.scale, np.float64)))
            mean = mean[:, 0] if self._y_is_1d else mean
        else:
            mean, std = self.predict(X, return_std=True)
            half = stats.norm.ppf((1 + level) / 2) * np.sqrt(std ** 2 + noise)
        half = np.broadcast_to(np.reshape(half, (-1,) + (1,) * (np.ndim(mean) - 1)), np.shape(mean))
        return mean - half, mean + half

    def _fitted_inputs(self, where, X):
        """X validated against the fit (features, names, example shape) and the validated hyperparameters."""
        if check_is_fitted is not None:
            check_is_fitted(self)
        elif not hasattr(self, "predict_fn_"):
            raise _not_fitted_error(f"This {type(self).__name__} instance is not fitted yet; call fit first.")
        X = _validate(self, X, reset=False)
        if X.shape[1:] != self.input_shape_:
            raise arguments.argument_error(where, "X", f"inputs of shape (M, *{self.input_shape_}) like those of "
                                           "fit", f"shape {X.shape}")
        return X, self._checked_params()

    def _t_posterior(self, X, params, with_scale, noise=0.0):
        """`theory.student_t.posterior` of the test outputs (noise added to their prior when `noise`)."""
        k_test_train = self.kernel_fn_(X, self.X_train_, "nngp")
        k_test_test = None
        if with_scale:
            k_test_test = np.asarray(self.kernel_fn_(X, None, "nngp"), np.float64) + noise * np.eye(len(X))
        return student_t.posterior(self.k_train_train_, k_test_train, k_test_test, self.y_train_, params["a"],
                                   params["b"], diag_reg=params["diag_reg"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def __getstate__(self):
        # The kernel function and the predictor are closures (not picklable); __setstate__ rebuilds them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        state = dict(state)
        state.pop("kernel_fn_", None)
        state.pop("predict_fn_", None)
        return state

    def __setstate__(self, state):
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        if "k_train_train_" in state:
            params = self._checked_params()
            self.kernel_fn_ = _kernel_fn(params, type(self).__name__)
            self.predict_fn_ = gradient_descent_mse(self.k_train_train_, self.y_train_, diag_reg=params["diag_reg"])


_NO_TARGETS = "no_validation"  # scikit-learn's marker: validate X only
PROCESSES = ("gaussian", "student_t")


def _process_params(where, process, a, b, get, t):
    """{process, a, b} validated: "student_t" needs a, b > 0, get "nngp" and t None; "gaussian" refuses a, b."""
    if not (isinstance(process, str) and process.lower() in PROCESSES):
        raise arguments.argument_error(where, "process", f"one of {PROCESSES}", process,
                                       ValueError if isinstance(process, str) else TypeError)
    process = process.lower()
    if process == "gaussian":
        for name, value in (("a", a), ("b", b)):
            if value is not None:
                raise arguments.argument_error(where, name, "None with process='gaussian' (the inverse-gamma "
                                               "prior belongs to process='student_t')", value)
        return dict(process=process, a=None, b=None)
    if get != "nngp":
        raise arguments.argument_error(where, "get", "'nngp' with process='student_t' (a Bayesian posterior of "
                                       "the NNGP)", get)
    if t is not None:
        raise arguments.argument_error(where, "t", "None with process='student_t' (a posterior, not a "
                                       "training time)", t)
    expected = "a finite real number > 0 with process='student_t'"
    for name, value in (("a", a), ("b", b)):
        if value is None:
            raise arguments.argument_error(where, name, expected, value)
    return dict(process=process, a=arguments.scalar(where, "a", a, low=0, low_open=True),
                b=arguments.scalar(where, "b", b, low=0, low_open=True))


def _kernel_fn(params, name="KernelRegressor"):
    """The kernel function of `params["network"]` with the validated hyperparameters.

    Raises:
      TypeError: `network` did not return an ``(init_fn, apply_fn, kernel_fn)`` triple whose
        last entry is callable (e.g. a number, which would fail later as "not subscriptable").
    """
    triple = params["network"](depth=params["depth"], W_std=params["W_std"], b_std=params["b_std"])
    if not (isinstance(triple, (tuple, list)) and len(triple) == 3 and callable(triple[2])):
        received = (f"a {type(triple).__name__} of length {len(triple)}" if isinstance(triple, (tuple, list))
                    else type(triple).__name__)
        raise arguments.argument_error(f"{name}.fit", "network",
                                       "a function returning an (init_fn, apply_fn, kernel_fn) triple",
                                       f"a function returning {received}", TypeError)
    return triple[2]


def _validate(estimator, X, y=_NO_TARGETS, reset=True):
    """X (and y, unless `_NO_TARGETS`) checked and converted to float64; n_features_in_ / feature_names_in_
    recorded (reset) or compared. scikit-learn's `validate_data` when installed, else `theory.arguments`."""
    if validate_data is not None:
        # dtype="numeric": strings are refused (a float64 dtype would parse "1.5"), objects converted.
        if y is _NO_TARGETS:
            return validate_data(estimator, X, reset=reset, allow_nd=True, dtype="numeric").astype(np.float64)
        X, y = validate_data(estimator, X, y, reset=reset, allow_nd=True, dtype="numeric", y_numeric=True,
                             multi_output=True)
        return X.astype(np.float64), y.astype(np.float64)
    where = f"{type(estimator).__name__}.{'fit' if reset else 'predict'}"
    columns = getattr(X, "columns", None)
    names = None if columns is None else np.asarray([str(c) for c in columns], object)
    X = np.asarray(arguments.examples(where, "X", X), np.float64)
    if reset:
        estimator.n_features_in_ = X.shape[1]
        if names is not None:
            estimator.feature_names_in_ = names
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    else:
        fitted = getattr(estimator, "feature_names_in_", None)
        if fitted is not None and names is not None and not np.array_equal(fitted, names):
            raise arguments.argument_error(where, "X", f"columns {list(fitted)} (those of fit, in that order)",
                                           f"columns {list(names)}")
        if X.shape[1] != estimator.n_features_in_:
            raise arguments.argument_error(where, "X", f"{estimator.n_features_in_} features (as in fit)",
                                           f"shape {X.shape}")
    if y is _NO_TARGETS:
        return X
    if y is None:
        raise arguments.argument_error(where, "y", "targets (N,) or (N, C)", None)
    y = np.asarray(arguments.real_array(where, "y", y), np.float64)
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise arguments.argument_error(where, "y", f"of shape ({len(X)},) or ({len(X)}, C)", f"shape {y.shape}")
    return X, y


def _not_fitted_error(message):
    try:
        from sklearn.exceptions import NotFittedError

        return NotFittedError(message)
    except ImportError:
        return AttributeError(message)
