"""infinite-depth-classifiers: kernel classifiers of infinitely wide networks over depth against majority vote, 1-NN, singular kernels and Bayes.

Radhakrishnan, Belkin & Uhler 2022 ("Wide and deep neural networks achieve
consistency for classification", arXiv:2204.14126; PNAS 120, e2208779120, 2023),
through `theory.infinite_depth` (taxonomy, deep_correlation), called in
`summarize`, never while computing the networks' kernels.

Data. Two classes on the unit circle: class +1 (prior `prior` = 0.4) has
(p, 1 - p) ~ Dirichlet(1, 2), class -1 has (p, 1 - p) ~ Dirichlet(2, 1); each
point of the simplex is normalized to the unit circle, so the data's density lives
on a quarter circle, a set of dimension d = 1 (`data_dimension`). The Bayes
classifier predicts +1 iff prior * 2 (1 - p) > (1 - prior) * 2 p, i.e. iff
p < prior; its accuracy is computed by quadrature of the two Beta densities.

Networks. Bias-free fully connected networks of depth L on these unit-norm inputs,
activation phi scaled to E[phi(z)^2] = 1, at infinite width: their normalized
NNGP Sigma_L and NTK Theta_L / Theta_L(1) depend on the inputs' correlation rho
only (`theory.infinite_depth` module docstring: Lee et al. 2018, eq. 4; Jacot et
al. 2018, Thm. 1). The activations (`ACTIVATIONS`; each a widekit layer, see
`layer`): ReLU and erf (closed-form duals: Cho & Saul 2009, Williams 1997),
He_2 / sqrt 2 (dual rho^2), and the three Hermite combinations with duals
(rho + rho^7) / 2, (rho + rho^3) / 2 and (rho + 2 rho^2 + rho^3) / 4 of issue 12,
whose alpha = ln(1 / xi'(0)) / ln xi'(1) is 0.5, 1 and 2.

Measured (`run_piece`, one piece per activation): the two kernels by the layer
recursion itself, in float64, on a grid of correlations (log-spaced in the angle
near rho = 1, uniform in rho beyond an angle of 0.7), interpolated by cubic
splines (of log K against the log angle, and of K against rho) to every
train-train and test-train pair, at `n_depths` geometrically spaced depths up to
a deep depth (ReLU: `relu_depth`; He_2: `nn_depth`; the others the depth at
which xi'(1)^L exceeds 1e4 / (1 - rho) for the closest representable pair,
twice over, so that every pair has left rho = 1). At each depth the kernel
"interpolating" classifier sign(k(x, X) K(X, X)^{-1} y) (ridge-less kernel
regression, the infinitely wide network trained to zero loss) predicts the test
points; a depth where K(X, X) has condition number above 1e12, or some test point
sees every training kernel value below 1e-250 (underflow), is marked invalid.
Also measured: the exponent e of the deep kernel near rho = 1, the least-squares
slope of -log K against log(1 - rho) over 1 - rho in [1e-10, 1e-4] at a depth
where xi'(1)^(-L) is below 1e-20 (3 ln(1e10) / ln xi'(1) layers), and the
kernels at 300 sampled data pairs at a check depth, for `deep_correlation`.

Theory and agreement (`agreement`):
  * exponent_<activation>_<kernel>: the measured exponent against
    `taxonomy(xi, kernel).exponent` (0 for majority vote, alpha for the NNGP and
    1 + alpha for the NTK of a singular dual), within 0.02.
  * deep_correlation: the interpolated kernels at the sampled pairs against
    `deep_correlation(xi, rho, depth, kernel)`, max relative error 1e-6.
  * <activation>_ntk_accuracy: the deep NTK classifier's test accuracy against
    the accuracy of the classifier `taxonomy` names (majority vote; 1-NN; the
    singular kernel classifier sign(sum_i y_i (1 - rho_i)^(-alpha)), alpha the
    NNGP exponent, i.e. ||x - x_i||^(-2 alpha)), |z| with the binomial standard
    error of that accuracy, Šidák over the activations.
  * <activation>_<kernel>_matches_taxonomy (nearest-neighbour and singular
    kinds): the fraction of test points on which the deep classifier predicts
    what the named classifier predicts, at least 0.9.
  * dimension_optimal_*: the activation whose alpha is d / 2 (the Hilbert kernel
    ||x - z||^(-d) of Devroye, Györfi & Krzyżak 1998, consistent in dimension d)
    beats majority vote and 1-NN by a one-sided z over the paired standard error,
    and its excess error over Bayes is at most half of 1-NN's.

Pieces: (activation,) for each name in `activations`.
"""
import dataclasses
import math
import warnings

