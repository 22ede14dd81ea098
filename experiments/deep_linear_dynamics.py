"""deep-linear-dynamics: mode strengths of a gradient-descent three-layer linear network against Saxe et al.'s sigmoids.

Saxe, McClelland & Ganguli 2013 (arXiv:1312.6120, §1), through
`theory.deep_linear.mode_strength`.

Setting. P inputs x in R^{n_in}, exactly whitened: X (n_in, P) has
X X^T / P = I (rows of a random orthogonal matrix scaled by sqrt(P)). Targets
y = Sigma31 x with Sigma31 = U diag(s) V^T (U, V random orthonormal columns,
`spectrum` = s, the chosen singular values), so Y X^T / P = Sigma31 exactly.
The network y_hat = W32 W21 x (hidden width `n_hidden`) is trained by
full-batch gradient descent on L = (1 / 2P) sum_mu |y_mu - W32 W21 x_mu|^2
with learning rate `lr`; the gradient is computed from the data, not from
Sigma31. Time t = step * lr (tau = 1 / lr in theory's units).

Initialization: balanced and decoupled, W21 = O diag(a0) V^T and
W32 = U diag(a0) O^T with O (n_hidden, rank) random orthonormal columns and
a0 = sqrt(u0) for every mode, so every mode starts at strength u0.

Measured: the mode strength u_alpha(t) = U[:, alpha]^T W32 W21 V[:, alpha]
at every recorded step. Theory: mode_strength(t, s_alpha, u0) (gradient flow).

Agreement (what is compared, precisely): over every recorded time from t = 0
to t_max and every mode, `max_rel_error` = max |u_meas / u_theory - 1|
(pointwise relative deviation from the curve) and `max_abs_error_over_s` =
max |u_meas - u_theory| / s_alpha. No initial transient is excluded: under an
exactly balanced, decoupled initialization the modes follow their own
logistic dynamics from step 0, and the only deviation is gradient descent's
finite step (O(lr s) per unit time; the pointwise error grows through the
exponential phase to about lr s ln(s / u0) / 2 and then shrinks as u -> s).
The test asserts `max_rel_error` < 0.02 at the tiny size. The off-diagonal
mode couplings max |U^T W32 W21 V - diag(u)| are reported too (zero up to
round-off when decoupling holds).

Reported, not asserted: runs from small i.i.d. Gaussian weights (not
decoupled, not balanced; `random_u0s` sets their scale), where the modes
first align with the SVD of Sigma31 (the transient). For each mode the theory
is restarted at t*, the first recorded time with u >= `transient_fraction` s,
from the measured u(t*): mode_strength(t - t*, s, u(t*)) for t >= t*, and
`random_init_max_abs_error_over_s_after_transient` = max over t >= t* and
modes of |u - theory| / s.

Pieces: ("balanced", u0) for u0 in `u0s` and ("random", u0) for u0 in
`random_u0s`, each a full training run.
"""
import dataclasses

import matplotlib.figure
import numpy as np

from theory.deep_linear import mode_strength


@dataclasses.dataclass(frozen=True)
class Config:
    spectrum: tuple = (3.0, 2.0, 1.0, 0.5)
    u0s: tuple = (1e-3,)
    random_u0s: tuple = ()
    transient_fraction: float = 0.05
    n_in: int = 8
    n_hidden: int = 16
    n_out: int = 6
    n_samples: int = 32
    lr: float = 1e-3
    t_max: float = 12.0
    n_records: int = 200
    seed: int = 0

    @classmethod
    def tiny(cls):
        return cls(spectrum=(3.0, 1.5, 0.75), u0s=(1e-3,), random_u0s=(1e-3,), lr=2e-3, t_max=10.0,
                   n_records=100)

    @classmethod
    def small(cls):
        return cls(spectrum=(3.0, 2.0, 1.0, 0.5), u0s=(1e-3, 1e-2), random_u0s=(1e-3,), lr=1e-3,
                   t_max=14.0)

    @classmethod
    def paper(cls):
        return cls(spectrum=(4.0, 3.0, 2.0, 1.0, 0.5, 0.25), u0s=(1e-4, 1e-3, 1e-2),
                   random_u0s=(1e-4, 1e-3),
                   n_in=32, n_hidden=64, n_out=24, n_samples=128, lr=2e-4, t_max=30.0,
                   n_records=400)


