"""ntk-convergence: empirical NTK of wide ReLU networks against its closed form (Jacot et al. 2018, Fig. 1).

The network is Jacot, Gabriel & Hongler 2018 ("Neural Tangent Kernel",
Fig. 1): four Dense layers in NTK parameterization, W_std 1 and b_std 0.1 in
every one of them (the readout included), ReLU between them,

    Dense(n) Relu Dense(n) Relu Dense(n) Relu Dense(1),

on inputs on the unit circle, x(g) = (cos g, sin g). Each finite network's
NTK Theta_n(x(g), x0) against the reference point x0 = x(0) = (1, 0) is
measured on a grid of angles at initialisation and after gradient descent on
f*(x) = x1 x2 (training points at random angles on the circle), and held
against the closed form Theta(x(g), x0) of `kernels.stax`.

At g = 0 the closed form is NNGP 0.08125 and NTK 0.2825: with Dense's
1/fan_in, a unit-norm input with 2 features enters with variance 1/2, and
each layer maps q -> q/2 + 0.01 (ReLU halves, plus b_std^2) for the NNGP and
Theta -> q + Theta/2 for the NTK (Jacot et al. 2018, Thm. 1):
NNGP 0.51, 0.265, 0.1425, 0.08125; NTK 0.51, 0.52, 0.4025, 0.2825.

Agreement: the relative deviation |Theta_n - Theta|_2 / |Theta|_2 over the
grid, root-mean-squared over seeds, falls as width^-1/2 both at initialisation and
after training (Jacot et al. 2018, §4: the NTK is deterministic and constant
during training in the limit; its fluctuations at width n are O(n^-1/2),
Hanin & Nica 2020), so its fitted log-log slope should be near -1/2; and the
mean over seeds of the widest networks' Theta_n(x0, x0) at initialisation
lies within a few standard errors of 0.2825.

Theta_n(x, x0) = J(x) J(x0)^T is computed without forming Jacobians: the
gradient g0 of f(x0) in the parameters, then the Jacobian-vector product
J(x) g0 for all grid points at once (memory of two parameter vectors, so
width 10,000 fits). Each piece is a block of seeds of one width, trained
together under `jax.vmap`.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from experiments import train
from experiments.data import circle_points, unit_circle
from kernels import stax


@dataclasses.dataclass(frozen=True)
class Config:
    """One sweep over widths x seeds.

    widths: hidden widths n. n_seeds: networks per width whose NTK is
    measured at initialisation (one JVP each: cheap); the first n_trained of
    them are also trained (the cost), so the init statistics can use many
    more networks than training can afford. seeds_per_piece: networks per
    piece, handled together under `jax.vmap`. n_hidden: hidden Dense layers
    (the readout Dense(1) comes on top). n_train: training points. n_grid:
    angles on [-pi, pi] where the NTK is measured (odd, so that g = 0 is the
    middle one). learning_rate, steps: gradient descent on f*. seed: base seed
    of the training angles and of every network.
    """

    widths: tuple = (64, 128, 256, 512, 1024)
    n_seeds: int = 64
    n_trained: int = 16
    seeds_per_piece: int = 16
    n_hidden: int = 3
    W_std: float = 1.0
    b_std: float = 0.1
    n_train: int = 8
    n_grid: int = 65
    learning_rate: float = 4.0
    steps: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.n_seeds % self.seeds_per_piece:
            raise ValueError(f"n_seeds={self.n_seeds} must be a multiple of "
                             f"seeds_per_piece={self.seeds_per_piece}")
        # every trained block has the same size, so training compiles once per width
        if not (0 < self.n_trained <= self.n_seeds and self.n_trained % self.seeds_per_piece == 0
                and self.n_trained >= 2):
            raise ValueError(f"n_trained={self.n_trained} must be a positive multiple of "
                             f"seeds_per_piece={self.seeds_per_piece}, at least 2 and at most "
                             f"n_seeds={self.n_seeds}")
        if self.n_grid % 2 == 0:
            raise ValueError(f"n_grid must be odd so that g = 0 is on the grid, got {self.n_grid}")

    @classmethod
    def tiny(cls):
        # widths from 128: at 64 the O(1/n^2) part of the NTK's variance still
        # steepens the slope by about 0.1 (see figures/README.md)
        return cls(widths=(128, 256, 512, 1024), n_seeds=64, n_trained=8, seeds_per_piece=8,
                   n_grid=17, steps=10)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        # Jacot et al. 2018, Fig. 1: widths 500 and 10,000, 10 networks each;
        # the widths between give the slope.
        return cls(widths=(500, 1000, 2000, 5000, 10000), n_seeds=10, n_trained=10,
                   seeds_per_piece=5, n_grid=129, steps=250)


@functools.lru_cache(maxsize=None)
def relu_network(width, n_hidden=3, W_std=1.0, b_std=0.1):
    """`n_hidden` x (Dense(width), Relu), then Dense(1); every Dense with W_std, b_std.

    Cached, so that every piece of one width shares `apply_fn` and the
    training engine's compilation.
    """
    hidden = [layer for _ in range(n_hidden)
              for layer in (stax.Dense(width, W_std=W_std, b_std=b_std), stax.Relu())]
    return stax.serial(*hidden, stax.Dense(1, W_std=W_std, b_std=b_std))


def target(x):
    """f*(x) = x1 x2, Jacot et al. 2018's target: `(N, 2) -> (N, 1)`."""
    return x[:, :1] * x[:, 1:2]


