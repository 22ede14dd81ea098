"""high-dim-generalization: simulated linear students against Advani & Saxe's Marchenko-Pastur E_g(t), with the overtraining peak at alpha = 1.

Advani & Saxe 2017 (arXiv:1710.03667, §2-3; Advani, Saxe & Sompolinsky 2020,
Neural Networks 132, eqs. 7-13 there), through `theory.high_dim.generalization_error`
(called through the module at summary time, so that the theory is computed when
the agreement is), in widekit's conventions (issue 6):
x ~ N(0, I_N); P = alpha N training examples; teacher w_bar and initial student
w(0) with i.i.d. entries of variance sigma_w2 / N and sigma_w0_2 / N; labels
y = w_bar . x + eps, eps ~ N(0, sigma_eps2); loss (1 / 2P) sum (y - w . x)^2;
gradient flow dw/dt = X^T (y - X w) / P, t in units of tau = 1 / learning rate.

Simulation (no theory in it). For each alpha and seed one student problem is
drawn (X, w_bar, w(0), eps) at finite N, and the student is trained by exact
gradient flow on that sample: with X^T X / P = V diag(l) V^T and e = w - w_bar,
V^T e(t) = exp(-l t) V^T e(0) + (1 - exp(-l t)) / l * V^T X^T eps / P
(directions with l = 0 stay frozen). This is the t -> 0 step-size limit of
gradient descent on the sampled data, with no step-size error; the test
checks it against explicit gradient-descent steps. Test error on a fresh
example with a noisy label is E_g = |e|^2 + sigma_eps2 (exact expectation over
the test point). The theory averages over the Marchenko-Pastur law at
N -> inf; finite N adds O(1/N) bias and O(N^-1/2) fluctuations, which the
standard error over seeds measures.

Agreement (`experiments.agreement`), the theory evaluated at every recorded time:
  * `E_g(t) alpha=A` for each curve alpha: the mean over seeds of E_g(t) at
    every recorded time t <= t_check against the theory, as a max |z| with a
    Šidák threshold (level 0.01), z = (mean - theory) / SE, SE = std over seeds
    / sqrt(seeds); the largest SE must stay below `max_relative_se` of the
    curve's largest value, so a wrong theory cannot pass by noise.
  * `E_g(t=inf) over alpha`: the converged (t -> inf) error at the peak-panel
    alphas at least `peak_gap` from alpha = 1 (where finite N rounds the
    divergence off: the smallest eigenvalue of X^T X / P, (1 - alpha^-1/2)^2 in
    the limit, fluctuates by ~N^-2/3), same criterion.
The second panel also draws min_t E_g (early stopping) against alpha: the peak
at alpha = 1 disappears; it is not an agreement entry because the mean over
seeds of each seed's minimum is biased below the minimum of the mean.

Deliberate errors caught at `--size small`, seed 0 (tests/experiments):
alpha, sigma_w2, sigma_eps2, tau (time unit) and the Marchenko-Pastur
eigenvalues each off by 10%, and dropped terms.

Pieces: (alpha, seed_index) for the curve alphas and the peak-panel alphas.
"""
import dataclasses

import matplotlib.figure
import numpy as np

from experiments import agreement as entries
from theory import high_dim


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 400
    n_seeds: int = 128
    peak_seeds: int = 32
    alphas: tuple = (0.5, 0.9, 2.0)
    peak_alphas: tuple = (0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0)
    sigma_w2: float = 1.0
    sigma_w0_2: float = 0.0
    sigma_eps2: float = 0.25
    t_max: float = 1000.0
    t_check: float = 1000.0
    peak_gap: float = 0.25
    max_relative_se: float = 0.05
    n_peak_grid: int = 48
    seed: int = 0

    @classmethod
    def tiny(cls):
        return cls(n=200, n_seeds=16, peak_seeds=16, alphas=(0.5, 2.0), peak_alphas=(0.5, 2.0),
                   max_relative_se=0.08, n_peak_grid=8)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls(n=1000, n_seeds=50, sigma_w2=1.0, sigma_eps2=0.2,
                   alphas=(0.5, 0.9, 1.0, 2.0, 4.0),
                   peak_alphas=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0,
                                4.0), t_max=10000.0, t_check=10000.0)


def times(config):
    """t = 0, then 80 log-spaced times from 0.01 to t_max."""
    return np.concatenate([[0.0], np.logspace(-2.0, np.log10(config.t_max), 80)])


def all_alphas(config):
    return tuple(sorted(set(config.alphas) | set(config.peak_alphas)))


def seeds_of(config, alpha):
    """n_seeds for the curve alphas (whose E_g(t) is checked), peak_seeds for the others."""
    return config.n_seeds if alpha in config.alphas else config.peak_seeds


def pieces(config):
    return [(float(a), s) for a in all_alphas(config) for s in range(seeds_of(config, a))]


