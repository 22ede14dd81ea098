"""function-dynamics: trained networks' outputs over time against the infinite ensemble (Jacot et al. 2018, Fig. 2; Lee et al. 2019).

The network and data are those of `ntk-convergence` (four Dense layers, ReLU
between them, W_std 1, b_std 0.1, NTK parameterization; training points at
random angles on the unit circle, target f*(x) = x1 x2). Finite networks of
several widths are trained by full-batch gradient descent, their outputs on
a grid of test angles recorded at log-spaced steps, and held against

- the infinite ensemble: `theory.predict.gradient_descent_mse_ensemble`
  with the closed-form kernels (`get="ntk"`, `compute_cov=True`), whose
  mean and 10-90% band (mean -/+ 1.2816 sd) are the distribution of the
  infinitely wide network's output at each time over initialisations
  (Lee et al. 2019, §2.3.1; Jacot et al. 2018, Fig. 2);
- each network's own infinite-width prediction: the infinitely wide network
  started from *that network's* outputs at initialisation and trained the
  same way, i.e. gradient descent with the closed-form NTK and the same
  steps, `theory.predict.gradient_descent_mse_discrete(..., fx_train_0,
  fx_test_0)`. Its average over initialisations is the ensemble mean (up to
  the flow-vs-steps difference below), and its gap to the trained network
  is O(width^-1/2) (Lee et al. 2019, Thm. 2.1 with the empirical NTK
  replaced by its limit, both O(width^-1/2) apart; Jacot et al. 2018,
  Thm. 2).

Agreement, at each width: `rms_gap`, the root mean square over seeds, test
points and recorded times t > 0 of (trained network - its infinite-width
prediction), which shrinks with width (slope near -1/2); `band_coverage`,
the fraction of trained outputs inside the ensemble's 10-90% band (0.8 when
the distributions agree); `ensemble_mean_gap`, the RMS over test points and
times of (mean over seeds - ensemble mean), beside its noise floor
sqrt(mean ensemble variance / seeds), which it cannot beat at any width.

Time follows `experiments.train`: networks are recorded at `steps`; theory is
called with `t=steps` (its `t` counts steps of size `learning_rate`), and the
axis drawn is `steps * learning_rate`. The ensemble is gradient *flow*; the
networks take steps of `learning_rate`. `discretization_gap` is how far apart
the paired predictions under flow and under steps are (RMS): the part of the
ensemble's mismatch that no width removes. The paired gap uses steps, so it
measures the finite width alone.
"""
import dataclasses

import jax
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from experiments import train
from experiments.data import circle_points, unit_circle
from experiments.ntk_convergence import init_networks, network_keys, relu_network, target
from experiments.precomputed import indices, precomputed_kernel_fn
from theory import predict

Z90 = 1.2815515655446004  # the 90% quantile of N(0, 1): the band is mean -/+ Z90 sd


@dataclasses.dataclass(frozen=True)
class Config:
    """widths: hidden widths; n_seeds networks per width, seeds_per_piece of
    them trained together under `jax.vmap` per piece; n_train training points
    at random angles; n_test test angles on [-pi, pi]; learning_rate, steps:
    gradient descent; n_records: recorded steps (0 and log-spaced up to
    steps); seed: base seed of the data and the networks."""

    widths: tuple = (64, 256, 1024)
    n_seeds: int = 8
    seeds_per_piece: int = 8
    n_hidden: int = 3
    W_std: float = 1.0
    b_std: float = 0.1
    n_train: int = 8
    n_test: int = 49
    learning_rate: float = 1.0
    steps: int = 200
    n_records: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.n_seeds % self.seeds_per_piece or self.n_seeds < 2:
            raise ValueError(f"n_seeds={self.n_seeds} must be at least 2 and a multiple of "
                             f"seeds_per_piece={self.seeds_per_piece}")

    @classmethod
    def tiny(cls):
        return cls(widths=(32, 128, 512), n_seeds=8, seeds_per_piece=8, n_test=25, steps=100,
                   n_records=8)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        # Jacot et al. 2018, Fig. 2 show widths 50 and 1000; Lee et al. 2019 go wider.
        return cls(widths=(64, 256, 1024, 4096, 16384), n_seeds=32, seeds_per_piece=8,
                   n_test=97, steps=1000, n_records=24)