def training_set(config):
    """`n_train` points at uniform random angles (seeded) and their targets f*, float32."""
    angles = np.random.default_rng(config.seed).uniform(-np.pi, np.pi, config.n_train)
    x = circle_points(angles)
    return angles, x, target(x)


def reference_grid(config, dtype=np.float32):
    """Angles and points of the grid; the middle one is x0 = (1, 0)."""
    return unit_circle(config.n_grid, dtype=dtype)


def closed_form(config):
    """Infinite-width NNGP and NTK of every grid point against x0: two `(n_grid,)` arrays.

    Evaluated on float64 inputs, so in float64 where JAX's x64 mode is on.
    """
    _, x = reference_grid(config, np.float64)
    x0 = x[config.n_grid // 2:config.n_grid // 2 + 1]
    kernel_fn = relu_network(1, config.n_hidden, config.W_std, config.b_std)[2]
    k = jax.jit(kernel_fn, static_argnames="get")(x, x0, get=("nngp", "ntk"))
    return np.asarray(k.nngp)[:, 0], np.asarray(k.ntk)[:, 0]


def ntk_against(apply_fn, params, x, x0):
    """Empirical NTK Theta(x_i, x0) = J(x_i) . J(x0) of a scalar-output network: `(N,)`.

    The parameter gradient of f(x0), pushed forward through the Jacobian at x
    (`jax.jvp`), so no Jacobian matrix is formed.
    """
    direction = jax.grad(lambda p: jnp.sum(apply_fn(p, x0)))(params)
    _, tangent = jax.jvp(lambda p: apply_fn(p, x), (params,), (direction,))
    return tangent[:, 0]


@functools.lru_cache(maxsize=None)
def init_networks(width, count, n_hidden=3, W_std=1.0, b_std=0.1):
    """Compiled `keys (count, 2) -> params`: `count` networks of `relu_network`, stacked, float32.

    float32 like the inputs, whatever JAX's default float, so a test run
    under x64 trains the same networks as the command line. Cached per
    shape, so every piece (and `function-dynamics`) reuses the compilation;
    it runs once per piece, so it is compiled at XLA's backend optimisation
    level 1, which halves the compile time of the random number generator
    (seconds per width on a CPU) and runs as fast as the default level 3
    here (level 0 runs 6x slower).
    """
    init_fn = relu_network(width, n_hidden, W_std, b_std)[0]

    def init_one(key):
        params = init_fn(key, (-1, 2))[1]
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)

    key = jax.random.PRNGKey(0)
    keys = jax.ShapeDtypeStruct((count,) + key.shape, key.dtype)
    return jax.jit(jax.vmap(init_one)).lower(keys).compile({"xla_backend_optimization_level": 1})


def network_keys(seed, width, seed_indices):
    """PRNG keys `(len(seed_indices), 2)` of networks `seed_indices` of width `width`."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), width)
    return jnp.stack([jax.random.fold_in(base, int(s)) for s in seed_indices])


@functools.lru_cache(maxsize=None)
def _ntk_fn(width, config):
    """`params -> Theta(grid, x0)` for the training engine to record; one object per width,
    so every piece reuses the engine's compilation."""
    apply_fn = relu_network(width, config.n_hidden, config.W_std, config.b_std)[1]
    _, x = reference_grid(config)
    x0 = x[config.n_grid // 2:config.n_grid // 2 + 1]
    return lambda params: ntk_against(apply_fn, params, x, x0)


def pieces(config):
    """`(width, first seed index)` of every block of seeds."""
    return [(width, first) for width in config.widths
            for first in range(0, config.n_seeds, config.seeds_per_piece)]


def run_piece(config, piece):
    """A block of networks: their NTK against x0 at init and, if trained, after training.

    Blocks past `n_trained` go through the same compiled training loop with
    zero steps, so measuring them costs no second compilation.
    """
    width, first = piece
    shape = (width, config.n_hidden, config.W_std, config.b_std)
    seeds = np.arange(first, first + config.seeds_per_piece)
    params = init_networks(width, len(seeds), *shape[1:])(network_keys(config.seed, width, seeds))
    trained = first < config.n_trained
    _, x_train, y_train = training_set(config)
    trajectory = train.train_ensemble(
        relu_network(*shape)[1], params, x_train, y_train, learning_rate=config.learning_rate,
        record_steps=[0, config.steps if trained else 0], ntk_fn=_ntk_fn(width, config))
    ntk = np.asarray(trajectory.ntk)  # (seeds, 2, n_grid)
    result = {"width": width, "seed_index": seeds, "ntk_init": ntk[:, 0]}
    if trained:
        result.update({"ntk_trained": ntk[:, -1], "train_loss": np.asarray(trajectory.train_loss)})
    return result


def relative_deviation(ntk, limit):
    """|ntk - limit|_2 / |limit|_2 over the last axis."""
    return np.linalg.norm(ntk - limit, axis=-1) / np.linalg.norm(limit)


def loglog_slope(widths, values):
    """Least-squares fit log(values) = slope log(widths) + intercept: `(slope, intercept)`."""
    slope, intercept = np.polyfit(np.log(widths), np.log(values), 1)
    return float(slope), float(intercept)


def summarize(config, results):
    gamma, _ = reference_grid(config)
    train_angles, _, y_train = training_set(config)
    nngp, ntk = closed_form(config)
    middle = config.n_grid // 2
    widths = np.asarray(config.widths)
    summary = {"widths": widths, "n_seeds": config.n_seeds, "n_trained": config.n_trained,
               "learning_rate": config.learning_rate, "steps": config.steps, "gamma": gamma,
               "train_gamma": train_angles, "train_y": y_train[:, 0],
               "closed_form_nngp": nngp, "closed_form_ntk": ntk,
               "closed_form_ntk_x0": ntk[middle], "closed_form_nngp_x0": nngp[middle]}
    for when in ("init", "trained"):
        by_width = [np.concatenate([r[f"ntk_{when}"] for r in results
                                    if int(r["width"]) == w and f"ntk_{when}" in r])
                    for w in widths]
        deviation = np.stack([relative_deviation(k, ntk) for k in by_width])  # (W, S)
        # RMS over seeds: its square estimates E|Theta_n - Theta|^2, which is
        # O(1/n) at leading order; the error bar is the delta method's
        # se(mean square) / (2 rms).
        square = deviation ** 2
        rms = np.sqrt(square.mean(axis=1))
        rms_se = square.std(axis=1, ddof=1) / np.sqrt(square.shape[1]) / (2 * rms)
        slope, intercept = loglog_slope(widths, rms)
        summary.update({
            f"ntk_{when}_mean": np.stack([k.mean(axis=0) for k in by_width]),
            f"ntk_{when}_std": np.stack([k.std(axis=0, ddof=1) for k in by_width]),
            f"deviation_{when}": deviation,
            f"deviation_{when}_rms": rms,
            f"deviation_{when}_se": rms_se,
            f"slope_{when}": slope, f"intercept_{when}": intercept})
        if when == "init":
            widest = by_width[-1][:, middle]
            summary["widest_ntk_x0_mean"] = widest.mean()
            summary["widest_ntk_x0_se"] = widest.std(ddof=1) / np.sqrt(len(widest))
            # the same statistic on only the networks that get trained, whose
            # fewer seeds make the trained slope noisier: compare like with like
            same = np.sqrt((deviation[:, :config.n_trained] ** 2).mean(axis=1))
            summary["deviation_init_trained_seeds_rms"] = same
            summary["slope_init_trained_seeds"] = loglog_slope(widths, same)[0]
    # How far each trained network's NTK moved, relative to the limit's norm:
    # O(n^-1/2) at most (Jacot et al. 2018, Thm. 2; Lee et al. 2019, Thm. 2.1),
    # O(1/n) by Dyer & Gur-Ari 2020's conjecture.
    moved = []
    for w in widths:
        trained = [r for r in results if int(r["width"]) == w and "ntk_trained" in r]
        change = np.concatenate([r["ntk_trained"] - r["ntk_init"] for r in trained])
        moved.append(np.linalg.norm(change, axis=-1) / np.linalg.norm(ntk))
    square = np.stack(moved) ** 2
    rms = np.sqrt(square.mean(axis=1))
    slope, intercept = loglog_slope(widths, rms)
    summary.update({"drift_rms": rms,
                    "drift_se": square.std(axis=1, ddof=1) / np.sqrt(square.shape[1]) / (2 * rms),
                    "slope_drift": slope, "intercept_drift": intercept})
    losses = [np.concatenate([r["train_loss"] for r in results
                              if int(r["width"]) == w and "train_loss" in r]) for w in widths]
    summary["train_loss_initial_mean"] = np.asarray([loss[:, 0].mean() for loss in losses])
    summary["train_loss_final_mean"] = np.asarray([loss[:, -1].mean() for loss in losses])
    return summary


def agreement(results):
    mean, se = results["widest_ntk_x0_mean"], results["widest_ntk_x0_se"]
    limit = results["closed_form_ntk_x0"]
    return {
        "slope_init": results["slope_init"],
        "slope_trained": results["slope_trained"],
        "slope_init_same_seeds_as_trained": results["slope_init_trained_seeds"],
        "slope_drift_during_training": results["slope_drift"],
        "theory_slope": -0.5,
        "closed_form_ntk_x0": limit,
        "closed_form_nngp_x0": results["closed_form_nngp_x0"],
        "widest_width": results["widths"][-1],
        "widest_ntk_x0_init_mean": mean,
        "widest_ntk_x0_init_se": se,
        "widest_ntk_x0_init_z": (mean - limit) / se,
        "relative_deviation_init_widest": results["deviation_init_rms"][-1],
        "relative_deviation_trained_widest": results["deviation_trained_rms"][-1],
    }


def plot(results):
    widths = np.asarray(results["widths"])
    gamma = np.asarray(results["gamma"])
    shown = sorted({0, len(widths) - 1})
    figure = matplotlib.figure.Figure(figsize=(13, 3.8), layout="constrained")
    panels = figure.subplots(1, 3)
    markers, colors = ("s", "o"), ("tab:orange", "tab:blue")
    every = max(1, len(gamma) // 24)  # markers on a subset of the grid, for legibility
    trained_title = (f"after training on $f^*=x_1x_2$ (t = {results['steps']}"
                     f" x {results['learning_rate']:g})")
    for axes, when, title, count in ((panels[0], "init", "at initialisation", results["n_seeds"]),
                                     (panels[1], "trained", trained_title, results["n_trained"])):
        axes.plot(gamma, results["closed_form_ntk"], "k-", lw=1.5, label=r"closed form ($n=\infty$)")
        for j, i in enumerate(shown):
            offset = (j - 0.5) * 0.02 * (gamma[-1] - gamma[0])
            axes.errorbar(gamma[::every] + offset, np.asarray(results[f"ntk_{when}_mean"][i])[::every],
                          yerr=np.asarray(results[f"ntk_{when}_std"][i])[::every],
                          fmt=markers[j], ms=4, capsize=2, color=colors[j],
                          label=f"n = {widths[i]} (mean ± sd, {count} seeds)")
        axes.set(xlabel=r"angle $\gamma$ of $x=(\cos\gamma, \sin\gamma)$",
                 ylabel=r"$\Theta(x, x_0)$, $x_0=(1,0)$", title=f"NTK {title}")
        axes.legend(fontsize=7)
    axes = panels[2]
    for key, marker, color, label in (
            ("deviation_init", "o", "tab:blue",
             rf"$\Theta_n(0)$ vs limit ({results['n_seeds']} seeds)"),
            ("deviation_trained", "s", "tab:red",
             rf"$\Theta_n(t)$ vs limit ({results['n_trained']} seeds)"),
            ("drift", "^", "tab:green", r"$\Theta_n(t)$ vs $\Theta_n(0)$, same nets")):
        slope = results[f"slope_{key.replace('deviation_', '')}"]
        intercept = results[f"intercept_{key.replace('deviation_', '')}"]
        axes.errorbar(widths, results[f"{key}_rms"], yerr=results[f"{key}_se"], fmt=marker,
                      capsize=3, color=color, label=f"{label}: slope {slope:.2f}")
        axes.plot(widths, np.exp(intercept) * widths ** slope, "--", color=color, lw=1)
    anchor = np.exp(np.mean(np.log(results["deviation_init_rms"]) + 0.5 * np.log(widths)))
    axes.plot(widths, anchor * widths ** -0.5, "k-", lw=1.5, label="theory: slope $-1/2$")
    axes.set(xscale="log", yscale="log", xlabel="width n",
             ylabel=r"$\|\Theta_n - \cdot\|_2 / \|\Theta_\infty\|_2$ on the grid (rms ± se)",
             title="relative distances vs width (fits dashed)")
    axes.set_xticks(widths, [str(w) for w in widths])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.legend(fontsize=7)
    return figure
