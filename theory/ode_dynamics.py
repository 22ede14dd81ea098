"""Gradient descent with a fixed kernel for any loss, by ODE integration (diffrax).

In function space, gradient flow on a loss L(f(X), y) with a constant kernel Θ
is (Lee et al. 2019, "Wide neural networks of any depth evolve as linear
models under gradient descent", §2.1, eq. 3 with Θ fixed):

    d f(X) / dτ = -Θ_XX  ∇_f L,     d f(x) / dτ = -Θ_xX ∇_f L

with τ = learning_rate * t the absolute time. Heavy-ball momentum μ has the
continuous limit of a damped oscillator (Qian 1999, "On the momentum term in
gradient descent learning algorithms", §3), which in units τ = sqrt(lr) * t
reads

    d f / dτ = q,     d q / dτ = -Θ ∇_f L - (1 - μ) / sqrt(lr) * q

(neural-tangents' convention: with momentum, `learning_rate` and `t` are not
interchangeable). For MSE this reproduces `gradient_descent_mse`.

Traceable by `jax.jit` and differentiable by `jax.grad` (diffrax's default
adjoint): with a traced input the integration runs in the traced dtype and
the checks of the loss's values and of the integration's success are skipped.
"""
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from theory import arguments, linalg, output_axes
from theory.dynamics import broadcast_outputs, check_learning_rate, check_prediction_inputs, output_shape
from theory.regression import finish, result_dtype


class ODEState(NamedTuple):
    """Outputs and auxiliary (momentum) variables of the function-space ODE.

    Attributes:
      fx_train, fx_test: outputs on the train / test set.
      qx_train, qx_test: their velocities (momentum only).
    """

    fx_train: Optional[jax.Array] = None
    fx_test: Optional[jax.Array] = None
    qx_train: Optional[jax.Array] = None
    qx_test: Optional[jax.Array] = None


