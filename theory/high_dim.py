"""Generalization dynamics of a linear student in high dimensions.

Advani & Saxe 2017, "High-dimensional dynamics of generalization error in
neural networks" (arXiv:1710.03667), §2–3: the test error of a linear student
trained by gradient flow, as an integral over the Marchenko–Pastur spectrum of
the input covariance.

Conventions (those of widekit issue 6; derivation below in these terms):
  * inputs x ~ N(0, I_N); P = alpha N training examples, X: (P, N);
  * teacher w_bar with i.i.d. entries of variance sigma_w2 / N, labels
    y = w_bar . x + eps with eps ~ N(0, sigma_eps2);
  * student w(0) with i.i.d. entries of variance sigma_w0_2 / N;
  * loss L = (1 / 2P) sum_mu (y_mu - w . x_mu)^2, gradient flow
    tau dw/dt = -grad L: t counts gradient-descent steps of learning rate
    1 / tau, i.e. t is measured in units of tau;
  * E_g = E[(y - w . x)^2] on a fresh example with a noisy label, so
    E_g(0) = sigma_w2 + sigma_w0_2 + sigma_eps2.

Derivation. Let e = w - w_bar and Sigma = X^T X / P = sum_i lambda_i v_i v_i^T.
Then tau de/dt = X^T eps / P - Sigma e, and along v_i,
    e_i(t) = e_i(0) exp(-lambda_i t / tau)
             + (eps_i / lambda_i) (1 - exp(-lambda_i t / tau)),
with eps_i = v_i . X^T eps / P of variance sigma_eps2 lambda_i / P, and
E e_i(0)^2 = (sigma_w2 + sigma_w0_2) / N. A direction with lambda_i = 0 gets
no gradient and no noise: it is frozen at its initial error. Since
E_g = |e|^2 + sigma_eps2, averaging over the N directions with the
Marchenko–Pastur law rho of Sigma (ratio N / P = 1 / alpha) gives
(Advani & Saxe's eq. for E_g(t), in these units)

    E_g(t) = (sigma_w2 + sigma_w0_2) [ (1 - alpha)_+
                                        + int rho(l) exp(-2 l t / tau) dl ]
             + (sigma_eps2 / alpha) int rho(l) (1 - exp(-l t / tau))^2 / l dl
             + sigma_eps2,

where the integrals run over the continuous part of rho, on
[(1 - alpha^{-1/2})^2, (1 + alpha^{-1/2})^2], with density
rho(l) = alpha sqrt((l_+ - l)(l - l_-)) / (2 pi l) and mass min(1, alpha); the
(1 - alpha)_+ term is the frozen subspace (the atom of rho at 0 when
alpha < 1). As t -> inf (using E[1/l] of the Marchenko–Pastur law):
    alpha > 1: E_g = sigma_eps2 alpha / (alpha - 1),
    alpha < 1: E_g = (1 - alpha)(sigma_w2 + sigma_w0_2)
                     + sigma_eps2 / (1 - alpha),
    alpha = 1: E_g = inf if sigma_eps2 > 0,
the overtraining peak at alpha = 1.

Numerics. With l = l_- + 2 h sin^2(theta / 2), h = (l_+ - l_-) / 2, the
density's square-root edges cancel against the Jacobian,
rho(l) dl = alpha h^2 sin^2(theta) / (2 pi l) dtheta, which is smooth on
[0, pi] even at alpha = 1. The theta integral is done by Gauss–Legendre on
panels refined geometrically towards theta = 0 (the lower spectral edge, where
the integrand concentrates at late times), accurate to ~1e-12 relative for
any t.
"""
import numpy as np

from theory import arguments

__all__ = ["generalization_error", "marchenko_pastur_density"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)
# Panel breakpoints on [0, pi]: pi * 2^-k for k = 60..1, then pi / 2 .. pi.
_BREAKS = np.concatenate([[0.0], np.pi * 2.0 ** -np.arange(60, 0, -1.0), [np.pi]])


def _theta_rule():
    lo, hi = _BREAKS[:-1, None], _BREAKS[1:, None]
    theta = (0.5 * (hi - lo) * _GL_NODES + 0.5 * (hi + lo)).ravel()
    weight = (0.5 * (hi - lo) * _GL_WEIGHTS).ravel()
    return theta, weight


_THETA, _THETA_WEIGHT = _theta_rule()


