"""Training dynamics of kernel (infinitely wide) models under MSE, in closed form.

Conventions (neural-tangents', used by `experiments.train` as well): the loss
is `||f(X) - y||^2 / (2 * y_train.size)`; `t` counts steps of size
`learning_rate`, so gradient flow has run for absolute time
`learning_rate * t`; `diag_reg` is added to the train kernel's diagonal, scaled
by its mean diagonal entry `trace(K) / N` unless `diag_reg_absolute_scale`.
Outputs along `trace_axes` are independent and share one kernel.

For the linearized network (Lee et al. 2019, "Wide neural networks of any
depth evolve as linear models under gradient descent", §2.2) with
`s = learning_rate * t / y_train.size` and train residual `r0 = f0(X) - y`:

    f_t(X) = f0(X) + (exp(-s Θ) - I) r0
    f_t(x) = f0(x) - Θ_xX Θ^{-1} (I - exp(-s Θ)) r0

and for the infinite ensemble (f0 ~ GP(0, K), K the NNGP; §2.3.1):

    mean_t(x) = Θ_xX Θ^{-1} (I - exp(-s Θ)) y
    cov_t(x, x') = K_xx' + Θ_xX Θ^{-1}(I - e^{-sΘ}) K_XX (I - e^{-sΘ}) Θ^{-1} Θ_Xx'
                   - (Θ_xX Θ^{-1}(I - e^{-sΘ}) K_Xx' + h.c.)

(with Θ replaced by K throughout for `get="nngp"`, where the covariance
reduces to `K_xx' - K_xX K^{-1} (I - e^{-2sK}) K_Xx'`). Discrete gradient
descent with step `h = learning_rate / y_train.size` replaces `exp(-s Θ)` by
`(I - h Θ)^k` after k steps; it is stable while `h * λ_max(Θ) < 2`, i.e.
`learning_rate < max_learning_rate(Θ, y_train.size)`.
"""
import numpy as np
import scipy.sparse.linalg

from theory import linalg, output_axes, regression, spectral
from theory.regression import Gaussian, canonical_get, finish, named_output, result_dtype
from theory.spectral import TrainKernel


def _check_learning_rate(learning_rate):
    value = np.asarray(learning_rate)
    if value.ndim != 0 or not np.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a finite positive scalar, got {learning_rate!r}.")
    return float(value)


def _check_prediction_inputs(fx_train_0, fx_test_0, k_test_train):
    if fx_train_0 is None and fx_test_0 is None:
        raise ValueError("fx_train_0 and fx_test_0 are both None: there is nothing to predict.")
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError("predictions on the test set (fx_test_0 given) need k_test_train.")