def gradient_descent(
    loss,
    k_train_train,
    y_train,
    learning_rate=1.0,
    momentum=None,
    trace_axes=(-1,),
    *,
    rtol=1e-8,
    atol=1e-10,
    max_steps=100_000,
    solver=None,
):
    """Outputs of (momentum) gradient descent on any loss with a fixed kernel, by ODE integration.

    neural-tangents 0.6.5's `predict.gradient_descent`, integrated with
    diffrax (Tsit5 with an adaptive step by default) in float64; results in
    the dtype of `k_train_train`.

    Args:
      loss: `loss(fx_train, y_train) -> scalar`, differentiable in JAX, e.g.
        cross-entropy `lambda f, y: -jnp.mean(jax.nn.log_softmax(f) * y)`.
        `lambda f, y: 0.5 * jnp.mean((f - y) ** 2)` is the MSE convention of
        `gradient_descent_mse`.
      k_train_train: `(N, N)` NTK on the train set (zipped kept axes in general).
      y_train: targets `(N, ...)`.
      learning_rate: step size; absolute time is `learning_rate * t`
        (`sqrt(learning_rate) * t` with momentum).
      momentum: None for plain gradient descent, else heavy-ball momentum in [0, 1).
      trace_axes: output axes that are independent and share the kernel.
      rtol, atol, max_steps, solver: keyword-only integration controls (a
        diffrax solver instance; default `diffrax.Tsit5()`).

    Returns:
      `predict_fn(t, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)`.
      `t`: a non-negative scalar or array of finite times, in any order.
      `fx_train_or_state_0`: outputs at t = 0 on the train set (None: zeros,
      and train outputs are not returned) or an `ODEState` (then an `ODEState`
      is returned, and `fx_test_0` must be inside it). `k_test_train` is read
      only with `fx_test_0`, as in `gradient_descent_mse`. Returns like
      `gradient_descent_mse`'s `predict_fn`, with leading axes `t.shape`.

    Raises:
      ValueError, TypeError: an argument out of range or of the wrong type
        (`t=None` or infinite: integrate to finite times; momentum outside
        [0, 1); a momentum state without momentum; shape mismatches), naming
        it; a `loss` whose value or gradient is not finite at the initial
        outputs, or whose integration stops early (a gradient that turns NaN
        on the way, or too few `max_steps`), naming `loss`.
    """
    where = "gradient_descent"
    if not callable(loss):
        raise arguments.argument_error(where, "loss", "a function loss(fx_train, y_train) -> scalar",
                                       type(loss).__name__, TypeError)
    layout = output_axes.output_layout(where, y_train, trace_axes)
    n_train = layout.y_shape[0]
    k2d = output_axes.kernel_2d(layout, "k_train_train", k_train_train, n_train, n_train)
    value = check_learning_rate(where, learning_rate)
    if momentum is not None:
        momentum = arguments.scalar(where, "momentum", momentum, low=0, high=1, traceable=True)
    rtol = arguments.scalar(where, "rtol", rtol, low=0, low_open=True)
    atol = arguments.scalar(where, "atol", atol, low=0, low_open=True)
    max_steps = arguments.integer(where, "max_steps", max_steps, low=1)
    dtype = result_dtype(k_train_train)
    root = jnp.sqrt(value) if linalg.is_traced(value) else float(np.sqrt(value))
    time_scale = value if momentum is None else root
    friction = None if momentum is None else (1.0 - momentum) / root
    import diffrax  # imported on first use: `import theory` stays light

    if solver is not None and not isinstance(solver, diffrax.AbstractSolver):
        raise arguments.argument_error(where, "solver", "None or a diffrax solver instance, e.g. diffrax.Tsit5()",
                                       type(solver).__name__, TypeError)
    controls = dict(loss=loss, layout=layout, solver=diffrax.Tsit5() if solver is None else solver,
                    rtol=rtol, atol=atol, max_steps=max_steps)
    predict_where = f"{where}'s predict_fn"

    def predict_fn(t=None, fx_train_or_state_0=0.0, fx_test_0=None, k_test_train=None):
        if t is None:
            raise arguments.argument_error(predict_where, "t", "finite times (t=None would mean infinity, "
                                           "which an ODE integration does not reach)", None)
        times = arguments.times(predict_where, "t", t, allow_inf=False, traceable=True)
        as_state = isinstance(fx_train_or_state_0, ODEState)
        if as_state:
            if fx_test_0 is not None:
                raise arguments.argument_error(predict_where, "fx_test_0", "None when an ODEState is given "
                                               "(the state holds the test outputs)", "an array")
            state0 = fx_train_or_state_0
            if momentum is None and (state0.qx_train is not None or state0.qx_test is not None):
                raise arguments.argument_error(predict_where, "fx_train_or_state_0", "an ODEState without "
                                               "momentum variables (momentum is None)", "one with qx_train/qx_test")
            fx_train_0, fx_test_0 = state0.fx_train, state0.fx_test
        else:
            state0 = ODEState(fx_train_or_state_0, fx_test_0)
            fx_train_0 = fx_train_or_state_0
        if not as_state:
            check_prediction_inputs(predict_where, fx_train_0, fx_test_0, k_test_train)
        elif fx_test_0 is not None and k_test_train is None:
            check_prediction_inputs(predict_where, fx_train_0, fx_test_0, k_test_train)
        here = layout._replace(where=predict_where)
        num = linalg.numerics(k2d, y_train, times, state0, fx_test_0, k_test_train, value, momentum)

        def outputs(name, given, shape):
            return jnp.asarray(broadcast_outputs(here, name, given, shape, flatten=False, num=num))

        with num.scope():
            k = jnp.asarray(k2d, num.dtype)
            y = jnp.asarray(y_train, num.dtype)
            f_train = outputs("fx_train_0", 0.0 if fx_train_0 is None else fx_train_0, layout.y_shape)
            _check_loss_at_start(predict_where, loss, f_train, y)
            k_td = test_shape = None
            f_test = None
            if fx_test_0 is not None:
                k_td = jnp.asarray(output_axes.kernel_2d(here, "k_test_train", k_test_train, None, n_train),
                                   num.dtype)
                test_shape = output_shape(layout, output_axes.rows_shape(layout, k_test_train))
                f_test = outputs("fx_test_0", fx_test_0, test_shape)
            q_train = q_test = None
            if momentum is not None:
                q_train = outputs("qx_train", 0.0 if state0.qx_train is None else state0.qx_train, layout.y_shape)
                if f_test is not None:
                    q_test = outputs("qx_test", 0.0 if state0.qx_test is None else state0.qx_test, test_shape)
            start = ODEState(f_train, f_test, q_train, q_test)
            flat = times.reshape(-1)
            order = num.xp.argsort(flat, stable=True)
            ts = jnp.asarray(num.asarray(flat)[order] * time_scale)
            if not num.traced and float(np.max(flat)) == 0.0:
                path = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (ts.shape[0],) + x.shape), start)
            else:
                path, result = _solve(k, k_td, y, friction, start, ts, **controls)
                # unchecked when traced (also with concrete inputs inside a user's trace)
                if not linalg.is_traced(result) and result != diffrax.RESULTS.successful:
                    _integration_failed(predict_where, loss, path, y, ts / time_scale, diffrax.RESULTS[result])
            inverse = num.xp.argsort(order)  # the inverse permutation
            advice = "the ODE integration overflowed; check `loss` and the kernel's scale"
            path = jax.tree_util.tree_map(
                lambda x: finish("ODE solution", x[inverse].reshape(times.shape + x.shape[1:]), dtype, advice), path
            )
        if as_state:
            return path
        if fx_train_0 is not None and fx_test_0 is None:
            return path.fx_train
        if fx_train_0 is None:
            return path.fx_test
        return path.fx_train, path.fx_test

    return predict_fn


