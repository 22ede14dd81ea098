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

Theory from the initial overlap alone (Saxe et al. 2013, eq. 6 for u(t) and
the time t(u0 -> uf) = tau / (2 s) ln[uf (s - u0) / (u0 (s - uf))] below it),
through `theory.deep_linear.mode_strength` and `learning_time`, called in
`summarize` with the measured t = 0 weights and tau = 1 (t counts steps x lr).
For a balanced, decoupled start u0 is the set strength. For small i.i.d.
Gaussian weights (`random_u0s` sets their scale; neither decoupled nor
balanced) mode a starts with hidden-space vectors a0 = W21 V[:, a] and
b0 = W32^T U[:, a]; in the early linear phase a + b grows as e^{s t} and
a - b decays as e^{-s t}, so the mode behaves as a balanced one from the
effective initial overlap u0_eff = |a0 + b0|^2 / 4, which fixes its
plateau length t_half = learning_time(s, u0_eff, s / 2) and its sigmoid
mode_strength(t, s, u0_eff) with nothing taken from later times.

Agreement (deterministic comparisons; the only deviation of a balanced run is
gradient descent's finite step, O(lr s) per unit time):
  * balanced_max_abs_error_over_s: max over every recorded t (from 0), mode
    and u0 of |u - u_theory| / s, within 1%;
  * balanced_plateau_time: max over modes and u0 of |t_half / t_half_theory - 1|
    (t_half: when u first reaches s / 2, interpolated), within 0.5%;
  * random_init_plateau_time and random_init_max_abs_error_over_s: the same from
    u0_eff, within 6% and 8% (cross-mode couplings and the decaying a - b part of the
    random start are what the decoupled theory leaves out).
The off-diagonal mode couplings of the balanced runs are reported.

Pieces: ("balanced", u0) for u0 in `u0s` and ("random", u0) for u0 in
`random_u0s`, each a full training run.
"""
import dataclasses

import matplotlib.figure
import numpy as np

from experiments import agreement as agree
from theory import deep_linear


@dataclasses.dataclass(frozen=True)
class Config:
    spectrum: tuple = (3.0, 2.0, 1.0, 0.5)
    u0s: tuple = (1e-3,)
    random_u0s: tuple = ()
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
    a0, b0 = w21 @ v, w32.T @ u            # (n_hidden, modes): each mode's hidden-space vectors at t = 0
    times, m = _train(config, x, y, u, v, w21, w32)
    measured = np.stack([np.diagonal(mi) for mi in m])              # (records, modes)
    off = np.max(np.abs(m - np.stack([np.diag(np.diagonal(mi)) for mi in m])))
    return {"random": float(kind == "random"), "u0": u0, "times": times, "measured": measured,
            "u0_eff": np.sum((a0 + b0) ** 2, axis=0) / 4, "max_coupling": off}


def plateau_times(times, measured, s):
    """For each mode, the time u first reaches s / 2 (linear interpolation between records; NaN if never)."""
    out = np.full(len(s), np.nan)
    for a, s_a in enumerate(s):
        hit = np.flatnonzero(measured[:, a] >= s_a / 2)
        if hit.size and hit[0] > 0:
            i = hit[0]
            f = (s_a / 2 - measured[i - 1, a]) / (measured[i, a] - measured[i - 1, a])
            out[a] = times[i - 1] + f * (times[i] - times[i - 1])
    return out


def summarize(config, results):
    s = np.asarray(config.spectrum, np.float64)
    times = np.asarray(results[0]["times"])
    out = {"spectrum": s, "lr": config.lr, "times": times}
    for prefix, random in (("", 0.0), ("random_", 1.0)):
        runs = [r for r in results if float(r["random"]) == random]
        # the initial overlap: the set u0 (balanced) or |a0 + b0|^2 / 4 (random), nothing later
        u0 = np.array([np.full(len(s), float(r["u0"])) if not random else np.asarray(r["u0_eff"])
                       for r in runs]).reshape(len(runs), len(s))
        measured = np.array([r["measured"] for r in runs]).reshape(len(runs), len(times), len(s))
        theory = np.array([deep_linear.mode_strength(times[:, None], s[None, :], u0_i[None, :], tau=1.0)
                           for u0_i in u0]).reshape(measured.shape)
        t_meas = np.array([plateau_times(times, m, s) for m in measured]).reshape(len(runs), len(s))
        t_theory = np.array([deep_linear.learning_time(s, u0_i, s / 2, tau=1.0) for u0_i in u0]
                            ).reshape(t_meas.shape)
        out.update({prefix + "u0s": np.array([float(r["u0"]) for r in runs]), prefix + "u0_initial": u0,
                    prefix + "measured": measured, prefix + "theory": theory,
                    prefix + "plateau_time": t_meas, prefix + "plateau_time_theory": t_theory})
        if runs:
            out[prefix + "max_abs_error_over_s"] = float(np.max(np.abs(measured - theory) / s))
            out[prefix + "plateau_rel_error"] = float(np.max(np.abs(t_meas / t_theory - 1)))
    out["max_coupling"] = float(max(float(r["max_coupling"]) for r in results if not float(r["random"])))
    return out


def plot(results):
    runs = [("", j) for j in range(len(results["u0s"]))] + [("random_", j) for j in range(len(results["random_u0s"]))]
    figure = matplotlib.figure.Figure(figsize=(5.5 * len(runs), 4.6))
    times = np.asarray(results["times"])
    for k, (prefix, j) in enumerate(runs):
        axes = figure.add_subplot(1, len(runs), k + 1)
        measured = np.asarray(results[prefix + "measured"][j])
        theory = np.asarray(results[prefix + "theory"][j])
        for i, s in enumerate(results["spectrum"]):
            line, = axes.plot(times, theory[:, i], lw=1.5, label=f"theory, s={s:g}")
            axes.plot(times[::4], measured[::4, i], "o", ms=3, color=line.get_color(),
                      label="gradient descent" if i == 0 else None)
            axes.axvline(results[prefix + "plateau_time_theory"][j][i], color=line.get_color(), ls=":", lw=1)
        what = (f"balanced init u0={results['u0s'][j]:g}" if not prefix else
                f"random init (scale {results['random_u0s'][j]:g}), u0 = |a0+b0|^2/4")
        axes.set(xlabel="t = step x lr", ylabel="mode strength u(t)", title=what)
        axes.title.set_fontsize(10)
        axes.tick_params(labelsize=9)
        axes.legend(fontsize=8)
    figure.suptitle("lines: Saxe et al. from the t = 0 overlap; dotted: predicted t(u = s/2); "
                    "deterministic runs (no error bars: one exact trajectory each)", fontsize=10)
    figure.tight_layout()
    return figure


def agreement(results):
    entries = [
        agree.absolute("balanced_max_abs_error_over_s", results["max_abs_error_over_s"], 0.01,
                       note=" (max over t, modes, u0 of |u - u_theory| / s)"),
        agree.absolute("balanced_plateau_time", results["plateau_rel_error"], 0.005,
                       note=" (max over modes, u0 of |t_half / learning_time - 1|)")]
    if "random_max_abs_error_over_s" in results:
        entries += [
            agree.absolute("random_init_plateau_time", results["random_plateau_rel_error"], 0.06,
                           note=" (from u0_eff = |a0 + b0|^2 / 4 at t = 0)"),
            agree.absolute("random_init_max_abs_error_over_s", results["random_max_abs_error_over_s"], 0.08,
                           note=" (from u0_eff at t = 0)")]
    return entries


def caption(record):
    """The figure's caption, every number from the record."""
    res, cfg = record["results"], record["config"]
    e = agree.by_name(record["agreement"])
    spectrum = ", ".join(f"{v:g}" for v in res["spectrum"])
    text = (
        f"Gradient descent (lr {cfg['lr']:g}, t = step x lr) of a three-layer linear network "
        f"y = W32 W21 x on exactly whitened inputs ({cfg['n_in']} inputs, {cfg['n_hidden']} hidden, "
        f"{cfg['n_out']} outputs, {cfg['n_samples']} samples), targets from Sigma31 = U diag({spectrum}) "
        f"V^T. Dots: measured mode strengths U[:, a]^T W32 W21 V[:, a]; lines: "
        "`theory.deep_linear.mode_strength` from the strength at t = 0 (Saxe, McClelland & Ganguli "
        "2013), dotted: `learning_time` to s/2, the plateau length. Balanced decoupled starts at u0 = "
        f"{', '.join(f'{u:g}' for u in res['u0s'])}: over every recorded time from t = 0 and every mode, "
        f"max |u - u_theory| / s = {100 * res['max_abs_error_over_s']:.2f}%, and the plateau lengths agree "
        f"within {100 * res['plateau_rel_error']:.2f}% (the finite step; off-diagonal couplings "
        f"{res['max_coupling']:.1g}).")
    if "random_max_abs_error_over_s" in res:
        text += (
            " Small i.i.d. Gaussian starts (neither decoupled nor balanced): the theory is fed only the "
            "t = 0 weights, as the effective overlap u0 = |a0 + b0|^2 / 4 of each mode's hidden-space "
            f"vectors; plateau lengths agree within {100 * res['random_plateau_rel_error']:.1f}% and "
            f"the curves within {100 * res['random_max_abs_error_over_s']:.1f}% of s (cross-mode "
            "couplings and the decaying a - b part are outside the decoupled theory).")
    return text