import matplotlib.figure
import numpy as np
import scipy.linalg
from scipy import integrate, stats
from scipy.interpolate import CubicSpline

from experiments import agreement as agree
from kernels import duals, stax
from theory import infinite_depth

# Hermite weights c_n^2 of the polynomial activations: xi(rho) = sum_n c_n^2 rho^n.
HERMITE_WEIGHTS = {"hermite2": {2: 1.0},
                   "alpha_0.5": {1: 0.5, 7: 0.5},
                   "alpha_1": {1: 0.5, 3: 0.5},
                   "alpha_2": {1: 0.25, 2: 0.5, 3: 0.25}}
ACTIVATIONS = ("relu", "erf") + tuple(HERMITE_WEIGHTS)
# Angles between inputs: below DELTA_FLOOR (1 - rho = 5e-15, where float64 still
# resolves 1 - rho to 0.1%) pairs are treated as at DELTA_FLOOR; the kernel is
# splined in log angle up to DELTA_SPLIT and in rho beyond.
DELTA_FLOOR = 1e-7
DELTA_SPLIT = 0.7
EXPONENT_WINDOW = (1e-13, 1e-7)
MARGINAL_EXPONENT_DEPTH = 100  # xi'(1) = 1 (ReLU): no depth makes pairs leave rho = 1 exponentially
UNDERFLOW = 1e-250
MATCH_FRACTION = 0.9
EXPONENT_TOLERANCE = 0.005
CHECK_TOLERANCE = 1e-5
CHECK_PAIRS = 300
CHECK_DEPTH_MAX = 2000  # deep_correlation is re-run in summarize; ReLU's check stops here


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int = 200
    n_test: int = 2000
    prior: float = 0.4
    data_dimension: int = 1
    activations: tuple = ACTIVATIONS
    ridge: float = 1e-6
    relu_depth: int = 100000
    nn_depth: int = 19
    n_depths: int = 12
    grid_size: int = 600
    seed: int = 0

    @classmethod
    def tiny(cls):
        return cls(n_train=200, n_test=1000, relu_depth=30000, nn_depth=17, n_depths=8)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls(n_train=1000, n_test=10000, relu_depth=1000000, nn_depth=22, n_depths=16, grid_size=1500)


class Dual:
    """A normalized dual xi and its derivative as NumPy closed forms (the experiment's own,
    checked against `theory.infinite_depth.normalized_dual` of `layer(name)` in the tests).

    ``pair(rho)`` gives (xi, xi') at once; calling it gives xi, ``derivative`` xi', so it is
    also a dual that `theory.infinite_depth` accepts.
    """

    def __init__(self, name, pair):
        self.name, self.pair = name, pair

    def __call__(self, rho):
        return self.pair(np.asarray(rho, np.float64))[0]

    def derivative(self, rho):
        return self.pair(np.asarray(rho, np.float64))[1]


def _relu_pair(rho):
    """Degree-1 arc-cosine kernel (Cho & Saul 2009, eq. 6) over E[relu^2] = 1/2, and its derivative."""
    rho = np.clip(rho, -1.0, 1.0)
    angle = np.arccos(rho)
    return (np.sqrt(1 - rho * rho) + (np.pi - angle) * rho) / np.pi, (np.pi - angle) / np.pi


_ERF_NORM = math.asin(2 / 3)


def _erf_pair(rho):
    """Williams 1997: E[erf(u) erf(v)] = (2 / pi) arcsin(2 rho / 3) at unit variances, normalized."""
    rho = np.clip(rho, -1.0, 1.0)
    return np.arcsin(2 * rho / 3) / _ERF_NORM, (2 / 3) / np.sqrt(1 - 4 * rho * rho / 9) / _ERF_NORM


