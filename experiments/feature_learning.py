"""feature-learning: hidden features move O(1) under muP, O(n^-1/2) under NTK; wide muP nets reach theory.mup's limit; muP's best learning rate transfers across width.

Yang & Hu 2021 ("Feature learning in infinite-width neural networks", arXiv:2011.14522):
under the NTK parameterization a network's hidden features stop moving as its width n
grows (the change of each coordinate after a step of size eta is O(n^-1/2)), while
under the Maximal Update Parametrization (muP, their §5) they move by O(1) at every
width, and the infinite-width limit learns features instead of being a kernel method.

The networks are linear with one hidden layer of width n, d_in inputs and d_out outputs,
trained by full-batch gradient descent (`experiments.train`) at one learning rate eta,
on a linear teacher y = x B / sqrt(d_in) with Gaussian inputs:

    muP:  Dense(n, parameterization="mup", role="input"), Dense(d_out, parameterization="mup", role="output")
    NTK:  Dense(n), Dense(d_out)

Agreement (`agreement`):

- the per-coordinate change of the hidden features h(x) on held-out probe inputs after
  one step, ||Delta h|| / sqrt(n) (rms over probes, coordinates and seeds), against width:
  its exponent (log-log slope, fitted with a 1/n finite-width correction, `leading_exponent`)
  with a bootstrap interval over seeds is -1/2 under NTK and 0 under muP;
- under muP its mean square, extrapolated to n = inf (L + B/n fitted over widths), equals
  the limit's eta^2 W_std_out^2 |M^T x|^2 (`theory.mup.feature_change_rms`): a z-score with
  a bootstrap standard error over seeds;
- trained muP networks against the exact infinite-width limit of `theory.mup` (a network
  of width d_in + d_out with orthogonal initialisation): the rms distance of their
  outputs (train and probe inputs, every recorded step) to the limit falls as width^-1/2
  (log-log slope, bootstrap over seeds), and at the widest width the mean over seeds
  matches the limit point by point (max |z|, Šidák);
- learning-rate transfer (Yang et al. 2022, "Tensor Programs V", arXiv:2203.03466, Fig. 1):
  the learning rate that minimises the training loss after a fixed number of steps, read
  off a grid of rates (refined by a parabola in log rate), is stable in width under muP and
  falls as 1/n under the standard parameterization: its log-log slope against width, with
  a bootstrap interval over seeds, within 0.2 of 0 and of -1.
"""
import dataclasses
import functools
import warnings

import jax
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from experiments import agreement as agreement_entries
from experiments import train
from kernels import stax
from theory import mup

PARAMETERIZATIONS = ("ntk", "mup")
TRANSFER_PARAMETERIZATIONS = ("mup", "standard")  # the learning-rate sweep
MAX_SLOPE_HALF_WIDTH = 0.12
# The best learning rate is read off a grid of half octaves (refined by a parabola): a slope
# within 0.2 of the theory's separates muP's 0 from the standard parameterization's -1.
LR_SLOPE_TOLERANCE = 0.2