def _orthonormal(rng, rows, cols):
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def problem(config, seed_index=0):
    """Whitened inputs X, targets Y, and U, s, V of Sigma31 = Y X^T / P."""
    rank = len(config.spectrum)
    if rank > min(config.n_in, config.n_out, config.n_hidden) or config.n_samples < config.n_in:
        raise ValueError("need len(spectrum) <= n_in, n_out, n_hidden and n_samples >= n_in")
    rng = np.random.default_rng([config.seed, seed_index])
    x = _orthonormal(rng, config.n_samples, config.n_in).T * np.sqrt(config.n_samples)
    u = _orthonormal(rng, config.n_out, rank)
    v = _orthonormal(rng, config.n_in, rank)
    s = np.asarray(config.spectrum, dtype=np.float64)
    y = (u * s) @ v.T @ x
    return x, y, u, s, v, rng


def pieces(config):
    return ([("balanced", float(u0)) for u0 in config.u0s]
            + [("random", float(u0)) for u0 in config.random_u0s])


def _train(config, x, y, u, v, w21, w32):
    """Gradient descent; the mode-strength matrix U^T W32 W21 V at the recorded steps."""
    p = x.shape[1]
    steps = int(round(config.t_max / config.lr))
    record_at = np.unique(np.linspace(0, steps, config.n_records).round().astype(int))
    overlaps, k = [], 0
    for step in range(steps + 1):
        if step == record_at[k]:
            overlaps.append(u.T @ w32 @ w21 @ v)
            k += 1
            if k == len(record_at):
                break
        err = (y - w32 @ (w21 @ x)) / p     # (n_out, P)
        g32 = err @ (w21 @ x).T             # -dL/dW32
        g21 = w32.T @ err @ x.T             # -dL/dW21
        w32 = w32 + config.lr * g32
        w21 = w21 + config.lr * g21
    return record_at * config.lr, np.array(overlaps)


def after_transient(times, measured, s, fraction):
    """Theory restarted where each mode first reaches `fraction` * s.

    For mode a with t*_a the first recorded time with u_a >= fraction s_a:
    mode_strength(t - t*_a, s_a, u_a(t*_a)) for t >= t*_a, NaN before.
    """
    theory = np.full_like(measured, np.nan)
    for a, s_a in enumerate(s):
        hit = np.flatnonzero(measured[:, a] >= fraction * s_a)
        if hit.size:
            i = hit[0]
            theory[i:, a] = mode_strength(times[i:] - times[i], s_a, measured[i, a])
    return theory


def run_piece(config, piece):
    kind, u0 = piece
    x, y, u, s, v, rng = problem(config, 0)
    if kind == "balanced":
        o = _orthonormal(rng, config.n_hidden, len(s))
        a0 = np.sqrt(u0)
        w21 = a0 * o @ v.T                  # (n_hidden, n_in)
        w32 = a0 * u @ o.T                  # (n_out, n_hidden)
    else:
        # small i.i.d. Gaussian weights, scaled so that E|W32 W21|_F^2 per mode ~ u0^2
        sigma = np.sqrt(u0 / np.sqrt(config.n_hidden))
        w21 = sigma * rng.standard_normal((config.n_hidden, config.n_in))
        w32 = sigma * rng.standard_normal((config.n_out, config.n_hidden))
    times, m = _train(config, x, y, u, v, w21, w32)
    measured = np.stack([np.diagonal(mi) for mi in m])              # (records, modes)
    off = np.max(np.abs(m - np.stack([np.diag(np.diagonal(mi)) for mi in m])))
    if kind == "balanced":
        theory = mode_strength(times[:, None], s[None, :], u0, tau=1.0)
    else:
        theory = after_transient(times, measured, s, config.transient_fraction)
    return {"random": float(kind == "random"), "u0": u0, "times": times, "measured": measured,
            "theory": theory, "max_coupling": off}


