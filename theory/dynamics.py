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

Everything here is traceable by `jax.jit` and differentiable by `jax.grad`
(kernels, targets, initial outputs, times, `diag_reg`, `learning_rate`): with
a traced input the same formulas run as jax.numpy (`theory.linalg.Numerics`).
A concrete train kernel is still factorized once in float64 on the host (or
its accelerator) and cached, even when `predict_fn` is called inside `jit`.
Traced times go through the spectral filters, infinite ones included (exact
for a positive definite regularized kernel); value checks are skipped.
"""
import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from theory import arguments, linalg, output_axes, regression, spectral
from theory.regression import Gaussian, NonFiniteResult, finish, named_output, result_dtype
from theory.spectral import TrainKernel


def check_learning_rate(where, learning_rate):
    """A finite positive learning rate, as a float (a traced one as it is)."""
    return arguments.scalar(where, "learning_rate", learning_rate, low=0, low_open=True, traceable=True)


class TimeGrid(NamedTuple):
    """Times flattened: `finite` / `infinite` index the entries computed by the spectral filters /
    by the t = infinity solve. Traced times all go through the filters (their values are unknown)."""

    lead: tuple
    flat: object
    finite: np.ndarray
    infinite: np.ndarray


def time_grid(times):
    """`TimeGrid` of checked times (None: one infinite time, with no leading axes)."""
    lead = () if times is None else tuple(times.shape)
    flat = np.array([np.inf]) if times is None else times.reshape(-1)
    if linalg.is_traced(flat):
        return TimeGrid(lead, flat, np.arange(flat.size), np.arange(0))
    return TimeGrid(lead, flat, np.flatnonzero(np.isfinite(flat)), np.flatnonzero(~np.isfinite(flat)))


def check_prediction_inputs(where, fx_train_0, fx_test_0, k_test_train):
    """Refuses a call of a `predict_fn` with nothing to predict, or test outputs without a test kernel."""
    if fx_train_0 is None and fx_test_0 is None:
        raise arguments.argument_error(where, "fx_train_0", "given when fx_test_0 is None (else there is "
                                       "nothing to predict)", None)
    if fx_test_0 is not None and k_test_train is None:
        raise arguments.argument_error(where, "k_test_train", "given with fx_test_0 (test predictions need "
                                       "the test-train kernel)", None)


class _LinearDynamics:
    """Shared machinery of `gradient_descent_mse` and `gradient_descent_mse_discrete`."""

    def __init__(self, where, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, solver):
        self.layout = output_axes.output_layout(where, y_train, trace_axes)
        self.diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0, traceable=True)
        self.absolute = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
        self.solver = spectral.check_solver(where, solver)
        self.n_train = self.layout.y_shape[0]
        self.k2d = output_axes.kernel_2d(self.layout, "k_train_train", k_train_train, self.n_train, self.n_train)
        self.y_train = y_train
        self.predict_where = f"{where}'s predict_fn"
        self.dtype = result_dtype(k_train_train)
        self._train = None

    @property
    def train(self):
        if self._train is None:
            self._train = TrainKernel(self.k2d, self.diag_reg, self.absolute)
        return self._train

    def predict(self, times, fx_train_0, fx_test_0, k_test_train, expm1_fn, gain_fn, f_args_fn, solver):
        """times: float64 array, tracer or None (= infinity); *_fn: the spectral filters."""
        where = self.predict_where
        check_prediction_inputs(where, fx_train_0, fx_test_0, k_test_train)
        layout = self.layout._replace(where=where)
        grid = time_grid(times)
        finite, infinite, n_times = grid.finite, grid.infinite, grid.flat.shape[0]
        f_args = f_args_fn(grid.flat[finite])
        num = linalg.numerics(self.k2d, self.diag_reg, self.y_train, f_args, fx_train_0, fx_test_0, k_test_train)
        spectral.check_traced_solver(where, solver, num.traced)
        y = output_axes.targets_2d(layout, num.asarray(self.y_train), num.xp)
        f0 = 0.0 if fx_train_0 is None else broadcast_outputs(layout, "fx_train_0", fx_train_0, layout.y_shape,
                                                                num=num)
        r = f0 - y
        train_out = test_out = None
        with num.scope():
            if fx_train_0 is not None:
                train_out = num.zeros((n_times,) + y.shape)
                if finite.size:
                    train_out = num.put(train_out, finite, f0 + self.train.apply(expm1_fn, f_args, r, solver))
                if infinite.size:
                    train_out = num.put(train_out, infinite, y)
                train_out = output_axes.outputs_from_2d(layout, train_out, layout.kept_shape, (n_times,), num.xp)
                train_out = finish("fx_train_t", train_out.reshape(grid.lead + layout.y_shape), self.dtype)
            if fx_test_0 is not None:
                k_td = output_axes.kernel_2d(layout, "k_test_train", k_test_train, None, self.n_train)
                k_td = num.asarray(k_td)
                test_kept = output_axes.rows_shape(layout, k_test_train)
                test_shape = output_shape(layout, test_kept)
                g0 = broadcast_outputs(layout, "fx_test_0", fx_test_0, test_shape, num=num)
                test_out = num.zeros((n_times, k_td.shape[0], y.shape[1]))
                if finite.size:
                    gain = self.train.apply(gain_fn, f_args, r, solver)
                    test_out = num.put(test_out, finite, g0 - k_td @ gain)
                if infinite.size:
                    test_out = num.put(test_out, infinite, g0 - k_td @ self.train.solve(r))
                test_out = output_axes.outputs_from_2d(layout, test_out, test_kept, (n_times,), num.xp)
                test_out = finish("fx_test_t", test_out.reshape(grid.lead + test_shape), self.dtype)
        if train_out is not None and test_out is not None:
            return train_out, test_out
        return train_out if test_out is None else test_out


def output_shape(layout, kept_shape):
    """The shape of outputs whose kept axes have sizes `kept_shape` (the others as in y_train)."""
    shape = list(layout.y_shape)
    for axis, dim in zip(layout.kept_axes, kept_shape):
        shape[axis] = dim
    return tuple(shape)


def broadcast_outputs(layout, name, value, shape, flatten=True, num=linalg.HOST):
    """Checks initial outputs (real, finite), broadcasts them to `shape` in `num`'s dtype (float64 on
    the host) and (if `flatten`) flattens them like the targets."""
    value = num.asarray(arguments.real_array(layout.where, name, value))
    try:
        value = num.xp.broadcast_to(value, shape)
    except ValueError:
        raise arguments.argument_error(layout.where, name, f"broadcastable to the outputs' shape {shape}",
                                       f"shape {value.shape}") from None
    return output_axes.targets_2d(layout._replace(y_shape=shape), value, num.xp) if flatten else value


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
      predict that set); `k_test_train` `(M, N)`, needed for test predictions
      and read only with `fx_test_0` (as in neural-tangents, whose tests pass it
      with `fx_test_0=None` for train predictions).
      Returns `fx_train_t`, `fx_test_t` or both as a tuple (whichever initial
      outputs were given), each with leading axes `t.shape`.
    """
    where = "gradient_descent_mse"
    dynamics = _LinearDynamics(where, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, solver)
    scale = check_learning_rate(where, learning_rate) / int(np.prod(dynamics.layout.y_shape))

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        times = None if t is None else arguments.times(dynamics.predict_where, "t", t, traceable=True)
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
    where = "gradient_descent_mse_discrete"
    dynamics = _LinearDynamics(where, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes, "eigh")
    learning_rate = check_learning_rate(where, learning_rate)
    step = learning_rate / int(np.prod(dynamics.layout.y_shape))

    def predict_fn(steps=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        times = None if steps is None else arguments.times(dynamics.predict_where, "steps", steps,
                                                           integer_valued=True, traceable=True)
        checkable = not linalg.is_traced(step, dynamics.k2d, dynamics.diag_reg, times)  # a value check
        if checkable and (times is None or np.any(np.isinf(times))):
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
                lambda ks: (ks, step if linalg.is_traced(step) else np.float64(step)),
                "eigh",
            )
        except NonFiniteResult as error:
            raise NonFiniteResult(
                f"gradient descent with learning_rate={learning_rate:g} diverged to overflow; "
                "it is above max_learning_rate for this kernel."
            ) from error

    return predict_fn