def draw_problem(config, alpha, seed_index):
    """X (P, N), teacher, initial student, label noise of one sampled problem."""
    n = config.n
    p = int(round(alpha * n))
    rng = np.random.default_rng([config.seed, int(round(alpha * 1000)), seed_index])
    x = rng.standard_normal((p, n))
    teacher = rng.standard_normal(n) * np.sqrt(config.sigma_w2 / n)
    student0 = rng.standard_normal(n) * np.sqrt(config.sigma_w0_2 / n)
    eps = rng.standard_normal(p) * np.sqrt(config.sigma_eps2)
    return x, teacher, student0, eps


def flow_error_modes(x, teacher, student0, eps, t):
    """V^T e(t), e = w(t) - teacher, under exact gradient flow of the sampled loss; (len(t), N).

    V holds the eigenvectors of X^T X / P; t may contain np.inf (the converged student).
    """
    p = x.shape[0]
    lam, v = np.linalg.eigh(x.T @ x / p)
    lam = np.clip(lam, 0.0, None)
    e0 = v.T @ (student0 - teacher)
    b = v.T @ (x.T @ eps) / p
    t = np.asarray(t, dtype=np.float64)[:, None]
    frozen = lam < 1e-10 * lam.max()
    safe = np.where(frozen, 1.0, lam)
    late = np.isinf(t)
    finite_t = np.where(late, 0.0, t)
    decay = np.where(late, 0.0, np.exp(-lam * finite_t))
    growth = np.where(late, 1.0 / safe, -np.expm1(-lam * finite_t) / safe)
    decay = np.where(frozen, 1.0, decay)     # frozen subspace: no gradient, no noise
    growth = np.where(frozen, 0.0, growth)
    return decay * e0 + growth * b, v


def flow_error(x, teacher, student0, eps, t):
    """e(t) = w(t) - teacher under exact gradient flow of the sampled loss; (len(t), N)."""
    modes, v = flow_error_modes(x, teacher, student0, eps, t)
    return modes @ v.T


def run_piece(config, piece):
    alpha, seed_index = piece
    x, teacher, student0, eps = draw_problem(config, alpha, seed_index)
    modes, _ = flow_error_modes(x, teacher, student0, eps, np.append(times(config), np.inf))
    eg = np.sum(modes ** 2, axis=1) + config.sigma_eps2   # |e|^2: V is orthogonal
    return {"alpha": alpha, "eg": eg[:-1], "eg_inf": eg[-1], "eg_min": eg[:-1].min()}


def _theory_kwargs(config):
    return dict(sigma_w2=config.sigma_w2, sigma_w0_2=config.sigma_w0_2,
                sigma_eps2=config.sigma_eps2)


def _mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values))


def summarize(config, results):
    t = times(config)
    kw = _theory_kwargs(config)
    out = {"times": t, "n": config.n, "n_seeds": config.n_seeds, "peak_seeds": config.peak_seeds,
           "sigma_w2": config.sigma_w2, "sigma_w0_2": config.sigma_w0_2,
           "sigma_eps2": config.sigma_eps2, "t_check": config.t_check,
           "peak_gap": config.peak_gap, "max_relative_se": config.max_relative_se,
           "alphas": list(config.alphas), "curves": {}, "peak": {}}
    checked = t <= config.t_check
    for alpha in all_alphas(config):
        mine = [r for r in results if float(r["alpha"]) == alpha]
        key = f"{alpha:g}"
        if alpha in config.alphas:
            mean, se = _mean_se([r["eg"] for r in mine])
            theory = high_dim.generalization_error(t, alpha, **kw)
            z = np.abs(mean - theory) / se
            out["curves"][key] = {"mean": mean, "se": se, "theory": theory,
                                  "max_z": float(z[checked].max()),
                                  "max_rel": float(np.max(np.abs(mean / theory - 1)[checked]))}
        if alpha in config.peak_alphas:
            inf, inf_se = _mean_se([r["eg_inf"] for r in mine])
            low, low_se = _mean_se([r["eg_min"] for r in mine])
            out["peak"][key] = {"eg_inf_mean": inf, "eg_inf_se": inf_se,
                                "eg_inf_theory": high_dim.generalization_error(np.inf, alpha, **kw),
                                "eg_min_mean": low, "eg_min_se": low_se,
                                "checked": bool(abs(alpha - 1) >= config.peak_gap)}
    if config.peak_alphas:
        half = config.n_peak_grid // 2   # the theory lines of the right panel
        grid = np.concatenate([np.linspace(0.05, 0.97, half), np.linspace(1.03, 4.0, half)])
        t_fine = np.concatenate([[0.0], np.logspace(-2, 5, 120)])
        out["peak_theory"] = {
            "alpha": grid,
            "eg_inf": np.array([high_dim.generalization_error(np.inf, a, **kw) for a in grid]),
            "eg_min": np.array([high_dim.generalization_error(t_fine, a, **kw).min() for a in grid])}
    return out


def agreement(results):
    t = np.asarray(results["times"])
    checked = t <= results["t_check"]
    out = []
    for key, curve in results["curves"].items():
        out.append(entries.max_z(
            f"E_g(t) alpha={key}", np.asarray(curve["mean"])[checked],
            np.asarray(curve["theory"])[checked], np.asarray(curve["se"])[checked],
            max_relative_se=results["max_relative_se"],
            what=f"times 0 <= t <= {results['t_check']:g}"))
    peak = {k: p for k, p in results["peak"].items() if p["checked"]}
    if peak:
        out.append(entries.max_z(
            "E_g(t=inf) over alpha", [p["eg_inf_mean"] for p in peak.values()],
            [p["eg_inf_theory"] for p in peak.values()], [p["eg_inf_se"] for p in peak.values()],
            max_relative_se=results["max_relative_se"],
            what=f"alphas with |alpha - 1| >= {results['peak_gap']:g}"))
    return out