@dataclasses.dataclass(frozen=True)
class Config:
    """widths: hidden widths n. n_seeds networks per width and parameterization, seeds_per_piece
    of them trained together under `jax.vmap`. d_in, d_out: input and output dimensions;
    n_train training points, n_probe held-out probe inputs. learning_rate: eta, the same for
    both parameterizations. record_steps: where the muP trajectories are compared with the
    limit (the first two must be 0 and 1: the one-step feature change). W_std_in, W_std_out:
    the two layers' W_std. The learning-rate sweep trains lr_seeds networks per width under
    muP and under the standard parameterization for lr_steps steps at every learning rate
    2^k, k from lr_log2_min to lr_log2_max in steps of lr_log2_step. seed: base seed of the
    data and of every network."""

    widths: tuple = (128, 256, 512, 1024, 2048, 4096)
    n_seeds: int = 1024
    seeds_per_piece: int = 256
    d_in: int = 4
    d_out: int = 2
    n_train: int = 8
    n_probe: int = 4
    learning_rate: float = 1.0
    record_steps: tuple = (0, 1, 2, 5, 10, 20, 40)
    W_std_in: float = 1.0
    W_std_out: float = 1.0
    lr_seeds: int = 32
    lr_steps: int = 20
    lr_log2_min: float = -14.0
    lr_log2_max: float = 4.0
    lr_log2_step: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.n_seeds % self.seeds_per_piece or self.n_seeds < 8:
            raise ValueError(f"n_seeds={self.n_seeds} must be at least 8 and a multiple of "
                             f"seeds_per_piece={self.seeds_per_piece}")
        if tuple(self.record_steps[:2]) != (0, 1) or list(self.record_steps) != sorted(self.record_steps):
            raise ValueError(f"record_steps must be nondecreasing and start 0, 1; got {self.record_steps}")
        if len(self.widths) < 3:
            raise ValueError(f"widths must hold at least three widths for a slope; got {self.widths}")

    @classmethod
    def tiny(cls):
        # widths from 128: at 64 the O(1/n) part of the distance to the limit steepens its slope
        return cls(widths=(128, 512, 2048), n_seeds=512, seeds_per_piece=512, record_steps=(0, 1, 5, 20),
                   lr_seeds=16, lr_log2_min=-10.0, lr_log2_max=3.0, lr_log2_step=1.0)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls(widths=(128, 256, 512, 1024, 2048, 4096, 8192), n_seeds=2048, seeds_per_piece=256,
                   record_steps=(0, 1, 2, 5, 10, 20, 50, 100))


def build_network(width, d_out, parameterization, W_std_in=1.0, W_std_out=1.0, readout=True):
    """The linear network with one hidden layer (`readout=False`: its hidden features h)."""
    if parameterization == "mup":
        layers = [stax.Dense(width, W_std=W_std_in, parameterization="mup", role="input"),
                  stax.Dense(d_out, W_std=W_std_out, parameterization="mup", role="output")]
    elif parameterization == "standard":
        layers = [stax.Dense(width, W_std=W_std_in, parameterization="standard"),
                  stax.Dense(d_out, W_std=W_std_out, parameterization="standard")]
    else:
        layers = [stax.Dense(width, W_std=W_std_in), stax.Dense(d_out, W_std=W_std_out)]
    return stax.serial(*(layers if readout else layers[:1]))


@functools.lru_cache(maxsize=None)
def network(width, d_out, parameterization, W_std_in=1.0, W_std_out=1.0):
    """`build_network`, cached so that every piece of one width reuses the engine's compilation."""
    return build_network(width, d_out, parameterization, W_std_in, W_std_out)


def dataset(config):
    """Training inputs and teacher targets, probe inputs and their targets, float32, seeded."""
    rng = np.random.default_rng(config.seed)
    teacher = rng.normal(size=(config.d_in, config.d_out))
    x = rng.normal(size=(config.n_train + config.n_probe, config.d_in))
    y = x @ teacher / np.sqrt(config.d_in)
    n = config.n_train
    return tuple(a.astype(np.float32) for a in (x[:n], y[:n], x[n:], y[n:]))


def limit(config):
    """The exact infinite-width muP limit (`theory.mup`) at the recorded steps: outputs on the
    training and probe inputs, `(R, n_train + n_probe, d_out)`, and the one-step feature
    change's mean square per coordinate on the probes (a float)."""
    x, y, x_probe, _ = (a.astype(np.float64) for a in dataset(config))
    trajectory = mup.linear_mup_limit(x, y, config.learning_rate, list(config.record_steps), x_test=x_probe,
                                      W_std_in=config.W_std_in, W_std_out=config.W_std_out)
    outputs = np.concatenate([trajectory.train_outputs, trajectory.test_outputs], axis=1)
    change = mup.feature_change_rms(x, y, config.learning_rate, x_probe, config.W_std_in, config.W_std_out)
    return outputs, float(np.mean(change ** 2))


def feature_change_exponent(parameterization):
    """Yang & Hu 2021: ||Delta h|| / sqrt(n) after one step scales as n^-1/2 (NTK), n^0 (muP)."""
    return {"ntk": -0.5, "mup": 0.0}[parameterization]