def _check_loss_at_start(where, loss, f_train, y):
    """Refuses a loss that is not a scalar or (on concrete values) whose value or gradient is not finite
    at the initial train outputs, naming `loss`."""
    shape = jax.eval_shape(loss, f_train, y).shape
    if shape != ():
        raise arguments.argument_error(where, "loss", "a function returning a scalar", f"a result of shape {shape}",
                                       TypeError)
    value, gradient = jax.value_and_grad(loss)(f_train, y)
    if linalg.is_traced(value, gradient):  # a value check: skipped inside a trace
        return
    if not (np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(gradient)))):
        raise arguments.argument_error(
            where, "loss", "finite, with a finite gradient, at the initial outputs fx_train_0",
            f"value {float(value)!r} and {int(np.sum(~np.isfinite(np.asarray(gradient))))} non-finite "
            "gradient entries there")


def _integration_failed(where, loss, path, y, times, message):
    """Raises the error of an integration that stopped early, saying whether `loss`'s gradient is to blame."""
    reached = np.isfinite(np.asarray(path.fx_train)).reshape(len(times), -1).all(axis=1)
    last = int(np.flatnonzero(reached)[-1]) if reached.any() else None
    first_missing = float(times[int(np.flatnonzero(~reached)[0])]) if (~reached).any() else float(times[-1])
    state = path.fx_train[last] if last is not None else None
    blame = ""
    if state is not None:
        gradient = np.asarray(jax.grad(loss)(state, y))
        blame = (f"; the gradient of `loss` at the last saved state (t={float(times[last]):g}) is "
                 f"{'not finite' if not np.all(np.isfinite(gradient)) else 'finite'}")
    raise ValueError(
        f"{where}: the integration of the gradient flow of `loss` stopped before t={first_missing:g} "
        f"(diffrax: {message}){blame}. A loss whose gradient turns NaN or infinite on the way cannot be "
        "integrated: fix `loss`; if its gradient stays finite, raise max_steps or loosen rtol/atol.")


def _kernel_times(layout, kernel, gradient, shape):
    """Θ acting on the kept axes of `gradient`; traced axes are independent outputs."""
    out = kernel @ output_axes.targets_2d(layout, gradient, jnp)
    kept = tuple(shape[a] for a in layout.kept_axes)
    return output_axes.outputs_from_2d(layout, out, kept, xp=jnp)


def _field(tau, state, args):
    """The function-space ODE of the module docstring."""
    loss, layout, k, k_td, y, friction = args
    gradient = jax.grad(loss)(state.fx_train, y)
    d_train = -_kernel_times(layout, k, gradient, state.fx_train.shape)
    d_test = None if k_td is None else -_kernel_times(layout, k_td, gradient, state.fx_test.shape)
    if friction is None:
        return ODEState(d_train, d_test)
    d_q_train = d_train - friction * state.qx_train
    d_q_test = None if k_td is None else d_test - friction * state.qx_test
    return ODEState(state.qx_train, state.qx_test, d_q_train, d_q_test)


@partial(jax.jit, static_argnames=("loss", "layout", "solver", "rtol", "atol", "max_steps"))
def _solve(k, k_td, y, friction, start, ts, loss, layout, solver, rtol, atol, max_steps):
    """Integrate from τ = 0 and save at the sorted times `ts` (one compilation per loss and shapes)."""
    import diffrax

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda tau, state, args: _field(tau, state, (loss, layout) + args)),
        solver,
        t0=0.0,
        t1=ts[-1],
        dt0=None,
        y0=start,
        args=(k, k_td, y, friction),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,  # a failure is diagnosed on the host (`_integration_failed`), naming the loss
    )
    return solution.ys, solution.result