def _edges(alpha):
    r = alpha ** -0.5
    return (1.0 - r) ** 2, (1.0 + r) ** 2


def marchenko_pastur_density(lam, alpha):
    """Continuous part of the Marchenko–Pastur law of X^T X / P, X: (P, N).

    Marchenko & Pastur 1967, with ratio N / P = 1 / alpha (Advani & Saxe
    2017, the spectrum rho^MP of their input correlation matrix):

        rho(l) = alpha sqrt((l_+ - l)(l - l_-)) / (2 pi l),
        l_+- = (1 +- alpha^{-1/2})^2,

    of total mass min(1, alpha); for alpha < 1 the remaining mass 1 - alpha
    is an atom at l = 0 (not included here).

    Args:
      lam: eigenvalues (any shape).
      alpha: P / N > 0.

    Returns:
      float64 array of lam's shape; 0 outside [l_-, l_+].
    """
    alpha = arguments.scalar("marchenko_pastur_density", "alpha", alpha, low=0, low_open=True)
    lam = arguments.real_values("marchenko_pastur_density", "lam", lam, allow_inf=True)
    lo, hi = _edges(alpha)
    inside = (lam > lo) & (lam < hi) & (lam > 0)
    safe = np.where(inside, lam, 1.0)
    out = alpha * np.sqrt(np.clip((hi - safe) * (safe - lo), 0.0, None)) / (2 * np.pi * safe)
    return np.where(inside, out, 0.0)


def generalization_error(t, alpha, sigma_w2=1.0, sigma_w0_2=0.0, sigma_eps2=0.0, tau=1.0):
    """Test error of a gradient-flow linear student at times t.

    Advani & Saxe 2017, §2–3 (E_g(t) as a Marchenko–Pastur integral, with the
    frozen subspace for alpha < 1 and the t -> inf limits); the module
    docstring gives the formula in widekit's conventions and its derivation.

    Args:
      t: times >= 0 in units of tau (any shape; np.inf gives the closed-form
        asymptote).
      alpha: P / N > 0, examples per input dimension.
      sigma_w2: teacher weight variance times N (signal power), >= 0.
      sigma_w0_2: initial student weight variance times N, >= 0.
      sigma_eps2: label-noise variance, >= 0 (also on the test label).
      tau: time constant > 0 (1 / learning rate).

    Returns:
      E_g(t), float64 array of t's shape (a float for scalar t); inf at
      t = inf, alpha = 1, sigma_eps2 > 0.

    Raises:
      ValueError: negative or NaN t, alpha <= 0, negative variances, tau <= 0.
    """
    where = "generalization_error"
    t = arguments.times(where, "t", t)
    alpha = arguments.scalar(where, "alpha", alpha, low=0, low_open=True)
    sigma_w2 = arguments.scalar(where, "sigma_w2", sigma_w2, low=0)
    sigma_w0_2 = arguments.scalar(where, "sigma_w0_2", sigma_w0_2, low=0)
    sigma_eps2 = arguments.scalar(where, "sigma_eps2", sigma_eps2, low=0)
    tau = arguments.scalar(where, "tau", tau, low=0, low_open=True)

    lo, hi = _edges(alpha)
    h = 0.5 * (hi - lo)
    lam = lo + 2.0 * h * np.sin(0.5 * _THETA) ** 2                       # (Q,)
    measure = _THETA_WEIGHT * alpha * h ** 2 * np.sin(_THETA) ** 2 / (2 * np.pi * lam)

    finite = np.isfinite(t)
    x = np.where(finite, t, 0.0).reshape(-1, 1) / tau * lam               # (T, Q)
    initial = np.exp(-2.0 * x) @ measure                                  # int rho e^{-2 l t}
    noise = np.expm1(-x) ** 2 @ (measure / lam)                           # int rho (1-e^{-l t})^2 / l
    signal = sigma_w2 + sigma_w0_2
    frozen = max(1.0 - alpha, 0.0)
    err = signal * (frozen + initial) + sigma_eps2 / alpha * noise + sigma_eps2

    if not np.all(finite):
        if alpha > 1:
            late = sigma_eps2 * alpha / (alpha - 1.0)
        elif alpha < 1:
            late = frozen * signal + sigma_eps2 / (1.0 - alpha)
        else:
            late = np.inf if sigma_eps2 > 0 else 0.0
        err = np.where(finite.ravel(), err, late)
    return err.reshape(t.shape)[()] if t.ndim == 0 else err.reshape(t.shape)