def summarize(config, results):
    s = np.asarray(config.spectrum)
    balanced = [r for r in results if not r["random"]]
    rel = [np.abs(r["measured"] / r["theory"] - 1) for r in balanced]
    absn = [np.abs(r["measured"] - r["theory"]) / s for r in balanced]
    out = {
        "spectrum": s, "u0s": np.array([r["u0"] for r in balanced]), "lr": config.lr,
        "times": results[0]["times"],
        "measured": np.array([r["measured"] for r in balanced]),
        "theory": np.array([r["theory"] for r in balanced]),
        "max_rel_error": float(max(e.max() for e in rel)),
        "max_rel_error_per_mode": np.max([e.max(axis=0) for e in rel], axis=0),
        "max_abs_error_over_s": float(max(e.max() for e in absn)),
        "max_coupling": float(max(float(r["max_coupling"]) for r in balanced)),
        "transient_fraction": config.transient_fraction,
        "random_u0s": np.array([r["u0"] for r in results if r["random"]]),
        "random_measured": np.array([r["measured"] for r in results if r["random"]]),
        "random_theory": np.array([r["theory"] for r in results if r["random"]]),
    }
    if len(out["random_u0s"]):
        dev = np.abs(out["random_measured"] - out["random_theory"]) / s
        out["random_max_abs_error_over_s_after_transient"] = float(np.nanmax(dev))
    return out


def plot(results):
    panels = len(results["u0s"]) + len(results.get("random_u0s", []))
    figure = matplotlib.figure.Figure(figsize=(5.5 * panels, 4))
    fine = np.linspace(0, results["times"][-1], 400)
    for j, u0 in enumerate(results["random_u0s"]):
        axes = figure.add_subplot(1, panels, len(results["u0s"]) + j + 1)
        measured = np.asarray(results["random_measured"][j])
        theory = np.asarray(results["random_theory"][j], dtype=float)
        for i, s in enumerate(results["spectrum"]):
            line, = axes.plot(results["times"], theory[:, i], lw=1.5,
                              label=f"theory from u = {results['transient_fraction']:g} s, s={s:g}")
            axes.plot(results["times"][::4], measured[::4, i], "o", ms=3, color=line.get_color(),
                      label="gradient descent" if i == 0 else None)
        axes.set(xlabel="t = step x lr", ylabel="mode strength u(t)",
                 title=f"random small init (u0 ~ {u0:g}): max |u - theory|/s = "
                       f"{results['random_max_abs_error_over_s_after_transient']:.1%} after transient")
        axes.title.set_fontsize(9)
        axes.legend(fontsize=7)
    for j, u0 in enumerate(results["u0s"]):
        axes = figure.add_subplot(1, panels, j + 1)
        measured = np.asarray(results["measured"][j])
        for i, s in enumerate(results["spectrum"]):
            line, = axes.plot(fine, mode_strength(fine, s, u0), lw=1.5, label=f"theory s={s:g}")
            axes.plot(results["times"][::4], measured[::4, i], "o", ms=3, color=line.get_color(),
                      label="gradient descent" if i == 0 else None)
        axes.set(xlabel="t = step x lr", ylabel="mode strength u(t)",
                 title=f"3-layer linear net, balanced init u0={u0:g}, lr={results['lr']:g}")
        axes.legend(fontsize=7)
    figure.suptitle(f"max |u/u_theory - 1| = {results['max_rel_error']:.2%} over all t and modes",
                    fontsize=9)
    figure.tight_layout()
    return figure


def agreement(results):
    out = {"max_rel_error": results["max_rel_error"],
           "max_abs_error_over_s": results["max_abs_error_over_s"],
           "max_offdiagonal_coupling": results["max_coupling"]}
    if "random_max_abs_error_over_s_after_transient" in results:
        out["random_init_max_abs_error_over_s_after_transient"] = (
            results["random_max_abs_error_over_s_after_transient"])
    return {**out,
            "criterion": "max_t,modes |u/u_theory - 1| < 0.02 (Saxe et al. 2013)"}