class _LinearDynamics:
    """Shared machinery of `gradient_descent_mse` and `gradient_descent_mse_discrete`."""

    def __init__(self, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, solver):
        self.layout = output_axes.output_layout(y_train, trace_axes)
        self.diag_reg = linalg.check_diag_reg(diag_reg)
        self.absolute = diag_reg_absolute_scale
        self.solver = spectral.check_solver(solver)
        self.n_train = self.layout.y_shape[0]
        self.k2d = output_axes.kernel_2d(self.layout, "k_train_train", k_train_train, self.n_train, self.n_train)
        linalg.check_finite("k_train_train", self.k2d)
        linalg.check_finite("y_train", y_train)
        self.y_train = y_train
        self.dtype = result_dtype(k_train_train)
        self._train = None

    @property
    def train(self):
        if self._train is None:
            self._train = TrainKernel(self.k2d, self.diag_reg, self.absolute)
        return self._train

    def predict(self, times, fx_train_0, fx_test_0, k_test_train, expm1_fn, gain_fn, f_args_fn, solver):
        """times: float64 array or None (= infinity); *_fn: the spectral filters."""
        _check_prediction_inputs(fx_train_0, fx_test_0, k_test_train)
        layout = self.layout
        lead = () if times is None else times.shape
        flat = np.array([np.inf]) if times is None else times.reshape(-1)
        finite = np.flatnonzero(np.isfinite(flat))
        infinite = np.flatnonzero(~np.isfinite(flat))
        y = output_axes.targets_2d(layout, np.asarray(self.y_train, np.float64))
        f0 = 0.0 if fx_train_0 is None else _broadcast(layout, "fx_train_0", fx_train_0, layout.y_shape)
        r = f0 - y
        train_out = test_out = None
        with linalg.float64():
            if fx_train_0 is not None:
                train_out = np.zeros((flat.size,) + y.shape)
                if finite.size:
                    train_out[finite] = f0 + self.train.apply(expm1_fn, f_args_fn(flat[finite]), r, solver)
                if infinite.size:
                    train_out[infinite] = y
                train_out = output_axes.outputs_from_2d(layout, train_out, layout.kept_shape, (flat.size,))
                train_out = finish("fx_train_t", train_out.reshape(lead + layout.y_shape), self.dtype)
            if fx_test_0 is not None:
                k_td = output_axes.kernel_2d(layout, "k_test_train", k_test_train, None, self.n_train)
                linalg.check_finite("k_test_train", k_td)
                k_td = np.asarray(k_td, np.float64)
                test_kept = output_axes.rows_shape(layout, k_test_train)
                test_shape = _output_shape(layout, test_kept)
                g0 = _broadcast(layout, "fx_test_0", fx_test_0, test_shape)
                test_out = np.zeros((flat.size, k_td.shape[0], y.shape[1]))
                if finite.size:
                    gain = self.train.apply(gain_fn, f_args_fn(flat[finite]), r, solver)
                    test_out[finite] = g0 - k_td @ gain
                if infinite.size:
                    test_out[infinite] = g0 - k_td @ self.train.solve(r)
                test_out = output_axes.outputs_from_2d(layout, test_out, test_kept, (flat.size,))
                test_out = finish("fx_test_t", test_out.reshape(lead + test_shape), self.dtype)
        if train_out is not None and test_out is not None:
            return train_out, test_out
        return train_out if test_out is None else test_out


def _output_shape(layout, kept_shape):
    shape = list(layout.y_shape)
    for axis, dim in zip(layout.kept_axes, kept_shape):
        shape[axis] = dim
    return tuple(shape)