def _is_arrays(value) -> bool:
    leaves = jax.tree_util.tree_leaves(value)
    return bool(leaves) and all(isinstance(v, (np.ndarray, jax.Array)) for v in leaves)


def _test_kwargs(where: str, train: dict, test: dict):
    """``kernel_fn`` keywords for the test-train and test-test kernels, as neural-tangents pairs them.

    A keyword given per input pair, ``(for x1, for x2)``, on both sides (e.g. `Aggregate`'s
    ``pattern``) becomes ``(test's, train's)`` for the test-train kernel; another array keyword is
    the test side's; any other keyword must be the same on both sides.
    """
    td, tt = dict(train), dict(train)
    for name, v_test in test.items():
        v_test_td = v_test
        if name in train:
            v_train = train[name]
            if _is_arrays(v_train) and _is_arrays(v_test):
                pairs = all(isinstance(v, tuple) and len(v) == 2 for v in (v_train, v_test))
                v_test_td = (v_test[0], v_train[0]) if pairs else v_test
            elif not (v_train is v_test or _same_value(v_train, v_test)):
                raise arguments.argument_error(where, name, f"the same value for the train-train kernel "
                                               f"({v_train!r}) and the test kernels", v_test)
        td[name], tt[name] = v_test_td, v_test
    return td, tt