def _polynomial_pair(weights):
    """xi = sum_n w_n rho^n for phi = sum_n sqrt(w_n) He_n / sqrt(n!) (Daniely et al. 2016)."""
    degree = max(weights)
    coef = np.array([weights.get(n, 0.0) for n in range(degree + 1)])
    slope = coef[1:] * np.arange(1, degree + 1)

    def pair(rho):
        return np.polynomial.polynomial.polyval(rho, coef), np.polynomial.polynomial.polyval(rho, slope)
    return pair


def dual(name):
    """The experiment's closed-form normalized dual of activation `name`."""
    if name == "relu":
        return Dual(name, _relu_pair)
    if name == "erf":
        return Dual(name, _erf_pair)
    if name in HERMITE_WEIGHTS:
        return Dual(name, _polynomial_pair(HERMITE_WEIGHTS[name]))
    raise ValueError(f"infinite-depth-classifiers: unknown activation {name!r}; expected one of {ACTIVATIONS}")


def layer(name):
    """The widekit activation layer whose normalized dual is `dual(name)`."""
    if name == "relu":
        return stax.Relu()
    if name == "erf":
        return stax.Erf()
    if name == "hermite2":
        return stax.Hermite(2)
    weights = HERMITE_WEIGHTS[name]
    coef = np.zeros(max(weights) + 1)
    for n, w in weights.items():
        coef[:n + 1] += math.sqrt(w) * np.array(duals.hermite_polynomial_coefficients(n))
    return stax.Polynomial(coef)


# --- data and the reference classifiers ---------------------------------------------------------

def sample(n, prior, rng):
    """n labelled points: labels +-1 (P(+1) = prior), the simplex coordinate p and the angle
    theta in [0, pi/2] of (p, 1 - p) / ||(p, 1 - p)||."""
    labels = np.where(rng.random(n) < prior, 1.0, -1.0)
    simplex = np.where(labels[:, None] > 0, rng.dirichlet((1.0, 2.0), n), rng.dirichlet((2.0, 1.0), n))
    p = simplex[:, 0]
    return np.arctan2(simplex[:, 1], simplex[:, 0]), labels, p


def problem(config):
    """Training and test sets, the same for every piece: (theta, y, p) for each."""
    rng = np.random.default_rng([config.seed, 12])
    return sample(config.n_train, config.prior, rng), sample(config.n_test, config.prior, rng)


def bayes_accuracy(prior):
    """Accuracy of the Bayes classifier, by quadrature of max(prior f_+, (1 - prior) f_-) over p,
    with f_+ = 2 (1 - p) (Beta(1, 2)) and f_- = 2 p (Beta(2, 1))."""
    value, _ = integrate.quad(lambda p: max(prior * 2 * (1 - p), (1 - prior) * 2 * p), 0, 1, points=[prior],
                              epsabs=1e-13, epsrel=1e-13)
    return value


def nearest_neighbor_accuracy(prior):
    """Asymptotic 1-NN accuracy 1 - E[2 eta (1 - eta)] (Cover & Hart 1967), eta = P(+1 | p)."""
    def integrand(p):
        plus, minus = prior * 2 * (1 - p), (1 - prior) * 2 * p
        return (plus * plus + minus * minus) / (plus + minus)
    return integrate.quad(integrand, 0, 1, epsabs=1e-13, epsrel=1e-13)[0]


def bayes_predictions(p, prior):
    return np.where(p < prior, 1.0, -1.0)


def majority_predictions(y_train, n_test):
    return np.full(n_test, 1.0 if y_train.sum() >= 0 else -1.0)


def nearest_neighbor_predictions(theta_test, theta_train, y_train):
    return y_train[np.argmin(np.abs(theta_test[:, None] - theta_train[None, :]), axis=1)]


def singular_predictions(theta_test, theta_train, y_train, exponent):
    """sign(sum_i y_i (1 - rho_i)^(-exponent)) = sign(sum_i y_i ||x - x_i||^(-2 exponent)),
    weights formed in logs (1 - rho = 2 sin^2(angle / 2), exact for close pairs)."""
    angle = np.maximum(np.abs(theta_test[:, None] - theta_train[None, :]), DELTA_FLOOR)
    log_weight = -exponent * np.log(2 * np.sin(angle / 2) ** 2)
    log_weight -= log_weight.max(axis=1, keepdims=True)
    return np.where(np.exp(log_weight) @ y_train >= 0, 1.0, -1.0)