def best_learning_rate_exponent(parameterization):
    """Yang et al. 2022 (Tensor Programs V, Fig. 1 and §1): the best learning rate is stable in width
    under muP (the limit's training does not depend on n) and shrinks as 1/n under the standard
    parameterization (its readout's change per step grows as eta n: |h|^2 = O(n))."""
    return {"mup": 0.0, "standard": -1.0}[parameterization]


def learning_rates(config):
    """The grid 2^k of the learning-rate sweep."""
    return 2.0 ** np.arange(config.lr_log2_min, config.lr_log2_max + config.lr_log2_step / 2, config.lr_log2_step)


def pieces(config):
    """`(parameterization, width, first seed index)` of every block of networks; the sweep's
    blocks are `("lr-" + parameterization, width, 0)`."""
    return ([(p, width, first) for p in PARAMETERIZATIONS for width in config.widths
             for first in range(0, config.n_seeds, config.seeds_per_piece)]
            + [("lr-" + p, width, 0) for p in TRANSFER_PARAMETERIZATIONS for width in config.widths])


def _seeds(config, family, width, first, count):
    """Seeds of networks `first`..`first + count - 1` of one width in family 0 (NTK), 1 (muP),
    2 (muP sweep) or 3 (standard sweep): distinct across families, widths and networks."""
    return [(config.seed * 7919 + width * 104729 + family * 15485863 + i) % (2 ** 31)
            for i in range(first, first + count)]


def run_piece(config, piece):
    """A block of networks trained together: their hidden features on the probes at steps 0
    and 1, and (muP) their outputs on the training and probe inputs at every recorded step."""
    parameterization, width, first = piece
    if parameterization.startswith("lr-"):
        return _learning_rate_sweep(config, parameterization[3:], width)
    shape = (width, config.d_out, parameterization, config.W_std_in, config.W_std_out)
    init_fn, apply_fn, _ = network(*shape)
    x, y, x_probe, _ = dataset(config)
    seeds = _seeds(config, PARAMETERIZATIONS.index(parameterization), width, first, config.seeds_per_piece)
    keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds))
    params = _init_networks(shape, config.d_in, config.seeds_per_piece)(keys)
    steps = list(config.record_steps) if parameterization == "mup" else [0, 1]
    trajectory = train.train_ensemble(apply_fn, params, x, y, learning_rate=config.learning_rate,
                                      record_steps=steps, x_test=x_probe,
                                      ntk_fn=_features_fn(width, config.d_out, parameterization,
                                                          config.W_std_in, x_probe.tobytes(), config.d_in))
    features = np.asarray(trajectory.ntk, np.float64)            # (S, R, n_probe, n)
    change = features[:, 1] - features[:, 0]
    result = {"width": width, "feature_change_ms": np.mean(change ** 2, axis=(1, 2))}
    if parameterization == "mup":
        result["outputs"] = np.concatenate([np.asarray(trajectory.train_outputs),
                                            np.asarray(trajectory.test_outputs)], axis=2)
    return result


def _learning_rate_sweep(config, parameterization, width):
    """The final training loss of `lr_seeds` networks at every learning rate of the grid,
    `(lr_seeds, n_rates)` (inf where training diverged). The rate is passed as a learning-rate
    scale of every parameter (`train`'s `learning_rate_scales`, a traced argument), so the whole
    grid runs on one compilation."""
    shape = (width, config.d_out, parameterization, config.W_std_in, config.W_std_out)
    init_fn, apply_fn, _ = network(*shape)
    x, y, _, _ = dataset(config)
    seeds = _seeds(config, 2 + TRANSFER_PARAMETERIZATIONS.index(parameterization), width, 0, config.lr_seeds)
    params = _init_networks(shape, config.d_in, config.lr_seeds)(jax.vmap(jax.random.PRNGKey)(np.asarray(seeds)))
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the largest rates diverge, as they should
        for rate in learning_rates(config):
            scales = jax.tree_util.tree_map(lambda _: float(rate), jax.tree_util.tree_map(lambda a: a[0], params))
            trajectory = train.train_ensemble(apply_fn, params, x, y, learning_rate=1.0,
                                              record_steps=[config.lr_steps], learning_rate_scales=scales)
            losses.append(np.asarray(trajectory.train_loss, np.float64)[:, -1])
    losses = np.stack(losses, axis=1)
    return {"width": width, "lr_losses": np.where(np.isfinite(losses), losses, np.inf)}