def record_steps(config):
    """0, then `n_records - 1` log-spaced steps up to `steps` (duplicates dropped)."""
    later = np.unique(np.round(np.geomspace(1, config.steps, config.n_records - 1)).astype(int))
    return np.concatenate([[0], later])


def data(config, dtype=np.float32):
    """`(train_angles, x_train, y_train, test_angles, x_test)`, f* = x1 x2 on the circle."""
    train_angles = np.random.default_rng(config.seed).uniform(-np.pi, np.pi, config.n_train)
    x_train = circle_points(train_angles, dtype)
    test_angles, x_test = unit_circle(config.n_test, dtype=dtype)
    return train_angles, x_train, target(x_train), test_angles, x_test


def network(width, config):
    return relu_network(width, config.n_hidden, config.W_std, config.b_std)


def pieces(config):
    """`(width, first seed index)` of every block of seeds."""
    return [(width, first) for width in config.widths
            for first in range(0, config.n_seeds, config.seeds_per_piece)]


def run_piece(config, piece):
    """Train a block of networks; their outputs on the train and test points at the recorded steps."""
    width, first = piece
    _, x_train, y_train, _, x_test = data(config)
    seeds = np.arange(first, first + config.seeds_per_piece)
    init = init_networks(width, len(seeds), config.n_hidden, config.W_std, config.b_std)
    params = init(network_keys(config.seed, width, seeds))
    trajectory = train.train_ensemble(
        network(width, config)[1], params, x_train, y_train,
        learning_rate=config.learning_rate, record_steps=record_steps(config), x_test=x_test)
    return {"width": width, "seed_index": seeds,
            "train_outputs": np.asarray(trajectory.train_outputs)[..., 0],  # (S, R, N)
            "test_outputs": np.asarray(trajectory.test_outputs)[..., 0],    # (S, R, M)
            "train_loss": np.asarray(trajectory.train_loss)}


def theory(config):
    """The infinite ensemble at the recorded steps, and the closed-form kernels it uses.

    The kernels of all train and test points come from one call of the
    closed-form `kernel_fn` (one compilation) and reach
    `gradient_descent_mse_ensemble` through `experiments.precomputed`.

    Returns a dict: `mean`, `sd` `(R, M)` of the ensemble (get="ntk"),
    `ntk_train_train` `(N, N)`, `ntk_test_train` `(M, N)`.
    """
    _, x_train, y_train, _, x_test = data(config, np.float64)
    n, m = len(x_train), len(x_test)
    kernel_fn = jax.jit(network(1, config)[2], static_argnames="get")
    k = kernel_fn(np.concatenate([x_train, x_test]), None, get=("nngp", "ntk"))
    nngp, ntk = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    ensemble = predict.gradient_descent_mse_ensemble(
        precomputed_kernel_fn(nngp=nngp, ntk=ntk), indices(0, n), y_train,
        learning_rate=config.learning_rate)
    gaussian = ensemble(t=record_steps(config), x_test=indices(n, n + m), get="ntk",
                        compute_cov=True)
    variance = np.diagonal(np.asarray(gaussian.covariance, np.float64), axis1=-2, axis2=-1)
    return {"mean": np.asarray(gaussian.mean, np.float64)[..., 0],
            "sd": np.sqrt(np.clip(variance, 0, None)),
            "ntk_train_train": ntk[:n, :n], "ntk_test_train": ntk[n:, :n]}


def paired_predictions(config, limit, train_outputs_0, test_outputs_0, discrete=False):
    """Each network's infinite-width prediction from its own initial outputs: `(S, R, M)`.

    Gradient flow (`gradient_descent_mse`) with the closed-form NTK, or with
    `discrete=True` gradient descent with the same steps
    (`gradient_descent_mse_discrete`).
    """
    _, _, y_train, _, _ = data(config, np.float64)
    steps = record_steps(config)
    make = predict.gradient_descent_mse_discrete if discrete else predict.gradient_descent_mse
    predict_fn = make(limit["ntk_train_train"], y_train, learning_rate=config.learning_rate)
    out = []
    for f_train, f_test in zip(train_outputs_0, test_outputs_0):
        kwargs = dict(fx_train_0=np.asarray(f_train, np.float64)[:, None],
                      fx_test_0=np.asarray(f_test, np.float64)[:, None],
                      k_test_train=limit["ntk_test_train"])
        _, test = predict_fn(steps, **kwargs) if not discrete else predict_fn(steps=steps, **kwargs)
        out.append(np.asarray(test)[..., 0])
    return np.stack(out)