def caption(record):
    """The figure's caption in figures/README.md, every number from the record."""
    r = record["results"]
    by = entries.by_name(record["agreement"])
    curves = ", ".join(
        f"{by[f'E_g(t) alpha={k}']['value']:.2f} (alpha {k}; largest deviation {c['max_rel']:.1%})"
        for k, c in r["curves"].items())
    text = (f"Linear students (N = {r['n']}; {r['n_seeds']} seeds at each curve alpha, "
            f"{r['peak_seeds']} at the other alphas of the right panel; sigma_w^2 = "
            f"{r['sigma_w2']:g}, sigma_w0^2 = {r['sigma_w0_2']:g}, label noise sigma_eps^2 = "
            f"{r['sigma_eps2']:g}), each trained by exact gradient flow on its own sample of "
            f"P = alpha N Gaussian examples, against `theory.high_dim.generalization_error` "
            f"(Advani & Saxe 2017, the Marchenko-Pastur average at N -> inf). Left: E_g(t) at "
            f"alpha = {', '.join(r['curves'])} (error bars: ±1 standard error over seeds, drawn at "
            f"every third recorded time; lines: theory). The largest |mean - theory| / SE over the "
            f"{int(np.sum(np.asarray(r['times']) <= r['t_check']))} recorded times t <= "
            f"{r['t_check']:g} is {curves}.")
    if r["peak"]:
        used = [k for k, p in r["peak"].items() if p["checked"]]
        text += (f" Right: E_g at t -> inf (red) and at each seed's best stopping time (blue) "
                 f"against alpha: the overtraining peak at alpha = 1 (infinite there in theory) "
                 f"and its removal by early stopping. The t -> inf points at alpha = "
                 f"{', '.join(used)} (|alpha - 1| >= {r['peak_gap']:g}) are compared with theory "
                 f"(max |z| {by['E_g(t=inf) over alpha']['value']:.2f}); nearer alpha = 1 finite N "
                 f"rounds the divergence off; the mean of each seed's minimum over time lies "
                 f"slightly below the theory's minimum of the mean curve, as it must.")
    return text


def plot(results):
    panels = 2 if "peak_theory" in results else 1
    figure = matplotlib.figure.Figure(figsize=(5.2 * panels, 4.2))
    axes = figure.add_subplot(1, panels, 1)
    t = np.asarray(results["times"])
    for i, (key, curve) in enumerate(results["curves"].items()):
        color = f"C{i}"
        axes.plot(t[1:], curve["theory"][1:], color=color, lw=1.2, label=f"theory, alpha={key}")
        # markers offset in time by curve so that no set hides another
        pick = slice(1 + i, None, 3)
        axes.errorbar(t[pick], np.asarray(curve["mean"])[pick], yerr=np.asarray(curve["se"])[pick],
                      fmt="o", ms=3, color=color, capsize=1.5,
                      label=f"simulated ±1 SE, max |z| = {curve['max_z']:.2f}")
    axes.set(xscale="log", yscale="log", xlabel="t (units of tau)", ylabel="E_g(t)")
    axes.set_title(f"linear student, N={results['n']}, {results['n_seeds']} seeds, "
                   f"sigma_eps^2={results['sigma_eps2']:g}", fontsize=9)
    axes.legend(fontsize=7)
    if panels == 1:
        figure.tight_layout()
        return figure
    axes = figure.add_subplot(1, 2, 2)
    grid = np.asarray(results["peak_theory"]["alpha"])
    inf = np.asarray(results["peak_theory"]["eg_inf"])
    early = np.asarray(results["peak_theory"]["eg_min"])
    for mask in (grid < 1, grid > 1):
        first = mask[0]
        axes.plot(grid[mask], inf[mask], "C3", label="theory t -> inf" if first else None)
        axes.plot(grid[mask], early[mask], "C0", label="theory min_t (early stopping)" if first else None)
    a = np.array([float(k) for k in results["peak"]])
    p = list(results["peak"].values())
    axes.errorbar(a, [q["eg_inf_mean"] for q in p], yerr=[q["eg_inf_se"] for q in p],
                  fmt="o", color="C3", ms=4, capsize=2, label="simulated t -> inf (±1 SE)")
    axes.errorbar(a, [q["eg_min_mean"] for q in p], yerr=[q["eg_min_se"] for q in p],
                  fmt="s", color="C0", ms=4, capsize=2, label="simulated min_t (±1 SE)")
    axes.axvline(1.0, color="grey", ls=":", lw=1)
    axes.set(yscale="log", xlabel="alpha = P / N", ylabel="E_g", ylim=(0.1, 30))
    axes.set_title("overtraining peak at alpha = 1", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure
