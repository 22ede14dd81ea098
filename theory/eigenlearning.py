"""Eigenlearning: closed-form risk of kernel ridge and random-feature regression.

Kernel ridge regression (KRR): Simon, Dickens, Karkada & DeWeese 2021/2023,
"The eigenlearning framework" (TMLR), and Bordelon, Canatar & Pehlevan 2020,
"Spectrum dependent learning curves in kernel regression" (ICML); random
features (RF): Simon, Karkada, Ghosh & Belkin 2023, "More is better in modern
machine learning" (arXiv:2311.14646, §4, the "RF eigenframework").

Conventions (widekit issue 6):
  * K(x, x') = sum_i eigenvalues[i] phi_i(x) phi_i(x'), phi_i orthonormal
    under the data distribution;
  * target f(x) = sum_i v_i phi_i(x), target_power[i] = v_i^2; labels carry
    noise of variance `noise`, on training *and* test labels, so test_mse is
    E[(y - f_hat(x))^2] on a fresh noisy example (= the noiseless-target MSE
    plus `noise`, and equal to it when noise = 0);
  * `ridge` is delta in f_hat = K(x, X) (K(X, X) + delta I)^{-1} y on n
    samples;
  * random features: phi_RF(x) = k^{-1/2} Z diag(eigenvalues)^{1/2} phi(x)
    with Z a (k, M) standard Gaussian matrix, so their kernel
    phi_RF(x) . phi_RF(x') tends to K as k grows; regression on them with the
    same ridge delta.

KRR eigenframework. kappa > 0 solves
    sum_i L_i + delta / kappa = n,     L_i = lambda_i / (lambda_i + kappa),
the learnabilities L_i; with q = sum_i L_i^2 and the overfitting coefficient
E_0 = n / (n - q),
    test_mse  = E_0 (sum_i (1 - L_i)^2 v_i^2 + noise),
    train_mse = (delta / (n kappa))^2 test_mse.

RF eigenframework (Simon et al. 2023, §4; derivation below in these terms).
kappa (the effective ridge the eigenmodes see; L_i = lambda_i/(lambda_i+kappa))
and gamma (the effective ridge of the n-sample regression on the k features)
solve
    n - delta / gamma = z = k (1 - gamma / kappa),   z = sum_i L_i,
and with q = sum_i L_i^2,
    E_0       = n / (n - T),   T = z - (k - z)(z - q) / (k - q),
    test_mse  = E_0 (sum_i (1 - L_i)^2 v_i^2
                     + (z - q)/(k - q) sum_i L_i (1 - L_i) v_i^2 + noise),
    train_mse = (delta / (n gamma))^2 test_mse.
As k -> inf, gamma -> kappa, T -> q and the KRR eigenframework is recovered.

Derivation of the RF form (deterministic equivalents, Gaussian features).
Write A = k^{-1/2} Z Lambda^{1/2} (k x M) and S = A^T A. For fixed Z, RF
regression is ridge regression on Gaussian features of covariance A A^T with
target y = theta* . phi_RF + (independent residual), so the KRR framework
applies with ridge gamma: tr(AA^T (AA^T + gamma)^{-1}) + delta/gamma = n,
E_0 = n / (n - tr((AA^T)^2 (AA^T + gamma)^{-2})), and bias plus unexplained
target power = gamma^2 v^T (S + gamma)^{-2} v. Over Z (Wishart with k
samples), gamma (S + gamma)^{-1} ~ kappa (Lambda + kappa)^{-1} with
gamma = kappa (1 - z / k). Hence tr(S (S + gamma)^{-1}) ~ z;
tr(S^2 (S + gamma)^{-2}) = (1 + gamma d/dgamma) tr(S (S + gamma)^{-1}) ~ T
using d kappa / d gamma = 1 / (1 - q / k); and
gamma^2 v^T (S + gamma)^{-2} v = -gamma^2 d/dgamma [v^T (S + gamma)^{-1} v],
with v^T (S + gamma)^{-1} v ~ (kappa / gamma) sum_i v_i^2 / (lambda_i + kappa),
gives the two bias sums above.

Ridgeless limits (delta = 0) are taken as delta -> 0+: when n is at least the
number of usable directions (nonzero eigenvalues, and for RF also k), gamma
-> 0 with delta / gamma -> n - z, and the model fits n samples by least
squares (E_0 = n / (n - z), infinite at the interpolation threshold).
"""
import dataclasses

import numpy as np
from scipy.optimize import brentq

from theory import arguments