def best_log2_learning_rate(log2_rates, losses):
    """log2 of the rate minimising the mean loss over seeds (rows of `losses`), refined by a parabola
    through the log mean losses at the best grid point and its two neighbours."""
    with np.errstate(invalid="ignore", over="ignore"):
        curve = np.log(np.mean(np.minimum(losses, 1e30), axis=0))
    i = int(np.clip(np.argmin(curve), 1, len(curve) - 2))
    left, middle, right = curve[i - 1:i + 2]
    curvature = left - 2 * middle + right
    shift = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
    step = log2_rates[1] - log2_rates[0]
    return float(log2_rates[i] + np.clip(shift, -1, 1) * step)


@functools.lru_cache(maxsize=None)
def _init_networks(shape, d_in, count):
    """Compiled `keys (count, 2) -> params` of `network(*shape)`: network i is `init_fn(keys[i])`, as
    `train.init_ensemble` makes it, but compiled once per shape, so every piece of one width reuses it."""
    init_fn = network(*shape)[0]
    key = jax.random.PRNGKey(0)
    keys = jax.ShapeDtypeStruct((count,) + key.shape, key.dtype)
    # XLA's backend optimisation level 1 halves the random number generator's compile time
    # (as in ntk_convergence.init_networks); it runs once per piece
    return jax.jit(jax.vmap(lambda k: init_fn(k, (-1, d_in))[1])).lower(keys).compile(
        {"xla_backend_optimization_level": 1})


@functools.lru_cache(maxsize=None)
def _features_fn(width, d_out, parameterization, W_std_in, probe_bytes, d_in):
    """`params -> h(x_probe)`, the hidden features, one object per shape so compilations are reused."""
    x_probe = np.frombuffer(probe_bytes, np.float32).reshape(-1, d_in)
    features_apply = build_network(width, d_out, parameterization, W_std_in, readout=False)[1]
    return lambda params: features_apply(params[:1], x_probe)


def summarize(config, results):
    """Per-parameterization feature changes, muP distances to the limit, and the limit itself."""
    widths = np.asarray(config.widths)
    limit_outputs, limit_change_ms = limit(config)
    summary = {"widths": widths, "n_seeds": config.n_seeds, "learning_rate": config.learning_rate,
               "record_steps": np.asarray(config.record_steps), "n_train": config.n_train,
               "limit_outputs": limit_outputs, "limit_feature_change_ms": limit_change_ms,
               "limit_initial_loss": _loss(limit_outputs[0], config),
               "limit_final_loss": _loss(limit_outputs[-1], config)}
    for p in PARAMETERIZATIONS:
        ms = np.stack([np.concatenate([np.asarray(r["feature_change_ms"]) for r, piece in zip(results, pieces(config))
                                       if piece[0] == p and piece[1] == w]) for w in widths], axis=1)  # (S, W)
        summary[f"feature_change_ms_{p}"] = ms
        summary[f"feature_change_exponent_{p}"] = feature_change_exponent(p)
    outputs = np.stack([np.concatenate([np.asarray(r["outputs"]) for r, piece in zip(results, pieces(config))
                                        if piece[0] == "mup" and piece[1] == w]) for w in widths], axis=1)
    for p in TRANSFER_PARAMETERIZATIONS:
        summary[f"lr_losses_{p}"] = np.stack([np.asarray(r["lr_losses"]) for r, piece in zip(results, pieces(config))
                                              if piece[0] == "lr-" + p], axis=1)   # (S, W, rates)
        summary[f"best_lr_exponent_{p}"] = best_learning_rate_exponent(p)
    summary["log2_learning_rates"] = np.log2(learning_rates(config))
    difference = outputs - limit_outputs[None, None]            # (S, W, R, points, d_out)
    summary["limit_distance"] = np.sqrt(np.mean(difference ** 2, axis=(2, 3, 4)))   # (S, W)
    summary["mean_outputs"] = outputs.mean(axis=0)             # (W, R, points, d_out)
    x, y, x_probe, _ = (a.astype(np.float64) for a in dataset(config))
    dense = mup.linear_mup_limit(x, y, config.learning_rate, list(range(config.record_steps[-1] + 1)),
                                 x_test=x_probe, W_std_in=config.W_std_in, W_std_out=config.W_std_out)
    summary["limit_probe_every_step"] = dense.test_outputs[:, 0, 0]  # for the figure
    widest = outputs[:, -1]
    summary["widest_mean"] = widest.mean(axis=0)
    summary["widest_se"] = widest.std(axis=0, ddof=1) / np.sqrt(len(widest))
    summary["widest_final_loss"] = float(np.mean([_loss(o, config) for o in widest[:, -1]]))
    return summary


