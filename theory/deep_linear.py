"""Exact learning dynamics of a three-layer (one hidden layer) linear network.

Saxe, McClelland & Ganguli 2013, "Exact solutions to the nonlinear dynamics of
learning in deep linear neural networks" (arXiv:1312.6120), §1.

Setting. A network y_hat = W32 W21 x is trained by full-batch gradient flow on
the squared error with whitened inputs (Sigma11 = E[x x^T] = I):

    tau dW21/dt = W32^T (Sigma31 - W32 W21),
    tau dW32/dt = (Sigma31 - W32 W21) W21^T,

where Sigma31 = E[y x^T] = U S V^T (singular values s_alpha). From a
*decoupled* initial condition (W21 = O diag(a) V^T, W32 = U diag(b) O^T with O
orthogonal) every mode evolves on its own: tau da/dt = b (s - a b),
tau db/dt = a (s - a b). A *balanced* mode (a = b > 0) keeps a = b, so its
strength u = a b obeys the logistic equation

    tau du/dt = 2 u (s - u),

whose solution is Saxe et al.'s sigmoidal learning curve

    u(t) = s e^{2 s t / tau} / (e^{2 s t / tau} - 1 + s / u0),

and the time to go from u0 to uf is

    t(u0 -> uf) = tau / (2 s) ln[ uf (s - u0) / (u0 (s - uf)) ].

Both are evaluated here in forms that neither overflow for large t nor
divide by zero at s = 0 (where tau du/dt = -2 u^2, u = u0 / (1 + 2 u0 t / tau)).
"""
import numpy as np

from theory import arguments

__all__ = ["mode_strength", "learning_time"]


def _check(where, name, value, *, positive=False):
    return arguments.real_values(where, name, value, low=0, low_open=positive)


def _unbox(x):
    return x[()] if x.ndim == 0 else x


def mode_strength(t, s, u0, tau=1.0):
    """Strength of one input-output mode of a three-layer linear network.

    Saxe, McClelland & Ganguli 2013, §1 (the sigmoidal solution of the
    decoupled, balanced mode dynamics, tau du/dt = 2 u (s - u)):

        u(t) = s e^{2 s t / tau} / (e^{2 s t / tau} - 1 + s / u0).

    Computed as u0 / (u0 (1 - e^{-x}) / s + e^{-x}), x = 2 s t / tau, which is
    the same expression, stays finite for t -> inf (u -> s) and has the right
    limit u0 / (1 + 2 u0 t / tau) at s = 0.

    Args:
      t: times >= 0 (any shape; np.inf allowed).
      s: singular values >= 0 of the input-output correlation Sigma31.
      u0: initial mode strengths > 0 (u0 = a0 * b0 with a0 = b0: balanced).
      tau: time constant > 0 (1 / learning rate for gradient descent with
        one step per unit time).

    Returns:
      u(t), float64 array of the broadcast shape of t, s and u0 (a float for
      scalar arguments).

    Raises:
      ValueError: negative or non-finite t or s, u0 <= 0, tau <= 0.
    """
    where = "mode_strength"
    t = arguments.times(where, "t", t)
    s = _check(where, "s", s)
    u0 = _check(where, "u0", u0, positive=True)
    tau = arguments.scalar(where, "tau", tau, low=0, low_open=True)
    t, s, u0 = np.broadcast_arrays(t, s, u0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = 2.0 * s * t / tau  # NaN only at s = 0, t = inf, handled below
        decay = np.exp(-x)
        # (1 - e^{-x}) / s, continued to 2 t / tau at s = 0.
        rise = np.where(s > 0, -np.expm1(-x) / np.where(s > 0, s, 1.0), 2.0 * t / tau)
        u = u0 / (u0 * rise + decay)
    # s = 0 and t = inf: u -> 0 (rise -> inf).
    u = np.where(np.isinf(rise), 0.0, u)
    return _unbox(u)


def learning_time(s, u0, uf, tau=1.0):
    """Time for a balanced mode to go from strength u0 to uf.

    Saxe, McClelland & Ganguli 2013, §1 (the inverse of the sigmoidal
    solution):

        t = tau / (2 s) ln[ uf (s - u0) / (u0 (s - uf)) ],

    and, at s = 0, t = tau / 2 (1 / uf - 1 / u0). The mode moves
    monotonically from u0 towards s and never reaches s, so uf must lie in
    [u0, s) when u0 <= s and in (s, u0] when u0 > s.

    Args:
      s: singular values >= 0.
      u0: initial strengths > 0.
      uf: target strengths > 0, between u0 (inclusive) and s (exclusive).
      tau: time constant > 0.

    Returns:
      float64 array of the broadcast shape of s, u0, uf (a float for scalar
      arguments).

    Raises:
      ValueError: an argument out of range, or uf not reachable from u0.
    """
    where = "learning_time"
    s = _check(where, "s", s)
    u0 = _check(where, "u0", u0, positive=True)
    uf = _check(where, "uf", uf, positive=True)
    tau = arguments.scalar(where, "tau", tau, low=0, low_open=True)
    s, u0, uf = np.broadcast_arrays(s, u0, uf)
    rising = (u0 <= uf) & (uf < s)
    falling = (s < uf) & (uf <= u0)
    if not np.all(rising | falling | (uf == u0)):
        raise ValueError(
            "uf is never reached: a mode moves from u0 monotonically towards s "
            f"without reaching it, so uf must lie in [u0, s) or (s, u0]; got "
            f"s={s}, u0={u0}, uf={uf}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.log(uf / u0) + np.log((s - u0) / (s - uf))
        t = np.where(s > 0, tau * ratio / (2.0 * np.where(s > 0, s, 1.0)),
                     0.5 * tau * (1.0 / uf - 1.0 / u0))
    t = np.where(uf == u0, 0.0, t)
    return _unbox(t)