def _rms_with_se(squares):
    """sqrt(mean over seeds of per-seed mean squares), and its delta-method standard error."""
    rms = np.sqrt(squares.mean())
    return rms, squares.std(ddof=1) / np.sqrt(len(squares)) / (2 * rms)


def summarize(config, results):
    train_angles, _, y_train, test_angles, _ = data(config)
    steps = record_steps(config)
    limit = theory(config)
    low, high = limit["mean"] - Z90 * limit["sd"], limit["mean"] + Z90 * limit["sd"]
    later = steps > 0
    summary = {"widths": np.asarray(config.widths), "n_seeds": config.n_seeds,
               "steps": steps, "times": steps * config.learning_rate,
               "learning_rate": config.learning_rate,
               "test_gamma": test_angles, "train_gamma": train_angles, "train_y": y_train[:, 0],
               "theory_mean": limit["mean"], "theory_low": low, "theory_high": high}
    rows = {name: [] for name in ("rms_gap", "rms_gap_se", "band_coverage", "ensemble_mean_gap",
                                  "ensemble_noise_floor", "discretization_gap")}
    for name in ("median", "q10", "q90"):
        summary[f"net_{name}"] = []
    for width in config.widths:
        mine = [r for r in results if int(r["width"]) == width]
        test_outputs = np.concatenate([r["test_outputs"] for r in mine])     # (S, R, M)
        train_outputs = np.concatenate([r["train_outputs"] for r in mine])   # (S, R, N)
        paired = paired_predictions(config, limit, train_outputs[:, 0], test_outputs[:, 0],
                                    discrete=True)
        squares = ((test_outputs - paired)[:, later] ** 2).mean(axis=(1, 2))  # per seed
        rms, se = _rms_with_se(squares)
        rows["rms_gap"].append(rms)
        rows["rms_gap_se"].append(se)
        inside = (test_outputs >= low) & (test_outputs <= high)
        rows["band_coverage"].append(inside[:, later].mean())
        rows["ensemble_mean_gap"].append(
            np.sqrt(((test_outputs.mean(axis=0) - limit["mean"])[later] ** 2).mean()))
        rows["ensemble_noise_floor"].append(
            np.sqrt((limit["sd"][later] ** 2).mean() / len(test_outputs)))
        flow = paired_predictions(config, limit, train_outputs[:, 0], test_outputs[:, 0])
        rows["discretization_gap"].append(np.sqrt(((flow - paired)[:, later] ** 2).mean()))
        for name, q in (("median", 50), ("q10", 10), ("q90", 90)):
            summary[f"net_{name}"].append(np.percentile(test_outputs, q, axis=0))  # (R, M)
    summary.update({name: np.asarray(values) for name, values in rows.items()})
    summary["rms_gap_slope"] = float(np.polyfit(np.log(config.widths), np.log(rows["rms_gap"]), 1)[0])
    return summary


def agreement(results):
    out = {}
    for i, width in enumerate(results["widths"]):
        out[f"rms_gap_width_{width}"] = results["rms_gap"][i]
    out["rms_gap_slope"] = results["rms_gap_slope"]
    out["theory_slope"] = -0.5
    for i, width in enumerate(results["widths"]):
        out[f"band_coverage_width_{width}"] = results["band_coverage"][i]
    out["band_coverage_theory"] = 0.8
    for i, width in enumerate(results["widths"]):
        out[f"ensemble_mean_gap_width_{width}"] = results["ensemble_mean_gap"][i]
    out["ensemble_noise_floor"] = float(np.mean(results["ensemble_noise_floor"]))
    out["discretization_gap_max"] = float(np.max(results["discretization_gap"]))
    return out