def _loss(outputs, config):
    """The training loss (`train.mse_loss` convention) of outputs on the training and probe inputs."""
    _, y, _, _ = dataset(config)
    return float(np.sum((np.asarray(outputs)[:config.n_train] - y) ** 2) / (2 * y.size))


def agreement(results):
    widths = np.asarray(results["widths"], np.float64)
    entries = []
    for p in PARAMETERIZATIONS:
        entries.append(_exponent_entry(f"feature_change_slope_{p}", widths,
                                       np.asarray(results[f"feature_change_ms_{p}"]),
                                       results[f"feature_change_exponent_{p}"]))
    theory = results["limit_feature_change_ms"]
    value, se, _ = agreement_entries.bootstrap(lambda s: infinite_width_intercept(widths, s.mean(axis=0)),
                                               np.asarray(results["feature_change_ms_mup"]))
    entries.append(agreement_entries.z_score("feature_change_mup_limit", value, theory, se,
                                             max_uncertainty=0.05 * theory))
    log2_rates = np.asarray(results["log2_learning_rates"])
    for p in TRANSFER_PARAMETERIZATIONS:
        theory = results[f"best_lr_exponent_{p}"]

        def exponent(s):
            best = [best_log2_learning_rate(log2_rates, s[:, j]) for j in range(s.shape[1])]
            return float(np.polyfit(np.log2(widths), best, 1)[0])

        value, se, (lo, hi) = agreement_entries.bootstrap(exponent, np.asarray(results[f"lr_losses_{p}"]),
                                                          n_resamples=400)
        entries.append(agreement_entries.entry(
            f"best_learning_rate_slope_{p}", value, theory=theory, uncertainty=se, interval=(lo, hi),
            criterion=f"log-log slope of the best learning rate against width within {LR_SLOPE_TOLERANCE:g} of "
                      f"{theory:g} at both ends of its 95% bootstrap interval",
            passed=abs(lo - theory) <= LR_SLOPE_TOLERANCE and abs(hi - theory) <= LR_SLOPE_TOLERANCE))
    entries.append(agreement_entries.slope(
        "limit_distance_slope", widths, np.asarray(results["limit_distance"]), -0.5, MAX_SLOPE_HALF_WIDTH))
    limit_outputs = np.asarray(results["limit_outputs"])
    entries.append(agreement_entries.max_z(
        "widest_matches_limit", np.asarray(results["widest_mean"])[1:], limit_outputs[1:],
        np.asarray(results["widest_se"])[1:], max_relative_se=0.05,
        what="(step, input, output) triples after step 0"))
    return entries


def leading_exponent(widths, mean_square):
    """alpha of rms = sqrt(mean_square) = A n^alpha (1 + gamma / n): least squares of log rms on
    (log n, 1, 1/n). The 1/n term is the finite-width correction: at width n the initial outputs
    (O(1) under NTK, O(n^-1/2) under muP) enter the first step's residual, which changes the mean
    square by a relative O(1/n) (measured under muP: 2% at n = 128, a plain log-log slope of -0.006
    whose bootstrap interval excludes 0 with 64 seeds)."""
    widths = np.asarray(widths, np.float64)
    design = np.stack([np.log(widths), np.ones_like(widths), 1.0 / widths], axis=1)
    return float(np.linalg.lstsq(design, 0.5 * np.log(mean_square), rcond=None)[0][0])