def _broadcast(layout, name, value, shape):
    """Broadcast initial outputs to `shape` and flatten them like the targets (float64)."""
    value = np.asarray(value, np.float64)
    try:
        value = np.broadcast_to(value, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {value.shape} does not broadcast to the outputs' shape {shape}.") from None
    linalg.check_finite(name, value)
    return output_axes.targets_2d(layout._replace(y_shape=shape), value)


def gradient_descent_mse(
    k_train_train,
    y_train,
    learning_rate=1.0,
    diag_reg=0.0,
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
    *,
    solver="auto",
):
    """Outputs of gradient flow on MSE with a fixed kernel, at any times.

    neural-tangents 0.6.5's `predict.gradient_descent_mse`: same arguments,
    defaults and semantics (module docstring for the formulas and conventions).
    Solves run in float64; results come back in the dtype of `k_train_train`.
    Factorizations are computed on first need and reused by every later call:
    a Cholesky factor for `t=None`; for finite `t` Lanczos bases of the
    residual (large kernels, few output columns) or one eigendecomposition.

    Args:
      k_train_train: `(N, N)` kernel for targets `(N, C)` with the default
        `trace_axes`; in general the kept output axes zipped.
      y_train: targets `(N, ...)`.
      learning_rate: step size; absolute time is `learning_rate * t`.
      diag_reg: non-negative ridge added to the kernel's diagonal.
      diag_reg_absolute_scale: take `diag_reg` in absolute units instead of
        relative to `trace(k_train_train) / N`.
      trace_axes: output axes that are independent and share the kernel.
      solver: keyword-only, not in neural-tangents: "auto" (measured choice,
        see `theory.spectral`), "eigh" or "lanczos".

    Returns:
      `predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`:
      `t` a scalar or array of times (None: infinity, computed by a linear
      solve); `fx_train_0` / `fx_test_0` the outputs at t = 0 (None: do not
      predict that set); `k_test_train` `(M, N)`, needed for test predictions.
      Returns `fx_train_t`, `fx_test_t` or both as a tuple (whichever initial
      outputs were given), each with leading axes `t.shape`.
    """
    dynamics = _LinearDynamics(k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, solver)
    scale = _check_learning_rate(learning_rate) / int(np.prod(dynamics.layout.y_shape))

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        times = None if t is None else spectral.as_times("t", t)
        return dynamics.predict(
            times,
            fx_train_0,
            fx_test_0,
            k_test_train,
            spectral.flow_expm1,
            spectral.flow_gain,
            lambda ts: (ts * scale,),
            dynamics.solver,
        )

    return predict_fn


def gradient_descent_mse_discrete(
    k_train_train,
    y_train,
    learning_rate,
    diag_reg=0.0,
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
):
    """Outputs of discrete full-batch gradient descent on MSE with a fixed kernel.

    What a wide network actually runs: `f <- f - h K (f(X) - y)` per step on the
    train set (and `f(x) <- f(x) - h K_xX (f(X) - y)` on test points), with
    `h = learning_rate / y_train.size`, in closed form after any number of
    steps k: the residual is `(I - hK)^k r0` (module docstring). As
    `learning_rate -> 0` with `learning_rate * steps` fixed this tends to
    `gradient_descent_mse` at `t = steps`. Uses one eigendecomposition
    (computed on first need, then reused), which also gives the stability
    limit.

    Args:
      As `gradient_descent_mse`; `learning_rate` is required.

    Returns:
      `predict_fn(steps=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`
      with `steps` a non-negative integer or array of them (None: the limit
      of infinitely many steps, which exists only below the stability limit).
      Returns like `gradient_descent_mse`'s `predict_fn`.

    Raises:
      ValueError: `steps=None` with `learning_rate >= max_learning_rate`, or
        predictions that overflow because gradient descent diverges.
    """
    dynamics = _LinearDynamics(k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, "eigh")
    learning_rate = _check_learning_rate(learning_rate)
    step = learning_rate / int(np.prod(dynamics.layout.y_shape))

    def predict_fn(steps=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        times = None if steps is None else spectral.as_times("steps", steps, integer=True)
        if times is None or np.any(np.isinf(times)):
            with linalg.float64():
                top = dynamics.train.largest_eigenvalue()
            if step * top >= 2:
                raise ValueError(
                    f"learning_rate={learning_rate:g} is at or above the stability limit "
                    f"{2 * int(np.prod(dynamics.layout.y_shape)) / top:g} (max_learning_rate of the "
                    "regularized kernel): gradient descent diverges, so there is no limit of infinitely many steps."
                )
        try:
            return dynamics.predict(
                times,
                fx_train_0,
                fx_test_0,
                k_test_train,
                spectral.gd_expm1,
                spectral.gd_gain,
                lambda ks: (ks, np.float64(step)),
                "eigh",
            )
        except ValueError as error:
            if "non-finite" in str(error):
                raise ValueError(
                    f"gradient descent with learning_rate={learning_rate:g} diverged to overflow; "
                    "it is above max_learning_rate for this kernel."
                ) from error
            raise

    return predict_fn


def _call_kernel(kernel_fn, x1, x2, names, kwargs):
    """kernel_fn with neural-tangents' `get`: returns {name: array}."""
    get = names[0] if len(names) == 1 else tuple(names)
    out = kernel_fn(x1, x2, get, **kwargs)
    if isinstance(get, str) and not hasattr(out, get):
        return {get: out}
    return {g: getattr(out, g) for g in names}


def gradient_descent_mse_ensemble(
    kernel_fn,
    x_train,
    y_train,
    learning_rate=1.0,
    diag_reg=0.0,
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
    *,
    solver="auto",
    **kernel_fn_train_train_kwargs,
):
    """Mean and covariance of the infinite ensemble of infinitely wide networks under MSE gradient flow.

    neural-tangents 0.6.5's `predict.gradient_descent_mse_ensemble` (module
    docstring for the formulas). Kernels are computed on first need and
    cached (the train-train kernel once per `get`), and so are the
    factorizations: predictions at more times or on more test sets cost no
    new decomposition. Solves run in float64; results come back in the dtype
    of the kernels `kernel_fn` returns.

    Args:
      kernel_fn: `kernel_fn(x1, x2, get, **kwargs)` returning arrays / an
        object with `.nngp` / `.ntk`, as `stax` layers' kernel functions do.
      x_train: training inputs, batch first.
      y_train: targets `(N, ...)`, `N == len(x_train)`.
      learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes: as in
        `gradient_descent_mse`.
      solver: keyword-only, as in `gradient_descent_mse` (means only;
        covariances always use the eigendecomposition).
      **kernel_fn_train_train_kwargs: passed to `kernel_fn` for every kernel
        (test-time keyword arguments of `predict_fn` override them for the
        test-train and test-test kernels).

    Returns:
      `predict_fn(t=None, x_test=None, get=None, compute_cov=False,
      **kernel_fn_test_test_kwargs)`. `t`: scalar or array of times (None:
      infinity). `x_test`: test inputs (None: the train set, unregularized).
      `get`: "nngp", "ntk" or a tuple (None: both, as a `Gaussians` named
      tuple). Each value is the mean, with leading axes `t.shape`, or with
      `compute_cov=True` a `Gaussian(mean, covariance)`.
    """
    layout = output_axes.output_layout(y_train, trace_axes)
    n_train = layout.y_shape[0]
    output_axes.check_inputs_match(layout, x_train)
    diag_reg = linalg.check_diag_reg(diag_reg)
    scale = _check_learning_rate(learning_rate) / int(np.prod(layout.y_shape))
    solver = spectral.check_solver(solver)
    linalg.check_finite("y_train", y_train)
    raw_train = {}
    trains = {}

    def train_kernels(names):
        missing = tuple(g for g in names if g not in raw_train)
        if missing:
            computed = _call_kernel(kernel_fn, x_train, None, missing, kernel_fn_train_train_kwargs)
            for g in missing:
                k = output_axes.kernel_2d(layout, f"kernel_fn(x_train, None).{g}", computed[g], n_train, n_train)
                linalg.check_finite(f"kernel_fn(x_train, None).{g}", k)
                raw_train[g] = computed[g]
                with linalg.float64():
                    trains[g] = TrainKernel(k, diag_reg, diag_reg_absolute_scale, f"kernel_fn(x_train, None).{g}")

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_test_test_kwargs):
        names = canonical_get(get)
        needed = tuple(g for g in ("nngp", "ntk") if g in names or (g == "nngp" and compute_cov))
        train_kernels(needed)
        dtype = result_dtype(*(raw_train[g] for g in needed))
        times = None if t is None else spectral.as_times("t", t)
        lead = () if times is None else times.shape
        flat = np.array([np.inf]) if times is None else times.reshape(-1)
        finite = np.flatnonzero(np.isfinite(flat))
        infinite = np.flatnonzero(~np.isfinite(flat))
        s = flat[finite] * scale

        test = None
        if x_test is not None:
            kwargs = {**kernel_fn_train_train_kwargs, **kernel_fn_test_test_kwargs}
            raw_td = _call_kernel(kernel_fn, x_test, x_train, needed, kwargs)
            raw_tt = _call_kernel(kernel_fn, x_test, None, ("nngp",), kwargs)["nngp"] if compute_cov else None
            test = (raw_td, raw_tt)

        out = {}
        y = output_axes.targets_2d(layout, np.asarray(y_train, np.float64))
        # The NNGP at initialization, unregularized: f0 ~ GP(0, K).
        nngp_dd = None
        if compute_cov:
            nngp_dd = np.asarray(output_axes.kernel_2d(layout, "nngp", raw_train["nngp"]), np.float64)
        with linalg.float64():
            for g in names:
                train = trains[g]
                if test is None:
                    kept = layout.kept_shape
                    mean = np.zeros((flat.size,) + y.shape)
                    if finite.size:
                        mean[finite] = -train.apply(spectral.flow_expm1, (s,), y, solver)
                    if infinite.size:
                        mean[infinite] = y
                else:
                    raw_td, raw_tt = test
                    k_td = _test_train(layout, g, raw_td[g], n_train)
                    kept = output_axes.rows_shape(layout, raw_td[g])
                    mean = np.zeros((flat.size, k_td.shape[0], y.shape[1]))
                    if finite.size:
                        gain = train.apply(spectral.flow_gain, (s,), y, solver)
                        mean[finite] = k_td @ gain
                    if infinite.size:
                        mean[infinite] = regression.posterior_mean(train, k_td, y)
                mean = output_axes.outputs_from_2d(layout, mean, kept, (flat.size,))
                mean = finish(f"mean ({g})", mean.reshape(lead + _output_shape(layout, kept)), dtype)
                if not compute_cov:
                    out[g] = mean
                    continue
                cov = _ensemble_covariance(layout, g, train, nngp_dd, test, n_train, flat, finite, infinite, s)
                cov = output_axes.covariance_from_2d(cov, kept, (flat.size,))
                cov = finish(f"covariance ({g})", cov.reshape(lead + cov.shape[1:]), dtype)
                out[g] = Gaussian(mean, cov)
        return named_output(get if get is not None else ("nngp", "ntk"), out)

    return predict_fn


def _test_train(layout, g, k, n_train):
    name = f"kernel_fn(x_test, x_train).{g}"
    k2 = output_axes.kernel_2d(layout, name, k, None, n_train)
    linalg.check_finite(name, k2)
    return np.asarray(k2, np.float64)


def _train_covariance_nngp(evecs, evals, s):
    """e^{-sK} K e^{-sK} = V diag(λ e^{-2sλ}) V^T for each time: (T, P, P)."""
    xp = spectral._namespace(evecs)
    filt = evals[None, :] * xp.exp(-2 * s[:, None] * evals[None, :])
    return xp.einsum("ij,tj,kj->tik", evecs, filt, evecs, optimize=True)


def _train_covariance_ntk(evecs, evals, s, nngp_dd):
    """e^{-sΘ} K e^{-sΘ} for each time: (T, P, P)."""
    xp = spectral._namespace(evecs)
    decay = xp.einsum("ij,tj,kj->tik", evecs, xp.exp(-s[:, None] * evals[None, :]), evecs, optimize=True)
    return xp.einsum("tij,jk,tlk->til", decay, nngp_dd, decay, optimize=True)


def _test_covariance_nngp(evecs, evals, s, k_td, nngp_tt):
    """K_tt - K_td K^{-1} (I - e^{-2sK}) K_dt for each time: (T, M, M)."""
    xp = spectral._namespace(evecs)
    a = k_td @ evecs
    return nngp_tt[None] - xp.einsum("mj,tj,lj->tml", a, spectral.flow_gain(evals, 2 * s), a, optimize=True)


def _test_covariance_ntk(evecs, evals, s, theta_td, nngp_dd, nngp_td, nngp_tt):
    """The ensemble covariance of the module docstring for each time: (T, M, M)."""
    xp = spectral._namespace(evecs)
    a = theta_td @ evecs
    gain = spectral.flow_gain(evals, s)
    term1 = xp.einsum("ij,tj,mj->tim", evecs, gain, a, optimize=True)  # Θ^{-1}(I - e^{-sΘ}) Θ_dt: (T, P, M)
    term2 = xp.einsum("mj,tj,lj->tml", a, gain, nngp_td @ evecs, optimize=True)  # Θ_td Θ^{-1}(I - e^{-sΘ}) K_dt
    quad = xp.einsum("tim,ij,tjl->tml", term1, nngp_dd, term1, optimize=True)
    return nngp_tt[None] + quad - term2 - xp.swapaxes(term2, 1, 2)


def _ensemble_covariance(layout, g, train, nngp_dd, test, n_train, flat, finite, infinite, s):
    """(T, P, P) float64 NumPy covariance of the ensemble for mode g at each time."""
    if test is None:
        cov = np.zeros((flat.size, train.size, train.size))
        if finite.size:
            evals, evecs = train.eigh()
            if g == "nngp":
                cov[finite] = spectral.run_where(_train_covariance_nngp, evecs, evals, s)
            else:
                cov[finite] = spectral.run_where(_train_covariance_ntk, evecs, evals, s, nngp_dd)
        return 0.5 * (cov + np.swapaxes(cov, 1, 2))
    raw_td, raw_tt = test
    k_td = _test_train(layout, g, raw_td[g], n_train)
    m = k_td.shape[0]
    name = "kernel_fn(x_test, None).nngp"
    nngp_tt = output_axes.kernel_2d(layout, name, raw_tt)
    if nngp_tt.shape != (m, m):
        raise ValueError(f"{name} must have shape ({m}, {m}), got {np.shape(raw_tt)}.")
    linalg.check_finite(name, nngp_tt)
    nngp_tt = np.asarray(nngp_tt, np.float64)
    nngp_td = _test_train(layout, "nngp", raw_td["nngp"], n_train) if g == "ntk" else None
    cov = np.zeros((flat.size, m, m))
    if finite.size:
        evals, evecs = train.eigh()
        if g == "nngp":
            cov[finite] = spectral.run_where(_test_covariance_nngp, evecs, evals, s, k_td, nngp_tt)
        else:
            cov[finite] = spectral.run_where(
                _test_covariance_ntk, evecs, evals, s, k_td, nngp_dd, nngp_td, nngp_tt
            )
    if infinite.size:
        if g == "nngp":
            cov[infinite] = regression.gp_posterior_covariance(train, k_td, nngp_tt)
        else:
            cov[infinite] = regression.ntk_ensemble_covariance(train, k_td, nngp_dd, nngp_td, nngp_tt)
    return 0.5 * (cov + np.swapaxes(cov, 1, 2))


def max_learning_rate(ntk_train_train, y_train_size=None, momentum=0.0, eps=1e-12):
    """Largest learning rate for which (momentum) gradient descent on MSE converges.

    neural-tangents 0.6.5's `predict.max_learning_rate`. With the loss
    `||f - y||^2 / (2 * y_train_size)` one step multiplies the train residual
    by `I - learning_rate * Θ / y_train_size`, a contraction iff
    `learning_rate < 2 * y_train_size / λ_max(Θ)`; heavy-ball momentum μ
    raises the limit by `(1 + μ)` (Goh 2017, "Why momentum really works",
    §"The dynamics of momentum").

    Args:
      ntk_train_train: NTK on the training set, `(N, N)` or zipped.
      y_train_size: `y_train.size`; None means the number of rows of the
        flattened kernel (as if `trace_axes=()`).
      momentum: heavy-ball momentum in [0, 1).
      eps: added to λ_max to avoid dividing by zero.

    Returns:
      The largest stable learning rate, a Python float.
    """
    k = np.asarray(ntk_train_train, np.float64)
    if k.ndim % 2 or k.ndim == 0 or k.shape[0::2] != k.shape[1::2]:
        raise ValueError(f"ntk_train_train must be a square (or zipped square) kernel, got shape {k.shape}.")
    k = np.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    n = int(np.prod(k.shape[: k.ndim // 2]))
    k = k.reshape(n, n)
    linalg.check_finite("ntk_train_train", k)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    factor = n if y_train_size is None else int(y_train_size)
    k = 0.5 * (k + k.T)
    if n >= spectral.LANCZOS_MIN_SIZE:
        top = float(scipy.sparse.linalg.eigsh(k, k=1, which="LA", return_eigenvectors=False, tol=1e-12)[0])
    else:
        top = float(np.linalg.eigvalsh(k)[-1])
    return 2 * (1 + momentum) * factor / (top + eps)