def plot(results):
    widths = np.asarray(results["widths"])
    gamma = np.asarray(results["test_gamma"])
    times = np.asarray(results["times"])
    shown = sorted({0, len(widths) - 1})
    colors = ("tab:orange", "tab:blue")
    figure = matplotlib.figure.Figure(figsize=(13, 4.6), layout="constrained")
    panels = figure.subplots(1, 3)

    def networks(axes, x, i, index, offset, color):
        median = np.asarray(results["net_median"][i])[index]
        low = np.asarray(results["net_q10"][i])[index]
        high = np.asarray(results["net_q90"][i])[index]
        axes.errorbar(x + offset, median, yerr=[median - low, high - median], fmt="o", ms=3.5,
                      capsize=2, color=color,
                      label=f"width {widths[i]}: median, 10-90% of {results['n_seeds']} nets")

    axes = panels[0]
    last = len(times) - 1
    axes.plot(gamma, np.asarray(results["theory_mean"])[last], "k-", lw=1.5, label="infinite ensemble: mean")
    axes.fill_between(gamma, np.asarray(results["theory_low"])[last],
                      np.asarray(results["theory_high"])[last],
                      color="0.8", label="infinite ensemble: 10-90%")
    for j, i in enumerate(shown):
        networks(axes, gamma, i, (last, slice(None)), (j - 0.5) * 0.04, colors[j])
    axes.plot(results["train_gamma"], results["train_y"], "kx", ms=7, mew=2, label="training points")
    axes.set(xlabel=r"angle $\gamma$ of $x=(\cos\gamma, \sin\gamma)$", ylabel="f(x)",
             title=f"test outputs at t = {times[last]:g}")
    axes.legend(fontsize=7)

    axes = panels[1]
    point = int(np.argmin(np.abs(gamma - np.pi / 4)))  # f*(x) = 1/2 there
    shown_times = times.copy()
    shown_times[0] = times[1] / 2 if len(times) > 1 else 1.0  # t = 0 drawn left of the first step
    axes.plot(shown_times, np.asarray(results["theory_mean"])[:, point], "k-", lw=1.5,
              label="infinite ensemble: mean")
    axes.fill_between(shown_times, np.asarray(results["theory_low"])[:, point],
                      np.asarray(results["theory_high"])[:, point], color="0.8",
                      label="infinite ensemble: 10-90%")
    for j, i in enumerate(shown):
        networks(axes, shown_times * (1 + 0.06 * (j - 0.5)), i, (slice(None), point), 0, colors[j])
    axes.axhline(0.5, color="k", ls=":", lw=1, label=r"target $f^*=1/2$")
    axes.set(xscale="log", xlabel=r"time $t$ = steps x learning rate (t = 0 at far left)",
             ylabel=f"f(x) at γ = {gamma[point]:.2f}", title="one test output over time")
    axes.legend(fontsize=7)

    axes = panels[2]
    axes.errorbar(widths, results["rms_gap"], yerr=results["rms_gap_se"], fmt="o", capsize=3,
                  color="tab:red", label=f"each net vs its $n=\\infty$ twin (same init outputs, same steps): "
                                         f"slope {results['rms_gap_slope']:.2f}")
    anchor = np.exp(np.mean(np.log(results["rms_gap"]) + 0.5 * np.log(widths)))
    axes.plot(widths, anchor * widths ** -0.5, "k-", lw=1.5, label="theory: slope $-1/2$")
    axes.plot(widths, results["ensemble_mean_gap"], "s", color="tab:purple",
              label="mean of nets vs ensemble mean")
    axes.plot(widths, results["ensemble_noise_floor"], "--", color="tab:purple", lw=1,
              label="its seed-noise floor")
    axes.plot(widths, results["discretization_gap"], ":", color="0.4",
              label="$n=\\infty$: gradient descent vs flow")
    axes.set(xscale="log", yscale="log", xlabel="width n", ylabel="RMS gap over test points and t > 0",
             title="gap to the infinite-width prediction")
    axes.set_xticks(widths, [str(w) for w in widths])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return figure