__all__ = ["RiskEstimate", "kernel_ridge_risk", "random_feature_risk"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays
class RiskEstimate:
    """Eigenframework prediction for one (spectrum, target, n, k, ridge, noise).

    Attributes:
      test_mse: expected MSE on a fresh example with a noisy label.
      train_mse: expected MSE on the n training examples.
      kappa: effective regularization: learnabilities are
        lambda_i / (lambda_i + kappa). For KRR it solves
        sum_i L_i + ridge / kappa = n.
      learnabilities: (M,) array L_i, the expected fraction of the target's
        coefficient on phi_i that is learned.
      gamma: effective ridge of the n-sample regression, with
        sum_i L_i + ridge / gamma = n and train_mse = (ridge / (n gamma))^2
        test_mse. Equal to kappa for KRR; kappa (1 - sum_i L_i / k) for k
        random features.
      overfitting_coefficient: E_0 = test_mse / (bias + noise), >= 1.
    """
    test_mse: float
    train_mse: float
    kappa: float
    learnabilities: np.ndarray
    gamma: float
    overfitting_coefficient: float


def _check_spectrum(where, eigenvalues, target_power):
    lam = arguments.real_values(where, "eigenvalues", eigenvalues, low=0)
    v2 = arguments.real_values(where, "target_power", target_power, low=0)
    if lam.ndim != 1:
        raise arguments.argument_error(where, "eigenvalues", "a 1-D array (M,)", f"shape {lam.shape}")
    if v2.shape != lam.shape:
        raise arguments.argument_error(where, "target_power", f"of the shape of eigenvalues {lam.shape}",
                                       f"shape {v2.shape}")
    if not np.any(lam > 0):
        raise arguments.argument_error(where, "eigenvalues", "at least one positive value", "all zeros")
    return lam, v2


def _check_scalar(where, name, value, *, positive, allow_inf=False):
    return arguments.scalar(where, name, value, low=0, low_open=positive, allow_inf=allow_inf)


def _learnabilities(lam, kappa):
    if kappa == 0.0:
        return (lam > 0).astype(np.float64)
    return lam / (lam + kappa)


def _root_in_log(f, lo, hi):
    """Root of a decreasing f on (lo, hi) with f(lo) > 0 > f(hi), in log-space."""
    s = brentq(lambda s: f(np.exp(s)), np.log(lo), np.log(hi), xtol=1e-14, rtol=1e-15, maxiter=500)
    return float(np.exp(s))


def _bracket_below(f, hi):
    """A point lo < hi with f(lo) > 0, for f decreasing with f(0+) > 0."""
    lo = hi
    for _ in range(400):
        lo *= 0.1
        if f(lo) > 0:
            return lo
    raise ValueError("could not bracket the effective regularization (spectrum too degenerate).")


def _estimate(lam, v2, n, k, noise, kappa, gamma, ridge_over_gamma, k_minus_z=None, dof=None):
    """Assemble the risk estimate; k = inf is KRR. k_minus_z: k - z computed
    without cancellation (defaults to k - z); dof: T when known exactly (the
    number of fitted directions of ridgeless least squares)."""
    L = _learnabilities(lam, kappa)
    z, z_minus_q = L.sum(), np.sum(L * (1 - L))
    if np.isinf(k):
        mixing, t = 0.0, z - z_minus_q
    else:
        k_minus_z = k - z if k_minus_z is None else k_minus_z
        k_minus_q = k_minus_z + z_minus_q
        mixing = 0.0 if k_minus_q <= 0 else z_minus_q / k_minus_q
        t = z - k_minus_z * mixing
    t = t if dof is None else dof
    e0 = np.inf if n <= t else n / (n - t)
    bias = np.sum((1 - L) ** 2 * v2) + mixing * np.sum(L * (1 - L) * v2)
    numerator = bias + noise
    test = 0.0 if numerator == 0 else e0 * numerator
    if ridge_over_gamma == 0 or np.isinf(test):
        # Interpolation (train 0), or least squares exactly at n = z, where
        # (n - z)^2 / n^2 * n / (n - z) -> 0.
        train = 0.0
    else:
        train = (ridge_over_gamma / n) ** 2 * test
    return RiskEstimate(test_mse=float(test), train_mse=float(train), kappa=float(kappa),
                        learnabilities=L, gamma=float(gamma), overfitting_coefficient=float(e0))


def kernel_ridge_risk(eigenvalues, target_power, n, ridge=0.0, noise=0.0):
    """Predicted test and train MSE of kernel ridge regression on n samples.

    Simon et al. 2023 (eigenlearning, TMLR), the KRR eigenframework: their
    equations for kappa, the learnabilities L_i, the overfitting coefficient
    E_0 and the test and train risk (the same estimate as Bordelon et al.
    2020's learning curve and Canatar, Bordelon & Pehlevan 2021); formulas in
    the module docstring.

    Args:
      eigenvalues: (M,) kernel eigenvalues lambda_i >= 0 (at least one > 0).
      target_power: (M,) squared target coefficients v_i^2 >= 0.
      n: number of training samples, > 0 (real n allowed).
      ridge: delta >= 0 in (K + delta I)^{-1}.
      noise: label-noise variance >= 0.

    Returns:
      RiskEstimate (gamma == kappa).

    Raises:
      ValueError: bad shapes or values.
    """
    where = "kernel_ridge_risk"
    lam, v2 = _check_spectrum(where, eigenvalues, target_power)
    n = _check_scalar(where, "n", n, positive=True)
    ridge = _check_scalar(where, "ridge", ridge, positive=False)
    noise = _check_scalar(where, "noise", noise, positive=False)
    rank = np.count_nonzero(lam)

    def excess(kappa):  # decreasing in kappa
        return np.sum(lam / (lam + kappa)) + ridge / kappa - n

    if ridge == 0 and rank <= n:
        # Least squares on the `rank` usable directions.
        return _estimate(lam, v2, n, np.inf, noise, 0.0, 0.0, n - rank, dof=rank)
    hi = (lam.sum() + ridge) / n
    lo = ridge / (2 * n) if ridge > 0 else _bracket_below(excess, hi)
    kappa = hi if excess(hi) == 0 else _root_in_log(excess, lo, hi)
    return _estimate(lam, v2, n, np.inf, noise, kappa, kappa, ridge / kappa)


def random_feature_risk(eigenvalues, target_power, n, k, ridge=0.0, noise=0.0):
    """Predicted test and train MSE of random-feature ridge regression.

    Simon, Karkada, Ghosh & Belkin 2023, "More is better", §4 (the RF
    eigenframework), derived in the module docstring: k Gaussian projections
    of the kernel's eigenfeatures, scaled by 1/sqrt(k), ridge delta on n
    samples.

    Args:
      eigenvalues: (M,) kernel eigenvalues lambda_i >= 0 (at least one > 0).
      target_power: (M,) squared target coefficients v_i^2 >= 0.
      n: number of training samples, > 0.
      k: number of random features, > 0 (np.inf gives kernel_ridge_risk).
      ridge: delta >= 0.
      noise: label-noise variance >= 0.

    Returns:
      RiskEstimate: kappa is the effective ridge in the learnabilities,
      gamma = kappa (1 - sum_i L_i / k) the ridge of the n-sample step.

    Raises:
      ValueError: bad shapes or values.
    """
    where = "random_feature_risk"
    lam, v2 = _check_spectrum(where, eigenvalues, target_power)
    n = _check_scalar(where, "n", n, positive=True)
    k = _check_scalar(where, "k", k, positive=True, allow_inf=True)
    ridge = _check_scalar(where, "ridge", ridge, positive=False)
    noise = _check_scalar(where, "noise", noise, positive=False)
    if np.isinf(k):
        return kernel_ridge_risk(lam, v2, n, ridge=ridge, noise=noise)
    rank = np.count_nonzero(lam)
    positive = lam[lam > 0]
    z_of = lambda kappa: np.sum(positive / (positive + kappa))

    # gamma = kappa (1 - z / k) rises from 0 at kappa_k, where z(kappa_k) = k
    # (kappa_k = 0 when rank <= k). k - z is written without cancellation:
    # offset * sum lam / ((lam + kappa)(lam + kappa_k)) above kappa_k, or
    # (k - rank) + sum kappa / (lam + kappa) when kappa_k = 0.
    if rank > k:
        hi = lam.sum() / k
        kappa_k = _root_in_log(lambda c: z_of(c) - k, _bracket_below(lambda c: z_of(c) - k, hi), hi)
        k_minus_z_of = lambda offset: offset * np.sum(
            positive / ((positive + kappa_k + offset) * (positive + kappa_k)))
    else:
        kappa_k = 0.0
        k_minus_z_of = lambda offset: (k - rank) + np.sum(offset / (positive + offset))
    capacity = min(k, rank)  # sup of z over admissible kappa

    if ridge == 0 and capacity <= n:
        # Ridgeless and underparameterized: least squares on `capacity` directions.
        return _estimate(lam, v2, n, k, noise, kappa_k, 0.0, n - capacity,
                         k_minus_z=k - capacity, dof=capacity)

    def excess(offset):  # kappa = kappa_k + offset; decreasing in offset
        kappa = kappa_k + offset
        z = z_of(kappa)
        if ridge == 0:
            return z - n
        return z + ridge / (kappa * k_minus_z_of(offset) / k) - n

    hi = lam.sum() / n + lam.sum() / k + ridge / n + 1.0
    while excess(hi) > 0:
        hi *= 2.0
    offset = _root_in_log(excess, _bracket_below(excess, hi), hi)
    kappa = kappa_k + offset
    k_minus_z = k_minus_z_of(offset)
    gamma = kappa * k_minus_z / k
    return _estimate(lam, v2, n, k, noise, kappa, gamma, ridge / gamma, k_minus_z=k_minus_z)
