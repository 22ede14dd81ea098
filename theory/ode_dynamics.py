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
"""
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from theory import linalg, output_axes, spectral
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
      is returned, and `fx_test_0` must be inside it). Returns like
      `gradient_descent_mse`'s `predict_fn`, with leading axes `t.shape`.

    Raises:
      ValueError: `t=None` or infinite (integrate to finite times), momentum
        outside [0, 1), momentum state without momentum, shape mismatches.
    """
    layout = output_axes.output_layout(y_train, trace_axes)
    n_train = layout.y_shape[0]
    k2d = output_axes.kernel_2d(layout, "k_train_train", k_train_train, n_train, n_train)
    linalg.check_finite("k_train_train", k2d)
    linalg.check_finite("y_train", y_train)
    value = np.asarray(learning_rate)
    if value.ndim or not np.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a finite positive scalar, got {learning_rate!r}.")
    if momentum is not None and not 0 <= momentum < 1:
        raise ValueError(f"momentum must be None or in [0, 1), got {momentum!r}.")
    dtype = result_dtype(k_train_train)
    time_scale = float(value) if momentum is None else float(np.sqrt(value))
    friction = None if momentum is None else (1.0 - momentum) / float(np.sqrt(value))
    import diffrax  # imported on first use: `import theory` stays light

    controls = dict(loss=loss, layout=layout, solver=diffrax.Tsit5() if solver is None else solver,
                    rtol=rtol, atol=atol, max_steps=max_steps)

    def predict_fn(t=None, fx_train_or_state_0=0.0, fx_test_0=None, k_test_train=None):
        if t is None:
            raise ValueError("gradient_descent integrates to finite times: pass t (t=None would mean infinity).")
        times = spectral.as_times("t", t)
        if np.any(np.isinf(times)):
            raise ValueError(f"gradient_descent integrates to finite times, got t={t!r}.")
        as_state = isinstance(fx_train_or_state_0, ODEState)
        if as_state:
            if fx_test_0 is not None:
                raise ValueError("fx_test_0 is part of the ODEState; pass it there and leave fx_test_0=None.")
            state0 = fx_train_or_state_0
            if momentum is None and (state0.qx_train is not None or state0.qx_test is not None):
                raise ValueError("the ODEState holds momentum variables, but momentum is None.")
            fx_train_0, fx_test_0 = state0.fx_train, state0.fx_test
        else:
            state0 = ODEState(fx_train_or_state_0, fx_test_0)
            fx_train_0 = fx_train_or_state_0
        if fx_train_0 is None and fx_test_0 is None and not as_state:
            raise ValueError("fx_train_0 and fx_test_0 are both None: there is nothing to predict.")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("predictions on the test set (fx_test_0 given) need k_test_train.")

        with linalg.float64():
            k = jnp.asarray(k2d, jnp.float64)
            y = jnp.asarray(y_train, jnp.float64)
            f_train = jnp.asarray(0.0 if fx_train_0 is None else fx_train_0, jnp.float64)
            f_train = jnp.broadcast_to(f_train, layout.y_shape)
            k_td = test_shape = None
            f_test = None
            if fx_test_0 is not None:
                k_td = output_axes.kernel_2d(layout, "k_test_train", k_test_train, None, n_train)
                linalg.check_finite("k_test_train", k_td)
                k_td = jnp.asarray(k_td, jnp.float64)
                test_kept = output_axes.rows_shape(layout, k_test_train)
                test_shape = list(layout.y_shape)
                for axis, dim in zip(layout.kept_axes, test_kept):
                    test_shape[axis] = dim
                test_shape = tuple(test_shape)
                f_test = jnp.broadcast_to(jnp.asarray(fx_test_0, jnp.float64), test_shape)
            q_train = q_test = None
            if momentum is not None:
                q_train = jnp.zeros(layout.y_shape) if state0.qx_train is None else jnp.broadcast_to(
                    jnp.asarray(state0.qx_train, jnp.float64), layout.y_shape)
                if f_test is not None:
                    q_test = jnp.zeros(test_shape) if state0.qx_test is None else jnp.broadcast_to(
                        jnp.asarray(state0.qx_test, jnp.float64), test_shape)
            start = ODEState(f_train, f_test, q_train, q_test)
            order = np.argsort(times.reshape(-1), kind="stable")
            ts = jnp.asarray(times.reshape(-1)[order] * time_scale)
            if float(ts[-1]) == 0.0:
                path = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (ts.shape[0],) + x.shape), start)
            else:
                path = _solve(k, k_td, y, friction, start, ts, **controls)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            path = jax.tree_util.tree_map(
                lambda x: finish("ODE solution", x[inverse].reshape(times.shape + x.shape[1:]), dtype), path
            )
        if as_state:
            return path
        if fx_train_0 is not None and fx_test_0 is None:
            return path.fx_train
        if fx_train_0 is None:
            return path.fx_test
        return path.fx_train, path.fx_test

    return predict_fn


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
    )
    return solution.ys