# --- the deep kernels ---------------------------------------------------------------------------

def deep_kernels(xi, rho, depths):
    """Normalized NNGP Sigma_L and NTK Theta_L / Theta_L(1) at each depth in `depths`.

    Sigma_l = xi(Sigma_{l-1}), Theta_l = Sigma_l + xi'(Sigma_{l-1}) Theta_{l-1}, from
    Sigma_0 = Theta_0 = rho (Jacot et al. 2018, Thm. 1); Theta_l(1) = 1 + xi'(1) Theta_{l-1}(1)
    is carried as w_l = 1 / Theta_l(1) so that nothing overflows.

    Returns:
      dict depth -> (nngp, ntk), arrays shaped like `rho`.
    """
    wanted = set(int(d) for d in depths)
    sigma, ratio, weight = np.array(rho, np.float64), np.array(rho, np.float64), 1.0
    slope_at_one = float(xi.pair(np.ones(1))[1][0])
    out = {}
    if 0 in wanted:
        out[0] = (sigma.copy(), ratio.copy())
    for depth in range(1, max(wanted) + 1):
        value, slope = xi.pair(sigma)
        new_weight = weight / (weight + slope_at_one)
        ratio = value * new_weight + slope * ratio * (new_weight / weight)
        sigma, weight = value, new_weight
        if depth in wanted:
            out[depth] = (sigma.copy(), ratio.copy())
    return out


def deep_depth(name, config):
    """The deepest depth computed for activation `name` (module docstring)."""
    if name == "relu":
        return config.relu_depth
    if name == "hermite2":
        return config.nn_depth
    slope_at_one = float(dual(name).pair(np.ones(1))[1][0])
    floor = 2 * math.sin(DELTA_FLOOR / 2) ** 2
    return int(math.ceil(2 * math.log(1e4 / floor) / math.log(slope_at_one)))


def exponent_depth(name):
    """Depth at which the exponent is measured: xi'(1)^L = (1e13)^3, three times the depth at which
    the window's closest pair leaves rho = 1; `MARGINAL_EXPONENT_DEPTH` where xi'(1) = 1."""
    slope_at_one = float(dual(name).pair(np.ones(1))[1][0])
    if slope_at_one <= 1 + 1e-12:
        return MARGINAL_EXPONENT_DEPTH
    return int(math.ceil(3 * math.log(1 / EXPONENT_WINDOW[0]) / math.log(slope_at_one)))


def checkpoints(name, config):
    """`n_depths` geometrically spaced depths from 1 to the deep depth."""
    return np.unique(np.geomspace(1, deep_depth(name, config), config.n_depths).round().astype(int))


