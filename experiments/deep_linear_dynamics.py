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

Pieces: one per initial strength u0 in `u0s` (each a full training run).
"""
import dataclasses

import matplotlib.figure
import numpy as np

from theory.deep_linear import mode_strength


@dataclasses.dataclass(frozen=True)
class Config:
    spectrum: tuple = (3.0, 2.0, 1.0, 0.5)
    u0s: tuple = (1e-3,)
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
        return cls(spectrum=(3.0, 1.5, 0.75), u0s=(1e-3,), lr=2e-3, t_max=10.0, n_records=100)

    @classmethod
    def small(cls):
        return cls(spectrum=(3.0, 2.0, 1.0, 0.5), u0s=(1e-3, 1e-2), lr=1e-3, t_max=14.0)

    @classmethod
    def paper(cls):
        return cls(spectrum=(4.0, 3.0, 2.0, 1.0, 0.5, 0.25), u0s=(1e-4, 1e-3, 1e-2),
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
    return [(float(u0),) for u0 in config.u0s]


def run_piece(config, piece):
    (u0,) = piece
    x, y, u, s, v, rng = problem(config, 0)
    o = _orthonormal(rng, config.n_hidden, len(s))
    a0 = np.sqrt(u0)
    w21 = a0 * o @ v.T                      # (n_hidden, n_in)
    w32 = a0 * u @ o.T                      # (n_out, n_hidden)
    p = x.shape[1]
    steps = int(round(config.t_max / config.lr))
    record_at = np.unique(np.linspace(0, steps, config.n_records).round().astype(int))
    strengths, coupling, k = [], 0.0, 0
    for step in range(steps + 1):
        if step == record_at[k]:
            m = u.T @ w32 @ w21 @ v
            strengths.append(np.diag(m).copy())
            coupling = max(coupling, np.max(np.abs(m - np.diag(np.diag(m)))))
            k += 1
            if k == len(record_at):
                break
        err = (y - w32 @ (w21 @ x)) / p     # (n_out, P)
        g32 = err @ (w21 @ x).T             # -dL/dW32
        g21 = w32.T @ err @ x.T             # -dL/dW21
        w32 = w32 + config.lr * g32
        w21 = w21 + config.lr * g21
    times = record_at * config.lr
    measured = np.array(strengths)          # (records, modes)
    theory = mode_strength(times[:, None], s[None, :], u0, tau=1.0)
    return {"u0": u0, "times": times, "measured": measured, "theory": theory,
            "max_coupling": coupling}


def summarize(config, results):
    s = np.asarray(config.spectrum)
    rel = [np.abs(r["measured"] / r["theory"] - 1) for r in results]
    absn = [np.abs(r["measured"] - r["theory"]) / s for r in results]
    return {
        "spectrum": s, "u0s": np.array([r["u0"] for r in results]), "lr": config.lr,
        "times": results[0]["times"],
        "measured": np.array([r["measured"] for r in results]),
        "theory": np.array([r["theory"] for r in results]),
        "max_rel_error": float(max(e.max() for e in rel)),
        "max_rel_error_per_mode": np.max([e.max(axis=0) for e in rel], axis=0),
        "max_abs_error_over_s": float(max(e.max() for e in absn)),
        "max_coupling": float(max(float(r["max_coupling"]) for r in results)),
    }


def plot(results):
    figure = matplotlib.figure.Figure(figsize=(5.5 * len(results["u0s"]), 4))
    fine = np.linspace(0, results["times"][-1], 400)
    for j, u0 in enumerate(results["u0s"]):
        axes = figure.add_subplot(1, len(results["u0s"]), j + 1)
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
    return {"max_rel_error": results["max_rel_error"],
            "max_abs_error_over_s": results["max_abs_error_over_s"],
            "max_offdiagonal_coupling": results["max_coupling"],
            "criterion": "max_t,modes |u/u_theory - 1| < 0.02 (Saxe et al. 2013)"}