def infinite_width_intercept(widths, mean_square):
    """L of mean_square = L + B / n, least squares over widths: the mean square extrapolated to
    n = inf. At width n the muP feature change's mean square exceeds the limit's by a relative
    O(1/n) (the O(n^-1/2) initial outputs enter the first residual; measured here by NumPy Monte
    Carlo of the same network, 4000 seeds: +0.18% at n = 512, +0.15% at 2048, and +2.5% at 128
    in a run), which 1024 seeds per width resolve."""
    widths = np.asarray(widths, np.float64)
    design = np.stack([np.ones_like(widths), 1.0 / widths], axis=1)
    return float(np.linalg.lstsq(design, mean_square, rcond=None)[0][0])


def _exponent_entry(name, widths, ms, theory):
    """`leading_exponent` of the mean over seeds of `ms` (seeds x widths), bootstrapped over seeds;
    passes when the 95% interval contains `theory` and its half-width is <= MAX_SLOPE_HALF_WIDTH."""
    value, se, (lo, hi) = agreement_entries.bootstrap(lambda s: leading_exponent(widths, s.mean(axis=0)), ms)
    half = (hi - lo) / 2
    return agreement_entries.entry(
        name, value, theory=theory, uncertainty=se, interval=(lo, hi),
        criterion=f"exponent of n^alpha (1 + gamma/n) fitted to the rms; 95% bootstrap interval contains "
                  f"{theory:g} and its half-width {half:.2g} <= {MAX_SLOPE_HALF_WIDTH:g}",
        passed=lo <= theory <= hi and half <= MAX_SLOPE_HALF_WIDTH)


def plot(results):
    widths = np.asarray(results["widths"])
    steps = np.asarray(results["record_steps"])
    figure = matplotlib.figure.Figure(figsize=(13, 9.5), layout="constrained")
    panels = figure.subplots(2, 2).ravel()
    axes = panels[0]
    for p, color, label in (("ntk", "tab:red", "NTK"), ("mup", "tab:blue", "muP")):
        ms = np.asarray(results[f"feature_change_ms_{p}"])
        rms = np.sqrt(ms)
        axes.errorbar(widths, rms.mean(axis=0), yerr=rms.std(axis=0, ddof=1) / np.sqrt(len(rms)), fmt="o",
                      color=color, capsize=3, label=f"{label} ({len(rms)} nets per width)")
        level = np.sqrt(ms.mean(axis=0))[0] * widths[0] ** -results[f"feature_change_exponent_{p}"]
        axes.plot(widths, level * widths ** results[f"feature_change_exponent_{p}"], "--", color=color,
                  lw=1, label=f"theory: slope {results[f'feature_change_exponent_{p}']:g}")
    axes.axhline(np.sqrt(results["limit_feature_change_ms"]), color="k", lw=1, label="muP limit (theory.mup)")
    axes.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"$\|\Delta h\| / \sqrt{n}$ after one step",
             title=f"hidden features' change, one step at lr {results['learning_rate']:g}")
    _width_ticks(axes, widths)
    axes.legend(fontsize=8)
    axes = panels[1]
    n_train = results["n_train"]
    probe = n_train  # the first probe input, first output
    every = np.asarray(results["limit_probe_every_step"])
    axes.plot(np.arange(len(every)), every, "k-", lw=2, label=r"limit $n=\infty$ (width $d_{in}+d_{out}$ net)")
    means = np.asarray(results["mean_outputs"])
    for i, marker, color in ((0, "s", "tab:orange"), (len(widths) - 1, "o", "tab:blue")):
        axes.plot(steps, means[i, :, probe, 0], marker, color=color, ms=6,
                  label=f"muP n = {widths[i]} (mean of {results['n_seeds']})")
    axes.set(xlabel="gradient-descent step", ylabel="output on a held-out probe input",
             title="trained muP networks and their exact limit")
    axes.legend(fontsize=8)
    axes = panels[2]
    distance = np.asarray(results["limit_distance"])
    mean = distance.mean(axis=0)
    axes.errorbar(widths, mean, yerr=distance.std(axis=0, ddof=1) / np.sqrt(len(distance)), fmt="s",
                  color="tab:blue", capsize=3, label="muP: rms |f_n - f_inf| over steps and inputs")
    level = np.exp(np.mean(np.log(mean) + 0.5 * np.log(widths)))
    axes.plot(widths, level * widths ** -0.5, "k--", lw=1, label="theory: slope -1/2")
    axes.set(xscale="log", yscale="log", xlabel="width n", ylabel="distance to the limit",
             title="convergence to theory.mup")
    _width_ticks(axes, widths)
    axes.legend(fontsize=8)
    _plot_learning_rates(panels[3], results)
    return figure