class Grid:
    """Correlations at which the recursion runs, and the splines that carry its values to any angle."""

    def __init__(self, size):
        # angles whose cosines are what the recursion sees (arccos of the float rho, so that the
        # spline's abscissa and the correlation agree to the last bit near rho = 1)
        near_rho = np.unique(np.cos(np.geomspace(DELTA_FLOOR, DELTA_SPLIT, size)))[::-1]
        self.near = np.arccos(near_rho)
        self.far = np.linspace(0.0, math.cos(DELTA_SPLIT), size // 2)  # correlations
        self.rho = np.concatenate([near_rho, self.far])

    def interpolate(self, values, angle):
        """The kernel at the angles `angle` (any shape) from its `values` at `self.rho`."""
        near_values, far_values = values[:self.near.size], values[self.near.size:]
        angle = np.maximum(angle, DELTA_FLOOR)
        out = np.empty_like(angle)
        is_near = angle <= DELTA_SPLIT
        log_near = np.log(np.maximum(near_values, 1e-300))
        out[is_near] = np.exp(CubicSpline(np.log(self.near), log_near)(np.log(angle[is_near])))
        out[~is_near] = CubicSpline(self.far, far_values)(np.cos(angle[~is_near]))
        return out


def kernel_predictions(k_train, k_test, y_train, ridge):
    """The signs of kernel ridge regression with a tiny `ridge` (the normalized kernels have unit
    diagonal), and whether the depth is usable: no test point may see every training kernel value
    below `UNDERFLOW`."""
    if not np.all(k_test.max(axis=1) > UNDERFLOW):
        return np.zeros(k_test.shape[0]), False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        coef = scipy.linalg.solve(k_train + ridge * np.eye(len(k_train)), y_train, assume_a="sym")
    return np.where(k_test @ coef >= 0, 1.0, -1.0), True


def pieces(config):
    unknown = [a for a in config.activations if a not in ACTIVATIONS]
    if unknown:
        raise ValueError(f"infinite-depth-classifiers: unknown activations {unknown}; expected names from "
                         f"{ACTIVATIONS}")
    return [(name,) for name in config.activations]


def run_piece(config, piece):
    (name,) = piece
    xi = dual(name)
    (theta_train, y_train, _), (theta_test, _, _) = problem(config)
    grid = Grid(config.grid_size)
    depths = checkpoints(name, config)
    kernels = deep_kernels(xi, grid.rho, depths)
    angle_train = np.abs(theta_train[:, None] - theta_train[None, :])
    angle_test = np.abs(theta_test[:, None] - theta_train[None, :])
    out = {"depths": depths}
    for k, kind in enumerate(("nngp", "ntk")):
        predictions, usable = [], []
        for depth in depths:
            values = kernels[int(depth)][k]
            k_train = grid.interpolate(values, angle_train)
            np.fill_diagonal(k_train, 1.0)
            pred, ok = kernel_predictions(k_train, grid.interpolate(values, angle_test), y_train, config.ridge)
            predictions.append(pred)
            usable.append(ok)
        out[f"{kind}_predictions"] = np.array(predictions, np.int8)
        out[f"{kind}_usable"] = np.array(usable)
    # the kernel near rho = 1, for its exponent
    rho = 1 - np.geomspace(*EXPONENT_WINDOW, 25)
    eps = 1 - rho  # exactly what the recursion sees
    depth = exponent_depth(name)
    nngp, ntk = deep_kernels(xi, rho, [depth])[depth]
    out.update({"exponent_eps": eps, "exponent_depth": depth, "exponent_nngp": nngp, "exponent_ntk": ntk})
    # interpolated kernels at sampled data pairs, for deep_correlation
    rng = np.random.default_rng([config.seed, 34])
    rows, cols = rng.integers(0, config.n_test, CHECK_PAIRS), rng.integers(0, config.n_train, CHECK_PAIRS)
    check_rho = np.cos(np.maximum(angle_test[rows, cols], DELTA_FLOOR))
    check_angle = np.arccos(check_rho)  # the angle of the float correlation deep_correlation is given
    check_depth = int(min(depths[-1], CHECK_DEPTH_MAX))
    check = deep_kernels(xi, grid.rho, [check_depth])[check_depth]
    out.update({"check_depth": check_depth, "check_rho": check_rho,
                "check_nngp": grid.interpolate(check[0], check_angle),
                "check_ntk": grid.interpolate(check[1], check_angle)})
    return out


# --- theory, agreement, figure ------------------------------------------------------------------

def _named_predictions(tax, data):
    """The predictions of the classifier a `Taxonomy` names (None for "other")."""
    (theta_train, y_train, _), (theta_test, _, _) = data
    if tax.kind == "majority_vote":
        return majority_predictions(y_train, theta_test.size)
    if tax.kind == "nearest_neighbor":
        return nearest_neighbor_predictions(theta_test, theta_train, y_train)
    if tax.kind == "singular":
        return singular_predictions(theta_test, theta_train, y_train, tax.exponent)
    return None


def _log_error(measured, theory):
    """max over pairs of |log measured - log theory| / (1 + |log theory|); pairs where the theory
    underflows must be below 1e-200 in `measured` too."""
    measured, theory = np.asarray(measured, np.float64), np.asarray(theory, np.float64)
    live = theory > UNDERFLOW
    if np.any(~live & (measured > 1e-200)) or np.any(measured[live] <= 0):
        return math.inf
    if not np.any(live):
        return 0.0
    log_theory = np.log(theory[live])
    return float(np.max(np.abs(np.log(measured[live]) - log_theory) / (1 + np.abs(log_theory))))


def summarize(config, results):
    data = problem(config)
    (theta_train, y_train, _), (theta_test, y_test, p_test) = data
    accuracy = lambda pred: float(np.mean(pred == y_test))  # noqa: E731
    optimal_alpha = config.data_dimension / 2
    references = {"bayes": bayes_predictions(p_test, config.prior),
                  "majority_vote": majority_predictions(y_train, theta_test.size),
                  "nearest_neighbor": nearest_neighbor_predictions(theta_test, theta_train, y_train),
                  "hilbert": singular_predictions(theta_test, theta_train, y_train, optimal_alpha)}
    out = {"activations": list(config.activations), "n_test": config.n_test,
           "bayes_population": bayes_accuracy(config.prior),
           "nearest_neighbor_population": nearest_neighbor_accuracy(config.prior),
           "optimal_alpha": optimal_alpha, "deep_correlation_error": 0.0, "dimension_optimal": None}
    out.update({f"{name}_test": accuracy(pred) for name, pred in references.items()})
    for name, r in zip(config.activations, results):
        xi = dual(name)
        out[f"{name}_depths"] = np.asarray(r["depths"])
        eps = np.asarray(r["exponent_eps"])
        out[f"{name}_exponent_eps"] = eps
        out[f"{name}_exponent_depth"] = int(r["exponent_depth"])
        for kernel in ("nngp", "ntk"):
            tax = infinite_depth.taxonomy(xi, kernel)
            key = f"{name}_{kernel}"
            predictions = np.asarray(r[f"{kernel}_predictions"], np.float64)
            usable = np.asarray(r[f"{kernel}_usable"], bool)
            named = _named_predictions(tax, data)
            deep = int(np.flatnonzero(usable)[-1])
            out.update({
                f"{key}_kind": tax.kind, f"{key}_alpha": tax.alpha,
                f"{key}_accuracy": [accuracy(p) if ok else None for p, ok in zip(predictions, usable)],
                f"{key}_deep_depth": int(r["depths"][deep]),
                f"{key}_deep_accuracy": accuracy(predictions[deep]),
                f"{key}_named_accuracy": None if named is None else accuracy(named),
                f"{key}_named_match": None if named is None else float(np.mean(predictions[deep] == named)),
                f"{key}_exponent_theory": tax.exponent,
                f"{key}_exponent_kernel": np.asarray(r[f"exponent_{kernel}"])})
            values = np.asarray(r[f"exponent_{kernel}"])
            out[f"{key}_exponent"] = (-agree.log_log_slope(eps, values) if np.all(values > 0) else None)
            theory = infinite_depth.deep_correlation(xi, np.asarray(r["check_rho"]), int(r["check_depth"]), kernel)
            out["deep_correlation_error"] = max(out["deep_correlation_error"],
                                                _log_error(r[f"check_{kernel}"], theory))
            if (kernel == "nngp" and tax.kind == "singular" and out["dimension_optimal"] is None
                    and abs(tax.alpha - optimal_alpha) <= 1e-6):
                out["dimension_optimal"] = name
    optimal = out["dimension_optimal"]
    if optimal is not None:
        r = results[list(config.activations).index(optimal)]
        deep = int(np.flatnonzero(np.asarray(r["nngp_usable"], bool))[-1])
        pred = np.asarray(r["nngp_predictions"], np.float64)[deep]
        out["dimension_optimal_accuracy"] = accuracy(pred)
        for name in ("majority_vote", "nearest_neighbor", "bayes"):
            # paired standard error of the difference of two accuracies on the same test points
            diff = (pred == y_test).astype(float) - (references[name] == y_test)
            out[f"dimension_optimal_minus_{name}"] = float(diff.mean())
            out[f"dimension_optimal_minus_{name}_se"] = float(diff.std(ddof=1) / math.sqrt(diff.size))
    return out


def _binomial_se(accuracy, n):
    return math.sqrt(max(accuracy * (1 - accuracy), 1 / n) / n)


def _beats(name, value, se, threshold):
    """value > threshold * se: a one-sided test that a difference of accuracies is positive."""
    return agree.entry(name, value, theory=0.0, uncertainty=se, interval=(value - agree.Z95 * se,
                                                                          value + agree.Z95 * se),
                       criterion=f"difference / paired se = {value / se:.2f} > {threshold:.3g} (one-sided)",
                       passed=value > threshold * se)


def agreement(results):
    names = results["activations"]
    n = results["n_test"]
    entries = []
    for name in names:
        for kernel in ("nngp", "ntk"):
            key = f"{name}_{kernel}"
            theory = results[f"{key}_exponent_theory"]
            if theory is not None and math.isfinite(theory):
                measured = results[f"{key}_exponent"]
                entries.append(agree.absolute(
                    f"exponent_{key}", math.inf if measured is None else measured, EXPONENT_TOLERANCE,
                    theory=theory, note=f" (slope of -log K against log(1 - rho), 1 - rho in "
                                        f"[{EXPONENT_WINDOW[0]:g}, {EXPONENT_WINDOW[1]:g}], depth "
                                        f"{results[f'{name}_exponent_depth']})"))
    entries.append(agree.absolute("deep_correlation", results["deep_correlation_error"], CHECK_TOLERANCE,
                                  note=" (max |log K - log deep_correlation| / (1 + |log K|) over "
                                       f"{CHECK_PAIRS} data pairs, every activation and kernel)"))
    z_tests = len(names) + 3
    for name in names:
        key = f"{name}_ntk"
        named = results[f"{key}_named_accuracy"]
        if named is None:
            entries.append(agree.entry(f"{key}_accuracy", results[f"{key}_deep_accuracy"],
                                       criterion="taxonomy names no classifier", passed=False))
            continue
        entries.append(agree.z_score(f"{key}_accuracy", results[f"{key}_deep_accuracy"], named,
                                     _binomial_se(named, n), n_tests=z_tests))
    for name in names:
        for kernel in ("nngp", "ntk"):
            key = f"{name}_{kernel}"
            match = results[f"{key}_named_match"]
            entries.append(agree.entry(
                f"{key}_matches_{results[f'{key}_kind']}", math.nan if match is None else match,
                theory=1.0, criterion=f"fraction of test points predicted as the named classifier does, at depth "
                                      f"{results[f'{key}_deep_depth']}, >= {MATCH_FRACTION:g}",
                passed=match is not None and match >= MATCH_FRACTION))
    optimal = results["dimension_optimal"]
    if optimal is None:
        entries.append(agree.entry("dimension_optimal", math.nan, theory=results["optimal_alpha"],
                                   criterion="an activation with alpha = d / 2", passed=False))
        return entries
    threshold = agree.sidak_threshold(z_tests)
    entries.append(agree.z_score("dimension_optimal_nngp_vs_bayes", results["dimension_optimal_accuracy"],
                                 results["bayes_test"], _binomial_se(results["bayes_test"], n), n_tests=z_tests))
    for name in ("majority_vote", "nearest_neighbor"):
        entries.append(_beats(f"dimension_optimal_nngp_beats_{name}", results[f"dimension_optimal_minus_{name}"],
                              results[f"dimension_optimal_minus_{name}_se"], threshold))
    return entries


LABELS = {"relu": "ReLU", "erf": "erf", "hermite2": "He2 (rho^2)", "alpha_0.5": "(rho+rho^7)/2",
          "alpha_1": "(rho+rho^3)/2", "alpha_2": "(rho+2rho^2+rho^3)/4"}


def plot(results):
    figure = matplotlib.figure.Figure(figsize=(16, 4.8))
    names = results["activations"]
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    lines = (("bayes_test", "Bayes", "k", "-"), ("hilbert_test", f"||x-z||^-{2 * results['optimal_alpha']:g}", "k", ":"),
             ("nearest_neighbor_test", "1-NN", "0.5", "--"), ("majority_vote_test", "majority vote", "0.5", ":"))
    for k, kernel in enumerate(("ntk", "nngp")):
        axes = figure.add_subplot(1, 3, k + 1)
        for name in names:
            acc = [np.nan if a is None else a for a in results[f"{name}_{kernel}_accuracy"]]
            axes.plot(results[f"{name}_depths"], acc, "o-", ms=3, color=colors[name], label=LABELS.get(name, name))
        for key, label, color, style in lines:
            axes.axhline(results[key], color=color, ls=style, lw=1, label=label)
        low = min(results["majority_vote_test"], *(a for name in names for a in results[f"{name}_{kernel}_accuracy"]
                                                     if a is not None))
        axes.set(xscale="log", xlabel="depth L", ylabel="test accuracy", ylim=(low - 0.07, None),
                 title=f"{kernel.upper()} kernel classifier ({results['n_test']} test points)")
        axes.legend(fontsize=6.5, loc="lower center", ncol=3)
    axes = figure.add_subplot(1, 3, 3)
    for name in names:
        for kernel, marker in (("ntk", "o"), ("nngp", "s")):
            values = np.asarray(results[f"{name}_{kernel}_exponent_kernel"], np.float64)
            theory = results[f"{name}_{kernel}_exponent_theory"]
            if theory is None or not math.isfinite(theory) or not np.all(values > 0):
                continue
            eps = np.asarray(results[f"{name}_exponent_eps"])
            axes.plot(eps, values / values[-1], marker, ms=3, color=colors[name], mfc="none" if kernel == "nngp" else None,
                      label=f"{LABELS.get(name, name)} {kernel.upper()}, e = {theory:.3g}")
            axes.plot(eps, (eps / eps[-1]) ** -theory, "-", lw=0.8, color=colors[name])
    axes.set(xscale="log", yscale="log", xlabel="1 - rho", ylabel="K_L(rho) / K_L(rho_max)",
             title="deep kernels near rho = 1; lines: (1 - rho)^-e of taxonomy")
    axes.legend(fontsize=6)
    for axes in figure.axes:
        axes.title.set_fontsize(10)
    figure.tight_layout()
    return figure


def caption(record):
    """The figure's caption, every number from the record."""
    res, cfg = record["results"], record["config"]
    names = res["activations"]
    deep = "; ".join(f"{LABELS.get(n, n)} {res[f'{n}_ntk_kind'].replace('_', ' ')}: NTK "
                     f"{res[f'{n}_ntk_deep_accuracy']:.3f} at L = {res[f'{n}_ntk_deep_depth']}, NNGP "
                     f"{res[f'{n}_nngp_deep_accuracy']:.3f}" for n in names)
    text = (
        f"Two classes on the unit circle, (p, 1 - p) / ||(p, 1 - p)|| with (p, 1 - p) ~ Dirichlet(1, 2) for "
        f"class +1 (prior {cfg['prior']:g}) and Dirichlet(2, 1) for class -1; {cfg['n_train']} training and "
        f"{cfg['n_test']} test points. Left and middle: test accuracy of the kernel classifier "
        f"sign(k(x, X) (K + {cfg['ridge']:g} I)^-1 y) of the infinitely wide, bias-free network of depth L "
        "(NTK: trained to convergence; NNGP: the Gaussian-process mean), kernels by the layer recursion "
        f"(Radhakrishnan, Belkin & Uhler 2022). Reference lines on the same test points: Bayes "
        f"{res['bayes_test']:.3f} (population {res['bayes_population']:.3f}, by quadrature), the singular "
        f"kernel ||x - z||^-{2 * res['optimal_alpha']:g} (the Hilbert kernel of the data's dimension d = "
        f"{cfg['data_dimension']}) {res['hilbert_test']:.3f}, 1-NN {res['nearest_neighbor_test']:.3f} "
        f"(population {res['nearest_neighbor_population']:.3f}), majority vote {res['majority_vote_test']:.3f}. "
        f"At the deepest depth: {deep}. Right: the deep normalized kernels near rho = 1 against "
        "(1 - rho)^-e with e from `theory.infinite_depth.taxonomy` (alpha for the NNGP, 1 + alpha for the "
        "NTK of a singular dual).")
    if res.get("dimension_optimal"):
        text += (f" The dual with alpha = d / 2, {LABELS.get(res['dimension_optimal'], res['dimension_optimal'])}, "
                 f"reaches {res['dimension_optimal_accuracy']:.3f} with its NNGP, "
                 f"{res['dimension_optimal_minus_bayes']:+.3f} from Bayes. Its NTK at these depths is not yet "
                 "that classifier: pairs closer than 1 - rho ~ 1 / L see the steeper (1 - rho)^-(1 + alpha), "
                 "so it follows the singular kernel of exponent 1 + alpha, close to 1-NN.")
    return text
