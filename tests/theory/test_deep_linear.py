"""theory.deep_linear against direct integration of the full matrix ODE.

The reference integrates the gradient flow of all weights of a three-layer
linear network (Saxe et al. 2013, §1) with scipy's solve_ivp, from a balanced,
decoupled initialization rotated by a random orthogonal hidden basis, and
reads the mode strengths u_alpha = U[:, alpha]^T W32 W21 V[:, alpha].
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.stats import ortho_group

from theory.deep_linear import learning_time, mode_strength

N_IN, N_HIDDEN, N_OUT = 4, 5, 4
SINGULAR_VALUES = np.array([3.0, 1.5, 0.5, 0.0])
U0 = np.array([1e-3, 2e-2, 0.8, 0.3])  # includes u0 > s (a decaying mode)


def _network(seed):
    rng = np.random.default_rng(seed)
    u = ortho_group.rvs(N_OUT, random_state=rng)
    v = ortho_group.rvs(N_IN, random_state=rng)
    hidden = ortho_group.rvs(N_HIDDEN, random_state=rng)[:, :N_IN]
    sigma31 = u @ np.diag(SINGULAR_VALUES) @ v.T
    a0 = np.sqrt(U0)
    w21 = hidden @ np.diag(a0) @ v.T              # (N_HIDDEN, N_IN)
    w32 = u @ np.diag(a0) @ hidden.T              # (N_OUT, N_HIDDEN)
    return u, v, sigma31, w21, w32


def _flow(sigma31, tau):
    def rhs(_, w):
        w21 = w[:N_HIDDEN * N_IN].reshape(N_HIDDEN, N_IN)
        w32 = w[N_HIDDEN * N_IN:].reshape(N_OUT, N_HIDDEN)
        err = sigma31 - w32 @ w21                 # whitened inputs: Sigma11 = I
        return np.concatenate([(w32.T @ err).ravel(), (err @ w21.T).ravel()]) / tau
    return rhs


def _modes(w, u, v):
    w21 = w[:N_HIDDEN * N_IN].reshape(N_HIDDEN, N_IN)
    w32 = w[N_HIDDEN * N_IN:].reshape(N_OUT, N_HIDDEN)
    return np.diag(u.T @ w32 @ w21 @ v)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_mode_strength_matches_matrix_ode(tau):
    u, v, sigma31, w21, w32 = _network(seed=0)
    times = np.linspace(0.0, 8.0 * tau, 41)
    sol = solve_ivp(_flow(sigma31, tau), (0.0, times[-1]),
                    np.concatenate([w21.ravel(), w32.ravel()]),
                    t_eval=times, method="DOP853", rtol=1e-11, atol=1e-13)
    assert sol.success
    measured = np.stack([_modes(sol.y[:, i], u, v) for i in range(len(times))])
    predicted = mode_strength(times[:, None], SINGULAR_VALUES, U0, tau=tau)
    assert predicted.shape == (len(times), N_IN)
    np.testing.assert_allclose(predicted, measured, rtol=1e-7, atol=1e-10)
    # The modes learn in order of their singular value and saturate at s.
    assert np.allclose(predicted[-1, :2], SINGULAR_VALUES[:2], rtol=1e-3)


def test_learning_time_matches_ode_crossing():
    tau = 1.3
    u, v, sigma31, w21, w32 = _network(seed=1)
    targets = np.array([0.9 * 3.0, 0.5 * 1.5, 0.6, 0.1])  # two rising, two falling modes

    def crossing(alpha):
        event = lambda _, w: _modes(w, u, v)[alpha] - targets[alpha]
        event.terminal = True
        return event

    expected = learning_time(SINGULAR_VALUES, U0, targets, tau=tau)
    for alpha in range(N_IN):
        sol = solve_ivp(_flow(sigma31, tau), (0.0, 100.0),
                        np.concatenate([w21.ravel(), w32.ravel()]),
                        events=crossing(alpha), method="DOP853", rtol=1e-11, atol=1e-13)
        (t_cross,) = sol.t_events[0]
        np.testing.assert_allclose(expected[alpha], t_cross, rtol=1e-7)


def test_limits_and_inverse():
    assert mode_strength(0.0, 2.0, 0.1) == pytest.approx(0.1)
    assert mode_strength(np.inf, 2.0, 0.1) == pytest.approx(2.0)
    assert mode_strength(np.inf, 0.0, 0.1) == 0.0
    # Large times stay finite (the naive formula overflows to inf / inf).
    assert mode_strength(1e6, 5.0, 1e-3) == pytest.approx(5.0)
    t = learning_time(2.0, 1e-4, np.array([1e-3, 0.5, 1.9]), tau=0.7)
    np.testing.assert_allclose(mode_strength(t, 2.0, 1e-4, tau=0.7), [1e-3, 0.5, 1.9], rtol=1e-10)
    assert learning_time(1.0, 0.3, 0.3) == 0.0
    assert isinstance(mode_strength(1.0, 1.0, 0.5), float)


@pytest.mark.parametrize("kwargs, match", [
    (dict(t=-1.0, s=1.0, u0=0.1), "`t` must be"),
    (dict(t=1.0, s=-1.0, u0=0.1), "s "),
    (dict(t=1.0, s=1.0, u0=0.0), "u0"),
    (dict(t=1.0, s=1.0, u0=0.1, tau=0.0), "tau"),
])
def test_mode_strength_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mode_strength(**kwargs)


def test_learning_time_rejects_unreachable_targets():
    with pytest.raises(ValueError, match="never reached"):
        learning_time(1.0, 0.1, 1.0)          # s itself is reached only at t = inf
    with pytest.raises(ValueError, match="never reached"):
        learning_time(1.0, 0.1, 0.05)         # a rising mode never goes down
    with pytest.raises(ValueError, match="uf"):
        learning_time(1.0, 0.1, -0.5)