def _plot_learning_rates(axes, results):
    """Mean final training loss against learning rate per width: muP solid, standard dashed."""
    widths = np.asarray(results["widths"])
    log2_rates = np.asarray(results["log2_learning_rates"])
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(widths)))
    for p, style in (("mup", "-"), ("standard", "--")):
        losses = np.asarray(results[f"lr_losses_{p}"], np.float64)   # (S, W, rates)
        for j, width in enumerate(widths):
            curve = np.mean(np.minimum(losses[:, j], 1e30), axis=0)
            shown = curve < 10 * curve[0]
            axes.plot(2.0 ** log2_rates[shown], curve[shown], style, color=colors[j], lw=1.2,
                      label=f"{'muP' if p == 'mup' else 'standard'} n = {width}"
                      if j in (0, len(widths) - 1) else None)
            best = best_log2_learning_rate(log2_rates, losses[:, j])
            axes.axvline(2.0 ** best, color=colors[j], ls=style, lw=0.5, alpha=0.6)
    axes.set(xscale="log", yscale="log", xlabel="learning rate",
             ylabel="training loss after the sweep's steps (mean over seeds)",
             title="learning-rate transfer: muP (solid) stays, standard (dashed) drifts as 1/n")
    axes.legend(fontsize=8)


def _width_ticks(axes, widths):
    axes.set_xticks(widths, [str(w) for w in widths])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def caption(record):
    """The Markdown caption of the figure, every number read from `record`."""
    results, config = record["results"], record["config"]
    entries = agreement_entries.by_name(record["agreement"])

    def slope(name):
        item = entries[name]
        lo, hi = item["interval"]
        return f"{item['value']:.3f} [{lo:.3f}, {hi:.3f}] (theory {item['theory']:g})"

    widths = results["widths"]
    return (
        f"Linear networks with one hidden layer of width n = {widths[0]} to {widths[-1]} "
        f"(d_in {config['d_in']}, d_out {config['d_out']}, {config['n_train']} training points of a linear "
        f"teacher, {config['n_seeds']} networks per width), trained by full-batch gradient descent at "
        f"learning rate {config['learning_rate']:g} under the NTK parameterization and under muP (Yang & Hu "
        f"2021). Top left: the per-coordinate change of the hidden features on {config['n_probe']} held-out "
        f"probes after one step, ||Δh||/√n: log-log slope {slope('feature_change_slope_ntk')} under NTK "
        f"(features freeze as n grows) and {slope('feature_change_slope_mup')} under muP, whose mean square "
        f"extrapolated to n = ∞ (fitted L + B/n) is "
        f"{entries['feature_change_mup_limit']['value']:.4g} ± {entries['feature_change_mup_limit']['uncertainty']:.2g}, "
        f"the exact limit's {results['limit_feature_change_ms']:.4g}. Top right: a probe output along training, the "
        f"widest muP networks against the exact infinite-width limit of `theory.mup` (a width-(d_in+d_out) "
        f"network with orthogonal initialisation; training loss {results['limit_initial_loss']:.3g} → "
        f"{results['limit_final_loss']:.3g}); max |z| over all recorded points "
        f"{entries['widest_matches_limit']['value']:.2f}. Bottom left: the rms distance of trained muP networks to "
        f"the limit, slope {slope('limit_distance_slope')}. Bottom right: the best learning rate after {config['lr_steps']} steps "
        f"({config['lr_seeds']} networks per width, rates 2^k on a grid of step {config['lr_log2_step']:g} in k) "
        f"has slope {slope('best_learning_rate_slope_mup')} against width under muP and "
        f"{slope('best_learning_rate_slope_standard')} under the standard parameterization (Yang et al. "
        f"2022, Fig. 1: muP's learning rate transfers across width). Swapped slope theories or a limit "
        f"changed by 10% fail (tests/experiments/test_feature_learning.py).")