def _check_train_kwargs_repeated(where: str, train: dict, given: dict) -> None:
    """With ``x_test=None`` nothing uses `predict_fn`'s ``kernel_fn`` keywords; neural-tangents drops
    them. Accepted only as a repeat of the train-train kernel's (what its own tests pass), refused
    by name otherwise, since they would change nothing."""
    for name, value in given.items():
        if not (name in train and (value is train[name] or _same_value(train[name], value))):
            raise arguments.argument_error(where, name, "absent when x_test is None (kernel_fn's keyword arguments "
                                           "here are for the test kernels, which are not computed), or the "
                                           "train-train kernel's own value", value)


def _same_value(a, b) -> bool:
    """Whether ``a`` equals ``b``: by ``==``, or, for pytrees of arrays, leaf by leaf."""
    if _is_arrays(a) and _is_arrays(b):
        return jax.tree.structure(a) == jax.tree.structure(b) and all(
            np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # values without ==
        return False


def _call_kernel(kernel_fn, x1, x2, names, kwargs):
    """kernel_fn with neural-tangents' `get`: returns {name: array}.

    With concrete inputs the kernels are computed eagerly even inside a trace (so that a train
    kernel is factorized in float64 and cached); with traced ones they are traced."""
    get = names[0] if len(names) == 1 else tuple(names)
    concrete = not linalg.is_traced(x1, x2, kwargs)
    with jax.ensure_compile_time_eval() if concrete else contextlib.nullcontext():
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
      **kernel_fn_train_train_kwargs: passed to `kernel_fn` for every kernel.
        `predict_fn`'s keyword arguments are the test inputs' (`_test_kwargs`):
        one given per input pair on both sides, `(for x1, for x2)` such as
        `Aggregate`'s `pattern`, is paired `(test's, train's)` for the
        test-train kernel, as in neural-tangents.

    Returns:
      `predict_fn(t=None, x_test=None, get=None, compute_cov=False,
      **kernel_fn_test_test_kwargs)`. `t`: scalar or array of times (None:
      infinity). `x_test`: test inputs (None: the train set, unregularized).
      `get`: "nngp", "ntk" or a tuple (None: both, as a `Gaussians` named
      tuple). Each value is the mean, with leading axes `t.shape`, or with
      `compute_cov=True` a `Gaussian(mean, covariance)`.
    """
    where = "gradient_descent_mse_ensemble"
    if not callable(kernel_fn):
        raise arguments.argument_error(where, "kernel_fn", "a kernel function", type(kernel_fn).__name__, TypeError)
    layout = output_axes.output_layout(where, y_train, trace_axes)
    n_train = layout.y_shape[0]
    output_axes.check_inputs_match(layout, x_train)
    diag_reg = arguments.scalar(where, "diag_reg", diag_reg, low=0, traceable=True)
    diag_reg_absolute_scale = arguments.flag(where, "diag_reg_absolute_scale", diag_reg_absolute_scale)
    scale = check_learning_rate(where, learning_rate) / int(np.prod(layout.y_shape))
    solver = spectral.check_solver(where, solver)
    predict_where = f"{where}'s predict_fn"
    cached = {}  # g -> (raw train kernel, TrainKernel), concrete ones only

    def train_kernels(names):
        """{g: (raw train kernel, TrainKernel)}; traced ones are made afresh in each trace, never cached."""
        found = {g: cached[g] for g in names if g in cached}
        missing = tuple(g for g in names if g not in found)
        if missing:
            computed = _call_kernel(kernel_fn, x_train, None, missing, kernel_fn_train_train_kwargs)
            for g in missing:
                name = f"kernel_fn(x_train, None).{g}"
                k = output_axes.kernel_2d(layout, name, computed[g], n_train, n_train)
                found[g] = (computed[g], TrainKernel(k, diag_reg, diag_reg_absolute_scale, name))
                if not found[g][1].traced:
                    cached[g] = found[g]
        return found

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_test_test_kwargs):
        parsed = arguments.parse_get(get, ("nngp", "ntk"), predict_where)
        compute_cov = arguments.flag(predict_where, "compute_cov", compute_cov)
        times = None if t is None else arguments.times(predict_where, "t", t, traceable=True)
        if x_test is not None:
            x_shape = arguments.examples(predict_where, "x_test", x_test).shape
            if x_shape[1:] != np.shape(x_train)[1:]:
                raise arguments.argument_error(predict_where, "x_test", f"inputs of shape (M, *{np.shape(x_train)[1:]}) "
                                               "like x_train", f"shape {x_shape}")
        else:  # no test kernels: keywords could only repeat the train kernel's (neural-tangents' tests pass those)
            _check_train_kwargs_repeated(predict_where, kernel_fn_train_train_kwargs, kernel_fn_test_test_kwargs)
        needed = tuple(g for g in ("nngp", "ntk") if g in parsed.names or (g == "nngp" and compute_cov))
        found = train_kernels(needed)
        raw_train = {g: found[g][0] for g in needed}
        trains = {g: found[g][1] for g in needed}
        dtype = result_dtype(*raw_train.values())
        grid = time_grid(times)
        finite, infinite, n_times = grid.finite, grid.infinite, grid.flat.shape[0]
        s = grid.flat[finite] * scale

        test = None
        if x_test is not None:
            kwargs_td, kwargs_tt = _test_kwargs(predict_where, kernel_fn_train_train_kwargs, kernel_fn_test_test_kwargs)
            raw_td = _call_kernel(kernel_fn, x_test, x_train, needed, kwargs_td)
            raw_tt = _call_kernel(kernel_fn, x_test, None, ("nngp",), kwargs_tt)["nngp"] if compute_cov else None
            test = (raw_td, raw_tt)

        out = {}
        num = linalg.numerics(y_train, s, test, raw_train, diag_reg)
        spectral.check_traced_solver(predict_where, solver, num.traced)
        y = output_axes.targets_2d(layout, num.asarray(y_train), num.xp)
        # The NNGP at initialization, unregularized: f0 ~ GP(0, K).
        nngp_dd = None
        if compute_cov:
            nngp_dd = num.asarray(output_axes.kernel_2d(layout, "nngp", raw_train["nngp"]))
        with num.scope():
            for g in parsed.names:
                train = trains[g]
                if test is None:
                    kept = layout.kept_shape
                    mean = num.zeros((n_times,) + y.shape)
                    if finite.size:
                        mean = num.put(mean, finite, -train.apply(spectral.flow_expm1, (s,), y, solver))
                    if infinite.size:
                        mean = num.put(mean, infinite, y)
                else:
                    raw_td, raw_tt = test
                    k_td = _test_train(layout, g, raw_td[g], n_train, num)
                    kept = output_axes.rows_shape(layout, raw_td[g])
                    mean = num.zeros((n_times, k_td.shape[0], y.shape[1]))
                    if finite.size:
                        gain = train.apply(spectral.flow_gain, (s,), y, solver)
                        mean = num.put(mean, finite, k_td @ gain)
                    if infinite.size:
                        mean = num.put(mean, infinite, regression.posterior_mean(train, k_td, y))
                mean = output_axes.outputs_from_2d(layout, mean, kept, (n_times,), num.xp)
                mean = finish(f"mean ({g})", mean.reshape(grid.lead + output_shape(layout, kept)), dtype)
                if not compute_cov:
                    out[g] = mean
                    continue
                cov = _ensemble_covariance(layout, g, train, nngp_dd, test, n_train, grid, s, num)
                cov = output_axes.covariance_from_2d(cov, kept, (n_times,))
                cov = finish(f"covariance ({g})", cov.reshape(grid.lead + cov.shape[1:]), dtype)
                out[g] = Gaussian(mean, cov)
        return named_output(parsed, out)

    return predict_fn


def _test_train(layout, g, k, n_train, num):
    return num.asarray(output_axes.kernel_2d(layout, f"kernel_fn(x_test, x_train).{g}", k, None, n_train))


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


def _ensemble_covariance(layout, g, train, nngp_dd, test, n_train, grid, s, num):
    """(T, P, P) covariance of the ensemble for mode g at each time (float64 NumPy, or traced in `num`)."""
    finite, infinite, n_times = grid.finite, grid.infinite, grid.flat.shape[0]
    if test is None:
        cov = num.zeros((n_times, train.size, train.size))
        if finite.size:
            evals, evecs = train.eigh()
            if g == "nngp":
                cov = num.put(cov, finite, spectral.run_where(_train_covariance_nngp, evecs, evals, s))
            else:
                cov = num.put(cov, finite, spectral.run_where(_train_covariance_ntk, evecs, evals, s, nngp_dd))
        return 0.5 * (cov + num.xp.swapaxes(cov, 1, 2))
    raw_td, raw_tt = test
    k_td = _test_train(layout, g, raw_td[g], n_train, num)
    m = k_td.shape[0]
    name = "kernel_fn(x_test, None).nngp"
    nngp_tt = output_axes.kernel_2d(layout, name, raw_tt)
    if nngp_tt.shape != (m, m):
        raise arguments.argument_error(layout.where, name, f"of shape ({m}, {m})", f"shape {np.shape(raw_tt)}")
    nngp_tt = num.asarray(nngp_tt)
    nngp_td = _test_train(layout, "nngp", raw_td["nngp"], n_train, num) if g == "ntk" else None
    cov = num.zeros((n_times, m, m))
    if finite.size:
        evals, evecs = train.eigh()
        if g == "nngp":
            value = spectral.run_where(_test_covariance_nngp, evecs, evals, s, k_td, nngp_tt)
        else:
            value = spectral.run_where(_test_covariance_ntk, evecs, evals, s, k_td, nngp_dd, nngp_td, nngp_tt)
        cov = num.put(cov, finite, value)
    if infinite.size:
        if g == "nngp":
            value = regression.gp_posterior_covariance(train, k_td, nngp_tt)
        else:
            value = regression.ntk_ensemble_covariance(train, k_td, nngp_dd, nngp_td, nngp_tt)
        cov = num.put(cov, infinite, value)
    return 0.5 * (cov + num.xp.swapaxes(cov, 1, 2))


# max_learning_rate refuses a kernel whose smallest eigenvalue is below -tolerance x its largest, the
# tolerance being this or, if larger, N x the machine epsilon of the kernel's dtype (the rounding of a
# float32 kernel). Gradient descent along a negative eigendirection diverges at every learning rate.
NEGATIVE_EIGENVALUE_TOLERANCE = linalg.MAX_RELATIVE_JITTER


def max_learning_rate(ntk_train_train, y_train_size=None, momentum=0.0, eps=1e-12):
    """Largest learning rate for which (momentum) gradient descent on MSE converges.

    neural-tangents 0.6.5's `predict.max_learning_rate`. With the loss
    `||f - y||^2 / (2 * y_train_size)` one step multiplies the train residual
    by `I - learning_rate * Θ / y_train_size`, a contraction iff
    `learning_rate < 2 * y_train_size / λ_max(Θ)`; heavy-ball momentum μ
    raises the limit by `(1 + μ)` (Goh 2017, "Why momentum really works",
    §"The dynamics of momentum"). The limit exists only for a positive
    semi-definite Θ: unlike neural-tangents, a kernel with a negative
    eigenvalue beyond rounding (`NEGATIVE_EIGENVALUE_TOLERANCE`), or with no
    positive eigenvalue, is refused.

    Args:
      ntk_train_train: NTK on the training set, `(N, N)` or zipped; real and finite.
      y_train_size: `y_train.size`, an integer >= 1; None means the number of
        rows of the flattened kernel (as if `trace_axes=()`).
      momentum: heavy-ball momentum in [0, 1).
      eps: non-negative, added to λ_max (neural-tangents' guard against dividing by zero).

    Returns:
      The largest stable learning rate, a positive Python float (a traced
      scalar if an argument is traced: then in the traced dtype, computed by
      `jnp.linalg.eigvalsh`, without the positive semi-definite check).

    Raises:
      ValueError, TypeError: an argument out of range or of the wrong type, naming it.
    """
    where = "max_learning_rate"
    raw = arguments.real_array(where, "ntk_train_train", ntk_train_train)
    momentum = arguments.scalar(where, "momentum", momentum, low=0, high=1, traceable=True)
    eps = arguments.scalar(where, "eps", eps, low=0, traceable=True)
    num = linalg.numerics(raw, momentum, eps)
    k = num.asarray(raw)
    if k.ndim % 2 or k.ndim == 0 or k.shape[0::2] != k.shape[1::2]:
        raise arguments.argument_error(where, "ntk_train_train", "a square (or zipped square) kernel",
                                       f"shape {k.shape}")
    k = k.transpose(tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    n = int(np.prod(k.shape[: k.ndim // 2]))
    k = k.reshape(n, n)
    factor = n if y_train_size is None else arguments.integer(where, "y_train_size", y_train_size, low=1)
    k = 0.5 * (k + k.T)
    top = jnp.linalg.eigvalsh(k)[-1] if num.traced else _checked_top_eigenvalue(where, k, raw.dtype)
    rate = 2 * (1 + momentum) * factor / (top + eps)
    return rate if num.traced else float(rate)


def _checked_top_eigenvalue(where, k, dtype):
    """λ_max of a symmetric float64 NumPy `k`; refuses one not PSD within `NEGATIVE_EIGENVALUE_TOLERANCE`."""
    n = k.shape[0]
    if n >= spectral.LANCZOS_MIN_SIZE:
        ends = scipy.sparse.linalg.eigsh(k, k=2, which="BE", return_eigenvectors=False, tol=1e-12)
        smallest, top = float(np.min(ends)), float(np.max(ends))
    else:
        evals = np.linalg.eigvalsh(k)
        smallest, top = float(evals[0]), float(evals[-1])
    dtype = np.dtype(dtype)
    floating = np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"
    rounding = n * float(jnp.finfo(dtype if floating else np.float64).eps)
    tolerance = max(NEGATIVE_EIGENVALUE_TOLERANCE, rounding)
    if not top > 0 or smallest < -tolerance * top:
        raise arguments.argument_error(
            where, "ntk_train_train", f"positive semi-definite with a positive largest eigenvalue (smallest "
            f"eigenvalue >= -{tolerance:.3g} x the largest)",
            f"a kernel of shape {k.shape} with eigenvalues from {smallest:.4g} to {top:.4g}")
    return top
